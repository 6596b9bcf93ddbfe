"""FLOP counts, layer by layer, from the model's shapes (no tracing), and the counter that checks them.

Counted as torch.utils.flop_counter.FlopCounterMode counts on the reference path: 2 FLOPs per
multiply-add of every matrix multiply and convolution, nothing for elementwise work. So:

    fully connected   2 * N * in * out
    conv (k x k)      2 * N * cout * cin * k * k * out_h * out_w
    up=2 conv         2 * N * cout * cin * k * k * in_h * in_w  (a transposed convolution: the
                      taps that would meet inserted zeros are not work)
    FIR filter        2 * N * C * taps_h * taps_w * out_h * out_w  (the reference filters with a
                      depthwise convolution over the zero-stuffed image; on the CUDA path this is
                      the upfirdn2d kernel's work, not matrix-unit work)

Training counts, per phase (StyleGAN2-ADA's loss; B = batch):
    backward of a layer = forward x (needs input grad + needs weight grad); a filter has no weight
    G main   two mappings (style mixing) + synthesis (B) + D (B); G backward in full, D input grads
    D main   mappings + synthesis without grad, D twice (reals, fakes) forward and backward, the
             image layer without input grad
    G reg    mappings + synthesis at B / 2 (pl_batch_shrink), the gradient with respect to ws
             (input grads), then the penalty's backward: the double backward of every input-grad
             product is estimated at 2x forward (its two operands) plus the forward graph's own
             backward (input + weight grads)
    D reg    R1: D forward, input grads down to the image, then the same double-backward estimate
The lazy phases count once per interval. The double-backward rule is an estimate; run.py prints
how far it lands from FlopCounterMode on the same model and the benchmarks' test checks the
forward counts exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from stylegan2.networks.config import block_resolutions, channels_at

FIR_TAPS = 4  # the [1, 3, 3, 1] filter, used as a 4 x 4 2-D filter (setup_filter's choice)


@dataclass(frozen=True)
class Layer:
    """One matrix product or filter of a forward pass, for a batch of `batch` samples."""

    name: str
    kind: str         # "fc" | "conv" | "filter"
    flops: int        # forward FLOPs
    weight: bool = True  # has a learned weight (a filter does not)


@dataclass(frozen=True)
class Arch:
    """What the counts need from a ModelConfig (any object with these attributes works)."""

    resolution: int
    channels: int
    z_dim: int
    w_dim: int
    c_dim: int
    mapping_layers: int
    channel_base: int
    channel_max: int
    mbstd_channels: int = 1

    @classmethod
    def of(cls, cfg: Any) -> "Arch":
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        return cls(resolution=get("resolution"), channels=get("channels"), z_dim=get("z_dim"),
                   w_dim=get("w_dim"), c_dim=get("c_dim", 0) or 0, mapping_layers=get("mapping_layers"),
                   channel_base=get("channel_base"), channel_max=get("channel_max"),
                   mbstd_channels=get("mbstd_channels", 1))

    def ch(self, res: int) -> int:
        return channels_at(res, self.channel_base, self.channel_max)

    @property
    def resolutions(self) -> list[int]:
        return block_resolutions(self.resolution)


def fc(name: str, n: int, fin: int, fout: int) -> Layer:
    return Layer(name, "fc", 2 * n * fin * fout)


def conv(name: str, n: int, cin: int, cout: int, k: int, out_h: int, out_w: int | None = None) -> Layer:
    return Layer(name, "conv", 2 * n * cout * cin * k * k * out_h * (out_h if out_w is None else out_w))


def fir(name: str, n: int, c: int, out_h: int, taps: int = FIR_TAPS) -> Layer:
    return Layer(name, "filter", 2 * n * c * taps * taps * out_h * out_h, weight=False)


def modconv_flops(batch: int, cin: int, cout: int, k: int, res: int, up: int) -> int:
    """Matrix FLOPs of one modulated conv producing [batch, cout, res, res] (see module docs)."""
    return 2 * batch * cout * cin * k * k * (res // up) ** 2


def mapping_layers(a: Arch, n: int, prefix: str = "mapping") -> list[Layer]:
    out = []
    if a.c_dim:
        out.append(fc(f"{prefix}.embed", n, a.c_dim, a.w_dim))
    fin = a.z_dim + (a.w_dim if a.c_dim else 0)
    for i in range(a.mapping_layers):
        out.append(fc(f"{prefix}.fc{i}", n, fin if i == 0 else a.w_dim, a.w_dim))
    return out


def synthesis_layers(a: Arch, n: int) -> list[Layer]:
    """The synthesis network's products for a batch of n, low resolution first."""
    out: list[Layer] = []
    for res in a.resolutions:
        c = a.ch(res)
        if res > 4:
            cin = a.ch(res // 2)
            out.append(fc(f"b{res}.conv0.affine", n, a.w_dim, cin))
            out.append(Layer(f"b{res}.conv0", "conv", modconv_flops(n, cin, c, 3, res, 2)))
            out.append(fir(f"b{res}.conv0.filter", n, c, res))
        out.append(fc(f"b{res}.conv1.affine", n, a.w_dim, c))
        out.append(Layer(f"b{res}.conv1", "conv", modconv_flops(n, c, c, 3, res, 1)))
        out.append(fc(f"b{res}.torgb.affine", n, a.w_dim, c))
        out.append(conv(f"b{res}.torgb", n, c, a.channels, 1, res))
        if res > 4:
            out.append(fir(f"b{res}.img_up", n, a.channels, res))
    return out


def generator_layers(a: Arch, n: int, mappings: int = 1) -> list[Layer]:
    """G forward: `mappings` mapping passes (2 in training: style mixing) + synthesis."""
    out = []
    for m in range(mappings):
        out += mapping_layers(a, n, "mapping" if m == 0 else f"mapping{m}")
    return out + synthesis_layers(a, n)


def discriminator_layers(a: Arch, n: int) -> list[Layer]:
    """D forward for a batch of n, the image layer first."""
    out = [conv(f"b{a.resolution}.fromrgb", n, a.channels, a.ch(a.resolution), 1, a.resolution)]
    if a.resolution == 4:
        out = [conv("b4.fromrgb", n, a.channels, a.ch(4), 1, 4)]
    for res in reversed(a.resolutions[1:]):
        tmp, cout, half = a.ch(res), a.ch(res // 2), res // 2
        out.append(fir(f"b{res}.skip.filter", n, tmp, half))
        out.append(conv(f"b{res}.skip", n, tmp, cout, 1, half))
        out.append(conv(f"b{res}.conv0", n, tmp, tmp, 3, res))
        out.append(fir(f"b{res}.conv1.filter", n, tmp, res + 1))
        out.append(conv(f"b{res}.conv1", n, tmp, cout, 3, half))
    c = a.ch(4)
    cmap = c if a.c_dim else 0
    if a.c_dim:
        out.append(fc("mapping.embed", n, a.c_dim, cmap))
        out += [fc(f"mapping.fc{i}", n, cmap, cmap) for i in range(a.mapping_layers)]
    out.append(conv("b4.conv", n, c + a.mbstd_channels, c, 3, 4))
    out.append(fc("b4.fc", n, c * 16, c))
    out.append(fc("b4.out", n, c, cmap or 1))
    return out


def total(layers: list[Layer], kinds: tuple[str, ...] = ("fc", "conv", "filter")) -> int:
    return sum(l.flops for l in layers if l.kind in kinds)


def _backward(layers: list[Layer], weights: bool, first_input_grad: bool = True) -> int:
    """Backward FLOPs: input grads for all but (optionally) the first layer, weight grads if asked."""
    s = 0
    for i, l in enumerate(layers):
        if i > 0 or first_input_grad:
            s += l.flops
        if weights and l.weight:
            s += l.flops
    return s


def _double_backward(layers: list[Layer]) -> int:
    """The penalty's backward through a first-order gradient: 2x forward for each input-grad
    product (1x for a filter: its taps are constants) plus the forward graph's own backward."""
    return sum((2 if l.weight else 1) * l.flops for l in layers) + _backward(layers, weights=True)


def training_phases(a: Arch, batch: int, pl_batch_shrink: int = 2, style_mixing: bool = True) -> dict[str, int]:
    """Estimated FLOPs of each training phase for one batch (see the module docs)."""
    maps = 2 if style_mixing else 1
    g_map = [l for m in range(maps) for l in mapping_layers(a, batch, f"m{m}")]
    g_syn = synthesis_layers(a, batch)
    d = discriminator_layers(a, batch)
    g_main = total(g_map) + total(g_syn) + total(d)
    g_main += sum(_backward(mapping_layers(a, batch), weights=True, first_input_grad=False) for _ in range(maps))
    g_main += _backward(g_syn, weights=True) + _backward(d, weights=False)
    d_main = total(g_map) + total(g_syn) + 2 * (total(d) + _backward(d, weights=True, first_input_grad=False))
    nr = max(batch // pl_batch_shrink, 1)
    r_map = [mapping_layers(a, nr) for _ in range(maps)]
    r_syn = synthesis_layers(a, nr)
    g_reg = sum(total(m) + _backward(m, weights=True, first_input_grad=False) for m in r_map)
    g_reg += total(r_syn) + _backward(r_syn, weights=False) + _double_backward(r_syn)
    d_reg = total(d) + _backward(d, weights=False) + _double_backward(d)
    return {"g_main": g_main, "g_reg": g_reg, "d_main": d_main, "d_reg": d_reg}


def per_image(phases: dict[str, int], batch: int, pl_interval: int, r1_interval: int) -> float:
    """FLOPs per training image: main phases every step, lazy ones once per interval."""
    s = phases["g_main"] + phases["d_main"]
    if pl_interval > 0:
        s += phases["g_reg"] / pl_interval
    if r1_interval > 0:
        s += phases["d_reg"] / r1_interval
    return s / batch


class _NoModules:
    """Stands in for FlopCounterMode's per-module tracker: every FLOP goes to "Global" only."""

    parents = ("Global",)

    def __enter__(self) -> "_NoModules":
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def count_flops(fn: Callable[[], Any], *, per_module: bool = True) -> int:
    """FLOPs torch.utils.flop_counter.FlopCounterMode sees while fn() runs.

    per_module=False leaves out the counter's module tracker. The tracker hooks every module
    input, and those hooks make torch.autograd.grad fail on a leaf input ("A leaf node was
    passed to _will_engine_execute_node ..."), which is exactly what R1 does; the totals are the
    same without it.
    """
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    if not per_module and hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _NoModules()
    with counter:
        fn()
    return int(counter.get_total_flops())


def relative_gap(analytic: float, counted: float) -> float:
    """(analytic - counted) / counted; 0 when both are 0."""
    if counted == 0:
        return 0.0 if analytic == 0 else float("inf")
    return (analytic - counted) / counted


def bytes_of(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
