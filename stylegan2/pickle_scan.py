"""What a pickle would call, read from its opcodes without unpickling it (so nothing runs).

Used to say why a checkpoint was refused (training/checkpoint.py) and to refuse program files
whose loader would unpickle more than tensors (metrics/features.py: torch.export.load unpickles
some members of a .pt2 archive with weights_only=False).
"""
from __future__ import annotations

import io
import pickletools
import re
import zipfile
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"  # torch.save and torch.export.save write zip archives

# The globals a pickle of tensors and plain containers names, and nothing else: the functions
# that rebuild a tensor or parameter from its storage, the storage classes, dtypes, and the
# containers. Narrower than "anything in torch": torch._utils also holds _import_dotted_name,
# which a pickle could use to reach any function.
_TENSOR_GLOBALS = re.compile(
    r"^(torch\._utils\._rebuild_(tensor|tensor_v2|tensor_v3|parameter|parameter_with_state)"
    r"|torch\.(\w+Storage|Size|device|dtype|float\d*|bfloat16|half|double|int\d*|uint\d+|long|short|bool|"
    r"complex\d*|cfloat|cdouble|chalf)"
    r"|collections\.OrderedDict|_codecs\.encode)$")


def pickle_globals(data: bytes) -> list[str] | None:
    """The module.name globals a pickle refers to, found by reading its opcodes, or None when the
    bytes are not a complete pickle."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
    except Exception:  # truncated or not a pickle at all: genops raises several types
        return None
    return found


def non_tensor_globals(names: list[str]) -> list[str]:
    """The globals among `names` that a pickle of tensors and containers does not need."""
    return sorted({n for n in names if not _TENSOR_GLOBALS.match(n)})


def archive_code(path: str | Path) -> list[str]:
    """'member: global' for every global outside tensors and containers that any complete pickle
    in the zip archive at `path` names, members of zips inside it included; [] when there is
    none. Raw tensor bytes are not complete pickles and are passed over."""
    with zipfile.ZipFile(path) as z:
        return _scan(z, "")


def _scan(z: zipfile.ZipFile, prefix: str) -> list[str]:
    out: list[str] = []
    for name in z.namelist():
        data = z.read(name)
        if data[:4] == ZIP_MAGIC:
            try:
                inner = zipfile.ZipFile(io.BytesIO(data))
            except zipfile.BadZipFile:
                out.append(f"{prefix}{name}: an unreadable archive inside the archive")
                continue
            out += _scan(inner, f"{prefix}{name}!")
            continue
        names = pickle_globals(data)
        if names:
            out += [f"{prefix}{name}: {g}" for g in non_tensor_globals(names)]
    return out
