"""stylegan2.sampling.Sampler: every speedup returns what the generator itself returns.

CPU cases cover the eager and compiled paths (torch.compile with the aot_eager backend, which
traces and partitions as inductor does without building C++), argument errors and a whole-graph
trace of the generator (a graph break would silently cost the compiled path its speed). The
`cuda` cases check CUDA-graph replays against eager calls across batch sizes, labels, layouts
and precisions, the eviction of old captures, and the fallback when a capture fails.
"""
from __future__ import annotations

import pytest
import torch

from stylegan2.networks import Generator, LayoutSwitch, ModelConfig
from stylegan2.images import parse_seeds
from stylegan2.sampling import SPEEDUPS, Sampler, class_vector, generate_images, seed_latents
from stylegan2.training.checkpoint import load_discriminator, load_generator

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


def generator(gen: torch.Generator, resolution: int = 16, c_dim: int = 0, precision: str = "fp32",
              device: str = "cpu") -> Generator:
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    mixed = precision != "fp32"
    G = Generator(ModelConfig(resolution=resolution, channels=1, c_dim=c_dim, channel_base=512, channel_max=32,
                              z_dim=24, w_dim=24, mapping_layers=2, precision=precision,
                              num_fp16_res=2 if mixed else 0))
    with torch.no_grad():  # non-zero biases and noise strengths, so every term shows
        for name, p in G.named_parameters():
            if name.endswith(("bias", "noise_strength")):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return G.to(device).eval().requires_grad_(False)


def labels(n: int, c_dim: int, device: str = "cpu") -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float().to(device)


def direct(G: Generator, z: torch.Tensor, c=None, **kw) -> torch.Tensor:
    with torch.no_grad():
        return G(z, c, **{"noise_mode": "const", **kw})


@pytest.mark.parametrize("c_dim,psi,channels_last", [(0, 1.0, False), (3, 0.7, False), (0, 0.5, True)])
def test_eager_matches_the_generator(gen, c_dim, psi, channels_last):
    G = generator(gen, c_dim=c_dim)
    z = torch.randn(5, 24, generator=gen)
    c = labels(5, c_dim) if c_dim else None
    want = direct(G, z, c, truncation_psi=psi)
    s = Sampler(G, truncation_psi=psi, channels_last=channels_last)
    assert all(m.channels_last == channels_last for m in G.modules() if isinstance(m, LayoutSwitch))
    got = s(z, c)
    assert got.dtype == torch.float32 and got.shape == (5, 1, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not got.requires_grad


@pytest.mark.parametrize("precision,batch", [("fp32", 3), ("bf16", 4), ("fp32", 1)])
def test_fused_and_unfused_modconv_agree(gen, precision, batch):
    """Forcing either modulated-conv route in eval mode changes the arithmetic, not the image;
    the choice is really taken (the layers see it) and training mode ignores it."""
    G = generator(gen, precision=precision)
    z = torch.randn(batch, 24, generator=gen)
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["fused_modconv"]), with_kwargs=True)
             for name, layer in G.named_modules() if name.endswith(("conv0", "conv1"))]
    images = {}
    for fused in (None, True, False):
        seen.clear()
        images[fused] = Sampler(G, fused_modconv=fused)(z)
        if fused is not None:
            assert set(seen) == {fused}
    tol = 1e-5 if precision == "fp32" else 0.05
    for fused in (True, False):
        torch.testing.assert_close(images[fused], images[None], rtol=tol, atol=tol)
    G.train()
    seen.clear()
    with torch.no_grad():
        G(z, noise_mode="const")
    assert set(seen) == {False}
    for h in hooks:
        h.remove()
    with pytest.raises(ValueError, match="set_fused_modconv: expected True, False or None, got 'yes'"):
        G.set_fused_modconv("yes")


@pytest.mark.parametrize("c_dim,batches", [(0, (3, 5, 3)), (2, (4,))])
def test_compiled_matches_the_generator(gen, c_dim, batches):
    torch.compiler.reset()
    G = generator(gen, resolution=8, c_dim=c_dim)
    s = Sampler(G, speedup="compile", compile_backend="aot_eager")
    for n in batches:  # a new batch size recompiles; an old one reuses its graph
        z = torch.randn(n, 24, generator=gen)
        c = labels(n, c_dim) if c_dim else None
        torch.testing.assert_close(s(z, c), direct(G, z, c), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_generator_traces_as_one_graph(gen, noise_mode):
    """fullgraph=True raises on any graph break: the whole generator must trace as one graph."""
    torch.compiler.reset()
    G = generator(gen, resolution=8)
    z = torch.randn(2, 24, generator=gen)
    fn = torch.compile(lambda z: G(z, None, noise_mode=noise_mode), backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(fn(z), direct(G, z, noise_mode=noise_mode), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named(gen):
    G = generator(gen, c_dim=2)
    with pytest.raises(ValueError, match="speedup: must be one of none, cudagraph, compile, got 'graphs'"):
        Sampler(G, speedup="graphs")
    with pytest.raises(ValueError, match="noise_mode"):
        Sampler(G, noise_mode="fixed")
    with pytest.raises(ValueError, match="warmup and max_graphs"):
        Sampler(G, warmup=0)
    with pytest.raises(ValueError, match="needs the generator on a CUDA device; it is on cpu"):
        Sampler(G, speedup="cudagraph")
    s = Sampler(G)
    with pytest.raises(ValueError, match=r"z: expected \[N, 24\]"):
        s(torch.randn(3, 23), labels(3, 2))
    with pytest.raises(ValueError, match=r"c: this generator is conditional and needs \[3, 2\] labels, got None"):
        s(torch.randn(3, 24))
    assert set(SPEEDUPS) == {"none", "cudagraph", "compile"}


# --------------------------------------------------------------------------------------------
# CUDA graphs (GPU only).

@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("precision,channels_last,c_dim", [("fp32", False, 0), ("fp16", False, 3),
                                                           ("bf16", True, 0), ("fp32", True, 2)])
def test_cudagraph_replays_match_eager(gen, precision, channels_last, c_dim):
    G = generator(gen, resolution=32, c_dim=c_dim, precision=precision, device="cuda")
    s = Sampler(G, speedup="cudagraph", channels_last=channels_last, max_graphs=2)
    ref = Sampler(G, channels_last=channels_last)  # same G, eager
    for n in (4, 7, 4, 1, 7):  # capture, capture, replay, capture (evicts 7), capture again
        z = torch.randn(n, 24, generator=gen).cuda()
        c = labels(n, c_dim, "cuda") if c_dim else None
        got = s(z, c)
        tol = 2e-3 if precision == "fp32" else 2e-2  # 16-bit layers: cuDNN may round differently
        torch.testing.assert_close(got, ref(z, c), rtol=tol, atol=tol)
    assert s.fallback_reason is None
    assert s.captured_batches == [1, 7]


@pytest.mark.cuda
@needs_cuda
def test_cudagraph_outputs_are_not_overwritten_by_later_replays(gen):
    G = generator(gen, device="cuda")
    s = Sampler(G, speedup="cudagraph")
    z1, z2 = (torch.randn(3, 24, generator=gen).cuda() for _ in range(2))
    a = s(z1)
    a_copy = a.clone()
    s(z2)
    s(z2)
    torch.testing.assert_close(a, a_copy, rtol=0, atol=0)


@pytest.mark.cuda
@needs_cuda
def test_cudagraph_capture_failure_falls_back_to_eager(gen, monkeypatch):
    G = generator(gen, device="cuda")
    s = Sampler(G, speedup="cudagraph")
    eager = s._eager

    def syncing(z, c):  # a host sync is illegal while capturing
        out = eager(z, c)
        float(out.sum())
        return out
    monkeypatch.setattr(s, "_eager", syncing)
    z = torch.randn(2, 24, generator=gen).cuda()
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        got = s(z)
    assert s.fallback_reason and s.captured_batches == []
    assert "synchroniz" in s.fallback_reason.lower()  # found in the warm-up, named as such
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # the caller's stream is back
    torch.testing.assert_close(got, direct(G, z), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
def test_compiled_on_the_kernels_matches_eager(gen):
    torch.compiler.reset()
    G = generator(gen, resolution=32, precision="fp16", device="cuda")
    z = torch.randn(6, 24, generator=gen).cuda()
    got = Sampler(G, speedup="compile")(z)
    torch.testing.assert_close(got, direct(G, z), rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------------------------
# Seeds to files, as the generate command does it, from Python.

def test_generate_images_writes_each_seed_and_a_grid_independent_of_batching(gen, tmp_path):
    import numpy as np
    from PIL import Image

    G = generator(gen, c_dim=2)
    c = class_vector("b", G.c_dim, ["a", "b"])
    seeds = parse_seeds("3,0-2")
    outs = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        done = generate_images(Sampler(G), seeds, out, c=c, batch=batch, grid_max=3)
        assert (done.count, done.grid_count, done.grid) == (4, 3, out / "grid.png")
        outs[batch] = {s: np.asarray(Image.open(out / f"seed{s:04d}.png")) for s in seeds}
    for s in seeds:  # an image depends on its seed only
        assert np.array_equal(outs[1][s], outs[3][s])
    want = direct(G, seed_latents([3], G.z_dim), c)
    got = np.asarray(Image.open(tmp_path / "b1" / "seed0003.png")).astype(np.float32)
    assert np.abs(got - (want[0, 0].numpy() * 127.5 + 128).clip(0, 255)).max() <= 1


def test_generate_with_random_noise_repeats_per_seed_and_leaves_the_callers_rng(gen, tmp_path):
    import numpy as np
    from PIL import Image

    G = generator(gen)  # noise strengths 0.5-ish: the noise shows in the pixels
    torch.manual_seed(77)
    before = torch.get_rng_state()
    images = {}
    for name, batch in (("a", 2), ("b", 1)):
        generate_images(Sampler(G, noise_mode="random"), [5, 6], tmp_path / name, batch=batch)
        images[name] = [np.asarray(Image.open(tmp_path / name / f"seed{s:04d}.png")) for s in (5, 6)]
    assert torch.equal(torch.get_rng_state(), before)  # a notebook's random stream goes on untouched
    assert all(np.array_equal(x, y) for x, y in zip(images["a"], images["b"]))
    generate_images(Sampler(G, noise_mode="const"), [5], tmp_path / "const")
    const = np.asarray(Image.open(tmp_path / "const" / "seed0005.png"))
    assert not np.array_equal(const, images["a"][0])  # the random noise did act


def test_class_vector_names_what_is_wrong():
    assert class_vector(None, 0) is None
    assert class_vector("1", 3).tolist() == [[0.0, 1.0, 0.0]]
    for cls, c_dim, match in (("AD", 0, "unconditional"), (None, 2, "conditional"), ("XY", 2, "not a class")):
        with pytest.raises(ValueError, match=match):
            class_vector(cls, c_dim, ["AD", "NC"][:c_dim])


def test_load_networks_from_a_checkpoint_dict(gen):
    from stylegan2.networks import Discriminator
    G = generator(gen)
    D = Discriminator(G.cfg)
    ck = {"model_config": G.cfg.to_dict(), "G": G.state_dict(), "G_ema": G.state_dict(), "D": D.state_dict()}
    loaded = load_generator(ck, raw=True)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    z = torch.randn(2, 24, generator=gen)
    assert torch.equal(direct(loaded, z), direct(G, z))
    loaded_D = load_discriminator(ck)
    assert all(torch.equal(a, b) for a, b in zip(loaded_D.state_dict().values(), D.state_dict().values()))
