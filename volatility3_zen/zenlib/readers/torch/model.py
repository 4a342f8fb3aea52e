"""Recovering PyTorch models (nn.Module trees, hyper-parameters, tensors) from a CPython process.

A module is any live object whose class has torch's ``torch.nn.modules.module.Module`` in its MRO (no
list of known class names).  A root is a module that no other module lists among its children.
The tree follows each module's ``_modules`` dict, which keeps registration order, exactly as
``named_modules()`` walks it; tensors come from ``_parameters`` / ``_buffers`` as
``named_parameters`` / ``named_buffers`` (``remove_duplicate=False``) list them.

Each model's walk is bounded whatever the graph (docs/model.md, "Budgets"): a module met again on its
own path is a cycle and is not entered; a module met again elsewhere (a shared submodule) is read once
and only its names are walked again; a hyper-parameter that contains itself is not a simple value and
a container shared inside the values is read once.  ``WalkBudget``s count what is left: module visits
and tensor entries (the tree), those made under a module met before (a shared submodule's other names:
a module shared at every level of a deep tree has exponentially many), and the objects and str/bytes
bytes of the hyper-parameter values.  Past one the walk stops with one warning (past the second, only
the re-walks stop) and the model is partial, never a hang.
"""

import hashlib
from typing import Dict, Iterator, List, Optional, Set, Tuple

from ...errors import CorruptObjectError, NoPythonError, UnsupportedVersionError
from ...representation.model import ExecutionContext, Numerics, RecoveredModel, ModuleNode, TensorEntry, encode_value
from ..cpython.frames import FrameReader
from ..cpython.objects import DECODE_ERRORS
from ..cpython.recover import PythonProcess
from ..cpython.state import WalkBudget
from .numerics import read_numerics
from .tensors import TensorDataUnavailableError, TensorReader
from .validate import SAMPLE_SIZE, choose_layout

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
# The largest real trees have tens of thousands of modules and tensors (one nn.Linear per expert of a
# mixture of experts) and a few thousand hyper-parameter values (docs/model.md, "Budgets").
MAX_MODULE_DEPTH = 200
MAX_MODULE_VISITS = 200_000  # the tree's budget: module visits and tensor entries (a shared module counts each time)
MAX_REPEATED_VISITS = 20_000  # of those, made under a module met before (a shared submodule's other names)
VALUE_MAX_OBJECTS = 1_000_000  # the hyper-parameters' budget: objects of the values of all the model's modules
VALUE_MAX_BYTES = 64 << 20  # and bytes of their str/bytes values
MAX_VALUE_DEPTH = 16
MAX_CYCLE_CANDIDATES = 1_000  # modules outside every root's tree examined as the root of a cycle


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
        self.module_class = self._module_class()
        self._is_module_type: Dict[int, bool] = {}
        # The release's own layout table, or the nearest one once it reads the process's tensors (validate.py).
        self.table = choose_layout(python.memory, self.torch_version, self._tensor_sample)
        self.tensors = TensorReader(python.memory, self.table.layout)
        self._numerics: Optional[Numerics] = None

    def _tensor_sample(self) -> List[int]:
        """Parameters and buffers of the modules on the GC lists: what a borrowed table is validated on."""
        found: List[int] = []
        for obj, type_addr in self.heap.gc_objects():
            if len(found) >= SAMPLE_SIZE:
                break
            if self.is_module_type(type_addr):
                try:
                    attrs = self.heap.instance_dict(obj)
                    found += [t for name in ("_parameters", "_buffers") for _, t in self.tensor_dict(attrs, name)]
                except DECODE_ERRORS:
                    continue
        return found

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
        """Every nn.Module on the GC lists, then those the running frames hold (a serving function's
        ``model``, docs/model.md) and, when smeared memory broke the lists, those that module globals
        hold (a script's ``model = ...``): the pieces of broken lists may have lost them.  On an intact
        heap the other paths find nothing new, every module being on the lists."""
        found = [obj for obj, type_addr in self.heap.gc_objects() if self.is_module_type(type_addr)]
        known = set(found)

        def take(values) -> int:
            new = [v for v in values if v not in known and self._is_module_instance(v)]
            found.extend(new)
            known.update(new)
            return len(new)

        frames = FrameReader(self.heap)
        through = {"the frames of live threads": take(frames.reachable())}
        for problem in frames.warnings:
            self._warn(problem)
        if self.heap.lists_broken:
            through["module globals"] = 0
            for module in self.module_addrs.values():
                try:
                    through["module globals"] += take(list(self.o.module_namespace(module).values()))
                except DECODE_ERRORS:
                    continue
        for path, count in through.items():
            if count:
                self._warn(f"{count} nn.Module object(s) not on the GC lists found through {path}")
        return found

    def _is_module_instance(self, obj: int) -> bool:
        try:
            return self.is_module_type(self.o.type_of(obj))
        except DECODE_ERRORS:
            return False

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

    def hyperparameters(self, attrs: Dict[str, int], walk: Optional["_ValueWalk"] = None,
                        where: str = "") -> Dict[str, dict]:
        walk = walk or _ValueWalk(WalkBudget("hyper-parameters", VALUE_MAX_OBJECTS, VALUE_MAX_BYTES))
        out = {}
        for name, value in attrs.items():
            if name.startswith("_") or name in _INTERNAL:
                continue
            decoded = self.value(value, walk=walk, where=f"{where}.{name}" if where else name)
            if decoded is not None:
                out[name] = decoded
        return out

    def value(self, obj: int, depth: int = 0, walk: Optional["_ValueWalk"] = None, where: str = "") -> Optional[dict]:
        """Encoded simple value (None when it is not built from simple values: a container that contains
        itself is not; nor is one nested deeper than ``MAX_VALUE_DEPTH``, nor one the walk's budget
        cannot pay for).  A container shared inside the value is read once (``walk.done``)."""
        walk = walk or _ValueWalk(WalkBudget("a value", VALUE_MAX_OBJECTS, VALUE_MAX_BYTES))
        return self._value(obj, depth, walk, where)[0]

    def _value(self, obj: int, depth: int, walk: "_ValueWalk", where: str) -> Tuple[Optional[dict], int]:
        """(encoded value or None, the number of objects it holds)."""
        o = self.o
        if depth > MAX_VALUE_DEPTH or obj in walk.open:
            return None, 0
        known = walk.done.get(obj)
        if known is not None and known[2] >= depth:  # read before, at this depth or deeper: it fits here too
            return (known[0], known[1]) if walk.budget.visit(where, known[1]) else (None, 0)
        if not walk.budget.visit(where):
            return None, 0
        try:
            kind = o.base_kind(obj)
            if kind in ("list", "tuple", "dict"):
                walk.open.add(obj)
                try:
                    encoded, size = self._container(obj, kind, depth, walk, where)
                finally:
                    walk.open.discard(obj)
                if encoded is not None:
                    walk.done[obj] = (encoded, size, depth)
                return encoded, size
            if kind in ("str", "bytes", "int", "bool", "float", "complex", "NoneType") and o.kind(obj) == kind:
                constant = o.read_const(obj)
                if isinstance(constant, (str, bytes)) and not walk.budget.read(where, len(constant)):
                    return None, 0
                return encode_value(constant), 1
            type_name = o.type_name(o.type_of(obj))
            if type_name == "torch.dtype":
                return {"t": "dtype", "v": self.dtype_name(obj)}, 1
            if type_name == "torch.device":
                return {"t": "device", "v": self.device_name(obj)}, 1
        except DECODE_ERRORS + (UnicodeDecodeError,):
            return None, 0
        return None, 0

    def _container(self, obj: int, kind: str, depth: int, walk: "_ValueWalk", where: str) -> Tuple[Optional[dict], int]:
        """A list, tuple or str-keyed dict of simple values; None at the first item that is not one."""
        o = self.o
        size = 1
        if kind == "dict":
            items = []
            for k, v in o.dict_items(obj):
                if o.kind(k) != "str":
                    return None, 0
                encoded, n = self._value(v, depth + 1, walk, where)
                if encoded is None:
                    return None, 0
                items.append([o.read_str(k), encoded])
                size += n
            return {"t": "dict", "v": items}, size
        items = []
        for item in (o.list_items(obj) if kind == "list" else o.tuple_items(obj)):
            encoded, n = self._value(item, depth + 1, walk, where)
            if encoded is None:
                return None, 0
            items.append(encoded)
            size += n
        return {"t": kind, "v": items}, size

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
        children_of: Dict[int, List[int]] = {}
        child_of: Set[int] = set()
        for obj in instances:
            try:
                attrs = self.heap.instance_dict(obj)
            except DECODE_ERRORS as exc:
                self._warn(f"module at 0x{obj:x}: attributes unreadable ({exc})")
                continue
            attrs_of[obj] = attrs
            try:
                children_of[obj] = [addr for _, addr in self.children(attrs)]
                child_of.update(children_of[obj])
            except DECODE_ERRORS:
                pass
        roots = set(addresses) if addresses else {r for r in instances if r not in child_of}
        if not addresses:
            roots |= self._cycle_roots([m for m in instances if m in attrs_of], children_of, roots)
        for root in instances:
            if root in attrs_of and root in roots:
                try:
                    yield self.model(root, attrs_of, read_bytes)
                except DECODE_ERRORS as exc:
                    self._warn(f"model at 0x{root:x}: root module unreadable ({exc}); left out")

    def _cycle_roots(self, modules: List[int], children_of: Dict[int, List[int]], roots: Set[int]) -> Set[int]:
        """Roots for the modules that no root reaches because they are their own ancestors (a module
        registered as its own child, or a child that registered its parent: ``self.owner = parent``).
        Each such group gets one root: its first module on the GC lists (allocation order: the outer
        module) among those that reach every parent they have; the walk then meets the cycle and says so."""
        def reach(start: int) -> Set[int]:
            seen, pending = {start}, [start]
            while pending:
                for child in children_of.get(pending.pop(), ()):
                    if child not in seen:
                        seen.add(child)
                        pending.append(child)
            return seen

        reached: Set[int] = set()
        for root in roots:
            reached |= reach(root)
        orphans = [m for m in modules if m not in reached]
        if not orphans:
            return set()
        parents: Dict[int, Set[int]] = {}
        for parent, children in children_of.items():
            for child in children:
                parents.setdefault(child, set()).add(parent)
        found: Set[int] = set()
        for module in orphans[:MAX_CYCLE_CANDIDATES]:
            if module in reached:
                continue
            below = reach(module)
            if parents.get(module, set()) <= below:
                found.add(module)
                reached |= below
                self._warn(f"module at 0x{module:x} is its own ancestor and no root holds it (a cycle of "
                           f"_modules): taken as a root")
        return found

    def _warn(self, text: str) -> None:
        self.py.objects.warnings.append(text)

    def model(self, root: int, attrs_of: Dict[int, Dict[str, int]], read_bytes: bool = True) -> RecoveredModel:
        """The model rooted at ``root``.  What smeared memory made unreadable is left out with a warning,
        at the smallest unit that owns it: a tensor, a tensor table, a module with its submodules.  What
        the walk's budget did not reach is left out with one warning (module docstring)."""
        module, qualname = self.class_path(root)
        model = RecoveredModel(root_address=root, root_class=f"{module}.{qualname}")
        tree = WalkBudget(f"model at 0x{root:x}: module tree", MAX_MODULE_VISITS, 0, "module visits and tensor entries")
        again = WalkBudget(f"model at 0x{root:x}: shared submodules", MAX_REPEATED_VISITS, 0,
                           "module visits and tensor entries under modules met before")
        values = _ValueWalk(WalkBudget(f"model at 0x{root:x}: hyper-parameters", VALUE_MAX_OBJECTS, VALUE_MAX_BYTES))
        read: Dict[int, Optional[_ModuleRead]] = {}  # module address -> what was read of it (None: unreadable)
        tensor_infos: Dict[int, object] = {}  # tensor address -> TensorInfo, or the exception reading it gave
        on_path: Set[int] = set()
        storage_owner: Dict[int, str] = {}

        def read_module(prefix: str, obj: int, depth: int) -> Optional[_ModuleRead]:
            where = prefix or "(root)"
            try:
                attrs = attrs_of.get(obj)
                if attrs is None:
                    attrs = attrs_of[obj] = self.heap.instance_dict(obj)
                mod, qual = self.class_path(obj)
                children = self.children(attrs)
            except DECODE_ERRORS as exc:
                self._warn(f"model at 0x{root:x}: module {where} at 0x{obj:x} unreadable ({exc}); left out with its submodules")
                return None
            model.modules.append(ModuleNode(prefix, obj, mod, qual, depth, [n for n, _ in children],
                                            self.hyperparameters(attrs, values, where),
                                            self._contained(where, "hooks", lambda: self.hooks(attrs), [])))
            nonpersistent = self._contained(where, "_non_persistent_buffers_set", lambda: self.non_persistent(attrs), set())
            tensors = []
            for kind, table in (("parameter", "_parameters"), ("buffer", "_buffers")):
                for name, tensor in self._contained(where, table, lambda: self.tensor_dict(attrs, table), []):
                    tensors.append((kind, name, tensor, kind == "parameter" or name not in nonpersistent))
            return _ModuleRead(children, tensors)

        def visit(prefix: str, obj: int, depth: int, repeated: bool = False) -> None:
            """``repeated``: under a module met before, whose other names only are walked here."""
            where = prefix or "(root)"
            if obj in on_path:
                self._warn(f"model at 0x{root:x}: module {where} at 0x{obj:x} not walked: it is its own ancestor "
                           f"(a cycle of _modules)")
                model.unreadable.append(f"module {where}")
                return
            if depth > MAX_MODULE_DEPTH:
                self._warn(f"model at 0x{root:x}: module {where} at 0x{obj:x} not walked (nesting beyond any real "
                           f"model: smeared pointers)")
                model.unreadable.append(f"module {where}")
                return
            repeated = repeated or obj in read
            if not tree.visit(where) or (repeated and not again.visit(where)):
                return
            if obj not in read:  # a module reachable twice is read once; its names are walked each time
                read[obj] = read_module(prefix, obj, depth)
            known = read[obj]
            if known is None:
                model.unreadable.append(f"module {where}")
                return
            for kind, name, tensor, persistent in known.tensors:
                full = f"{prefix}.{name}" if prefix else name
                if not tree.visit(full) or (repeated and not again.visit(full)):
                    return
                info = tensor_infos.get(tensor)
                if info is None:
                    try:
                        info = self.tensors.read_tensor(tensor)
                    except DECODE_ERRORS as exc:
                        info = exc
                    tensor_infos[tensor] = info
                if isinstance(info, Exception):
                    self._warn(f"model at 0x{root:x}: tensor {full} at 0x{tensor:x} unreadable ({info}); left out")
                    model.unreadable.append(f"tensor {full}")
                    continue
                entry = TensorEntry(full, kind, persistent, info)
                if info.storage_address:
                    entry.shares_storage_with = storage_owner.setdefault(info.storage_address, full)
                    if entry.shares_storage_with == full:
                        entry.shares_storage_with = None
                model.tensors.append(entry)
            on_path.add(obj)
            for name, child in known.children:
                visit(f"{prefix}.{name}" if prefix else name, child, depth + 1, repeated)
            on_path.discard(obj)

        visit("", root, 0)
        if tree.exceeded is not None:
            self._warn(tree.exceeded)
            model.unreadable.append("modules and tensors beyond the walk's budget")
        if again.exceeded is not None:  # the modules themselves were all walked: only names are missing
            self._warn(again.exceeded + ": their tensors keep their first names only")
            model.unreadable.append("names of shared submodules beyond the walk's budget")
        if values.budget.exceeded is not None:
            self._warn(values.budget.exceeded + ": those hyper-parameters are left out")
        # named_modules() drops repeated modules, named_parameters(remove_duplicate=False) does not:
        # tensors were collected on the full walk above, module nodes once each.
        if read_bytes:
            digests: Dict[int, object] = {}  # tensor address -> sha256, or the warning reading it gave
            for entry in model.tensors:
                digest = digests.get(entry.info.address)
                if digest is None:
                    try:
                        digest = hashlib.sha256(self.tensors.read_bytes(entry.info)).hexdigest()
                    except (TensorDataUnavailableError,) + DECODE_ERRORS as exc:
                        digest = exc
                    digests[entry.info.address] = digest
                if isinstance(digest, Exception):
                    entry.warning = str(digest)
                else:
                    entry.sha256 = digest
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


class _ValueWalk:
    """One walk's state over hyper-parameter values: its budget, the containers open on the current
    path (a container met again inside itself is a cycle) and those already encoded (address ->
    (encoded, objects it holds, depth it was read at))."""

    def __init__(self, budget: WalkBudget):
        self.budget = budget
        self.open: Set[int] = set()
        self.done: Dict[int, Tuple[dict, int, int]] = {}


class _ModuleRead:
    """What the walk read of one module: its children and its tensor tables (kind, name, address,
    persistent), read once however many times the module is reached."""

    __slots__ = ("children", "tensors")

    def __init__(self, children: List[Tuple[str, int]], tensors: List[Tuple[str, str, int, bool]]):
        self.children = children
        self.tensors = tensors


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
