"""channels_last is a speed switch: the same networks must compute the same numbers, first and
second derivatives included, and the layout must really reach the convolutions.

Every case compares a network against a deep copy of itself with the switch on, on seeded random
inputs; the hooks check the activations each block hands on.
"""
from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner

from stylegan2 import cli
from stylegan2.networks import Discriminator, Generator, LayoutSwitch, ModelConfig, use_channels_last
from stylegan2.networks.discriminator import DiscriminatorBlock
from stylegan2.networks.generator import SynthesisBlock

CL = torch.channels_last



def _switched(module: torch.nn.Module) -> bool:
    """Whether every layout-switching block under `module` is set to channels_last."""
    flags = [m.channels_last for m in module.modules() if isinstance(m, LayoutSwitch)]
    return bool(flags) and all(flags)


def model(resolution: int, channels: int, c_dim: int = 0, precision: str = "fp32") -> ModelConfig:
    mixed = precision != "fp32"
    return ModelConfig(resolution=resolution, channels=channels, c_dim=c_dim, channel_base=512,
                       channel_max=32, z_dim=24, w_dim=24, mapping_layers=2, precision=precision,
                       num_fp16_res=2 if mixed else 0)


def pair(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(module, a deep copy of it switched to channels_last): same weights, other layout."""
    return module, use_channels_last(copy.deepcopy(module))


def perturb(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random non-zero biases and noise strengths, so every parameter carries a gradient."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("bias", "noise_strength")):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_close_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol: float) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


@pytest.mark.parametrize("resolution,channels,c_dim,batch", [(8, 1, 0, 2), (16, 3, 0, 3), (32, 1, 3, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_generator_same_images_and_gradients(gen, resolution, channels, c_dim, batch, training):
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    G0 = Generator(model(resolution, channels, c_dim)).train(training)
    perturb(G0, gen)
    G0, G1 = pair(G0)
    z = torch.randn(batch, 24, generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(batch) % 3, 3).float() if c_dim else None
    weight = torch.randn(batch, channels, resolution, resolution, generator=gen)
    out = []
    for G in (G0, G1):
        img = G(z, c, noise_mode="const")
        (img * weight).sum().backward()
        out.append((img, grads(G)))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-5)
    assert_close_dicts(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("resolution,channels,c_dim,batch", [(8, 3, 0, 4), (16, 1, 3, 6), (32, 1, 0, 5)])
def test_discriminator_same_logits_and_r1_penalty(gen, resolution, channels, c_dim, batch):
    """Logits, weight gradients and the R1 penalty's double backward agree across layouts."""
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    D0 = Discriminator(model(resolution, channels, c_dim))
    perturb(D0, gen)
    D0, D1 = pair(D0)
    img = torch.randn(batch, channels, resolution, resolution, generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(batch) % 3, 3).float() if c_dim else None
    out = []
    for D in (D0, D1):
        x = img.clone().requires_grad_(True)
        logits = D(x, c)
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = g.square().sum()
        (penalty + logits.square().sum()).backward()
        out.append((logits, penalty, grads(D)))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-4, atol=1e-6)
    assert_close_dicts(out[0][2], out[1][2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_same_images(gen, precision):
    """Reduced-precision blocks: equal up to that dtype's rounding."""
    if precision == "fp16":
        try:
            torch.nn.functional.conv2d(torch.ones(1, 2, 3, 3, dtype=torch.float16),
                                       torch.ones(2, 2, 3, 3, dtype=torch.float16))
        except RuntimeError:
            pytest.skip("this build has no float16 conv on the CPU")
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    G0, G1 = pair(Generator(model(16, 1, precision=precision)).train())
    z = torch.randn(3, 24, generator=gen)
    a, b = G0(z, noise_mode="const"), G1(z, noise_mode="const")
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(b, a, rtol=0.05, atol=0.05)
    assert (b - a).abs().mean() < 0.01


def _layouts(module: torch.nn.Module, block_type: type, run) -> list[bool]:
    """Whether each block's feature-map output (its first output for G's blocks) is channels_last."""
    seen: list[bool] = []

    def hook(_m, _inp, out):
        x = out[0] if isinstance(out, tuple) else out
        seen.append(x.shape[1] > 1 and x.shape[2] > 1 and x.is_contiguous(memory_format=CL)
                    and not x.is_contiguous())
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, block_type)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_layout_reaches_every_block(gen):
    """The blocks' activations are NHWC with the switch on (training path of G, and D), and plain
    NCHW with it off; the switch round-trips and names its state."""
    torch.manual_seed(3)
    G = Generator(model(16, 1)).train()
    D = Discriminator(model(16, 1))
    z = torch.randn(2, 24, generator=gen)
    img = torch.randn(2, 1, 16, 16, generator=gen)
    assert not _switched(G) and not any(_layouts(G, SynthesisBlock, lambda: G(z)))
    assert not any(_layouts(D, DiscriminatorBlock, lambda: D(img)))
    use_channels_last(G)
    use_channels_last(D)
    assert _switched(G) and _switched(D)
    assert all(_layouts(G, SynthesisBlock, lambda: G(z)))
    assert all(_layouts(D, DiscriminatorBlock, lambda: D(img)))
    use_channels_last(G, False)
    assert not _switched(G) and not any(_layouts(G, SynthesisBlock, lambda: G(z)))


def test_switch_on_a_module_without_blocks_is_an_error():
    with pytest.raises(ValueError, match="Linear holds no synthesis or discriminator blocks"):
        use_channels_last(torch.nn.Linear(2, 2))


def test_training_config_and_cli_switch(gen, tmp_path):
    """--channels-last reaches the config (also on resume, as a run-time field) and setup_run
    switches G, D and G_ema."""
    from stylegan2.data import ImageDataset
    from stylegan2.training.config import make_config
    from stylegan2.training.state import setup_run

    r = CliRunner().invoke(cli.main, ["train", "--dry-run", "--preset", "tiny", "--channels-last"])
    assert r.exit_code == 0, r.output
    assert '"channels_last": true' in r.output
    assert cli._RUNTIME_FIELDS["channels_last"] == "channels_last"

    images = torch.randint(0, 256, (6, 1, 16, 16), generator=gen, dtype=torch.uint8).numpy()
    for flag in (False, True):
        cfg, _ = make_config("tiny", dict(channels_last=flag))
        run = setup_run(cfg, ImageDataset(images, source="random"), torch.device("cpu"))
        assert [_switched(m) for m in (run.G, run.D, run.G_ema)] == [flag] * 3
