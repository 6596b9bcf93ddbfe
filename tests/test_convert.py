"""Importing NVlabs and rosinality checkpoints (stylegan2.convert).

The fixtures are built here in each source's layout: NVlabs' parameter names and a pickle whose
networks are persistent-object records (class name, module source, recorded __dict__ with
init_kwargs), and rosinality's names in a torch.save dict with g, d, g_ema and args. Expected
outputs come from forwards written in this file from each format's documented semantics in plain
torch (no stylegan2_ops), run in float64 on the fixtures' own tensors.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import os
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from stylegan2.convert import (LUMINANCE, ConversionError, RefusedPickle, adapt_channels, convert,
                               export_nvlabs, load_foreign_checkpoint, load_restricted_pickle)
from stylegan2.training.checkpoint import load_checkpoint

SQRT2 = math.sqrt(2)
_K1 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
BLUR = torch.outer(_K1, _K1) / torch.outer(_K1, _K1).sum()  # [4, 4], sums to 1

# Tiny networks: 16x16, widths {4: 16, 8: 8, 16: 4} (channel_base 64, max 16).
RES, Z, W, BASE, CMAX = 16, 8, 8, 64, 16
WIDTH = {r: min(BASE // r, CMAX) for r in (4, 8, 16)}


# ============================================================================================
# Plain-torch reference primitives (float64).

def lrelu(x):
    return F.leaky_relu(x, 0.2) * SQRT2


def fir(x, k, p0, p1):
    """Depthwise 2-D filtering with padding [p0, p1] on both axes (k symmetric)."""
    c = x.shape[1]
    return F.conv2d(F.pad(x, [p0, p1, p0, p1]), k[None, None].repeat(c, 1, 1, 1), groups=c)


def upsample_img(x):
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, 2 * h, 2 * w)
    z[:, :, ::2, ::2] = x
    return fir(z, BLUR * 4, 2, 1)


def modconv(x, weight, styles, demod, up=False):
    """Per-sample modulated conv: weight [O, I, k, k], styles [N, I]."""
    w = weight[None] * styles[:, None, :, None, None]
    if demod:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    out = []
    for i in range(x.shape[0]):
        if up:  # transposed conv at stride 2, then the [1,3,3,1] blur with gain 4
            y = F.conv_transpose2d(x[i:i + 1], w[i].transpose(0, 1), stride=2)
            out.append(fir(y, BLUR * 4, 1, 1))
        else:
            out.append(F.conv2d(x[i:i + 1], w[i], padding=w.shape[-1] // 2))
    return torch.cat(out)


def conv_down(x, w):
    """Blur then 3x3 conv at stride 2."""
    return F.conv2d(fir(x, BLUR, 2, 2), w, stride=2)


def skip_down(x, w):
    """Blur, keep every second pixel, then 1x1 conv."""
    return F.conv2d(fir(x, BLUR, 1, 1)[:, :, ::2, ::2], w)


def mbstd(x, group):
    n, c, h, w = x.shape
    g = min(group, n)
    y = x.reshape(g, n // g, 1, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[2, 3, 4])
    return torch.cat([x, y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)], dim=1)


def norm2(x):
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def d64(sd):
    return {k: v.double() for k, v in sd.items()}


# ============================================================================================
# NVlabs layout: tensors, a forward from their semantics, and a persistent-object pickle.

def nvlabs_tensors(c_dim=0, g_map=2, d_map=3, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rn(*s, scale=1.0, shift=0.0):
        return torch.randn(*s, generator=gen) * scale + shift

    G, D = {}, {}
    embed = W if c_dim else 0
    if c_dim:
        G["mapping.embed.weight"], G["mapping.embed.bias"] = rn(W, c_dim), rn(W, scale=0.1)
    for i in range(g_map):
        G[f"mapping.fc{i}.weight"] = rn(W, (Z + embed) if i == 0 else W, scale=100.0)  # stored / lr_mult
        G[f"mapping.fc{i}.bias"] = rn(W, scale=10.0)
    G["mapping.w_avg"] = rn(W, scale=0.3)
    for r in (4, 8, 16):
        p, o = f"synthesis.b{r}", WIDTH[r]
        if r == 4:
            G[f"{p}.const"] = rn(o, 4, 4)
        G[f"{p}.resample_filter"] = BLUR.float().clone()
        for conv, i in (("conv0", WIDTH.get(r // 2)), ("conv1", o)):
            if conv == "conv0" and r == 4:
                continue
            q = f"{p}.{conv}"
            G[f"{q}.resample_filter"] = BLUR.float().clone()
            G[f"{q}.affine.weight"], G[f"{q}.affine.bias"] = rn(i, W), rn(i, scale=0.2, shift=1.0)
            G[f"{q}.weight"], G[f"{q}.bias"] = rn(o, i, 3, 3), rn(o, scale=0.1)
            G[f"{q}.noise_const"], G[f"{q}.noise_strength"] = rn(r, r), rn([], scale=0.2)
        G[f"{p}.torgb.affine.weight"], G[f"{p}.torgb.affine.bias"] = rn(o, W), rn(o, scale=0.2, shift=1.0)
        G[f"{p}.torgb.weight"], G[f"{p}.torgb.bias"] = rn(channels, o, 1, 1), rn(channels, scale=0.1)
    for r in (16, 8):
        p, t, o = f"b{r}", WIDTH[r], WIDTH[r // 2]
        D[f"{p}.resample_filter"] = BLUR.float().clone()
        if r == RES:
            D[f"{p}.fromrgb.weight"], D[f"{p}.fromrgb.bias"] = rn(t, channels, 1, 1), rn(t, scale=0.1)
            D[f"{p}.fromrgb.resample_filter"] = BLUR.float().clone()
        D[f"{p}.conv0.weight"], D[f"{p}.conv0.bias"] = rn(t, t, 3, 3), rn(t, scale=0.1)
        D[f"{p}.conv1.weight"], D[f"{p}.conv1.bias"] = rn(o, t, 3, 3), rn(o, scale=0.1)
        D[f"{p}.skip.weight"] = rn(o, t, 1, 1)
        for layer in ("conv0", "conv1", "skip"):
            D[f"{p}.{layer}.resample_filter"] = BLUR.float().clone()
    c4 = WIDTH[4]
    cmap = c4 if c_dim else 0
    if c_dim:
        D["mapping.embed.weight"], D["mapping.embed.bias"] = rn(cmap, c_dim), rn(cmap, scale=0.1)
        for i in range(d_map):
            D[f"mapping.fc{i}.weight"], D[f"mapping.fc{i}.bias"] = rn(cmap, cmap, scale=100.0), rn(cmap, scale=10.0)
    D["b4.conv.weight"], D["b4.conv.bias"] = rn(c4, c4 + 1, 3, 3), rn(c4, scale=0.1)
    D["b4.conv.resample_filter"] = BLUR.float().clone()
    D["b4.fc.weight"], D["b4.fc.bias"] = rn(c4, c4 * 16), rn(c4, scale=0.1)
    D["b4.out.weight"], D["b4.out.bias"] = rn(cmap or 1, c4), rn(cmap or 1, scale=0.1)
    return G, D


def nv_fc(P, pre, x, lr=1.0, act=False):
    w, b = P[f"{pre}.weight"], P[f"{pre}.bias"]
    y = x @ (w * lr / math.sqrt(w.shape[1])).t() + b * lr
    return lrelu(y) if act else y


def nv_mapping(P, z, c, layers, psi=1.0, lr=0.01):
    parts = [] if z is None else [norm2(z)]
    if c is not None:
        parts.append(norm2(nv_fc(P, "mapping.embed", c)))
    x = torch.cat(parts, dim=1)
    for i in range(layers):
        x = nv_fc(P, f"mapping.fc{i}", x, lr=lr, act=True)
    if psi != 1:
        x = P["mapping.w_avg"] + psi * (x - P["mapping.w_avg"])
    return x


def nv_generator(P, z, c=None, psi=1.0, layers=2, random_noise=False):
    """random_noise: draw N(0, 1) noise per layer from the global generator, in layer order."""
    P = d64(P)
    w = nv_mapping(P, z.double(), None if c is None else c.double(), layers, psi)
    x = P["synthesis.b4.const"][None].repeat(z.shape[0], 1, 1, 1)
    img = None

    def layer(x, q, up):
        y = modconv(x, P[f"{q}.weight"], nv_fc(P, f"{q}.affine", w), True, up)
        r = P[f"{q}.noise_const"].shape[0]
        noise = torch.randn(x.shape[0], 1, r, r).double() if random_noise else P[f"{q}.noise_const"][None, None]
        y = y + noise * P[f"{q}.noise_strength"]
        return lrelu(y + P[f"{q}.bias"][None, :, None, None])

    for r in (4, 8, 16):  # one w for every layer: truncation and broadcast give equal ws
        p = f"synthesis.b{r}"
        if r > 4:
            x = layer(x, f"{p}.conv0", True)
        x = layer(x, f"{p}.conv1", False)
        styles = nv_fc(P, f"{p}.torgb.affine", w) / math.sqrt(x.shape[1])
        y = modconv(x, P[f"{p}.torgb.weight"], styles, False) + P[f"{p}.torgb.bias"][None, :, None, None]
        img = y if img is None else upsample_img(img) + y
    return img


def nv_discriminator(P, img, c=None, d_layers=3, group=2, d_lr=0.01):
    P = d64(P)
    x = None
    img = img.double()
    for r in (16, 8):
        p = f"b{r}"

        def wt(name):
            v = P[f"{p}.{name}.weight"]
            return v / math.sqrt(v[0].numel())
        if r == RES:
            x = lrelu(F.conv2d(img, wt("fromrgb")) + P[f"{p}.fromrgb.bias"][None, :, None, None])
        y = skip_down(x, wt("skip")) * math.sqrt(0.5)
        x = lrelu(F.conv2d(x, wt("conv0"), padding=1) + P[f"{p}.conv0.bias"][None, :, None, None])
        x = lrelu(conv_down(x, wt("conv1")) + P[f"{p}.conv1.bias"][None, :, None, None]) * math.sqrt(0.5)
        x = x + y
    x = mbstd(x, group)
    w = P["b4.conv.weight"]
    x = lrelu(F.conv2d(x, w / math.sqrt(w[0].numel()), padding=1) + P["b4.conv.bias"][None, :, None, None])
    x = nv_fc(P, "b4.fc", x.flatten(1), act=True)
    x = nv_fc(P, "b4.out", x)
    if c is not None:
        cmap = nv_mapping(P, None, c.double(), d_layers, lr=d_lr)
        x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(cmap.shape[1])
    return x


_BUFFERS = ("resample_filter", "noise_const", "w_avg")


@contextlib.contextmanager
def fake_nvlabs_modules():
    """Module names NVlabs pickles refer to, present only while the fixture is written (pickle
    records a function by module and name). Their functions fail if anything calls them."""
    def never(*_a, **_k):
        raise AssertionError("the converter ran the pickle's reconstruct function")
    persistence = types.ModuleType("torch_utils.persistence")
    never.__module__ = "torch_utils.persistence"
    never.__qualname__ = never.__name__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = never
    util = types.ModuleType("fixture_util")

    class AttrDict(dict):  # an attribute-access dict, as NVlabs' configs use
        pass
    AttrDict.__module__, AttrDict.__qualname__ = "fixture_util", "AttrDict"
    util.AttrDict = AttrDict
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = persistence
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence", "fixture_util")}
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": persistence, "fixture_util": util})
    try:
        yield never, AttrDict
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Node:
    """A persistent-object record: pickles as reconstruct(meta) with meta holding the class
    name, a module source that must never run, and the object's state."""

    def __init__(self, class_name, recon, attrs=None, init_kwargs=None):
        self.class_name, self.recon = class_name, recon
        self.params, self.buffers = collections.OrderedDict(), collections.OrderedDict()
        self.children = collections.OrderedDict()
        self.attrs, self.init_kwargs = dict(attrs or {}), dict(init_kwargs or {})

    def child(self, name, class_name):
        if name not in self.children:
            self.children[name] = Node(class_name, self.recon)
        return self.children[name]

    def __reduce__(self):
        state = {"training": False, "_parameters": self.params, "_buffers": self.buffers,
                 "_non_persistent_buffers_set": set(), "_backward_hooks": collections.OrderedDict(),
                 "_forward_hooks": collections.OrderedDict(), "_forward_pre_hooks": collections.OrderedDict(),
                 "_state_dict_hooks": collections.OrderedDict(), "_modules": self.children,
                 "_init_args": (), "_init_kwargs": self.init_kwargs, **self.attrs}
        meta = {"type": "class", "version": 4, "class_name": self.class_name, "state": state,
                "module_src": "raise SystemExit('the pickle source was executed')\n"}
        return (self.recon, (meta,))


def _class_of(path):
    last = path[-1]
    if last.startswith("fc") or last in ("embed", "affine", "fc", "out"):
        return "FullyConnectedLayer"
    if last == "mapping":
        return "MappingNetwork"
    if last == "synthesis":
        return "SynthesisNetwork"
    if last == "torgb":
        return "ToRGBLayer"
    if last in ("conv0", "conv1") and path[0] == "synthesis":
        return "SynthesisLayer"
    if last in ("conv0", "conv1", "skip", "fromrgb", "conv"):
        return "Conv2dLayer"
    if last == "b4" and len(path) == 1:
        return "DiscriminatorEpilogue"
    return "SynthesisBlock" if path[0] == "synthesis" else "DiscriminatorBlock"


def nvlabs_tree(sd, class_name, recon, init_kwargs, attrs=None):
    root = Node(class_name, recon, attrs, init_kwargs)
    for name, t in sd.items():
        *path, leaf = name.split(".")
        node = root
        for i in range(len(path)):
            node = node.child(path[i], _class_of(path[:i + 1]))
        group = node.buffers if leaf in _BUFFERS else node.params
        group[leaf] = t.clone() if leaf in _BUFFERS else torch.nn.Parameter(t.clone(), requires_grad=False)
    return root


def nvlabs_pickle(path, G, D, c_dim=0, g_map=2, d_map=3, fp16=0, clamp=None, group=2, g_arch="skip",
                  extra_g_kwargs=None, G_raw=None, d_lr=0.01):
    with fake_nvlabs_modules() as (recon, AttrDict):
        g_kw = {"z_dim": Z, "c_dim": c_dim, "w_dim": W, "img_resolution": RES,
                "img_channels": G["synthesis.b16.torgb.weight"].shape[0],
                "mapping_kwargs": AttrDict(num_layers=g_map),
                "synthesis_kwargs": AttrDict(channel_base=BASE, channel_max=CMAX, num_fp16_res=fp16, conv_clamp=clamp),
                **(extra_g_kwargs or {})}
        d_kw = {"c_dim": c_dim, "img_resolution": RES, "img_channels": g_kw["img_channels"], "architecture": "resnet",
                "channel_base": BASE, "channel_max": CMAX, "num_fp16_res": fp16, "conv_clamp": clamp,
                "block_kwargs": AttrDict(), "mapping_kwargs": AttrDict(lr_multiplier=d_lr),
                "epilogue_kwargs": AttrDict(mbstd_group_size=group)}

        def g_tree(sd):
            t = nvlabs_tree(sd, "Generator", recon, g_kw, {"z_dim": Z, "c_dim": c_dim, "w_dim": W})
            for name, block in t.children["synthesis"].children.items():
                # NVlabs' rule: the fp16 highest resolutions, never 4x4.
                block.attrs.update(architecture=g_arch, use_fp16=int(name[1:]) >= max(2 ** (5 - fp16), 8))
                for layer in ("conv0", "conv1", "torgb"):
                    if layer in block.children:
                        block.children[layer].attrs["conv_clamp"] = clamp
            for fc in t.children["mapping"].children.values():
                fc.attrs.update(bias_gain=0.01, activation="lrelu")
            t.children["mapping"].attrs["w_avg_beta"] = 0.995
            return t

        d = nvlabs_tree(D, "Discriminator", recon, d_kw)
        d.children["b4"].children["mbstd"] = Node("MinibatchStdLayer", recon, {"group_size": group, "num_channels": 1})
        d.children["b4"].children["conv"].attrs["conv_clamp"] = clamp
        for name, block in d.children.items():
            if name not in ("b4", "mapping"):
                block.attrs.update(architecture="resnet", use_fp16=fp16 > 0)
        if "mapping" in d.children:
            for name, fc in d.children["mapping"].children.items():
                fc.attrs["bias_gain"] = d_lr if name != "embed" else 1
        data = {"G": g_tree(G_raw or G), "D": d, "G_ema": g_tree(G),
                "training_set_kwargs": AttrDict(path="faces.zip", resolution=RES), "augment_pipe": None}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    assert "torch_utils" not in sys.modules  # the reader cannot fall back on them
    return path


def _latents(n=4, c_dim=0, seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, Z, generator=gen)
    c = F.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else None
    img = torch.randn(n, 3, RES, RES, generator=gen)
    return z, c, img


# ============================================================================================
# The refusals.

def test_a_reduce_calling_os_system_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"G_ema": Payload()}))
    with pytest.raises(RefusedPickle, match=r"call posix\.system.*nothing in the file was run"):
        load_restricted_pickle(p)
    with pytest.raises(RefusedPickle):
        load_foreign_checkpoint(p)
    assert not marker.exists()


def test_a_payload_inside_a_network_record_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    G, D = nvlabs_tensors()
    with fake_nvlabs_modules() as (recon, _):
        node = nvlabs_tree(G, "Generator", recon, {}, {"hook": Payload()})
        (tmp_path / "g.pkl").write_bytes(pickle.dumps({"G_ema": node}))
    with pytest.raises(RefusedPickle, match="posix.system"):
        load_foreign_checkpoint(tmp_path / "g.pkl")
    assert not marker.exists()


def test_calls_and_unknown_objects_with_state_are_refused(tmp_path):
    class Evaluates:
        def __reduce__(self):
            return (eval, ("__import__('os').getcwd()",))

    with pytest.raises(RefusedPickle, match=r"call builtins\.eval"):
        load_restricted_pickle(io.BytesIO(pickle.dumps([Evaluates()])))
    # An object of a class the reader does not know, with fields of its own: refused, not built.
    with fake_nvlabs_modules() as (_, AttrDict):
        thing = AttrDict(a=1)
        thing.__dict__["secret"] = 2
        data = pickle.dumps({"x": thing}, protocol=4)
    with pytest.raises(RefusedPickle, match="fixture_util.AttrDict with its own state"):
        load_restricted_pickle(io.BytesIO(data))
    # Naming a function as a value (never called) is harmless data.
    assert load_restricted_pickle(io.BytesIO(pickle.dumps({"f": eval})))[0] == {"f": "<builtins.eval>"}


def test_rosinality_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2, 2)}, "args": Payload()}, p)
    with pytest.raises(ConversionError, match="contains code"):
        load_foreign_checkpoint(p)
    assert not marker.exists()


def test_stylegan3_and_orig_networks_are_refused(tmp_path):
    G, D = nvlabs_tensors()
    with pytest.raises(ConversionError, match="'orig'"):
        load_foreign_checkpoint(nvlabs_pickle(tmp_path / "orig.pkl", G, D, g_arch="orig"))
    with pytest.raises(ConversionError, match="D block b16 uses architecture 'orig or skip'"):
        load_foreign_checkpoint(nvlabs_pickle(tmp_path / "dskip.pkl", G, {k: v for k, v in D.items() if ".skip." not in k}))
    sg3 = {k.replace("synthesis.b4.", "synthesis.input."): v for k, v in G.items() if not k.startswith("synthesis.b")}
    sg3.update({"synthesis.input.freqs": torch.zeros(W, 2), "synthesis.L0_36_512.weight": torch.zeros(4, 4, 3, 3)})
    with fake_nvlabs_modules() as (recon, _):
        (tmp_path / "sg3.pkl").write_bytes(pickle.dumps({"G_ema": nvlabs_tree(sg3, "Generator", recon, {})}))
    with pytest.raises(ConversionError, match="StyleGAN3"):
        load_foreign_checkpoint(tmp_path / "sg3.pkl")


def test_partial_loads_are_refused_unless_allowed(tmp_path):
    G, D = nvlabs_tensors()
    del D["b8.skip.weight"]
    G_extra = dict(G, **{"synthesis.b8.extra": torch.zeros(3)})
    p = nvlabs_pickle(tmp_path / "partial.pkl", G_extra, D, extra_g_kwargs={"square": True})
    with pytest.raises(ConversionError, match="could not be mapped") as e:
        load_foreign_checkpoint(p)
    assert "b8.skip.weight" in str(e.value) or "synthesis.b8.extra" in str(e.value)
    conv = load_foreign_checkpoint(p, allow_partial=True)
    r = conv.report
    assert any("blocks.b8.skip.weight" in u for u in r.unmapped_target)
    assert any("synthesis.b8.extra" in u for u in r.unmapped_source)
    assert any("square" in u for u in r.unmapped_source)
    assert "D.blocks.b8.skip.weight" in r.fresh


# ============================================================================================
# NVlabs pickles: same images and logits as their semantics give.

@pytest.mark.parametrize("c_dim,fp16,d_lr", [(0, 0, 0.01), (3, 2, 0.05)])
def test_nvlabs_pickle_matches_reference(tmp_path, c_dim, fp16, d_lr):
    G, D = nvlabs_tensors(c_dim=c_dim)
    G_raw, _ = nvlabs_tensors(c_dim=c_dim, seed=5)
    p = nvlabs_pickle(tmp_path / "net.pkl", G, D, c_dim=c_dim, fp16=fp16, clamp=256.0 if fp16 else None, G_raw=G_raw,
                      d_lr=d_lr)
    conv = load_foreign_checkpoint(p)
    mc = conv.model_config
    assert (mc.resolution, mc.channels, mc.c_dim, mc.z_dim, mc.w_dim, mc.mapping_layers) == (RES, 3, c_dim, Z, W, 2)
    assert (mc.channel_base, mc.channel_max, mc.mbstd_group) == (BASE, CMAX, 2)
    assert mc.resolved_d_mapping_layers == (3 if c_dim else 2)
    assert (mc.precision, mc.num_fp16_res, mc.conv_clamp) == (("fp16", 2, 256.0) if fp16 else ("fp32", 0, None))
    assert not conv.report.partial
    assert any("as a plain dict" in n for n in conv.report.notes)
    assert any("rescaled" in n for n in conv.report.notes) == (d_lr != 0.01)
    Gn, Dn, G_ema = conv.build()
    z, c, img = _latents(c_dim=c_dim)
    with torch.no_grad():
        for psi in (1.0, 0.7):
            ours = G_ema(z, c, truncation_psi=psi, noise_mode="const", force_fp32=True)
            torch.testing.assert_close(ours.double(), nv_generator(G, z, c, psi), rtol=1e-4, atol=1e-4)
        Gn.eval()
        torch.testing.assert_close(Gn(z, c, noise_mode="const", force_fp32=True).double(), nv_generator(G_raw, z, c),
                                   rtol=1e-4, atol=1e-4)
        torch.manual_seed(7)  # random noise: the same draws in the same order give the same image
        ours = G_ema(z, c, noise_mode="random", force_fp32=True).double()
        torch.manual_seed(7)
        torch.testing.assert_close(ours, nv_generator(G, z, c, random_noise=True), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(Dn(img, c, force_fp32=True).double(), nv_discriminator(D, img, c, d_lr=d_lr),
                                   rtol=1e-4, atol=1e-4)


def test_convert_writes_a_checkpoint_our_loader_accepts(tmp_path):
    G, D = nvlabs_tensors(c_dim=3)
    p = nvlabs_pickle(tmp_path / "net.pkl", G, D, c_dim=3, fp16=4, clamp=256.0)
    report = convert(p, tmp_path / "ours.pt")
    ck = load_checkpoint(tmp_path / "ours.pt")  # validates every entry and tensor shape
    assert ck["model_config"]["d_mapping_layers"] == 3 and ck["config"]["extra"]["source_format"] == "nvlabs-pickle"
    assert ck["dataset"]["label_names"] == ["0", "1", "2"]
    assert (ck["config"]["precision"], ck["model_config"]["num_fp16_res"], ck["config"]["conv_clamp"]) == ("fp16", 2, 256.0)
    assert any("written to" in n for n in report.notes)
    from stylegan2.networks import Generator, ModelConfig
    G_ema = Generator(ModelConfig.from_dict(ck["model_config"])).eval()
    G_ema.load_state_dict(ck["G_ema"])
    z, c, _ = _latents(c_dim=3)
    with torch.no_grad():
        torch.testing.assert_close(G_ema(z, c, noise_mode="const", force_fp32=True).double(), nv_generator(G, z, c),
                                   rtol=1e-4, atol=1e-4)


def test_export_to_nvlabs_names_round_trips(tmp_path):
    G, D = nvlabs_tensors(c_dim=3)
    p = nvlabs_pickle(tmp_path / "net.pkl", G, D, c_dim=3)
    convert(p, tmp_path / "ours.pt")
    export_nvlabs(tmp_path / "ours.pt", tmp_path / "nv.pt")
    out = torch.load(tmp_path / "nv.pt", weights_only=True)
    for ours, theirs in (("G_ema", G), ("D", D)):
        assert set(out[ours]) == set(theirs)  # the names (and filter buffers) their networks register
        for k, v in theirs.items():
            torch.testing.assert_close(out[ours][k], v)
    assert out["D_init_kwargs"]["mapping_kwargs"]["num_layers"] == 3
    assert out["G_init_kwargs"]["synthesis_kwargs"]["channel_base"] == BASE
    again = load_foreign_checkpoint(tmp_path / "nv.pt")
    assert again.model_config == load_foreign_checkpoint(p).model_config


# ============================================================================================
# rosinality checkpoints.

def rosinality_tensors(channels=3, n_mlp=2, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rn(*s, scale=1.0, shift=0.0):
        return torch.randn(*s, generator=gen) * scale + shift

    g = {}
    for i in range(1, n_mlp + 1):
        g[f"style.{i}.weight"], g[f"style.{i}.bias"] = rn(W, W, scale=100.0), rn(W, scale=0.1)
    g["input.input"] = rn(1, WIDTH[4], 4, 4)

    def styled(pre, i, o, up):
        g[f"{pre}.conv.weight"] = rn(1, o, i, 3, 3)
        g[f"{pre}.conv.modulation.weight"], g[f"{pre}.conv.modulation.bias"] = rn(i, W), rn(i, scale=0.2, shift=1.0)
        g[f"{pre}.noise.weight"], g[f"{pre}.activate.bias"] = rn(1, scale=0.2), rn(o, scale=0.1)
        if up:
            g[f"{pre}.conv.blur.kernel"] = (BLUR * 4).float()

    def torgb(pre, i, up):
        g[f"{pre}.conv.weight"] = rn(1, channels, i, 1, 1)
        g[f"{pre}.conv.modulation.weight"], g[f"{pre}.conv.modulation.bias"] = rn(i, W), rn(i, scale=0.2, shift=1.0)
        g[f"{pre}.bias"] = rn(1, channels, 1, 1, scale=0.1)
        if up:
            g[f"{pre}.upsample.kernel"] = (BLUR * 4).float()

    styled("conv1", WIDTH[4], WIDTH[4], False)
    torgb("to_rgb1", WIDTH[4], False)
    for k, r in enumerate((8, 16)):
        styled(f"convs.{2 * k}", WIDTH[r // 2], WIDTH[r], True)
        styled(f"convs.{2 * k + 1}", WIDTH[r], WIDTH[r], False)
        torgb(f"to_rgbs.{k}", WIDTH[r], True)
    for n, r in enumerate((4, 8, 8, 16, 16)):
        g[f"noises.noise_{n}"] = rn(1, 1, r, r)
    d = {"convs.0.0.weight": rn(WIDTH[16], channels, 1, 1), "convs.0.1.bias": rn(WIDTH[16], scale=0.1)}
    for i, r in enumerate((16, 8), start=1):
        t, o = WIDTH[r], WIDTH[r // 2]
        d.update({f"convs.{i}.conv1.0.weight": rn(t, t, 3, 3), f"convs.{i}.conv1.1.bias": rn(t, scale=0.1),
                  f"convs.{i}.conv2.0.kernel": BLUR.float(), f"convs.{i}.conv2.1.weight": rn(o, t, 3, 3),
                  f"convs.{i}.conv2.2.bias": rn(o, scale=0.1), f"convs.{i}.skip.0.kernel": BLUR.float(),
                  f"convs.{i}.skip.1.weight": rn(o, t, 1, 1)})
    c4 = WIDTH[4]
    d.update({"final_conv.0.weight": rn(c4, c4 + 1, 3, 3), "final_conv.1.bias": rn(c4, scale=0.1),
              "final_linear.0.weight": rn(c4, c4 * 16), "final_linear.0.bias": rn(c4, scale=0.1),
              "final_linear.1.weight": rn(1, c4), "final_linear.1.bias": rn(1, scale=0.1)})
    return g, d


def ros_style(P, z, n_mlp=2, lr=0.01):
    x = norm2(z)
    for i in range(1, n_mlp + 1):
        w = P[f"style.{i}.weight"]
        x = lrelu(x @ (w * lr / math.sqrt(w.shape[1])).t() + P[f"style.{i}.bias"] * lr)
    return x


def ros_generator(P, z, psi=1.0, latent_avg=None):
    P = d64(P)
    w = ros_style(P, z.double())
    if psi != 1:
        w = latent_avg.double() + psi * (w - latent_avg.double())

    def styled(x, pre, noise, up):
        weight = P[f"{pre}.conv.weight"][0]
        s = w @ (P[f"{pre}.conv.modulation.weight"] / math.sqrt(W)).t() + P[f"{pre}.conv.modulation.bias"]
        y = modconv(x, weight / math.sqrt(weight[0].numel()), s, True, up)
        y = y + P[f"{pre}.noise.weight"] * P[f"noises.noise_{noise}"]
        return lrelu(y + P[f"{pre}.activate.bias"][None, :, None, None])

    def torgb(x, pre, skip):
        weight = P[f"{pre}.conv.weight"][0]
        s = w @ (P[f"{pre}.conv.modulation.weight"] / math.sqrt(W)).t() + P[f"{pre}.conv.modulation.bias"]
        y = modconv(x, weight / math.sqrt(weight.shape[1]), s, False) + P[f"{pre}.bias"]
        return y if skip is None else y + upsample_img(skip)

    x = P["input.input"].repeat(z.shape[0], 1, 1, 1)
    x = styled(x, "conv1", 0, False)
    img = torgb(x, "to_rgb1", None)
    for k in range(2):
        x = styled(x, f"convs.{2 * k}", 2 * k + 1, True)
        x = styled(x, f"convs.{2 * k + 1}", 2 * k + 2, False)
        img = torgb(x, f"to_rgbs.{k}", img)
    return img


def ros_discriminator(P, img):
    P = d64(P)

    def eq(name):
        v = P[name]
        return v / math.sqrt(v[0].numel())
    x = lrelu(F.conv2d(img.double(), eq("convs.0.0.weight")) + P["convs.0.1.bias"][None, :, None, None])
    for i in (1, 2):
        out = F.conv2d(x, eq(f"convs.{i}.conv1.0.weight"), padding=1)
        out = lrelu(out + P[f"convs.{i}.conv1.1.bias"][None, :, None, None])
        out = lrelu(conv_down(out, eq(f"convs.{i}.conv2.1.weight")) + P[f"convs.{i}.conv2.2.bias"][None, :, None, None])
        x = (out + skip_down(x, eq(f"convs.{i}.skip.1.weight"))) / SQRT2
    x = mbstd(x, 4)
    x = lrelu(F.conv2d(x, eq("final_conv.0.weight"), padding=1) + P["final_conv.1.bias"][None, :, None, None])
    x = lrelu(x.flatten(1) @ eq("final_linear.0.weight").t() + P["final_linear.0.bias"])
    return x @ eq("final_linear.1.weight").t() + P["final_linear.1.bias"]


def test_rosinality_matches_reference(tmp_path):
    g_ema, d = rosinality_tensors()
    g, _ = rosinality_tensors(seed=3)
    latent_avg = torch.randn(W) * 0.3
    args = argparse.Namespace(size=RES, latent=W, n_mlp=2, channel_multiplier=2, r1=10.0)
    torch.save({"g": g, "d": d, "g_ema": g_ema, "args": args, "latent_avg": latent_avg,
                "g_optim": {"state": {}, "param_groups": []}}, tmp_path / "r.pt")
    conv = load_foreign_checkpoint(tmp_path / "r.pt")
    mc = conv.model_config
    assert (mc.resolution, mc.channels, mc.z_dim, mc.w_dim, mc.mapping_layers, mc.mbstd_group) == (RES, 3, W, W, 2, 4)
    assert not conv.report.partial
    Gn, Dn, G_ema = conv.build()
    z, _, img = _latents()
    with torch.no_grad():
        for psi in (1.0, 0.6):
            torch.testing.assert_close(G_ema(z, truncation_psi=psi, noise_mode="const").double(),
                                       ros_generator(g_ema, z, psi, latent_avg), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(Gn.eval()(z, noise_mode="const").double(), ros_generator(g, z), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(Dn(img).double(), ros_discriminator(d, img), rtol=1e-4, atol=1e-4)
    convert(tmp_path / "r.pt", tmp_path / "ours.pt")
    load_checkpoint(tmp_path / "ours.pt")


def test_rosinality_in_torch_legacy_format(tmp_path):
    g_ema, d = rosinality_tensors()
    torch.save({"g_ema": g_ema, "d": d, "latent_avg": torch.zeros(W)}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)  # starts like a pickle, read by torch.load
    conv = load_foreign_checkpoint(tmp_path / "old.pt")
    assert conv.model_config.resolution == RES and any("only g_ema" in n for n in conv.report.notes)


def test_rosinality_without_latent_avg_estimates_it(tmp_path):
    g_ema, _ = rosinality_tensors()
    torch.save({"g_ema": g_ema}, tmp_path / "r.pt")
    with pytest.raises(ConversionError, match="no discriminator"):
        load_foreign_checkpoint(tmp_path / "r.pt")
    conv = load_foreign_checkpoint(tmp_path / "r.pt", allow_partial=True)
    assert any("mean w of" in n for n in conv.report.notes)
    gen = torch.Generator().manual_seed(0)
    zs = torch.cat([torch.randn(1000, Z, generator=gen) for _ in range(10)])
    expected = ros_style(d64(g_ema), zs.double()).mean(dim=0)
    torch.testing.assert_close(conv.G_ema["mapping.w_avg"].double(), expected, rtol=1e-4, atol=1e-4)


# ============================================================================================
# Transfer: RGB -> grayscale, resolution changes.

def test_rgb_to_grayscale_is_luminance_and_summed_fromrgb(tmp_path):
    g_ema, d = rosinality_tensors()
    torch.save({"g": g_ema, "g_ema": g_ema, "d": d, "latent_avg": torch.zeros(W)}, tmp_path / "r.pt")
    rgb = load_foreign_checkpoint(tmp_path / "r.pt")
    gray = adapt_channels(rgb, channels=1)
    assert gray.model_config.channels == 1 and any("luminance" in n for n in gray.report.notes)
    _, D3, G3 = rgb.build()
    _, D1, G1 = gray.build()
    z, _, img = _latents()
    lum = torch.tensor(LUMINANCE).reshape(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(G1(z, noise_mode="const"), (G3(z, noise_mode="const") * lum).sum(1, keepdim=True),
                                   rtol=1e-4, atol=1e-5)
        g = img[:, :1]
        torch.testing.assert_close(D1(g), D3(g.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
        back = adapt_channels(gray, channels=3)  # gray -> RGB: D sees the mean of R, G, B
        _, D3b, _ = back.build()
        torch.testing.assert_close(D3b(img), D1(img.mean(dim=1, keepdim=True)), rtol=1e-4, atol=1e-4)
    convert(tmp_path / "r.pt", tmp_path / "gray.pt", channels=1)
    assert load_checkpoint(tmp_path / "gray.pt")["model_config"]["channels"] == 1


def test_resolution_change_reuses_blocks_and_reports_fresh(tmp_path):
    G, D = nvlabs_tensors()
    conv = load_foreign_checkpoint(nvlabs_pickle(tmp_path / "n.pkl", G, D))
    up = adapt_channels(conv, resolution=32)
    assert up.model_config.resolution == 32
    assert "G.synthesis.blocks.b32.conv0.weight" in up.report.fresh and "D.blocks.b32.fromrgb.weight" in up.report.fresh
    assert not any(".b16." in f or ".b8." in f for f in up.report.fresh if f.startswith("G"))
    for k, v in conv.G_ema.items():
        torch.testing.assert_close(up.G_ema[k], v)
    assert any("b16.fromrgb" in n and "dropped" in n for n in up.report.notes)
    Gu, Du, Gu_ema = up.build()
    _, _, G16 = conv.build()
    z, _, _ = _latents()
    with torch.no_grad():
        big = Gu_ema(z, noise_mode="const")
        torch.testing.assert_close(big, upsample_img(G16(z, noise_mode="const").double()).float(), rtol=1e-4, atol=1e-4)
        assert Du(Gu.eval()(z)).shape == (4, 1)
    down = adapt_channels(conv, resolution=8)
    assert "D.blocks.b8.fromrgb.weight" in down.report.fresh
    down.build()
