"""One on-disk cache of decoded datasets for every source kind, and the functions that list and
clear it.

Decoding is the slow part of opening a dataset (OASIS at 256x256: tens of seconds of PNG
decoding and resizing; the MNI152 set: a minute of 3-D sampling), while reading the uint8
result back is a plain file read. So `cached_dataset` sits in front of every source:

* The file for a dataset is `<cache>/datasets/<kind>-<R>px-<C>ch-<slot>.npz`, where <cache> is
  $STYLEGAN2_CACHE, else ~/.cache/stylegan2. The slot hashes what the caller asked for (kind,
  source folder, resolution, channels and every other option that changes the pixels), so
  asking again finds the same file, and a new version of the same dataset replaces the old
  file instead of piling up beside it.
* Inside, a JSON header holds the content key: the slot plus the path, size and modification
  time of every source file. A changed, added or removed file changes it, and the dataset is
  decoded again. File systems stamp times coarsely (a few ms on Linux, 2 s on FAT), so a file
  rewritten within one tick of being read could keep its stamp: files that were that fresh when
  the dataset was decoded also have their bytes hashed into the header and re-hashed on later
  reads (unless they settled while the dataset was being decoded, see `settle`).
* The arrays are stored uncompressed: reading OASIS at 256x256 back (740 MB) and checking it
  took 1.6-2.9 s on a busy 2-core machine, where inflating a zlib copy (3x smaller) took 7.8 s
  and writing it 19 s, far past the 3 s a cached start may take. The zip format keeps a CRC-32
  of every array, so a damaged file is noticed and rebuilt.
* Files are written as every file of this package is (fileio.atomic_write: a temporary renamed
  over the old one), so a killed process or two processes decoding at once never leave a torn
  file; a cache that cannot be written (read-only home, full disk) only costs a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence

import numpy as np

from .. import fileio
from .base import FINGERPRINT_VERSION, DatasetWarning, ImageDataset, report

CACHE_ENV = "STYLEGAN2_CACHE"
# Bump when the file layout or the way any source turns files into pixels changes: it is part
# of every key, so files of an older format are never read (and `clear_cache` removes them).
CACHE_FORMAT = 2
SUFFIX = ".npz"
TEMP_SUFFIX = ".tmp"
# A source file modified less than this long before it was read may be rewritten without its
# time stamp changing (see the module docstring): its bytes are hashed into the header. 2 s is
# FAT's granularity; the rest is room for clocks of network file systems that disagree a bit.
SETTLE_SECONDS = 3.0
# What reading a damaged cache file may raise: zipfile reports a bad CRC or a truncated archive
# as BadZipFile, numpy a broken array header as ValueError, a missing member as KeyError.
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError)
HASH_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """$STYLEGAN2_CACHE if set, else ~/.cache/stylegan2."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stylegan2"


def datasets_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """The folder holding the dataset files: `cache_dir` (default: `default_cache_dir()`)/datasets."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "datasets"


def _digest(blob: Any) -> str:
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_sha256(path: str) -> Optional[str]:
    """Hex digest of a file's bytes; None if it cannot be read (then it cannot match)."""
    try:
        return fileio.sha256_file(path, HASH_CHUNK)
    except OSError:
        return None


@dataclass
class SourceState:
    """What the cache knows of the source files: key, the content key (hashes every file's
    absolute path, size and modification time in ns); fresh, the paths modified less than
    SETTLE_SECONDS before they were looked at (their time stamps cannot be trusted yet);
    missing, whether a file vanished while being looked at (nothing is cached then)."""

    key: str
    fresh: list[str]
    missing: bool


def source_state(slot: str, files: Sequence[Path]) -> SourceState:
    """Looks at `files` (stat only, no reading) and computes the content key for `slot`."""
    stats: list[tuple[str, int, int]] = []
    missing = False
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            missing = True
            stats.append((str(f), -1, -1))
            continue
        stats.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
    # Taken after the stats: a file counts as fresh if its stamp is within SETTLE_SECONDS of
    # the moment it was seen (or in the future, for a clock that runs ahead).
    horizon = int((time.time() - SETTLE_SECONDS) * 1e9)
    fresh = [p for p, _, mtime in stats if mtime > horizon]
    return SourceState(_digest({"slot": slot, "files": stats}), fresh, missing)


def settle(fresh: dict[str, Optional[str]]) -> dict[str, Optional[str]]:
    """The hashes of fresh files (path -> digest taken before decoding) still worth keeping
    after a build. A file whose stamp is by now older than SETTLE_SECONDS and whose bytes still
    hash the same cannot change any more without a new stamp, which the key sees: its hash is
    dropped, so that reads do not re-hash it forever (a freshly unpacked OASIS set decodes for
    longer than SETTLE_SECONDS, so its cache ends up with none)."""
    horizon = int((time.time() - SETTLE_SECONDS) * 1e9)
    kept = {}
    for path, digest in fresh.items():
        try:
            settled = os.stat(path).st_mtime_ns <= horizon
        except OSError:
            settled = False
        if not (settled and _file_sha256(path) == digest):
            kept[path] = digest
    return kept


def slot_name(kind: str, params: dict[str, Any]) -> str:
    """The file name (without folder) for a dataset of `kind` built with `params`."""
    slot = _digest({"format": CACHE_FORMAT, "kind": kind, **params})[:20]
    res, ch = params.get("resolution", "x"), params.get("channels", "x")
    return f"{kind}-{res}px-{ch}ch-{slot}{SUFFIX}"


class OldFormat(Exception):
    """A cache file written by an earlier version (format 1 had no header): never read again."""


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a cache file (cheap: the arrays are not read). Raises one of
    READ_ERRORS if the file is damaged, OldFormat if an earlier version wrote it."""
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        return _read_header(f, zf)


def _read_header(f: BinaryIO, zf: zipfile.ZipFile) -> dict[str, Any]:
    names = set(zf.namelist())
    if "header.npy" not in names:
        if "images.npy" in names:
            raise OldFormat()
        raise ValueError("no header: not a dataset cache file")
    # UTF-8 bytes rather than a numpy string: those take 4 bytes a character.
    header = json.loads(_read_member(f, zf, "header.npy").tobytes().decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("cache header is not a JSON object")
    if header.get("format") != CACHE_FORMAT:
        raise OldFormat()
    return header


def _read_member(f: BinaryIO, zf: zipfile.ZipFile, name: str, mmap: bool = False) -> np.ndarray:
    """The array in the stored (uncompressed) .npy member `name` of the zip open as `f`.

    One readinto() straight into the new array, and one CRC-32 over it: np.load copies a
    stored member in 256 kB pieces and needs about twice as long, which for OASIS at 256x256
    (740 MB) was most of the 3 s a cached start may take.

    mmap: map the array read-only from the file instead (np.memmap; the CRC is still checked):
    the training processes of one machine then share one copy in the page cache.
    """
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{name} is compressed; this cache stores arrays uncompressed")
    # The data follow the member's local header (30 bytes, then its name and extra field).
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {name}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    f.seek(start)
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(f)
    if fortran_order or dtype.hasobject:
        raise ValueError(f"{name}: not a plain C-ordered array")
    prefix_len = f.tell() - start
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if mmap:
        if prefix_len + nbytes != info.file_size or os.fstat(f.fileno()).st_size < start + prefix_len + nbytes:
            raise EOFError(f"{name} is truncated")
        arr = np.memmap(f, dtype=dtype, mode="r", offset=start + prefix_len, shape=shape) if nbytes \
            else np.empty(shape, dtype=dtype)
        data = memoryview(arr).cast("B")
    else:
        arr = np.empty(shape, dtype=dtype)
        data = memoryview(arr).cast("B")
        if prefix_len + arr.nbytes != info.file_size or f.readinto(data) != arr.nbytes:
            raise EOFError(f"{name} is truncated")
    f.seek(start)
    crc = zlib.crc32(data, zlib.crc32(f.read(prefix_len)))  # the zip's CRC covers the .npy header too
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"bad CRC-32 for {name}")
    return arr


def load_cached(path: Path, state: SourceState, mmap: bool = False) -> Optional[ImageDataset]:
    """The dataset stored at `path` if it was built from the sources described by `state`;
    None if there is no such file, it is stale, or it is unreadable (that one with a warning).
    mmap: the images memory-mapped read-only from the file (see _read_member)."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            header = _read_header(f, zf)
            if header.get("key") != state.key:
                return None
            fresh = header.get("fresh", {})
            if any(_file_sha256(p) != digest for p, digest in fresh.items()):
                return None
            labels = _read_member(f, zf, "labels.npy") if header["labeled"] else None
            # The arrays just passed their CRC-32, so the fingerprint stored beside them holds;
            # hashing 740 MB again would cost the training start about 2 s.
            same_hash = header.get("fingerprint_version") == FINGERPRINT_VERSION.decode()
            ds = ImageDataset(_read_member(f, zf, "images.npy", mmap=mmap), labels,
                              header["label_names"] if header["labeled"] else None,
                              skipped=int(header["skipped"]), source=str(header["source"]),
                              notes=header["notes"],
                              fingerprint=header.get("fingerprint") if same_hash else None)
    except OldFormat:
        return None  # another version's file in this slot: rebuilt, and replaced
    except READ_ERRORS as e:
        warnings.warn(f"ignoring unreadable dataset cache {path} ({type(e).__name__}: {e}); rebuilding",
                      DatasetWarning, stacklevel=3)
        return None
    try:
        os.utime(path)  # the modification time doubles as "last used" for list_cache
    except OSError:
        pass  # a read-only cache still serves
    return ds


def save_cached(path: Path, ds: ImageDataset, header: dict[str, Any]) -> None:
    """Writes `ds` and `header` to `path` atomically; warns (does not raise) if it cannot.

    No fsync: a file torn by a power cut fails its CRC-32 on the next read and is rebuilt, which
    is cheaper than making every first run wait for the disk.
    """
    arrays = {
        "header": np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8),
        "images": ds.images,
        "labels": ds.labels if ds.labels is not None else np.zeros(0, dtype=np.int64),
    }

    def fill(f: Any) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                # force_zip64: the images of a large set exceed the 2 GiB plain-zip limit
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)

    try:
        fileio.make_dirs(path.parent)
        fileio.atomic_write(path, fill)
    except fileio.WriteError as e:
        warnings.warn(f"could not write dataset cache {path} ({fileio.describe_cause(e.cause)}); the dataset "
                      f"will be decoded again next time (set {CACHE_ENV} to a writable folder)", DatasetWarning,
                      stacklevel=3)


def cached_dataset(
    kind: str,
    params: dict[str, Any],
    sources: Sequence[Path],
    build: Callable[[], ImageDataset],
    *,
    cache_dir: Optional[str | os.PathLike] = None,
    mmap: bool = False,
) -> ImageDataset:
    """The dataset `build()` makes from the files `sources`, read from the cache when it holds
    one built with the same `kind` and `params` from the same files (same paths, sizes and
    modification times); else built, and stored for next time. mmap: a cached dataset's images
    are memory-mapped read-only (several training processes share one copy).

    params: JSON-serialisable; every option that changes the pixels or labels (resolution,
    channels, the source folder, fit, subset...). A cache hit reports again (as DatasetWarning)
    what the build reported, so it never hides skipped files.
    """
    path = datasets_dir(cache_dir) / slot_name(kind, params)
    state = source_state(path.name, sources)
    ds = load_cached(path, state, mmap=mmap)
    if ds is not None:
        for note in ds.notes:
            report(f"{note} (when decoded; cached in {path})")
        return ds
    # Hashed before decoding: a file changed in between then fails its check next time (one
    # needless rebuild) rather than passing it with pixels from other bytes.
    fresh = {p: _file_sha256(p) for p in state.fresh}
    ds = build()
    if not state.missing:
        header = {"format": CACHE_FORMAT, "key": state.key, "fresh": settle(fresh), "kind": kind,
                  "source": ds.source, "resolution": ds.resolution, "channels": ds.num_channels,
                  "images": len(ds), "labeled": ds.labels is not None, "label_names": ds.label_names,
                  "skipped": ds.skipped, "notes": ds.notes, "sources": len(sources),
                  "created": time.time(),
                  # Training asks for it anyway (checkpoints record it), and the object remembers
                  # it, so computing it here costs nothing extra there.
                  "fingerprint": ds.fingerprint(), "fingerprint_version": FINGERPRINT_VERSION.decode()}
        save_cached(path, ds, header)
    return ds


# --------------------------------------------------------------------------------------------
# Listing and clearing


@dataclass
class CacheEntry:
    """One file in the cache folder.

    kind: the dataset kind ("oasis", "mni152", ...), from the header or the file name.
    source: the dataset's description, or why there is none ("older cache format", ...).
    resolution, channels, images: from the header; None when it cannot be read.
    size: bytes on disk. last_used: seconds since the epoch (refreshed on every cache hit).
    state: "ok", "old" (an older format, never read again), "damaged" or "partial" (a temporary
    file of a write in progress, or of a killed one).
    """

    path: Path
    kind: str
    source: str
    resolution: Optional[int]
    channels: Optional[int]
    images: Optional[int]
    size: int
    last_used: float
    state: str


def _entry(path: Path) -> Optional[CacheEntry]:
    try:
        st = path.stat()
    except OSError:
        return None  # removed while listing
    kind = path.name.split("-", 1)[0].lstrip(".")
    base = dict(path=path, kind=kind, resolution=None, channels=None, images=None,
                size=st.st_size, last_used=st.st_mtime)
    if path.name.endswith(TEMP_SUFFIX):
        return CacheEntry(source="unfinished write (in progress, or left by a killed process)",
                          state="partial", **base)
    try:
        header = read_header(path)
    except OldFormat:
        return CacheEntry(source="older cache format, no longer read", state="old", **base)
    except READ_ERRORS as e:
        return CacheEntry(source=f"damaged ({type(e).__name__}); rebuilt when next used",
                          state="damaged", **base)
    base.update(kind=str(header.get("kind", kind)), resolution=header.get("resolution"),
                channels=header.get("channels"), images=header.get("images"))
    return CacheEntry(source=str(header.get("source", "")), state="ok", **base)


def list_cache(
    cache_dir: Optional[str | os.PathLike] = None,
    *,
    kinds: Sequence[str] = (),
    unused_days: Optional[float] = None,
) -> list[CacheEntry]:
    """The dataset cache files, most recently used first.

    kinds: keep only these dataset kinds (empty: all). unused_days: keep only files not used
    for at least this many days.
    """
    folder = datasets_dir(cache_dir)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    entries = []
    cutoff = None if unused_days is None else time.time() - unused_days * 86400.0
    for name in names:
        if not (name.endswith(SUFFIX) or name.endswith(TEMP_SUFFIX)):
            continue  # only files this module writes
        entry = _entry(folder / name)
        if entry is None or (kinds and entry.kind not in kinds):
            continue
        if cutoff is not None and entry.last_used > cutoff:
            continue
        entries.append(entry)
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def clear_cache(
    cache_dir: Optional[str | os.PathLike] = None,
    *,
    kinds: Sequence[str] = (),
    unused_days: Optional[float] = None,
) -> list[CacheEntry]:
    """Removes the dataset cache files `list_cache` selects with the same arguments; returns
    those removed. A file that vanished meanwhile is skipped; other failures raise OSError."""
    removed = []
    for entry in list_cache(cache_dir, kinds=kinds, unused_days=unused_days):
        try:
            entry.path.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


def format_size(n: int) -> str:
    """Bytes as a short human string: 512 B, 3.4 MB, 1.2 GB (powers of 1000, as `du --si`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_entries(entries: Sequence[CacheEntry]) -> list[str]:
    """A table of `entries` (one header line, one line each) for printing."""
    lines = [f"{'kind':8s} {'res':>5s} {'images':>7s} {'size':>9s}  {'last used':16s}  source / file"]
    for e in entries:
        res = f"{e.resolution}" if e.resolution else "-"
        count = f"{e.images}" if e.images is not None else "-"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        lines.append(f"{e.kind:8s} {res:>5s} {count:>7s} {format_size(e.size):>9s}  {used:16s}  "
                     f"{e.source}")
        lines.append(f"{'':52s}{e.path.name}")
    return lines
