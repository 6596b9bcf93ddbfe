"""Parse seed lists written the way StyleGAN users write them: "0-7,12" -> [0, 1, ..., 7, 12]."""
from __future__ import annotations

import re

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_SINGLE = re.compile(r"^\s*(\d+)\s*$")


def parse_seeds(text: str) -> list[int]:
    """Turn "0-7,12" into [0, 1, 2, 3, 4, 5, 6, 7, 12].

    Comma-separated items, each a non-negative integer or an inclusive range "a-b" with a <= b.
    Order is kept as written and duplicates are dropped after their first appearance, so the
    output files follow the command line. Raises ValueError with the offending item otherwise.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("seeds: expected a list like '0-7,12', got an empty value")
    seeds: list[int] = []
    seen: set[int] = set()
    for item in text.split(","):
        if m := _RANGE.match(item):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"seeds: range '{item.strip()}' runs backwards (write {hi}-{lo})")
            values = range(lo, hi + 1)
        elif m := _SINGLE.match(item):
            values = [int(m.group(1))]
        else:
            raise ValueError(f"seeds: '{item.strip()}' is neither a number nor a range like 3-9")
        for v in values:
            if v >= 2**32:
                raise ValueError(f"seeds: {v} does not fit in 32 bits")
            if v not in seen:
                seen.add(v)
                seeds.append(v)
    return seeds
