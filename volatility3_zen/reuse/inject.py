"""Applying a bundle's code to the live base environment: the plan (dry run) and its application.

Order matters and is fixed: modules the environment lacks are created (empty) first; then the
bundle's classes (bases first) and module-level functions are made from their code objects, with
empty closure cells; then cells, defaults, class attributes and the module globals the code reads
are filled in, now that every name can be looked up; last, the changed code objects replace the
code of the base's live functions.
"""

import builtins
import importlib
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .bundle import PatchBundle, ReuseError
from .decode import _OMIT, DEPLOYMENT_MODULES, Decoder, resolve


@dataclass
class Action:
    kind: str  # create-module / inject-class / inject-function / bind-global / patch-function
    target: str  # dotted name
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind:<16} {self.target}" + (f"  ({self.detail})" if self.detail else "")


@dataclass
class Plan:
    actions: List[Action] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for a in self.actions if a.kind == kind)


def _importable(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 -- missing, or failing: either way the bundle has to provide it
        return False


def make_plan(bundle: PatchBundle) -> Plan:
    """What ``apply`` would do, without changing anything (importing modules to check they exist)."""
    plan = Plan(notes=bundle.environment_notes())
    if not bundle.has("objects.json"):
        plan.notes.append("the bundle has no objects.json (a plain-Python model, or the state was unreadable): "
                          "nothing to inject or rebuild")
        return plan
    doc = bundle.json("objects.json")
    code = bundle.code_entries()
    modules = _modules_of(doc)
    local = set(doc.get("local_modules", ()))
    for module in modules:
        if module in local or _is_script(module):
            plan.actions.append(Action("create-module", module, "the deployment's own"))
        elif not _importable(module):
            plan.actions.append(Action("create-module", module, "not in this environment"))
    for cls in doc["classes"]:
        carried = sum(1 for m in cls["methods"].values() if code.get(m.get("function_id"), {}).get("kind") == "carried")
        plan.actions.append(Action("inject-class", f"{cls['module']}.{cls['qualname']}",
                                   f"{len(cls['methods'])} methods, {carried} unchanged; bases "
                                   + ", ".join(f"{b['module']}.{b['qualname']}" for b in cls["bases"])))
    for func in doc["functions"]:
        plan.actions.append(Action("inject-function", f"{func['module']}.{func['attr']}"))
    for module, names in sorted(doc["globals"].items()):
        plan.actions.append(Action("bind-globals", module, ", ".join(sorted(names)) or "none"))
    for func in doc["patched"]:
        owner = func.get("owner")
        where = f"{owner['module']}.{owner['qualname']}.{func['attr']}" if owner else f"{func['module']}.{func['attr']}"
        entry = code.get(func.get("function_id"), {})
        differs = ",".join(entry.get("differs_in") or []) or "code"
        plan.actions.append(Action("patch-function", where, f"{entry.get('kind', '?')}: {differs}"))
    return plan


def _is_script(module: str) -> bool:
    """A script run as __main__, or code run by path (runpy's ``<run_path>``): never importable here."""
    return module == "__main__" or module.startswith("<")


def _modules_of(doc: Dict[str, Any]) -> List[str]:
    names = {c["module"] for c in doc["classes"]} | {f["module"] for f in doc["functions"]}
    names |= set(doc["globals"]) | set(doc.get("local_modules", []))
    return sorted(n for n in names if n)


class Injector:
    def __init__(self, bundle: PatchBundle, decoder: Decoder):
        self.bundle = bundle
        self.decoder = decoder
        self.doc = bundle.json("objects.json")
        self.code = bundle.code_entries()
        self.created: Dict[str, types.ModuleType] = {}
        DEPLOYMENT_MODULES.clear()  # a rebuild's names are its own bundle's (an earlier model keeps its objects)
        self.local = set(self.doc.get("local_modules", ())) | {m for m in _modules_of(self.doc) if _is_script(m)}
        self.pending_cells: List[Tuple[types.CellType, dict, str]] = []
        self.pending_defaults: List[Tuple[types.FunctionType, dict, str]] = []
        decoder.make_function = self.function_now

    # -- modules ---------------------------------------------------------------------------------------
    def module(self, name: str) -> types.ModuleType:
        """The live module for a bundle's module name.  The deployment's own modules (objects.json's
        ``local_modules``: its script, the files beside it, exec'd code) are always made afresh, even
        where this environment has a module of that name (a local ``common.py``, the running script's
        ``__main__``); any other module is the environment's, or made empty when it is missing."""
        if name in self.created:
            return self.created[name]
        if name not in self.local and _importable(name):
            return sys.modules[name]
        parent_name, _, child = name.rpartition(".")
        module = types.ModuleType(name, f"injected by volatility3_zen.reuse from {self.bundle.path}")
        module.__zen_injected__ = True
        module.__builtins__ = builtins  # as an imported module has; the eval loop looks builtins up there
        if parent_name and not name.startswith("<"):
            parent = self.module(parent_name)
            if not hasattr(parent, "__path__"):
                parent.__path__ = []  # a package, so that the child's import statement works
            setattr(parent, child, module)
        if name != "__main__":  # this process's own __main__ stays in place
            sys.modules[name] = module
        DEPLOYMENT_MODULES[name] = module
        self.created[name] = module
        return module

    # -- functions -------------------------------------------------------------------------------------
    def function(self, entry: dict, cls: Optional[type] = None) -> types.FunctionType:
        function_id = entry.get("function_id")
        if function_id not in self.code:
            raise ReuseError(f"{entry['module']}.{entry['qualname']}: its code is not in the bundle")
        code = self.bundle.load_code(self.code[function_id])
        globals_ = vars(self.module(entry["globals"] or entry["module"]))
        cells = None
        if entry.get("closure") is not None:
            cells = []
            for encoded in entry["closure"]:
                cell = types.CellType()
                if encoded["t"] == "class_cell":
                    self.pending_cells.append((cell, {"class": True}, entry["qualname"]))
                elif encoded["t"] != "empty_cell":
                    self.pending_cells.append((cell, encoded, entry["qualname"]))
                cells.append(cell)
            cells = tuple(cells)
        func = types.FunctionType(code, globals_, entry["name"], None, cells)
        func.__qualname__ = entry["qualname"]
        func.__module__ = entry["module"]
        self.pending_defaults.append((func, entry, entry["qualname"]))
        return func

    def function_now(self, entry: dict, remember) -> types.FunctionType:
        """A function the object state describes in full, with its closure and defaults filled in."""
        func = self.function(entry)
        remember(func)
        self._fill(None)
        return func

    def _wrapped(self, entry: dict, func: types.FunctionType, cls: Optional[type]) -> Any:
        wrapper = entry["wrapper"]
        if wrapper == "staticmethod":
            return staticmethod(func)
        if wrapper == "classmethod":
            return classmethod(func)
        if wrapper == "property":
            fset = self.function(entry["fset"], cls) if "fset" in entry else None
            fdel = self.function(entry["fdel"], cls) if "fdel" in entry else None
            return property(func, fset, fdel)
        return func

    # -- the whole application -------------------------------------------------------------------------
    def apply(self) -> Plan:
        plan = make_plan(self.bundle)
        for module in _modules_of(self.doc):
            self.module(module)
        classes: List[Tuple[type, dict]] = []
        for entry in self.doc["classes"]:
            first_cell = len(self.pending_cells)
            namespace: Dict[str, Any] = {"__module__": entry["module"], "__qualname__": entry["qualname"]}
            made = {name: (self.function(m), m) for name, m in entry["methods"].items()}
            namespace.update({name: self._wrapped(m, f, None) for name, (f, m) in made.items()})
            bases = tuple(resolve(b["module"], b["qualname"]) for b in entry["bases"]) or (object,)
            meta = resolve(entry["metaclass"]["module"], entry["metaclass"]["qualname"])
            cls = meta(entry["name"], bases, namespace)
            cls.__qualname__ = entry["qualname"]
            owner, _, leaf = entry["qualname"].rpartition(".")
            holder = resolve(entry["module"], owner) if owner else self.module(entry["module"])
            setattr(holder, leaf, cls)
            for cell, spec, _ in self.pending_cells[first_cell:]:
                if spec.get("class"):  # super()'s __class__ cell of this class's methods
                    cell.cell_contents = cls
            classes.append((cls, entry))
        self._fill(classes)
        for entry in self.doc["functions"]:
            value = self.decoder.value(entry["value"], f"{entry['module']}.{entry['attr']}")
            if value is not _OMIT:
                setattr(self.module(entry["module"]), entry["attr"], value)
        for entry in self.doc["patched"]:
            self._patch(entry)
        return plan

    def _fill(self, classes: Optional[List[Tuple[type, dict]]]) -> None:
        """Everything that names other objects, once all of them exist."""
        d = self.decoder
        cells, self.pending_cells = self.pending_cells, []
        defaults, self.pending_defaults = self.pending_defaults, []
        for cell, spec, where in cells:
            if not spec.get("class"):
                value = d.value(spec, f"{where}.__closure__")
                if value is not _OMIT:
                    cell.cell_contents = value
        for func, entry, where in defaults:
            if entry.get("defaults") is not None:
                func.__defaults__ = d.value(entry["defaults"], f"{where}.__defaults__")
            if entry.get("kwdefaults") is not None:
                func.__kwdefaults__ = d.value(entry["kwdefaults"], f"{where}.__kwdefaults__")
        for cls, entry in classes or ():
            for name, encoded in entry["attributes"].items():
                value = d.value(encoded, f"{entry['qualname']}.{name}")
                if value is not _OMIT:
                    setattr(cls, name, value)
        for module_name, names in (self.doc["globals"].items() if classes is not None else ()):
            module = self.module(module_name)
            for name, encoded in names.items():
                # The base's own globals stay as the environment has them; only missing names are bound.
                if module_name in self.created or not hasattr(module, name):
                    value = d.value(encoded, f"{module_name}.{name}")
                    if value is not _OMIT:
                        setattr(module, name, value)

    def _patch(self, entry: dict) -> None:
        owner_ref = entry.get("owner")
        owner = resolve(owner_ref["module"], owner_ref["qualname"]) if owner_ref else self.module(entry["module"])
        current = vars(owner).get(entry["attr"])
        live = getattr(current, "__func__", current)
        if isinstance(current, property):
            live = current.fget
        new = self.function(entry)
        self._fill(None)  # its defaults and cells only
        if (isinstance(live, types.FunctionType) and live.__globals__ is new.__globals__
                and len(live.__code__.co_freevars) == len(new.__code__.co_freevars)):
            # The base's live function runs the image's code from now on (references to it held
            # elsewhere included).  Code from other globals (a script's function rebound as a base
            # class's method) cannot run under the base module's globals: it is set as the attribute.
            live.__code__ = new.__code__
            live.__defaults__, live.__kwdefaults__ = new.__defaults__, new.__kwdefaults__
        else:
            setattr(owner, entry["attr"], self._wrapped(entry, new, owner if isinstance(owner, type) else None))

