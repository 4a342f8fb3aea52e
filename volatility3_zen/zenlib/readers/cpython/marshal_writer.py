"""Serialise a recovered code object to the marshal format (and .pyc) of the CPython that ran it.

The bytes are what ``marshal.loads`` of the *target* version accepts, whatever version analyses the
image, so recovered code can be loaded, disassembled or decompiled by tools made for that version.

Why a writer of our own: xdis (6.3) can read every version's marshal format but its writer
(``xdis.marsh.dumps``) cannot produce what CPython 3.7-3.13 loads: it writes ``co_lnotab`` /
``co_linetable`` as ``str`` (the target's loader rejects the code object), floats raise TypeError,
ints beyond 64 bits are silently truncated, and for 3.11+ it writes the pre-3.11
field layout (varnames/freevars/cellvars, no qualname, no exception table) -- xdis's Code311 does not
even hold ``co_localspluskinds``, which 3.11+ marshal needs.  So this module writes the format itself,
from per-version facts kept as data below (CPython's ``Python/marshal.c``, ``w_complex_object``).

What we write is marshal version 4 (the default of 3.7-3.13) without FLAG_REF back-references:
every loader accepts that, and it is byte-identical to ``marshal.dumps`` of the original once the
original's references are expanded, except where the original's string interning or frozenset order
(before 3.11 marshal did not sort sets) differs from the rules below.
"""

import functools
import struct
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Set, Tuple, Union

from ...errors import CorruptObjectError, UnsupportedVersionError
from ...representation.program import CodeObject, CodeRef
from .layouts import load_layout

Version = Tuple[int, int]
Resolver = Callable[[int], CodeObject]
FastKinds = Tuple[int, int, int]  # CO_FAST_LOCAL, CO_FAST_CELL, CO_FAST_FREE of the target version

# importlib.util.MAGIC_NUMBER of each final release (Lib/importlib/_bootstrap_external.py).
PYC_MAGIC: Dict[Version, int] = {
    (3, 7): 3394,
    (3, 8): 3413,
    (3, 9): 3425,
    (3, 10): 3439,
    (3, 11): 3495,
    (3, 12): 3531,
    (3, 13): 3571,
}

# Marshal type codes (Python/marshal.c).
TYPE_NONE = b"N"
TYPE_FALSE = b"F"
TYPE_TRUE = b"T"
TYPE_ELLIPSIS = b"."
TYPE_INT = b"i"
TYPE_LONG = b"l"
TYPE_BINARY_FLOAT = b"g"
TYPE_BINARY_COMPLEX = b"y"
TYPE_STRING = b"s"  # bytes
TYPE_INTERNED = b"t"
TYPE_UNICODE = b"u"
TYPE_ASCII = b"a"
TYPE_ASCII_INTERNED = b"A"
TYPE_SHORT_ASCII = b"z"
TYPE_SHORT_ASCII_INTERNED = b"Z"
TYPE_TUPLE = b"("
TYPE_SMALL_TUPLE = b")"
TYPE_FROZENSET = b">"
TYPE_CODE = b"c"

# Big ints are written in 15-bit digits whatever the target's internal digit size.
LONG_SHIFT = 15

# The first version whose code objects keep a "locals plus" table, with a kind byte per slot.
LOCALSPLUS_SINCE: Version = (3, 11)

# How each code-object field is written (see ``_Writer._field``):
#   int      -- 32-bit little-endian (w_long)
#   bytes    -- a bytes object
#   consts   -- the constants tuple (nested code objects resolved)
#   names    -- a tuple of interned identifiers
#   string   -- co_name, co_qualname, co_filename: interned as STRING_INTERNING says
#   localsplusnames / localspluskinds -- the 3.11+ locals table, derived when not recovered
_FIELDS_37 = (
    ("argcount", "int"),
    ("kwonlyargcount", "int"),
    ("nlocals", "int"),
    ("stacksize", "int"),
    ("flags", "int"),
    ("code", "bytes"),
    ("consts", "consts"),
    ("names", "names"),
    ("varnames", "names"),
    ("freevars", "names"),
    ("cellvars", "names"),
    ("filename", "string"),
    ("name", "string"),
    ("firstlineno", "int"),
    ("linetable", "bytes"),  # co_lnotab
)
# 3.8 adds co_posonlyargcount; 3.10 replaces co_lnotab by co_linetable in the same place.
_FIELDS_38 = _FIELDS_37[:1] + (("posonlyargcount", "int"),) + _FIELDS_37[1:]
_FIELDS_311 = (
    ("argcount", "int"),
    ("posonlyargcount", "int"),
    ("kwonlyargcount", "int"),
    ("stacksize", "int"),
    ("flags", "int"),
    ("code", "bytes"),
    ("consts", "consts"),
    ("names", "names"),
    ("localsplusnames", "localsplusnames"),
    ("localspluskinds", "localspluskinds"),
    ("filename", "string"),
    ("name", "string"),
    ("qualname", "string"),
    ("firstlineno", "int"),
    ("linetable", "bytes"),
    ("exceptiontable", "bytes"),
)
CODE_FIELDS: Dict[Version, Tuple[Tuple[str, str], ...]] = {
    (3, 7): _FIELDS_37,
    (3, 8): _FIELDS_38,
    (3, 9): _FIELDS_38,
    (3, 10): _FIELDS_38,
    (3, 11): _FIELDS_311,
    (3, 12): _FIELDS_311,
    (3, 13): _FIELDS_311,
}

# Interning only picks a string's type code ('Z' or 'z', 't' or 'u'); following the target
# compiler's choices keeps our bytes equal to its marshal.dumps (tests/test_marshal_writer.py
# measures that).  A rule: True always interned, False never, a set: identifier-like strings plus those.
InternRule = Union[bool, FrozenSet[str]]


@dataclass(frozen=True)
class Interning:
    """Which strings the compiler of one version interns.

    String constants are interned when identifier-like in every version (``intern_string_constants``).
    Still process-dependent, and so not followed: one-character strings before 3.13 (shared singletons,
    interned or not by whatever else the process did).
    """

    name: InternRule  # co_name
    filename: InternRule  # co_filename
    qualname: Optional[InternRule] = None  # co_qualname; None: the version has none (before 3.11)
    one_char_consts: bool = False  # 3.13: the 256 latin-1 one-character strings are static, interned


_INTERNING_38 = Interning(name=True, filename=False)
_INTERNING_311 = Interning(name=frozenset(), filename=False, qualname=frozenset())
STRING_INTERNING: Dict[Version, Interning] = {
    (3, 7): Interning(name=frozenset({"<module>", "<lambda>"}), filename=False),
    (3, 8): _INTERNING_38,
    (3, 9): _INTERNING_38,
    (3, 10): _INTERNING_38,
    (3, 11): _INTERNING_311,
    (3, 12): _INTERNING_311,
    (3, 13): Interning(name=True, filename=True, qualname=True, one_char_consts=True),
}


def dumps_code(code: CodeObject, resolve: Resolver, version: Version) -> bytes:
    """Marshal bytes of ``code`` as CPython ``version`` writes them; CodeRef constants go through ``resolve``."""
    writer = _Writer(supported_version(version), resolve)
    writer.code(code)
    return bytes(writer.out)


def pyc_bytes(code: CodeObject, resolve: Resolver, version: Version, mtime: int = 0, source_size: int = 0) -> bytes:
    """A timestamp-based .pyc (PEP 552 header, flags 0) holding ``code``: the form every loader and decompiler reads.

    A recovered module has no source file, so mtime and size default to 0; a loader only checks them
    against a source file that sits beside the .pyc.
    """
    magic = struct.pack("<H", PYC_MAGIC[supported_version(version)]) + b"\r\n"
    header = magic + struct.pack("<III", 0, mtime & 0xFFFFFFFF, source_size & 0xFFFFFFFF)
    return header + dumps_code(code, resolve, version)


def localsplus(code: CodeObject, version: Version) -> Tuple[Tuple[str, ...], bytes]:
    """The locals-plus table of ``code`` for a 3.11+ ``version``: the recovered one, or derived as the
    compiler lays it out.

    The compiler (``compute_localsplus_info``) puts the varnames first, marking those that are also
    cells (arguments captured by a closure), then the remaining cells, then the free variables.  The
    3.12+ CO_FAST_HIDDEN mark of inlined-comprehension locals cannot be derived; it only matters for
    ``locals()`` inside such a function.
    """
    return _localsplus(code, fast_kinds(supported_version(version)))


@functools.lru_cache(maxsize=None)
def fast_kinds(version: Version) -> FastKinds:
    """The slot kinds of a 3.11+ version's locals-plus table, from its headers (the shipped ISF)."""
    layout = load_layout(version)
    return layout.const("CO_FAST_LOCAL"), layout.const("CO_FAST_CELL"), layout.const("CO_FAST_FREE")


def _localsplus(code: CodeObject, slot_kinds: FastKinds) -> Tuple[Tuple[str, ...], bytes]:
    if code.localsplusnames is not None and code.localspluskinds is not None:
        return tuple(code.localsplusnames), bytes(code.localspluskinds)
    fast_local, fast_cell, fast_free = slot_kinds
    cells = set(code.cellvars)
    names = list(code.varnames)
    kinds = [fast_local | (fast_cell if name in cells else 0) for name in names]
    for name in code.cellvars:
        if name not in code.varnames:
            names.append(name)
            kinds.append(fast_cell)
    names.extend(code.freevars)
    kinds.extend(fast_free for _ in code.freevars)
    return tuple(names), bytes(kinds)


def supported_version(version: Version) -> Version:
    """``version`` (a version_info-like tuple) as a (major, minor) key of the tables, or
    UnsupportedVersionError."""
    key = tuple(version)[:2]
    if key not in CODE_FIELDS:
        raise UnsupportedVersionError(f"no code-object layout for CPython {version}; supported: 3.7 to 3.13")
    return key


def _interned(rule: InternRule, text: str) -> bool:
    return rule if isinstance(rule, bool) else text in rule or _is_identifier_like(text)


def _is_identifier_like(text: str) -> bool:
    """CPython interns string constants made only of ASCII letters, digits and '_' (``all_name_chars``)."""
    return text.isascii() and all(ch.isalnum() or ch == "_" for ch in text)


class _Writer:
    """Appends the marshal form of objects to ``out``; one instance writes one top-level code object."""

    def __init__(self, version: Version, resolve: Resolver):
        self.fields = CODE_FIELDS[version]
        self.interning = STRING_INTERNING[version]
        self.fast_kinds = fast_kinds(version) if version >= LOCALSPLUS_SINCE else None
        self.resolve = resolve
        self.out = bytearray()
        self._open: Set[int] = set()  # code objects being written: a cycle means corrupt memory

    def code(self, code: CodeObject) -> None:
        if code.address in self._open:
            raise CorruptObjectError(f"code object at 0x{code.address:x} contains itself")
        self._open.add(code.address)
        self.out += TYPE_CODE
        for name, kind in self.fields:
            self._field(code, name, kind)
        self._open.discard(code.address)

    def _field(self, code: CodeObject, name: str, kind: str) -> None:
        if kind == "int":
            self._int32(getattr(code, name))
        elif kind == "bytes":
            self._bytes(getattr(code, name))
        elif kind == "consts":
            shared = self._shared_strings(code)
            self._tuple(code.consts, lambda value: self._own_const(value, shared))
        elif kind == "names":
            self._names(getattr(code, name))
        elif kind == "string":
            text = getattr(code, name)
            if text is None:  # no co_qualname was recovered
                text = code.name
            self.string(text, interned=_interned(getattr(self.interning, name), text))
        elif kind == "localsplusnames":
            self._names(_localsplus(code, self.fast_kinds)[0])
        elif kind == "localspluskinds":
            self._bytes(_localsplus(code, self.fast_kinds)[1])
        else:
            raise AssertionError(f"unknown field kind {kind!r}")

    def _shared_strings(self, code: CodeObject) -> Dict[str, bool]:
        """Constants that the compiler took from a code object's own name fields, so that they are
        interned exactly as that field is: the ``__qualname__`` of a class body is its co_qualname
        (3.11+), and before 3.11 the qualname that MAKE_FUNCTION takes is the nested function's co_name
        whenever the two are equal (e.g. a module-level '<listcomp>')."""
        if self.interning.qualname is not None:
            sources = [code.qualname if code.qualname is not None else code.name]
            rule = self.interning.qualname
        else:
            sources = [self.resolve(c.address).name for c in code.consts if isinstance(c, CodeRef)]
            rule = self.interning.name
        return {text: _interned(rule, text) for text in sources}

    def _own_const(self, value, shared: Dict[str, bool]) -> None:
        if isinstance(value, str) and value in shared:
            self.string(value, interned=shared[value])
        else:
            self.const(value)

    def const(self, value) -> None:
        """One constant, typed as ``w_object`` types it (bool before int: bool is an int subclass)."""
        if value is None:
            self.out += TYPE_NONE
        elif value is Ellipsis:
            self.out += TYPE_ELLIPSIS
        elif isinstance(value, bool):
            self.out += TYPE_TRUE if value else TYPE_FALSE
        elif isinstance(value, int):
            self._int(value)
        elif isinstance(value, float):
            self.out += TYPE_BINARY_FLOAT + struct.pack("<d", value)
        elif isinstance(value, complex):
            self.out += TYPE_BINARY_COMPLEX + struct.pack("<dd", value.real, value.imag)
        elif isinstance(value, str):
            one_char = self.interning.one_char_consts and len(value) == 1 and ord(value) < 256
            self.string(value, interned=one_char or _is_identifier_like(value))
        elif isinstance(value, bytes):
            self._bytes(value)
        elif isinstance(value, tuple):
            self._tuple(value, self.const)
        elif isinstance(value, frozenset):
            self._frozenset(value)
        elif isinstance(value, CodeRef):
            self.code(self.resolve(value.address))
        else:
            raise TypeError(f"cannot marshal a {type(value).__name__} constant")

    def string(self, text: str, interned: bool) -> None:
        """ASCII strings get the compact 'a'/'z' codes (upper case when interned); others are UTF-8."""
        if text.isascii():
            data = text.encode("ascii")
            if len(data) < 256:
                self.out += (TYPE_SHORT_ASCII_INTERNED if interned else TYPE_SHORT_ASCII) + bytes([len(data)])
                self.out += data
                return
            self.out += TYPE_ASCII_INTERNED if interned else TYPE_ASCII
        else:
            data = text.encode("utf-8", "surrogatepass")
            self.out += TYPE_INTERNED if interned else TYPE_UNICODE
        self._int32(len(data))
        self.out += data

    def _int(self, value: int) -> None:
        """TYPE_INT when it fits in 32 signed bits, else TYPE_LONG: signed digit count, then 15-bit digits."""
        if -(1 << 31) <= value < (1 << 31):
            self.out += TYPE_INT
            self._int32(value)
            return
        magnitude = abs(value)
        digits = []
        while magnitude:
            digits.append(magnitude & ((1 << LONG_SHIFT) - 1))
            magnitude >>= LONG_SHIFT
        self.out += TYPE_LONG
        self._int32(len(digits) if value > 0 else -len(digits))
        for digit in digits:
            self.out += struct.pack("<H", digit)

    def _bytes(self, data: bytes) -> None:
        self.out += TYPE_STRING
        self._int32(len(data))
        self.out += data

    def _names(self, names: Iterable[str]) -> None:
        self._tuple(tuple(names), lambda name: self.string(name, interned=True))

    def _tuple(self, items: tuple, write_item: Callable) -> None:
        if len(items) < 256:
            self.out += TYPE_SMALL_TUPLE + bytes([len(items)])
        else:
            self.out += TYPE_TUPLE
            self._int32(len(items))
        for item in items:
            write_item(item)

    def _frozenset(self, items: frozenset) -> None:
        """Elements sorted by their marshal form, as 3.11+ does, so the bytes do not depend on hashing."""
        encoded = []
        for item in items:
            start = len(self.out)
            self.const(item)
            encoded.append(bytes(self.out[start:]))
            del self.out[start:]
        self.out += TYPE_FROZENSET
        self._int32(len(encoded))
        for data in sorted(encoded):
            self.out += data

    def _int32(self, value: int) -> None:
        self.out += struct.pack("<I", value & 0xFFFFFFFF)
