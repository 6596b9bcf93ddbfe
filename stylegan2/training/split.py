"""How one step's global batch is split over ranks and rounds, and the randomness of each part.

The global batch B (`--batch`) is cut into K = B / b chunks of b = `--batch-gpu` images (default
B / world size). Rank r computes chunks r*R .. r*R + R - 1, one per round (R = K / world size):
it accumulates their gradients in .grad, each chunk's loss scaled by its share 1/K of the batch,
and distributed.all_reduce_grads sums the ranks' gradients. So a step's gradient is the mean over
the global batch whatever the world size and the number of rounds.

What is identical, and what is only equivalent:

* Data. The feeder draws the permutation, flips and fake labels for the whole global batch on
  every rank (one shared generator) and each rank takes its slice: within an epoch the ranks see
  disjoint images that together cover it, in the order one process would see them.
* Random draws inside a chunk (latents, G's noise, style mixing, the path-length probe) come from
  that chunk's own RNG stream: chunk 0 continues the global torch RNG exactly as a one-process
  run does, chunk k > 0 starts from a state derived from (seed, k). Rank r swaps its chunks'
  streams in and out of torch's global RNG between rounds. A run therefore computes the same
  numbers for the same --batch and --batch-gpu on any number of ranks (up to the order in which
  float gradients are summed): 2 ranks x 4 images == 1 rank x 2 rounds x 4 images.
* Not identical across different --batch-gpu: the chunks draw different numbers, and D's
  minibatch-stddev groups form within a chunk (group size min(mbstd_group, b), as NVlabs per
  GPU), so a run with b = B / 2 is equivalent in distribution to one with b = B, not equal.
  Likewise the path-length penalty takes the first b / 2 images of each chunk (B / 2 in all).
* Running statistics stay global and identical on every rank: the path-length mean and G's
  w_avg are updated as lerp(old, mean of the batch, decay) on one process; here each chunk
  starts from the same old value, and the chunks' results are averaged over rounds and ranks,
  which (lerp being linear) is the update with the mean over the global batch. Within one step
  each chunk's penalty uses its own batch mean for the lerp, as each GPU does in NVlabs' code.
* The R1 and path-length intervals count steps, not rounds: a lazy phase runs for the whole
  global batch on the same steps as on one process.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import distributed
from .distributed import World, check_batch, effective_batch_gpu

RngState = dict[str, torch.Tensor]


def _capture(device: torch.device) -> RngState:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _apply(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"].cpu())
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"].cpu(), device)


def derived_seed(seed: int, chunk: int, step: int) -> int:
    """A 63-bit seed for chunk `chunk`'s stream, started at `step` (0 for a fresh run)."""
    return int(np.random.SeedSequence([int(seed), int(chunk), int(step)]).generate_state(1, np.uint64)[0] >> 1)


def _fresh(seed: int, device: torch.device) -> RngState:
    """A stream state from `seed`, made with private generators (the global RNG is untouched)."""
    state = {"torch_cpu": torch.Generator().manual_seed(seed).get_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.Generator(device).manual_seed(seed).get_state()
    return state


class Split:
    """The split of a step's batch for one rank (see the module docstring).

    batch: global images per step; batch_gpu: images per round (None: batch / world size);
    rounds: rounds per step on each rank; chunks: rounds x ranks; local: this rank's slice of the
    global batch; loss_scale: 1 / chunks, each chunk's share of the batch.
    """

    def __init__(self, batch: int, batch_gpu: int | None, world: World, device: torch.device) -> None:
        check_batch(batch, batch_gpu, world.size)
        self.world, self.device = world, device
        self.batch = int(batch)
        self.batch_gpu = effective_batch_gpu(batch, batch_gpu, world.size)
        self.chunks = self.batch // self.batch_gpu
        self.rounds = self.chunks // world.size
        span = self.rounds * self.batch_gpu
        self.local = slice(world.rank * span, (world.rank + 1) * span)
        self.loss_scale = 1.0 / self.chunks
        self._slots: list[RngState] = []
        self._cur = 0
        self._saved: dict[str, Any] | None = None
        self.note = ""  # what start() said about a resume (the loop logs it)

    @property
    def trivial(self) -> bool:
        """One chunk: the plain one-process step, nothing to swap, average or reduce."""
        return self.chunks == 1

    def my_chunks(self) -> range:
        return range(self.world.rank * self.rounds, (self.world.rank + 1) * self.rounds)

    # --- the RNG streams ----------------------------------------------------------------------

    def start(self, seed: int, step: int, saved: dict[str, Any] | None = None) -> str:
        """Set up this rank's streams; call once the global RNG holds chunk 0's state (after
        setup_run, or after restore_run resumed the checkpoint's). `saved`: the checkpoint's
        "split" entry. Returns a sentence on whether a resume continues the streams exactly."""
        now = _capture(self.device)
        usable = (saved is not None and saved.get("batch_gpu") == self.batch_gpu
                  and len(saved.get("chunk_rng") or []) == self.chunks)
        self._slots = []
        for k in self.my_chunks():
            if usable:
                st = {key: v for key, v in saved["chunk_rng"][k].items() if torch.is_tensor(v)}
                if "torch_cuda" not in st and self.device.type == "cuda":  # saved on a CPU run
                    st["torch_cuda"] = _fresh(derived_seed(seed, k, step), self.device)["torch_cuda"]
                self._slots.append(st)
            else:
                self._slots.append(now if k == 0 else _fresh(derived_seed(seed, k, step), self.device))
        self._cur = 0
        _apply(self._slots[0], self.device)
        if saved is None:
            self.note = ""
        elif usable:
            self.note = (f"the {self.chunks} chunk(s) of {self.batch_gpu} images continue their random "
                    f"streams exactly")
        else:
            was = f"{saved.get('world_size', '?')} rank(s) x chunks of {saved.get('batch_gpu', '?')}"
            self.note = (f"the checkpoint split each batch as {was} images, this run as {self.world.size} "
                f"rank(s) x chunks of {self.batch_gpu}: data order and weights continue exactly, the "
                f"random draws of chunks other than the first start new streams (equivalent, not "
                f"identical, to an uninterrupted run)")
        return self.note

    def _activate(self, j: int) -> None:
        if j != self._cur:
            self._slots[self._cur] = _capture(self.device)
            _apply(self._slots[j], self.device)
            self._cur = j

    @contextlib.contextmanager
    def _stream(self, j: int) -> Iterator[None]:
        self._activate(j)
        try:
            yield
        finally:
            self._activate(0)

    def run_rounds(self, averaged: Sequence[torch.Tensor] = ()) -> Iterator[slice]:
        """Yields each round's slice of the local batch, with that chunk's RNG stream active.
        `averaged`: running statistics (updated in place by the rounds) that must start every
        round from the step's value and end as the mean of the chunks' results over all ranks."""
        if self.trivial:
            yield slice(0, self.batch_gpu)
            return
        start = [t.detach().clone() for t in averaged]
        sums = [torch.zeros_like(t, dtype=torch.float64) for t in averaged]
        for j in range(self.rounds):
            for t, s in zip(averaged, start):
                t.copy_(s)
            if self.rounds == 1:
                yield slice(0, self.batch_gpu)
            else:
                with self._stream(j):
                    yield slice(j * self.batch_gpu, (j + 1) * self.batch_gpu)
            for t, s in zip(averaged, sums):
                s += t.detach()
        if averaged:
            flat = torch.cat([s.reshape(-1) for s in sums])
            distributed.sum_across_(flat, "averaging the path-length mean / w_avg across ranks")
            flat /= self.chunks
            offset = 0
            for t in averaged:
                t.copy_(flat[offset:offset + t.numel()].view(t.shape))
                offset += t.numel()

    def reduce_grads(self, module: torch.nn.Module, name: str) -> None:
        distributed.all_reduce_grads(module.parameters(), f"summing {name}'s gradients across ranks")

    # --- checkpoints --------------------------------------------------------------------------

    def gather(self) -> None:
        """Collect every rank's stream states for the next checkpoint (a collective: all ranks)."""
        self._slots[self._cur] = _capture(self.device)
        per_rank = distributed.gather_objects([{k: v.cpu() for k, v in s.items()} for s in self._slots],
                                              "gathering the ranks' RNG states for a checkpoint")
        self._saved = {"world_size": self.world.size, "batch_gpu": self.batch_gpu,
                       "chunk_rng": [s for rank_slots in per_rank for s in rank_slots]}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's "split" entry (after gather())."""
        if self._saved is None:
            self.gather()
        assert self._saved is not None
        return self._saved


def check_saved(saved: Any) -> None:
    """ValueError naming what is wrong with a checkpoint's "split" entry (absent is fine)."""
    if saved is None:
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("chunk_rng"), list):
        raise ValueError("split: not a dict with a 'chunk_rng' list")
    for key in ("world_size", "batch_gpu"):
        v = saved.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"split: '{key}' is {v!r}, expected a positive int")
    for i, st in enumerate(saved["chunk_rng"]):
        if not isinstance(st, dict) or not torch.is_tensor(st.get("torch_cpu")) or st["torch_cpu"].dtype != torch.uint8:
            raise ValueError(f"split: chunk_rng[{i}] is not a torch RNG state")
