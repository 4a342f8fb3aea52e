"""Describing every code object of a ``Program``: owner module, qualified name, kind, function ID.

A function's code is named after the function object (its ``__module__`` and ``__qualname__``), not
after the code: code made by ``exec`` (dataclass and namedtuple methods, attrs, a source string) is
compiled under a helper's name (``__create_fn__.<locals>.__init__``) and only the function says
whose it is (``DatasetConfig.__init__``).  The code's own name is kept beside it (``code_qualname``).
Nested code objects reached only through ``co_consts`` inherit module and qualname from their parent
(on 3.7-3.10 code objects carry no qualname of their own).
"""

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

from ...representation.program import CodeObject, Program, nested_code
from .layouts import load_layout


@dataclass
class CodeEntry:
    code: CodeObject
    module: Optional[str]
    qualname: str
    kind: str  # function / method / nested / lambda / comprehension / class-body / module
    function_id: str
    user_code: bool
    sha256: str
    functions: List[int]  # addresses of the function objects that use this code
    code_qualname: str = ""  # the code object's own co_qualname (3.11+) or co_name


def signature(code: CodeObject, version) -> str:
    """A readable signature from the code object alone: ``(a, b, /, c, *args, d, **kw)``.

    co_varnames starts with the positional parameters, then keyword-only ones, then *args, then **kwargs.
    ``version`` is the code's CPython version, whose headers define the co_flags bits.
    """
    layout = load_layout(version)
    names = code.varnames
    n_pos, n_kw = code.argcount, code.kwonlyargcount
    parts = list(names[:n_pos])
    if code.posonlyargcount:
        parts.insert(code.posonlyargcount, "/")
    rest = n_pos + n_kw
    if code.flags & layout.const("CO_VARARGS") and rest < len(names):
        parts.append("*" + names[rest])
        rest += 1
    elif n_kw:
        parts.append("*")
    parts += names[n_pos : n_pos + n_kw]
    if code.flags & layout.const("CO_VARKEYWORDS") and rest < len(names):
        parts.append("**" + names[rest])
    return "(" + ", ".join(parts) + ")"


def function_id(module: Optional[str], qualname: str, code: CodeObject, version) -> str:
    """Stable across runs of the same program: no address, only what the source determines."""
    return f"{module or '?'}:{qualname}{signature(code, version)}@{code.firstlineno}"


class UserCodeClassifier:
    """User code = not the standard library and not an installed package (site-/dist-packages)."""

    def __init__(self, program: Program):
        self.stdlib_dirs = set()
        for name in ("os", "abc", "types"):
            info = program.modules.get(name)
            if info and info.file:
                self.stdlib_dirs.add(posixpath.dirname(info.file))

    def __call__(self, filename: str) -> bool:
        if filename.startswith("<frozen"):
            return False
        if re.search(r"/(site|dist)-packages/", filename):
            return False
        directory = posixpath.dirname(filename)
        return not any(directory == d or directory.startswith(d + "/") for d in self.stdlib_dirs)


def index_code_objects(program: Program) -> Iterator[CodeEntry]:
    by_code: Dict[int, List[int]] = {}
    for func in program.functions.values():
        by_code.setdefault(func.code, []).append(func.address)
    is_user = UserCodeClassifier(program)
    version = program.interpreter.version
    parent_info: Dict[int, tuple] = {}
    for addr, funcs in by_code.items():
        f = program.functions[funcs[0]]
        parent_info[addr] = (f.module, f.qualname, f.kind)
    # Breadth-first from function-owned code into nested code.
    order = list(parent_info)
    seen = set(order)
    i = 0
    while i < len(order):
        addr = order[i]
        i += 1
        code = program.code_objects.get(addr)
        if code is None:
            continue
        module, qualname, _ = parent_info[addr]
        for child in nested_code(code.consts):
            if child in seen or child not in program.code_objects:
                continue
            seen.add(child)
            cc = program.code_objects[child]
            child_qual = cc.qualname or f"{qualname}.<locals>.{cc.name}"
            parent_info[child] = (module, child_qual, nested_kind(cc))
            order.append(child)
    for addr in order:
        code = program.code_objects.get(addr)
        if code is None:
            continue
        module, qualname, kind = parent_info[addr]
        if addr not in by_code:  # nested code: its own qualname where the version records one
            qualname = code.qualname or qualname
        yield CodeEntry(code, module, qualname, kind, function_id(module, qualname, code, version), is_user(code.filename),
                        hashlib.sha256(code.code).hexdigest(), by_code.get(addr, []), code.qualname or code.name)


def nested_kind(code: CodeObject) -> str:
    if code.name == "<lambda>":
        return "lambda"
    if code.name in ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"):
        return "comprehension"
    return "nested"

