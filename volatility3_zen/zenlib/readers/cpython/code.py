"""Reading PyCodeObject (3.7-3.13) into a ``CodeObject`` with its original bytecode.

3.7-3.10 keep co_code as a bytes object and separate varnames/cellvars/freevars tuples.  3.11+ keep
the (possibly quickened) bytecode inline in ``co_code_adaptive`` and one localsplus table with a kinds
byte string; 3.12+ may also hold instrumentation data in ``_co_monitoring``.
"""

import struct
from typing import List, Tuple

from ...errors import CorruptObjectError, MemoryReadError
from ...representation.program import CodeObject
from . import bytecode
from .objects import ObjectReader

_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
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
                         "co_flags", "co_firstlineno")
            if L.has("PyCodeObject", name)
        }
        self.ptr_fields = {
            name: f(name)
            for name in ("co_code", "co_consts", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_filename",
                         "co_name", "co_qualname", "co_lnotab", "co_linetable", "co_exceptiontable",
                         "co_localsplusnames", "co_localspluskinds", "_co_monitoring")
            if L.has("PyCodeObject", name)
        }
        self.inline_code = L.has("PyCodeObject", "co_code_adaptive")
        if self.inline_code:
            self.off_code_adaptive = f("co_code_adaptive")
        if self.version >= (3, 11):
            self.fast_local = L.const("CO_FAST_LOCAL")
            self.fast_cell = L.const("CO_FAST_CELL")
            self.fast_free = L.const("CO_FAST_FREE")
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
            code, quickened = o.read_bytes(ptrs["co_code"]), False

        if self.version >= (3, 11):
            localsplusnames = names("co_localsplusnames")
            kinds = o.read_bytes(ptrs["co_localspluskinds"])
            varnames = tuple(n for n, k in zip(localsplusnames, kinds) if k & self.fast_local)
            cellvars = tuple(n for n, k in zip(localsplusnames, kinds) if k & self.fast_cell)
            freevars = tuple(n for n, k in zip(localsplusnames, kinds) if k & self.fast_free)
        else:
            localsplusnames, kinds = None, None
            varnames, cellvars, freevars = names("co_varnames"), names("co_cellvars"), names("co_freevars")

        linetable_field = "co_linetable" if "co_linetable" in ptrs else "co_lnotab"
        return CodeObject(
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
            linetable=o.read_bytes(ptrs[linetable_field]),
            exceptiontable=o.read_bytes(ptrs["co_exceptiontable"]) if "co_exceptiontable" in ptrs else b"",
            localsplusnames=localsplusnames,
            localspluskinds=kinds,
            quickened=quickened,
            warnings=warnings,
        )

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
