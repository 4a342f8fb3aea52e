"""Enumerating a CPython heap: GC generations, the modules dict, instance dicts.

Code objects are never GC-tracked, so they are reached through functions and co_consts (see
``recover``); functions, classes, modules and instances are walked through every GC generation
*and* the permanent generation (``gc.freeze()`` moves objects there and ``gc.get_objects()`` skips it).
"""

import struct
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import CorruptObjectError, MemoryReadError
from .objects import ObjectReader
from .runtime import Runtime

_2U64 = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
Py_TPFLAGS_TYPE_SUBCLASS = 1 << 31
Py_TPFLAGS_HEAPTYPE = 1 << 9
MAX_GC_OBJECTS = 50_000_000


class Heap:
    def __init__(self, runtime: Runtime, objects: ObjectReader):
        self.rt = runtime
        self.o = objects
        self.L = runtime.layout
        self.warnings: List[str] = []

    # -- GC --------------------------------------------------------------------------------------
    def gc_state(self) -> int:
        """Address of ``struct _gc_runtime_state`` (in _PyRuntime up to 3.8, per interpreter after)."""
        L = self.L
        if L.has("PyInterpreterState", "gc"):
            return self.rt.interpreter + L.offset("PyInterpreterState", "gc")
        return self.rt.runtime + L.offset("_PyRuntimeState", "gc")

    def generation_heads(self) -> List[Tuple[str, int]]:
        L = self.L
        state = self.gc_state()
        gen_size = L.size("gc_generation")
        heads = []
        if L.has("_gc_runtime_state", "generations"):
            base = state + L.offset("_gc_runtime_state", "generations")
            count = L.member_type("_gc_runtime_state", "generations").get("count", 3)
            heads += [(f"generation {i}", base + i * gen_size + L.offset("gc_generation", "head")) for i in range(count)]
        else:  # incremental GC layout: young + old[2]
            heads.append(("young", state + L.offset("_gc_runtime_state", "young") + L.offset("gc_generation", "head")))
            base = state + L.offset("_gc_runtime_state", "old")
            heads += [(f"old {i}", base + i * gen_size + L.offset("gc_generation", "head")) for i in range(2)]
        heads.append(("permanent", state + L.offset("_gc_runtime_state", "permanent_generation") + L.offset("gc_generation", "head")))
        return heads

    def gc_objects(self) -> Iterator[Tuple[int, int]]:
        """(object address, type address) of every GC-tracked object."""
        L = self.L
        gc_size = L.size("PyGC_Head")
        off_next = L.offset("PyGC_Head", "_gc_next") if L.has("PyGC_Head", "_gc_next") else L.offset("PyGC_Head", "gc.gc_next")
        off_type = self.o.off_type
        read = self.o.mem.read
        seen = set()
        for label, head in self.generation_heads():
            try:
                node = _U64.unpack(read(head + off_next, 8))[0] & ~3
            except MemoryReadError as exc:
                self.warnings.append(f"GC {label}: list head unreadable ({exc})")
                continue
            count = 0
            while node != head:
                if node in seen or count > MAX_GC_OBJECTS:
                    self.warnings.append(f"GC {label}: list loops at 0x{node:x}; walk stopped after {count} objects")
                    break
                seen.add(node)
                obj = node + gc_size
                try:
                    raw = read(node + off_next, gc_size - off_next + off_type + 8)
                except MemoryReadError as exc:
                    self.warnings.append(f"GC {label}: walk broken at 0x{node:x} after {count} objects ({exc})")
                    break
                nxt = _U64.unpack_from(raw, 0)[0] & ~3
                type_addr = _U64.unpack_from(raw, gc_size - off_next + off_type)[0]
                yield obj, type_addr
                count += 1
                node = nxt

    def is_type_object(self, type_addr: int) -> bool:
        """True if objects of ``type_addr`` are themselves types (it is ``type`` or a metaclass)."""
        try:
            return bool(self.o.type_flags(type_addr) & Py_TPFLAGS_TYPE_SUBCLASS)
        except MemoryReadError:
            return False

    # -- modules ---------------------------------------------------------------------------------
    def modules_dict(self) -> int:
        L = self.L
        if L.has("PyInterpreterState", "modules"):
            return self.o.u64(self.rt.interpreter + L.offset("PyInterpreterState", "modules"))
        return self.o.u64(self.rt.interpreter + L.offset("PyInterpreterState", "imports.modules"))

    def modules(self) -> Dict[str, int]:
        """sys.modules as {name: module address} (module objects only)."""
        out = {}
        for name, value in self.o.str_dict(self.modules_dict()).items():
            if self._is_module(value):
                out[name] = value
        return out

    def _is_module(self, obj: int) -> bool:
        try:
            return self.o.kind(obj) == "module" or self.mro_has(self.o.type_of(obj), "module")
        except MemoryReadError:
            return False

    def mro_has(self, type_addr: int, builtin_name: str) -> bool:
        """True if a builtin type named ``builtin_name`` is in the MRO of ``type_addr``."""
        try:
            mro = self.o.u64(type_addr + self.o.off_tp_mro)
            return any(self.o.kind_of_type(t) == builtin_name for t in self.o.tuple_items(mro)) if mro else False
        except (MemoryReadError, CorruptObjectError):
            return False

    # -- instance dicts --------------------------------------------------------------------------
    def instance_dict(self, obj: int) -> Dict[str, int]:
        """An object's attributes {name: value address}, whichever way this version stores them:
        a dict at tp_dictoffset (<= 3.10), the managed dict / values pre-header (3.11),
        tagged dict-or-values (3.12), or inline values after the object (3.13)."""
        o = self.o
        type_addr = o.type_of(obj)
        flags = o.type_flags(type_addr)
        L = self.L
        managed = L.has_const("Py_TPFLAGS_MANAGED_DICT") and flags & L.const("Py_TPFLAGS_MANAGED_DICT")
        if not managed:
            dictoffset = struct.unpack("<q", o.mem.read(type_addr + o.off_tp_dictoffset, 8))[0]
            if dictoffset == 0:
                return {}
            if dictoffset < 0:  # variable-size objects keep the dict at the end
                raise CorruptObjectError(f"object 0x{obj:x}: negative tp_dictoffset is not supported")
            dict_addr = o.u64(obj + dictoffset)
            return o.str_dict(dict_addr) if dict_addr else {}
        cached_keys = o.u64(type_addr + o.off_ht_cached_keys)
        if L.version >= (3, 13):
            dict_addr = o.u64(obj - 3 * 8)
            if dict_addr:
                return o.str_dict(dict_addr)
            if L.has_const("Py_TPFLAGS_INLINE_VALUES") and flags & L.const("Py_TPFLAGS_INLINE_VALUES"):
                basicsize = o.u64(type_addr + o.off_tp_basicsize)
                return self._values_dict(cached_keys, obj + basicsize)
            return {}
        if L.version >= (3, 12):
            dict_or_values = o.u64(obj - 3 * 8)
            if dict_or_values & 1:
                return self._values_dict(cached_keys, dict_or_values - 1)
            return o.str_dict(dict_or_values) if dict_or_values else {}
        dict_addr = o.u64(obj - 3 * 8)
        if dict_addr:
            return o.str_dict(dict_addr)
        values = o.u64(obj - 4 * 8)
        return self._values_dict(cached_keys, values) if values else {}

    def _values_dict(self, keys: int, values: int) -> Dict[str, int]:
        out = {}
        for key, value in self.o.keys_items(keys, values):
            if self.o.kind(key) == "str":
                out[self.o.read_str(key)] = value
        return out
