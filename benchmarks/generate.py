"""Generation throughput: img/s of G forward at the product's resolution, as `generate` and the
snapshot grids run it: eval mode, no gradients, noise_mode='const', truncation psi 1, large
batches; under float32 and under the mixed-precision policy, on the kernels and the references.
A fresh Generator in eval mode computes exactly what a trained G_ema does (same architecture,
same ops; only the weights differ), so no checkpoint is needed.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from . import flops as F
from .timing import Ceilings, time_calls
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


def _sampler(G: Any) -> Any:
    """z [batch, z_dim] -> images, as generation runs G: no autograd, const noise, psi 1."""
    @torch.no_grad()
    def run(z: torch.Tensor) -> torch.Tensor:
        return G(z, None, truncation_psi=1.0, noise_mode="const")
    return run


def generate_rows(device: torch.device, ceilings: Ceilings, *, quick: bool, precisions: list[str],
                  impls: list[str], batch: int, warmup: int, repeat: int) -> Iterator[dict[str, Any]]:
    """Rows for section 'generate', one per (precision policy, impl)."""
    ok, kernels_note = kernels_status(device)
    for precision in precisions:
        G = build_generator(quick, precision, device)
        cfg = G.cfg
        per_img = F.total(F.generator_layers(F.Arch.of(cfg), 1))
        zs = [(torch.randn(batch, cfg.z_dim, device=device),) for _ in range(2)]
        shape = f"{batch}x{cfg.channels}x{cfg.resolution}x{cfg.resolution} G forward, const noise, psi 1"
        policy = "fp32" if precision == "fp32" else f"{precision} in {cfg.num_fp16_res} top res"
        peak, peak_name = ceilings.peak_for({"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision])

        run = _sampler(G)
        for impl in impls:
            base = dict(section="generate", op="G.forward", shape=shape, dtype=policy, impl=impl,
                        flops_per_img=per_img)
            if impl == "cuda" and not ok:
                yield dict(base, note=f"skipped: {kernels_note}")
                continue
            with ops_impl("auto" if impl == "cuda" else "ref"):
                t = time_calls(run, zs, device, warmup=warmup, repeat=repeat)
            img_s = batch / (t.ms * 1e-3)
            tflops = per_img * img_s / 1e12
            notes = [n for n in (kernels_note if impl == "cuda" else "",
                                 f"pct of {peak_name} matmul peak" if peak else "") if n]
            yield dict(base, ms=t.ms, img_per_s=img_s, tflops=tflops,
                       pct_of_peak=100 * tflops / peak if peak else None, spread=t.spread,
                       note="; ".join(notes))
        del G, run  # free the model before the next policy builds its own
