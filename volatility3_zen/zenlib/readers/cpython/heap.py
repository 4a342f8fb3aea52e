"""Enumerating a CPython heap: GC generations, the modules dict, instance dicts.

Code objects are never GC-tracked, so they are reached through functions and co_consts (see
``recover``); functions, classes, modules and instances are walked through every GC generation
*and* the permanent generation (``gc.freeze()`` moves objects there and ``gc.get_objects()`` skips it).
"""

import struct
from typing import Dict, Iterator, List, Optional, Set, Tuple

import numpy

from ...errors import CorruptObjectError, MemoryReadError
from .objects import DECODE_ERRORS, ObjectReader
from .runtime import Runtime

_2U64 = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
MAX_GC_OBJECTS = 50_000_000
_SCAN_BLOCK = 1 << 22  # words per step of the orphaned-node search (bounds its temporary arrays)


class Heap:
    def __init__(self, runtime: Runtime, objects: ObjectReader):
        self.rt = runtime
        self.o = objects
        self.L = L = runtime.layout
        self.warnings: List[str] = []
        self.lists_broken = False  # a GC walk found a broken list: objects may be missing from it
        gc_member = "_gc_{}" if L.has("PyGC_Head", "_gc_next") else "gc.gc_{}"  # 3.7: union with a gc struct
        self.gc_size = L.size("PyGC_Head")
        self.off_gc_next = L.offset("PyGC_Head", gc_member.format("next"))
        self.off_gc_prev = L.offset("PyGC_Head", gc_member.format("prev"))
        # tp_flags bits; 0 where the version has no such flag, so that testing it is always false
        self.type_subclass_flag = L.const("Py_TPFLAGS_TYPE_SUBCLASS")
        self.managed_dict_flag = L.const("Py_TPFLAGS_MANAGED_DICT", 0)  # 3.11+
        self.inline_values_flag = L.const("Py_TPFLAGS_INLINE_VALUES", 0)  # 3.13+

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
        """(object address, type address) of every GC-tracked object.

        Each generation's list is walked forward from its head.  Corrupted memory breaks a list (an
        unreadable or null link, a loop): the list is then also walked backwards from its head, and
        once every list has been walked, the pieces cut off in the middle are searched for
        (``_orphaned_nodes``) and walked too, so a smeared heap loses only the objects it smeared.
        """
        heads = self.generation_heads()
        seen = {head for _label, head in heads}
        broken = 0
        for label, head in heads:
            for link, direction in ((self.off_gc_next, "forward"), (self.off_gc_prev, "backwards")):
                try:
                    first = self._link(head, link)
                except MemoryReadError as exc:
                    self.warnings.append(f"GC {label}: list head unreadable ({exc})")
                    break
                count = [0]
                end = yield from self._follow(first, link, seen, count)
                if end == head:
                    break
                broken += 1
                self.warnings.append(f"GC {label}: list broken {direction} after {count[0]} objects ({end})")
        if broken:
            self.lists_broken = True
            count = [0]
            for node in self._orphaned_nodes(seen):
                yield from self._follow(node, self.off_gc_next, seen, count)
            self.warnings.append(f"GC: {count[0]} objects recovered from pieces of broken lists")

    def _link(self, node: int, link: int) -> int:
        return _U64.unpack(self.o.mem.read(node + link, 8))[0] & ~3

    def _follow(self, node: int, link: int, seen: Set[int], count: List[int]) -> Iterator[Tuple[int, int]]:
        """Yields the objects of a GC list from ``node`` on, following the ``next`` or ``prev`` link,
        until it reaches a node already seen; returns that node, or why the list broke."""
        span = self.gc_size + self.o.off_type + 8
        while node not in seen:
            if not node or node % 8:
                return f"link to 0x{node:x}"
            if len(seen) > MAX_GC_OBJECTS:
                return "too many objects"
            try:
                raw = self.o.mem.read(node, span)
            except MemoryReadError as exc:
                return str(exc)
            seen.add(node)
            count[0] += 1
            yield node + self.gc_size, _U64.unpack_from(raw, self.gc_size + self.o.off_type)[0]
            node = _U64.unpack_from(raw, link)[0] & ~3
        return node

    def _orphaned_nodes(self, seen: Set[int]) -> Iterator[int]:
        """GC headers not yet seen whose ``next`` node links back to them through its ``prev``: the
        starts (and interiors) of list pieces that corruption cut off.  Freed and untracked objects
        fail this test (their ``next`` is a free-list pointer or null), and so do random words."""
        regions = [r for r in self.o.mem.regions if r.readable and r.writable]
        if not regions:
            return
        sizes = [r.size // 8 for r in regions]
        starts = numpy.array([r.start for r in regions], dtype=numpy.uint64)
        ends = numpy.array([r.end for r in regions], dtype=numpy.uint64)
        first_word = numpy.cumsum([0] + sizes[:-1]).astype(numpy.uint64)  # of each region in ``words``
        words = numpy.concatenate([numpy.frombuffer(self.o.mem.read_padded(r.start, r.size), dtype="<u8") for r in regions])
        found = []
        for region, first, size in zip(regions, first_word.tolist(), sizes):
            for lo in range(0, size, _SCAN_BLOCK):
                hi = min(size, lo + _SCAN_BLOCK)
                node = numpy.arange(lo, hi, dtype=numpy.uint64) * numpy.uint64(8) + numpy.uint64(region.start - self.off_gc_next)
                nxt = words[first + lo : first + hi] & ~numpy.uint64(3)
                back = nxt + numpy.uint64(self.off_gc_prev)  # where ``next`` keeps its ``prev`` link
                index = numpy.searchsorted(starts, back, side="right").astype(numpy.int64) - 1
                ok = (nxt % 8 == 0) & (index >= 0)
                index[~ok] = 0
                ok &= back < ends[index]
                at = numpy.where(ok, first_word[index] + (back - starts[index]) // numpy.uint64(8), 0).astype(numpy.int64)
                ok &= (words[at] & ~numpy.uint64(3)) == node
                found.append(node[ok])
        for node in numpy.concatenate(found).tolist():
            if node not in seen:
                yield node

    def is_type_object(self, type_addr: int) -> bool:
        """True if objects of ``type_addr`` are themselves types (it is ``type`` or a metaclass)."""
        try:
            return bool(self.o.type_flags(type_addr) & self.type_subclass_flag)
        except MemoryReadError:
            return False

    # -- modules ---------------------------------------------------------------------------------
    def modules_dict(self) -> int:
        L = self.L
        if L.has("PyInterpreterState", "modules"):
            return self.o.u64(self.rt.interpreter + L.offset("PyInterpreterState", "modules"))
        return self.o.u64(self.rt.interpreter + L.offset("PyInterpreterState", "imports.modules"))

    def modules(self) -> Dict[str, int]:
        """sys.modules as {name: module address} (module objects only).  Where smeared memory made
        sys.modules itself unreadable, the module objects on the GC lists, by their ``__name__``."""
        try:
            table = self.o.str_dict(self.modules_dict())
        except DECODE_ERRORS as exc:
            self.warnings.append(f"sys.modules unreadable ({exc}): modules taken from the GC lists")
            return self._modules_on_gc_lists()
        return {name: value for name, value in table.items() if self._is_module(value)}

    def _modules_on_gc_lists(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for obj, type_addr in self.gc_objects():
            try:
                if self.o.kind_of_type(type_addr) != "module" and not self.mro_has(type_addr, "module"):
                    continue
                name = self.o.module_namespace(obj).get("__name__")
                if name and self.o.kind(name) == "str":
                    out.setdefault(self.o.read_str(name), obj)
            except DECODE_ERRORS:
                continue
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
        a dict at tp_dictoffset (<= 3.10, and types without a managed dict after), the managed dict
        or values pointer of the pre-header (3.11), the tagged dict-or-values word (3.12), or the
        managed dict else the inline values after the object header (3.13).  A dict may itself be a
        split table whose values are the instance's values (``vars(obj)`` on 3.11+ makes one).
        An object without a dict (``__slots__``) has no attributes here: {}."""
        o = self.o
        type_addr = o.type_of(obj)
        flags = o.type_flags(type_addr)
        L = self.L
        if not flags & self.managed_dict_flag:
            dictoffset = struct.unpack("<q", o.mem.read(type_addr + o.off_tp_dictoffset, 8))[0]
            if dictoffset == 0:
                return {}
            if dictoffset < 0:  # variable-size objects (tuple subclasses...) keep the dict after their items
                dictoffset += self._var_size(obj, type_addr)
            dict_addr = o.u64(obj + dictoffset)
            return o.str_dict(dict_addr) if dict_addr else {}
        cached_keys = o.u64(type_addr + o.off_ht_cached_keys)
        if L.version >= (3, 13):  # PyManagedDictPointer at -3 words; PyDictValues right after the header
            dict_addr = o.u64(obj - 3 * 8)
            if dict_addr:
                return o.str_dict(dict_addr)
            if flags & self.inline_values_flag:
                values = obj + o.u64(type_addr + o.off_tp_basicsize)  # == obj + sizeof(PyObject)
                capacity, _size, _embedded, valid = o.mem.read(values, 4)
                if not valid:  # the values moved into a dict, whose pointer is null: nothing to read
                    return {}
                return self._values_dict(cached_keys, values, capacity)
            return {}
        if L.version >= (3, 12):  # PyDictOrValues: a dict, or (values - 1) tagged by its low bit
            dict_or_values = o.u64(obj - 3 * 8)
            if dict_or_values & 1:
                return self._values_dict(cached_keys, dict_or_values + 1)
            return o.str_dict(dict_or_values) if dict_or_values else {}
        dict_addr = o.u64(obj - 3 * 8)  # 3.11: the dict at -3 words, else the values at -4
        if dict_addr:
            return o.str_dict(dict_addr)
        values = o.u64(obj - 4 * 8)
        return self._values_dict(cached_keys, values) if values else {}

    def _var_size(self, obj: int, type_addr: int) -> int:
        """``_PyObject_VAR_SIZE``: basicsize + |ob_size| * itemsize, rounded up to a pointer."""
        o = self.o
        if self.L.version >= (3, 12) and o.base_kind(obj) == "int":  # ob_size is lv_tag there
            raise CorruptObjectError(f"object 0x{obj:x}: the dict of an int subclass is not supported")
        basicsize = o.u64(type_addr + o.off_tp_basicsize)
        itemsize = o.u64(type_addr + self.L.offset("PyTypeObject", "tp_itemsize"))
        items = abs(struct.unpack("<q", o.mem.read(obj + o.off_size, 8))[0])
        size = basicsize + items * itemsize
        return (size + 7) & ~7

    def _values_dict(self, keys: int, values: int, capacity: Optional[int] = None) -> Dict[str, int]:
        """A split table: the names in the type's shared keys, the values in the instance's array
        (a value slot left null, e.g. by ``del``, is an attribute the instance does not have).

        The shared keys only grow while their entries plus their usable slots shrink, and an
        instance's array got that sum when it was made: the keys never outgrow an array (3.13 says
        how big it is, ``capacity``, which is checked)."""
        o = self.o
        if capacity is not None:
            nentries = struct.unpack("<q", o.mem.read(keys + o.off_dk_nentries, 8))[0]
            if nentries > capacity:
                raise CorruptObjectError(f"values at 0x{values:x} hold {capacity} slots, their keys {nentries}")
        out = {}
        for key, value in o.keys_items(keys, values):
            if o.kind(key) == "str":
                out[o.read_str(key)] = value
        return out
