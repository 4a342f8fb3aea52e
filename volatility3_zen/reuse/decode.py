"""Decoding objects.json values (docs/reuse.md) into live Python objects of this process.

Names (classes, functions, modules) are looked up by import, after the injector has put the bundle's
classes and functions into their modules; objects with an identity (instances, tensors) are built
once from the object table, so shared modules and tied weights stay shared.
"""

import functools
import importlib
import sys
import types
from typing import Any, Callable, Dict, List, Optional

from ..zenlib.representation.program import decode_const
from .bundle import ReuseError

_CONSTANT_TAGS = ("None", "Ellipsis", "bool", "int", "float", "complex", "str", "bytes")  # encode_const's scalars

_OMIT = object()  # an attribute the image could not describe: left out of the rebuilt object


# Modules of the deployment itself that the injector made for this rebuild (its script's ``__main__``
# among them, which is not this process's ``__main__``): looked up here before anything is imported.
DEPLOYMENT_MODULES: Dict[str, types.ModuleType] = {}


def resolve(module: Optional[str], qualname: str) -> Any:
    """The object named module.qualname (qualname may be dotted: Class.method)."""
    if not module:
        raise ReuseError(f"{qualname} has no module; it cannot be looked up")
    try:
        target = DEPLOYMENT_MODULES.get(module) or sys.modules.get(module) or importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 -- an import runs arbitrary code; any failure means "not here"
        raise ReuseError(f"module {module} is not importable here ({type(exc).__name__}: {exc})") from None
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ReuseError(f"{module}.{qualname} does not exist in this environment") from None
    return target


class Decoder:
    def __init__(self, objects: Dict[str, dict], tensor_source: Callable[[str, str], Any]):
        self.table = objects  # id -> entry
        self.tensor_source = tensor_source  # (member, key) -> torch.Tensor
        self.built: Dict[str, Any] = {}
        self.warnings: List[str] = []
        self.make_function: Optional[Callable[[dict], Any]] = None  # set by the injector

    def value(self, encoded: dict, where: str = "") -> Any:
        t = encoded["t"]
        if t in _CONSTANT_TAGS:
            return decode_const(encoded)
        if t in ("list", "tuple", "set", "frozenset"):
            items = [self.value(v, f"{where}[{i}]") for i, v in enumerate(encoded["v"])]
            items = [v for v in items if v is not _OMIT]
            cls = self._class(encoded.get("class"))
            if cls is not None:
                return cls(*items) if hasattr(cls, "_fields") else cls(items)
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[t](items)
        if t == "dict":
            pairs = [(self.value(k, where), self.value(v, where)) for k, v in encoded["v"]]
            pairs = [(k, v) for k, v in pairs if k is not _OMIT and v is not _OMIT]
            cls = self._class(encoded.get("class")) or dict
            return cls(pairs) if cls is not dict else dict(pairs)
        if t == "ref":
            return self.build(encoded["v"])
        if t in ("class", "function"):
            return resolve(encoded["module"], encoded["qualname"])
        if t == "method":
            func, bound = self.value(encoded["function"], where), self.value(encoded["self"], where)
            return _OMIT if _OMIT in (func, bound) else types.MethodType(func, bound)
        if t == "partial":
            func = self.value(encoded["func"], f"{where}.func")
            args = self.value(encoded["args"], f"{where}.args")
            keywords = self.value(encoded["keywords"], f"{where}.keywords")
            if _OMIT in (func, args, keywords):
                return _OMIT
            cls = self._class(encoded.get("class")) or functools.partial
            return cls(func, *args, **keywords)
        if t == "pymodule":
            return importlib.import_module(encoded["v"])
        if t == "enum":
            return getattr(resolve(encoded["class"]["module"], encoded["class"]["qualname"]), encoded["name"])
        if t in ("dtype", "device", "size"):
            import torch
            return {"dtype": lambda v: getattr(torch, v), "device": torch.device, "size": torch.Size}[t](encoded["v"])
        if t == "unsupported":
            self.warnings.append(f"{where or 'a value'}: not in the bundle ({encoded.get('type')}); left out")
            return _OMIT
        raise ReuseError(f"objects.json: unknown value tag {t!r} at {where or '?'}")

    def _class(self, ref: Optional[dict]) -> Optional[type]:
        if ref is None:
            return None
        cls = resolve(ref["module"], ref["qualname"])
        return None if cls in (list, tuple, dict, set, frozenset) else cls

    # -- objects with an identity -------------------------------------------------------------------
    def build(self, object_id: str) -> Any:
        if object_id in self.built:
            return self.built[object_id]
        entry = self.table[object_id]
        if entry["kind"] == "tensor":
            obj = self.built[object_id] = self._tensor(entry)
            return obj
        if entry["kind"] == "function":
            if self.make_function is None:
                raise ReuseError(f"{entry['module']}.{entry['qualname']} is code from the bundle; it exists only when patched")
            # Stored before its closure and defaults are decoded: they may refer back to it.
            return self.make_function(entry, lambda func: self.built.__setitem__(object_id, func))
        cls = resolve(entry["class"]["module"], entry["class"]["qualname"])
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

    def _tensor(self, entry: dict) -> Any:
        import torch

        where = entry["path"] or "(root)"
        if entry.get("member") is None:
            self.warnings.append(f"{where}: tensor not in the bundle; an empty {entry['dtype']} tensor stands in")
            tensor = torch.empty(entry["shape"], dtype=getattr(torch, entry["dtype"]))
        else:
            tensor = self.tensor_source(entry["member"], entry["key"])
        cls = resolve(entry["class"]["module"], entry["class"]["qualname"])
        if isinstance(cls, type) and issubclass(cls, torch.nn.Parameter):
            return cls(tensor, requires_grad=entry["requires_grad"])
        if entry["requires_grad"] and (tensor.is_floating_point() or tensor.is_complex()):
            tensor.requires_grad_(True)
        return tensor
