"""A pickle reader that never runs code from the file: NVlabs network pickles read as data.

NVlabs' network pickles (stylegan2-ada-pytorch, stylegan3) store each network as a "persistent
object": a call to `torch_utils.persistence._reconstruct_persistent_obj(meta)` where `meta`
records the class's module source code, the class name and the object's `__dict__` (parameters,
buffers, submodules, plain attributes and the constructor's `init_kwargs`). Their own loader
imports that source text as a module and runs it. This reader instead answers every global the
pickle names from a short table of data builders written here:

- tensors: the rebuild functions torch's own pickling names, re-implemented with public APIs,
  and storages read back with `torch.load(weights_only=True)`;
- plain containers (`collections.OrderedDict`, `set`, `frozenset`), torch dtypes, `torch.Size`;
- numpy scalars and arrays, decoded from their bytes (numpy is never imported);
- the persistent-object call, answered by `RecordedObject`, which keeps `meta` as data. The
  module source stays an unread string.

Any other global becomes a stand-in class: calling it (how a `__reduce__` payload such as
`os.system` runs) raises `RefusedPickle` before anything is called; an object of it that carries
its own state is refused the same way. An object of an unknown class built without a call and
filled only with key/value pairs (the attribute-access dicts NVlabs' configs use) is read as a
plain dict, and the report says so.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import warnings
from typing import Any, BinaryIO, Optional, Union

import torch


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something this reader will not do (its message says what)."""


_WHY = ("only tensors, plain containers and NVlabs' recorded network objects are read; "
        "nothing in the file was run")


# --------------------------------------------------------------------------------------------
# Persistent objects.

class RecordedObject:
    """One NVlabs persistent object (a torch module) as recorded in the pickle, never rebuilt.

    Attributes:
        class_name: the recorded class name, e.g. "Generator".
        module_src: the recorded source text of its module (kept, never executed).
        state: the object's recorded `__dict__`.
    """

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, dict):
            raise RefusedPickle(f"a persistent object whose record is a {type(meta).__name__}, not a dict; {_WHY}")
        if meta.get("type") != "class":
            raise RefusedPickle(f"a persistent object of type {meta.get('type')!r} (only 'class' objects are read); {_WHY}")
        state = meta.get("state")
        if not isinstance(state, dict) or not isinstance(meta.get("class_name"), str):
            raise RefusedPickle(f"a persistent object without a class name and state dict; {_WHY}")
        self.class_name: str = meta["class_name"]
        self.module_src: str = str(meta.get("module_src") or "")
        self.version = meta.get("version")
        self.state: dict[str, Any] = state

    def __setstate__(self, _state: Any) -> None:
        # A BUILD opcode aimed at a record would replace its fields (methods included).
        raise RefusedPickle(f"the pickle rewrites a recorded network object; {_WHY}")

    # Views of the torch.nn.Module fields in `state`.
    @property
    def children(self) -> dict[str, "RecordedObject"]:
        mods = self.state.get("_modules") or {}
        return {k: v for k, v in mods.items() if isinstance(v, RecordedObject)}

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kw = self.state.get("_init_kwargs")
        return dict(kw) if isinstance(kw, dict) else {}

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every persistent parameter and buffer below this object, named as state_dict() would."""
        out: dict[str, torch.Tensor] = {}
        skip = self.state.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for k, v in (self.state.get(group) or {}).items():
                if torch.is_tensor(v) and not (group == "_buffers" and k in skip):
                    out[prefix + k] = v
        for name, child in self.children.items():
            out.update(child.tensors(f"{prefix}{name}."))
        return out

    def __repr__(self) -> str:
        return f"RecordedObject({self.class_name}, children={list(self.children)})"


# --------------------------------------------------------------------------------------------
# Tensor rebuilds (the names torch's pickling records; our own bodies, public APIs only).

def _load_storage(data: bytes) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise RefusedPickle(f"a tensor storage given as {type(data).__name__}, not bytes; {_WHY}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notes
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises several types for a storage it cannot read
        raise RefusedPickle(f"a tensor storage that torch.load(weights_only=True) cannot read "
                            f"({type(e).__name__}); {_WHY}") from None
    if not hasattr(storage, "dtype"):
        raise RefusedPickle(f"a tensor storage without a dtype ({type(storage).__name__}); {_WHY}")
    return storage


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    # requires_grad, backward hooks and metadata are training-time state: dropped.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not hasattr(storage, "dtype") or not isinstance(getattr(storage, "dtype"), torch.dtype):
            raise RefusedPickle(f"a tensor built on a {type(storage).__name__}; {_WHY}")
        return torch.empty(0, dtype=storage.dtype).set_(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not torch.is_tensor(data):
        raise RefusedPickle(f"a parameter built from a {type(data).__name__}; {_WHY}")
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    # torch records tensor subclasses this way; only the plain tensor and Parameter types pass.
    if new_type not in (torch.Tensor, torch.nn.Parameter) or not callable(func):
        raise RefusedPickle(f"a tensor of type {getattr(new_type, '__name__', new_type)!r}; {_WHY}")
    return func(*args)


# --------------------------------------------------------------------------------------------
# numpy scalars and arrays, decoded without numpy.

_NP_KINDS = {"f2": torch.float16, "f4": torch.float32, "f8": torch.float64, "i1": torch.int8,
             "i2": torch.int16, "i4": torch.int32, "i8": torch.int64, "u1": torch.uint8,
             "b1": torch.bool}


class _NumpyDType:
    """What a numpy dtype record says: its kind/size code and byte order."""

    def __init__(self, code: Any = "f8", *_ignored: Any) -> None:
        code = str(code)
        self.code = code[1:] if code[:1] in "<>|=" else code
        self.order = code[0] if code[:1] in "<>|=" else "<"
        if self.code not in _NP_KINDS:
            raise RefusedPickle(f"a numpy value of dtype {code!r}; {_WHY}")

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def decode(self, raw: bytes) -> torch.Tensor:
        dtype = _NP_KINDS[self.code]
        size = torch.empty(0, dtype=dtype).element_size()
        b = bytearray(raw)
        if self.order == ">" and size > 1:  # torch reads native (little-endian) order
            b = bytearray(b"".join(bytes(reversed(b[i:i + size])) for i in range(0, len(b), size)))
        if not b:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(b, dtype=dtype).clone()


def _numpy_scalar(dtype: Any, raw: Any = b"") -> Union[int, float, bool]:
    if not isinstance(dtype, _NumpyDType) or not isinstance(raw, (bytes, bytearray)):
        raise RefusedPickle(f"a numpy scalar that is not a plain number; {_WHY}")
    return dtype.decode(bytes(raw))[0].item()


class _NumpyArray:
    """A numpy array record; `tensor` holds its values once its state is read."""

    def __init__(self) -> None:
        self.tensor: Optional[torch.Tensor] = None

    def __setstate__(self, state: Any) -> None:
        try:
            _, shape, dtype, fortran, raw = state
        except (TypeError, ValueError):
            raise RefusedPickle(f"a numpy array with an unexpected record; {_WHY}") from None
        if not isinstance(dtype, _NumpyDType) or not isinstance(raw, (bytes, bytearray)):
            raise RefusedPickle(f"a numpy array of objects, not numbers; {_WHY}")
        flat = dtype.decode(bytes(raw))
        shape = tuple(int(s) for s in shape)
        self.tensor = flat.reshape(shape[::-1]).permute(*reversed(range(len(shape)))) if fortran \
            else flat.reshape(shape)


def _numpy_reconstruct(cls: Any, *_ignored: Any) -> _NumpyArray:
    if cls is not _NumpyArray:
        raise RefusedPickle(f"a numpy object of an unexpected type; {_WHY}")
    return _NumpyArray()


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    # Protocol 2 pickles record bytes as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"a call of _codecs.encode other than text to latin-1 bytes; {_WHY}")
    return text.encode("latin1")


# --------------------------------------------------------------------------------------------
# The table of globals, and stand-ins for everything else.

_PERSISTENT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
_ALLOWED: dict[tuple[str, str], Any] = {
    _PERSISTENT: RecordedObject,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy", "ndarray"): _NumpyArray,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "scalar")] = _numpy_scalar
    _ALLOWED[(_mod, "_reconstruct")] = _numpy_reconstruct


class _RefuseCall(type):
    """Metaclass of the stand-ins: calling one is how a pickle runs code, so it is refused."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        hint = ""
        if "tflib" in cls.qualified_name:
            hint = " (a TensorFlow StyleGAN pickle: convert it to a PyTorch one first)"
        raise RefusedPickle(f"the pickle asks to call {cls.qualified_name}{hint}; {_WHY}")


class _UnknownMapping(dict, metaclass=_RefuseCall):
    """An object of a class this reader does not know, built without calling anything."""

    qualified_name = "?"

    def __setstate__(self, state: Any) -> None:
        if state:  # an object with its own fields: not plain data
            raise RefusedPickle(f"the pickle builds an object of class {self.qualified_name} with its "
                                f"own state; {_WHY}")

    def append(self, _item: Any) -> None:
        raise RefusedPickle(f"the pickle builds a sequence of class {self.qualified_name}; {_WHY}")

    extend = append


def _stand_in(module: str, name: str) -> type:
    return _RefuseCall(name, (_UnknownMapping,), {"qualified_name": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.unknown: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        self.unknown.add(f"{module}.{name}")
        return _stand_in(module, name)

    def persistent_load(self, pid: Any) -> Any:
        # Plain pickle.dump files (what NVlabs writes) have none; torch.save files use them and
        # are read with torch.load(weights_only=True) instead.
        raise RefusedPickle(f"a pickle with persistent ids (a torch.save file? read it with torch.load); {_WHY}")


def _plain(obj: Any, notes: set[str], seen: dict[int, Any]) -> Any:
    """Replace the reader's stand-ins in a loaded structure by plain values."""
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, type) and issubclass(obj, _UnknownMapping):
        return f"<{obj.qualified_name}>"  # a class named as a value, never used
    if isinstance(obj, _UnknownMapping):
        notes.add(f"read {type(obj).qualified_name} (a mapping) as a plain dict")
        out: Any = {}
        seen[id(obj)] = out
        out.update({k: _plain(v, notes, seen) for k, v in obj.items()})
        return out
    if isinstance(obj, _NumpyArray):
        return obj.tensor
    if isinstance(obj, RecordedObject):
        seen[id(obj)] = obj
        obj.state = _plain(obj.state, notes, seen)
        return obj
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        seen[id(obj)] = out
        for k, v in obj.items():
            out[k] = _plain(v, notes, seen)
        return out
    if isinstance(obj, list):
        lst: list[Any] = []
        seen[id(obj)] = lst
        lst.extend(_plain(v, notes, seen) for v in obj)
        return lst
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(_plain(v, notes, seen) for v in obj)
    return obj


def load_restricted_pickle(source: Union[str, os.PathLike, BinaryIO]) -> tuple[Any, list[str]]:
    """Read a pickle without running code from it.

    Returns (object, notes): the loaded structure, with NVlabs persistent objects as
    RecordedObject and tensors as plain CPU tensors, and notes on anything read in a
    simplified way. Raises RefusedPickle (one line: what the pickle asked for) for anything
    that would need code from the file or an unknown class's own logic.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return load_restricted_pickle(f)
    unpickler = _RestrictedUnpickler(source)
    try:
        obj = unpickler.load()
    except RefusedPickle:
        raise
    except RecursionError:
        raise RefusedPickle("the pickle nests too deeply to read") from None
    except Exception as e:  # truncated or malformed files fail in many ways, torch's included
        raise RefusedPickle(f"not a readable pickle ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    notes: set[str] = set()
    obj = _plain(obj, notes, {})
    return obj, sorted(notes)
