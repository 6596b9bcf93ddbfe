"""Every file this package writes goes through here: atomically, and failing with one clear line.

    atomic_write(path, fill)        fill(f) writes bytes into a temporary file, which replaces path
    atomic_write_text(path, text)   the same for text
    append_text(path, text)         append to a log (JSONL), rolled back if the append fails
    check_writable_dir(path)        before long work: can files be created in this folder?
    remove_stale_temporaries(dir)   temporaries a killed process left behind

Why one place: left to itself, each writer reports a full disk its own way (matplotlib's
`OSError: [Errno 28]` traceback, or torch.save's `[enforce fail at inline_container.cc] unexpected
pos`, which swallows the real cause). Here every writer (torch.save, Pillow, matplotlib, json, csv)
writes through `_GuardedFile`, which remembers the first OSError the operating system raised, so
the `WriteError` names the file and the real cause (ENOSPC: the disk is full) whatever the writer
turned it into. The temporary is removed on every failure; the file being replaced is untouched.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

# Temporaries are ".<name>.<random>.tmp" beside their target (tempfile.mkstemp with this prefix
# and suffix): hidden, unique per writer, and recognisable for remove_stale_temporaries.
_TMP_SUFFIX = ".tmp"
_STALE = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")
# Fixed-name temporaries of earlier versions of this package, which a kill could leave too.
_LEGACY_STALE = re.compile(r"^(config\.json\.tmp|stats\.csv\.tmp|.+\.tmp\.png)$")

# mkstemp creates files 0600; a finished file gets the mode a plain open() would have given it
# (0666 less the umask), so run folders stay readable by a group as before. The umask is read once
# here: reading it means setting it, which is not safe while PngWriter threads create files.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

_CAUSES = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "a folder on the way does not exist or cannot be created there",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EIO: "input/output error (a failing disk or network mount)",
}


class WriteError(OSError):
    """A file could not be written. str() is one line: the file, then the cause (errno named).

    Subclasses OSError (with the cause's errno) so callers that handle OSError still do.
    """

    def __init__(self, path: str | os.PathLike, cause: BaseException | str, what: str = "cannot write") -> None:
        self.path = Path(path)
        self.cause = cause
        code = getattr(cause, "errno", None)
        super().__init__(code, describe_cause(cause))
        self.what = what

    def __str__(self) -> str:
        return f"{self.what} {self.path}: {describe_cause(self.cause)}"


def describe_cause(cause: BaseException | str) -> str:
    """'no space left on the device (the disk is full) [ENOSPC]' and the like, on one line."""
    if isinstance(cause, str):
        return cause
    code = getattr(cause, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        text = _CAUSES.get(code) or os.strerror(code)
        return f"{text} [{errno.errorcode[code]}]"
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text[:300]


def _write_chunk(f: IO[bytes], data: Any, target: Path) -> int | None:
    """The single place bytes reach a file, `target` being the file they are for (tests replace
    this function to simulate a full disk for chosen files)."""
    return f.write(data)


class _GuardedFile:
    """A write-only binary file object that remembers the first OSError of any write or flush.

    It deliberately has no fileno(): Pillow would then encode straight into the descriptor,
    past this object, and the cause of a failure would be lost again.
    """

    def __init__(self, f: IO[bytes], target: Path) -> None:
        self._f = f
        self._target = target
        self.error: OSError | None = None

    def write(self, data: Any) -> int | None:
        try:
            return _write_chunk(self._f, data, self._target)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = self.error or e
            raise

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, fill: Callable[[IO[bytes]], Any], *, fsync: bool = False) -> Path:
    """Write `path` by calling fill(f) on a temporary file in the same folder, then renaming it.

    A crash or failure at any point leaves the old file (or none) and never a torn one; the
    temporary is removed on failure. fsync=True forces the data to disk before the rename (for
    checkpoints: a power cut must not leave a renamed but empty file). Raises WriteError (one
    line, naming `path` and the cause) for any OSError, and for any other error the writer raised
    while the operating system was refusing its bytes (torch.save's 'unexpected pos').
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise WriteError(path, e) from None
    guard: _GuardedFile | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            guard = _GuardedFile(f, path)
            fill(guard)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        _unlink_quietly(tmp)
        recorded = guard.error if guard is not None else None
        if recorded is not None:
            raise WriteError(path, recorded) from None
        if isinstance(e, OSError):
            raise WriteError(path, e) from None
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a log file. If the append fails, the file is cut back to its old length, so a
    full disk never leaves half a line behind; raises WriteError."""
    path = Path(path)
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                _write_chunk(f, text.encode("utf-8"), path)
                f.flush()
            except OSError:
                try:
                    f.truncate(start)
                except OSError:
                    pass
                raise
    except OSError as e:
        raise WriteError(path, e) from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read a chunk at a time (checkpoints and caches are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_dirs(path: str | os.PathLike) -> Path:
    """mkdir -p that fails with a WriteError (one line) instead of a traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        # Name the folder that failed (/proc/x for /proc/x/runs), which is where the fix goes.
        raise WriteError(e.filename or path, e, what="cannot create folder") from None
    return path


def check_writable_dir(path: str | os.PathLike, *, keep: bool = False) -> Path:
    """Check that files can be created in folder `path` (creating it and its parents if needed)
    by writing and deleting a probe file. Meant to run before any long work (a dataset load), so
    an --out under /proc or on a read-only mount fails in a second, not after minutes.

    keep=False removes the folders this check created, so a command that fails later for another
    reason leaves nothing behind. Raises WriteError naming the folder and the cause.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if path.exists() and not path.is_dir():
        raise WriteError(path, OSError(errno.ENOTDIR, "not a folder"), what="cannot write in")
    try:
        make_dirs(path)
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=_TMP_SUFFIX, dir=path)
        except OSError as e:
            raise WriteError(path, e, what="cannot write in") from None
        os.close(fd)
        _unlink_quietly(probe)
    finally:
        if not keep:
            for d in missing:  # deepest first
                try:
                    d.rmdir()
                except OSError:
                    break
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries (`.<name>.<random>.tmp`) that a killed writer left in `folder`.
    Call only where no other process writes (a run's own folders, when the run starts)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if (_STALE.match(p.name) or _LEGACY_STALE.match(p.name)) and p.is_file():
            _unlink_quietly(p)
            removed.append(p)
    return removed
