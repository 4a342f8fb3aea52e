"""What a bundle may make this process import, construct or call (docs/reuse.md, "Hostile bundles").

A bundle is data from a machine under investigation and may have been edited (its manifest re-hashed):
every name it gives (a container's class, a function reference, an enum, a base class, a metaclass, a
module) is checked here before anything is imported or called with it.  What may be used:

- **the bundle's own**: the classes and functions it carries (made by the injector from its code
  objects) and the modules it creates (``local_modules``, the deployment's script);
- **the base environment**: modules under the packages the bundle's context names (``model_packages``,
  ``packages``, ``requirements``), plus torch and numpy, minus the standard library; what such a
  name resolves to is checked for its kind before it is used (an object's class is an ``nn.Module``
  subclass or a plain class of a model package, a tensor's class a ``torch.Tensor`` subclass, a
  metaclass a subclass of ``type``, ...);
- **a fixed allowlist** of builtin, standard-library and torch names (containers, enum bases,
  ``functools.partial``, pure functions of ``math`` and ``operator``, ...), compared by identity.

Anything else is refused with one line naming where in objects.json it was met and the name.  A
module outside the base environment's packages is never imported (a standard-library module only
where it is on a short list of side-effect-free ones, else looked up if this process has it already);
the static check (``audit``) imports nothing, which is what ``--dry-run`` runs.
"""

import builtins
import collections
import enum
import functools
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import types
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from .bundle import ReuseError

# -- the fixed allowlist ---------------------------------------------------------------------------------------
ALWAYS_PACKAGES = ("torch", "numpy")  # the base environment of every torch model (docs/reuse.md)

# Container classes of list/tuple/dict values (``"class"`` of a list, tuple or dict tag).
ALLOWED_CONTAINERS = {("collections", "OrderedDict"): "dict", ("collections", "defaultdict"): "dict",
                      ("collections", "Counter"): "dict"}
# Classes of the standard library an object of the table may be an instance of (restored by __new__
# and its __dict__, no constructor runs).
ALLOWED_INSTANCE_CLASSES = {("types", "SimpleNamespace"), ("argparse", "Namespace")}
# torch classes other than nn.Module subclasses an object of the table may be an instance of: the
# grad-mode context objects that decorated functions keep (torch.inference_mode()).
TORCH_INSTANCE_CLASSES = {("torch.autograd.grad_mode", name) for name in
                          ("inference_mode", "no_grad", "enable_grad", "set_grad_enabled")}
# Standard-library classes that may be referred to (an attribute holding a class) or be a base class
# of an injected class; every builtin type may too.
ALLOWED_STDLIB_CLASSES = set(ALLOWED_CONTAINERS) | ALLOWED_INSTANCE_CLASSES | {
    ("functools", "partial"), ("enum", "Enum"), ("enum", "IntEnum"), ("enum", "Flag"), ("enum", "IntFlag"),
    ("enum", "StrEnum"), ("enum", "ReprEnum"), ("abc", "ABC"), ("typing", "Generic"), ("typing", "Protocol"),
    ("typing", "NamedTuple"), ("collections", "UserDict"), ("collections", "UserList"), ("collections", "deque"),
    ("contextlib", "ContextDecorator"), ("contextlib", "AbstractContextManager"), ("dataclasses", "Field")}
ALLOWED_METACLASSES = {("builtins", "type"), ("abc", "ABCMeta"), ("enum", "EnumMeta"), ("enum", "EnumType"),
                       ("typing", "_ProtocolMeta")}
# Functions that may be referred to: every public function of these modules ...
ALLOWED_FUNCTION_MODULES = ("math", "cmath", "operator")
# ... and these (pure: they compute a value from their arguments).
ALLOWED_FUNCTIONS = {("builtins", name) for name in ("abs", "all", "any", "divmod", "len", "max", "min", "pow",
                                                     "round", "sorted", "sum")} | {
    (module, name) for module in ("os.path", "posixpath") for name in ("join", "basename", "dirname", "split",
                                                                        "splitext", "normpath")} | {
    ("functools", "reduce")}
# torch functions that load or run code or files, start processes or open connections: never referred
# to (by the module a name gives or the module the function says it is from).
TORCH_DENIED = ("torch.hub", "torch.package", "torch.serialization", "torch.utils.cpp_extension",
                "torch.utils.model_zoo", "torch.utils.data", "torch.utils.tensorboard", "torch.utils.benchmark",
                "torch.distributed", "torch.multiprocessing", "torch.onnx", "torch.jit", "torch._dynamo",
                "torch._inductor", "torch.compiler", "torch.export", "torch.testing", "torch.ops", "torch._ops",
                "torch.load", "torch.save", "torch.compile", "torch.classes")
# Standard-library modules a bundle's name may import (no side effects on import); any other one is only
# looked up where this process has imported it already.
SAFE_STDLIB_IMPORTS = frozenset((
    "abc", "argparse", "array", "bisect", "builtins", "cmath", "collections", "collections.abc", "contextlib",
    "copy", "dataclasses", "decimal", "enum", "fractions", "functools", "heapq", "inspect", "itertools", "json",
    "logging", "math", "numbers", "operator", "os", "os.path", "posixpath", "random", "re", "statistics",
    "string", "struct", "sys", "textwrap", "time", "types", "typing", "warnings", "weakref"))

_BUILTIN_TAGS = {"list": list, "tuple": tuple, "dict": dict, "set": set, "frozenset": frozenset}

_KIND_TEXT = {
    "instance": "the class of an object", "tensor": "the class of a tensor", "class": "a class reference",
    "function": "a function reference", "enum": "an enum class", "partial": "the class of a partial",
    "base": "a base class", "metaclass": "a metaclass", "owner": "the class a method is patched into",
    "module": "a module reference", "target": "a module to inject into", "globals": "a function's globals module",
    "container-list": "the class of a list", "container-tuple": "the class of a tuple",
    "container-dict": "the class of a dict", "container-set": "the class of a set",
    "container-frozenset": "the class of a frozenset"}


def is_script(module: str) -> bool:
    """A script run as __main__, or code run by path (runpy's ``<run_path>``): never importable here."""
    return module == "__main__" or module.startswith("<")


def _stdlib_names() -> frozenset:
    names = getattr(sys, "stdlib_module_names", None)  # 3.10+
    if names is not None:
        return frozenset(names) | {"__future__"}
    found = set(sys.builtin_module_names) | {"__future__"}
    paths = sysconfig.get_paths()
    for folder in {paths.get("stdlib"), paths.get("platstdlib"), os.path.join(paths.get("stdlib") or "", "lib-dynload")}:
        try:
            entries = os.listdir(folder) if folder else ()
        except OSError:
            continue
        for entry in entries:
            if entry in ("site-packages", "dist-packages"):
                continue
            found.add(entry.split(".")[0])
    return frozenset(found)


STDLIB = _stdlib_names()


def _top(name: str) -> str:
    return name.partition(".")[0]


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _text(module: Any, qualname: Any) -> str:
    return f"{module}.{qualname}" if qualname else str(module)


class Refused(ReuseError):
    """A name the bundle gives that reuse does not use: one line, naming where and what."""


# Modules of the deployment itself that the injector made for this rebuild (its script's ``__main__``
# among them, which is not this process's ``__main__``): looked up here before anything is imported.
DEPLOYMENT_MODULES: Dict[str, types.ModuleType] = {}


class Trust:
    """The names one bundle may use.  ``packages``: the top-level packages of the base environment whose
    modules may be imported; ``own_modules``: the modules the bundle creates; ``carried``: (module,
    qualname) of the classes and functions it carries."""

    def __init__(self, packages: Iterable[str] = (), own_modules: Iterable[str] = (),
                 carried: Iterable[Tuple[str, str]] = (), source: str = "objects.json"):
        self.packages = frozenset(p for p in set(packages) | set(ALWAYS_PACKAGES)
                                  if isinstance(p, str) and p and not is_script(p) and "." not in p
                                  and p not in STDLIB)
        self.own_modules = frozenset(m for m in own_modules if isinstance(m, str) and m)
        self.carried = frozenset(carried)
        self.source = source
        self.basis = "its context names"  # where ``packages`` came from, for the messages
        self.made: Dict[int, Any] = {}  # id -> class or function the injector made from the bundle's code
        self.audited = False
        self.counts: Dict[str, int] = collections.Counter()  # how the audit classed the names it met
        self.unknown: List[str] = []  # names of the base environment whose module is not found here (dry run)
        self._canonical: Dict[Tuple[str, str], Any] = {}

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, bundle) -> "Trust":
        """From the bundle's objects.json (what it carries and creates) and context.json (the packages of
        its base environment)."""
        doc = bundle.json("objects.json") if bundle.has("objects.json") else {}
        context = bundle.context()
        packages: Set[str] = set()
        for field in ("model_packages", "packages"):
            value = context.get(field)
            if isinstance(value, (list, dict)):
                packages |= {p for p in value if isinstance(p, str)}
        for line in context.get("requirements") or ():
            if isinstance(line, str):
                name = line.split("==")[0].strip()
                packages |= {name, name.replace("-", "_")}
        if not isinstance(context.get("model_packages"), list):
            # A bundle without the model's packages in its context (written before they were recorded):
            # the installed packages its objects' classes name, as without the bundle (for_table).
            packages |= cls.for_table(doc.get("objects") or {}).packages
        return cls(packages, _own_modules(doc), _carried(doc, bundle.code_entries() if bundle.has("code.json") else {}))

    @classmethod
    def for_table(cls, objects: Dict[str, Any]) -> "Trust":
        """Where only the object table is at hand (a Decoder made without a Trust: the rebuild without the
        patch): the packages of the classes its objects are instances of, plus torch and numpy."""
        packages, scripts = set(), set()
        for entry in objects.values() if isinstance(objects, dict) else ():
            ref = entry.get("class") if isinstance(entry, dict) else None
            if isinstance(ref, dict) and isinstance(ref.get("module"), str):
                packages.add(_top(ref["module"]))
                if is_script(ref["module"]):
                    scripts.add(ref["module"])  # looked up only among the modules the injector made
        trust = cls(packages & installed_packages(), own_modules=scripts, source="objects.json")
        trust.basis = "installed ones its objects' classes name"
        return trust

    # -- the static check (imports nothing) --------------------------------------------------------------------
    def check_name(self, kind: str, module: Any, qualname: Any, where: str) -> str:
        """How a name is allowed ("own", "allowlist", "environment", "lookup"), from the name alone; a
        Refused otherwise.  Nothing is imported."""
        if not isinstance(module, str) or not module or not isinstance(qualname, str):
            raise Refused(f"{self.source} {where}: {_KIND_TEXT.get(kind, kind)} without a valid module and name "
                          f"({_text(module, qualname)!r})")
        if kind in ("target", "globals"):
            return self._check_module_use(kind, module, where)
        if module in self.own_modules or self._is_carried(module, qualname):
            return "own"
        if kind == "module":
            return self._check_module_use(kind, module, where)
        if self._allowlisted_name(kind, module, qualname):
            return "allowlist"
        top = _top(module)
        if top in self.packages:
            if kind == "function" and top == "torch" and _under(_text(module, qualname), TORCH_DENIED):
                raise self._refuse(kind, module, qualname, where, "torch functions that load files or code, start "
                                   "processes or open connections are never used")
            return "environment"
        if kind == "enum" and sys.modules.get(module) is not None:
            # Only looked up (an enum's member: nothing runs), in a module this process has: checked now,
            # by dictionaries alone.
            found, value = True, sys.modules[module]
            for part in qualname.split("."):
                found, value = _attribute(value, part, getattr_allowed=False)
                if not found or isinstance(value, types.ModuleType):
                    break
            if found and isinstance(value, enum.EnumMeta):
                return "lookup"
            raise self._refuse(kind, module, qualname, where, "not an enum class" if found else "it does not exist here")
        if top in STDLIB:
            raise self._refuse(kind, module, qualname, where, f"not on reuse's allowlist of standard-library "
                               f"names for {_KIND_TEXT.get(kind, kind)}")
        raise self._refuse(kind, module, qualname, where, self._not_named(module))

    def _check_module_use(self, kind: str, module: str, where: str) -> str:
        top = _top(module)
        if module in self.own_modules or is_script(module):
            if kind in ("target", "globals") and top in STDLIB and not is_script(module):
                raise self._refuse(kind, module, "", where, "the standard library's modules are never created or changed")
            return "own"
        if kind == "target":
            if top in STDLIB:
                raise self._refuse(kind, module, "", where, "the standard library's modules are never created or changed")
            if top in self.packages or self.owns_parent(module):
                return "environment"
            raise self._refuse(kind, module, "", where, self._not_named(module))
        if top in self.packages:
            return "environment"
        if top in STDLIB:
            if module in SAFE_STDLIB_IMPORTS or module in sys.modules:
                return "lookup"
            raise self._refuse(kind, module, "", where, "a standard-library module reuse does not import "
                               "(not on its list of side-effect-free ones, and not imported here)")
        if self.owns_parent(module):
            return "own"
        if module in sys.modules and kind == "module":
            return "lookup"
        raise self._refuse(kind, module, "", where, self._not_named(module))

    def owns_parent(self, module: str) -> bool:
        """A parent package of a module the bundle creates (``derived`` of ``derived.others.resnet_se``)."""
        return any(own.startswith(module + ".") for own in self.own_modules)

    def _is_carried(self, module: str, qualname: str) -> bool:
        parts = qualname.split(".")
        return any((module, ".".join(parts[:n])) in self.carried for n in range(1, len(parts) + 1))

    def _allowlisted_name(self, kind: str, module: str, qualname: str) -> bool:
        name = (module, qualname)
        if kind.startswith("container-"):
            return name in ALLOWED_CONTAINERS or (module == "builtins" and qualname == kind.partition("-")[2])
        if kind == "instance":
            return name in ALLOWED_INSTANCE_CLASSES or name in TORCH_INSTANCE_CLASSES
        if kind in ("class", "base"):
            return module == "builtins" or name in ALLOWED_STDLIB_CLASSES
        if kind == "partial":
            return name == ("functools", "partial")
        if kind == "metaclass":
            return name in ALLOWED_METACLASSES
        if kind == "function":
            return name in ALLOWED_FUNCTIONS or (module in ALLOWED_FUNCTION_MODULES and "." not in qualname
                                                 and not qualname.startswith("_"))
        return False

    def _not_named(self, module: str) -> str:
        shown = ", ".join(sorted(self.packages))
        return f"not the bundle's own nor under a package of the base environment ({self.basis}: {shown}); not imported"

    def _refuse(self, kind: str, module: Any, qualname: Any, where: str, why: str) -> Refused:
        return Refused(f"{self.source} {where}: refused {_text(module, qualname)} as {_KIND_TEXT.get(kind, kind)}: {why}")

    # -- the whole document -------------------------------------------------------------------------------------
    def audit(self, doc: Dict[str, Any], probe: bool = False) -> None:
        """Every name objects.json gives, checked before anything is imported or made.  ``probe``: note
        the names of the base environment whose module this environment lacks, found without importing."""
        try:
            _Audit(self, probe).document(doc)
        except RecursionError:
            raise Refused(f"{self.source}: nested too deeply to check") from None
        self.audited = True

    def audit_table(self, objects: Dict[str, Any]) -> None:
        """The object table alone (a rebuild without the patch): its functions are never made, so only
        the names its objects and tensors give are checked."""
        try:
            _Audit(self, False, functions=False).table(objects)
        except RecursionError:
            raise Refused(f"{self.source}: nested too deeply to check") from None
        self.audited = True

    # -- resolving, with the kind checked before anything is called -------------------------------------------------
    def module(self, name: str, where: str = "", kind: str = "module") -> types.ModuleType:
        """The live module of a name: the bundle's own, one this process has, or one imported under the
        policy (never a module outside the base environment's packages, never the deployment's script)."""
        if not isinstance(name, str) or not name:
            raise Refused(f"{self.source} {where}: a module reference without a name")
        if name in DEPLOYMENT_MODULES:
            return DEPLOYMENT_MODULES[name]
        prefix = f"{where}: " if where else ""
        if is_script(name):
            raise ReuseError(f"{prefix}module {name} is the deployment's script: it exists here only when the "
                             "bundle is injected")
        if name in sys.modules and sys.modules[name] is not None:
            return sys.modules[name]
        top = _top(name)
        if not (top in self.packages or (top in STDLIB and name in SAFE_STDLIB_IMPORTS)):
            why = ("a standard-library module reuse does not import" if top in STDLIB
                   else f"{top} is not a package of the base environment ({self.basis})")
            raise ReuseError(f"{prefix}module {name} is not importable here (not imported: {why})")
        try:
            return importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 -- an import runs the package's code; any failure means "not here"
            raise ReuseError(f"{prefix}module {name} is not importable here ({type(exc).__name__}: {exc})") from None

    def exists(self, name: str) -> Optional[types.ModuleType]:
        """The environment's module of a name the bundle may use, imported where the policy allows; None
        where it is missing (or may not be imported: the injector then makes it)."""
        if name in sys.modules and sys.modules[name] is not None:
            return sys.modules[name]
        top = _top(name)
        if not (top in self.packages or (top in STDLIB and name in SAFE_STDLIB_IMPORTS)):
            return None
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- missing, or failing: either way the bundle has to provide it
            return None

    def lookup(self, module: str, qualname: str, where: str = "") -> Tuple[Any, str]:
        """(object, origin) of module.qualname; origin "own" (made from the bundle, or in a module it
        created), "environment", "stdlib" or "foreign" (the worse of the name's module and the object's
        own ``__module__``).  The qualname walks classes only, by their dictionaries: no attribute code runs."""
        prefix = f"{where}: " if where else ""
        if not isinstance(module, str) or not module:
            raise ReuseError(f"{prefix}{qualname} has no module; it cannot be looked up")
        if not isinstance(qualname, str) or not qualname:
            raise ReuseError(f"{prefix}a name in {module} without a qualname")
        target: Any = self.module(module, where)
        own_module = DEPLOYMENT_MODULES.get(module) is target
        for i, part in enumerate(qualname.split(".")):
            if i and not isinstance(target, type):
                raise Refused(f"{self.source} {where}: refused {module}.{qualname}: "
                              f"{module}.{'.'.join(qualname.split('.')[:i])} is not a class")
            found, value = _attribute(target, part, getattr_allowed=own_module or _top(module) in self.packages)
            if not found:
                raise ReuseError(f"{prefix}{module}.{qualname} does not exist in this environment")
            target = value
        if isinstance(target, types.ModuleType):
            raise Refused(f"{self.source} {where}: refused {module}.{qualname}: it is a module")
        if id(target) in self.made or own_module:
            return target, "own"
        origin = self._origin_of(module)
        actual = getattr(target, "__module__", None)
        if isinstance(actual, str) and actual != module:
            if actual in DEPLOYMENT_MODULES and origin == "environment":
                pass  # a class injected into the base's module keeps the bundle's module name
            else:
                origin = _worse(origin, self._origin_of(actual))
        return target, origin

    def _origin_of(self, module: str) -> str:
        if module in DEPLOYMENT_MODULES:
            return "own"
        top = _top(module)
        if top in self.packages:
            return "environment"
        return "stdlib" if top in STDLIB else "foreign"

    def canonical(self, module: str, qualname: str) -> Any:
        """The object an allowlisted name stands for (compared by identity)."""
        key = (module, qualname)
        if key not in self._canonical:
            value = None
            mod = sys.modules.get(module)
            if mod is None and module in SAFE_STDLIB_IMPORTS:
                try:
                    mod = importlib.import_module(module)
                except Exception:  # noqa: BLE001
                    mod = None
            if mod is not None:
                value = mod
                for part in qualname.split("."):
                    value = vars(value).get(part) if hasattr(value, "__dict__") else None
                    if value is None:
                        break
            self._canonical[key] = value
        return self._canonical[key]

    def _allowlisted(self, obj: Any, names: Iterable[Tuple[str, str]]) -> bool:
        return any(obj is self.canonical(m, q) for m, q in names if self.canonical(m, q) is not None)

    def resolve(self, kind: str, ref: Any, where: str) -> Any:
        """The object a class or function reference names, checked to be of the kind ``kind`` needs."""
        if not isinstance(ref, dict):
            raise Refused(f"{self.source} {where}: {_KIND_TEXT.get(kind, kind)} that is not a reference")
        module, qualname = ref.get("module"), ref.get("qualname")
        self.check_name(kind, module, qualname, where)
        obj, origin = self.lookup(module, qualname, where)
        self.check_object(kind, obj, origin, module, qualname, where)
        return obj

    def check_object(self, kind: str, obj: Any, origin: str, module: str, qualname: str, where: str) -> None:
        why = self._why_not(kind, obj, origin)
        if why:
            raise self._refuse(kind, module, qualname, where, why)

    def _why_not(self, kind: str, obj: Any, origin: str) -> Optional[str]:
        trusted = origin in ("own", "environment")
        is_class = isinstance(obj, type)
        if kind.startswith("container-"):
            tag = _BUILTIN_TAGS[kind.partition("-")[2]]
            if obj is tag or self._allowlisted(obj, [n for n, t in ALLOWED_CONTAINERS.items() if _BUILTIN_TAGS[t] is tag]):
                return None
            if not (is_class and issubclass(obj, tag)):
                return f"not a subclass of {tag.__name__}"
            return None if trusted else "not the bundle's own class nor one of the base environment's packages"
        if kind == "instance":
            if not is_class or issubclass(obj, type):
                return "not a class (or a metaclass)"
            if origin == "own" or self._allowlisted(obj, ALLOWED_INSTANCE_CLASSES | TORCH_INSTANCE_CLASSES):
                return None
            if origin != "environment":
                return "not the bundle's own class, an nn.Module of the base environment nor an allowlisted class"
            if _is_module_class(obj):
                return None
            if _top(getattr(obj, "__module__", "") or "") in ALWAYS_PACKAGES:
                return "a torch or numpy class that is not an nn.Module subclass"
            if any("__del__" in vars(c) for c in obj.__mro__[:-1]):
                return "a class of the base environment with a finaliser (__del__) that is not an nn.Module"
            return None
        if kind == "tensor":
            torch = sys.modules.get("torch")
            if torch is None or not (is_class and issubclass(obj, torch.Tensor)):
                return "not a torch.Tensor subclass"
            return None if trusted else "not a tensor class of torch or the base environment"
        if kind in ("class", "base"):
            if not is_class:
                return "not a class"
            if trusted or (origin in ("stdlib", "foreign") and getattr(obj, "__module__", None) == "builtins"
                           and vars(builtins).get(obj.__name__) is obj):
                return None
            return None if self._allowlisted(obj, ALLOWED_STDLIB_CLASSES) else "not on the allowlist of standard-library classes"
        if kind == "metaclass":
            if not (is_class and issubclass(obj, type)):
                return "not a metaclass (a subclass of type)"
            return None if trusted or self._allowlisted(obj, ALLOWED_METACLASSES) else "not an allowlisted metaclass"
        if kind == "owner":
            return None if is_class and trusted else "not a class of the bundle or the base environment"
        if kind == "partial":
            if obj is functools.partial:
                return None
            if not (is_class and issubclass(obj, functools.partial)):
                return "not functools.partial or a subclass of it"
            return None if trusted else "not the bundle's own class nor one of the base environment's packages"
        if kind == "function":
            if is_class or isinstance(obj, types.ModuleType) or not callable(obj):
                return "not a function"
            if origin == "own":
                return None
            if origin == "environment":
                name = f"{getattr(obj, '__module__', '') or ''}.{getattr(obj, '__qualname__', '') or ''}"
                if _top(name) == "torch" and _under(name, TORCH_DENIED):
                    return "torch functions that load files or code, start processes or open connections are never used"
                return None
            if self._allowlisted(obj, ALLOWED_FUNCTIONS):
                return None
            for module in ALLOWED_FUNCTION_MODULES:
                mod = sys.modules.get(module)
                name = getattr(obj, "__name__", None)
                if mod is not None and isinstance(name, str) and not name.startswith("_") and vars(mod).get(name) is obj:
                    return None
            return "not a function of the bundle, of the base environment's packages, nor on the allowlist"
        if kind == "enum":
            return None if isinstance(obj, enum.EnumMeta) else "not an enum class"
        return f"unknown use {kind!r}"

    def enum_member(self, ref: Any, name: Any, where: str) -> Any:
        cls = self.resolve("enum", ref, where)
        members = vars(cls).get("_member_map_")
        if not isinstance(name, str) or not isinstance(members, dict) or name not in members:
            raise Refused(f"{self.source} {where}: refused {_text(ref.get('module'), ref.get('qualname'))}.{name}: "
                          "not a member of that enum")
        return members[name]

    def remember(self, obj: Any) -> Any:
        """A class or function made from the bundle's code: its own, whatever module it sits in."""
        self.made[id(obj)] = obj
        return obj


def installed_packages() -> Set[str]:
    """The top-level packages of the distributions installed here, from their metadata (nothing imported)."""
    from importlib import metadata

    finder = getattr(metadata, "packages_distributions", None)  # 3.10+
    if finder is not None:
        try:
            return set(finder())
        except Exception:  # noqa: BLE001 -- broken metadata: nothing counts as installed
            return set()
    tops: Set[str] = set()
    try:
        for dist in metadata.distributions():
            text = dist.read_text("top_level.txt")
            if text:
                tops.update(text.split())
                continue
            for path in dist.files or ():
                first = path.parts[0] if path.parts else ""
                if first and not first.endswith((".dist-info", ".egg-info", ".pth")) and first != "..":
                    tops.add(first[:-3] if first.endswith(".py") else first)
    except Exception:  # noqa: BLE001
        pass
    return tops


def _worse(a: str, b: str) -> str:
    order = ("own", "environment", "stdlib", "foreign")
    return a if order.index(a) >= order.index(b) else b


def _attribute(target: Any, part: str, getattr_allowed: bool) -> Tuple[bool, Any]:
    """(found, value) of one qualname step, read from dictionaries (a module's, a class's MRO); a
    module's own ``__getattr__`` (lazy attributes) only for the bundle's and the base environment's."""
    if isinstance(target, type):
        for klass in target.__mro__:
            namespace = vars(klass)
            if part in namespace:
                value = namespace[part]
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                return True, value
        return False, None
    namespace = getattr(target, "__dict__", None)
    if isinstance(namespace, dict) and part in namespace:
        return True, namespace[part]
    if getattr_allowed and isinstance(target, types.ModuleType):
        try:
            return True, getattr(target, part)
        except AttributeError:
            return False, None
    return False, None


def _is_module_class(cls: type) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and issubclass(cls, torch.nn.Module)


def _own_modules(doc: Dict[str, Any]) -> Set[str]:
    names = {m for m in doc.get("local_modules") or () if isinstance(m, str)}
    for section in ("classes", "functions"):
        for entry in doc.get(section) or ():
            module = entry.get("module") if isinstance(entry, dict) else None
            if isinstance(module, str) and is_script(module):
                names.add(module)
    for module in doc.get("globals") or {}:
        if isinstance(module, str) and is_script(module):
            names.add(module)
    return names


def _carried(doc: Dict[str, Any], code: Dict[str, Any]) -> Set[Tuple[str, str]]:
    """(module, qualname) of what the bundle carries: its classes, its module-level functions, the
    functions it describes in full, the changed functions it patches in."""
    out: Set[Tuple[str, str]] = set()

    def add(module: Any, qualname: Any) -> None:
        if isinstance(module, str) and isinstance(qualname, str) and module and qualname:
            out.add((module, qualname))

    for entry in doc.get("classes") or ():
        if isinstance(entry, dict):
            add(entry.get("module"), entry.get("qualname"))
    for entry in doc.get("functions") or ():
        if isinstance(entry, dict):
            add(entry.get("module"), entry.get("attr"))
    for entry in (doc.get("objects") or {}).values() if isinstance(doc.get("objects"), dict) else ():
        if isinstance(entry, dict) and entry.get("kind") == "function":
            add(entry.get("module"), entry.get("qualname"))
    for entry in doc.get("patched") or ():
        if isinstance(entry, dict):
            owner = entry.get("owner")
            if isinstance(owner, dict) and isinstance(owner.get("qualname"), str):
                add(owner.get("module"), f"{owner['qualname']}.{entry.get('attr')}")
            else:
                add(entry.get("module"), entry.get("attr"))
    return out


class _Audit:
    """One walk over objects.json: every name checked by ``Trust.check_name`` (nothing imported)."""

    def __init__(self, trust: Trust, probe: bool, functions: bool = True):
        self.trust = trust
        self.probe = probe
        self.functions = functions  # function entries of the table are made (by the injector)

    def name(self, kind: str, ref: Any, where: str) -> None:
        if not isinstance(ref, dict):
            raise Refused(f"{self.trust.source} {where}: {_KIND_TEXT.get(kind, kind)} that is not a reference")
        module, qualname = ref.get("module"), ref.get("qualname")
        how = self.trust.check_name(kind, module, qualname, where)
        self.trust.counts[how] += 1
        if self.probe and how == "environment" and not findable(module):
            self.trust.unknown.append(f"{module}.{qualname}")

    def module_name(self, kind: str, name: Any, where: str) -> None:
        how = self.trust.check_name(kind, name, "", where)
        self.trust.counts[how] += 1

    def document(self, doc: Dict[str, Any]) -> None:
        if not isinstance(doc, dict):
            raise Refused(f"{self.trust.source}: not an object")
        for i, module in enumerate(doc.get("local_modules") or ()):
            self.module_name("target", module, f"local_modules[{i}]")
        for entry in _list(doc, "classes"):
            where = f"classes[{entry.get('module')}.{entry.get('qualname')}]"
            self.module_name("target", entry.get("module"), where)
            for i, base in enumerate(entry.get("bases") or ()):
                self.name("base", base, f"{where}.bases[{i}]")
            self.name("metaclass", entry.get("metaclass"), f"{where}.metaclass")
            owner = (entry.get("qualname") or "").rpartition(".")[0] if isinstance(entry.get("qualname"), str) else ""
            if owner:
                self.name("owner", {"module": entry.get("module"), "qualname": owner}, f"{where}.qualname")
            for name, method in _items(entry.get("methods")):
                self.function_entry(method, f"{where}.{name}")
            for name, value in _items(entry.get("attributes")):
                self.value(value, f"{where}.{name}")
        for entry in _list(doc, "functions"):
            where = f"functions[{entry.get('module')}.{entry.get('attr')}]"
            self.module_name("target", entry.get("module"), where)
            self.value(entry.get("value"), where)
        globals_ = doc.get("globals") or {}
        if not isinstance(globals_, dict):
            raise Refused(f"{self.trust.source} globals: not an object")
        for module, names in globals_.items():
            self.module_name("target", module, f"globals[{module}]")
            for name, value in _items(names):
                self.value(value, f"globals[{module}].{name}")
        for entry in _list(doc, "patched"):
            owner = entry.get("owner")
            where = f"patched[{_text(entry.get('module'), entry.get('attr'))}]"
            if owner is not None:
                self.name("owner", owner, where)
            else:
                self.module_name("target", entry.get("module"), where)
            self.function_entry(entry, where)
        self.table(doc.get("objects") or {})
        self.value(doc.get("root"), "root")

    def table(self, objects: Any) -> None:
        if not isinstance(objects, dict):
            raise Refused(f"{self.trust.source} objects: not an object")
        for object_id, entry in objects.items():
            if not isinstance(entry, dict):
                raise Refused(f"{self.trust.source} objects[{object_id}]: not an object")
            kind = entry.get("kind")
            where = f"objects[{object_id}] ({entry.get('path') or '(root)'})"
            if kind == "object":
                self.name("instance", entry.get("class"), f"{where}.class")
                for name, value in _items(entry.get("dict")):
                    self.value(value, f"{entry.get('path') or '(root)'}.{name}")
            elif kind == "tensor":
                self.name("tensor", entry.get("class"), f"{where}.class")
                dtype = entry.get("dtype")
                if not (isinstance(dtype, str) and dtype.isidentifier()):
                    raise Refused(f"{self.trust.source} {where}: refused dtype {dtype!r}")
            elif kind == "function":
                if self.functions:
                    self.function_entry(entry, where)
            else:
                raise Refused(f"{self.trust.source} {where}: unknown object kind {kind!r}")

    def function_entry(self, entry: Any, where: str) -> None:
        if not isinstance(entry, dict):
            raise Refused(f"{self.trust.source} {where}: a function entry that is not an object")
        self.module_name("globals", entry.get("globals") or entry.get("module"), f"{where}.globals")
        for field in ("defaults", "kwdefaults"):
            if entry.get(field) is not None:
                self.value(entry[field], f"{where}.__{field}__")
        for i, cell in enumerate(entry.get("closure") or ()):
            if not (isinstance(cell, dict) and cell.get("t") in ("class_cell", "empty_cell")):
                self.value(cell, f"{where}.__closure__[{i}]")
        for accessor in ("fset", "fdel"):
            if accessor in entry:
                self.function_entry(entry[accessor], f"{where}.{accessor}")

    def value(self, encoded: Any, where: str) -> None:
        if not isinstance(encoded, dict):
            raise Refused(f"{self.trust.source} {where}: a value that is not an object")
        t = encoded.get("t")
        if t in ("None", "Ellipsis", "bool", "int", "float", "complex", "str", "bytes", "unsupported", "ref"):
            return
        if t in ("list", "tuple", "set", "frozenset", "dict"):
            if encoded.get("class") is not None:
                self.name(f"container-{t}", encoded["class"], f"{where} (its class)")
            items = encoded.get("v")
            if not isinstance(items, list):
                raise Refused(f"{self.trust.source} {where}: a {t} whose items are not a list")
            for i, item in enumerate(items):
                if t == "dict":
                    if not (isinstance(item, list) and len(item) == 2):
                        raise Refused(f"{self.trust.source} {where}: a dict item that is not a pair")
                    self.value(item[0], f"{where}<key>")
                    self.value(item[1], f"{where}[{i}]")
                else:
                    self.value(item, f"{where}[{i}]")
            return
        if t in ("class", "function"):
            self.name(t, encoded, where)
            return
        if t == "method":
            self.value(encoded.get("function"), f"{where}.__func__")
            self.value(encoded.get("self"), f"{where}.__self__")
            return
        if t == "partial":
            if encoded.get("class") is not None:
                self.name("partial", encoded["class"], f"{where} (its class)")
            self.value(encoded.get("func"), f"{where}.func")
            self.value(encoded.get("args"), f"{where}.args")
            self.value(encoded.get("keywords"), f"{where}.keywords")
            return
        if t == "pymodule":
            self.module_name("module", encoded.get("v"), where)
            return
        if t == "enum":
            self.name("enum", encoded.get("class"), where)
            return
        if t == "dtype":
            if not (isinstance(encoded.get("v"), str) and encoded["v"].isidentifier()):
                raise Refused(f"{self.trust.source} {where}: refused dtype {encoded.get('v')!r}")
            return
        if t == "device":
            if not isinstance(encoded.get("v"), str):
                raise Refused(f"{self.trust.source} {where}: refused device {encoded.get('v')!r}")
            return
        if t == "size":
            v = encoded.get("v")
            if not (isinstance(v, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in v)):
                raise Refused(f"{self.trust.source} {where}: refused size {v!r}")
            return
        raise Refused(f"{self.trust.source}: unknown value tag {t!r} at {where or '?'}")


def _list(doc: Dict[str, Any], field: str) -> List[Dict[str, Any]]:
    value = doc.get(field) or []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise Refused(f"objects.json {field}: not a list of objects")
    return value


def _items(value: Any) -> List[Tuple[Any, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise Refused(f"objects.json: {type(value).__name__} where an object was expected")
    return list(value.items())


def findable(module: str) -> bool:
    """Whether this environment has the module, found without importing anything: the top-level
    package by the import system's finders, each submodule in its parent's folders."""
    if module in sys.modules:
        return True
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for i in range(1, len(parts)):
            if spec is None or not spec.submodule_search_locations:
                return False
            name = ".".join(parts[: i + 1])
            if name in sys.modules:
                spec = getattr(sys.modules[name], "__spec__", None)
                continue
            spec = importlib.machinery.PathFinder.find_spec(name, list(spec.submodule_search_locations))
        return spec is not None
    except Exception:  # noqa: BLE001 -- a finder that fails: unknown, reported as not found
        return False
