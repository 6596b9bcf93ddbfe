"""What every importer shares: the result type, the report, name-and-shape mapping, and the
channel budget that reproduces a network's per-resolution widths."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from stylegan2.networks import Discriminator, Generator, ModelConfig


class ConversionError(ValueError):
    """A foreign checkpoint that cannot be converted (one line saying why)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class UnknownFormat(ConversionError):
    """A file in none of the formats the converter reads (commands that also take our own
    checkpoints then report what our loader says about it instead)."""


@dataclass
class ConversionReport:
    """What a conversion did.

    source/format: the file and its kind ("nvlabs-pickle", "rosinality", "nvlabs-state-dict").
    notes: sentences about choices made (estimated w_avg, rescaled weights, colour transfer...).
    unmapped_source: source tensors (or options) nothing of ours received, each with why.
    unmapped_target: our tensors no source tensor filled, each with why.
    fresh: our tensors left at a fresh initialisation (allow_partial, new blocks, missing D).
    """

    source: str = ""
    format: str = ""
    notes: list[str] = field(default_factory=list)
    unmapped_source: list[str] = field(default_factory=list)
    unmapped_target: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.unmapped_source or self.unmapped_target)

    def lines(self) -> list[str]:
        out = [f"{self.format} checkpoint {self.source}".strip()]
        out += [f"note: {n}" for n in self.notes]
        out += [f"unmapped in the source: {n}" for n in self.unmapped_source]
        out += [f"not filled from the source: {n}" for n in self.unmapped_target]
        if self.fresh:
            out.append(f"freshly initialised: {len(self.fresh)} tensor(s) ({', '.join(self.fresh[:6])}"
                       f"{', ...' if len(self.fresh) > 6 else ''})")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Converted:
    """A foreign checkpoint in this project's terms.

    model_config: the ModelConfig that builds networks these state dicts load into (strictly).
    G, D, G_ema: state dicts of Generator / Discriminator / Generator.
    report: what was mapped, estimated, refused or initialised fresh.
    """

    model_config: ModelConfig
    G: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor]
    G_ema: dict[str, torch.Tensor]
    report: ConversionReport

    def build(self, device: str | torch.device = "cpu") -> tuple[Generator, Discriminator, Generator]:
        """(G, D, G_ema) with the converted weights, G_ema in eval mode."""
        G, D, G_ema = Generator(self.model_config), Discriminator(self.model_config), Generator(self.model_config)
        G.load_state_dict(self.G)
        D.load_state_dict(self.D)
        G_ema.load_state_dict(self.G_ema)
        return G.to(device), D.to(device), G_ema.eval().requires_grad_(False).to(device)


def fail_if_partial(report: ConversionReport, allow_partial: bool) -> None:
    """Refuse a conversion that left anything unmapped, unless the caller accepts it."""
    if report.partial and not allow_partial:
        items = report.unmapped_source + report.unmapped_target
        raise ConversionError(
            f"{report.source}: {len(items)} thing(s) could not be mapped ({'; '.join(items[:4])}"
            f"{'; ...' if len(items) > 4 else ''}). Nothing was converted; pass allow_partial=True "
            "(--allow-partial) to keep the rest and initialise those fresh.")


def _squeezed(shape: Any) -> list[int]:
    return [int(d) for d in shape if d != 1]


def map_state_dict(
    label: str,
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    rename: Callable[[str], Optional[str]],
    report: ConversionReport,
    scale: Optional[Callable[[str], float]] = None,
    constants: Optional[Callable[[str, torch.Tensor], Optional[str]]] = None,
) -> dict[str, torch.Tensor]:
    """Fill a copy of `target` (our state dict, a fresh initialisation) from `source` by name.

    rename(source_name) -> our name, or None when the tensor has no counterpart. constants, if
    given, is asked first: it returns None for a source tensor that is a known constant and
    matches (a resampling filter), else a reason it does not (reported). A source tensor goes to
    our tensor when their shapes agree up to size-1 dimensions ([1, C, 4, 4] vs [C, 4, 4]);
    `scale(our_name)` multiplies it (to move between learning-rate multipliers). Anything
    left over on either side is added to the report with the network's label.
    """
    out = {k: v.clone() for k, v in target.items()}
    filled: set[str] = set()
    for name, t in source.items():
        if constants is not None:
            verdict = constants(name, t)
            if verdict == "":
                continue  # a constant that matches what our layers rebuild
            if verdict is not None:
                report.unmapped_source.append(f"{label}.{name} {list(t.shape)} ({verdict})")
                continue
        ours = rename(name)
        if ours is None or ours not in target:
            report.unmapped_source.append(f"{label}.{name} {list(t.shape)} (no counterpart in our networks)")
            continue
        want = target[ours]
        if tuple(t.shape) != tuple(want.shape) and _squeezed(t.shape) != _squeezed(want.shape):
            report.unmapped_source.append(
                f"{label}.{name} {list(t.shape)} (our {ours} is {list(want.shape)})")
            continue
        value = t.detach().to(torch.float32).reshape(want.shape)
        if scale is not None:
            value = value * scale(ours)
        out[ours] = value.to(want.dtype)
        filled.add(ours)
    for k in target:
        if k not in filled:
            report.unmapped_target.append(f"{label}.{k} {list(target[k].shape)}")
            report.fresh.append(f"{label}.{k}")
    return out


def channel_budget(widths: dict[int, int], hint: Optional[tuple[int, int]] = None) -> tuple[int, int]:
    """(channel_base, channel_max) with min(base // res, max) == widths[res] at every resolution.

    `hint` (the source's own base and max, when recorded) wins when it reproduces the widths.
    Raises ConversionError when no pair does (per-resolution widths our config cannot express).
    """
    def fits(base: int, cmax: int) -> bool:
        return all(min(base // r, cmax) == c for r, c in widths.items())

    if hint is not None and fits(*hint):
        return hint
    cmax = max(widths.values())
    below = sorted(r for r, c in widths.items() if c < cmax)
    base = widths[below[0]] * below[0] if below else cmax * max(widths)
    if fits(base, cmax):
        return base, cmax
    raise ConversionError(f"the per-resolution channel counts {dict(sorted(widths.items()))} are not "
                          "min(channel_base // res, channel_max) for any base and max")


def fresh_state_dicts(cfg: ModelConfig, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """State dicts of freshly initialised G and D (seeded, so a conversion is reproducible)."""
    # Layers initialise from the global CPU generator: seed it inside a fork, so a notebook's
    # own seeding (and any GPU generator) stays as it was.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        G, D = Generator(cfg), Discriminator(cfg)
    return G.state_dict(), D.state_dict()
