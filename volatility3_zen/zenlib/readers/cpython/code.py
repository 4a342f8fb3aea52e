"""Reading PyCodeObject (3.7-3.13) into a ``CodeObject`` with its original bytecode.

3.7-3.10 keep co_code as a bytes object and separate varnames/cellvars/freevars tuples.  3.11+ keep
the (possibly quickened) bytecode inline in ``co_code_adaptive`` and one localsplus table with a kinds
byte string; 3.12+ may also hold instrumentation data in ``_co_monitoring``.

What only memory can tell about a code object's integrity goes into ``CodeObject.warnings``
(``integrity.py`` checks the rest and builds the Integrity column): its byte strings must be bytes
objects (a page smeared with zeros otherwise reads as an empty one), the locals counts must agree with
the locals table, and the co_code CPython cached once something asked for it (3.11 ``_co_code``,
3.12+ ``_co_cached``) must equal the restored bytecode unless that copy is itself malformed (then the
copy, not the code, was damaged).
"""

import dataclasses
import struct
from typing import List, Optional, Tuple

from ...errors import CorruptObjectError, MemoryReadError
from ...representation.program import CodeObject
from . import bytecode, integrity
from .objects import DECODE_ERRORS, MAX_STR, ObjectReader

_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
MAX_CODE = 1 << 22


class CodeReader:
    def __init__(self, objects: ObjectReader):
        self.o = objects
        L = objects.layout
        self.L = L
        self.version = L.version
        self.size = L.size("PyCodeObject")
        f = lambda m: L.offset("PyCodeObject", m)  # noqa: E731 - local shorthand
        self.int_fields = {
            name: f(name)
            for name in ("co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_nlocals", "co_stacksize",
                         "co_flags", "co_firstlineno", "co_nlocalsplus", "co_ncellvars", "co_nfreevars")
            if L.has("PyCodeObject", name)
        }
        self.ptr_fields = {
            name: f(name)
            for name in ("co_code", "co_consts", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_filename",
                         "co_name", "co_qualname", "co_lnotab", "co_linetable", "co_exceptiontable",
                         "co_localsplusnames", "co_localspluskinds", "_co_monitoring", "_co_code", "_co_cached")
            if L.has("PyCodeObject", name)
        }
        # A bytes object's type and size in one read (ob_type, then ob_size).
        self.off_header = min(objects.off_type, objects.off_size)
        self.header_size = max(objects.off_type, objects.off_size) + 8 - self.off_header
        self.bytes_type = None  # the address of PyBytes_Type, once met
        self.inline_code = L.has("PyCodeObject", "co_code_adaptive")
        if self.inline_code:
            self.off_code_adaptive = f("co_code_adaptive")
        if self.version >= (3, 11):
            self.fast_local = L.const("CO_FAST_LOCAL")
            self.fast_cell = L.const("CO_FAST_CELL")
            self.fast_free = L.const("CO_FAST_FREE")
        if "_co_cached" in self.ptr_fields:
            self.off_cached_code = L.offset("_PyCoCached", "_co_code")
        if "_co_monitoring" in self.ptr_fields:
            self.off_mon_lines = L.offset("_PyCoMonitoringData", "lines")
            self.off_mon_per_instr = L.offset("_PyCoMonitoringData", "per_instruction_opcodes")
            self.size_line_data = L.size("_PyCoLineInstrumentationData")
            self.off_line_original = L.offset("_PyCoLineInstrumentationData", "original_opcode")

    def read(self, address: int) -> CodeObject:
        raw = self.o.mem.read(address, self.size)
        ints = {name: _I32.unpack_from(raw, off)[0] for name, off in self.int_fields.items()}
        ptrs = {name: _U64.unpack_from(raw, off)[0] for name, off in self.ptr_fields.items()}
        o = self.o
        warnings: List[str] = []

        def string(name: str) -> str:
            return o.read_str(ptrs[name])

        def names(name: str) -> Tuple[str, ...]:
            return tuple(o.read_str(i) for i in o.tuple_items(ptrs[name]))

        if self.inline_code:
            units = struct.unpack_from("<q", raw, o.off_size)[0]
            if not 0 < units <= MAX_CODE:
                raise CorruptObjectError(f"code at 0x{address:x} has {units} code units")
            in_memory = o.mem.read(address + self.off_code_adaptive, 2 * units)
            code, quickened = self._restore(in_memory, ptrs.get("_co_monitoring", 0), units, warnings)
        else:
            code, quickened = self._bytes(ptrs["co_code"], "co_code", warnings), False

        if self.version >= (3, 11):
            localsplusnames = names("co_localsplusnames")
            kinds = self._bytes(ptrs["co_localspluskinds"], "co_localspluskinds", warnings)
            varnames = tuple(n for n, k in zip(localsplusnames, kinds) if k & self.fast_local)
            cellvars = tuple(n for n, k in zip(localsplusnames, kinds) if k & self.fast_cell)
            freevars = tuple(n for n, k in zip(localsplusnames, kinds) if k & self.fast_free)
        else:
            localsplusnames, kinds = None, None
            varnames, cellvars, freevars = names("co_varnames"), names("co_cellvars"), names("co_freevars")
        self._check_counts(ints, varnames, cellvars, freevars, localsplusnames, kinds, warnings)

        linetable_field = "co_linetable" if "co_linetable" in ptrs else "co_lnotab"
        result = CodeObject(
            address=address,
            name=string("co_name"),
            qualname=string("co_qualname") if "co_qualname" in ptrs else None,
            filename=string("co_filename"),
            firstlineno=ints["co_firstlineno"],
            argcount=ints["co_argcount"],
            posonlyargcount=ints.get("co_posonlyargcount", 0),
            kwonlyargcount=ints["co_kwonlyargcount"],
            nlocals=ints["co_nlocals"],
            stacksize=ints["co_stacksize"],
            flags=ints["co_flags"],
            code=code,
            consts=tuple(o.read_const(c) for c in o.tuple_items(ptrs["co_consts"])),
            names=names("co_names"),
            varnames=varnames,
            cellvars=cellvars,
            freevars=freevars,
            linetable=self._bytes(ptrs[linetable_field], linetable_field, warnings),
            exceptiontable=self._bytes(ptrs["co_exceptiontable"], "co_exceptiontable", warnings) if "co_exceptiontable" in ptrs else b"",
            localsplusnames=localsplusnames,
            localspluskinds=kinds,
            quickened=quickened,
            warnings=warnings,
        )
        if self.inline_code:
            self._check_cached_code(ptrs, result)
        return result

    def _bytes(self, pointer: int, field: str, warnings: List[str]) -> bytes:
        """A bytes member, as ``ObjectReader.read_bytes`` reads it, with its type checked in the same read."""
        header = self.o.mem.read(pointer + self.off_header, self.header_size)
        size = _I64.unpack_from(header, self.o.off_size - self.off_header)[0]
        type_address = _U64.unpack_from(header, self.o.off_type - self.off_header)[0]
        if type_address != self.bytes_type:
            if self.o.kind_of_type(type_address) == "bytes":
                self.bytes_type = type_address
            else:
                warnings.append(f"{field} at 0x{pointer:x} is not a bytes object")
        if not 0 <= size <= MAX_STR * 4:
            raise CorruptObjectError(f"bytes at 0x{pointer:x} has size {size}")
        return self.o.mem.read(pointer + self.o.off_bytes_sval, size) if size else b""

    def _check_counts(self, ints, varnames, cellvars, freevars, localsplusnames, kinds, warnings: List[str]) -> None:
        """The counts CPython keeps beside the locals tables (already read) against the tables."""
        if localsplusnames is None:
            names, actual = ("co_nlocals",), (len(varnames),)
        else:
            if len(kinds) != len(localsplusnames):
                warnings.append(f"co_localspluskinds has {len(kinds)} kinds for {len(localsplusnames)} names")
            names = ("co_nlocals", "co_nlocalsplus", "co_ncellvars", "co_nfreevars")
            actual = (len(varnames), len(localsplusnames), len(cellvars), len(freevars))
        recorded = tuple(ints[name] for name in names)
        if recorded != actual:
            warnings += [f"{name} is {r} but the locals table gives {a}" for name, r, a in zip(names, recorded, actual) if r != a]

    def _check_cached_code(self, ptrs, code: CodeObject) -> None:
        """The de-quickened co_code CPython cached when something asked for ``co_code``, against ours.
        Two well-formed bytecodes that differ mean one was rewritten; a malformed or unreadable copy
        says nothing about the code (the integrity checks judge that on its own)."""
        try:
            cached = ptrs.get("_co_code", 0)
            if ptrs.get("_co_cached"):
                cached = self.o.u64(ptrs["_co_cached"] + self.off_cached_code)
            if not cached:
                return
            if self._equal_bytes(cached, code.code):
                return
            problems: List[str] = []
            copy = self._bytes(cached, "_co_code", problems)
        except DECODE_ERRORS:
            return
        if not problems and not integrity.problems([dataclasses.replace(code, code=copy, warnings=[])], self.version):
            code.warnings.append("co_code differs from the well-formed copy CPython cached of it")

    def _equal_bytes(self, pointer: int, data: bytes) -> bool:
        """Whether the bytes object at ``pointer`` holds ``data``: the usual case, in one read."""
        start = self.off_header
        try:
            raw = self.o.mem.read(pointer + start, self.o.off_bytes_sval - start + len(data))
        except DECODE_ERRORS:
            return False
        return _I64.unpack_from(raw, self.o.off_size - start)[0] == len(data) and raw[self.o.off_bytes_sval - start:] == data

    def _restore(self, in_memory: bytes, monitoring: int, units: int, warnings: List[str]) -> Tuple[bytes, bool]:
        ops = self.L.opcodes
        if self.version < (3, 12):
            return bytecode.restore_311(in_memory, ops)
        lines = per_instruction = None
        if monitoring:
            try:
                lines_ptr = self.o.u64(monitoring + self.off_mon_lines)
                instr_ptr = self.o.u64(monitoring + self.off_mon_per_instr)
                if lines_ptr:
                    raw = self.o.mem.read(lines_ptr, units * self.size_line_data)
                    lines = [raw[i * self.size_line_data + self.off_line_original] for i in range(units)]
                if instr_ptr:
                    per_instruction = list(self.o.mem.read(instr_ptr, units))
            except MemoryReadError as exc:
                warnings.append(f"instrumentation data unreadable ({exc}); instrumented opcodes may remain")
        return bytecode.restore_312(in_memory, ops, lines, per_instruction)
