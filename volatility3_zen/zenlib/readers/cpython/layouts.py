"""Per-version CPython layouts and opcode tables, as the readers use them.

The tables are ISF files (``symbols/cpython/cpython-3.X.json``) and opcode tables
(``opcodes-3.X.json``) generated from a ``-g`` libpython by ``tools/gen_cpython_isf.py``; see
docs/symbols.md.  Readers ask a handful of offsets once per reader object and then work with plain
ints, so everything here is precomputed into dicts when a file is loaded.  Loading uses the standard
json module only: no Volatility import and no schema validation at run time (the test suite
validates the shipped files).
"""

import functools
import json
import os
import re
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

from ...errors import UnsupportedVersionError

SYMBOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                           "symbols", "cpython")
_ISF_FILE = re.compile(r"cpython-(\d+)\.(\d+)\.json")

VersionLike = Union[str, int, Tuple[int, ...], List[int]]
Member = Tuple[int, dict]  # (offset from the start of the struct, ISF type descriptor)


class LayoutKeyError(KeyError):
    """A struct, member or constant the table does not have (``str()`` is the plain message)."""

    def __str__(self) -> str:
        return str(self.args[0])


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
        self.base: List[int] = [self.de_instrument.get(op) or self.deopt[op] for op in range(256)]
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


class CPythonLayout:
    """Struct sizes, member offsets and constants of one CPython minor version (x86_64).

    Struct names are the C typedef names (``PyCodeObject``, ``PyInterpreterState``) or tags where no
    typedef exists (``_gc_runtime_state``; a ``struct `` prefix is accepted).  Members may be dotted
    through embedded structs (``interpreters.head``, ``threads.head``, ``state.kind``); members of
    anonymous unions/structs are reachable directly (``PyObject.ob_refcnt`` in 3.12+).
    """

    def __init__(self, isf_path: str, opcodes_path: str):
        with open(isf_path, encoding="utf-8") as fh:
            isf = json.load(fh)
        self.isf_path = isf_path
        self._opcodes_path = opcodes_path
        self.build_version: str = isf["metadata"]["producer"]["cpython_version"]
        self.version: Tuple[int, int] = tuple(int(part) for part in self.build_version.split(".")[:2])
        user_types = isf["user_types"]
        self._sizes: Dict[str, int] = {name: struct["size"] for name, struct in user_types.items()}
        flattened: Dict[str, Dict[str, Member]] = {}
        self._members = {name: _flatten(name, user_types, flattened) for name in user_types}
        self._consts: Dict[str, int] = {name: value for enum in isf["enums"].values()
                                        for name, value in enum["constants"].items()}

    def __repr__(self) -> str:
        return f"<CPythonLayout {self.build_version} from {os.path.basename(self.isf_path)}>"

    def size(self, struct: str) -> int:
        try:
            return self._sizes[struct]
        except KeyError:
            return self._sizes[self._struct_name(struct)]

    def offset(self, struct: str, member: str) -> int:
        return self._member(struct, member)[0]

    def has(self, struct: str, member: str) -> bool:
        members = self._members.get(_strip_keyword(struct))
        return members is not None and member in members

    def member_type(self, struct: str, member: str) -> dict:
        """The member's ISF type descriptor (shared: do not modify it)."""
        return self._member(struct, member)[1]

    def bitfield(self, struct: str, member: str) -> Tuple[int, int, int]:
        """(byte offset of the storage unit, bit position in it, bit length) of a bitfield member."""
        offset, described = self._member(struct, member)
        if described["kind"] != "bitfield":
            raise LayoutKeyError(f"CPython {self.build_version}: {struct}.{member} is not a bitfield")
        return offset, described["bit_position"], described["bit_length"]

    def const(self, name: str) -> int:
        try:
            return self._consts[name]
        except KeyError:
            raise LayoutKeyError(f"CPython {self.build_version} headers define no constant {name} "
                                 f"(see {os.path.basename(self.isf_path)}, enums)") from None

    def has_const(self, name: str) -> bool:
        return name in self._consts

    @functools.cached_property
    def opcodes(self) -> OpcodeTables:
        with open(self._opcodes_path, encoding="utf-8") as fh:
            return OpcodeTables(json.load(fh))

    def _struct_name(self, struct: str) -> str:
        name = _strip_keyword(struct)
        if name not in self._sizes:
            raise LayoutKeyError(f"CPython {self.build_version} table has no struct {struct!r} "
                                 f"({os.path.basename(self.isf_path)})")
        return name

    def _member(self, struct: str, member: str) -> Member:
        members = self._members.get(struct) or self._members[self._struct_name(struct)]
        try:
            return members[member]
        except KeyError:
            raise LayoutKeyError(f"CPython {self.build_version}: {_strip_keyword(struct)} has no member "
                                 f"{member!r}") from None


def _strip_keyword(struct: str) -> str:
    for keyword in ("struct ", "union "):
        if struct.startswith(keyword):
            return struct[len(keyword):]
    return struct


def _flatten(name: str, user_types: dict, done: Dict[str, Dict[str, Member]]) -> Dict[str, Member]:
    """Every member path of a struct -> (offset, type), through embedded described structs (dotted)
    and anonymous members (flattened into their parent, as C and Volatility's ISF 6.2 do)."""
    if name in done:
        return done[name]
    members: Dict[str, Member] = {}
    for field_name, field in user_types[name]["fields"].items():
        described, offset = field["type"], field["offset"]
        nested = described.get("name") if described["kind"] in ("struct", "union") else None
        if field.get("anonymous"):
            for path, (inner, inner_type) in _flatten(nested, user_types, done).items():
                members[path] = (offset + inner, inner_type)
            continue
        members[field_name] = (offset, described)
        if nested in user_types:
            for path, (inner, inner_type) in _flatten(nested, user_types, done).items():
                members[f"{field_name}.{path}"] = (offset + inner, inner_type)
    done[name] = members
    return members


def _parse_version(version: VersionLike) -> Tuple[int, int]:
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
    return list(_shipped_versions())


@functools.lru_cache(maxsize=None)
def _shipped_versions() -> Tuple[str, ...]:
    found = [tuple(map(int, m.groups())) for m in map(_ISF_FILE.fullmatch, os.listdir(SYMBOLS_DIR)) if m]
    return tuple("%d.%d" % version for version in sorted(found))


def load_layout(version: VersionLike) -> CPythonLayout:
    """The layout for a CPython version (any patch level of a supported minor version); cached."""
    return _load(_parse_version(version))


@functools.lru_cache(maxsize=None)
def _load(version: Tuple[int, int]) -> CPythonLayout:
    short = "%d.%d" % version
    supported = _shipped_versions()
    if short not in supported:
        span = f"{supported[0]}-{supported[-1]}" if supported else "none installed"
        raise UnsupportedVersionError(f"CPython {short} is not supported (supported: {span})")
    return CPythonLayout(os.path.join(SYMBOLS_DIR, f"cpython-{short}.json"),
                         os.path.join(SYMBOLS_DIR, f"opcodes-{short}.json"))
