"""Readable forms of a recovered code object: disassembly, a normalised instruction list for fuzzy
comparison, and decompiled source where a decompiler handles the target version.

Everything runs in the analysing interpreter on xdis's portable code objects and the opcode tables
of the *target* version (xdis knows 3.7-3.13 whatever runs it); no target interpreter is started.
The portable objects are built straight from the CodeObject rather than by letting xdis unmarshal
``marshal_writer`` output, because xdis 6.3 reads the pre-3.11 co_freevars and co_cellvars in
swapped order, which names LOAD_DEREF/LOAD_CLOSURE arguments wrongly whenever a code object has both.
"""

import contextlib
import importlib
import io
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from xdis.bytecode import Bytecode
from xdis.codetype import to_portable
from xdis.cross_dis import format_code_info, format_exception_table
from xdis.op_imports import get_opcode_module

from ...errors import CorruptObjectError
from ...representation.program import CodeObject, CodeRef
from .marshal_writer import supported_version

Version = Tuple[int, int]
Resolver = Callable[[int], CodeObject]

# Instructions that only serve the interpreter (inline caches, argument prefixes, line-number
# padding, the 3.11+ entry point): left out of the normalised form, which compares what code does.
BOOKKEEPING_OPS = frozenset({"CACHE", "EXTENDED_ARG", "NOP", "RESUME"})

# Decompilers (packages with a ``semantics.pysource.deparse_code2str`` that reads xdis code objects)
# by target version, preferred first.  None handles 3.9+; depyf, which does the analysing
# interpreter's own version only, drops exception handlers and misplaces arguments, so it is not used.
DECOMPILERS: Dict[Version, Tuple[str, ...]] = {
    (3, 7): ("decompyle3", "uncompyle6"),
    (3, 8): ("decompyle3", "uncompyle6"),
}


def disassemble(code: CodeObject, resolve: Resolver, version: Version) -> str:
    """xdis's disassembly of ``code`` and of every code object nested in it, each under a line that
    names it with its address in the process: xdis's summary of the fields, the instructions with
    line numbers, and the 3.11+ exception table."""
    version = supported_version(version)
    opc = _opcodes(version)
    parts = []
    for each in code_tree(code, resolve):
        portable = xdis_code(each, resolve, version, nested=False)
        bytecode = Bytecode(portable, opc)
        parts.append(f"## {_NestedCode(each)!r}")
        parts.append(format_code_info(portable, version))
        parts.append(bytecode.dis())
        if version >= (3, 11) and bytecode.exception_entries:
            parts.append(format_exception_table(bytecode, version))
    return "\n".join(parts)


def normalized_disassembly(code: CodeObject, resolve: Resolver, version: Version) -> List[str]:
    """One token per instruction of ``code`` (nested code not included), independent of addresses,
    offsets and line numbers: the opname and its argument -- constants by type and value, names by
    name, counts and operators as they are; jump targets are dropped (they move with any change)."""
    version = supported_version(version)
    opc = _opcodes(version)
    return [
        _token(instruction, code, opc, resolve)
        for instruction in Bytecode(xdis_code(code, resolve, version, nested=False), opc)
        if instruction.opname not in BOOKKEEPING_OPS
    ]


class _TimeUp(BaseException):  # not Exception: decompilers catch those and carry on
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Interrupts a runaway decompiler (their parsers can take minutes and gigabytes on large module
    bodies).  Only possible in the main thread; elsewhere there is no limit."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expire(_signum, _frame):
        raise _TimeUp()

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def decompile(code: CodeObject, resolve: Resolver, version: Version, time_limit: float = 5.0) -> Optional[str]:
    """Python source for ``code`` from the first decompiler in DECOMPILERS that is installed and
    succeeds within ``time_limit`` seconds, or None (the caller then shows the disassembly).  For a
    module or class body that is the whole body; for a function it is the function's body only: its
    defaults live in the function object, not in the code.

    decompyle3 and uncompyle6 3.9 import xdis's pre-6.3 opcode modules (setup.cfg pins xdis below 6.3).
    """
    version = supported_version(version)
    for package in DECOMPILERS.get(version, ()):
        try:
            pysource = importlib.import_module(f"{package}.semantics.pysource")
        except ImportError:
            continue
        try:
            with _time_limit(time_limit):
                text = _quietly(pysource.deparse_code2str, xdis_code(code, resolve, version), version)
        except _TimeUp:
            continue
        if text and not text.startswith("# deparse failed"):
            return text
    return None


def code_tree(code: CodeObject, resolve: Resolver, _open: Optional[Set[int]] = None) -> Iterator[CodeObject]:
    """``code`` and every code object nested in its constants, depth first in constant order."""
    _open = set() if _open is None else _open
    if code.address in _open:
        raise CorruptObjectError(f"code object at 0x{code.address:x} contains itself")
    _open.add(code.address)
    yield code
    for const in code.consts:
        if isinstance(const, CodeRef):
            yield from code_tree(resolve(const.address), resolve, _open)
    _open.discard(code.address)


def xdis_code(code: CodeObject, resolve: Resolver, version: Version, nested: bool = True):
    """An xdis portable code object (Code3, Code38, Code310 or Code311 by version) for ``code``.

    With ``nested``, CodeRef constants become portable code objects too (what decompilers need);
    without, placeholders that print like CPython's code repr with the address in the process,
    where xdis would print the address of its own object.
    """
    return _Portable(version, resolve, nested).convert(code)


class _NestedCode:
    """A code constant shown, not converted: ``<code object NAME at 0xADDRESS, file "F", line N>``."""

    def __init__(self, code: CodeObject):
        self.code = code

    def __repr__(self) -> str:
        code = self.code
        return (f"<code object {code.qualname or code.name} at 0x{code.address:x}, "
                f'file "{code.filename}", line {code.firstlineno}>')


class _Portable:
    def __init__(self, version: Version, resolve: Resolver, nested: bool):
        self.version, self.resolve, self.nested = version, resolve, nested
        self._open: Set[int] = set()  # code objects being converted: a cycle means corrupt memory

    def convert(self, code: CodeObject):
        if code.address in self._open:
            raise CorruptObjectError(f"code object at 0x{code.address:x} contains itself")
        self._open.add(code.address)
        consts = tuple(self._const(value) for value in code.consts)
        self._open.discard(code.address)
        return to_portable(
            co_argcount=code.argcount,
            co_posonlyargcount=code.posonlyargcount,
            co_kwonlyargcount=code.kwonlyargcount,
            co_nlocals=code.nlocals,
            co_stacksize=code.stacksize,
            co_flags=code.flags,
            co_code=code.code,
            co_consts=consts,
            co_names=tuple(code.names),
            co_varnames=tuple(code.varnames),
            co_filename=code.filename,
            co_name=code.name,
            co_qualname=code.qualname,
            co_firstlineno=code.firstlineno,
            co_lnotab=code.linetable,
            co_freevars=tuple(code.freevars),
            co_cellvars=tuple(code.cellvars),
            co_exceptiontable=code.exceptiontable,
            version_triple=self.version + (0,),
        )

    def _const(self, value: Any) -> Any:
        if not isinstance(value, CodeRef):
            return value
        nested = self.resolve(value.address)
        return self.convert(nested) if self.nested else _NestedCode(nested)


def _token(instruction, code: CodeObject, opc, resolve: Resolver) -> str:
    if instruction.opcode in opc.hasconst:
        return f"{instruction.opname} {_const_token(code.consts[instruction.arg], resolve)}"
    if instruction.opcode in opc.hasjrel or instruction.opcode in opc.hasjabs:
        return instruction.opname
    if instruction.argrepr:
        return f"{instruction.opname} {instruction.argrepr}"
    if instruction.arg is not None:
        return f"{instruction.opname} {instruction.arg}"
    return instruction.opname


def _const_token(value: Any, resolve: Resolver) -> str:
    """A constant by type and value; a code object by its name (its body is compared on its own)."""
    if isinstance(value, CodeRef):
        return f"code:{resolve(value.address).name}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_const_token(v, resolve) for v in value) + ")"
    if isinstance(value, frozenset):
        return "frozenset{" + ", ".join(sorted(_const_token(v, resolve) for v in value)) + "}"
    return f"{type(value).__name__}:{value!r}"


def _quietly(deparse: Callable, portable, version: Version) -> Optional[str]:
    """Run a decompiler, which prints its parse errors and raises exceptions of no common base."""
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            return deparse(portable, out=noise, version=version + (0,))
    except Exception:  # noqa: BLE001 -- any failure means: this decompiler cannot do this code
        return None


def _opcodes(version: Version):
    """xdis's opcode table for CPython ``version``.  xdis 6.3 wants the implementation named; 6.1,
    which decompyle3 and uncompyle6 3.9 still require, takes none and means CPython."""
    try:
        from xdis.version_info import PythonImplementation
    except ImportError:
        return get_opcode_module(version)
    return get_opcode_module(version, PythonImplementation.CPython)
