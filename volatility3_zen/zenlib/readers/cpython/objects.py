"""Decoding CPython objects from raw process memory, for one interpreter version.

``ObjectReader`` turns addresses into Python values (str, bytes, int, float, complex, tuple, frozenset,
dict items, ...) using a per-version ``CPythonLayout``.  Offsets are looked up once, in ``__init__``,
and kept as plain ints: the walk of a torch process decodes hundreds of thousands of objects.

Builtin types are recognised by name (``tp_name`` of a static, non-heap type), so no symbol table is
needed; the interpreter's own static types cannot be confused with user classes, which are heap types.
"""

import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ...errors import CorruptObjectError, MemoryReadError, ZenError
from ..memory import ProcessMemory
from ...representation.program import CodeRef
from .layouts import CPythonLayout

_U64 = struct.Struct("<Q")
_2U64 = struct.Struct("<QQ")
_3U64 = struct.Struct("<QQQ")
_I64 = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")
_2DOUBLE = struct.Struct("<dd")

# Sanity limits: a corrupted length field must not make us read gigabytes.
MAX_STR = 1 << 24
MAX_TUPLE = 1 << 20
MAX_DIGITS = 1 << 16
MAX_DICT_LOG2 = 26

# What decoding smeared memory raises, besides our own errors: struct on an impossible size, a table
# indexed by a garbage byte, ...  Loops over many objects catch these per object and go on.
DECODE_ERRORS = (ZenError, struct.error, ValueError, IndexError, KeyError, OverflowError)

# Names of the static types we decode (tp_name of the builtin type object).
BUILTIN_KINDS = {
    "str", "bytes", "int", "bool", "float", "complex", "tuple", "list", "dict", "set", "frozenset",
    "code", "function", "type", "module", "NoneType", "ellipsis", "cell", "classmethod", "staticmethod",
    "property", "method", "NotImplementedType", "builtin_function_or_method", "mappingproxy",
}

# The exported type objects of those kinds (libpython's, or a static python's, dynamic symbols).  Their
# addresses identify the builtin types without reading them: smeared memory that hits a type object
# (tp_name, tp_flags) would otherwise make every object of that kind unreadable, every code object
# whose constants hold a tuple, say, instead of only the objects it hit.
BUILTIN_TYPE_SYMBOLS = {
    "PyUnicode_Type": "str", "PyBytes_Type": "bytes", "PyLong_Type": "int", "PyBool_Type": "bool",
    "PyFloat_Type": "float", "PyComplex_Type": "complex", "PyTuple_Type": "tuple", "PyList_Type": "list",
    "PyDict_Type": "dict", "PySet_Type": "set", "PyFrozenSet_Type": "frozenset", "PyCode_Type": "code",
    "PyFunction_Type": "function", "PyType_Type": "type", "PyModule_Type": "module", "_PyNone_Type": "NoneType",
    "PyEllipsis_Type": "ellipsis", "PyCell_Type": "cell", "PyClassMethod_Type": "classmethod",
    "PyStaticMethod_Type": "staticmethod", "PyProperty_Type": "property", "PyMethod_Type": "method",
    "_PyNotImplemented_Type": "NotImplementedType", "PyCFunction_Type": "builtin_function_or_method",
    "PyDictProxy_Type": "mappingproxy",
}


class _Unreadable:
    """Stands for a value whose memory could not be read (keeps a partial result usable)."""

    def __init__(self, address: int, reason: str):
        self.address = address
        self.reason = reason

    def __repr__(self) -> str:
        return f"<unreadable 0x{self.address:x}: {self.reason}>"


class ObjectReader:
    def __init__(self, memory: ProcessMemory, layout: CPythonLayout):
        self.mem = memory
        self.layout = layout
        self.version = layout.version
        L = layout
        self.off_type = L.offset("PyObject", "ob_type")
        self.off_size = L.offset("PyVarObject", "ob_size")
        self.off_tp_name = L.offset("PyTypeObject", "tp_name")
        self.off_tp_flags = L.offset("PyTypeObject", "tp_flags")
        self.off_tp_basicsize = L.offset("PyTypeObject", "tp_basicsize")
        self.off_tp_dictoffset = L.offset("PyTypeObject", "tp_dictoffset")
        self.off_tp_base = L.offset("PyTypeObject", "tp_base")
        self.off_tp_bases = L.offset("PyTypeObject", "tp_bases")
        self.off_tp_mro = L.offset("PyTypeObject", "tp_mro")
        self.off_tp_dict = L.offset("PyTypeObject", "tp_dict")
        self.off_ht_name = L.offset("PyHeapTypeObject", "ht_name")
        self.off_ht_qualname = L.offset("PyHeapTypeObject", "ht_qualname")
        self.off_ht_cached_keys = L.offset("PyHeapTypeObject", "ht_cached_keys")
        self.off_tuple_items = L.offset("PyTupleObject", "ob_item")
        self.off_list_items = L.offset("PyListObject", "ob_item")
        self.off_bytes_sval = L.offset("PyBytesObject", "ob_sval")
        self.off_float = L.offset("PyFloatObject", "ob_fval")
        self.off_complex = L.offset("PyComplexObject", "cval")
        self.size_ascii = L.size("PyASCIIObject")
        self.size_compact = L.size("PyCompactUnicodeObject")
        self.off_str_length = L.offset("PyASCIIObject", "length")
        self.state_off, _, _ = L.bitfield("PyASCIIObject", "state.kind")
        self.state_kind = self._bits("state.kind")
        self.state_compact = self._bits("state.compact")
        self.state_ascii = self._bits("state.ascii")
        self.off_unicode_data = L.offset("PyUnicodeObject", "data")
        self.long_v312 = L.has("PyLongObject", "long_value")
        if self.long_v312:
            self.off_long_tag = L.offset("PyLongObject", "long_value.lv_tag")
            self.off_long_digits = L.offset("PyLongObject", "long_value.ob_digit")
        else:
            self.off_long_digits = L.offset("PyLongObject", "ob_digit")
        self.off_set_table = L.offset("PySetObject", "table")
        self.off_set_mask = L.offset("PySetObject", "mask")
        self.off_set_used = L.offset("PySetObject", "used")
        self.size_setentry = L.size("setentry")
        self.off_set_key = L.offset("setentry", "key")
        self.off_cell_ref = L.offset("PyCellObject", "ob_ref")
        self.off_md_dict = L.offset("PyModuleObject", "md_dict")
        self.heap_type_flag = L.const("Py_TPFLAGS_HEAPTYPE")  # tp_flags bit of a class made at run time
        self._init_dict_offsets()
        self._type_kind: Dict[int, str] = {}
        self._type_names: Dict[int, Optional[str]] = {}
        self._str_cache: Dict[int, Any] = {}
        self.warnings: List[str] = []

    def _bits(self, member: str) -> Tuple[int, int]:
        off, pos, length = self.layout.bitfield("PyASCIIObject", member)
        return pos + (off - self.state_off) * 8, (1 << length) - 1

    def _init_dict_offsets(self) -> None:
        L = self.layout
        self.off_ma_used = L.offset("PyDictObject", "ma_used")
        self.off_ma_keys = L.offset("PyDictObject", "ma_keys")
        self.off_ma_values = L.offset("PyDictObject", "ma_values")
        self.dict_v311 = L.has("PyDictKeysObject", "dk_log2_size")
        if self.dict_v311:
            self.off_dk_log2_size = L.offset("PyDictKeysObject", "dk_log2_size")
            self.off_dk_log2_index_bytes = L.offset("PyDictKeysObject", "dk_log2_index_bytes")
            self.off_dk_kind = L.offset("PyDictKeysObject", "dk_kind")
        else:
            self.off_dk_size = L.offset("PyDictKeysObject", "dk_size")
        self.off_dk_nentries = L.offset("PyDictKeysObject", "dk_nentries")
        self.off_dk_indices = L.offset("PyDictKeysObject", "dk_indices")
        self.size_entry = L.size("PyDictKeyEntry")
        self.size_unicode_entry = L.size("PyDictUnicodeEntry") if self.version >= (3, 11) else None
        self.off_values_values = L.offset("PyDictValues", "values") if self.version >= (3, 11) else 0

    def know_builtin_types(self, lookup: Callable[[str], Optional[Tuple[int, int]]]) -> int:
        """Seeds the kind of every builtin type whose symbol ``lookup`` resolves (to (address, size)):
        those kinds no longer depend on the type object's own, possibly smeared, fields.  Returns how
        many were found."""
        found = 0
        for symbol, kind in BUILTIN_TYPE_SYMBOLS.items():
            try:
                hit = lookup(symbol)
            except DECODE_ERRORS:
                hit = None
            if hit:
                self._type_kind[hit[0]] = kind
                self._type_names[hit[0]] = kind
                found += 1
        return found

    # -- primitives --------------------------------------------------------------------------------
    def u64(self, address: int) -> int:
        return _U64.unpack(self.mem.read(address, 8))[0]

    def type_of(self, obj: int) -> int:
        return _U64.unpack(self.mem.read(obj + self.off_type, 8))[0]

    def type_name(self, type_addr: int) -> Optional[str]:
        """tp_name of a type object (the C string; for heap types the short name)."""
        if type_addr in self._type_names:
            return self._type_names[type_addr]
        name = None
        try:
            ptr = self.u64(type_addr + self.off_tp_name)
            name = self.mem.read_cstring(ptr, 256).decode("utf-8", "replace")
        except MemoryReadError:
            pass
        self._type_names[type_addr] = name
        return name

    def type_flags(self, type_addr: int) -> int:
        return self.u64(type_addr + self.off_tp_flags)

    def kind_of_type(self, type_addr: int) -> str:
        """The builtin kind of objects of this type ('str', 'code', ...), or 'heap'/'other'."""
        kind = self._type_kind.get(type_addr)
        if kind is None:
            try:
                if self.type_flags(type_addr) & self.heap_type_flag:
                    kind = "heap"
                else:
                    name = self.type_name(type_addr)
                    kind = name if name in BUILTIN_KINDS else "other"
            except MemoryReadError:
                kind = "unreadable"
            self._type_kind[type_addr] = kind
        return kind

    def kind(self, obj: int) -> str:
        return self.kind_of_type(self.type_of(obj))

    def base_kind(self, obj: int) -> str:
        """Like ``kind``, but a subclass (heap, or static like OrderedDict) reports the builtin it
        derives from (via tp_base)."""
        type_addr = self.type_of(obj)
        for _ in range(64):
            kind = self.kind_of_type(type_addr)
            if kind not in ("heap", "other"):
                return kind
            type_addr = self.u64(type_addr + self.off_tp_base)
            if not type_addr:
                break
        return "other"

    # -- scalars ------------------------------------------------------------------------------------
    def read_str(self, obj: int) -> str:
        cached = self._str_cache.get(obj)
        if cached is not None:
            return cached
        head = self.mem.read(obj, self.size_ascii)
        length = _I64.unpack_from(head, self.off_str_length)[0]
        state = int.from_bytes(head[self.state_off : self.state_off + 4], "little")
        kind = (state >> self.state_kind[0]) & self.state_kind[1]
        compact = (state >> self.state_compact[0]) & 1
        ascii_ = (state >> self.state_ascii[0]) & 1
        if not 0 <= length <= MAX_STR or kind not in (1, 2, 4):
            raise CorruptObjectError(f"str at 0x{obj:x} has length {length}, kind {kind}")
        if compact:
            data_addr = obj + (self.size_ascii if ascii_ else self.size_compact)
        else:
            data_addr = self.u64(obj + self.off_unicode_data)
        raw = self.mem.read(data_addr, length * kind) if length else b""
        try:
            value = raw.decode(("latin-1", "utf-16-le", None, "utf-32-le")[kind - 1], "surrogatepass")
        except UnicodeDecodeError as exc:
            raise CorruptObjectError(f"str at 0x{obj:x} holds no text ({exc.reason})") from None
        self._str_cache[obj] = value
        return value

    def read_bytes(self, obj: int) -> bytes:
        size = _I64.unpack(self.mem.read(obj + self.off_size, 8))[0]
        if not 0 <= size <= MAX_STR * 4:
            raise CorruptObjectError(f"bytes at 0x{obj:x} has size {size}")
        return self.mem.read(obj + self.off_bytes_sval, size) if size else b""

    def read_int(self, obj: int) -> int:
        if self.long_v312:
            tag = self.u64(obj + self.off_long_tag)
            ndigits = tag >> 3
            sign = 1 - (tag & 3)
        else:
            size = _I64.unpack(self.mem.read(obj + self.off_size, 8))[0]
            ndigits, sign = abs(size), (1 if size > 0 else -1 if size < 0 else 0)
        if ndigits > MAX_DIGITS or sign not in (-1, 0, 1):
            raise CorruptObjectError(f"int at 0x{obj:x} has {ndigits} digits")
        if ndigits == 0:
            return 0
        digits = struct.unpack(f"<{ndigits}I", self.mem.read(obj + self.off_long_digits, 4 * ndigits))
        value = 0
        for d in reversed(digits):
            value = (value << 30) | d
        return sign * value

    def read_float(self, obj: int) -> float:
        return _DOUBLE.unpack(self.mem.read(obj + self.off_float, 8))[0]

    def read_complex(self, obj: int) -> complex:
        re, im = _2DOUBLE.unpack(self.mem.read(obj + self.off_complex, 16))
        return complex(re, im)

    # -- containers ---------------------------------------------------------------------------------
    def tuple_items(self, obj: int) -> Tuple[int, ...]:
        size = _I64.unpack(self.mem.read(obj + self.off_size, 8))[0]
        if not 0 <= size <= MAX_TUPLE:
            raise CorruptObjectError(f"tuple at 0x{obj:x} has size {size}")
        if size == 0:
            return ()
        return struct.unpack(f"<{size}Q", self.mem.read(obj + self.off_tuple_items, 8 * size))

    def list_items(self, obj: int) -> Tuple[int, ...]:
        size = _I64.unpack(self.mem.read(obj + self.off_size, 8))[0]
        if not 0 <= size <= MAX_TUPLE:
            raise CorruptObjectError(f"list at 0x{obj:x} has size {size}")
        if size == 0:
            return ()
        items = self.u64(obj + self.off_list_items)
        return struct.unpack(f"<{size}Q", self.mem.read(items, 8 * size))

    def set_items(self, obj: int) -> List[int]:
        table = self.u64(obj + self.off_set_table)
        mask = self.u64(obj + self.off_set_mask)
        used = self.u64(obj + self.off_set_used)
        if mask > (1 << 24):
            raise CorruptObjectError(f"set at 0x{obj:x} has mask {mask}")
        raw = self.mem.read(table, (mask + 1) * self.size_setentry)
        keys = []
        for i in range(mask + 1):
            key = _U64.unpack_from(raw, i * self.size_setentry + self.off_set_key)[0]
            if key and self.kind_of_type(self.type_of(key)) not in ("unreadable",):
                # deleted slots hold the dummy object, whose type is not a decodable builtin
                if self._is_dummy(key):
                    continue
                keys.append(key)
        if len(keys) != used:
            self.warnings.append(f"set at 0x{obj:x}: {len(keys)} keys found, {used} expected")
        return keys

    def _is_dummy(self, key: int) -> bool:
        try:
            t = self.type_of(key)
        except MemoryReadError:
            return True
        return t == 0 or self.type_name(t) in ("<dummy key> type", None)

    def dict_items(self, obj: int) -> Iterator[Tuple[int, int]]:
        """(key address, value address) pairs of a dict, in insertion order."""
        keys = self.u64(obj + self.off_ma_keys)
        values = self.u64(obj + self.off_ma_values)
        yield from self.keys_items(keys, values)

    def keys_items(self, keys: int, values: int) -> Iterator[Tuple[int, int]]:
        """Items of a PyDictKeysObject, with an optional split-table values array."""
        nentries = _I64.unpack(self.mem.read(keys + self.off_dk_nentries, 8))[0]
        if self.dict_v311:
            head = self.mem.read(keys, self.off_dk_indices)
            log2_size = head[self.off_dk_log2_size]
            index_bytes = 1 << head[self.off_dk_log2_index_bytes]
            dk_kind = head[self.off_dk_kind]
            if log2_size > MAX_DICT_LOG2:
                raise CorruptObjectError(f"dict keys at 0x{keys:x} have log2 size {log2_size}")
            entries = keys + self.off_dk_indices + index_bytes
            entry_size = self.size_entry if dk_kind == 0 else self.size_unicode_entry
            key_at, value_at = (8, 16) if dk_kind == 0 else (0, 8)
            usable = (2 << log2_size) // 3
        else:
            size = self.u64(keys + self.off_dk_size)
            if size > (1 << MAX_DICT_LOG2):
                raise CorruptObjectError(f"dict keys at 0x{keys:x} have size {size}")
            width = 1 if size <= 0xFF else 2 if size <= 0xFFFF else 4 if size <= 0xFFFFFFFF else 8
            entries = keys + self.off_dk_indices + size * width
            entry_size, key_at, value_at = self.size_entry, 8, 16
            usable = size
        if not 0 <= nentries <= usable:
            raise CorruptObjectError(f"dict keys at 0x{keys:x} have {nentries} entries")
        if nentries == 0:
            return
        raw = self.mem.read(entries, nentries * entry_size)
        vals = None
        if values:
            vals = struct.unpack(f"<{nentries}Q", self.mem.read(values + self.off_values_values, 8 * nentries))
        for i in range(nentries):
            key = _U64.unpack_from(raw, i * entry_size + key_at)[0]
            value = vals[i] if vals is not None else _U64.unpack_from(raw, i * entry_size + value_at)[0]
            if key and value:
                yield key, value

    def str_dict(self, obj: int) -> Dict[str, int]:
        """A dict with str keys (module/class/instance dicts) as {name: value address}."""
        out = {}
        for key, value in self.dict_items(obj):
            try:
                if self.kind(key) == "str":
                    out[self.read_str(key)] = value
            except DECODE_ERRORS:
                continue
        return out

    def type_namespace(self, type_addr: int) -> Dict[str, int]:
        """A heap class's own namespace (``cls.__dict__``) as {name: value address}."""
        return self.str_dict(self.u64(type_addr + self.off_tp_dict))

    def module_namespace(self, module_addr: int) -> Dict[str, int]:
        """A module's globals (``module.__dict__``) as {name: value address}."""
        return self.str_dict(self.u64(module_addr + self.off_md_dict))

    # -- generic constants --------------------------------------------------------------------------
    def read_const(self, obj: int, depth: int = 0) -> Any:
        """Decode a code-object constant. Nested code objects come back as ``CodeRef(address)``."""
        if depth > 64:
            raise CorruptObjectError(f"constant at 0x{obj:x} nests too deeply")
        kind = self.kind(obj)
        if kind == "str":
            return self.read_str(obj)
        if kind == "bytes":
            return self.read_bytes(obj)
        if kind == "int":
            return self.read_int(obj)
        if kind == "bool":
            return bool(self.read_int(obj))
        if kind == "float":
            return self.read_float(obj)
        if kind == "complex":
            return self.read_complex(obj)
        if kind == "NoneType":
            return None
        if kind == "ellipsis":
            return Ellipsis
        if kind == "tuple":
            return tuple(self.read_const(i, depth + 1) for i in self.tuple_items(obj))
        if kind == "frozenset":
            return frozenset(self.read_const(i, depth + 1) for i in self.set_items(obj))
        if kind == "code":
            return CodeRef(obj)
        raise CorruptObjectError(f"constant at 0x{obj:x} has unexpected type {self.type_name(self.type_of(obj))!r}")
