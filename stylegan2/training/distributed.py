"""Training on several processes started by torchrun: everything that touches the process group.

    torchrun --nproc_per_node 4 -m stylegan2 train ...     # one process ("rank") per GPU

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and LOCAL_WORLD_SIZE) in each process;
`init_from_env` reads them, picks the rank's device (cuda:LOCAL_RANK, or the CPU) and joins the
group (NCCL on GPUs, gloo on CPUs) with a timeout on every collective. A process that torchrun did
not start (or a world of one) gets no process group at all, and every helper here is a no-op
there, so plain `python -m stylegan2 train` runs exactly as before.

Why the gradients are reduced by hand rather than by DistributedDataParallel: each StyleGAN2
phase backpropagates through both networks with only one of them trainable (G's loss goes
through D with D frozen, D's loss runs G under no_grad), the losses call G.mapping and
G.synthesis directly (a DDP wrapper's forward, where its hooks are armed, would be bypassed),
the lazy regularizers run every N steps only and differentiate gradients (R1 and path length
use torch.autograd.grad with create_graph=True, which DDP's reducer does not support), and
accumulating over rounds would need no_sync() around all but the last. So, as NVlabs' code does,
each phase sums its gradients over rounds in .grad and then `all_reduce_grads` sums them over
ranks in a few flat float32 buckets: one collective per phase instead of DDP's overlap with the
backward pass. The buckets are copied out of and back into .grad, so gradients of any dtype or
memory layout (channels_last, fp16 layers' grads: our parameters stay float32, and the buckets
are float32 whatever a gradient's dtype) are reduced alike.

Failures: every collective runs under `collective(what)`, which turns the error torch raises
when a peer died (gloo: connection closed) or the timeout passed (`--dist-timeout`, default
600 s; it must exceed the longest pause of rank 0 alone: writing a snapshot, or decoding the
dataset into the cache on a first run) into a CollectiveError naming this rank, the operation
and the likely cause. On NCCL the watchdog aborts a process whose collective timed out; torchrun
stops the other ranks as soon as one exits with an error.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["CollectiveError", "DEFAULT_TIMEOUT_S", "World", "all_reduce_grads", "any_across",
           "barrier", "broadcast_object", "broadcast_tensors", "check_batch", "collective",
           "current", "effective_batch_gpu", "gather_objects", "init_from_env", "is_main",
           "launched_by_torchrun", "main_first", "max_across", "mean_across", "rank_device",
           "shutdown", "sum_across_", "sync_tensors"]

DEFAULT_TIMEOUT_S = 600.0
# Elements per flat gradient bucket (64 MB of float32): large enough that the 256x256 model's
# ~30 M parameters per network go in one or two collectives, small enough not to double the
# memory of a network's gradients at once.
BUCKET_ELEMENTS = 1 << 24

T = TypeVar("T")


class CollectiveError(RuntimeError):
    """A collective operation failed or timed out: another rank died or hangs. One line."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a world of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is a process group to talk to (more than one rank)."""
        return self.size > 1


_world = World()
_users = 0  # init_from_env calls not yet matched by shutdown(); the group made here ends at 0
_owned = False  # whether init_from_env made the group (one made by the caller is theirs to end)
# Under NCCL, a gloo group for the host-side messages (the per-step stop flag, times, RNG states,
# the run directory): a CPU all-reduce there never waits for the GPU's queue, where one through
# NCCL would make the host wait for every step to finish.
_control: Any = None


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher with its environment) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def current() -> World:
    """The world this process trains in: the one init_from_env joined, or, when the caller set up
    torch.distributed itself (a notebook), that group; else a world of one."""
    if _world.active or not (dist.is_available() and dist.is_initialized()):
        return _world
    size = dist.get_world_size()
    return World(rank=dist.get_rank(), size=size, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 local_size=int(os.environ.get("LOCAL_WORLD_SIZE", size)))


def is_main() -> bool:
    return current().is_main


def rank_device(requested: str | None, world: World) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK when a GPU is asked for (or none is named and one
    is visible), else the CPU. A numbered GPU cannot be given to several ranks."""
    if requested and not requested.startswith("cuda"):
        return torch.device(requested)
    if requested is None and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: no CUDA GPU is visible")
    if world.size == 1:
        return torch.device(requested or "cuda")
    if requested not in (None, "cuda"):
        raise ValueError(f"--device {requested}: with torchrun each rank uses cuda:LOCAL_RANK; "
                         "give --device cuda (or cpu), and choose GPUs with CUDA_VISIBLE_DEVICES")
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(f"rank {world.rank} has LOCAL_RANK {world.local_rank} but only "
                         f"{torch.cuda.device_count()} GPU(s) are visible: start at most that many "
                         "processes per node (--nproc_per_node)")
    return torch.device("cuda", world.local_rank)


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S, device: str | None = None) -> tuple[World, torch.device]:
    """Join torchrun's process group (when this process is one of several) and pick the device.

    Returns (world, device). Without torchrun, or with WORLD_SIZE 1, no group is made and the
    device is `device` (default: cuda if visible, else cpu). Raises ValueError for a device the
    ranks cannot share, one line. Called again while the group exists (a notebook, or a test
    that drives the command line in its worker processes), it joins nothing new; each call is
    matched by one shutdown().
    """
    global _world, _users, _owned, _control
    if not timeout_s > 0:
        raise ValueError(f"--dist-timeout: must be positive, got {timeout_s}")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return current(), torch.device(device) if device else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    world = World(rank=rank, size=size, local_rank=int(os.environ["LOCAL_RANK"]),
                  local_size=int(os.environ.get("LOCAL_WORLD_SIZE", size)), timeout_s=float(timeout_s))
    if _world.active:  # already joined by an earlier call: keep its settings
        world = _world
    dev = rank_device(device, world)
    _users += 1
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(timeout_s))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", timeout=timeout, device_id=dev)
            _control = dist.new_group(backend="gloo", timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        _owned = True
    _world = world
    return world, dev


def shutdown() -> None:
    """Leave the process group init_from_env joined (at the end of a run that went well), once
    every init_from_env call has been matched; a group made by the caller is left alone."""
    global _world, _users, _owned, _control
    if _users == 0:
        return
    _users -= 1
    if _users == 0:
        if _owned and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        _world, _owned, _control = World(), False, None


# --------------------------------------------------------------------------------------------
# Collectives, each a no-op in a world of one.

@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Run a collective, turning a dead or hung peer into one CollectiveError line."""
    try:
        yield
    except CollectiveError:
        raise
    except (RuntimeError, ValueError, OSError) as e:  # gloo: RuntimeError; NCCL: DistBackendError
        w = current()
        first = " ".join(str(e).split())[:300]
        raise CollectiveError(
            f"rank {w.rank} of {w.size}: {what} failed: another rank died or hangs (each collective "
            f"waits at most --dist-timeout {w.timeout_s:g} s; see the other ranks' errors above). "
            f"torch said: {first}") from None


def _control_group() -> Any:
    """The group for host-side messages: the gloo one next to NCCL, else the default group."""
    return _control


def _comm_device(t: torch.Tensor) -> torch.Tensor:
    # NCCL reduces tensors on the rank's GPU only; gloo takes CPU tensors.
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def sum_across_(t: torch.Tensor, what: str = "a sum across ranks") -> torch.Tensor:
    """In-place sum over ranks of `t` (returns it)."""
    if not current().active:
        return t
    with collective(what):
        buf = _comm_device(t)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if buf is not t:
            t.copy_(buf)
    return t


def mean_across(t: torch.Tensor, what: str = "averaging statistics across ranks") -> torch.Tensor:
    """Mean over ranks (a new tensor)."""
    w = current()
    return t if not w.active else sum_across_(t.clone(), what) / w.size


def max_across(value: float, what: str = "the slowest rank's time") -> float:
    """The largest of the ranks' values (host-side: through the control group)."""
    w = current()
    if not w.active:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    with collective(what):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return float(t.item())


def any_across(flag: bool, what: str = "agreeing on a stop") -> bool:
    """True on every rank when it is True on one (so all ranks stop at the same step). A CPU
    all-reduce in the control group: called every step, it must not wait for the GPU."""
    if not current().active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    with collective(what):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return bool(t.item() > 0)


def barrier(what: str = "waiting for the other ranks") -> None:
    if current().active:
        with collective(what):
            dist.barrier(group=_control_group())


def broadcast_object(obj: T, what: str = "sharing rank 0's value") -> T:
    """Rank 0's `obj` on every rank (picklable objects: a path, a small dict)."""
    if not current().active:
        return obj
    box = [obj]
    with collective(what):
        dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def gather_objects(obj: Any, what: str = "gathering the ranks' RNG states") -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    w = current()
    if not w.active:
        return [obj]
    out: list[Any] = [None] * w.size
    with collective(what):
        dist.all_gather_object(out, obj, group=_control_group())
    return out


def _buckets(tensors: Sequence[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    n = 0
    for t in tensors:
        if bucket and n + t.numel() > limit:
            yield bucket
            bucket, n = [], 0
        bucket.append(t)
        n += t.numel()
    if bucket:
        yield bucket


def _flat_op(tensors: Sequence[torch.Tensor], op: Callable[[torch.Tensor], torch.Tensor], limit: int) -> None:
    """Copy tensors into flat float32 buckets, apply `op` to each bucket (it returns the result,
    on the device the backend reduces on), copy the results back.
    reshape(-1) reads a tensor in its logical order whatever its strides, and copy_ writes back
    into channels_last (or any) layout, so no layout or dtype needs the same bucket view."""
    for bucket in _buckets(tensors, limit):
        flat = op(torch.cat([t.detach().reshape(-1).to(torch.float32) for t in bucket]))
        offset = 0
        for t in bucket:
            n = t.numel()
            t.detach().copy_(flat[offset:offset + n].view(t.shape))  # copy_ converts dtype and device
            offset += n


def _all_reduce_sum(flat: torch.Tensor) -> torch.Tensor:
    buf = _comm_device(flat)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf


def _broadcast_from_main(flat: torch.Tensor) -> torch.Tensor:
    buf = _comm_device(flat)
    dist.broadcast(buf, src=0)
    return buf


def all_reduce_grads(params: Iterable[torch.nn.Parameter], what: str = "summing gradients across ranks",
                     limit: int = BUCKET_ELEMENTS) -> None:
    """Sum every parameter's .grad over ranks (each rank's loss already carries its share of the
    global batch, see split.py). Parameters without a gradient are left out on every rank alike:
    all ranks run the same phases, so the same parameters have one."""
    if not current().active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    with collective(what):
        _flat_op(grads, _all_reduce_sum, limit)


def broadcast_tensors(tensors: Sequence[torch.Tensor], what: str = "copying rank 0's weights to every rank",
                      limit: int = BUCKET_ELEMENTS) -> None:
    """Overwrite `tensors` (floating point) with rank 0's values."""
    if not current().active:
        return
    with collective(what):
        _flat_op(list(tensors), _broadcast_from_main, limit)


def sync_tensors(named: dict[str, torch.Tensor], what: str = "checking the ranks agree") -> list[str]:
    """Compare each tensor bit for bit with rank 0's; returns (on every rank) the names that
    differ on some rank. Costs one broadcast of the tensors and one small all-reduce."""
    w = current()
    if not w.active:
        return []
    names = list(named)
    differs = torch.zeros(len(names), dtype=torch.float64)
    with collective(what):
        for i, name in enumerate(names):
            mine = named[name].detach()
            ref = _comm_device(mine.clone().contiguous())
            dist.broadcast(ref, src=0)
            differs[i] = 0.0 if torch.equal(ref.to(mine.device), mine) else 1.0
        buf = _comm_device(differs)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return [n for n, d in zip(names, buf.cpu().tolist()) if d > 0]


def main_first(fn: Callable[[], T], what: str = "waiting for rank 0 to prepare the dataset") -> T:
    """fn() on rank 0 first, then on the first rank of each other node, then on the rest: a
    dataset decoded once (per node whose cache folder is not shared) and read back from the
    cache by everyone else. A failure on rank 0 ends the job (torchrun stops the others)."""
    w = current()
    if not w.active:
        return fn()
    result: Any = None
    if w.is_main:
        result = fn()
    barrier(what)
    if not w.is_main and w.local_rank == 0:
        result = fn()
    barrier(what)
    if w.local_rank != 0:
        result = fn()
    return result


# --------------------------------------------------------------------------------------------
# Checks before any work.

def effective_batch_gpu(batch: int, batch_gpu: int | None, world_size: int) -> int:
    """The images one rank processes per round: batch_gpu, or batch / world_size by default."""
    return int(batch_gpu) if batch_gpu else max(1, batch // world_size)


def check_batch(batch: int, batch_gpu: int | None, world_size: int) -> None:
    """ValueError (one line) unless the global batch splits into whole rounds on every rank."""
    if batch_gpu is not None and batch_gpu < 1:
        raise ValueError(f"--batch-gpu: must be at least 1, got {batch_gpu}")
    b = effective_batch_gpu(batch, batch_gpu, world_size)
    if batch % (world_size * b):
        ranks = f"{world_size} rank(s) x --batch-gpu {b}" if batch_gpu else f"{world_size} ranks"
        raise ValueError(f"--batch {batch} does not split evenly over {ranks} = {world_size * b} images "
                         f"per round; choose a --batch that is a multiple of {world_size * b}")
