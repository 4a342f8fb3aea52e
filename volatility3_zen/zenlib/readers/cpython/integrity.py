"""Whether each recovered code object's bytes are consistent with themselves: the Integrity column
of ``linux.zen.codeobjects``.

Smeared or tampered memory can leave a code object that reads without an error but whose bytes are
not what CPython compiled.  Nothing outside the object says what it should hold, but CPython's
compiler only writes bytecode with a regular structure, which these checks test (``problems``):

- the bytecode: every instruction is a base opcode of the image's version (after de-quickening, so
  an unknown or leftover specialised or instrumented opcode shows); instructions that take no argument
  have argument 0; on 3.11+ each instruction is followed by exactly its inline cache units; an
  EXTENDED_ARG precedes an instruction; constant, name, local and cell indexes lie within co_consts,
  co_names and the locals; jump targets are instruction starts inside the code;
- the tables: co_code has an even, non-zero length; the line table covers exactly the code (3.10+)
  or stays inside it; every exception-table entry (3.11+) lies inside it;
- what ``code.CodeReader`` found in memory (``CodeObject.warnings``): a byte string that is not a
  bytes object, locals counts that disagree with the locals table, a co_code that differs from the
  well-formed copy CPython cached of it.

The bytecode checks run with numpy over all code objects of a process at once (a torch process holds
about 75,000, 17 MB of bytecode): a pure-Python pass over every instruction would cost as much as
reading them.  Only a flagged object is looked at one instruction at a time, to say what is wrong.
"""

import functools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy

from ...representation.program import CodeObject
from .layouts import OpcodeTables, load_layout

Version = Tuple[int, int]
OK = "ok"
SHOWN_PROBLEMS = 2  # per row; the count of the others follows
_CHUNK_UNITS = 1 << 20  # code units per numpy pass: a few tens of MB of temporaries

# Opcodes by what their argument indexes, by name: the numbers move between versions, the names do not.
_CONST_OPS = {"LOAD_CONST", "KW_NAMES", "RETURN_CONST"}
_NAME_OPS = {"DELETE_ATTR", "DELETE_GLOBAL", "DELETE_NAME", "IMPORT_FROM", "IMPORT_NAME", "LOAD_ATTR",
             "LOAD_FROM_DICT_OR_GLOBALS", "LOAD_GLOBAL", "LOAD_METHOD", "LOAD_NAME", "LOAD_SUPER_ATTR",
             "STORE_ATTR", "STORE_GLOBAL", "STORE_NAME"}
# The low bits of these arguments are flags; the name index lies above them.
_NAME_SHIFT = {(3, 11): {"LOAD_GLOBAL": 1},
               (3, 12): {"LOAD_GLOBAL": 1, "LOAD_ATTR": 1, "LOAD_SUPER_ATTR": 2},
               (3, 13): {"LOAD_GLOBAL": 1, "LOAD_ATTR": 1, "LOAD_SUPER_ATTR": 2}}
_LOCAL_OPS = {"LOAD_FAST", "STORE_FAST", "DELETE_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR"}
_LOCAL_PAIR_OPS = {"LOAD_FAST_LOAD_FAST", "STORE_FAST_STORE_FAST", "STORE_FAST_LOAD_FAST"}  # 3.13: two 4-bit indexes
_CELL_OPS = {"LOAD_DEREF", "STORE_DEREF", "DELETE_DEREF", "LOAD_CLOSURE", "LOAD_CLASSDEREF", "MAKE_CELL",
             "LOAD_FROM_DICT_OR_DEREF"}
# Jumps.  Before 3.11 an argument is an absolute target or a forward distance (in bytes before 3.10,
# in code units in 3.10); from 3.11 on every jump is relative to the end of its inline caches.
_ABSOLUTE_JUMPS_BEFORE_311 = {"JUMP_ABSOLUTE", "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE", "JUMP_IF_FALSE_OR_POP",
                              "JUMP_IF_TRUE_OR_POP", "CONTINUE_LOOP", "JUMP_IF_NOT_EXC_MATCH"}
_FORWARD_JUMPS_BEFORE_311 = {"JUMP_FORWARD", "FOR_ITER", "SETUP_FINALLY", "SETUP_WITH", "SETUP_ASYNC_WITH",
                             "SETUP_LOOP", "SETUP_EXCEPT", "CALL_FINALLY"}
_FORWARD_JUMPS = {"JUMP_FORWARD", "FOR_ITER", "SEND", "JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP",
                  "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE", "POP_JUMP_IF_NONE", "POP_JUMP_IF_NOT_NONE",
                  "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE", "POP_JUMP_FORWARD_IF_NONE",
                  "POP_JUMP_FORWARD_IF_NOT_NONE"}
_BACKWARD_JUMPS = {"JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "POP_JUMP_BACKWARD_IF_FALSE",
                   "POP_JUMP_BACKWARD_IF_TRUE", "POP_JUMP_BACKWARD_IF_NONE", "POP_JUMP_BACKWARD_IF_NOT_NONE"}
# 3.10's peephole optimizer turns ROT_N into ROT_TWO..ROT_FOUR and keeps whatever argument it had.
_ARGUMENT_KEPT = {(3, 10): {"ROT_TWO", "ROT_THREE", "ROT_FOUR"}}

# 3.11+ location table: an entry starts with a byte whose top bit is set and whose low 3 bits are its
# length in code units, minus one; no other byte has the top bit set (CPython writes columns of 128
# and more in the varint form).
_LOCATION_UNITS = bytes(((b & 7) + 1) if b & 0x80 else 0 for b in range(256))

# What is checked about an instruction, as bits of ``_Opcodes.kind_bits``.
_CONST, _NAME, _LOCAL, _LOCAL_PAIR, _CELL, _JUMP, _NO_ARGUMENT, _INVALID = (1 << bit for bit in range(8))


@dataclass
class _Opcodes:
    """One version's opcodes as numpy lookup tables (index: the opcode)."""

    names: List[str]
    kind_bits: numpy.ndarray  # uint8: the _CONST ... _INVALID bits of each opcode
    caches: numpy.ndarray  # inline cache units after it (3.11+)
    name_shift: numpy.ndarray  # flag bits below a name index
    absolute_jump: numpy.ndarray  # bool (before 3.11)
    backward_jump: numpy.ndarray  # bool (3.11+)
    extended_arg: int
    cache: Optional[int]  # the CACHE opcode (3.11+)


@functools.lru_cache(maxsize=None)
def _opcodes(version: Version) -> _Opcodes:
    ops: OpcodeTables = load_layout(version).opcodes
    names = ops.opname

    def known(op: int) -> bool:
        return not names[op].startswith("<")

    def base(op: int) -> bool:  # what restored bytecode may hold at an instruction start
        if not known(op) or op == ops.cache or op == ops.enter_executor:
            return False
        if ops.min_instrumented_opcode is not None and op >= ops.min_instrumented_opcode:
            return False
        return ops.base[op] == op

    def no_argument(op: int) -> bool:
        return known(op) and op < ops.have_argument and names[op] not in _ARGUMENT_KEPT.get(version, ())

    before_311 = version < (3, 11)
    jumps = ((_ABSOLUTE_JUMPS_BEFORE_311 | _FORWARD_JUMPS_BEFORE_311) if before_311
             else (_FORWARD_JUMPS | _BACKWARD_JUMPS))
    bits = numpy.zeros(256, dtype=numpy.uint8)
    for op, name in enumerate(names):
        for bit, member in ((_CONST, name in _CONST_OPS), (_NAME, name in _NAME_OPS), (_LOCAL, name in _LOCAL_OPS),
                            (_LOCAL_PAIR, name in _LOCAL_PAIR_OPS), (_CELL, name in _CELL_OPS),
                            (_JUMP, name in jumps), (_NO_ARGUMENT, no_argument(op)), (_INVALID, not base(op))):
            if member:
                bits[op] |= bit
    shifts = _NAME_SHIFT.get(version, {})
    return _Opcodes(
        names=names, kind_bits=bits, caches=numpy.array(ops.caches, dtype=numpy.int64),
        name_shift=numpy.array([shifts.get(name, 0) for name in names], dtype=numpy.int64),
        absolute_jump=numpy.array([before_311 and name in _ABSOLUTE_JUMPS_BEFORE_311 for name in names]),
        backward_jump=numpy.array([not before_311 and name in _BACKWARD_JUMPS for name in names]),
        extended_arg=ops.extended_arg, cache=ops.cache)


def summary(problems: Sequence[str]) -> str:
    """The Integrity cell: "ok", or the first problems and how many more."""
    if not problems:
        return OK
    if len(problems) <= SHOWN_PROBLEMS + 1:
        return "; ".join(problems)
    return "; ".join(problems[:SHOWN_PROBLEMS]) + f" (+{len(problems) - SHOWN_PROBLEMS} more)"


def problems(code_objects: Iterable[CodeObject], version: Version) -> Dict[int, List[str]]:
    """Code object address -> what is inconsistent in it (absent: nothing found), for the code
    objects of one process of CPython ``version`` ((3, 11))."""
    version = tuple(version[:2])
    found: Dict[int, List[str]] = {}
    batch: List[CodeObject] = []
    sizes: List[Tuple[int, ...]] = []
    code_parts: List[bytes] = []
    line_parts: List[bytes] = []
    units = 0
    if version >= (3, 11):  # one table of locals, cells and free variables
        def measure(c):
            return len(c.code), len(c.linetable), len(c.consts), len(c.names), len(c.localsplusnames or ()), 0
    else:
        def measure(c):
            return len(c.code), len(c.linetable), len(c.consts), len(c.names), len(c.varnames), len(c.cellvars) + len(c.freevars)
    for code in code_objects:
        if code.warnings:
            found[code.address] = list(code.warnings)
        size = len(code.code)
        if size == 0 or size % 2:
            found.setdefault(code.address, []).append(f"co_code has {size} bytes (an even number above 0 expected)")
            continue
        batch.append(code)
        sizes.append(measure(code))
        code_parts.append(code.code)
        line_parts.append(code.linetable)
        units += size // 2
        if units >= _CHUNK_UNITS:
            _check_batch(_Batch(batch, sizes, code_parts, line_parts), version, found)
            batch, sizes, code_parts, line_parts, units = [], [], [], [], 0
    if batch:
        _check_batch(_Batch(batch, sizes, code_parts, line_parts), version, found)
    return found


class _Batch:
    """Code objects checked together, with their sizes as numpy columns."""

    def __init__(self, codes: List[CodeObject], sizes: List[Tuple[int, ...]], code_parts: List[bytes],
                 line_parts: List[bytes]):
        self.codes = codes
        self.code_parts, self.line_parts = code_parts, line_parts
        columns = numpy.array(sizes, dtype=numpy.int64).reshape(len(codes), 6).T
        self.code_bytes, self.linetable_bytes, self.consts, self.names, self.locals, cells = columns
        self.cells = cells if cells.any() else self.locals  # 3.11+: cells are locals


def _check_batch(batch: _Batch, version: Version, found: Dict[int, List[str]]) -> None:
    _line_tables(batch, version, found)
    if version >= (3, 11):
        for code in batch.codes:
            if code.exceptiontable:
                problem = exception_table_problem(code.exceptiontable, len(code.code) // 2)
                if problem:
                    found.setdefault(code.address, []).append(problem)
    _bytecode(batch, version, found)


# -- the tables ------------------------------------------------------------------------------------------
def _line_tables(batch: _Batch, version: Version, found: Dict[int, List[str]]) -> None:
    """The line table against the code: 3.11+ location entries cover exactly its code units, 3.10
    (bytecode increment, line increment) pairs exactly its bytes; a 3.7-3.9 co_lnotab's increments
    stay inside it.  The sums run over all tables of the batch at once."""
    codes, lengths, sizes, parts = batch.codes, batch.linetable_bytes, batch.code_bytes, batch.line_parts
    if version < (3, 11) and (lengths % 2).any():  # pairs: an odd length is wrong, and would misalign the rest
        for index in numpy.flatnonzero(lengths % 2):
            found.setdefault(codes[index].address, []).append(f"line table has {lengths[index]} bytes (pairs expected)")
        kept = numpy.flatnonzero(lengths % 2 == 0)
        codes, lengths, sizes, parts = [codes[i] for i in kept], lengths[kept], sizes[kept], [parts[i] for i in kept]
    data = b"".join(parts)
    if version >= (3, 11):
        per_byte = numpy.frombuffer(data.translate(_LOCATION_UNITS), dtype=numpy.uint8)
    else:
        per_byte = numpy.frombuffer(data, dtype=numpy.uint8).copy()
        per_byte[1::2] = 0  # the line increments
    sums = numpy.concatenate(([0], numpy.cumsum(per_byte, dtype=numpy.int64)))
    ends = numpy.cumsum(lengths)
    covered = sums[ends] - sums[ends - lengths]
    if version >= (3, 11):
        wrong = covered != sizes // 2
    elif version >= (3, 10):
        wrong = covered != sizes
    else:  # the last increment leads to an instruction, inside the code
        wrong = covered >= sizes
    for index in numpy.flatnonzero(wrong):
        code, value = codes[index], int(covered[index])
        found.setdefault(code.address, []).append(
            f"line table covers {value} of {len(code.code) // 2} code units" if version >= (3, 11) else
            f"line table covers {value} of {len(code.code)} bytes" if version >= (3, 10) else
            f"line table reaches byte {value} of {len(code.code)}")


def exception_table_problem(table: bytes, units: int) -> Optional[str]:
    """3.11+ exception table: entries of four varints (start, length, target, depth and lasti), 6 bits
    a byte with 0x40 meaning "more"; the first byte of an entry, and only it, has 0x80 set."""
    i, n = 0, len(table)
    while i < n:
        if not table[i] & 0x80:
            return f"exception table: no entry starts at byte {i}"
        values = []
        for _ in range(4):
            if i >= n or (values and table[i] & 0x80):
                return f"exception table: the entry before byte {i} is cut short"
            value = table[i] & 63
            while table[i] & 64:
                i += 1
                if i >= n or table[i] & 0x80:
                    return f"exception table: the entry before byte {i} is cut short"
                value = (value << 6) | (table[i] & 63)
            i += 1
            values.append(value)
        start, length, target, _ = values
        if start + length > units or target >= units:
            return f"exception table: entry {start}..{start + length} -> {target} outside the code ({units} units)"
    return None


# -- the bytecode ----------------------------------------------------------------------------------------
def _bytecode(batch: _Batch, version: Version, found: Dict[int, List[str]]) -> None:
    """The bytecode checks over the code objects of ``batch`` at once; what a flagged one does wrong
    is added to ``found``.  The arrays hold instruction starts only (3.11+: not the inline caches),
    and the costlier columns (owner, position) are taken only for the instructions a check needs."""
    t = _opcodes(version)
    codes = batch.codes
    cache_gap: Dict[int, int] = {}  # instruction -> the cache units after it, where not its own count
    data = numpy.frombuffer(b"".join(batch.code_parts), dtype=numpy.uint8)
    ops, args = data[0::2], data[1::2]
    total = len(ops)
    units = batch.code_bytes // 2
    ends = numpy.cumsum(units)
    begins = ends - units
    owner_of_unit = numpy.repeat(numpy.arange(len(codes), dtype=numpy.int32), units)
    if t.cache is not None:  # 3.11+: CACHE (0) is written only into cache units; every other unit starts an instruction
        is_start = ops != t.cache
        at = numpy.flatnonzero(is_start)  # unit index of each instruction
    else:
        is_start = None
        at = numpy.arange(total, dtype=numpy.int64)
    op = ops[at]
    kind_bits = t.kind_bits[op]

    def owner(indexes):
        return owner_of_unit[at[indexes]]

    def position(indexes):  # in code units, within its code object
        return at[indexes] - begins[owner(indexes)]

    def having(bit: int):
        return numpy.flatnonzero(kind_bits & bit)

    checks: List[Tuple[str, numpy.ndarray]] = [  # (kind, indexes into ``at`` of the failing instructions)
        ("opcode", having(_INVALID)),
    ]
    no_argument = having(_NO_ARGUMENT)
    checks.append(("argument", no_argument[args[at[no_argument]] != 0]))
    if is_start is not None:
        # Each instruction is followed by exactly its cache units, up to the next one or the end of
        # its code object (the next object's first unit, when that one starts with an instruction).
        following = numpy.append(at[1:], total)
        unstarted = numpy.flatnonzero(~is_start[begins])
        if len(unstarted):  # no instruction at 0 (a cache unit, or zeros): take the ends as they are
            following = numpy.minimum(following, ends[owner_of_unit[at]])
            for index in unstarted:
                found.setdefault(codes[index].address, []).append(
                    "bytecode: an inline cache unit where an instruction should start at 0")
        gaps = following - at - 1
        wrong_caches = numpy.flatnonzero(gaps != t.caches[op])
        checks.append(("caches", wrong_caches))
        cache_gap = dict(zip(wrong_caches.tolist(), gaps[wrong_caches].tolist()))
    full = args[at].astype(numpy.int64)
    extended = numpy.flatnonzero(op == t.extended_arg)
    if len(extended):
        last = extended + 1 >= len(at)
        ends_object = numpy.ones(len(extended), dtype=bool)
        ends_object[~last] = owner(extended[~last] + 1) != owner(extended[~last])
        checks.append(("extended", extended[ends_object]))
        prefixing = extended[~ends_object]
        for _ in range(3):  # at most three EXTENDED_ARG in a row
            full[prefixing + 1] = (full[prefixing] << 8) | args[at[prefixing + 1]]

    def out_of_range(kind: str, bit: int, index_of, limit: numpy.ndarray) -> None:
        where = having(bit)
        if len(where):
            checks.append((kind, where[index_of(full[where], where) >= limit[owner(where)]]))

    out_of_range("const", _CONST, lambda v, w: v, batch.consts)
    out_of_range("name", _NAME, lambda v, w: v >> t.name_shift[op[w]], batch.names)
    out_of_range("local", _LOCAL, lambda v, w: v, batch.locals)
    out_of_range("local", _LOCAL_PAIR, lambda v, w: numpy.maximum(v >> 4, v & 15), batch.locals)
    out_of_range("cell", _CELL, lambda v, w: v, batch.cells)
    jumps = having(_JUMP)
    targets = None
    if len(jumps):
        jump_owner = owner(jumps)
        targets = _jump_targets(version, t, op[jumps], full[jumps], at[jumps] - begins[jump_owner])
        wrong = (targets < 0) | (targets >= units[jump_owner])
        if version < (3, 10):  # arguments in bytes: instructions start at even ones
            wrong |= full[jumps] % 2 == 1
        if is_start is not None:  # a jump lands on an instruction, never inside inline caches
            wrong |= ~is_start[begins[jump_owner] + numpy.where(wrong, 0, targets)]
        checks.append(("jump", jumps[wrong]))
    failing = [(kind, indexes) for kind, indexes in checks if len(indexes)]
    if not failing:
        return
    # Per flagged code object: its first problems in bytecode order, and how many more there are.
    jump_target = dict(zip(jumps.tolist(), targets.tolist())) if targets is not None else {}
    kinds = [kind for kind, _ in failing]
    which = numpy.concatenate([numpy.full(len(indexes), k) for k, (_, indexes) in enumerate(failing)])
    hits = numpy.concatenate([indexes for _, indexes in failing])
    order = numpy.lexsort((at[hits], owner(hits)))
    which, hits = which[order], hits[order]
    objects, firsts, counts = numpy.unique(owner(hits), return_index=True, return_counts=True)
    for index, first, count in zip(objects, firsts, counts):
        code = codes[index]
        texts = []
        for k in range(first, first + min(count, SHOWN_PROBLEMS)):
            hit = int(hits[k])
            kind = kinds[which[k]]
            detail = jump_target.get(hit, -1) if kind == "jump" else cache_gap.get(hit, -1)
            texts.append(_describe(kind, code, t, int(position(hit)), int(full[hit]), detail))
        if count > SHOWN_PROBLEMS:
            texts.append(f"bytecode: {count - SHOWN_PROBLEMS} more problems")
        found.setdefault(code.address, []).extend(texts)


def _jump_targets(version: Version, t: _Opcodes, op, full, position) -> numpy.ndarray:
    """The jump targets, in code units, of the jump instructions given."""
    if version < (3, 10):  # arguments in bytes
        return numpy.where(t.absolute_jump[op], full // 2, position + 1 + full // 2)
    if version < (3, 11):  # in code units
        return numpy.where(t.absolute_jump[op], full, position + 1 + full)
    after = position + 1 + t.caches[op]  # 3.11+: relative to the end of the inline caches
    return numpy.where(t.backward_jump[op], after - full, after + full)


def _describe(kind: str, code: CodeObject, t: _Opcodes, unit: int, full: int, detail: int) -> str:
    """One line on what the instruction at code unit ``unit`` does wrong (``full``: its argument with
    EXTENDED_ARG prefixes; ``detail``: where a jump goes, in code units, or how many cache units
    follow an instruction)."""
    op = code.code[2 * unit]
    name = t.names[op]
    at = f"at {2 * unit}"
    if kind == "opcode":
        if name.startswith("<"):
            return f"bytecode: unknown opcode 0x{op:02x} {at}"
        if op == t.cache:
            return f"bytecode: an inline cache unit where an instruction should start {at}"
        return f"bytecode: {name} {at} is not a base opcode (not restored)"
    if kind == "argument":
        return f"bytecode: {name} {at} has argument {code.code[2 * unit + 1]} but takes none"
    if kind == "caches":
        wanted = int(t.caches[op])
        if detail > wanted:  # zeros where the next instruction should be
            return f"bytecode: an inline cache unit where an instruction should start at {2 * (unit + 1 + wanted)}"
        return f"bytecode: {name} {at} is followed by {detail} of its {wanted} inline cache units"
    if kind == "extended":
        return f"bytecode: EXTENDED_ARG {at} precedes no instruction"
    if kind == "jump":
        return f"bytecode: {name} {at} jumps to {2 * detail}, not an instruction of the code ({len(code.code)} bytes)"
    what = {"const": f"{len(code.consts)} constants", "name": f"{len(code.names)} names",
            "local": "%d locals" % len(code.localsplusnames if code.localsplusnames is not None else code.varnames),
            "cell": "%d cell and free variables" % (len(code.localsplusnames) if code.localsplusnames is not None
                                                    else len(code.cellvars) + len(code.freevars))}[kind]
    return f"bytecode: {name} {full} {at} is out of range (the code object has {what})"
