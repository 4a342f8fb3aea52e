"""Per-version CPython layouts and opcode tables, as the readers use them.

The tables are ISF files (``symbols/cpython/cpython-3.X.json``) and opcode tables
(``opcodes-3.X.json``) generated from a ``-g`` libpython by ``tools/gen_cpython_isf.py``; see
docs/symbols.md.  Sizes, offsets and constants come from the ISF loader shared with the PyTorch
tables (``readers/isf.py``); this module adds the opcode tables and the version spellings CPython
is asked for.  Loading uses the standard json module only: no Volatility import at run time.
"""

import functools
import json
import re
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

from ...errors import UnsupportedVersionError
from ..isf import IsfTable, LayoutKeyError, ShippedTables, read_isf

__all__ = ["CPythonLayout", "LayoutKeyError", "OpcodeTables", "SYMBOLS_DIR", "load_layout", "supported_versions"]

VersionLike = Union[str, int, Tuple[int, ...], List[int]]


class OpcodeTables:
    """The target version's opcode tables (``opcodes-3.X.json``).

    ``deopt``/``caches`` are identity/zeros before 3.11 (no quickening), ``de_instrument`` is empty
    before 3.12.  Opcode constants the version lacks are None (``instrumented_line`` before 3.12, ...).
    The base opcode of an in-memory opcode ``op`` (once INSTRUMENTED_LINE / INSTRUMENTED_INSTRUCTION have
    been replaced from the code's monitoring data) is ``base[op]``; ``caches[base[op]]`` cache units
    follow it.
    """

    def __init__(self, tables: dict):
        self.opname: List[str] = tables["opname"]
        self.quickened: bool = "deopt" in tables
        self.deopt: List[int] = tables.get("deopt", list(range(256)))
        self.caches: List[int] = tables.get("caches", [0] * 256)
        self.de_instrument: Dict[int, int] = {int(op): base for op, base in tables.get("de_instrument", {}).items()}
        # An opcode the version does not define deopts to 0 (CACHE) in CPython's table; it never occurs
        # in intact bytecode, and kept as it is it shows in the restored code (readers/cpython/integrity.py).
        self.base: List[int] = [self.de_instrument.get(op) or (op if self.opname[op].startswith("<") else self.deopt[op])
                                for op in range(256)]
        self.constants: Dict[str, int] = tables["constants"]
        get = self.constants.get
        self.have_argument: int = self.constants["HAVE_ARGUMENT"]
        self.extended_arg: int = self.constants["EXTENDED_ARG"]
        self.extended_arg_opcodes: FrozenSet[int] = frozenset(tables.get("extended_arg_opcodes", [self.extended_arg]))
        self.extended_arg_quick: Optional[int] = get("EXTENDED_ARG_QUICK")
        self.cache: Optional[int] = get("CACHE")
        self.resume: Optional[int] = get("RESUME")
        self.instrumented_line: Optional[int] = get("INSTRUMENTED_LINE")
        self.instrumented_instruction: Optional[int] = get("INSTRUMENTED_INSTRUCTION")
        self.min_instrumented_opcode: Optional[int] = get("MIN_INSTRUMENTED_OPCODE")
        self.enter_executor: Optional[int] = get("ENTER_EXECUTOR")


class CPythonLayout(IsfTable):
    """Struct sizes, member offsets and constants of one CPython minor version (x86_64).

    Struct names are the C typedef names (``PyCodeObject``, ``PyInterpreterState``) or tags where no
    typedef exists (``_gc_runtime_state``; a ``struct `` prefix is accepted).  Members may be dotted
    through embedded structs (``interpreters.head``, ``threads.head``, ``state.kind``); members of
    anonymous unions/structs are reachable directly (``PyObject.ob_refcnt`` in 3.12+).  Constants are
    the C enums and header macros of that version (``const("Py_TPFLAGS_HEAPTYPE")``).
    """

    # The messages name the file: a table that lacks something is looked at next.
    NO_STRUCT = "{label} table has no struct {struct!r} ({file})"
    NO_CONSTANT = "{label} headers define no constant {name} (see {file}, enums)"

    def __init__(self, isf_path: str, opcodes_path: str):
        isf = read_isf(isf_path)
        self.build_version: str = isf["metadata"]["producer"]["cpython_version"]
        self.version: Tuple[int, int] = tuple(int(part) for part in self.build_version.split(".")[:2])
        super().__init__(isf, isf_path, f"CPython {self.build_version}")
        self.isf_path = isf_path
        self._opcodes_path = opcodes_path

    @functools.cached_property
    def opcodes(self) -> OpcodeTables:
        with open(self._opcodes_path, encoding="utf-8") as fh:
            return OpcodeTables(json.load(fh))


def _open_layout(version: str, isf_path: str) -> CPythonLayout:
    return CPythonLayout(isf_path, _TABLES.path(version, "opcodes"))


_TABLES: ShippedTables[CPythonLayout] = ShippedTables("cpython", "cpython", "CPython", _open_layout, span=True)
SYMBOLS_DIR = _TABLES.folder


def minor_version(version: VersionLike) -> Tuple[int, int]:
    """(major, minor) from "3.11", "3.11.2", (3, 11), sys.version_info or a PY_VERSION_HEX int."""
    if isinstance(version, int) and version >= 0x01000000:
        return version >> 24, (version >> 16) & 0xFF
    if isinstance(version, str):
        match = re.match(r"\s*(\d+)\.(\d+)", version)
        if match:
            return int(match.group(1)), int(match.group(2))
    elif isinstance(version, (tuple, list)) and len(version) >= 2 and all(isinstance(v, int) for v in version[:2]):
        return version[0], version[1]
    raise UnsupportedVersionError(f"cannot read a CPython version from {version!r} (expected e.g. '3.11')")


def supported_versions() -> List[str]:
    """Minor versions with a shipped table, oldest first: ["3.7", ..., "3.13"]."""
    return list(_TABLES.versions)


def load_layout(version: VersionLike) -> CPythonLayout:
    """The layout for a CPython version (any patch level of a supported minor version); cached."""
    return _TABLES.load("%d.%d" % minor_version(version))
