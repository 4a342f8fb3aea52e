"""The engine: one process's memory -> ``Program`` (code objects, functions, classes, modules).

Everything here is best effort per object: an unreadable or corrupt object becomes a warning and the
walk goes on, so a smeared image still yields a partial table.
"""

import struct
from typing import Any, Callable, Dict, List, Optional, Sequence

from ...errors import CorruptObjectError, MemoryReadError
from ..memory import ProcessMemory
from ...representation.program import ClassInfo, Function, InterpreterInfo, ModuleInfo, Program, nested_code
from .code import CodeReader
from .heap import Heap
from .objects import DECODE_ERRORS, ObjectReader
from .runtime import METHODS, Runtime, find_runtime

_U64 = struct.Struct("<Q")
ProgressFn = Callable[[float, str], None]
MAX_WARNINGS = 200


class PythonProcess:
    """An opened CPython process: runtime found, readers ready.  The entry point of the library."""

    def __init__(self, memory: ProcessMemory, methods: Sequence[str] = METHODS):
        self.memory = memory
        self.runtime: Runtime = find_runtime(memory, methods)
        self.layout = self.runtime.layout
        self.objects = ObjectReader(memory, self.layout)
        self.objects.know_builtin_types(self.runtime.image.lookup)
        self.heap = Heap(self.runtime, self.objects)
        self.code_reader = CodeReader(self.objects)
        L = self.layout
        self._f = {name: L.offset("PyFunctionObject", name) for name in (
            "func_code", "func_name", "func_qualname", "func_module", "func_defaults", "func_kwdefaults",
            "func_closure", "func_globals")}
        self._classmethod_callable = L.offset("classmethod", "cm_callable")
        self._staticmethod_callable = L.offset("staticmethod", "sm_callable")
        self._property_get = L.offset("propertyobject", "prop_get")

    @property
    def interpreter_info(self) -> InterpreterInfo:
        rt = self.runtime
        return InterpreterInfo(rt.version, rt.runtime, rt.interpreter, rt.method, rt.image.path)

    # -- functions -------------------------------------------------------------------------------
    def read_function(self, address: int, problems: Optional[List[str]] = None) -> Function:
        """A function object.  Only its code pointer is essential: a name, module, defaults or closure
        that smeared memory made unreadable is left empty and said in ``problems`` (``recover`` then
        names the function after its code object), so that the code object is still reached."""
        o = self.objects
        p = self.function_pointers(address)
        if not p["func_code"] or p["func_code"] % 8:
            raise CorruptObjectError(f"function at 0x{address:x} has code pointer 0x{p['func_code']:x}")

        def part(what: str, decode: Callable[[], Any], default: Any) -> Any:
            try:
                return decode()
            except DECODE_ERRORS as exc:
                if problems is not None:
                    problems.append(f"function at 0x{address:x}: {what} unreadable ({exc})")
                return default

        def is_a(pointer: int, kind: str) -> bool:
            return bool(pointer) and o.kind(pointer) == kind

        def length(pointer: int) -> int:
            return len(o.tuple_items(pointer)) if pointer else 0

        name = part("__name__", lambda: o.read_str(p["func_name"]), "")
        qualname = part("__qualname__", lambda: o.read_str(p["func_qualname"]), "")
        module = part("__module__", lambda: o.read_str(p["func_module"]) if is_a(p["func_module"], "str") else None, None)
        defaults = part("__defaults__", lambda: length(p["func_defaults"]), 0)
        kwdefaults = part("__kwdefaults__", lambda: sum(1 for _ in o.dict_items(p["func_kwdefaults"]))
                          if is_a(p["func_kwdefaults"], "dict") else 0, 0)
        closure = part("__closure__", lambda: length(p["func_closure"]), 0)
        return Function(address, p["func_code"], name, qualname, module, defaults, kwdefaults, closure,
                        function_kind(name, qualname))

    def function_pointers(self, address: int) -> Dict[str, int]:
        """The raw pointers of a function object (func_code, func_globals, func_defaults, ...)."""
        raw = self.objects.mem.read(address, max(self._f.values()) + 8)
        return {k: _U64.unpack_from(raw, off)[0] for k, off in self._f.items()}

    # -- classes ---------------------------------------------------------------------------------
    def read_class(self, address: int) -> ClassInfo:
        o = self.objects
        name = o.read_str(o.u64(address + o.off_ht_name))
        qualname = o.read_str(o.u64(address + o.off_ht_qualname))
        bases_ptr = o.u64(address + o.off_tp_bases)
        mro_ptr = o.u64(address + o.off_tp_mro)
        bases = list(o.tuple_items(bases_ptr)) if bases_ptr else []
        mro = list(o.tuple_items(mro_ptr)) if mro_ptr else []
        namespace = o.str_dict(o.u64(address + o.off_tp_dict))
        module = None
        if "__module__" in namespace and o.kind(namespace["__module__"]) == "str":
            module = o.read_str(namespace["__module__"])
        methods = {}
        for attr, value in namespace.items():
            func = self.method_function(value)
            if func:
                methods[attr] = func
        return ClassInfo(address, name, qualname, module, bases, mro, methods)

    def method_function(self, value: int) -> Optional[int]:
        """The function behind a class attribute: plain, staticmethod, classmethod or property getter
        (subclasses included, e.g. abc.abstractproperty)."""
        o = self.objects
        try:
            kind = o.base_kind(value)
            if kind == "function":
                return value
            inner = None
            if kind == "staticmethod":
                inner = o.u64(value + self._staticmethod_callable)
            elif kind == "classmethod":
                inner = o.u64(value + self._classmethod_callable)
            elif kind == "property":
                inner = o.u64(value + self._property_get)
            if inner and o.kind(inner) == "function":
                return inner
        except DECODE_ERRORS:
            pass
        return None

    def reading_warnings(self) -> List[str]:
        """What reading this process's objects ran into so far (GC walks, objects), each once."""
        return list(dict.fromkeys(self.heap.warnings + self.objects.warnings))

    # -- whole program -------------------------------------------------------------------------
    def recover(self, progress: Optional[ProgressFn] = None) -> Program:
        o = self.objects
        program = Program(self.memory.pid, self.memory.name, self.interpreter_info)
        warn = _Warnings(program.warnings)
        function_addrs: List[int] = []
        class_addrs: List[int] = []
        function_type = None
        heap_type_flag = o.heap_type_flag
        if progress:
            progress(0.0, "Walking the GC lists")
        for obj, type_addr in self.heap.gc_objects():
            if type_addr == function_type:
                function_addrs.append(obj)
                continue
            kind = o.kind_of_type(type_addr)
            if kind == "function":
                function_type = type_addr
                function_addrs.append(obj)
            elif self.heap.is_type_object(type_addr):
                try:
                    if o.type_flags(obj) & heap_type_flag:
                        class_addrs.append(obj)
                except MemoryReadError:
                    warn.add(f"type object at 0x{obj:x} unreadable")
        for w in self.heap.warnings:
            warn.add(w)

        total = len(function_addrs) + len(class_addrs) or 1
        partly = []  # the first problem of each function read only in part, reported in one warning
        for i, addr in enumerate(function_addrs):
            if progress and i % 5000 == 0:
                progress(100.0 * i / total, f"Reading functions ({i}/{len(function_addrs)})")
            problems: List[str] = []
            try:
                program.functions[addr] = self.read_function(addr, problems)
            except DECODE_ERRORS as exc:
                warn.add(f"function at 0x{addr:x}: {exc}")
            partly += problems[:1]
        if partly:
            warn.add(f"{len(partly)} functions partly unreadable, kept for their code objects; the first: {partly[0]}")
        for i, addr in enumerate(class_addrs):
            try:
                program.classes[addr] = self.read_class(addr)
            except DECODE_ERRORS as exc:
                warn.add(f"class at 0x{addr:x}: {exc}")
        if progress:
            progress(90.0, "Reading code objects")
        self._read_code_objects(program, warn)
        self._name_unnamed_functions(program)
        if progress:
            progress(97.0, "Reading modules")
        self._read_modules(program, warn)
        for w in o.warnings:
            warn.add(w)
        return program

    def _read_code_objects(self, program: Program, warn: "_Warnings") -> None:
        pending = [f.code for f in program.functions.values()]
        code_objects = program.code_objects
        while pending:
            addr = pending.pop()
            if addr in code_objects or not addr:
                continue
            try:
                code = self.code_reader.read(addr)
            except DECODE_ERRORS as exc:
                warn.add(f"code object at 0x{addr:x}: {exc}")
                code_objects[addr] = None  # tried; do not retry
                continue
            code_objects[addr] = code
            pending.extend(nested_code(code.consts))
        for addr in [a for a, c in code_objects.items() if c is None]:
            del code_objects[addr]

    @staticmethod
    def _name_unnamed_functions(program: Program) -> None:
        """Functions whose name was unreadable take their code object's."""
        for func in program.functions.values():
            code = program.code_objects.get(func.code)
            if code is not None and not (func.name and func.qualname):
                func.name = func.name or code.name
                func.qualname = func.qualname or code.qualname or code.name
                func.kind = function_kind(func.name, func.qualname)

    def _read_modules(self, program: Program, warn: "_Warnings") -> None:
        o = self.objects
        try:
            modules = self.heap.modules()
        except DECODE_ERRORS as exc:
            warn.add(f"modules dict unreadable: {exc}")
            return
        for name, addr in modules.items():
            info = ModuleInfo(addr, name, None)
            try:
                namespace = o.str_dict(o.u64(addr + o.off_md_dict))
            except DECODE_ERRORS as exc:
                warn.add(f"module {name}: dict unreadable ({exc})")
                program.modules[name] = info
                continue
            file_addr = namespace.get("__file__")
            try:
                if file_addr and o.kind(file_addr) == "str":
                    info.file = o.read_str(file_addr)
            except DECODE_ERRORS:
                pass
            for value in namespace.values():
                if value in program.functions and program.functions[value].module == name:
                    info.functions.append(value)
                elif value in program.classes and program.classes[value].module == name:
                    info.classes.append(value)
            program.modules[name] = info


def function_kind(name: str, qualname: str) -> str:
    if name == "<lambda>":
        return "lambda"
    if "<locals>" in qualname:
        return "nested"
    if "." in qualname:
        return "method"
    return "function"


class _Warnings:
    """Keeps the first MAX_WARNINGS warnings and counts the rest (a smeared image can yield thousands)."""

    def __init__(self, sink: List[str]):
        self.sink = sink
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.sink) < MAX_WARNINGS:
            self.sink.append(text)
        else:
            self.dropped += 1
            if self.dropped == 1:
                self.sink.append("further warnings suppressed")
