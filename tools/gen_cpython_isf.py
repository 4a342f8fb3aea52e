#!/usr/bin/env python3
"""Generate the per-version CPython layout tables (Volatility ISF) and opcode tables.

The readers in ``volatility3_zen.zenlib.readers.cpython`` need no hard-coded offset: every struct layout comes
from the DWARF of a libpython built with ``-g`` (pyenv ``--enable-shared``), every constant from that
version's own headers (expanded by the C preprocessor, so ``#if`` branches resolve as in the build), and
every de-quickening table from the bytes of that libpython (``.symtab`` + DWARF array size).  Nothing is
taken from the interpreter running this script, because the tables differ between minor versions.

    python tools/gen_cpython_isf.py --python /root/.pyenv/versions/3.12.1
    python tools/gen_cpython_isf.py --all          # every pyenv 3.7+ interpreter, newest patch per minor

Output is deterministic (sorted keys, no timestamps): regenerating from the same build gives the same
bytes, which the test suite checks.  DWARF walking, ISF rendering, writing and the command line are
shared with the PyTorch generator (``tools/isf_builder.py``); this file says what CPython needs.
"""

import argparse
import dataclasses
import json
import operator
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from elftools.elf.elffile import ELFFile

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.isf_builder import (AGGREGATES, CDwarf, IsfBuilder, MemberContext, array_counts, attr_int,  # noqa: E402
                               isf_document, run_cli, sha256_file, write_json)

PRODUCER = {"name": "volatility3-zen/tools/gen_cpython_isf.py", "version": "1.0.0"}
MIN_VERSION = (3, 7)
Version = Tuple[int, int]


# --------------------------------------------------------------------------------------------------
# What is extracted (edit these lists, not the code below)
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TypeSpec:
    """A struct the readers use, under its C typedef name (or its tag where no typedef exists)."""

    name: str
    since: Version = MIN_VERSION
    until: Version = (3, 99)

    def wanted(self, version: Version) -> bool:
        return self.since <= version <= self.until


ROOT_TYPES = (
    TypeSpec("PyObject"),
    TypeSpec("PyVarObject"),
    TypeSpec("PyTypeObject"),
    TypeSpec("PyHeapTypeObject"),
    TypeSpec("PyCodeObject"),
    TypeSpec("PyFunctionObject"),
    TypeSpec("PyTupleObject"),
    TypeSpec("PyListObject"),
    TypeSpec("PyBytesObject"),
    TypeSpec("PyASCIIObject"),
    TypeSpec("PyCompactUnicodeObject"),
    TypeSpec("PyUnicodeObject"),
    TypeSpec("PyLongObject"),
    TypeSpec("_PyLongValue", since=(3, 12)),
    TypeSpec("PyFloatObject"),
    TypeSpec("PyComplexObject"),
    TypeSpec("Py_complex"),
    TypeSpec("PyDictObject"),
    TypeSpec("PyDictKeysObject"),
    TypeSpec("PyDictKeyEntry"),
    TypeSpec("PyDictUnicodeEntry", since=(3, 11)),
    TypeSpec("PyDictValues", since=(3, 11)),
    TypeSpec("PyModuleObject"),
    TypeSpec("PyCellObject"),
    TypeSpec("PySetObject"),
    TypeSpec("setentry"),
    TypeSpec("PyMethodObject"),
    TypeSpec("classmethod"),  # Objects/funcobject.c
    TypeSpec("staticmethod"),  # Objects/funcobject.c
    TypeSpec("propertyobject"),  # Objects/descrobject.c
    TypeSpec("PyGenObject"),
    TypeSpec("PyGC_Head"),
    TypeSpec("_PyRuntimeState"),
    TypeSpec("PyInterpreterState"),
    TypeSpec("PyThreadState"),
    TypeSpec("PyFrameObject"),  # the frame itself up to 3.10; the Python-level wrapper after
    TypeSpec("_PyCFrame", since=(3, 11), until=(3, 12)),  # tstate->cframe->current_frame
    TypeSpec("_PyInterpreterFrame", since=(3, 11)),
    TypeSpec("_gc_runtime_state"),  # no public typedef (GCState is a gcmodule.c-local alias)
    TypeSpec("gc_generation"),
    TypeSpec("_PyCoCached", since=(3, 12)),
    TypeSpec("_PyCoMonitoringData", since=(3, 12)),
    TypeSpec("_PyCoLineInstrumentationData", since=(3, 12)),
    TypeSpec("_Py_LocalMonitors", since=(3, 12)),
    TypeSpec("_Py_DebugOffsets", since=(3, 13)),
    TypeSpec("_PyExecutorArray", since=(3, 13)),  # ENTER_EXECUTOR keeps the original op here
    TypeSpec("_PyExecutorObject", since=(3, 13)),
    TypeSpec("_PyVMData", since=(3, 13)),
)

# Struct members embedded by value whose type is defined outside the parent but is walked by readers.
# (Types defined inside the parent's own definition, named or anonymous, are always described.)
EXTRA_NESTED = frozenset({
    ("PyInterpreterState", "imports"),  # imports.modules (3.12+)
})

# C enums exported whole, besides those that type a described member.
EXTRA_ENUMS = ("PyUnicode_Kind", "DictKeysKind")

# Cross-check symbols (address relative to libpython's load base), when the ELF has them.
CROSS_CHECK_SYMBOLS = ("_PyRuntime", "Py_Version", "_PyOpcode_Deopt", "_PyOpcode_Caches", "DE_INSTRUMENT")

# Headers preprocessed for macro constants; missing ones are skipped (__has_include).
CONSTANT_HEADERS = ("Python.h", "longintrepr.h", "pycore_gc.h", "pycore_code.h", "pycore_dict.h",
                    "pycore_object.h", "pycore_long.h")

# Macro constants, grouped into one ISF enum each ("macros_<group>").
MACRO_GROUPS = {
    "Py_TPFLAGS": r"Py_TPFLAGS_\w+",
    "CO": r"CO_\w+",  # code flags, CO_FAST_* local kinds (3.11+)
    "PyGC": r"_PyGC_\w+",  # _PyGC_PREV_* (3.8+), _PyGC_REFS_* (3.7)
    "PY_VERSION": r"PY_VERSION_HEX|PY_(MAJOR|MINOR|MICRO)_VERSION|PY_RELEASE_(LEVEL|SERIAL)",
    "SSTATE": r"SSTATE_\w+",  # str interning state
    "PyLong": r"PyLong_SHIFT|_PyLong_NON_SIZE_BITS|NON_SIZE_BITS|SIGN_(MASK|ZERO|NEGATIVE)",
    "object_layout": r"MANAGED_(DICT|WEAKREF)_OFFSET|_Py_IMMORTAL_REFCNT",
    "DKIX": r"DKIX_\w+",  # dict index sentinels (3.11+ headers)
}

# Opcodes named in the opcode tables' "constants" when the version has them.
OPCODE_CONSTANTS = ("CACHE", "EXTENDED_ARG", "EXTENDED_ARG_QUICK", "RESUME", "INSTRUMENTED_LINE",
                    "INSTRUMENTED_INSTRUCTION", "ENTER_EXECUTOR")


# --------------------------------------------------------------------------------------------------
# The build being described
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """One installed CPython build: interpreter, libpython with DWARF, headers."""

    prefix: str
    python: str
    libpython: str
    include: str
    version: Tuple[int, int, int]
    hexversion: int

    @property
    def minor(self) -> Version:
        return self.version[:2]

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))


def find_target(prefix: str) -> Target:
    prefix = os.path.abspath(prefix)
    python = os.path.join(prefix, "bin", "python3")
    out = subprocess.run([python, "-I", "-c", "import sys; print(*sys.version_info[:3], sys.hexversion)"],
                         check=True, capture_output=True, text=True).stdout.split()
    version, hexversion = tuple(int(x) for x in out[:3]), int(out[3])
    lib_dir, short = os.path.join(prefix, "lib"), "%d.%d" % version[:2]
    libs = sorted(f for f in os.listdir(lib_dir) if re.fullmatch(r"libpython%sm?\.so\.1\.0" % re.escape(short), f))
    includes = sorted(d for d in os.listdir(os.path.join(prefix, "include")) if d.startswith("python" + short))
    if not libs or not includes:
        raise SystemExit(f"{prefix}: needs a shared libpython{short} (--enable-shared) and its headers")
    return Target(prefix, python, os.path.join(lib_dir, libs[0]), os.path.join(prefix, "include", includes[0]),
                  version, hexversion)


def all_targets(pyenv_root: str) -> List[Target]:
    """The newest patch release of every minor version >= 3.7 installed under pyenv."""
    newest: Dict[Version, Tuple[int, ...]] = {}
    for name in os.listdir(os.path.join(pyenv_root, "versions")):
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", name)
        if match:
            parts = tuple(int(x) for x in match.groups())
            if parts[:2] >= MIN_VERSION and parts > newest.get(parts[:2], ()):
                newest[parts[:2]] = parts
    return [find_target(os.path.join(pyenv_root, "versions", "%d.%d.%d" % v)) for _, v in sorted(newest.items())]


# --------------------------------------------------------------------------------------------------
# Which embedded structs are described
# --------------------------------------------------------------------------------------------------

class CPythonIsfBuilder(IsfBuilder):
    """``IsfBuilder`` with CPython's choice of embedded structs: one is described field by field when
    it is a root, anonymous, defined inside its parent's definition or listed in EXTRA_NESTED;
    otherwise it is an opaque stub (size, no fields), which keeps the files small.  Roots keep their
    TypeSpec names (the typedef); other structs are named by tag, else typedef.
    """

    def wants_fields(self, die, context: MemberContext) -> bool:
        if self.root_name(die) or self.index.name_of(die) is None:
            return True
        if (context.parent_name, context.member) in EXTRA_NESTED:
            return True
        parent = context.parent
        same_file = attr_int(die, "DW_AT_decl_file") == attr_int(parent, "DW_AT_decl_file")
        line = attr_int(die, "DW_AT_decl_line", -1)
        return same_file and attr_int(parent, "DW_AT_decl_line", 0) <= line <= context.last_line

    def symbol_type(self, die) -> Optional[dict]:
        """A global variable's type: base types, arrays of them and root structs (else None)."""
        if die is None:
            return None
        die = self.index.strip(die)
        if die.tag in AGGREGATES:
            root = self.root_name(die)
            return {"kind": AGGREGATES[die.tag], "name": root} if root else None
        element = die
        while element.tag == "DW_TAG_array_type":
            element = self.index.strip(element.get_DIE_from_attribute("DW_AT_type"))
        return self.describe(die, MemberContext(None, "", "", 0)) if element.tag == "DW_TAG_base_type" else None


# --------------------------------------------------------------------------------------------------
# Macro constants: the build's headers through the C preprocessor, evaluated here
# --------------------------------------------------------------------------------------------------

C_INTEGER_TYPES = {  # name -> (bits, signed) for casts in constant expressions (x86_64, LP64)
    "char": (8, True), "signed char": (8, True), "unsigned char": (8, False), "short": (16, True),
    "unsigned short": (16, False), "int": (32, True), "unsigned": (32, False), "unsigned int": (32, False),
    "long": (64, True), "unsigned long": (64, False), "long long": (64, True), "unsigned long long": (64, False),
    "int8_t": (8, True), "uint8_t": (8, False), "int16_t": (16, True), "uint16_t": (16, False),
    "int32_t": (32, True), "uint32_t": (32, False), "int64_t": (64, True), "uint64_t": (64, False),
    "Py_ssize_t": (64, True), "ssize_t": (64, True), "intptr_t": (64, True), "size_t": (64, False),
    "uintptr_t": (64, False), "Py_hash_t": (64, True), "Py_uhash_t": (64, False),
}
C_TOKEN = re.compile(r"\s*(?:(0[xX][0-9a-fA-F]+|\d+)[uUlL]*|([A-Za-z_]\w*)"
                     r"|(<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!()<>?:]))")
BINARY_OPERATORS = {  # operator -> (precedence, function); C's / and % truncate toward zero
    "||": (1, lambda a, b: int(bool(a or b))), "&&": (2, lambda a, b: int(bool(a and b))),
    "|": (3, operator.or_), "^": (4, operator.xor), "&": (5, operator.and_),
    "==": (6, lambda a, b: int(a == b)), "!=": (6, lambda a, b: int(a != b)),
    "<": (7, lambda a, b: int(a < b)), ">": (7, lambda a, b: int(a > b)),
    "<=": (7, lambda a, b: int(a <= b)), ">=": (7, lambda a, b: int(a >= b)),
    "<<": (8, operator.lshift), ">>": (8, operator.rshift), "+": (9, operator.add), "-": (9, operator.sub),
    "*": (10, operator.mul), "/": (10, lambda a, b: c_divide(a, b)[0]), "%": (10, lambda a, b: c_divide(a, b)[1]),
}


class CExpressionError(ValueError):
    pass


def c_divide(left: int, right: int) -> Tuple[int, int]:
    if right == 0:
        raise CExpressionError("division by zero")
    quotient = abs(left) // abs(right) * (1 if (left < 0) == (right < 0) else -1)
    return quotient, left - quotient * right


def c_int(literal: str) -> int:
    """An integer literal without its suffix; a leading 0 means octal, as in C."""
    return int(literal, 8) if re.fullmatch(r"0\d+", literal) else int(literal, 0)


def wrap(value: int, bits: int, signed: bool) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if signed and value >> (bits - 1) else value


class CConstantExpression:
    """Evaluates a preprocessed C integer constant expression: literals, casts, sizeof of pointers and
    integer types, unary/binary/ternary operators.  Anything else (a leftover identifier, a string)
    raises CExpressionError, so only true integer constants end up in the tables."""

    def __init__(self, text: str):
        self.tokens, pos = [], 0
        text = text.strip()
        while pos < len(text):
            match = C_TOKEN.match(text, pos)
            if not match:
                raise CExpressionError(f"cannot tokenize {text!r}")
            number, word, op = match.groups()
            self.tokens.append(("num", c_int(number)) if number else ("word", word) if word else ("op", op))
            pos = match.end()
        self.pos = 0

    def value(self) -> int:
        result = self.conditional()
        if self.pos != len(self.tokens):
            raise CExpressionError("trailing tokens")
        return result

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def take(self, expected: Optional[str] = None):
        token = self.peek()
        if token[0] is None or (expected is not None and token[1] != expected):
            raise CExpressionError(f"expected {expected!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def conditional(self) -> int:
        condition = self.binary_chain(1)
        if self.peek() != ("op", "?"):
            return condition
        self.take()
        then = self.conditional()
        self.take(":")
        otherwise = self.conditional()
        return then if condition else otherwise

    def binary_chain(self, min_precedence: int) -> int:
        """Precedence climbing over BINARY_OPERATORS (all left-associative)."""
        left = self.unary()
        while True:
            kind, op = self.peek()
            precedence, function = BINARY_OPERATORS.get(op, (0, None)) if kind == "op" else (0, None)
            if function is None or precedence < min_precedence:
                return left
            self.take()
            left = function(left, self.binary_chain(precedence + 1))

    def unary(self) -> int:
        kind, token = self.take()
        if kind == "num":
            return token
        if kind == "word" and token == "sizeof":
            self.take("(")
            size = self.type_size(self.type_name())
            self.take(")")
            return size
        if kind == "op" and token in "-+~!":
            operand = self.unary()
            return {"-": -operand, "+": operand, "~": ~operand, "!": int(not operand)}[token]
        if kind == "op" and token == "(":
            if self.peek()[0] == "word" and self.peek()[1] != "sizeof":
                bits, signed = C_INTEGER_TYPES.get(self.type_name(), (None, None))
                self.take(")")
                if bits is None:
                    raise CExpressionError("cast to an unknown type")
                return wrap(self.unary(), bits, signed)
            inner = self.conditional()
            self.take(")")
            return inner
        raise CExpressionError(f"unexpected {token!r}")

    def type_name(self) -> str:
        words = []
        while self.peek()[0] == "word" or self.peek()[1] == "*":
            words.append(self.take()[1])
        return " ".join(words).replace(" *", "*")

    @staticmethod
    def type_size(type_name: str) -> int:
        if type_name.endswith("*"):
            return 8
        if type_name in C_INTEGER_TYPES:
            return C_INTEGER_TYPES[type_name][0] // 8
        raise CExpressionError(f"sizeof({type_name})")


def normalize_constant(value: int) -> int:
    """Unsigned 64-bit masks computed with Python's unbounded ints are wrapped back to 64 bits."""
    return value & 0xFFFFFFFFFFFFFFFF if value >= 1 << 64 else value


def run_cpp(target: Target, source: str, *flags: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as fh:
        fh.write(source)
    try:
        return subprocess.run(["cpp", *flags, "-DPy_BUILD_CORE", "-I", target.include,
                               "-I", os.path.join(target.include, "internal"), fh.name],
                              check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(fh.name)


def macro_constants(target: Target) -> Dict[str, Dict[str, int]]:
    """{group: {macro: value}} for the object-like macros of MACRO_GROUPS the build's headers define."""
    includes = "".join(f'#if __has_include("{h}")\n#include "{h}"\n#endif\n' for h in CONSTANT_HEADERS)
    defined = re.findall(r"^#define (\w+) ", run_cpp(target, includes, "-dM"), re.M)
    patterns = {group: re.compile(pattern) for group, pattern in MACRO_GROUPS.items()}
    wanted = sorted(name for name in set(defined) if any(p.fullmatch(name) for p in patterns.values()))
    probes = "".join(f"\n@zen@ {number} @ {name}\n" for number, name in enumerate(wanted))
    groups: Dict[str, Dict[str, int]] = {}
    for line in run_cpp(target, includes + probes, "-P").splitlines():
        if line.startswith("@zen@ "):
            number, expansion = line[6:].split(" @ ", 1)
            name = wanted[int(number)]
            try:
                value = normalize_constant(CConstantExpression(expansion).value())
            except CExpressionError:
                continue  # not an integer constant (e.g. a string or an expression over a variable)
            group = next(g for g, p in patterns.items() if p.fullmatch(name))
            groups.setdefault(group, {})[name] = value
    return groups


def macro_enums(groups: Dict[str, Dict[str, int]], base_types: Dict[str, dict]) -> Dict[str, dict]:
    enums = {}
    for group, constants in groups.items():
        base = "long int" if min(constants.values()) < 0 else "long unsigned int"
        base_types.setdefault(base, {"kind": "int", "size": 8, "signed": base == "long int", "endian": "little"})
        enums["macros_" + group] = {"size": 8, "base": base, "constants": constants}
    return enums


# --------------------------------------------------------------------------------------------------
# ELF: symbols and constant arrays
# --------------------------------------------------------------------------------------------------

class ElfData:
    """Symbol addresses (relative to the load base) and the bytes of read-only data."""

    def __init__(self, elf: ELFFile):
        self.elf = elf
        self.base = min(seg["p_vaddr"] for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD") & ~0xFFF
        self.symbols: Dict[str, List[Tuple[int, int]]] = {}
        for section_name in (".symtab", ".dynsym"):
            section = elf.get_section_by_name(section_name)
            for symbol in section.iter_symbols() if section else ():
                if symbol["st_info"]["type"] == "STT_OBJECT" and symbol["st_shndx"] != "SHN_UNDEF":
                    entry = (symbol["st_value"], symbol["st_size"])
                    if entry not in self.symbols.setdefault(symbol.name, []):
                        self.symbols[symbol.name].append(entry)

    def _unique(self, name: str) -> Optional[Tuple[int, int]]:
        """(st_value, st_size) of a data symbol; local symbols may repeat across files, so insist on one."""
        entries = self.symbols.get(name, [])
        if len(entries) > 1:
            raise SystemExit(f"symbol {name} is defined {len(entries)} times; which one is meant?")
        return entries[0] if entries else None

    def address(self, name: str) -> Optional[int]:
        entry = self._unique(name)
        return entry[0] - self.base if entry else None

    def read(self, name: str, size: int) -> bytes:
        vaddr, symbol_size = self._unique(name)
        if symbol_size != size:
            raise SystemExit(f"{name}: .symtab says {symbol_size} bytes, DWARF says {size}")
        for section in self.elf.iter_sections():
            start = section["sh_addr"]
            if section["sh_type"] != "SHT_NOBITS" and start <= vaddr and vaddr + size <= start + section["sh_size"]:
                return section.data()[vaddr - start:vaddr - start + size]
        raise SystemExit(f"{name} at 0x{vaddr:x} is not in a section with file contents")


def byte_table(elf: ElfData, index: CDwarf, name: str) -> Optional[List[int]]:
    """A ``uint8_t name[N]`` array from the library's data, sized by its DWARF type."""
    die = index.variable_type(name)
    if die is None or name not in elf.symbols:
        return None
    die = index.strip(die)
    if die.tag != "DW_TAG_array_type" or len(array_counts(die)) != 1 \
            or attr_int(index.strip(die.get_DIE_from_attribute("DW_AT_type")), "DW_AT_byte_size") != 1:
        raise SystemExit(f"{name} is not a one-dimensional array of bytes")
    return list(elf.read(name, array_counts(die)[0]))


# --------------------------------------------------------------------------------------------------
# Putting one version together
# --------------------------------------------------------------------------------------------------

INTERPRETER_PROBE = r"""
import dis, json, opcode
opmap = getattr(dis, "_all_opmap", opcode.opmap)
print(json.dumps({
    "opname": list(getattr(dis, "_all_opname", opcode.opname))[:256],
    "opname_source": "dis._all_opname" if hasattr(dis, "_all_opname") else "opcode.opname",
    "opmap": dict((k, v) for k, v in opmap.items() if v < 256),
    "HAVE_ARGUMENT": opcode.HAVE_ARGUMENT,
    "MIN_INSTRUMENTED_OPCODE": getattr(opcode, "MIN_INSTRUMENTED_OPCODE", None),
}))
"""


def library_metadata(target: Target, sha256: str) -> dict:
    return {"cpython_version": target.version_string, "libpython": target.libpython, "libpython_sha256": sha256}


def build_isf(target: Target, elf: ElfData, index: CDwarf, sha256: str) -> dict:
    roots = [spec.name for spec in ROOT_TYPES if spec.wanted(target.minor)]
    builder = CPythonIsfBuilder(index, roots)
    builder.build()
    for enum_name in EXTRA_ENUMS:
        die = index.named_type(enum_name)
        if die is not None and die.tag == "DW_TAG_enumeration_type":
            builder.add_enum(die, enum_name)
    macros = macro_constants(target)
    if macros["PY_VERSION"]["PY_VERSION_HEX"] != target.hexversion:
        raise SystemExit(f"{target.include} does not belong to {target.python}")
    enums = dict(builder.enums, **macro_enums(macros, builder.base_types))
    duplicated = {c for e in builder.enums.values() for c in e["constants"]} & {c for g in macros.values() for c in g}
    if duplicated:
        raise SystemExit(f"constants both in a C enum and a macro: {sorted(duplicated)}")
    item = {"name": os.path.basename(target.libpython), "hash_type": "sha256", "hash_value": sha256}
    return isf_document(builder, dict(PRODUCER, **library_metadata(target, sha256)), enums=enums,
                        symbols=cross_check_symbols(builder, elf, index),
                        linux={"symbols": [dict(item, kind="symtab")], "types": [dict(item, kind="dwarf")]})


def cross_check_symbols(builder: CPythonIsfBuilder, elf: ElfData, index: CDwarf) -> Dict[str, dict]:
    symbols = {}
    for name in CROSS_CHECK_SYMBOLS:
        address = elf.address(name)
        if address is not None:
            symbols[name] = {"address": address}
            described = builder.symbol_type(index.variable_type(name))
            if described is not None:
                symbols[name]["type"] = described
    return symbols


def de_instrument_table(elf: ElfData, index: CDwarf, opmap: Dict[str, int]) -> Tuple[Dict[str, int], str]:
    """INSTRUMENTED_X -> X as ``_Py_GetBaseOpcode`` uses it (keys are strings: JSON object keys)."""
    table = byte_table(elf, index, "DE_INSTRUMENT")
    if table is not None:
        source = "ELF .symtab DE_INSTRUMENT (static in Python/instrumentation.c), non-zero entries"
        return {str(op): base for op, base in enumerate(table) if base}, source
    derived = {str(op): opmap[name[len("INSTRUMENTED_"):]] for name, op in opmap.items()
               if name.startswith("INSTRUMENTED_") and name[len("INSTRUMENTED_"):] in opmap}
    return derived, "derived from the interpreter's INSTRUMENTED_* opcode names"


def build_opcodes(target: Target, elf: ElfData, index: CDwarf, sha256: str) -> dict:
    probe = json.loads(subprocess.run([target.python, "-I", "-c", INTERPRETER_PROBE], check=True,
                                      capture_output=True, text=True).stdout)
    opmap = probe["opmap"]
    constants = {name: opmap[name] for name in OPCODE_CONSTANTS if name in opmap}
    constants["HAVE_ARGUMENT"] = probe["HAVE_ARGUMENT"]
    if probe["MIN_INSTRUMENTED_OPCODE"] is not None:
        constants["MIN_INSTRUMENTED_OPCODE"] = probe["MIN_INSTRUMENTED_OPCODE"]
    tables = {"opname": probe["opname"]}
    sources = {"opname": f"{probe['opname_source']} of {target.python}",
               "constants": f"opcode.opmap / dis._all_opmap of {target.python}"}
    for key, symbol in (("deopt", "_PyOpcode_Deopt"), ("caches", "_PyOpcode_Caches")):
        table = byte_table(elf, index, symbol)
        if table is not None:
            tables[key], sources[key] = table, f"ELF .symtab {symbol} (DWARF: uint8_t[{len(table)}])"
    if "deopt" in tables:
        extended_arg = opmap["EXTENDED_ARG"]
        tables["extended_arg_opcodes"] = [op for op, base in enumerate(tables["deopt"]) if base == extended_arg]
        sources["extended_arg_opcodes"] = "every opcode whose deopt is EXTENDED_ARG"
    if "INSTRUMENTED_LINE" in opmap:
        tables["de_instrument"], sources["de_instrument"] = de_instrument_table(elf, index, opmap)
    return dict(tables, metadata=dict(PRODUCER, **library_metadata(target, sha256)), constants=constants,
                sources=sources)


def generate(target: Target, out_dir: str) -> List[str]:
    """Write cpython-3.X.json and opcodes-3.X.json for one build; return their paths."""
    sha256 = sha256_file(target.libpython)
    with open(target.libpython, "rb") as fh:
        elf_file = ELFFile(fh)
        index, elf = CDwarf(elf_file), ElfData(elf_file)
        outputs = {"cpython": build_isf(target, elf, index, sha256),
                   "opcodes": build_opcodes(target, elf, index, sha256)}
    paths = []
    for stem, obj in outputs.items():
        paths.append(os.path.join(out_dir, "%s-%d.%d.json" % ((stem,) + target.minor)))
        write_json(paths[-1], obj)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--python", action="append", default=[], metavar="PREFIX",
                        help="installation prefix of a CPython build (repeatable), e.g. /root/.pyenv/versions/3.12.1")
    parser.add_argument("--all", action="store_true", help="every pyenv interpreter >= 3.7 (newest patch per minor)")
    parser.add_argument("--pyenv-root", default=os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")))


def generate_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Iterator[Tuple[str, str]]:
    targets = [find_target(p) for p in args.python] + (all_targets(args.pyenv_root) if args.all else [])
    if not targets:
        parser.error("give --python PREFIX or --all")
    return ((target.version_string, path) for target in targets for path in generate(target, args.out))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(__doc__, "cpython", argv, add_arguments, generate_all)


if __name__ == "__main__":
    sys.exit(main())
