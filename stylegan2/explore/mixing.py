"""Style mixing: a grid whose cells take some layers' styles from a column seed and the rest from
a row seed (Karras et al. 2019, figure 3).

    layers = parse_styles("coarse", G)              # ws indices, e.g. [0, 1, 2]
    grid = mixing_grid(G, rows=[0, 1], cols=[10, 11, 12], layers=layers)   # [3 * 4, C, R, R]
    save_grid(grid, "mix.png", cols=4)

Layer groups, by the resolution of the convolution a w feeds (the paper's names): coarse 4x4 and
8x8, middle 16x16 and 32x32, fine 64x64 and above. A model below 64x64 has no such layers, so
there fine means its top resolution alone and middle the resolutions between 8x8 and that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..images import parse_seeds, save_grid
from .common import ExploreError, publish, seed_ws, synthesize

STYLE_GROUPS = ("coarse", "middle", "fine")


def ws_resolutions(G: nn.Module) -> list[int]:
    """The resolution each w index feeds, [num_ws]: a block's convolutions take consecutive ws
    and its ToRGB shares the next block's first w, so that w counts with the larger conv; the
    last w feeds only the top ToRGB."""
    res: list[int] = []
    for block in G.synthesis.blocks.values():
        res.extend([int(block.resolution)] * int(block.num_conv))
    res.append(int(G.img_resolution))
    assert len(res) == G.num_ws
    return res


def style_groups(G: nn.Module) -> dict[str, list[int]]:
    """{"coarse": [...], "middle": [...], "fine": [...]}: the ws indices of each group (see the
    module docstring); a group can be empty for a small model."""
    res = ws_resolutions(G)
    top = int(G.img_resolution)
    fine_from = 64 if top >= 64 else top
    return {"coarse": [i for i, r in enumerate(res) if r <= 8],
            "middle": [i for i, r in enumerate(res) if 8 < r < fine_from],
            "fine": [i for i, r in enumerate(res) if r >= fine_from]}


def describe_layers(G: nn.Module) -> str:
    """'0 (4x4), 1-2 (8x8), ...' for error messages: which ws index feeds which resolution."""
    by_res: dict[int, list[int]] = {}
    for i, r in enumerate(ws_resolutions(G)):
        by_res.setdefault(r, []).append(i)
    return ", ".join(f"{v[0]}" + (f"-{v[-1]}" if len(v) > 1 else "") + f" ({r}x{r})" for r, v in by_res.items())


def parse_styles(text: str, G: nn.Module) -> list[int]:
    """--styles: a group name (coarse, middle, fine) or ws indices like '0-6' or '0,2,4-5'.
    Raises ExploreError (one line, listing the model's layers) for an index out of range, an
    empty group or text that does not parse."""
    text = str(text).strip()
    if text in STYLE_GROUPS:
        layers = style_groups(G)[text]
        if not layers:
            raise ExploreError(f"styles: a {G.img_resolution}x{G.img_resolution} model has no '{text}' layers; "
                               f"its ws are {describe_layers(G)}")
        return layers
    try:
        layers = parse_seeds(text)
    except ValueError as e:
        raise ExploreError(f"styles: '{text}' is neither coarse, middle, fine nor layer numbers like 0-6 "
                           f"({str(e).removeprefix('seeds: ')})") from None
    bad = [i for i in layers if i >= G.num_ws]
    if bad:
        raise ExploreError(f"styles: layer(s) {', '.join(map(str, bad))} out of range: this generator has "
                           f"{G.num_ws} ws, {describe_layers(G)}")
    return layers


def mix_ws(row_ws: torch.Tensor, col_ws: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Every (row, column) pair: ws [R * C, num_ws, w_dim], row-major, where the cell takes
    `layers` from the column's ws and every other layer from the row's."""
    cells = row_ws[:, None].repeat(1, len(col_ws), 1, 1)  # [R, C, num_ws, w_dim]
    idx = torch.as_tensor(list(layers), dtype=torch.long)
    cells[:, :, idx] = col_ws[None, :, idx].expand(len(row_ws), -1, -1, -1)
    return cells.reshape(-1, *row_ws.shape[1:])


def mixing_grid(G: nn.Module, rows: Sequence[int], cols: Sequence[int], layers: Sequence[int], *,
                c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0, noise_mode: str = "const",
                batch: int = 1, progress: bool = False) -> torch.Tensor:
    """The style-mixing grid as images float32 [(len(rows) + 1) * (len(cols) + 1), C, R, R],
    row-major with len(cols) + 1 columns: a black corner, the column seeds' images along the top,
    the row seeds' images down the left, and each cell mixed as mix_ws says. Every image goes
    through the same synthesis call shape, so a cell whose two seeds are equal is its source
    image exactly."""
    if not rows or not cols:
        raise ExploreError("style mixing needs at least one row seed and one column seed")
    bad = [i for i in layers if not 0 <= i < G.num_ws]
    if bad:
        raise ExploreError(f"styles: layer(s) {', '.join(map(str, bad))} out of range: this generator has "
                           f"{G.num_ws} ws, {describe_layers(G)}")
    row_ws = seed_ws(G, rows, c, truncation_psi=truncation_psi)
    col_ws = seed_ws(G, cols, c, truncation_psi=truncation_psi)
    all_ws = torch.cat([col_ws, row_ws, mix_ws(row_ws, col_ws, layers)])
    images = synthesize(G, all_ws, noise_mode=noise_mode, batch=batch, progress=progress)
    n_cols, n_rows = len(cols), len(rows)
    top, left, cells = images[:n_cols], images[n_cols:n_cols + n_rows], images[n_cols + n_rows:]
    corner = torch.full_like(images[:1], -1.0)
    out = [torch.cat([corner, top])]
    for r in range(n_rows):
        out.append(torch.cat([left[r:r + 1], cells[r * n_cols:(r + 1) * n_cols]]))
    return torch.cat(out)


def write_mixing(grid: torch.Tensor, num_cols: int, folder: str | Path, name: str = "mix.png") -> Path:
    """The grid of mixing_grid (num_cols = len(cols)) as one PNG in `folder`."""
    return publish(folder, {name: lambda p: save_grid(grid, p, cols=num_cols + 1)})[name]
