"""The live object graph of a model, read from memory, in a form another process can rebuild.

``model.json`` describes a model for people and for attribution (tree, hyper-parameters, tensors).
Rebuilding the object (a torch model, or a plain-Python one) needs more: every attribute of every module instance (tensors that are not
parameters or buffers, configuration objects, references to functions and classes, ``training``), the
identity of shared objects (tied weights), and, for code the base environment lacks, the namespaces
of its classes and the module globals its functions read.  ``StateReader`` encodes all of that as
tagged JSON (docs/reuse.md, "objects.json"); ``volatility3_zen.reuse`` decodes it.  Tensors and other
torch values come from an extension (``torch/state.py``), so this module knows nothing of torch.

Objects with an identity (class instances and tensors) are entries of one table, referred to by id,
so a module reachable twice or a tensor tied between two layers is one object after the rebuild.
Containers are inline.  A value that cannot be described (a C function, a bound method, a numpy
array) becomes ``{"t": "unsupported"}`` and a warning with its path: the rebuild leaves the
attribute out and says so.

The walk is bounded whatever the graph (docs/patchgen.md, "Budgets"): objects with an identity are
described once (a seen-set), a container that contains itself (a list holding itself, a dict holding a
list holding that dict) is a cycle that inline JSON cannot hold and becomes ``{"t": "unsupported",
"type": "cycle"}`` with a warning, and one ``WalkBudget`` counts every object visited and every byte of
str/bytes decoded: past it, what is left becomes ``{"t": "unsupported", "type": "budget"}`` and one
warning says where the walk stopped (a partial state, never a hang).
"""

from typing import Dict, Iterable, List, Optional, Set, Tuple

from ...representation.program import encode_const
from .objects import DECODE_ERRORS
from .recover import PythonProcess

OBJECTS_SCHEMA_VERSION = 1
_MAX_DEPTH = 48
_SCALARS = ("str", "bytes", "int", "bool", "float", "complex", "NoneType", "ellipsis")
_CONTAINERS = ("list", "tuple", "set", "frozenset", "dict")
# The budget of one object-state walk (one bundle): about 30 times the largest real model's state
# (a module is some 30 objects: its __dict__, hook tables, hyper-parameters).
STATE_MAX_OBJECTS = 1_000_000
STATE_MAX_BYTES = 256 << 20


class WalkBudget:
    """The overall limit of one walk over the object graph: objects visited and bytes of values decoded.

    A depth limit alone does not bound a walk: a list that contains itself twice, 48 levels deep, is
    2**48 visits.  ``visit`` and ``read`` count; the first call past either limit records where the walk
    stopped (``exceeded``, the text of the one warning) and every call after it answers False at once,
    so the caller leaves the rest out and the result is partial."""

    def __init__(self, what: str, max_objects: int, max_bytes: int, unit: str = "objects"):
        self.what = what
        self.unit = unit  # what ``visit`` counts, for the warning
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.objects = 0
        self.bytes = 0
        self.exceeded: Optional[str] = None

    def visit(self, where: str, count: int = 1) -> bool:
        """Counts ``count`` objects; False once the budget is spent (the object is not to be walked)."""
        if self.exceeded is not None:
            return False
        self.objects += count
        if self.objects > self.max_objects:
            self.stop(where, f"{self.max_objects:,} {self.unit}")
            return False
        return True

    def read(self, where: str, nbytes: int) -> bool:
        """Counts ``nbytes`` decoded; False once the budget is spent."""
        if self.exceeded is not None:
            return False
        self.bytes += nbytes
        if self.bytes > self.max_bytes:
            self.stop(where, f"{self.max_bytes:,} bytes of values")
            return False
        return True

    @property
    def spent(self) -> bool:
        return self.exceeded is not None

    def stop(self, where: str, limit: str) -> None:
        self.exceeded = (f"{self.what}: the walk stopped at its budget of {limit} (at {where or '(root)'}); "
                         f"what it had not reached is left out (a partial result)")


class StateReader:
    """Encodes objects of one CPython process.  ``extension`` describes what plain CPython cannot (torch
    tensors, dtypes: ``torch.state.TorchValues``): its ``value(reader, obj, type_addr, path, depth)``
    returns an encoded value, or None to leave the object to the generic encoding."""

    def __init__(self, python: PythonProcess, extension=None, local_modules: Iterable[str] = (),
                 budget: Optional[WalkBudget] = None):
        self.py = python
        self.o = python.objects
        self.extension = extension
        self.objects: Dict[str, dict] = {}  # id -> entry
        self._ids: Dict[int, str] = {}  # address -> id
        self.classes_seen: Dict[Tuple[str, str], int] = {}  # (module, qualname) -> address of heap classes met
        self.functions_seen: Dict[int, Tuple[str, str]] = {}  # function address -> (module, qualname)
        self.warnings: List[str] = []
        self._modules: Optional[Dict[str, int]] = None
        self._module_names: Optional[Dict[int, str]] = None
        self._mro_cache: Dict[int, List[str]] = {}
        self._dict_modules: Optional[Dict[int, str]] = None
        # Globals dicts of modules sys.modules does not hold (code exec'd into a module object nobody
        # registered, runpy's <run_path>): found through the functions that use them, by module name.
        self._unlisted_globals: Dict[str, int] = {}
        self.local_modules: Set[str] = set(local_modules)  # modules the base lacks: their functions are described in full
        self._inline_functions: Set[int] = set()  # and these (added to a module the base has)
        self.budget = budget or WalkBudget("object state", STATE_MAX_OBJECTS, STATE_MAX_BYTES)
        self._open_containers: Set[int] = set()  # the containers being encoded: the path from the root
        self._cycles: Set[int] = set()  # containers found inside themselves (warned once each)
        self._budget_warned = False

    # -- names ---------------------------------------------------------------------------------------
    def modules(self) -> Dict[str, int]:
        """sys.modules of the process (name -> module address), read once."""
        if self._modules is None:
            self._modules = self.py.heap.modules()
        return self._modules

    def module_names(self) -> Dict[int, str]:
        if self._module_names is None:
            self._module_names = {addr: name for name, addr in self.modules().items()}
        return self._module_names

    def class_ref(self, type_addr: int) -> dict:
        """{"t": "class", "module", "qualname"} of a type object (heap or static)."""
        o = self.o
        if o.kind_of_type(type_addr) == "heap":
            info = self.py.read_class(type_addr)
            module, qualname = info.module or "builtins", info.qualname
            self.classes_seen.setdefault((module, qualname), type_addr)
        else:
            name = o.type_name(type_addr) or "?"
            module, _, qualname = name.rpartition(".")
            module = module or "builtins"
        return {"t": "class", "module": module, "qualname": qualname}

    def mro_names(self, type_addr: int) -> List[str]:
        names = self._mro_cache.get(type_addr)
        if names is None:
            names = []
            mro = self.o.u64(type_addr + self.o.off_tp_mro)
            for cls in (self.o.tuple_items(mro) if mro else (type_addr,)):
                ref = self.class_ref(cls)
                names.append(f"{ref['module']}.{ref['qualname']}")
            self._mro_cache[type_addr] = names
        return names

    # -- values --------------------------------------------------------------------------------------
    def encode(self, obj: int, path: str, depth: int = 0) -> dict:
        if not self.budget.visit(path):
            return self._over_budget()
        try:
            return self._encode(obj, path, depth)
        except DECODE_ERRORS + (UnicodeDecodeError,) as exc:
            self.warnings.append(f"{path}: unreadable ({exc})")
            return {"t": "unsupported", "type": "unreadable", "reason": str(exc)}

    def _over_budget(self) -> dict:
        if not self._budget_warned:
            self._budget_warned = True
            self.warnings.append(self.budget.exceeded)
        return {"t": "unsupported", "type": "budget"}

    def _encode(self, obj: int, path: str, depth: int) -> dict:
        o = self.o
        if depth > _MAX_DEPTH:
            self.warnings.append(f"{path}: nested too deeply")
            return {"t": "unsupported", "type": "too deep"}
        type_addr = o.type_of(obj)
        kind = o.kind_of_type(type_addr)
        if kind in _SCALARS:
            value = o.read_const(obj)
            if isinstance(value, (str, bytes)) and not self.budget.read(path, len(value)):
                return self._over_budget()
            return encode_const(value)
        if obj in self._open_containers:
            # A container met again inside itself: inline JSON cannot hold the cycle (one warning each).
            if obj not in self._cycles:
                self._cycles.add(obj)
                self.warnings.append(f"{path}: a {o.base_kind(obj)} met again inside itself (a cycle of containers);"
                                     f" the rebuild leaves this reference out")
            return {"t": "unsupported", "type": "cycle"}
        if kind in _CONTAINERS or (kind in ("heap", "other") and o.base_kind(obj) in ("dict", "list", "tuple")):
            self._open_containers.add(obj)
            try:
                return self._encode_object(obj, type_addr, kind, path, depth)
            finally:
                self._open_containers.discard(obj)
        return self._encode_object(obj, type_addr, kind, path, depth)

    def _encode_object(self, obj: int, type_addr: int, kind: str, path: str, depth: int) -> dict:
        o = self.o
        if kind in ("list", "tuple", "set", "frozenset"):
            items = o.list_items(obj) if kind == "list" else o.tuple_items(obj) if kind == "tuple" else o.set_items(obj)
            return {"t": kind, "v": [self.encode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(items)]}
        if kind == "dict":
            return {"t": "dict", "v": self._items(obj, path, depth)}
        if kind == "type":
            return self.class_ref(obj) if self.py.heap.is_type_object(type_addr) else self._unsupported(type_addr, path)
        if kind == "function":
            return self._function_ref(obj, path, depth)
        if kind == "method":  # a bound method: its function and the object it is bound to
            layout = self.py.layout
            func = o.u64(obj + layout.offset("PyMethodObject", "im_func"))
            bound = o.u64(obj + layout.offset("PyMethodObject", "im_self"))
            return {"t": "method", "function": self.encode(func, f"{path}.__func__", depth + 1),
                    "self": self.encode(bound, f"{path}.__self__", depth + 1)}
        if kind == "module":
            return {"t": "pymodule", "v": self.module_names().get(obj) or self._module_name(obj)}
        if kind == "heap" and self.py.heap.is_type_object(type_addr):
            return self.class_ref(obj)  # a class whose metaclass is a heap type (ABCMeta subclasses, enums)
        if self.extension is not None:
            extended = self.extension.value(self, obj, type_addr, path, depth)
            if extended is not None:
                return extended
        base = o.base_kind(obj)
        mro = self.mro_names(type_addr)
        if "functools.partial" in mro:
            return self._partial(obj, type_addr, path, depth)
        if "enum.Enum" in mro:
            attrs = self.py.heap.instance_dict(obj)
            member = o.read_str(attrs["_name_"]) if "_name_" in attrs else None
            return {"t": "enum", "class": self.class_ref(type_addr), "name": member}
        if base in ("dict", "list", "tuple") and kind in ("heap", "other"):
            # OrderedDict (nn.Module's tables), namedtuples, dict subclasses: contents + their class.
            if base == "dict":
                return {"t": "dict", "v": self._items(obj, path, depth), "class": self.class_ref(type_addr)}
            items = o.list_items(obj) if base == "list" else o.tuple_items(obj)
            return {"t": base, "v": [self.encode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(items)],
                    "class": self.class_ref(type_addr)}
        if kind == "heap":
            return self.identity(obj, path, depth, self._object_entry)
        return self._unsupported(type_addr, path)

    def _partial(self, obj: int, type_addr: int, path: str, depth: int) -> dict:
        """functools.partial(func, *args, **keywords), e.g. an activation stored on a layer.  The C struct
        (Modules/_functoolsmodule.c) begins fn, args, kw right after the object header in every
        version 3.7-3.13; the ISF tables do not describe it."""
        head = self.py.layout.size("PyObject")
        func, args, keywords = (self.o.u64(obj + head + 8 * k) for k in range(3))
        entry = {"t": "partial", "func": self.encode(func, f"{path}.func", depth + 1),
                 "args": self.encode(args, f"{path}.args", depth + 1),
                 "keywords": self.encode(keywords, f"{path}.keywords", depth + 1) if keywords else {"t": "dict", "v": []}}
        ref = self.class_ref(type_addr)
        if (ref["module"], ref["qualname"]) != ("functools", "partial"):
            entry["class"] = ref
        return entry

    def _items(self, obj: int, path: str, depth: int) -> List[list]:
        out = []
        for k, v in self.o.dict_items(obj):
            key = self.encode(k, f"{path}<key>", depth + 1)
            label = key.get("v") if key.get("t") == "str" else "?"
            out.append([key, self.encode(v, f"{path}.{label}", depth + 1)])
        return out

    def _unsupported(self, type_addr: int, path: str) -> dict:
        name = self.o.type_name(type_addr) or "?"
        self.warnings.append(f"{path}: a {name} object cannot be described; the rebuild leaves it out")
        return {"t": "unsupported", "type": name}

    def _module_name(self, module_obj: int) -> str:
        namespace = self.o.module_namespace(module_obj)
        return self.o.read_str(namespace["__name__"]) if "__name__" in namespace else "?"

    def _function_ref(self, obj: int, path: str, depth: int) -> dict:
        func = self.py.read_function(obj)
        self.functions_seen[obj] = (func.module or "", func.qualname)
        if ("<locals>" in func.qualname or "<lambda>" in func.qualname or not func.module
                or ("." not in func.qualname and func.module in self.local_modules) or obj in self._inline_functions
                or self.named(func.module, func.qualname) != obj):
            # Made by a call (a decorator's wrapper, a dataclass method), hidden behind a wrapper that
            # took its name, or living in a module the base environment lacks: no name to look it up
            # by there, so the function itself is described and its code shipped.
            return self.identity(obj, path, depth, lambda a, p, d: {"kind": "function", "path": p,
                                                                      **self.function_entry(a, "function", depth=d)})
        return {"t": "function", "module": func.module, "qualname": func.qualname}

    def describe_in_full(self, func_addr: int) -> None:
        """Describe this function itself (defaults, closure, code) wherever it is met, not by its name:
        a function the derivative added to a module the base environment also has."""
        self._inline_functions.add(func_addr)

    def classes_met(self, modules: Set[str]) -> List[int]:
        """Addresses of the heap classes met so far that live in the given modules."""
        return [addr for (module, _), addr in sorted(self.classes_seen.items()) if module in modules]

    def named(self, module: str, qualname: str) -> Optional[int]:
        """The address of what module.qualname names in this process (None if nothing)."""
        o = self.o
        addr = self.modules().get(module)
        if not addr:
            return None
        try:
            target = addr
            namespace = o.module_namespace(addr)
            for part in qualname.split("."):
                target = namespace.get(part)
                if not target:
                    return None
                if self.py.heap.is_type_object(o.type_of(target)):
                    namespace = o.type_namespace(target)
                else:
                    namespace = {}
            return target
        except DECODE_ERRORS:
            return None

    # -- objects with an identity ----------------------------------------------------------------------
    def identity(self, obj: int, path: str, depth: int, make) -> dict:
        known = self._ids.get(obj)
        if known is None:
            known = self._ids[obj] = f"o{len(self._ids)}"
            self.objects[known] = {}  # reserved before its contents: cycles refer back to it
            self.objects[known] = make(obj, path, depth)
        return {"t": "ref", "v": known}

    def _object_entry(self, obj: int, path: str, depth: int) -> dict:
        type_addr = self.o.type_of(obj)
        entry = {"kind": "object", "class": self.class_ref(type_addr), "path": path}
        try:
            attrs = self.py.heap.instance_dict(obj)
        except DECODE_ERRORS as exc:
            self.warnings.append(f"{path}: instance attributes unreadable ({exc})")
            attrs = {}
        entry["dict"] = {name: self.encode(value, f"{path}.{name}" if path else name, depth + 1)
                         for name, value in attrs.items()}
        return entry

    # -- functions and classes for code the base lacks ------------------------------------------------
    def function_entry(self, func_addr: int, wrapper: str, class_addr: int = 0, depth: int = 0) -> dict:
        """A function object's parts that the code object lacks: defaults, closure, globals' module.
        ``depth``: how deep in the object state the function was met (a chain of functions whose
        defaults or closures hold the next one is nested like any other value)."""
        o = self.o
        func = self.py.read_function(func_addr)
        raw = self.py.function_pointers(func_addr)
        label = f"{func.module}.{func.qualname}"
        globals_module = self._globals_module(func.module, raw["func_globals"])
        if globals_module is None and func.module and raw["func_globals"]:
            self._unlisted_globals.setdefault(func.module, raw["func_globals"])
            globals_module = func.module
        entry = {"wrapper": wrapper, "name": func.name, "qualname": func.qualname, "module": func.module,
                 "code": raw["func_code"], "globals": globals_module,
                 "defaults": None, "kwdefaults": None, "closure": None}
        if raw["func_defaults"]:
            entry["defaults"] = self.encode(raw["func_defaults"], f"{label}.__defaults__", depth + 1)
        if raw["func_kwdefaults"]:
            entry["kwdefaults"] = self.encode(raw["func_kwdefaults"], f"{label}.__kwdefaults__", depth + 1)
        if raw["func_closure"]:
            cells = []
            for i, cell in enumerate(o.tuple_items(raw["func_closure"])):
                content = o.u64(cell + o.off_cell_ref)
                if not content:
                    cells.append({"t": "empty_cell"})
                elif content == class_addr:
                    cells.append({"t": "class_cell"})  # super()'s __class__: the rebuilt class itself
                else:
                    cells.append(self.encode(content, f"{label}.__closure__[{i}]", depth + 1))
            entry["closure"] = cells
        return entry

    def _globals_module(self, module: Optional[str], dict_addr: int) -> Optional[str]:
        """The name of the module whose dict a function's globals are: its own ``__module__`` where that
        module's dict is the one (sys.modules can hold one module under two names: multiprocessing
        lists the script as ``__mp_main__`` too), else any module with that dict."""
        own = self.modules().get(module) if module else None
        if own:
            try:
                if self.o.u64(own + self.o.off_md_dict) == dict_addr:
                    return module
            except DECODE_ERRORS:
                pass
        return self.module_of_dict(dict_addr)

    def module_of_dict(self, dict_addr: int) -> Optional[str]:
        if self._dict_modules is None:
            self._dict_modules = {}
            for module_obj, name in self.module_names().items():
                try:
                    self._dict_modules.setdefault(self.o.u64(module_obj + self.o.off_md_dict), name)
                except DECODE_ERRORS:
                    continue
        return self._dict_modules.get(dict_addr)

    def class_entry(self, class_addr: int) -> dict:
        """Everything ``type(name, bases, namespace)`` needs: bases, methods (as function entries),
        data attributes.  Dunder attributes other than methods are left to ``type`` to make."""
        o = self.o
        info = self.py.read_class(class_addr)
        entry = {"name": info.name, "qualname": info.qualname, "module": info.module,
                 "bases": [self.class_ref(b) for b in info.bases], "methods": {}, "attributes": {},
                 "metaclass": self.class_ref(o.type_of(class_addr))}
        namespace = o.type_namespace(class_addr)
        for name, value in namespace.items():
            kind = o.base_kind(value)
            func = self.py.method_function(value)
            if func and kind in ("function", "staticmethod", "classmethod", "property"):
                entry["methods"][name] = self.function_entry(func, kind, class_addr)
                if kind == "property":
                    self._property_setters(value, entry["methods"][name], class_addr)
            elif name.startswith("__") and name.endswith("__"):
                continue
            else:
                entry["attributes"][name] = self.encode(value, f"{info.module}.{info.qualname}.{name}")
        return entry

    def _property_setters(self, prop: int, method: dict, class_addr: int) -> None:
        layout = self.py.layout
        for slot, member in (("fset", "prop_set"), ("fdel", "prop_del")):
            func = self.o.u64(prop + layout.offset("propertyobject", member))
            if func and self.o.kind(func) == "function":
                method[slot] = self.function_entry(func, "function", class_addr)

    def module_globals(self, module: str, names: Iterable[str]) -> Dict[str, dict]:
        addr = self.modules().get(module)
        if addr:
            namespace = self.o.module_namespace(addr)
        elif module in self._unlisted_globals:
            namespace = self.o.str_dict(self._unlisted_globals[module])
        else:
            return {}
        return {name: self.encode(namespace[name], f"{module}.{name}") for name in sorted(set(names)) if name in namespace}
