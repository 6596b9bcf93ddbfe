"""Feature networks by name: images in, one feature vector per image out.

    net = get_feature_network("discriminator", ckpt="runs/00000-slices-tiny")  # always available
    net = get_feature_network("inception")            # FID Inception-v3 (pytorch-fid), local weights
    net = get_feature_network("torchscript:/models/my_encoder.pt")
    net = get_feature_network("exported:/models/my_encoder.pt2")   # torch.export.save's file
    feats = extract_features(net, images)             # float64 numpy [N, net.dim]

Every network takes images as float [N, C, R, R] in [-1, 1] (what the generator produces) or
uint8 [N, C, R, R] (what datasets hold); each converts them to what it was trained on itself.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..fileio import sha256_file
from ..pickle_scan import archive_code
from ..training.checkpoint import load_checkpoint, load_discriminator

INCEPTION_WEIGHTS_ENV = "STYLEGAN2_INCEPTION_WEIGHTS"
# The file pytorch-fid's InceptionV3 downloads (pytorch_fid.inception.FID_WEIGHTS_URL). torch.hub
# names downloaded files <name>-<first 8 hex digits of their SHA-256>, and checks that prefix
# when asked to; we check the same prefix, so a truncated or wrong file fails before it skews FID.
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
INCEPTION_SHA256_PREFIX = "6726825d"


class FeatureNetworkError(RuntimeError):
    """A feature network cannot be made: one line that says what to do."""


class FeatureNetwork:
    """A named image -> feature map. Call with images [N, C, R, R] (float in [-1, 1] or uint8);
    returns float32 features [N, dim] on the network's device.

    name: what every reported number is labelled with (e.g. "inception", "discriminator:ckpt-...").
    dim: feature length (-1 until the first call for a user's TorchScript or exported module).
    key: identifies the weights, not just the kind (two runs' discriminators share a name but
        not a key); cached real-data statistics are filed under it.
    """

    def __init__(self, name: str, dim: int, fn: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, key: Optional[str] = None) -> None:
        self.name, self.dim, self._fn, self.device = name, dim, fn, device
        self.key = key or name

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, R, R], got shape {list(images.shape)}")
        feats = self._fn(to_unit_range(images.to(self.device)))
        feats = feats.reshape(feats.shape[0], -1).float()
        if self.dim < 0:  # a user module's length is known only once it has run
            self.dim = feats.shape[1]
        return feats

    def __repr__(self) -> str:
        return f"FeatureNetwork({self.name!r}, dim={self.dim})"


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, R, R] or float in [-1, 1] -> float32 in [-1, 1] (floats clipped), the
    generator's convention, with uint8 v mapped as v / 127.5 - 1."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    return images.float().clamp(-1, 1)


@torch.no_grad()
def extract_features(net: FeatureNetwork, images: torch.Tensor | np.ndarray | Iterable[torch.Tensor],
                     batch: int = 64, *, progress: bool = False, desc: str = "features") -> np.ndarray:
    """Features of all images, computed `batch` at a time.

    images: [N, C, R, R] tensor or array (uint8 or float in [-1, 1]), or an iterable of such
        batches (a generator that yields fakes, so they never all sit in memory).
    progress: a tqdm bar (labelled `desc`) over the batches; off by default so library calls
        stay quiet, on in the commands, where Inception on a CPU takes minutes.
    Returns float64 numpy [N, net.dim] (float64 so covariances of thousands of images keep
    their precision).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    total = None
    if torch.is_tensor(images):
        total = -(-len(images) // batch)
        batches: Iterable[torch.Tensor] = (images[i:i + batch] for i in range(0, len(images), batch))
    else:
        batches = images
    bar = tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress, leave=False)
    out = [net(b).cpu().double().numpy() for b in bar]
    if not out:
        return np.zeros((0, net.dim))
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------
# discriminator

def discriminator_network(ckpt: str | os.PathLike | dict[str, Any], device: torch.device) -> FeatureNetwork:
    """The discriminator's last hidden layer (the epilogue's FC output, before the logit layer).

    Its minibatch-standard-deviation layer is given a group of one image, so an image's features
    never depend on which other images share its batch (with groups, FID would change with the
    batch size and order). Runs in float32 whatever the checkpoint's mixed precision.
    """
    ck = ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt)
    D = load_discriminator(ck, device=device)
    if D.b4.mbstd is not None:
        D.b4.mbstd.group_size = 1
    captured: list[torch.Tensor] = []
    D.b4.fc.register_forward_hook(lambda _m, _i, out: captured.append(out))
    # c only enters after the hooked layer (projection onto the logit), so zeros do not matter.
    c = torch.zeros(1, D.c_dim, device=device) if D.c_dim > 0 else None

    def fn(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        D(x, None if c is None else c.expand(len(x), -1), force_fp32=True)
        return captured[0]

    name = f"discriminator:{Path(ck['path']).name}" if "path" in ck else "discriminator"
    key = "discriminator-" + _state_digest(ck["D"])
    return FeatureNetwork(name, _probe_dim(fn, D, device), fn, device, key)


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    """16 hex digits of SHA-256 over a state dict's names and values."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _probe_dim(fn: Callable[[torch.Tensor], torch.Tensor], D: nn.Module, device: torch.device) -> int:
    """Feature length, by running one blank image (cheaper to trust than layer attributes)."""
    with torch.no_grad():
        x = torch.zeros(1, D.img_channels, D.img_resolution, D.img_resolution, device=device)
        return int(fn(x).reshape(1, -1).shape[1])


# --------------------------------------------------------------------------------------------
# inception

def inception_weights_path(weights: Optional[str | os.PathLike] = None) -> Path:
    """Where the FID Inception weights are read from: `weights`, else $STYLEGAN2_INCEPTION_WEIGHTS,
    else torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints, by default
    ~/.cache/torch/hub/checkpoints), where pytorch-fid itself caches the file."""
    return local_weights_path(weights, INCEPTION_WEIGHTS_ENV, INCEPTION_FILE)


def local_weights_path(weights: Optional[str | os.PathLike], env_var: str, filename: str) -> Path:
    """The one rule for every pretrained file the package reads and never downloads (Inception,
    LPIPS's VGG16): `weights` if given, else the file $env_var names, else `filename` in torch.hub's
    checkpoint folder, where the libraries that publish these files cache them."""
    if weights is not None:
        return Path(weights).expanduser()
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _missing_weights_message(path: Path) -> str:
    return (f"the FID Inception-v3 weights are not at {path}: download {INCEPTION_URL} (SHA-256 starting "
            f"{INCEPTION_SHA256_PREFIX}) and put it there, or name the file with --inception-weights or "
            f"${INCEPTION_WEIGHTS_ENV}; they are never downloaded at run time. Without them, use another "
            f"feature network (e.g. 'discriminator')")


_PFID_SWAP = threading.Lock()  # held while pytorch_fid.inception.load_state_dict_from_url is ours


def inception_network(device: torch.device, weights: Optional[str | os.PathLike] = None,
                      check_hash: bool = True) -> FeatureNetwork:
    """pytorch-fid's InceptionV3 (the TensorFlow FID graph ported; pool3 features, 2048 long).

    Input conversion, exactly: [-1, 1] -> [0, 1] by (x + 1) / 2; a 1-channel image is repeated
    to 3 identical channels; then pytorch-fid's own preprocessing: bilinear resize to 299x299
    (F.interpolate, align_corners=False, no antialiasing) and scaling back to [-1, 1].
    check_hash=False skips the SHA-256 prefix check (for stand-in weights in tests).
    Raises FeatureNetworkError when pytorch-fid is missing or the weights file is missing or wrong.
    """
    try:
        from pytorch_fid import inception as pfid
    except ImportError:
        raise FeatureNetworkError("the 'inception' feature network needs pytorch-fid: "
                                  "pip install -e \".[metrics]\" (or pip install pytorch-fid)") from None
    path = inception_weights_path(weights)
    if not path.is_file():
        raise FeatureNetworkError(_missing_weights_message(path))
    digest = sha256_file(path)
    if check_hash and not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise FeatureNetworkError(f"{path} is not the FID Inception-v3 weights file (its SHA-256 does not start "
                                  f"{INCEPTION_SHA256_PREFIX}): download it again from {INCEPTION_URL}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file; one line is what helps
        raise FeatureNetworkError(f"{path} is not a readable state dict: {type(e).__name__}: {e}") from None

    # pytorch-fid fetches its weights through load_state_dict_from_url inside InceptionV3();
    # handing it our local file instead keeps its network definition and loading code unchanged
    # while guaranteeing nothing is downloaded. The swap is a module global: the lock keeps two
    # threads building networks at once from restoring each other's stand-in.
    with _PFID_SWAP:
        original = pfid.load_state_dict_from_url
        pfid.load_state_dict_from_url = lambda *a, **k: state
        try:
            model = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        except RuntimeError as e:  # load_state_dict: wrong keys or shapes
            raise FeatureNetworkError(f"{path} does not fit pytorch-fid's InceptionV3: "
                                      f"{str(e).splitlines()[0]}") from None
        finally:
            pfid.load_state_dict_from_url = original
    model.eval().to(device)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return model((x + 1) / 2)[0]

    return FeatureNetwork("inception", 2048, fn, device, key="inception-" + digest[:16])


# --------------------------------------------------------------------------------------------
# torchscript

def torchscript_network(path: str | os.PathLike, device: torch.device) -> FeatureNetwork:
    """A user's TorchScript module: called on float [N, C, R, R] in [-1, 1] (it adapts channels
    and size itself), returning [N, ...] that is flattened to [N, dim]."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatureNetworkError(f"torchscript feature network: no file {p}")
    try:
        module = torch.jit.load(str(p), map_location=device).eval()
    except Exception as e:  # jit.load raises RuntimeError or ValueError for non-TorchScript files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FeatureNetworkError(f"{p} is not a TorchScript module: {first}") from None
    return FeatureNetwork(f"torchscript:{p.name}", -1, module, device, key="torchscript-" + sha256_file(p)[:16])


# --------------------------------------------------------------------------------------------
# torch.export (TorchScript's successor: torch.jit is deprecated from torch 2.10 on)

def exported_network(path: str | os.PathLike, device: torch.device) -> FeatureNetwork:
    """A user's torch.export program (the file torch.export.save writes), called like
    torchscript_network's module: one input, images [N, C, R, R] in [-1, 1], one output.

    torch.export.load unpickles some members of an archive with weights_only=False (pickled
    weights or constants, its sample inputs on a fallback path), so every pickle in the archive
    is read first by its opcodes, and a file whose pickles name anything but tensors and plain
    containers is refused before torch sees it: nothing in it runs. The batch: a program exported
    with a fixed batch size gets batches of exactly that size (the last one padded with copies of
    its last image, whose features are dropped), one with a bounded dynamic batch gets chunks
    within its bounds, an unbounded one the whole batch; so it must treat the images of a batch
    independently (eval-mode layers). It is moved to `device` with torch.export's own pass,
    which also moves constants and the devices written into its graph."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatureNetworkError(f"exported feature network: no file {p}")
    try:
        code = archive_code(p)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise FeatureNetworkError(f"{p} is not a torch.export program (torch.export.save): not a readable zip "
                                  f"archive ({type(e).__name__})") from None
    if code:
        raise FeatureNetworkError(f"{p}: refused because loading it would unpickle code ({'; '.join(code[:3])}); "
                                  f"nothing in it was run")
    quiet = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [log.level for log in quiet]
    for log in quiet:  # a failed load also logs its traceback as a warning
        log.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(str(p))
    except Exception as e:  # a zip of another kind (e.g. a state dict)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FeatureNetworkError(f"{p} is not a torch.export program (torch.export.save): {first}") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    low, high = exported_batch_range(program, p)
    module = _exported_module(program, device)

    def fn(x: torch.Tensor) -> torch.Tensor:
        step = x.shape[0] if high is None else high
        out = []
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step]
            n = chunk.shape[0]
            if n < low:
                chunk = torch.cat([chunk, chunk[-1:].expand(low - n, *chunk.shape[1:])])
            out.append(module(chunk)[:n])
        return torch.cat(out)

    return FeatureNetwork(f"exported:{p.name}", -1, fn, device, key="exported-" + sha256_file(p)[:16])


def exported_batch_range(program: Any, path: Path | str = "program") -> tuple[int, Optional[int]]:
    """(smallest, largest) batch an exported program accepts: (b, b) for a fixed batch size b,
    the bounds of a dynamic one (largest None: unbounded). Raises FeatureNetworkError unless it
    takes one 4-D tensor and returns one value."""
    sig = program.graph_signature
    if len(sig.user_inputs) != 1 or len(sig.user_outputs) != 1:
        raise FeatureNetworkError(f"{path}: a feature network takes one input (the images) and returns one "
                                  f"output; this program takes {len(sig.user_inputs)} and returns "
                                  f"{len(sig.user_outputs)}")
    node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == sig.user_inputs[0]), None)
    val = None if node is None else node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.ndim != 4:
        raise FeatureNetworkError(f"{path}: its input must be images [N, C, R, R], it was exported with "
                                  f"{list(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__}")
    size = val.shape[0]
    if isinstance(size, int):
        return size, size
    bounds = program.range_constraints.get(size.node.expr)
    if bounds is None:
        return 1, None
    low = max(1, int(bounds.lower))
    try:
        high: Optional[int] = int(bounds.upper)
    except (TypeError, ValueError, OverflowError, AttributeError):  # unbounded: torch's or sympy's infinity
        high = None
    return low, high


def _exported_module(program: Any, device: torch.device) -> Any:
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:  # torch before 2.6: parameters and buffers only
        return program.module().to(device)
    return move_to_device_pass(program, device).module()


# --------------------------------------------------------------------------------------------

def get_feature_network(name: str, ckpt: str | os.PathLike | dict[str, Any] | None = None,
                        device: str | torch.device = "cpu", *,
                        inception_weights: Optional[str | os.PathLike] = None,
                        check_hash: bool = True) -> FeatureNetwork:
    """A feature network by name: 'discriminator' (needs `ckpt`: a checkpoint file, run folder or
    loaded checkpoint dict), 'inception' (weights from `inception_weights`,
    $STYLEGAN2_INCEPTION_WEIGHTS or torch.hub's cache; see inception_network), 'random[:SEED]'
    (a fixed random conv net, see random_net.py), 'torchscript:PATH' or 'exported:PATH' (a
    torch.export program). Raises FeatureNetworkError
    (one line) when it cannot be made."""
    device = torch.device(device)
    if name == "discriminator":
        if ckpt is None:
            raise FeatureNetworkError("the 'discriminator' feature network needs a checkpoint (--ckpt)")
        return discriminator_network(ckpt, device)
    if name == "inception":
        return inception_network(device, inception_weights, check_hash=check_hash)
    if name.startswith("torchscript:"):
        return torchscript_network(name[len("torchscript:"):], device)
    if name.startswith("exported:"):
        return exported_network(name[len("exported:"):], device)
    if name == "random" or name.startswith("random:"):
        seed = name[len("random:"):] if ":" in name else "0"
        if not seed.isdigit():
            raise FeatureNetworkError(f"feature network {name!r}: the seed after 'random:' must be a whole number")
        from .random_net import random_network  # here: random_net imports FeatureNetwork from this module
        return random_network(int(seed), device)
    raise FeatureNetworkError(f"unknown feature network {name!r}: use 'discriminator', 'inception', "
                              f"'random[:SEED]', 'torchscript:PATH' or 'exported:PATH'")
