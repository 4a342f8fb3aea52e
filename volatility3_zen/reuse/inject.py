"""Applying a bundle's code to the live base environment: the plan (dry run) and its application.

Order matters and is fixed: every name objects.json gives is checked against the bundle's ``Trust``
(trust.py) before anything is imported or made; modules the environment lacks are created (empty)
first; then the bundle's classes (bases first) and module-level functions are made from their code
objects, with empty closure cells; then cells, defaults, class attributes and the module globals the
code reads are filled in, now that every name can be looked up; last, the changed code objects
replace the code of the base's live functions.
"""

import builtins
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .bundle import PatchBundle, ReuseError
from .decode import _OMIT, Decoder
from .trust import DEPLOYMENT_MODULES, STDLIB, Refused, Trust, findable, is_script


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


def make_plan(bundle: PatchBundle) -> Plan:
    """What ``apply`` would do, without changing or importing anything.  Every name objects.json gives
    is checked against the bundle's Trust first (a forged one is refused here, as it is when
    rebuilding); a module counts as present where this process has it or the import system's finders
    find it (no module code runs)."""
    if not bundle.has("objects.json"):
        plan = Plan(notes=bundle.environment_notes())
        plan.notes.append("the bundle has no objects.json (a plain-Python model, or the state was unreadable): "
                          "nothing to inject or rebuild")
        return plan
    doc = bundle.json("objects.json")
    trust = Trust.from_bundle(bundle)
    trust.audit(doc, probe=True)  # first: a forged bundle is refused before even torch is imported
    plan = Plan(notes=bundle.environment_notes())
    local = set(doc.get("local_modules", ()))

    def missing(module: str) -> Optional[str]:
        if module in local or is_script(module):
            return "the deployment's own"
        return None if findable(module) else "not in this environment"

    _describe(plan, doc, bundle.code_entries(), missing)
    counts = trust.counts
    plan.notes.append(f"names checked, nothing imported: {counts['own']} the bundle's own, {counts['allowlist']} "
                      f"allowlisted, {counts['lookup']} of the standard library, {counts['environment']} of the "
                      f"base environment's packages ({', '.join(sorted(trust.packages))}; their kind is checked "
                      "when rebuilding)")
    if trust.unknown:
        unknown = sorted(set(trust.unknown))
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        plan.notes.append("unknown here (their module is not found in this environment): "
                          + ", ".join(unknown[:10]) + more)
    return plan


def _describe(plan: Plan, doc: Dict[str, Any], code: Dict[str, Any], missing: Callable[[str], Optional[str]]) -> None:
    """The plan's actions, in the order ``apply`` takes them; ``missing(module)``: why a module is created."""
    for module in _modules_of(doc):
        why = missing(module)
        if why:
            plan.actions.append(Action("create-module", module, why))
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
        self.trust = Trust.from_bundle(bundle)
        decoder.trust = self.trust  # the decoder resolves names under the same policy
        self.created: Dict[str, types.ModuleType] = {}
        DEPLOYMENT_MODULES.clear()  # a rebuild's names are its own bundle's (an earlier model keeps its objects)
        self.local = set(self.doc.get("local_modules", ())) | {m for m in _modules_of(self.doc) if is_script(m)}
        self.pending_cells: List[Tuple[types.CellType, dict, str]] = []
        self.pending_defaults: List[Tuple[types.FunctionType, dict, str]] = []
        decoder.make_function = self.function_now

    # -- modules ---------------------------------------------------------------------------------------
    def module(self, name: str) -> types.ModuleType:
        """The live module for a bundle's module name.  The deployment's own modules (objects.json's
        ``local_modules``: its script, the files beside it, exec'd code) are always made afresh, even
        where this environment has a module of that name (a local ``common.py``, the running script's
        ``__main__``); any other module is the environment's (imported only under the base environment's
        packages, trust.py), or made empty when it is missing.  No standard-library module is made."""
        if name in self.created:
            return self.created[name]
        if name not in self.local:
            existing = self.trust.exists(name)
            if existing is not None:
                return existing
        top = name.partition(".")[0]
        if not is_script(name) and (top in STDLIB or not (name in self.local or top in self.trust.packages
                                                          or self.trust.owns_parent(name))):
            raise Refused(f"objects.json: refused to create module {name}: "
                          + ("the standard library's modules are never created or changed" if top in STDLIB
                             else "it is neither one the bundle creates nor under a package of the base environment"))
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
        func = self.trust.remember(types.FunctionType(code, globals_, entry["name"], None, cells))
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
        # Every name first: a forged one is refused before anything is imported, made or changed.
        self.trust.audit(self.doc)
        plan = Plan(notes=self.bundle.environment_notes())
        for module in _modules_of(self.doc):
            self.module(module)
        classes: List[Tuple[type, dict]] = []
        for entry in self.doc["classes"]:
            where = f"classes[{entry['module']}.{entry['qualname']}]"
            first_cell = len(self.pending_cells)
            namespace: Dict[str, Any] = {"__module__": entry["module"], "__qualname__": entry["qualname"]}
            made = {name: (self.function(m), m) for name, m in entry["methods"].items()}
            namespace.update({name: self._wrapped(m, f, None) for name, (f, m) in made.items()})
            bases = tuple(self.trust.resolve("base", b, f"{where}.bases[{i}]")
                          for i, b in enumerate(entry["bases"])) or (object,)
            meta = self.trust.resolve("metaclass", entry["metaclass"], f"{where}.metaclass")
            cls = self.trust.remember(meta(entry["name"], bases, namespace))
            cls.__qualname__ = entry["qualname"]
            owner, _, leaf = entry["qualname"].rpartition(".")
            holder = (self.trust.resolve("owner", {"module": entry["module"], "qualname": owner}, f"{where}.qualname")
                      if owner else self.module(entry["module"]))
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
        local = self.local
        _describe(plan, self.doc, self.code, lambda m: "the deployment's own" if m in local
                  else "not in this environment" if m in self.created else None)
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
        where = f"patched[{entry['module']}.{entry['attr']}]"
        owner = self.trust.resolve("owner", owner_ref, where) if owner_ref else self.module(entry["module"])
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
