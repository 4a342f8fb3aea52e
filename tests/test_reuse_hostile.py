"""volatility3_zen.reuse treats a bundle as hostile data (docs/reuse.md, "Hostile bundles").

A bundle whose objects.json was edited and whose manifest was re-hashed passes the integrity check;
what it names must still be refused before anything is imported or called: a standard-library
callable as a container's class, a partial's class or function, an enum, an object's class, a
metaclass or a base; a module outside the base environment's packages (here ``zen_trap``, whose import
writes a marker file); a module to inject into that belongs to the standard library.  Each is
refused with one ``ERROR`` line naming it, with and without the patch and in the dry run, and the
command the forgery would have run leaves no marker.

The first tests need no image: the Decoder and the Trust on hand-made object tables.  The others
forge the resnet-se bundle from its core image and run ``python -m volatility3_zen.reuse`` in the
deployment's own interpreter (timm and torch installed).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import reuse_check
from volatility3_zen.reuse.bundle import ReuseError
from volatility3_zen.reuse.decode import Decoder
from volatility3_zen.reuse.trust import Refused, Trust
from volatility3_zen.zenlib.bundle import format as bundle_format
from volatility3_zen.zenlib.bundle import signing

import zen_testlib


TRAP = """
import enum, os
# Importing this package is what a forged bundle must not achieve: it leaves a marker.
with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trap-imported"), "w") as f:
    f.write("imported")
class Thing(list): pass
class Meta(type): pass
class Base: pass
def fn(*args, **kwargs): return None
class Colour(enum.Enum):
    RED = 1
"""

ENVPKG = """
import os
class Block: pass
class Finalised:
    def __del__(self): pass
def helper(*args): return args
"""


def _ref(t, module, qualname):
    return {"t": t, "module": module, "qualname": qualname}


def _s(text):
    return {"t": "str", "v": text}


def _list(*items, cls=None):
    value = {"t": "list", "v": list(items)}
    if cls is not None:
        value["class"] = cls
    return value


def _touch(marker: Path):
    """A list that ``subprocess.check_call`` would run as a command: touch the marker."""
    return _list(_s("touch"), _s(str(marker)))


def _partial(func, *args, cls=None):
    value = {"t": "partial", "func": func, "args": {"t": "tuple", "v": list(args)}, "keywords": {"t": "dict", "v": []}}
    if cls is not None:
        value["class"] = cls
    return value


def _table(**attributes):
    return {"o0": {"kind": "object", "class": _ref("class", "types", "SimpleNamespace"), "path": "", "dict": attributes}}


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A package ``zen_trap`` on sys.path whose import writes tmp_path/trap-imported."""
    (tmp_path / "lib" / "zen_trap").mkdir(parents=True)
    (tmp_path / "lib" / "zen_trap" / "__init__.py").write_text(TRAP)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    yield tmp_path / "lib" / "trap-imported"
    sys.modules.pop("zen_trap", None)


# -- the decoder on hand-made tables (no image) --------------------------------------------------------
def forged_values(marker: Path):
    """name -> (encoded value, the name the refusal must give)."""
    return {
        "container class subprocess.check_call": (_list(_s("touch"), _s(str(marker)),
                                                        cls=_ref("class", "subprocess", "check_call")),
                                                  "subprocess.check_call"),
        "tuple class os.system": ({"t": "tuple", "v": [_s(f"touch {marker}")], "class": _ref("class", "os", "system")},
                                  "os.system"),
        "dict class builtins.eval": ({"t": "dict", "v": [], "class": _ref("class", "builtins", "eval")}, "builtins.eval"),
        "function os.system": (_ref("function", "os", "system"), "os.system"),
        "function builtins.eval": (_ref("function", "builtins", "eval"), "builtins.eval"),
        "function through a module": (_ref("function", "os.path", "os.system"), "os.path.os.system"),
        "class subprocess.Popen": (_ref("class", "subprocess", "Popen"), "subprocess.Popen"),
        "enum class subprocess.check_call": ({"t": "enum", "class": _ref("class", "subprocess", "check_call"),
                                              "name": "RED"}, "subprocess.check_call"),
        "partial of os.system": (_partial(_ref("function", "os", "system"), _s(f"touch {marker}")), "os.system"),
        "partial class subprocess.check_call": (_partial(_touch(marker), cls=_ref("class", "subprocess", "check_call")),
                                                "subprocess.check_call"),
        "module antigravity": ({"t": "pymodule", "v": "antigravity"}, "antigravity"),
        "container class of zen_trap": (_list(cls=_ref("class", "zen_trap", "Thing")), "zen_trap.Thing"),
        "function of zen_trap": (_ref("function", "zen_trap", "fn"), "zen_trap.fn"),
        "enum of zen_trap": ({"t": "enum", "class": _ref("class", "zen_trap", "Colour"), "name": "RED"}, "zen_trap.Colour"),
        "module zen_trap": ({"t": "pymodule", "v": "zen_trap"}, "zen_trap"),
        "partial of zen_trap": (_partial(_ref("function", "zen_trap", "fn")), "zen_trap.fn"),
    }


@pytest.mark.parametrize("case", sorted(forged_values(Path("m"))))
def test_decoder_refuses_a_forged_name_before_using_it(case, trap, tmp_path):
    marker = tmp_path / "forged-command-ran"
    value, name = forged_values(marker)[case]
    decoder = Decoder(_table(ok=_s("fine"), forged=value), tensor_source=None)
    with pytest.raises(Refused) as refused:
        decoder.value({"t": "ref", "v": "o0"})
    message = str(refused.value)
    assert name in message and "\n" not in message, message
    assert not decoder.built, "the refusal comes before any object is made"
    assert not marker.exists() and not trap.exists() and "zen_trap" not in sys.modules
    assert "antigravity" not in sys.modules


def test_forged_object_and_tensor_classes_are_refused(trap):
    table = {"o0": {"kind": "object", "class": _ref("class", "subprocess", "Popen"), "path": "", "dict": {}}}
    with pytest.raises(Refused, match=r"refused subprocess.Popen as the class of an object"):
        Decoder(table, None).value({"t": "ref", "v": "o0"})
    table = {"o0": {"kind": "object", "class": _ref("class", "zen_trap", "Base"), "path": "", "dict": {}}}
    with pytest.raises(Refused, match="zen_trap.Base"):
        Decoder(table, None, trust=Trust()).value({"t": "ref", "v": "o0"})
    table = {"o0": {"kind": "tensor", "class": _ref("class", "os", "system"), "path": "w", "dtype": "float32",
                    "shape": [1], "requires_grad": False, "member": None, "key": None}}
    with pytest.raises(Refused, match="refused os.system as the class of a tensor"):
        Decoder(table, None).value({"t": "ref", "v": "o0"})
    assert not trap.exists()


def test_forged_injection_targets_bases_and_metaclasses_are_refused_by_the_audit(trap):
    """What only the injector uses (classes, functions, globals, patched): the audit of the whole
    objects.json refuses it before the first module is made."""
    cls = {"name": "SE", "qualname": "SE", "module": "derived.se", "bases": [_ref("class", "torch.nn.modules.module", "Module")],
           "metaclass": _ref("class", "builtins", "type"), "methods": {}, "attributes": {}}
    doc = {"root": {"t": "None"}, "objects": {}, "classes": [cls], "functions": [], "globals": {}, "patched": [],
           "local_modules": ["derived.se"]}
    Trust(["timm"], ["derived.se"]).audit(doc)  # as written
    cases = {
        "metaclass subprocess.check_call": (("metaclass",), _ref("class", "subprocess", "check_call"), "as a metaclass"),
        "metaclass of zen_trap": (("metaclass",), _ref("class", "zen_trap", "Meta"), "zen_trap.Meta"),
        "base os.system": (("bases",), [_ref("class", "os", "system")], "refused os.system as a base class"),
        "base of zen_trap": (("bases",), [_ref("class", "zen_trap", "Base")], "zen_trap.Base"),
        "class attribute builtins.eval": (("attributes",), {"x": _ref("function", "builtins", "eval")}, "builtins.eval"),
        "class into os": (("module",), "os", "refused os as a module to inject into"),
    }
    for case, ((field,), value, text) in cases.items():
        forged = json.loads(json.dumps(doc))
        forged["classes"][0][field] = value
        with pytest.raises(Refused, match=text.replace(".", r"\.")):
            Trust(["timm"], ["derived.se"]).audit(forged)
    forged = json.loads(json.dumps(doc))
    forged["functions"] = [{"module": "subprocess", "attr": "check_call", "value": {"t": "None"}}]
    with pytest.raises(Refused, match="refused subprocess as a module to inject into"):
        Trust(["timm"], ["derived.se"]).audit(forged)
    forged = json.loads(json.dumps(doc))
    forged["local_modules"] = ["json"]
    with pytest.raises(Refused, match="standard library's modules are never created"):
        Trust(["timm"], ["json"]).audit(forged)
    forged = json.loads(json.dumps(doc))
    forged["globals"] = {"derived.se": {"run": _partial(_ref("function", "subprocess", "run"))}}
    with pytest.raises(Refused, match="subprocess.run as a function reference"):
        Trust(["timm"], ["derived.se"]).audit(forged)
    assert not trap.exists()


def test_what_real_bundles_use_still_decodes():
    """The allowlist: builtin and collections containers, SimpleNamespace, enums, pure functions,
    functools.partial of them, builtin classes."""
    import collections
    import math
    import operator

    value = {
        "ordered": {"t": "dict", "class": _ref("class", "collections", "OrderedDict"), "v": [[_s("a"), {"t": "int", "v": "1"}]]},
        "counted": {"t": "dict", "class": _ref("class", "collections", "Counter"), "v": [[_s("a"), {"t": "int", "v": "2"}]]},
        "default": {"t": "dict", "class": _ref("class", "collections", "defaultdict"), "v": []},
        "sqrt": _ref("function", "math", "sqrt"),
        "add": _partial(_ref("function", "operator", "add"), {"t": "int", "v": "1"}),
        "join": _ref("function", "os.path", "join"),
        "length": _ref("function", "builtins", "len"),
        "kind": _ref("class", "builtins", "float"),
        "make": _ref("class", "functools", "partial"),
        "math": {"t": "pymodule", "v": "math"},
        "colour": {"t": "enum", "class": _ref("class", "enum", "Enum"), "name": "RED"},
    }
    value.pop("colour")  # enum.Enum has no members; an enum of this module is below
    obj = Decoder(_table(**value), None).value({"t": "ref", "v": "o0"})
    assert type(obj.ordered) is collections.OrderedDict and obj.counted == collections.Counter(a=2)
    assert type(obj.default) is collections.defaultdict and obj.default.default_factory is None
    assert obj.sqrt is math.sqrt and obj.add(2) == 3 and obj.add.func is operator.add
    assert obj.join is os.path.join and obj.length is len and obj.kind is float and obj.math is math


def test_names_of_the_base_environment_are_checked_for_their_kind(tmp_path, monkeypatch):
    """A package the bundle's context names may be imported; what its names resolve to must still be of
    the kind the use needs, and a qualname never walks through a module."""
    (tmp_path / "zen_envpkg").mkdir()
    (tmp_path / "zen_envpkg" / "__init__.py").write_text(ENVPKG)
    monkeypatch.syspath_prepend(str(tmp_path))
    trust = Trust(["zen_envpkg"])
    try:
        assert trust.resolve("instance", _ref("class", "zen_envpkg", "Block"), "w").__name__ == "Block"
        assert trust.resolve("function", _ref("function", "zen_envpkg", "helper"), "w")(1) == (1,)
        refusals = {
            ("function", "os.system"): "zen_envpkg.os is not a class",
            ("instance", "helper"): "not a class",
            ("instance", "Finalised"): "finaliser",
            ("container-list", "helper"): "not a subclass of list",
            ("metaclass", "Block"): "not a metaclass",
            ("partial", "helper"): "not functools.partial",
            ("enum", "Block"): "not an enum class",
        }
        for (kind, qualname), text in refusals.items():
            with pytest.raises(Refused, match=text):
                trust.resolve(kind, _ref("class", "zen_envpkg", qualname), "w")
    finally:
        sys.modules.pop("zen_envpkg", None)


def test_torch_loaders_are_never_referred_to():
    trust = Trust()
    for module, qualname in (("torch", "load"), ("torch.hub", "load"), ("torch.serialization", "load"),
                             ("torch.utils.cpp_extension", "load_inline"), ("torch.jit", "load")):
        with pytest.raises(Refused, match="never used"):
            trust.check_name("function", module, qualname, "w")


def test_unknown_modules_are_not_imported(trap):
    with pytest.raises(ReuseError, match="zen_trap is not importable here"):
        Trust().module("zen_trap", "w")
    with pytest.raises(ReuseError, match="antigravity is not importable here"):
        Trust().module("antigravity", "w")
    assert Trust().exists("zen_trap") is None
    assert not trap.exists() and "zen_trap" not in sys.modules


# -- forged bundles on the command line (the resnet-se core image) ------------------------------------------------
def _rehashed(source: Path, target: Path, change) -> Path:
    """The bundle with ``change(doc, context)`` applied to objects.json and context.json, the manifest
    re-hashed and signed again with the suite's trusted key: it passes the integrity and signature
    checks (a forger with a trusted key, or a bundle used with --allow-unsigned)."""
    members = bundle_format.read_members(source)
    doc, context = json.loads(members["objects.json"]), json.loads(members["context.json"])
    change(doc, context)
    members["objects.json"] = json.dumps(doc).encode()
    members["context.json"] = json.dumps(context).encode()
    return zen_testlib.write_rehashed_bundle(members, ("objects.json", "context.json"), target,
                                             sign=lambda m: signing.sign(m, signing.signing_key()))


def _root_first(doc, name, value):
    """Set an attribute of the root object, decoded before its other attributes."""
    root = doc["objects"][doc["root"]["v"]]
    root["dict"] = {name: value, **root["dict"]}


def _add_object(doc, cls):
    """An object of class ``cls``, first in the table (checked before the derivative's own classes, which
    a rebuild without the patch refuses as well) and held by the root."""
    doc["objects"] = {"forged": {"kind": "object", "class": cls, "path": "forged", "dict": {}}, **doc["objects"]}
    _root_first(doc, "forged", {"t": "ref", "v": "forged"})


def bundle_forgeries(marker: Path):
    """name -> (change(doc, context), the refused name, whether a rebuild without the patch meets it)."""
    def root(value):
        return lambda doc, context: _root_first(doc, "zen_forged", value)

    def first_class(field, value):
        def change(doc, context):
            doc["classes"][0][field] = value
        return change

    values = forged_values(marker)
    out = {case: (root(value), name, True) for case, (value, name) in values.items()}
    out.update({
        "object class subprocess.Popen": (lambda d, c: _add_object(d, _ref("class", "subprocess", "Popen")),
                                          "subprocess.Popen", True),
        "object class of zen_trap": (lambda d, c: _add_object(d, _ref("class", "zen_trap", "Base")), "zen_trap.Base", True),
        "metaclass subprocess.check_call": (first_class("metaclass", _ref("class", "subprocess", "check_call")),
                                            "subprocess.check_call", False),
        "metaclass of zen_trap": (first_class("metaclass", _ref("class", "zen_trap", "Meta")), "zen_trap.Meta", False),
        "base os.system": (first_class("bases", [_ref("class", "os", "system")]), "os.system", False),
        "base of zen_trap": (first_class("bases", [_ref("class", "zen_trap", "Base")]), "zen_trap.Base", False),
        "global builtins.eval": (lambda d, c: d["globals"].setdefault("derived.others.resnet_se", {}).__setitem__(
            "zen_forged", _ref("function", "builtins", "eval")), "builtins.eval", False),
        "function injected into os": (lambda d, c: d["functions"].append(
            {"module": "os", "attr": "system", "value": {"t": "None"}}), "refused os as a module to inject into", False),
    })
    return out


@pytest.fixture(scope="module")
def resnet_se(tmp_path_factory):
    from tools.corpus import ensure_image

    image = ensure_image("resnet-se-3.11", "core")
    bundle, _, _ = reuse_check.write_bundle(image, tmp_path_factory.mktemp("resnet-se"))
    return reuse_check.interpreter(image), bundle


def _run(python: str, bundle: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The command in the deployment's interpreter with the corpus setup file (as the corpus runs it:
    timm imports there); zen_trap importable (cwd/lib on PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=reuse_check.reuse_pythonpath(python, str(cwd / "lib")), **reuse_check.TORCH_ENV)
    env.pop("PYTHONHOME", None)
    return subprocess.run([python, "-m", "volatility3_zen.reuse", str(bundle), "--setup", str(reuse_check.SETUP), *args],
                          capture_output=True, text=True, env=env, cwd=str(cwd), timeout=600)


def _refused(result: subprocess.CompletedProcess, name: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "Traceback" not in result.stderr, result.stderr
    assert name in lines[0], lines[0]
    assert "rebuilt" not in result.stdout


@pytest.mark.image
@pytest.mark.parametrize("case", sorted(bundle_forgeries(Path("m"))))
def test_forged_bundle_runs_nothing_and_is_refused(case, resnet_se, tmp_path):
    python, bundle = resnet_se
    (tmp_path / "lib" / "zen_trap").mkdir(parents=True)
    (tmp_path / "lib" / "zen_trap" / "__init__.py").write_text(TRAP)
    imported = tmp_path / "lib" / "trap-imported"
    marker = tmp_path / "forged-command-ran"
    change, name, met_without_patch = bundle_forgeries(marker)[case]
    forged = _rehashed(bundle, tmp_path / "forged.zenpatch.zip", change)
    try:
        for args in (["--dry-run"], [], ["--no-patch"]):
            result = _run(python, forged, tmp_path, *args)
            if args == ["--no-patch"] and not met_without_patch:
                # Not used without the patch: the rebuild fails on the derivative's missing module
                # (derived.others.resnet_se) as the control does, having run nothing.
                assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
            else:
                _refused(result, name)
            assert not marker.exists(), f"{case} {args}: the forged command ran"
            assert not imported.exists(), f"{case} {args}: zen_trap was imported"
    finally:
        forged.unlink()


@pytest.mark.image
def test_dry_run_imports_nothing_the_bundle_names(resnet_se, tmp_path):
    """Even a package the bundle's context names (so that rebuilding may import it) is only reported by
    the dry run, never imported; the real bundle's timm and derived modules are not imported either."""
    python, bundle = resnet_se
    (tmp_path / "lib" / "zen_trap").mkdir(parents=True)
    (tmp_path / "lib" / "zen_trap" / "__init__.py").write_text(TRAP)

    def change(doc, context):
        context["model_packages"].append("zen_trap")
        _root_first(doc, "zen_forged", _list(cls=_ref("class", "zen_trap", "Thing")))

    forged = _rehashed(bundle, tmp_path / "named.zenpatch.zip", change)
    result = _run(python, forged, tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "zen_trap" in result.stdout and "nothing changed" in result.stdout
    assert not (tmp_path / "lib" / "trap-imported").exists()

    script = textwrap.dedent("""
        import sys
        from volatility3_zen.reuse.__main__ import main
        status = main([sys.argv[1], "--dry-run"])
        print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("timm", "derived", "zen_trap")))
        sys.exit(status)
    """)
    env = dict(os.environ, PYTHONPATH=reuse_check.reuse_pythonpath(python, str(tmp_path / "lib")))
    env.pop("PYTHONHOME", None)
    result = subprocess.run([python, "-c", script, str(bundle)], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported: []" in result.stdout, result.stdout[-2000:]
    assert "would inject-class     derived.others.resnet_se.SEBlock" in result.stdout


@pytest.mark.image
def test_names_of_the_base_environment_of_the_wrong_kind_are_refused(resnet_se, tmp_path):
    """Names under packages the context names (timm, torch) pass the static check; what they resolve to
    is checked before it is used: a function as a container's class, a qualname through a module, a
    torch loader."""
    python, bundle = resnet_se
    (tmp_path / "lib").mkdir()
    cases = {
        "function as container class": (_list(cls=_ref("class", "timm.models.resnet", "create_classifier")),
                                        "not a subclass of list"),
        "qualname through a module": (_ref("function", "torch.nn.functional", "torch.load"),
                                      "torch.nn.functional.torch is not a class"),
        "torch.load": (_ref("function", "torch", "load"), "never used"),
        "function as an object's class": (None, "not a class"),
    }
    for case, (value, text) in cases.items():
        if value is None:
            def change(doc, context):
                _add_object(doc, _ref("class", "timm.models.resnet", "create_classifier"))
        else:
            def change(doc, context, value=value):
                _root_first(doc, "zen_forged", value)
        forged = _rehashed(bundle, tmp_path / "kind.zenpatch.zip", change)
        try:
            _refused(_run(python, forged, tmp_path), text)
        finally:
            forged.unlink()
