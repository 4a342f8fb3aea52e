"""Restoring original bytecode from what a running interpreter keeps in memory.

3.11+ execute specialised ("quickened") instructions in place, and 3.12+ may overwrite opcodes with
INSTRUMENTED_* variants for sys.settrace / sys.monitoring.  ``co_code`` as Python reports it is the
result of CPython's own deopt pass; we repeat that pass with the *target* version's tables
(``opcodes-3.X.json``, generated from that libpython), never with the analysing interpreter's.
"""

from typing import List, Optional, Tuple

from .layouts import OpcodeTables

# (original opcode, line delta) per code unit, or None when the code has no line instrumentation.
LineTable = Optional[List[int]]


def restore_311(code: bytes, ops: OpcodeTables) -> Tuple[bytes, bool]:
    """CPython 3.11 deopt: base opcode from _PyOpcode_Deopt, oparg kept, inline caches zeroed."""
    return _deopt(code, ops, None, None)


def restore_312(
    code: bytes, ops: OpcodeTables, line_opcodes: LineTable, instruction_opcodes: LineTable
) -> Tuple[bytes, bool]:
    """CPython 3.12/3.13 deopt, as ``_Py_GetBaseOpcode``: undo line / instruction instrumentation,
    map INSTRUMENTED_X back to X, then deopt specialisations.

    ``line_opcodes[i]`` is ``_co_monitoring->lines[i].original_opcode`` and ``instruction_opcodes[i]``
    is ``_co_monitoring->per_instruction_opcodes[i]`` (None when the code is not instrumented that way).
    """
    return _deopt(code, ops, line_opcodes, instruction_opcodes)


_ZEROS = bytes(512)


def _deopt(code: bytes, ops: OpcodeTables, lines: LineTable, per_instruction: LineTable) -> Tuple[bytes, bool]:
    """One pass over instruction starts (cache units are skipped, not visited): this runs for every
    code object of a process, ~27k in a torch process."""
    out = bytearray(code)
    base_of, caches = ops.base, ops.caches
    instrumented = lines is not None or per_instruction is not None
    line_op, instr_op = ops.instrumented_line, ops.instrumented_instruction
    n = len(code) // 2
    i = 0
    while i < n:
        op = code[2 * i]
        if instrumented:
            if op == line_op and lines is not None:
                op = lines[i]
            if op == instr_op and per_instruction is not None:
                op = per_instruction[i]
        base = base_of[op]
        out[2 * i] = base
        ncache = caches[base]
        if ncache:
            end = min(2 * (i + 1 + ncache), len(out))
            out[2 * i + 2 : end] = _ZEROS[: end - 2 * i - 2]
        i += 1 + ncache
    restored = bytes(out)
    return restored, restored != code
