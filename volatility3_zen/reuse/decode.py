"""Decoding objects.json values (docs/reuse.md) into live Python objects of this process.

Names (classes, functions, modules) are looked up under the bundle's ``Trust`` (trust.py): after the
injector has put the bundle's classes and functions into their modules, a name is the bundle's own,
the base environment's (checked for its kind before it is used) or on a fixed allowlist; anything
else is refused before it is imported or called.  Objects with an identity (instances, tensors) are
built once from the object table, so shared modules and tied weights stay shared.
"""

import collections
import functools
import types
from typing import Any, Callable, Dict, List, Optional

from ..zenlib.representation.program import decode_const
from .bundle import ReuseError
from .trust import DEPLOYMENT_MODULES, Refused, Trust

__all__ = ["DEPLOYMENT_MODULES", "Decoder", "resolve"]

_CONSTANT_TAGS = ("None", "Ellipsis", "bool", "int", "float", "complex", "str", "bytes")  # encode_const's scalars

_OMIT = object()  # an attribute the image could not describe: left out of the rebuilt object


def resolve(module: Optional[str], qualname: str, trust: Optional[Trust] = None, where: str = "") -> Any:
    """The object named module.qualname (qualname may be dotted: Class.method), looked up under ``trust``
    (without one: only torch and numpy, besides what this process has imported, may be imported)."""
    return (trust or Trust()).lookup(module, qualname, where)[0]


class Decoder:
    def __init__(self, objects: Dict[str, dict], tensor_source: Callable[[str, str], Any], trust: Optional[Trust] = None):
        self.table = objects  # id -> entry
        self.tensor_source = tensor_source  # (member, key) -> torch.Tensor
        self.built: Dict[str, Any] = {}
        self.warnings: List[str] = []
        self.make_function: Optional[Callable[[dict], Any]] = None  # set by the injector
        self._trust = trust  # the injector sets the bundle's; otherwise one from the table (Trust.for_table)

    @property
    def trust(self) -> Trust:
        """The names this decoding may use; the object table is checked against it before the first name
        is looked up (nothing imported, nothing called)."""
        if self._trust is None:
            self._trust = Trust.for_table(self.table)
        if not self._trust.audited:
            self._trust.audit_table(self.table)
        return self._trust

    @trust.setter
    def trust(self, trust: Trust) -> None:
        self._trust = trust

    def value(self, encoded: dict, where: str = "") -> Any:
        if not isinstance(encoded, dict):
            raise Refused(f"objects.json {where or '?'}: a value that is not an object")
        t = encoded.get("t")
        if t in _CONSTANT_TAGS:
            return decode_const(encoded)
        if t in ("list", "tuple", "set", "frozenset"):
            cls = self._container(t, encoded.get("class"), where)  # checked before any item is made
            items = [self.value(v, f"{where}[{i}]") for i, v in enumerate(encoded["v"])]
            items = [v for v in items if v is not _OMIT]
            if cls is not None:
                return cls(*items) if hasattr(cls, "_fields") else cls(items)
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[t](items)
        if t == "dict":
            cls = self._container(t, encoded.get("class"), where)
            pairs = [(self.value(k, where), self.value(v, where)) for k, v in encoded["v"]]
            pairs = [(k, v) for k, v in pairs if k is not _OMIT and v is not _OMIT]
            if cls is None:
                return dict(pairs)
            if cls is collections.defaultdict:  # its default_factory is not recorded
                return collections.defaultdict(None, pairs)
            if issubclass(cls, collections.Counter):  # Counter(iterable) would count the pairs
                return cls(dict(pairs))
            return cls(pairs)
        if t == "ref":
            return self.build(encoded["v"])
        if t in ("class", "function"):
            return self.trust.resolve(t, encoded, where)
        if t == "method":
            func, bound = self.value(encoded["function"], where), self.value(encoded["self"], where)
            if _OMIT in (func, bound):
                return _OMIT
            if not callable(func):
                raise Refused(f"objects.json {where}: a bound method whose function is not callable")
            return types.MethodType(func, bound)
        if t == "partial":
            cls = self.trust.resolve("partial", encoded["class"], f"{where} (its class)") \
                if encoded.get("class") is not None else functools.partial
            func = self.value(encoded["func"], f"{where}.func")
            args = self.value(encoded["args"], f"{where}.args")
            keywords = self.value(encoded["keywords"], f"{where}.keywords")
            if _OMIT in (func, args, keywords):
                return _OMIT
            if not callable(func) or not isinstance(args, tuple) or not isinstance(keywords, dict):
                raise Refused(f"objects.json {where}: a partial that is not (callable, tuple, dict)")
            return cls(func, *args, **keywords)
        if t == "pymodule":
            self.trust.check_name("module", encoded.get("v"), "", where)
            return self.trust.module(encoded["v"], where)
        if t == "enum":
            return self.trust.enum_member(encoded.get("class"), encoded.get("name"), where)
        if t in ("dtype", "device", "size"):
            return _torch_value(t, encoded.get("v"), where)
        if t == "unsupported":
            self.warnings.append(f"{where or 'a value'}: not in the bundle ({encoded.get('type')}); left out")
            return _OMIT
        raise ReuseError(f"objects.json: unknown value tag {t!r} at {where or '?'}")

    def _container(self, tag: str, ref: Optional[dict], where: str) -> Optional[type]:
        """The checked class of a container value; None for the builtin type itself."""
        if ref is None:
            return None
        cls = self.trust.resolve(f"container-{tag}", ref, f"{where} (its class)")
        return None if cls in (list, tuple, dict, set, frozenset) else cls

    # -- objects with an identity -------------------------------------------------------------------
    def build(self, object_id: str) -> Any:
        if object_id in self.built:
            return self.built[object_id]
        entry = self.table.get(object_id) if isinstance(object_id, str) else None
        if not isinstance(entry, dict):
            raise Refused(f"objects.json: a reference to {object_id!r}, which the object table does not hold")
        trust = self.trust
        where = f"objects[{object_id}] ({entry.get('path') or '(root)'})"
        if entry["kind"] == "tensor":
            obj = self.built[object_id] = self._tensor(entry, where)
            return obj
        if entry["kind"] == "function":
            if self.make_function is None:
                raise ReuseError(f"{entry['module']}.{entry['qualname']} is code from the bundle; it exists only when patched")
            # Stored before its closure and defaults are decoded: they may refer back to it.
            return self.make_function(entry, lambda func: self.built.__setitem__(object_id, func))
        if entry["kind"] != "object":
            raise Refused(f"objects.json {where}: unknown object kind {entry['kind']!r}")
        cls = trust.resolve("instance", entry["class"], f"{where}.class")
        # No __init__: the image holds the constructed state, which is restored as it was.
        obj = object.__new__(cls) if cls.__new__ is object.__new__ else cls.__new__(cls)
        self.built[object_id] = obj  # before its attributes: cycles come back to it
        state = {}
        for name, encoded in entry["dict"].items():
            decoded = self.value(encoded, f"{entry['path'] or '(root)'}.{name}")
            if decoded is not _OMIT:
                state[name] = decoded
        obj.__dict__.update(state)
        return obj

    def _tensor(self, entry: dict, where: str) -> Any:
        import torch

        cls = self.trust.resolve("tensor", entry["class"], f"{where}.class")
        path = entry["path"] or "(root)"
        if entry.get("member") is None:
            self.warnings.append(f"{path}: tensor not in the bundle; an empty {entry['dtype']} tensor stands in")
            tensor = torch.empty(entry["shape"], dtype=_torch_value("dtype", entry["dtype"], where))
        else:
            tensor = self.tensor_source(entry["member"], entry["key"])
        if issubclass(cls, torch.nn.Parameter):
            return cls(tensor, requires_grad=entry["requires_grad"])
        if entry["requires_grad"] and (tensor.is_floating_point() or tensor.is_complex()):
            tensor.requires_grad_(True)
        return tensor


def _torch_value(tag: str, value: Any, where: str) -> Any:
    import torch

    if tag == "dtype":
        dtype = getattr(torch, value, None) if isinstance(value, str) else None
        if not isinstance(dtype, torch.dtype):
            raise Refused(f"objects.json {where}: refused dtype {value!r}: not a torch dtype")
        return dtype
    if tag == "device":
        if not isinstance(value, str):
            raise Refused(f"objects.json {where}: refused device {value!r}")
        return torch.device(value)
    if not (isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in value)):
        raise Refused(f"objects.json {where}: refused size {value!r}")
    return torch.Size(value)
