"""Recovering PyTorch models (nn.Module trees, hyper-parameters, tensors) from a CPython process.

A module is any live object whose class has torch's ``torch.nn.modules.module.Module`` in its MRO (no
list of known class names).  A root is a module that no other module lists among its children.
The tree follows each module's ``_modules`` dict, which keeps registration order, exactly as
``named_modules()`` walks it; tensors come from ``_parameters`` / ``_buffers`` as
``named_parameters`` / ``named_buffers`` (``remove_duplicate=False``) list them.
"""

import hashlib
from typing import Dict, Iterator, List, Optional, Set, Tuple

from ...errors import CorruptObjectError, NoPythonError, UnsupportedVersionError
from ...representation.model import ExecutionContext, Numerics, RecoveredModel, ModuleNode, TensorEntry, encode_value
from ..cpython.objects import DECODE_ERRORS
from ..cpython.recover import PythonProcess
from .layouts import load_torch_layout
from .numerics import read_numerics
from .tensors import TensorDataUnavailableError, TensorReader

MODULE_CLASS = ("torch.nn.modules.module", "Module")
# Where else a process holds the Module class and the version string, should smeared memory have
# taken the usual entry: torch.nn re-exports Module; torch/version.py defines __version__ too.
MODULE_CLASS_ALSO_IN = ("torch.nn", "torch.nn.modules")
VERSION_ALSO_IN = ("torch.version",)
HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
)
_INTERNAL = {"_modules", "_parameters", "_buffers", "_non_persistent_buffers_set"} | set(HOOK_DICTS)
# Limits of one model's walk: deeper nesting or more module visits than any real model has means a
# cycle or smeared pointers; the walk stops there with a warning instead of recursing without end.
MAX_MODULE_DEPTH = 200
MAX_MODULE_VISITS = 200_000


class TorchProcess:
    """A CPython process that has imported torch: its version, its Module class, tensor reader."""

    def __init__(self, python: PythonProcess):
        self.py = python
        self.o = python.objects
        self.heap = python.heap
        modules = self.heap.modules()
        if "torch" not in modules:
            raise NoPythonError("torch is not imported in this process")
        self.module_addrs = modules
        self.torch_version = next(filter(None, (self._module_version(m) for m in ("torch",) + VERSION_ALSO_IN)), None)
        if not self.torch_version:
            raise UnsupportedVersionError("torch.__version__ could not be read from memory")
        self.tensors = TensorReader(python.memory, load_torch_layout(self.torch_version))
        self.module_class = self._module_class()
        self._is_module_type: Dict[int, bool] = {}
        self._numerics: Optional[Numerics] = None

    def _namespace(self, module_name: str) -> Dict[str, int]:
        return self.o.module_namespace(self.module_addrs[module_name])

    def _module_version(self, name: str) -> Optional[str]:
        try:
            value = self._namespace(name).get("__version__")
            if value and self.o.base_kind(value) == "str":
                return self.o.read_str(value)
        except DECODE_ERRORS:
            pass
        return None

    def _installed_package(self, name: str) -> bool:
        """A third-party package (its file under site-/dist-packages), not a stdlib module."""
        try:
            value = self._namespace(name).get("__file__")
            path = self.o.read_str(value) if value and self.o.kind(value) == "str" else ""
        except DECODE_ERRORS:
            return False
        return "/site-packages/" in path or "/dist-packages/" in path

    def _module_class(self) -> int:
        """torch.nn.Module, from its own module or, where smeared memory took that entry, from a
        module that re-exports it (checked to be the class of that name and module)."""
        module_name, qualname = MODULE_CLASS
        for holder in (module_name,) + MODULE_CLASS_ALSO_IN:
            try:
                value = self._namespace(holder).get(qualname) if holder in self.module_addrs else None
                info = self.py.read_class(value) if value else None
                if info is not None and (info.module, info.qualname) == MODULE_CLASS:
                    return value
            except DECODE_ERRORS:
                continue
        # Last, the class itself among the heap types on the GC lists.
        for obj, type_addr in self.heap.gc_objects():
            try:
                if self.heap.is_type_object(type_addr) and self.o.type_name(obj) == qualname:
                    info = self.py.read_class(obj)
                    if (info.module, info.qualname) == MODULE_CLASS:
                        self._warn(f"{module_name}.{qualname} found on the GC lists (its module's entry is unreadable)")
                        return obj
            except DECODE_ERRORS:
                continue
        raise CorruptObjectError(f"torch is imported but its {module_name}.{qualname} class is unreadable")

    # -- finding modules -------------------------------------------------------------------------
    def is_module_type(self, type_addr: int) -> bool:
        known = self._is_module_type.get(type_addr)
        if known is None:
            known = False
            try:
                if self.o.kind_of_type(type_addr) == "heap":
                    mro = self.o.u64(type_addr + self.o.off_tp_mro)
                    known = bool(mro) and self.module_class in self.o.tuple_items(mro)
            except DECODE_ERRORS:
                known = False
            self._is_module_type[type_addr] = known
        return known

    def module_instances(self) -> List[int]:
        """Every nn.Module on the GC lists; when smeared memory broke them, also those that module
        globals hold (a script's ``model = ...``), which the pieces of the lists may have lost."""
        found = [obj for obj, type_addr in self.heap.gc_objects() if self.is_module_type(type_addr)]
        if self.heap.lists_broken:
            known = set(found)
            for module in self.module_addrs.values():
                try:
                    values = self.o.module_namespace(module).values()
                    found += [v for v in values if v not in known and self.is_module_type(self.o.type_of(v))]
                    known.update(found)
                except DECODE_ERRORS:
                    continue
        return found

    # -- one module --------------------------------------------------------------------------------
    def class_path(self, obj: int) -> Tuple[str, str]:
        cls = self.py.read_class(self.o.type_of(obj))
        return cls.module or "", cls.qualname

    def children(self, attrs: Dict[str, int]) -> List[Tuple[str, int]]:
        modules = attrs.get("_modules")
        if not modules:
            return []
        return [(self.o.read_str(k), v) for k, v in self.o.dict_items(modules) if self.o.kind(v) != "NoneType"]

    def tensor_dict(self, attrs: Dict[str, int], name: str) -> List[Tuple[str, int]]:
        table = attrs.get(name)
        if not table:
            return []
        return [(self.o.read_str(k), v) for k, v in self.o.dict_items(table) if self.o.kind(v) != "NoneType"]

    def non_persistent(self, attrs: Dict[str, int]) -> Set[str]:
        value = attrs.get("_non_persistent_buffers_set")
        if not value:
            return set()
        return {self.o.read_str(k) for k in self.o.set_items(value)}

    def hooks(self, attrs: Dict[str, int]) -> List[str]:
        out = []
        for name in HOOK_DICTS:
            value = attrs.get(name)
            if value and self.o.base_kind(value) == "dict" and any(True for _ in self.o.dict_items(value)):
                out.append(name)
        return out

    def hyperparameters(self, attrs: Dict[str, int]) -> Dict[str, dict]:
        out = {}
        for name, value in attrs.items():
            if name.startswith("_") or name in _INTERNAL:
                continue
            decoded = self.value(value)
            if decoded is not None:
                out[name] = decoded
        return out

    def value(self, obj: int, depth: int = 0) -> Optional[dict]:
        """Encoded simple value (None when it is not built from simple values)."""
        o = self.o
        if depth > 16:
            return None
        try:
            kind = o.base_kind(obj)
            if kind == "list":
                items = [self.value(i, depth + 1) for i in o.list_items(obj)]
                return None if any(i is None for i in items) else {"t": "list", "v": items}
            if kind == "tuple":
                items = [self.value(i, depth + 1) for i in o.tuple_items(obj)]
                return None if any(i is None for i in items) else {"t": "tuple", "v": items}
            if kind == "dict":
                items = []
                for k, v in o.dict_items(obj):
                    if o.kind(k) != "str":
                        return None
                    encoded = self.value(v, depth + 1)
                    if encoded is None:
                        return None
                    items.append([o.read_str(k), encoded])
                return {"t": "dict", "v": items}
            if kind in ("str", "bytes", "int", "bool", "float", "complex", "NoneType") and o.kind(obj) == kind:
                return encode_value(o.read_const(obj))
            type_name = o.type_name(o.type_of(obj))
            if type_name == "torch.dtype":
                return {"t": "dtype", "v": self.dtype_name(obj)}
            if type_name == "torch.device":
                return {"t": "device", "v": self.device_name(obj)}
        except DECODE_ERRORS + (UnicodeDecodeError,):
            return None
        return None

    def dtype_name(self, obj: int) -> str:
        """``str(torch.float16)`` without the prefix, from a THPDtype's scalar type."""
        layout = self.tensors.layout
        value = self.o.mem.read(obj + layout.offset("THPDtype", "scalar_type"), 1)[0]
        return layout.scalar_types[value][0] if value in layout.scalar_types else f"ScalarType({value})"

    def device_name(self, obj: int) -> str:
        """``str(torch.device(...))``: "cpu", "cuda:0"."""
        layout = self.tensors.layout
        base = obj + layout.offset("THPDevice", "device")
        raw = self.o.mem.read(base + layout.offset("c10::Device", "type_"), 2)
        name = layout.device_types.get(raw[0], f"device{raw[0]}")
        index = int.from_bytes(raw[1:2], "little", signed=True)
        return name if index < 0 else f"{name}:{index}"

    # -- whole models --------------------------------------------------------------------------------
    def models(self, read_bytes: bool = True, addresses: Optional[Set[int]] = None) -> Iterator[RecoveredModel]:
        """Every root model; or, with ``addresses``, the models rooted at those modules (roots or not:
        e.g. the DetectionModel inside ultralytics' YOLO wrapper, itself an nn.Module)."""
        instances = self.module_instances()
        attrs_of: Dict[int, Dict[str, int]] = {}
        child_of: Set[int] = set()
        for obj in instances:
            try:
                attrs = self.heap.instance_dict(obj)
            except DECODE_ERRORS as exc:
                self._warn(f"module at 0x{obj:x}: attributes unreadable ({exc})")
                continue
            attrs_of[obj] = attrs
            try:
                child_of.update(addr for _, addr in self.children(attrs))
            except DECODE_ERRORS:
                pass
        for root in instances:
            wanted = root in addresses if addresses else root not in child_of
            if root in attrs_of and wanted:
                try:
                    yield self.model(root, attrs_of, read_bytes)
                except DECODE_ERRORS as exc:
                    self._warn(f"model at 0x{root:x}: root module unreadable ({exc}); left out")

    def _warn(self, text: str) -> None:
        self.py.objects.warnings.append(text)

    def model(self, root: int, attrs_of: Dict[int, Dict[str, int]], read_bytes: bool = True) -> RecoveredModel:
        """The model rooted at ``root``.  What smeared memory made unreadable is left out with a warning,
        at the smallest unit that owns it: a tensor, a tensor table, a module with its submodules."""
        module, qualname = self.class_path(root)
        model = RecoveredModel(root_address=root, root_class=f"{module}.{qualname}")
        seen: Set[int] = set()
        on_path: Set[int] = set()
        storage_owner: Dict[int, str] = {}
        visits = [0]

        def visit(prefix: str, obj: int, depth: int) -> None:
            where = prefix or "(root)"
            if obj in on_path or depth > MAX_MODULE_DEPTH or visits[0] >= MAX_MODULE_VISITS:
                self._warn(f"model at 0x{root:x}: module {where} at 0x{obj:x} not walked (a cycle, or nesting or "
                           f"size beyond any real model: smeared pointers)")
                model.unreadable.append(f"module {where}")
                return
            visits[0] += 1
            try:
                attrs = attrs_of.get(obj)
                if attrs is None:
                    attrs = attrs_of[obj] = self.heap.instance_dict(obj)
                mod, qual = self.class_path(obj)
                children = self.children(attrs)
            except DECODE_ERRORS as exc:
                self._warn(f"model at 0x{root:x}: module {where} at 0x{obj:x} unreadable ({exc}); left out with its submodules")
                model.unreadable.append(f"module {where}")
                return
            if obj not in seen:
                seen.add(obj)
                model.modules.append(ModuleNode(prefix, obj, mod, qual, depth, [n for n, _ in children],
                                                self.hyperparameters(attrs), self._contained(where, "hooks", lambda: self.hooks(attrs), [])))
            nonpersistent = self._contained(where, "_non_persistent_buffers_set", lambda: self.non_persistent(attrs), set())
            for kind, table in (("parameter", "_parameters"), ("buffer", "_buffers")):
                for name, tensor in self._contained(where, table, lambda: self.tensor_dict(attrs, table), []):
                    full = f"{prefix}.{name}" if prefix else name
                    try:
                        info = self.tensors.read_tensor(tensor)
                    except DECODE_ERRORS as exc:
                        self._warn(f"model at 0x{root:x}: tensor {full} at 0x{tensor:x} unreadable ({exc}); left out")
                        model.unreadable.append(f"tensor {full}")
                        continue
                    entry = TensorEntry(full, kind, kind == "parameter" or name not in nonpersistent, info)
                    if info.storage_address:
                        entry.shares_storage_with = storage_owner.setdefault(info.storage_address, full)
                        if entry.shares_storage_with == full:
                            entry.shares_storage_with = None
                    model.tensors.append(entry)
            on_path.add(obj)
            for name, child in children:
                visit(f"{prefix}.{name}" if prefix else name, child, depth + 1)
            on_path.discard(obj)

        visit("", root, 0)
        # named_modules() drops repeated modules, named_parameters(remove_duplicate=False) does not:
        # tensors were collected on the full walk above, module nodes once each.
        if read_bytes:
            for entry in model.tensors:
                try:
                    entry.sha256 = hashlib.sha256(self.tensors.read_bytes(entry.info)).hexdigest()
                except (TensorDataUnavailableError,) + DECODE_ERRORS as exc:
                    entry.warning = str(exc)
        model.graph_edges = graph_edges(model)
        return model

    def _contained(self, where: str, what: str, read, empty):
        """``read()``, or ``empty`` with a warning when smeared memory makes it unreadable."""
        try:
            return read()
        except DECODE_ERRORS as exc:
            self._warn(f"module {where}: {what} unreadable ({exc}); taken as empty")
            return empty

    def execution_context(self, numerics: bool = False) -> ExecutionContext:
        """Versions, packages and native libraries; with ``numerics``, also what decided the kernels
        and threads (``readers/torch/numerics.py``: environment, thread count, CPU capability; read
        once per process, it scans for the threads' TCBs)."""
        packages = {}
        for name in sorted(self.module_addrs):
            if "." in name or not self._installed_package(name):
                continue
            version = self._module_version(name)
            if version:
                packages[name] = version
        native = sorted({r.path for r in self.py.memory.regions if r.path.endswith(".so") or ".so." in r.path})
        context = ExecutionContext(self.py.runtime.version, self.torch_version, packages, native)
        if numerics:
            if self._numerics is None:
                self._numerics = read_numerics(self.py)
            context.numerics = self._numerics
        return context


def graph_edges(model: RecoveredModel) -> List[Tuple[str, str, str]]:
    """G: nodes are modules (by path).  ("contains", parent, child) for every registered child, and
    ("next", a, b) between consecutive leaf modules in registration order — the order in which
    ``forward`` of sequential containers runs them.  Memory does not record the data flow of custom
    ``forward`` methods, so "next" edges are registration order, not a traced execution."""
    edges = []
    for node in model.modules:
        for child in node.children:
            edges.append(("contains", node.path, f"{node.path}.{child}" if node.path else child))
    leaves = [n.path for n in model.modules if not n.children]
    edges += [("next", a, b) for a, b in zip(leaves, leaves[1:])]
    return edges
