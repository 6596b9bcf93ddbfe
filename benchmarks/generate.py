"""Generation throughput: img/s of G forward at the product's resolution, as `generate` and the
snapshot grids run it: eval mode, no gradients, noise_mode='const', truncation psi 1, large
batches; under float32 and under the mixed-precision policy, on the kernels and the references,
and with each speed variant of stylegan2.sampling.Sampler (channels_last activations; fused or
unfused modulated convs instead of NVlabs' per-layer rule; CUDA graph replay; torch.compile; or
a '+'-joined mix such as channels_last+cudagraph). A variant's
row reads impl 'cuda+cudagraph' (say); its ratio_to_ref compares it with the plain eager
reference of the same policy and batch, i.e. the whole gain a user sees.
A fresh Generator in eval mode computes exactly what a trained G_ema does (same architecture,
same ops; only the weights differ), so no checkpoint is needed.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import torch

from . import flops as F
from .timing import Ceilings, synchronize, time_calls
from .train import kernels_status, ops_impl


def build_generator(quick: bool, precision: str, device: torch.device) -> Any:
    """The gpu256 model (256x256, 512-d z/w, 8 mapping layers, channel base 16384) or, quick, the
    tiny one; precision 'fp16'/'bf16' puts the 4 highest resolutions (quick: 2) in that dtype."""
    from stylegan2.networks import Generator, ModelConfig
    if quick:
        kw = dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
        fp16_res = 2
    else:
        kw = dict(resolution=256, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512)
        fp16_res = 4
    mixed = precision != "fp32"
    cfg = ModelConfig(channels=1, precision=precision, num_fp16_res=fp16_res if mixed else 0, **kw)
    torch.manual_seed(0)
    return Generator(cfg).to(device).eval().requires_grad_(False)


VARIANT_FLAGS = ("channels_last", "fused", "unfused", "cudagraph", "compile")


def parse_variant(name: str) -> dict[str, Any]:
    """'eager' or flags joined by '+' -> Sampler keyword arguments (channels_last, fused_modconv,
    speedup). Raises ValueError on unknown or repeated flags and on alternatives mixed
    (cudagraph+compile, fused+unfused)."""
    flags = [] if name == "eager" else name.split("+")
    unknown = [f for f in flags if f not in VARIANT_FLAGS]
    if unknown or not flags and name != "eager" or len(set(flags)) != len(flags):
        raise ValueError(f"generation variant {name!r}: use 'eager' or a '+' mix of {', '.join(VARIANT_FLAGS)}")
    for a, b in (("cudagraph", "compile"), ("fused", "unfused")):
        if a in flags and b in flags:
            raise ValueError(f"generation variant {name!r}: {a} and {b} are alternatives")
    speedup = "cudagraph" if "cudagraph" in flags else "compile" if "compile" in flags else "none"
    fused = True if "fused" in flags else False if "unfused" in flags else None
    return dict(channels_last="channels_last" in flags, fused_modconv=fused, speedup=speedup)


def generate_rows(device: torch.device, ceilings: Ceilings, *, quick: bool, precisions: list[str],
                  impls: list[str], batch: int, warmup: int, repeat: int,
                  variants: tuple[str, ...] = ("eager",), compile_backend: str = "inductor") -> Iterator[dict[str, Any]]:
    """Rows for section 'generate', one per (precision policy, impl, variant)."""
    from stylegan2.sampling import Sampler
    ok, kernels_note = kernels_status(device)
    for precision in precisions:
        G = build_generator(quick, precision, device)
        cfg = G.cfg
        per_img = F.total(F.generator_layers(F.Arch.of(cfg), 1))
        zs = [(torch.randn(batch, cfg.z_dim, device=device),) for _ in range(2)]
        shape = f"{batch}x{cfg.channels}x{cfg.resolution}x{cfg.resolution} G forward, const noise, psi 1"
        policy = "fp32" if precision == "fp32" else f"{precision} in {cfg.num_fp16_res} top res"
        peak, peak_name = ceilings.peak_for({"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision])
        for impl in impls:
            for variant in variants:
                options = parse_variant(variant)
                speedup = options["speedup"]
                label = impl if variant == "eager" else f"{impl}+{variant}"
                base = dict(section="generate", op="G.forward", shape=shape, dtype=policy, impl=label,
                            flops_per_img=per_img)
                if impl == "cuda" and not ok:
                    yield dict(base, note=f"skipped: {kernels_note}")
                    continue
                if speedup == "cudagraph" and device.type != "cuda":
                    yield dict(base, note=f"skipped: CUDA graphs need a CUDA device (this run: {device.type})")
                    continue
                notes = [kernels_note] if impl == "cuda" else []
                with ops_impl("auto" if impl == "cuda" else "ref"):
                    if speedup == "compile":
                        torch.compiler.reset()  # a fresh dynamo cache: no graph of another row reused
                    sampler = Sampler(G, compile_backend=compile_backend, **options)
                    t0 = time.perf_counter()
                    # Outside the timed calls: a capture happens in the first call; a compile in
                    # the second (the Sampler's first call runs eagerly, for the self-checks).
                    for _ in range(2 if speedup == "compile" else 1):
                        sampler(*zs[0])
                    synchronize(device)
                    setup_s = time.perf_counter() - t0
                    t = time_calls(sampler, zs, device, warmup=warmup, repeat=repeat)
                if speedup == "compile":
                    notes.append(f"{compile_backend} compile + first two calls {setup_s:.1f} s")
                if speedup == "cudagraph":
                    notes.append(f"eager fallback: {sampler.fallback_reason}" if sampler.fallback_reason
                                 else f"capture + first replay {setup_s:.2f} s")
                img_s = batch / (t.ms * 1e-3)
                tflops = per_img * img_s / 1e12
                if peak:
                    notes.append(f"pct of {peak_name} matmul peak")
                yield dict(base, ms=t.ms, img_per_s=img_s, tflops=tflops,
                           pct_of_peak=100 * tflops / peak if peak else None, spread=t.spread,
                           note="; ".join(n for n in notes if n))
                del sampler
        del G  # free the model before the next policy builds its own
