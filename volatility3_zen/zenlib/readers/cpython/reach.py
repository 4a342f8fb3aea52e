"""The code that implements a set of classes: their methods and everything those reach, read on demand.

The program representation of a model is not the whole process (tens of thousands of functions) but
the code its layer classes run.  Starting from those classes, the walk reads each class's methods,
their code objects and nested code, and follows every name a code object uses (``co_names``) through
its function's globals -- and through the modules those globals hold, for ``common.C3`` -- to further
functions and classes, recursively.

The walk enters two kinds of code:

- the *model packages*: the top-level packages that define the starting classes and their bases
  (plus any the caller adds), e.g. ``timm`` for a timm model;
- *deployment code*, wherever it lives: the script run as ``__main__``, modules and packages beside
  it that are not installed (``common.py``, ``utils/blocks.py``, a ``hubconf.py`` in a cache folder),
  code exec'd into a module that ``sys.modules`` does not hold (``runpy``'s ``<run_path>``, a
  ``types.ModuleType``).  A function of such code is entered wherever the walk meets it: as a method
  a script rebound on a base class, as a global a base module was monkeypatched with.

Framework code (torch, numpy, the standard library) and installed packages other than the model's
are where the walk stops: their classes are recorded by name but not entered, which keeps the result
to the code that makes the model what it is.  Only the objects on the way are read, never the GC
lists, so the cost is proportional to the model's own code.
"""

import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from ...representation.program import ClassInfo, CodeObject, Function, nested_code
from .objects import DECODE_ERRORS
from .recover import PythonProcess

# Top-level packages never entered besides the standard library: the framework a model runs on.
FRAMEWORK_PACKAGES = frozenset({"torch", "numpy", "builtins", "_frozen_importlib", "_frozen_importlib_external"})
STDLIB_PACKAGES = frozenset(getattr(sys, "stdlib_module_names", ()))
MAX_CODE_OBJECTS = 20000  # a runaway walk (a model package that is a whole framework) stops here, with a warning


def top_package(module: Optional[str]) -> str:
    return (module or "").split(".", 1)[0]


def is_framework_module(module: Optional[str]) -> bool:
    top = top_package(module)
    if top == "__main__":  # the script: deployment code, never the framework
        return False
    return not top or top in FRAMEWORK_PACKAGES or top in STDLIB_PACKAGES or top.startswith("_")


# Where installers put packages: a module loaded from a file below one of these is installed code.
INSTALLED_DIRS = ("/site-packages/", "/dist-packages/")


def is_installed_file(path: Optional[str]) -> bool:
    return bool(path) and any(marker in path for marker in INSTALLED_DIRS)


@dataclass
class ReachedCode:
    """What the walk read: classes, functions and code objects by address, and which function owns
    which code (nested code is owned by the function whose code holds it)."""

    classes: Dict[int, ClassInfo] = field(default_factory=dict)
    framework_classes: Dict[int, ClassInfo] = field(default_factory=dict)
    functions: Dict[int, Function] = field(default_factory=dict)
    code_objects: Dict[int, CodeObject] = field(default_factory=dict)
    code_owner: Dict[int, Tuple[int, Optional[int]]] = field(default_factory=dict)  # code -> (function, parent code)
    packages: Set[str] = field(default_factory=set)
    deployment_modules: Set[str] = field(default_factory=set)  # modules of the deployment's own code met
    warnings: List[str] = field(default_factory=list)
    # "module.qualname" of functions whose own code object could not be read (smeared memory): the
    # diff must not take their absence for a removal
    unreadable_functions: Set[str] = field(default_factory=set)


class CodeReach:
    """Reads the code reachable from classes of one CPython process (see the module docstring)."""

    def __init__(self, python: PythonProcess, extra_packages: Iterable[str] = ()):
        self.py = python
        self.o = python.objects
        self.heap = python.heap
        self._f_globals = python.layout.offset("PyFunctionObject", "func_globals")
        self._dicts: Dict[int, Dict[str, int]] = {}
        self._module_of: Optional[Dict[int, str]] = None
        self._module_addr: Optional[Dict[str, int]] = None
        self._deployment: Dict[str, bool] = {}
        self.extra_packages = set(extra_packages)

    # -- helpers -----------------------------------------------------------------------------------
    def _str_dict(self, address: int) -> Dict[str, int]:
        table = self._dicts.get(address)
        if table is None:
            try:
                table = self.o.str_dict(address)
            except DECODE_ERRORS:
                table = {}
            self._dicts[address] = table
        return table

    def _module_namespace(self, module_obj: int) -> Dict[str, int]:
        try:
            return self._str_dict(self.o.u64(module_obj + self.o.off_md_dict))
        except DECODE_ERRORS:
            return {}

    def _module_names(self) -> Dict[int, str]:
        if self._module_of is None:
            try:
                self._module_addr = dict(self.heap.modules())
            except DECODE_ERRORS:
                self._module_addr = {}
            self._module_of = {addr: name for name, addr in self._module_addr.items()}
        return self._module_of

    def is_deployment_module(self, module: Optional[str]) -> bool:
        """Code of the deployment itself (module docstring): not the framework, and either the script,
        or not in sys.modules (exec'd, run by path), or loaded from a file that no installer put there."""
        if not module or is_framework_module(module):
            return False
        known = self._deployment.get(module)
        if known is None:
            self._module_names()
            address = self._module_addr.get(module)
            if top_package(module) == "__main__" or not address:
                known = True
            else:
                known = not is_installed_file(self._module_file(address))
            self._deployment[module] = known
        return known

    def _module_file(self, module_obj: int) -> Optional[str]:
        file_obj = self._module_namespace(module_obj).get("__file__")
        try:
            if file_obj and self.o.kind(file_obj) == "str":
                return self.o.read_str(file_obj)
        except DECODE_ERRORS:
            pass
        return None

    def _classify(self, value: int) -> str:
        """'function', 'class', 'module' or '' for a global's value."""
        try:
            type_addr = self.o.type_of(value)
            kind = self.o.kind_of_type(type_addr)
            if kind == "function":
                return "function"
            if kind == "module" or self.heap.mro_has(type_addr, "module"):
                return "module"
            if self.heap.is_type_object(type_addr) and self.o.kind_of_type(value) == "heap":
                return "class"
        except DECODE_ERRORS:
            pass
        return ""

    # -- the walk ------------------------------------------------------------------------------------
    def walk(self, class_addresses: Iterable[int]) -> ReachedCode:
        out = ReachedCode()
        pending_classes = list(class_addresses)
        pending_functions: List[int] = []
        # Model packages: where the starting classes and the classes they derive from live (framework
        # ones excepted).  A derivative whose layers are all torch's but whose root subclasses a base
        # package's class (class Tempered(torchcrepe.Crepe)) inherits that package's methods.
        for addr in pending_classes:
            info = self._read_class(addr, out, quiet=False)
            if info is None:
                continue
            for cls in [addr] + list(info.mro[1:]):
                ancestor = info if cls == addr else self._read_class(cls, out, quiet=True)
                if ancestor is not None and not is_framework_module(ancestor.module):
                    out.packages.add(top_package(ancestor.module))
        out.packages |= self.extra_packages

        def inside(module: Optional[str]) -> bool:
            if is_framework_module(module):
                return False
            return top_package(module) in out.packages or self.is_deployment_module(module)

        seen_classes: Set[int] = set()
        seen_functions: Set[int] = set()
        while pending_classes or pending_functions:
            if len(out.code_objects) > MAX_CODE_OBJECTS:
                out.warnings.append(f"stopped after {MAX_CODE_OBJECTS} code objects: the model packages "
                                    f"{sorted(out.packages)} reach more code than a model's")
                break
            if pending_classes:
                addr = pending_classes.pop()
                if addr in seen_classes:
                    continue
                seen_classes.add(addr)
                info = self._read_class(addr, out, quiet=True)
                if info is None:
                    continue
                if not inside(info.module):
                    out.framework_classes[addr] = info
                    continue
                out.classes[addr] = info
                pending_functions.extend(info.methods.values())
                pending_classes.extend(b for b in info.mro[1:] if b not in seen_classes)
                continue
            faddr = pending_functions.pop()
            if faddr in seen_functions:
                continue
            seen_functions.add(faddr)
            func = self._read_function(faddr, out)
            if func is None or not inside(func.module):
                continue
            out.functions[faddr] = func
            globals_ = self._str_dict(self._globals_of(faddr))
            for code in self._read_code_tree(func, out):
                for kind, value in self._referenced(code, globals_, inside):
                    (pending_functions if kind == "function" else pending_classes).append(value)
        met = {c.module for c in out.classes.values()} | {f.module for f in out.functions.values()}
        out.deployment_modules = {m for m in met if self.is_deployment_module(m)}
        return out

    def _read_class(self, addr: int, out: ReachedCode, quiet: bool) -> Optional[ClassInfo]:
        """A heap type (a class defined in Python); static types (object, C extension types) hold no
        code to walk.  ``quiet``: a base or a referenced class that cannot be read is expected where
        C extensions build odd heap types; a layer's own class that cannot be read is not."""
        info = out.classes.get(addr) or out.framework_classes.get(addr)
        if info is not None:
            return info
        try:
            if self.o.kind_of_type(addr) != "heap":
                return None
            return self.py.read_class(addr)
        except DECODE_ERRORS as exc:
            if not quiet:
                out.warnings.append(f"class at 0x{addr:x} unreadable: {exc}")
            return None

    def _read_function(self, addr: int, out: ReachedCode) -> Optional[Function]:
        try:
            return self.py.read_function(addr)
        except DECODE_ERRORS as exc:
            out.warnings.append(f"function at 0x{addr:x} unreadable: {exc}")
            return None

    def _globals_of(self, faddr: int) -> int:
        try:
            return self.o.u64(faddr + self._f_globals)
        except DECODE_ERRORS:
            return 0

    def _read_code_tree(self, func: Function, out: ReachedCode) -> List[CodeObject]:
        """The function's code object and the code nested in its constants (comprehensions, lambdas,
        inner functions, class bodies)."""
        read: List[CodeObject] = []
        pending: List[Tuple[int, Optional[int]]] = [(func.code, None)]
        while pending:
            addr, parent = pending.pop()
            if addr in out.code_objects or not addr:
                continue
            try:
                code = self.py.code_reader.read(addr)
            except DECODE_ERRORS as exc:
                out.warnings.append(f"code object at 0x{addr:x} ({func.module}.{func.qualname}) unreadable: {exc}")
                if parent is None:
                    out.unreadable_functions.add(f"{func.module}.{func.qualname}")
                continue
            out.code_objects[addr] = code
            out.code_owner[addr] = (func.address, parent)
            read.append(code)
            pending.extend((child, addr) for child in nested_code(code.consts))
        return read

    def _referenced(self, code: CodeObject, globals_: Dict[str, int], inside) -> Iterable[Tuple[str, int]]:
        """Functions and classes of the model packages that ``code`` names through its globals, or as
        attributes of a model-package module it names (``common.C3``)."""
        modules: List[Dict[str, int]] = []
        for name in code.names:
            value = globals_.get(name)
            if not value:
                continue
            kind = self._classify(value)
            if kind in ("function", "class"):
                yield kind, value
            elif kind == "module" and inside(self._module_names().get(value)):
                modules.append(self._module_namespace(value))
        for namespace in modules:
            for name in code.names:
                value = namespace.get(name)
                if value:
                    kind = self._classify(value)
                    if kind in ("function", "class"):
                        yield kind, value

