"""Generation at full speed: a trained generator wrapped for throughput.

    sampler = Sampler(G_ema, speedup="cudagraph")
    images = sampler(z)            # float32 [N, C, R, R], roughly [-1, 1]
    generate_images(sampler, parse_seeds("0-7,12"), "out/")   # seedNNNN.png files and grid.png

Generation is a fixed graph of a few hundred small kernels per batch, so on a fast GPU the host's
launch overhead can rival the work itself at moderate batch sizes. Two remedies, chosen with
`speedup`:

- "cudagraph": one CUDA graph per batch size, captured after a few eager warm-up calls (the
  first lets cuDNN autotune and the ops run their one-time kernel self-check; the others run
  with host synchronisation made an error, so anything a capture cannot hold is found first),
  then replayed with the latent copied into its static input. The first replay, into a
  NaN-filled output, is compared with the eager result; any capture error or disagreement falls
  back to eager calls (for every batch size) with one warning, so a speedup never changes what
  comes out. Capture and replay run with the generator's device current.
- "compile": torch.compile of the whole call (the project's kernels are torch.library ops
  with fake implementations, so dynamo keeps them in the graph); one compile per batch size.
- "none": plain eager calls (the reference point the benchmarks compare against).

All three run under torch.no_grad with G in eval mode and the truncation and noise settings given
at construction, which are baked into captured graphs.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import fileio
from .image_writer import PngWriter
from .images import save_grid, to_uint8
from .networks import use_channels_last
from .torch_settings import seeded_rng

SPEEDUPS = ("none", "cudagraph", "compile")
NOISE_MODES = ("const", "random", "none")
GRID_MAX = 64  # generate_images' grid.png shows at most this many images


@dataclass
class _Captured:
    """One captured batch size: its static input buffers, the graph, and its static output."""

    z: torch.Tensor
    c: Optional[torch.Tensor]
    graph: Any  # torch.cuda.CUDAGraph
    out: torch.Tensor


class Sampler:
    """z [N, z_dim] (+ c [N, c_dim]) -> images float32 [N, C, R, R] from generator `G`.

    Args:
        G: a Generator (stylegan2.networks). It is put in eval mode and, with channels_last, its
            blocks are switched to NHWC activations (in place: the sampler owns it from here).
        speedup: "none", "cudagraph" (CUDA devices only) or "compile"; see the module docstring.
        channels_last: run the synthesis blocks' activations NHWC.
        fused_modconv: None (NVlabs' rule), True or False; see Generator.set_fused_modconv.
        truncation_psi, truncation_cutoff, noise_mode, force_fp32: as Generator.forward.
        compile_backend, compile_mode: passed to torch.compile for speedup="compile".
        warmup: eager calls before a capture (cuDNN autotuning, lazy initialisation).
        max_graphs: captured batch sizes kept at once (least recently used dropped first).

    Raises ValueError for an unknown speedup or noise mode, or "cudagraph" on a CPU generator.
    """

    def __init__(self, G: nn.Module, *, speedup: str = "none", channels_last: bool = False,
                 fused_modconv: Optional[bool] = None, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                 noise_mode: str = "const", force_fp32: bool = False, compile_backend: str = "inductor",
                 compile_mode: Optional[str] = None, warmup: int = 3, max_graphs: int = 4) -> None:
        if speedup not in SPEEDUPS:
            raise ValueError(f"speedup: must be one of {', '.join(SPEEDUPS)}, got {speedup!r}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode: must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
        if warmup < 1 or max_graphs < 1:
            raise ValueError(f"warmup and max_graphs: must be at least 1, got {warmup} and {max_graphs}")
        self.device = next(iter(G.parameters())).device
        if speedup == "cudagraph" and self.device.type != "cuda":
            raise ValueError(f"speedup 'cudagraph' needs the generator on a CUDA device; it is on "
                             f"{self.device.type} (use speedup 'none' or 'compile')")
        self.G = G.eval()
        use_channels_last(G, channels_last)
        G.set_fused_modconv(fused_modconv)
        self.speedup, self.channels_last = speedup, channels_last
        self.z_dim, self.c_dim = int(G.z_dim), int(G.c_dim)
        self._kwargs = dict(truncation_psi=float(truncation_psi), truncation_cutoff=truncation_cutoff,
                            noise_mode=noise_mode, force_fp32=bool(force_fp32))
        self.warmup, self.max_graphs = warmup, max_graphs
        self._graphs: OrderedDict[tuple[int, bool], _Captured] = OrderedDict()
        self.fallback_reason: Optional[str] = None  # why "cudagraph" now runs eagerly, if it does
        self._compiled: Optional[Callable[..., torch.Tensor]] = None
        self._eager_once = False
        self._compiled_reuses_output = compile_mode in ("reduce-overhead", "max-autotune")
        if speedup == "compile":
            self._compiled = torch.compile(self._eager, backend=compile_backend, mode=compile_mode,
                                           dynamic=False)

    # ----------------------------------------------------------------------------------------

    def __call__(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        z, c = self._check(z, c)
        with torch.no_grad():
            if self._compiled is not None:
                if not self._eager_once:
                    # One eager call first: the kernels' one-time self-checks cannot run while
                    # dynamo traces (they would be skipped, and the kernels trusted unchecked).
                    self._eager_once = True
                    return self._eager(z, c)
                out = self._compiled(z, c)
                # Modes that use CUDA graphs inside inductor reuse their output memory.
                return out.clone() if self._compiled_reuses_output else out
            if self.speedup == "cudagraph" and self.fallback_reason is None:
                with torch.cuda.device(self.device):
                    out = self._replay(z, c)
                if out is not None:
                    return out
            return self._eager(z, c)

    @property
    def noise_mode(self) -> str:
        return self._kwargs["noise_mode"]

    @property
    def captured_batches(self) -> list[int]:
        """Batch sizes with a captured CUDA graph, least recently used first."""
        return [n for n, _ in self._graphs]

    def _check(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.z_dim or z.shape[0] < 1:
            got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z: expected [N, {self.z_dim}] with N >= 1, got {got}")
        if z.device != self.device:
            raise ValueError(f"z: on {z.device}, the generator is on {self.device}")
        if self.c_dim == 0:
            c = None
        elif c is None or c.shape != (z.shape[0], self.c_dim):
            raise ValueError(f"c: this generator is conditional and needs [{z.shape[0]}, {self.c_dim}] "
                             f"labels, got {None if c is None else list(c.shape)}")
        else:
            c = c.to(self.device, torch.float32)
        return z.to(torch.float32), c

    def _eager(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        return self.G(z, c, **self._kwargs)

    # ----------------------------------------------------------------------------------------
    # CUDA graphs.

    def _replay(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Run the captured graph for this batch size (capturing it first if needed); None when
        capturing failed (then the sampler has switched to eager calls)."""
        key = (z.shape[0], c is not None)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._capture(z, c)
            if cap is None:
                return None
            return cap.out.clone()  # _capture already ran it on this z
        self._graphs.move_to_end(key)
        cap.z.copy_(z)
        if c is not None:
            cap.c.copy_(c)
        cap.graph.replay()
        # The static output is overwritten by the next replay: hand out a copy.
        return cap.out.clone()

    def _capture(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> Optional[_Captured]:
        static_z = z.clone()
        static_c = None if c is None else c.clone()
        caller_stream = torch.cuda.current_stream(self.device)
        try:
            # Warm up on a side stream, as CUDA graph capture requires: the first call picks cuDNN
            # algorithms, loads and self-checks the kernels and allocates workspaces, none of
            # which may happen during capture. The later warm-up calls run with host syncs made
            # errors, so anything that would break the capture is found (and named) before it.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(caller_stream)
            with torch.cuda.stream(side):
                expected = self._eager(static_z, static_c)
                previous_mode = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    for _ in range(self.warmup - 1):
                        expected = self._eager(static_z, static_c)
                finally:
                    torch.cuda.set_sync_debug_mode(previous_mode)
            caller_stream.wait_stream(side)
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._eager(static_z, static_c)
            # Capturing runs nothing: NaN-fill the output so a graph that recorded no work (or
            # not the work that writes `out`) cannot pass the check below with eager's values.
            out.fill_(float("nan"))
            graph.replay()
            self._check_replay(out, expected)
        except Exception as e:  # noqa: BLE001 - any capture problem means: run eagerly
            # A failed capture can leave the capture stream current; give the caller theirs back.
            torch.cuda.set_stream(caller_stream)
            cause = e.__context__ if "previous error during capture" in str(e) and e.__context__ else e
            text = str(cause).splitlines()[0] if str(cause) else ""
            self.fallback_reason = f"{type(cause).__name__}: {text}"
            self._graphs.clear()
            warnings.warn(f"Sampler: CUDA graph capture failed ({self.fallback_reason}); generating "
                          "with eager calls instead (same images, less speed)", RuntimeWarning, stacklevel=4)
            return None
        cap = _Captured(z=static_z, c=static_c, graph=graph, out=out)
        self._graphs[(z.shape[0], c is not None)] = cap
        return cap

    def _check_replay(self, out: torch.Tensor, expected: torch.Tensor) -> None:
        """The first replay against the eager warm-up on the same input. Same kernels, so only
        rounding-level differences are allowed (wider where layers run in 16-bit floats; some
        cuDNN algorithms are not bitwise deterministic). Random noise differs per call by design:
        there only "every value written and finite" can be checked."""
        if not bool(out.isfinite().all()):
            raise RuntimeError("the captured graph left NaN/Inf in its output (it did not record the "
                               "generator's work)")
        if self._kwargs["noise_mode"] == "random":
            return
        mixed = any(getattr(b, "dtype", torch.float32) != torch.float32 for b in self.G.synthesis.blocks.values())
        tol = 2e-2 if mixed and not self._kwargs["force_fp32"] else 1e-3
        if not torch.allclose(out, expected, rtol=tol, atol=tol):
            err = (out - expected).abs().max().item()
            raise RuntimeError(f"the captured graph's output differs from eager by up to {err:.3g}")


# --------------------------------------------------------------------------------------------
# Seeds to files.

def seed_latents(seeds: Sequence[int], z_dim: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """z [len(seeds), z_dim]: row i drawn from its own generator seeded with seeds[i], so an
    image depends on its seed alone, not on the batch it was drawn in."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def class_vector(class_: str | int | None, c_dim: int, label_names: Sequence[str] = (),
                 device: str | torch.device = "cpu") -> Optional[torch.Tensor]:
    """One-hot labels [1, c_dim] for a class given by name or index; None for an unconditional
    generator (c_dim 0). Raises ValueError for a class on an unconditional generator, none on a
    conditional one, or one that is neither a name in `label_names` nor an index below c_dim."""
    names = [str(n) for n in label_names]
    if c_dim == 0:
        if class_ is not None:
            raise ValueError("this model is unconditional (trained without --cond)")
        return None
    if class_ is None:
        raise ValueError(f"this model is conditional: choose one of {names or list(range(c_dim))}")
    text = str(class_)
    if text in names:
        idx = names.index(text)
    elif text.isdigit() and int(text) < c_dim:
        idx = int(text)
    else:
        raise ValueError(f"'{class_}' is not a class; choose a name of {names} or an index 0..{c_dim - 1}")
    return torch.nn.functional.one_hot(torch.tensor([idx]), c_dim).float().to(device)


@dataclass
class Generated:
    """What generate_images wrote: `count` files seedNNNN.png and a grid of the first few."""

    out: Path
    count: int
    grid: Path
    grid_count: int


def generate_images(sampler: Sampler, seeds: Sequence[int], out: str | os.PathLike, *,
                    c: Optional[torch.Tensor] = None, batch: int = 16, progress: bool = False,
                    grid_max: int = GRID_MAX) -> Generated:
    """seedNNNN.png in `out` (created) for every seed, and grid.png of the first `grid_max`.

    c: labels [1, c_dim] shared by every image (see class_vector), or None. Images are encoded in
    background threads while the next batch is generated. Raises fileio.WriteError when a file
    cannot be written, ValueError for an empty seed list.
    """
    if not seeds:
        raise ValueError("seeds: no seeds given")
    if batch < 1 or grid_max < 1:
        raise ValueError(f"batch and grid_max: must be at least 1, got {batch} and {grid_max}")
    out = Path(out)
    fileio.make_dirs(out)
    # Random noise is drawn per image from its seed, so an image does not depend on the batch.
    step = 1 if sampler.noise_mode == "random" else batch
    with torch.no_grad(), _ImageSink(out, grid_max) as sink:
        for i in tqdm(range(0, len(seeds), step), desc="generate", unit="batch", disable=not progress):
            chunk = seeds[i:i + step]
            z = seed_latents(chunk, sampler.z_dim, sampler.device)
            with seeded_rng(sampler.device, chunk[0]) if sampler.noise_mode == "random" else nullcontext():
                img = sampler(z, None if c is None else c.expand(len(chunk), -1))
            sink.add(img, [f"seed{s:04d}.png" for s in chunk])
    return Generated(out=out, count=len(seeds), grid=sink.grid, grid_count=sink.kept)


# --------------------------------------------------------------------------------------------
# Saved latents to files.

def load_ws(path: str | os.PathLike, num_ws: int, w_dim: int) -> torch.Tensor:
    """A saved latent (.npy) as ws float32 [N, num_ws, w_dim].

    Accepted shapes: [N, num_ws, w_dim] (W+, what `project` writes), [N, w_dim] or [w_dim] (one
    w per image, used by every layer). Raises ValueError (one line naming the file) for anything
    else: a file numpy cannot read, another shape, or non-finite values.
    """
    import numpy as np

    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # not a .npy, or an object array (pickle refused)
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{p}: not a readable .npy array ({type(e).__name__}: {first})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ValueError(f"{p}: expected a numeric array, got {getattr(arr, 'dtype', type(arr).__name__)}")
    ws = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    if ws.ndim == 1:
        ws = ws[None]
    if ws.ndim == 2 and ws.shape[1] == w_dim:
        ws = ws[:, None, :].expand(-1, num_ws, -1)
    if ws.ndim != 3 or ws.shape[1:] != (num_ws, w_dim) or ws.shape[0] < 1:
        raise ValueError(f"{p}: shape {list(arr.shape)} is not a latent of this generator: expected "
                         f"[N, {num_ws}, {w_dim}] (W+), [N, {w_dim}] or [{w_dim}] (W)")
    if not bool(torch.isfinite(ws).all()):
        raise ValueError(f"{p}: holds NaN or Inf values")
    return ws.contiguous()


def generate_from_ws(G: nn.Module, ws: torch.Tensor, out: str | os.PathLike, *, noise_mode: str = "const",
                     batch: int = 16, progress: bool = False, grid_max: int = GRID_MAX) -> Generated:
    """wsNNNN.png in `out` (created) for each latent of ws [N, num_ws, w_dim] (see load_ws), and
    grid.png of the first `grid_max`. G runs its synthesis half only, in float32 on a CPU.
    Raises fileio.WriteError when a file cannot be written."""
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode: must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
    out = Path(out)
    fileio.make_dirs(out)
    device = next(iter(G.parameters())).device
    with torch.no_grad(), _ImageSink(out, grid_max) as sink:
        for i in tqdm(range(0, len(ws), batch), desc="generate", unit="batch", disable=not progress):
            img = G.synthesis(ws[i:i + batch].to(device), noise_mode=noise_mode, force_fp32=device.type != "cuda")
            sink.add(img, [f"ws{i + j:04d}.png" for j in range(len(img))])
    return Generated(out=out, count=len(ws), grid=sink.grid, grid_count=sink.kept)


class _ImageSink:
    """One PNG per image (written by PngWriter's threads) and the first `grid_max` images kept for
    grid.png, written when the block ends without an error: a run of 100000 images holds only the
    grid's in memory. Shared by generate_images and generate_from_ws."""

    def __init__(self, out: Path, grid_max: int) -> None:
        self.out, self.grid_max, self.kept = out, grid_max, 0
        self.grid: Path | None = None
        self._grid_images: list[torch.Tensor] = []
        self._writer = PngWriter()

    def __enter__(self) -> "_ImageSink":
        self._writer.__enter__()
        return self

    def add(self, img: torch.Tensor, names: list[str]) -> None:
        for name, im in zip(names, to_uint8(img)):  # converted on the device, one copy to the host
            self._writer.submit(im, self.out / name)
        if self.kept < self.grid_max:
            self._grid_images.append(img[:self.grid_max - self.kept].float().cpu())
            self.kept += len(self._grid_images[-1])

    def __exit__(self, *exc: Any) -> Any:
        result = self._writer.__exit__(*exc)
        if exc[0] is None:
            self.grid = save_grid(torch.cat(self._grid_images), self.out / "grid.png")
        return result
