"""One loader for the ISF tables shipped in ``volatility3_zen/symbols/<kind>/``.

``tools/isf_builder.py`` writes the tables (Volatility ISF 6.2.0) from DWARF: the CPython layouts from
a ``-g`` libpython, the PyTorch layouts from a C++ probe compiled against the installed headers (see
docs/symbols.md).  ``IsfTable`` answers what the readers ask of any of them: struct sizes, member
offsets, member types, bitfields and enum constants.  ``cpython/layouts.py`` and ``torch/layouts.py``
add only what is particular to their kind (opcode tables, dtype/device tables, version numbers).

Readers ask a handful of offsets once per reader object and then work with plain ints, so everything
is precomputed into dicts when a file is loaded.  Loading uses the standard json module only: no
Volatility import and no schema validation at run time (the test suite validates the shipped files).
"""

import functools
import json
import os
import re
from typing import Callable, Dict, Generic, List, Optional, Set, Tuple, TypeVar

from ..errors import UnsupportedVersionError

SYMBOLS_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "symbols")

Member = Tuple[int, dict]  # (offset from the start of the struct, ISF type descriptor)
Flattened = Tuple[Dict[str, Member], Set[str]]  # every member path, and the paths that are ambiguous
AGGREGATE_KINDS = ("struct", "class", "union")
POINTER_SIZE = 8  # the tables describe x86_64 builds only
TableT = TypeVar("TableT")
_REQUIRED = object()


class LayoutKeyError(KeyError):
    """A struct, member or constant the table does not have (``str()`` is the plain message)."""

    def __str__(self) -> str:
        return str(self.args[0])


class IsfTable:
    """Struct sizes, member offsets, member types and enum constants of one ISF file.

    Struct names are the names the file uses (C typedefs or tags, C++ qualified names); a ``struct ``
    or ``union `` prefix is accepted.  Members are dotted paths through embedded structs
    (``interpreters.head``, ``storage_.storage_impl_.target_``).  Anonymous fields (C anonymous
    unions, C++ base classes) are reached by their name (``base_class_1._M_head_impl``) and, as in C
    and C++, directly (``PyObject.ob_refcnt`` in 3.12+, ``THPVariable.cdata.impl_``).  As in C++ name
    lookup, a struct's own members hide inherited ones, and a name inherited from two bases with
    different meanings is ambiguous: ``offset()`` refuses it.

    ``label`` starts every message ("CPython 3.12.1", "PyTorch 2.13.0"); a subclass may reword the
    messages for a missing struct or constant (``NO_STRUCT``, ``NO_CONSTANT``: ``{label}``,
    ``{struct}``/``{name}`` and ``{file}``, the file's base name).
    """

    NO_STRUCT = "{label} table has no struct {struct!r}"
    NO_CONSTANT = "{label} table has no constant {name} (see {file}, enums)"

    def __init__(self, isf: dict, source: str, label: str):
        self.source = source
        self.label = label
        user_types = isf["user_types"]
        self._sizes: Dict[str, int] = {name: struct["size"] for name, struct in user_types.items()}
        flattened: Dict[str, Flattened] = {}
        self._members: Dict[str, Dict[str, Member]] = {}
        self._ambiguous: Dict[str, Set[str]] = {}
        for name in user_types:
            self._members[name], ambiguous = _flatten(name, user_types, flattened)
            if ambiguous:
                self._ambiguous[name] = ambiguous
        enums = isf["enums"]
        self._scalar_sizes: Dict[Tuple[str, str], int] = {("base", name): base["size"]
                                                          for name, base in isf["base_types"].items()}
        self._scalar_sizes.update({("enum", name): enum["size"] for name, enum in enums.items()})
        self._enums: Dict[str, Dict[str, int]] = {name: enum["constants"] for name, enum in enums.items()}
        self._consts, self._const_sources = _merge_constants(self._enums)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} from {os.path.basename(self.source)}>"

    # -- structs and members -----------------------------------------------------------------------
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

    def member_size(self, struct: str, member: str) -> int:
        """Byte size of a member (any member but a bitfield)."""
        return self._type_size(self.member_type(struct, member))

    def bitfield(self, struct: str, member: str) -> Tuple[int, int, int]:
        """(byte offset of the storage unit, bit position in it, bit length) of a bitfield member."""
        offset, described = self._member(struct, member)
        if described["kind"] != "bitfield":
            raise LayoutKeyError(f"{self.label}: {struct}.{member} is not a bitfield")
        return offset, described["bit_position"], described["bit_length"]

    # -- enums -------------------------------------------------------------------------------------
    def const(self, name: str, default=_REQUIRED) -> int:
        """An enumerator of any enum in the file (C enums, header macros, derived tables); ``default``
        where the file has none (e.g. 0 for a flag that a version does not have)."""
        try:
            return self._consts[name]
        except KeyError:
            if default is not _REQUIRED:
                return default
            raise self._missing_constant(name) from None

    def has_const(self, name: str) -> bool:
        return name in self._consts

    def enum(self, name: str) -> Dict[str, int]:
        """One enum's constants, enumerator -> value (shared: do not modify it)."""
        try:
            return self._enums[name]
        except KeyError:
            raise LayoutKeyError(f"{self.label} table has no enum {name!r}") from None

    # -- lookups -----------------------------------------------------------------------------------
    def _struct_name(self, struct: str) -> str:
        name = _strip_keyword(struct)
        if name not in self._sizes:
            raise LayoutKeyError(self.NO_STRUCT.format(label=self.label, struct=struct, file=self._file))
        return name

    def _member(self, struct: str, member: str) -> Member:
        members = self._members.get(struct)
        if members is None:
            struct = self._struct_name(struct)
            members = self._members[struct]
        try:
            return members[member]
        except KeyError:
            if member in self._ambiguous.get(struct, ()):
                raise LayoutKeyError(f"{self.label}: {struct}.{member} is ambiguous (declared in two base "
                                     f"classes); name the base, e.g. base_class_1.<member>") from None
            raise LayoutKeyError(f"{self.label}: {struct} has no member {member!r}") from None

    def _missing_constant(self, name: str) -> LayoutKeyError:
        sources = self._const_sources.get(name)
        if sources:
            return LayoutKeyError(f"{self.label}: {name} has different values in the enums {', '.join(sources)}; "
                                  f"read it from one of them (enum())")
        return LayoutKeyError(self.NO_CONSTANT.format(label=self.label, name=name, file=self._file))

    def _type_size(self, described: dict) -> int:
        kind = described["kind"]
        if kind in AGGREGATE_KINDS:
            return self._sizes[described["name"]]
        if kind == "pointer":
            return POINTER_SIZE
        if kind == "array":
            return described["count"] * self._type_size(described["subtype"])
        if kind in ("base", "enum"):
            return self._scalar_sizes[kind, described["name"]]
        raise LayoutKeyError(f"a {kind} member has no byte size")

    @property
    def _file(self) -> str:
        return os.path.basename(self.source)


def _strip_keyword(struct: str) -> str:
    for keyword in ("struct ", "union "):
        if struct.startswith(keyword):
            return struct[len(keyword):]
    return struct


def _flatten(name: str, user_types: dict, done: Dict[str, Flattened]) -> Flattened:
    """Every member path of a struct -> (offset, type), plus the names that are ambiguous.

    Paths go through embedded structs (dotted) and through anonymous fields by their name
    (``base_class_0.refcount_``); members of anonymous fields (base classes, anonymous unions) are
    also reachable directly.  As in C++ name lookup, a struct's own members hide inherited ones, and a
    name inherited from two bases with different meanings is ambiguous (left out).  C forbids both
    cases, so for C structs this is C's own flattening.
    """
    if name in done:
        return done[name]
    fields = user_types[name]["fields"]
    own: Dict[str, Member] = {}
    inherited: Dict[str, Member] = {}
    ambiguous: Set[str] = set()
    for field_name, field in fields.items():
        described, offset = field["type"], field["offset"]
        own[field_name] = (offset, described)
        nested = described["name"] if described["kind"] in AGGREGATE_KINDS else None
        if nested not in user_types:
            continue
        nested_members, nested_ambiguous = _flatten(nested, user_types, done)
        for path, (inner, inner_type) in nested_members.items():
            own[f"{field_name}.{path}"] = (offset + inner, inner_type)
        ambiguous |= {f"{field_name}.{path}" for path in nested_ambiguous}
        if field.get("anonymous"):
            ambiguous |= nested_ambiguous
            for path, (inner, inner_type) in nested_members.items():
                entry = (offset + inner, inner_type)
                if inherited.setdefault(path, entry) != entry:
                    ambiguous.add(path)
    named = {field_name for field_name, field in fields.items() if not field.get("anonymous")}
    for path, entry in inherited.items():
        if path.split(".", 1)[0] not in named and path not in ambiguous:
            own.setdefault(path, entry)
    done[name] = (own, ambiguous - set(own))
    return done[name]


def _merge_constants(enums: Dict[str, Dict[str, int]]) -> Tuple[Dict[str, int], Dict[str, List[str]]]:
    """The constants of all enums in one namespace, as C has them, and for each name that two enums
    give different values (a derived table keyed by enumerator names), the enums that define it."""
    merged: Dict[str, int] = {}
    sources: Dict[str, List[str]] = {}
    for enum_name, constants in enums.items():
        for name, value in constants.items():
            sources.setdefault(name, []).append(enum_name)
            merged.setdefault(name, value)
    clashing = {name: enum_names for name, enum_names in sources.items()
                if any(enums[enum_name][name] != merged[name] for enum_name in enum_names)}
    for name in clashing:
        del merged[name]
    return merged, clashing


def version_key(version: str) -> Tuple[int, ...]:
    """"3.10" -> (3, 10): versions sort by number, not as text."""
    return tuple(int(part) for part in version.split("."))


def read_isf(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class ShippedTables(Generic[TableT]):
    """The tables of one kind shipped as ``symbols/<kind>/<stem>-<version>.json``, each opened once.

    ``open_table(version, path)`` makes the table object; ``load(version)`` takes the version as the
    file names spell it ("3.11", "2.13.0") and refuses one that is not shipped with
    ``"<product> <version> is not supported (supported: ...)"``, the supported versions given as a
    span ("3.7-3.13") when ``span`` is set, else listed.
    """

    def __init__(self, kind: str, stem: str, product: str, open_table: Callable[[str, str], TableT],
                 span: bool = False):
        self.folder = os.path.join(SYMBOLS_ROOT, kind)
        self.stem = stem
        self.product = product
        self._open_table = open_table
        self._span = span
        self._file = re.compile(re.escape(stem) + r"-(\d+(?:\.\d+)+)\.json")
        self._opened: Dict[str, TableT] = {}

    @functools.cached_property
    def versions(self) -> Tuple[str, ...]:
        """Versions with a shipped table, oldest first."""
        found = [match.group(1) for match in map(self._file.fullmatch, os.listdir(self.folder)) if match]
        return tuple(sorted(found, key=version_key))

    def path(self, version: str, stem: Optional[str] = None) -> str:
        """The file of ``version`` (another file of the same version with ``stem``: "opcodes")."""
        return os.path.join(self.folder, f"{stem or self.stem}-{version}.json")

    def load(self, version: str) -> TableT:
        table = self._opened.get(version)
        if table is None:
            if version not in self.versions:
                raise UnsupportedVersionError(f"{self.product} {version} is not supported "
                                              f"(supported: {self._supported()})")
            table = self._opened.setdefault(version, self._open_table(version, self.path(version)))
        return table

    def _supported(self) -> str:
        if not self.versions:
            return "none installed"
        return f"{self.versions[0]}-{self.versions[-1]}" if self._span else ", ".join(self.versions)
