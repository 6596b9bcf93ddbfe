"""The plain-dict round trip every saved configuration uses (ModelConfig, TrainConfig).

Checkpoints are loaded with torch.load(weights_only=True), which rebuilds only plain values, so a
configuration goes into a file as a dict and comes back through from_dict. A key the dataclass
does not know (a file from a newer version, or a typo in a hand-edited config) is an error that
names it, never silently dropped; a key it lacks takes the field's default, so files written
before a field existed still load.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T", bound="PlainDict")


class PlainDict:
    """Mixin for dataclasses: to_dict() and from_dict() of plain values."""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of plain values (JSON- and torch.load(weights_only=True)-safe)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Inverse of to_dict; unknown keys are an error naming them, missing keys take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known are {sorted(known)}")
        return cls(**d)
