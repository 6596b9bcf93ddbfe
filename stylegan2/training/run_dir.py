"""Run directories: out/<NNNNN>-<dataset>-<preset>, numbered so runs never overwrite each other."""
from __future__ import annotations

import re
from pathlib import Path

from .. import fileio
from ..data import BUILTIN, is_builtin


def dataset_name(spec: str) -> str:
    """A short name of a dataset spec for run folder names: the built-in name, or the last path
    part without its NIfTI extension, reduced to letters, digits, "_", "." and "-"."""
    if is_builtin(spec):
        return BUILTIN
    name = Path(spec.rstrip("/\\")).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"


def new_run_dir(out: Path, desc: str) -> Path:
    """out/<NNNNN>-<desc> with the next free number; never reuses an existing folder."""
    fileio.make_dirs(out)
    while True:
        ids = [int(m.group(1)) for p in out.iterdir() if (m := re.match(r"^(\d+)-", p.name))]
        path = out / f"{max(ids, default=-1) + 1:05d}-{desc}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # another process took the number first
            continue
        except OSError as e:
            raise fileio.WriteError(path, e, what="cannot create folder") from None
