"""Recovered code objects for people and for other interpreters: source or disassembly text, and
marshal files loadable by the image's CPython version (``linux.zen.codeobjects --dump/--decompile``)."""

import hashlib
import logging
import re
from typing import Callable, Dict, Iterable, Optional

from ...errors import CorruptObjectError, ZenError
from ...representation.program import CodeObject, Program
from . import disassemble, marshal_writer
from .code_index import CodeEntry
from .layouts import minor_version
from .objects import DECODE_ERRORS

vollog = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def resolver(program: Program) -> Callable[[int], CodeObject]:
    """Recovered code objects by address, for nested code; one that smeared memory made unreadable
    is a CorruptObjectError (not a bare KeyError)."""

    def resolve(address: int) -> CodeObject:
        code = program.code_objects.get(address)
        if code is None:
            raise CorruptObjectError(f"code object at 0x{address:x} (nested) was not recovered")
        return code

    return resolve


def source_text(program: Program, code: CodeObject) -> str:
    """Decompiled source where a decompiler supports the version, else disassembly; for a code object
    that neither can render (its nested code lost, or garbled by smeared memory), a comment saying why."""
    version = minor_version(program.interpreter.version)
    resolve = resolver(program)
    try:
        text = disassemble.decompile(code, resolve, version)
        return text if text is not None else disassemble.disassemble(code, resolve, version)
    except Exception as exc:  # noqa: BLE001 -- xdis asserts on garbled bytecode, decompilers raise anything
        return f"# no source or disassembly of code object 0x{code.address:x}: {_describe(exc)}"


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ZenError) else f"{type(exc).__name__}: {exc}"


def dump_code_objects(program: Program, entries: Iterable[CodeEntry], open_file,
                      sources: Optional[Dict[int, str]] = None) -> Dict:
    """One marshal file per code object (loadable by ``marshal.loads`` of the image's Python version)
    plus source / disassembly text, written through the plugin's ``open``; returns the JSON index.
    ``sources`` (code address -> text) is filled so that a caller showing the text too does not
    decompile twice (decompiling is the slow part)."""
    sources = {} if sources is None else sources
    version = minor_version(program.interpreter.version)
    resolve = resolver(program)
    index = {"pid": program.pid, "process": program.process, "python": program.interpreter.version, "code_objects": []}
    for e in entries:
        stem = f"pid{program.pid}.{_UNSAFE.sub('_', (e.module or 'unknown') + '.' + e.qualname)[:120]}.{e.code.address:x}"
        try:
            data = marshal_writer.dumps_code(e.code, resolve, version)
        except DECODE_ERRORS as exc:
            vollog.warning("PID %d: code object at 0x%x not dumped: %s", program.pid, e.code.address, _describe(exc))
            continue
        with open_file(stem + ".marshal") as fh:
            fh.write(data)
        if e.code.address not in sources:
            sources[e.code.address] = source_text(program, e.code)
        with open_file(stem + ".txt") as fh:
            fh.write(sources[e.code.address].encode("utf-8", "surrogateescape"))
        index["code_objects"].append({
            "function_id": e.function_id, "address": e.code.address, "module": e.module, "qualname": e.qualname,
            "code_qualname": e.code_qualname,
            "kind": e.kind, "user_code": e.user_code, "filename": e.code.filename, "firstlineno": e.code.firstlineno,
            "co_code_sha256": e.sha256, "marshal": stem + ".marshal", "marshal_sha256": hashlib.sha256(data).hexdigest(),
            "source": stem + ".txt", "quickened_in_memory": e.code.quickened,
        })
    return index
