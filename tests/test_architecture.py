"""The layer rules of docs/architecture.md, checked on the source (ast only: nothing is imported).

Every ``.py`` under ``volatility3_zen/`` is parsed; every import in it (module level or inside a
function, relative ones resolved against the file's package, ``importlib.import_module("literal")``
too) is checked against what its layer may import; for the bundle's pure side and for reuse, what
an import loads in turn is checked too.  The last tests keep docs/architecture.md and the folders in
step: the layer folders the doc names exist, they are the ones this test knows, every file of
``zenlib/`` sits in one of them, and every file the doc names exists.

A rule break already in the code when a rule was written is listed, with the change that removes it,
in ``KNOWN_VIOLATIONS``; the test fails when such an entry is no longer needed.
"""

import ast
import re
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO / "volatility3_zen"
DOC = REPO / "docs" / "architecture.md"
PKG = "volatility3_zen"

# Module prefix -> layer, most specific first (a module belongs to the first prefix it equals or lies under).
LAYERS = [
    (f"{PKG}.plugins", "plugins"),
    (f"{PKG}.zenlib.vol", "vol"),
    (f"{PKG}.zenlib.bundle", "bundle"),
    (f"{PKG}.zenlib.readers", "readers"),
    (f"{PKG}.zenlib.analysis", "analysis"),
    (f"{PKG}.zenlib.representation", "representation"),
    (f"{PKG}.zenlib.errors", "errors"),
    (f"{PKG}.reuse", "reuse"),
    (f"{PKG}.capture", "capture"),
    (f"{PKG}.keys", "keys"),
    (f"{PKG}._vol_hook", "startup hook"),
    (f"{PKG}.symbols", "symbols"),
    (f"{PKG}.zenlib", "package root"),  # zenlib/__init__.py
    (PKG, "package root"),  # volatility3_zen/__init__.py
]
# The layer folders of zenlib/ (paths under volatility3_zen/), as docs/architecture.md's table names them.
ZENLIB_LAYER_FOLDERS = {"zenlib/vol/", "zenlib/bundle/", "zenlib/readers/", "zenlib/analysis/",
                        "zenlib/representation/"}

# Layer -> the layers of ours it may import.  Importing a module also runs the package roots above it,
# so every layer "imports" the package roots; those import nothing of ours in turn.
MAY_IMPORT = {
    "plugins": {"plugins", "vol", "bundle", "readers", "analysis", "representation", "errors"},
    "vol": {"vol", "bundle", "readers", "analysis", "representation", "errors"},
    "bundle": {"bundle", "readers", "analysis", "representation", "errors"},
    "readers": {"readers", "representation", "errors"},
    "analysis": {"analysis", "representation", "errors"},
    "representation": {"representation", "errors"},
    "errors": set(),
    "reuse": {"reuse", "representation", "errors"},
    "capture": {"errors"},
    "keys": {"errors"},
    "startup hook": set(),
    "symbols": set(),
    "package root": set(),
}
ALWAYS_IMPORTABLE = {"package root"}
# Single modules a layer may import although their layer is otherwise closed to it.
MAY_IMPORT_MODULES = {
    "reuse": {f"{PKG}.zenlib.bundle.format", f"{PKG}.zenlib.bundle.signing"},
    "keys": {f"{PKG}.zenlib.bundle.signing"},
    "capture": {f"{PKG}.zenlib.vol.layers.elfcore"},
}
VOLATILITY_LAYERS = {"plugins", "vol"}  # the only layers that may import volatility3
# The bundle's pure side: built from representations only, never from the process.
BUNDLE_WITHOUT_READERS = {f"{PKG}.zenlib.bundle.{name}" for name in ("write", "report", "format", "signing")}
# Imported where only the standard library can be counted on (the base model's environment, interpreter start).
STDLIB_ONLY = {f"{PKG}.zenlib.bundle.format", f"{PKG}._vol_hook"}
# Imported there too, with one third-party package besides the standard library (imported only when used).
STDLIB_AND = {f"{PKG}.zenlib.bundle.signing": {"cryptography"}, f"{PKG}.keys": {"cryptography"}}
# What the base model's environment has besides the standard library (volatility3_zen.reuse runs there).
REUSE_THIRD_PARTY = {"torch", "numpy", "safetensors", "cryptography"}  # cryptography: to check a signature
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# Rule breaks present in the code today, each to be removed by the change named: (file, imported module).
KNOWN_VIOLATIONS: Set[Tuple[str, str]] = set()


# -- the source, as modules and their imports ----------------------------------------------------------
def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> List[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


MODULES = {module_name(path): path for path in source_files()}


def layer_of(module: str) -> Optional[str]:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def _absolute(base: str, level: int, importer: str, is_package: bool) -> str:
    """The module a relative ``from`` names, as Python resolves it."""
    if not level:
        return base
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    anchor = package[:len(package) - (level - 1)]
    return ".".join(anchor + ([base] if base else []))


def imports_of(path: Path, strict: bool = True) -> Iterator[Tuple[int, str]]:
    """(line, module) for every import in the file, anywhere in it.  ``from X import y`` gives X.y when
    that is one of our modules, X otherwise (y is then a name defined in X).  A file that does not
    parse has none unless ``strict`` (test_every_module_has_a_layer_and_parses reports it)."""
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    try:
        tree = ast.parse(path.read_text(), str(path))
    except SyntaxError:
        if strict:
            raise
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, importer, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else base
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            yield node.lineno, node.args[0].value


def loaded_by(module: str) -> Set[str]:
    """Our modules that importing ``module`` runs: it, its package roots, what those import, and so on."""
    pending, seen = [module], set()
    while pending:
        current = pending.pop()
        if current in seen or current not in MODULES:
            continue
        seen.add(current)
        parts = current.split(".")
        pending += [".".join(parts[:k]) for k in range(1, len(parts))]
        pending += [imported for _, imported in imports_of(MODULES[current], strict=False) if is_ours(imported)]
    return seen


def is_ours(module: str) -> bool:
    return module == PKG or module.startswith(PKG + ".")


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


# -- the rules ----------------------------------------------------------------------------------------------
def violation(importer: str, imported: str) -> Optional[str]:
    """Why ``importer`` may not import ``imported``, or None when it may."""
    layer = layer_of(importer)
    if importer in STDLIB_ONLY and top_level(imported) not in STDLIB:
        what = f"layer {layer_of(imported)}" if is_ours(imported) else top_level(imported)
        return f"{importer} may import the standard library only, not {what}"
    if importer in STDLIB_AND and top_level(imported) not in STDLIB | STDLIB_AND[importer] and not is_ours(imported):
        return f"{importer} may import the standard library and {', '.join(sorted(STDLIB_AND[importer]))} only, " \
               f"not {top_level(imported)}"
    if is_ours(imported):
        other = layer_of(imported)
        if importer in BUNDLE_WITHOUT_READERS:
            readers = sorted(m for m in loaded_by(imported)
                             if layer_of(m) == "readers" and MODULES[m].name != "__init__.py")
            if readers:
                through = "" if other == "readers" else f" (it loads {readers[0]} and {len(readers) - 1} more)"
                return f"the bundle's pure side {importer} may not import layer readers{through}"
        if other in MAY_IMPORT[layer] or other in ALWAYS_IMPORTABLE or imported in MAY_IMPORT_MODULES.get(layer, ()):
            return None
        return f"layer {layer} may not import layer {other}"
    if top_level(imported) == "volatility3" and layer not in VOLATILITY_LAYERS:
        return f"layer {layer} may not import volatility3: only plugins and zenlib/vol may"
    if layer == "reuse" and top_level(imported) not in STDLIB | REUSE_THIRD_PARTY:
        return f"layer reuse may not import {top_level(imported)}: only the standard library, " \
               f"{', '.join(sorted(REUSE_THIRD_PARTY))}"
    return None


def test_every_module_has_a_layer_and_parses():
    assert [m for m in MODULES if layer_of(m) is None] == []
    unparsable = []
    for path in MODULES.values():
        try:
            ast.parse(path.read_text(), str(path))
        except SyntaxError as exc:
            unparsable.append(f"{where(path, exc.lineno or 0)}: {exc.msg}")
    assert not unparsable, "cannot check the imports of:\n" + "\n".join(unparsable)


def test_imports_go_down_the_layers():
    found, known_seen = [], set()
    for module, path in MODULES.items():
        for line, imported in imports_of(path, strict=False):
            reason = violation(module, imported)
            if reason is None:
                continue
            key = (str(path.relative_to(REPO)), imported)
            if key in KNOWN_VIOLATIONS:
                known_seen.add(key)
            else:
                found.append(f"{where(path, line)} imports {imported} ({reason})")
    assert not found, "imports against docs/architecture.md:\n" + "\n".join(found)
    assert known_seen == KNOWN_VIOLATIONS, f"fixed, remove from KNOWN_VIOLATIONS: {KNOWN_VIOLATIONS - known_seen}"


def test_reuse_runs_without_volatility_or_the_readers():
    """Everything ``volatility3_zen.reuse`` loads, directly or through our modules it imports (package
    roots included), needs only the standard library, torch, numpy, safetensors and cryptography."""
    loaded = set().union(*(loaded_by(m) for m in MODULES if layer_of(m) == "reuse"))
    found = [f"{where(MODULES[module], line)} imports {imported} (loaded by reuse, which runs where only the "
             "standard library, torch, numpy, safetensors and cryptography are installed)"
             for module in sorted(loaded) for line, imported in imports_of(MODULES[module], strict=False)
             if not is_ours(imported) and top_level(imported) not in STDLIB | REUSE_THIRD_PARTY]
    assert not found, "\n".join(found)


def test_the_import_checker_resolves_relative_imports_and_flags_upward_ones():
    """The checker itself, on cases whose answer is known."""
    assert _absolute("representation.unified", 2, f"{PKG}.zenlib.analysis.diff", False) == \
        f"{PKG}.zenlib.representation.unified"
    assert _absolute("", 1, f"{PKG}.reuse", True) == f"{PKG}.reuse"
    assert _absolute("zenlib.bundle", 2, f"{PKG}.reuse.bundle", False) == f"{PKG}.zenlib.bundle"
    assert violation(f"{PKG}.zenlib.readers.fingerprint", f"{PKG}.zenlib.analysis.similarity") == \
        "layer readers may not import layer analysis"
    assert violation(f"{PKG}.zenlib.analysis.diff", "volatility3.framework") is not None
    assert violation(f"{PKG}.zenlib.bundle.report", f"{PKG}.zenlib.readers.memory") is not None
    assert violation(f"{PKG}.zenlib.bundle.collect", f"{PKG}.zenlib.readers.memory") is None
    assert "loads" in violation(f"{PKG}.zenlib.bundle.report", f"{PKG}.zenlib.bundle.collect")
    assert violation(f"{PKG}.zenlib.bundle.format", f"{PKG}.zenlib.errors") is not None
    assert violation(f"{PKG}.reuse.bundle", f"{PKG}.zenlib.bundle.format") is None
    assert violation(f"{PKG}.reuse.bundle", f"{PKG}.zenlib.bundle.collect") is not None
    assert violation(f"{PKG}.reuse.bundle", f"{PKG}.zenlib.bundle.signing") is None
    assert violation(f"{PKG}.zenlib.bundle.signing", "cryptography.hazmat") is None
    assert violation(f"{PKG}.zenlib.bundle.signing", "torch") is not None
    assert violation(f"{PKG}.reuse.bundle", "scipy") is not None
    assert violation(f"{PKG}.zenlib.vol.session", f"{PKG}.zenlib.readers.cpython.recover") is None


# -- the doc and the folders ------------------------------------------------------------------------------
def doc_layer_paths() -> List[str]:
    """The first backticked path of every row of the doc's layer table (paths under volatility3_zen/)."""
    text = DOC.read_text()
    table = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|") and "`" in line]
    return [re.search(r"`([^`]+)`", row).group(1) for row in rows]


def test_the_doc_names_the_layer_folders_that_exist():
    paths = doc_layer_paths()
    assert [p for p in paths if not (PACKAGE_DIR / p).exists()] == [], "layer paths in the doc that do not exist"
    assert {p for p in paths if p.startswith("zenlib/") and p.endswith("/")} == ZENLIB_LAYER_FOLDERS


def test_every_zenlib_file_sits_in_a_layer_folder():
    zenlib = PACKAGE_DIR / "zenlib"
    loose = [str(path.relative_to(PACKAGE_DIR)) for path in zenlib.rglob("*.py")
             if path not in (zenlib / "errors.py", zenlib / "__init__.py")
             and not any(str(path.relative_to(PACKAGE_DIR)).startswith(folder) for folder in ZENLIB_LAYER_FOLDERS)]
    assert loose == [], "files of zenlib/ outside the layer folders of docs/architecture.md"


def test_files_the_doc_names_exist():
    """Every backticked ``*.py`` path of the doc exists (under the repository, volatility3_zen/, zenlib/
    or a layer folder), unless the doc marks it "(planned)"."""
    text = DOC.read_text()
    missing = []
    for match in re.finditer(r"`([\w./]+\.py)`( \(planned\))?", text):
        name, planned = match.groups()
        if planned or "/" not in name:
            continue
        roots = [REPO, PACKAGE_DIR, PACKAGE_DIR / "zenlib"] + [PACKAGE_DIR / f for f in ZENLIB_LAYER_FOLDERS]
        if not any((root / name).exists() for root in roots):
            missing.append(name)
    assert not missing, f"files docs/architecture.md names that do not exist: {missing}"
