"""The shipped CPython layout tables (symbols/cpython) and their loader.

The tables are checked three ways: against Volatility (schema, loading, reading a structure), against
the 3.11.7 offsets measured in docs/cpython-and-torch-in-memory.md, and against what each version's
own interpreter shows about itself: type sizes, flags, and raw memory of live objects read with ctypes
at the table's offsets (the probe below runs inside the target interpreter).  Quickened and instrumented
bytecode read from a live interpreter must de-quicken to ``co_code`` with the shipped opcode tables.
Tests needing a pyenv interpreter are skipped where it is not installed.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from isf_testlib import (REPO, assert_generator_reproduces, assert_schema_rejects_a_field_without_offset,
                         assert_valid_isf, assert_volatility_agrees_with_the_loader, buffer_object, missing_references,
                         read_json, volatility_context)
from volatility3_zen.zenlib.readers.cpython import layouts
from volatility3_zen.zenlib.readers.cpython.layouts import CPythonLayout, LayoutKeyError, load_layout, supported_versions
from volatility3_zen.zenlib.errors import UnsupportedVersionError

VERSIONS = ["3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


def isf_path(version: str) -> str:
    return os.path.join(layouts.SYMBOLS_DIR, f"cpython-{version}.json")


def read_isf(version: str) -> dict:
    return read_json(isf_path(version))


def interpreter(version: str) -> str:
    """The interpreter whose libpython the table was generated from (skip the test if absent)."""
    libpython = read_isf(version)["metadata"]["producer"]["libpython"]
    python = os.path.join(os.path.dirname(os.path.dirname(libpython)), "bin", "python3")
    if not os.path.exists(python):
        pytest.skip(f"{python} is not installed")
    return python


# -- Volatility: schema, loading ---------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_isf_validates_against_volatility_schema(version):
    assert_valid_isf(read_isf(version))


def test_schema_validation_is_not_vacuous():
    assert_schema_rejects_a_field_without_offset(read_isf("3.12"), "PyObject", "ob_type")


@pytest.mark.parametrize("version", VERSIONS)
def test_isf_is_self_contained(version):
    """Every type a field, enum or symbol names is defined in the same file."""
    assert not missing_references(read_isf(version))


@pytest.mark.parametrize("version", VERSIONS)
def test_isf_loads_in_volatility_and_agrees_with_the_loader(version, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ctx = volatility_context("cpython", isf_path(version))
    layout = load_layout(version)
    assert_volatility_agrees_with_the_loader(ctx, "cpython", read_isf(version)["user_types"], layout)

    # Read a compact non-ASCII str header through Volatility: the bitfields must decode as the loader says.
    offset, position, length = layout.bitfield("PyASCIIObject", "state.kind")
    state = (2 << position) | (1 << layout.bitfield("PyASCIIObject", "state.compact")[1])
    buffer = bytearray(layout.size("PyCompactUnicodeObject"))
    length_at = layout.offset("PyASCIIObject", "length")
    buffer[length_at:length_at + 8] = (7).to_bytes(8, "little")
    buffer[offset:offset + 4] = state.to_bytes(4, "little")
    obj = buffer_object(ctx, "cpython!PyASCIIObject", buffer)
    assert (obj.length, obj.state.kind, obj.state.compact, obj.state.ascii) == (7, 2, 1, 0)


# -- The 3.11.7 table measured in docs/cpython-and-torch-in-memory.md ---------------------------------

DOC_3_11_7 = {
    "PY_VERSION_HEX": 0x30B07F0, "sizeof.PyObject": 16, "PyObject.ob_refcnt": 0, "PyObject.ob_type": 8,
    "PyVarObject.ob_size": 16, "sizeof.PyGC_Head": 16, "sizeof._PyRuntimeState": 166688,
    "_PyRuntimeState.interpreters.head": 40, "_PyRuntimeState.interpreters.main": 48,
    "_PyRuntimeState._main_interpreter": 58936, "sizeof.PyInterpreterState": 107752, "PyInterpreterState.next": 0,
    "PyInterpreterState.threads.head": 16, "PyInterpreterState.gc": 648, "PyInterpreterState.modules": 888,
    "PyInterpreterState.sysdict": 904, "PyInterpreterState.builtins": 912, "PyThreadState.next": 8,
    "PyThreadState.interp": 16, "sizeof.struct _gc_runtime_state": 240, "sizeof.struct gc_generation": 24,
    "struct _gc_runtime_state.generations": 24, "struct _gc_runtime_state.permanent_generation": 104,
    "struct gc_generation.head": 0, "struct gc_generation.threshold": 16, "struct gc_generation.count": 20,
    "_PyGC_PREV_MASK_FINALIZED": 1, "_PyGC_PREV_MASK_COLLECTING": 2, "sizeof.PyTypeObject": 408,
    "sizeof.PyHeapTypeObject": 904, "PyTypeObject.tp_name": 24, "PyTypeObject.tp_basicsize": 32,
    "PyTypeObject.tp_itemsize": 40, "PyTypeObject.tp_flags": 168, "PyTypeObject.tp_base": 256,
    "PyTypeObject.tp_dict": 264, "PyTypeObject.tp_bases": 336, "PyTypeObject.tp_mro": 344,
    "PyTypeObject.tp_dictoffset": 288, "PyTypeObject.tp_subclasses": 360, "PyHeapTypeObject.ht_name": 848,
    "PyHeapTypeObject.ht_qualname": 864, "PyHeapTypeObject.ht_slots": 856, "PyHeapTypeObject.ht_module": 880,
    "PyHeapTypeObject.ht_cached_keys": 872, "Py_TPFLAGS_HEAPTYPE": 0x200, "Py_TPFLAGS_MANAGED_DICT": 0x10,
    "Py_TPFLAGS_TYPE_SUBCLASS": 0x80000000, "Py_TPFLAGS_HAVE_GC": 0x4000, "Py_TPFLAGS_METHOD_DESCRIPTOR": 0x20000,
    "Py_TPFLAGS_LONG_SUBCLASS": 0x1000000, "sizeof.PyFloatObject": 24, "sizeof.PyComplexObject": 32,
    "sizeof.PyFunctionObject": 136, "PyFunctionObject.func_globals": 16, "PyFunctionObject.func_builtins": 24,
    "PyFunctionObject.func_name": 32, "PyFunctionObject.func_qualname": 40, "PyFunctionObject.func_code": 48,
    "PyFunctionObject.func_defaults": 56, "PyFunctionObject.func_kwdefaults": 64,
    "PyFunctionObject.func_closure": 72, "PyFunctionObject.func_doc": 80, "PyFunctionObject.func_dict": 88,
    "PyFunctionObject.func_module": 104, "PyFunctionObject.func_annotations": 112, "sizeof.PyCodeObject": 192,
    "PyCodeObject.co_consts": 24, "PyCodeObject.co_names": 32, "PyCodeObject.co_exceptiontable": 40,
    "PyCodeObject.co_flags": 48, "PyCodeObject.co_argcount": 56, "PyCodeObject.co_posonlyargcount": 60,
    "PyCodeObject.co_kwonlyargcount": 64, "PyCodeObject.co_stacksize": 68, "PyCodeObject.co_firstlineno": 72,
    "PyCodeObject.co_nlocalsplus": 76, "PyCodeObject.co_nlocals": 80, "PyCodeObject.co_ncellvars": 88,
    "PyCodeObject.co_nfreevars": 92, "PyCodeObject.co_localsplusnames": 96, "PyCodeObject.co_localspluskinds": 104,
    "PyCodeObject.co_filename": 112, "PyCodeObject.co_name": 120, "PyCodeObject.co_qualname": 128,
    "PyCodeObject.co_linetable": 136, "PyCodeObject.co_weakreflist": 144, "PyCodeObject.co_extra": 176,
    "PyCodeObject._co_firsttraceable": 168, "PyCodeObject.co_code_adaptive": 184, "PyCodeObject.co_warmup": 52,
    "PyCodeObject._co_code": 152, "PyCodeObject.co_nplaincellvars": 84, "CO_FAST_LOCAL": 32, "CO_FAST_CELL": 64,
    "CO_FAST_FREE": 128, "PyTupleObject.ob_item": 24, "PyListObject.ob_item": 24, "PyBytesObject.ob_shash": 24,
    "PyBytesObject.ob_sval": 32, "sizeof.PyASCIIObject": 48, "sizeof.PyCompactUnicodeObject": 72,
    "PyASCIIObject.length": 16, "PyASCIIObject.hash": 24, "PyASCIIObject.state": 32, "PyFloatObject.ob_fval": 16,
    "PyLongObject.ob_digit": 24, "sizeof.PyDictObject": 48, "PyDictObject.ma_used": 16, "PyDictObject.ma_keys": 32,
    "PyDictObject.ma_values": 40, "sizeof.PyDictKeysObject": 32, "PyDictKeysObject.dk_refcnt": 0,
    "PyDictKeysObject.dk_log2_size": 8, "PyDictKeysObject.dk_log2_index_bytes": 9, "PyDictKeysObject.dk_kind": 10,
    "PyDictKeysObject.dk_version": 12, "PyDictKeysObject.dk_usable": 16, "PyDictKeysObject.dk_nentries": 24,
    "PyDictKeysObject.dk_indices": 32, "sizeof.PyDictKeyEntry": 24, "PyDictKeyEntry.me_hash": 0,
    "PyDictKeyEntry.me_key": 8, "PyDictKeyEntry.me_value": 16, "sizeof.PyDictUnicodeEntry": 16,
    "PyDictUnicodeEntry.me_key": 0, "PyDictUnicodeEntry.me_value": 8, "sizeof.PyModuleObject": 56,
    "PyModuleObject.md_dict": 16, "PyModuleObject.md_def": 24, "PyModuleObject.md_name": 48,
    "PyCellObject.ob_ref": 16, "sizeof.PySetObject": 200, "PySetObject.fill": 16, "PySetObject.used": 24,
    "PySetObject.mask": 32, "PySetObject.table": 40, "sizeof.setentry": 16, "setentry.key": 0, "setentry.hash": 8,
    "PyComplexObject.cval": 16, "PyUnicodeObject.data.any": 72, "PyMethodObject.im_func": 16,
    "PyMethodObject.im_self": 24,
}


@pytest.mark.parametrize("key", sorted(DOC_3_11_7))
def test_3_11_7_matches_the_measured_table(key):
    layout = load_layout("3.11")
    if key.startswith("sizeof."):
        got = layout.size(key[len("sizeof."):])
    elif "." in key:
        got = layout.offset(*key.split(".", 1))
    else:
        got = layout.const(key)
    assert got == DOC_3_11_7[key]


# -- What each interpreter says about itself ----------------------------------------------------------

# Members whose offsets the probe needs (those a version lacks are left out).
PROBED_MEMBERS = [
    "PyObject.ob_refcnt", "PyObject.ob_type", "PyVarObject.ob_size", "PyTupleObject.ob_item", "PyListObject.ob_item",
    "PyTypeObject.tp_name", "PyTypeObject.tp_basicsize", "PyTypeObject.tp_itemsize", "PyTypeObject.tp_flags",
    "PyTypeObject.tp_base", "PyTypeObject.tp_mro", "PyTypeObject.tp_bases", "PyTypeObject.tp_dictoffset",
    "PyHeapTypeObject.ht_name", "PyHeapTypeObject.ht_qualname",
    "PyFunctionObject.func_code", "PyFunctionObject.func_globals", "PyFunctionObject.func_name",
    "PyFunctionObject.func_qualname", "PyFunctionObject.func_defaults", "PyFunctionObject.func_kwdefaults",
    "PyFunctionObject.func_closure", "PyFunctionObject.func_module", "PyFunctionObject.func_doc",
    "PyFunctionObject.func_dict", "PyFunctionObject.func_builtins",
    "PyCodeObject.co_consts", "PyCodeObject.co_names", "PyCodeObject.co_filename", "PyCodeObject.co_name",
    "PyCodeObject.co_qualname", "PyCodeObject.co_code", "PyCodeObject.co_exceptiontable", "PyCodeObject.co_flags",
    "PyCodeObject.co_argcount", "PyCodeObject.co_kwonlyargcount", "PyCodeObject.co_firstlineno",
    "PyCodeObject.co_stacksize", "PyCodeObject.co_code_adaptive", "PyCodeObject._co_monitoring",
    "_PyCoMonitoringData.lines", "_PyCoMonitoringData.per_instruction_opcodes",
    "_PyCoLineInstrumentationData.original_opcode",
    "PyBytesObject.ob_sval", "PyBytesObject.ob_shash", "PyASCIIObject.length", "PyASCIIObject.hash",
    "PyFloatObject.ob_fval", "PyComplexObject.cval", "Py_complex.real", "Py_complex.imag",
    "PyLongObject.ob_digit", "PyLongObject.long_value.lv_tag", "PyLongObject.long_value.ob_digit",
    "PyDictObject.ma_used", "PyDictObject.ma_keys", "PyDictKeysObject.dk_size", "PyDictKeysObject.dk_log2_size",
    "PyDictKeysObject.dk_log2_index_bytes", "PyDictKeysObject.dk_kind", "PyDictKeysObject.dk_nentries",
    "PyDictKeysObject.dk_indices", "PyDictKeyEntry.me_hash", "PyDictKeyEntry.me_key", "PyDictKeyEntry.me_value",
    "PyDictUnicodeEntry.me_key", "PyDictUnicodeEntry.me_value",
    "PyModuleObject.md_dict", "PyCellObject.ob_ref", "PySetObject.used", "PySetObject.mask", "PySetObject.table",
    "setentry.key", "setentry.hash", "PyMethodObject.im_func", "PyMethodObject.im_self",
    "classmethod.cm_callable", "staticmethod.sm_callable", "propertyobject.prop_get", "propertyobject.prop_set",
    "propertyobject.prop_doc", "PyGenObject.gi_name", "PyGenObject.gi_qualname",
    "PyGC_Head._gc_next", "PyGC_Head._gc_prev", "PyGC_Head.gc.gc_next", "PyGC_Head.gc.gc_prev",
    "_PyRuntimeState.interpreters.head", "_PyRuntimeState.interpreters.main", "_PyRuntimeState._main_interpreter",
    "_PyRuntimeState.gc", "_PyRuntimeState.debug_offsets", "PyInterpreterState.next",
    "PyInterpreterState.threads.head", "PyInterpreterState.tstate_head", "PyInterpreterState.gc",
    "PyInterpreterState.modules", "PyInterpreterState.imports.modules", "PyInterpreterState.sysdict",
    "PyInterpreterState.builtins",
    "PyThreadState.next", "PyThreadState.interp", "_gc_runtime_state.generations",
    "_gc_runtime_state.permanent_generation", "_gc_runtime_state.enabled", "gc_generation.head",
    "gc_generation.threshold",
]
PROBED_SIZES = ["PyGC_Head", "PyASCIIObject", "PyCompactUnicodeObject", "setentry", "gc_generation",
                "_PyCoLineInstrumentationData", "PyDictKeyEntry", "PyDictUnicodeEntry"]

# 3.13's _Py_DebugOffsets (filled in by CPython itself with offsetof/sizeof) -> our table.
DEBUG_OFFSETS = {
    "runtime_state.size": ("_PyRuntimeState", None), "runtime_state.finalizing": ("_PyRuntimeState", "_finalizing"),
    "runtime_state.interpreters_head": ("_PyRuntimeState", "interpreters.head"),
    "interpreter_state.size": ("PyInterpreterState", None), "interpreter_state.id": ("PyInterpreterState", "id"),
    "interpreter_state.next": ("PyInterpreterState", "next"),
    "interpreter_state.threads_head": ("PyInterpreterState", "threads.head"),
    "interpreter_state.gc": ("PyInterpreterState", "gc"),
    "interpreter_state.imports_modules": ("PyInterpreterState", "imports.modules"),
    "interpreter_state.sysdict": ("PyInterpreterState", "sysdict"),
    "interpreter_state.builtins": ("PyInterpreterState", "builtins"),
    "thread_state.size": ("PyThreadState", None), "thread_state.prev": ("PyThreadState", "prev"),
    "thread_state.next": ("PyThreadState", "next"), "thread_state.interp": ("PyThreadState", "interp"),
    "thread_state.current_frame": ("PyThreadState", "current_frame"),
    "thread_state.thread_id": ("PyThreadState", "thread_id"),
    "thread_state.native_thread_id": ("PyThreadState", "native_thread_id"),
    "thread_state.datastack_chunk": ("PyThreadState", "datastack_chunk"),
    "thread_state.status": ("PyThreadState", "_status"),
    "code_object.size": ("PyCodeObject", None), "code_object.filename": ("PyCodeObject", "co_filename"),
    "code_object.name": ("PyCodeObject", "co_name"), "code_object.qualname": ("PyCodeObject", "co_qualname"),
    "code_object.linetable": ("PyCodeObject", "co_linetable"),
    "code_object.firstlineno": ("PyCodeObject", "co_firstlineno"),
    "code_object.argcount": ("PyCodeObject", "co_argcount"),
    "code_object.localsplusnames": ("PyCodeObject", "co_localsplusnames"),
    "code_object.localspluskinds": ("PyCodeObject", "co_localspluskinds"),
    "code_object.co_code_adaptive": ("PyCodeObject", "co_code_adaptive"),
    "pyobject.size": ("PyObject", None), "pyobject.ob_type": ("PyObject", "ob_type"),
    "type_object.size": ("PyTypeObject", None), "type_object.tp_name": ("PyTypeObject", "tp_name"),
    "type_object.tp_repr": ("PyTypeObject", "tp_repr"), "type_object.tp_flags": ("PyTypeObject", "tp_flags"),
    "tuple_object.size": ("PyTupleObject", None), "tuple_object.ob_item": ("PyTupleObject", "ob_item"),
    "tuple_object.ob_size": ("PyTupleObject", "ob_base.ob_size"),
    "list_object.size": ("PyListObject", None), "list_object.ob_item": ("PyListObject", "ob_item"),
    "list_object.ob_size": ("PyListObject", "ob_base.ob_size"),
    "dict_object.size": ("PyDictObject", None), "dict_object.ma_keys": ("PyDictObject", "ma_keys"),
    "dict_object.ma_values": ("PyDictObject", "ma_values"),
    "float_object.size": ("PyFloatObject", None), "float_object.ob_fval": ("PyFloatObject", "ob_fval"),
    "long_object.size": ("PyLongObject", None), "long_object.lv_tag": ("PyLongObject", "long_value.lv_tag"),
    "long_object.ob_digit": ("PyLongObject", "long_value.ob_digit"),
    "bytes_object.size": ("PyBytesObject", None), "bytes_object.ob_size": ("PyBytesObject", "ob_base.ob_size"),
    "bytes_object.ob_sval": ("PyBytesObject", "ob_sval"),
    "unicode_object.size": ("PyUnicodeObject", None),
    "unicode_object.state": ("PyUnicodeObject", "_base._base.state"),
    "unicode_object.length": ("PyUnicodeObject", "_base._base.length"),
    "unicode_object.asciiobject_size": ("PyASCIIObject", None),
    "gc.size": ("_gc_runtime_state", None), "gc.collecting": ("_gc_runtime_state", "collecting"),
}

# Runs inside the target interpreter (3.7 syntax).  Input: offsets/sizes from our table; output: what
# the interpreter shows, as (name, observed, expected) checks and raw facts for the test to judge.
PROBE = r'''
import abc, builtins, ctypes, dis, gc, inspect, json, opcode, sys, types

spec = json.loads(sys.stdin.read())
OFF, SIZE = spec["offsets"], spec["sizes"]
checks, facts = [], {}


def check(name, observed, expected):
    checks.append([name, observed, expected])


def u64(address): return ctypes.c_uint64.from_address(address).value
def i64(address): return ctypes.c_int64.from_address(address).value
def u32(address): return ctypes.c_uint32.from_address(address).value
def i32(address): return ctypes.c_int32.from_address(address).value
def u8(address): return ctypes.c_uint8.from_address(address).value
def f64(address): return ctypes.c_double.from_address(address).value
def at(obj, member): return id(obj) + OFF[member]
def ptr_is(member, obj, target): check(member, u64(at(obj, member)), id(target))


class Plain:
    def meth(self):
        return self


class Heap(Plain):
    pass


class Abstract(abc.ABC):
    @abc.abstractmethod
    def must(self):
        pass


def function(a, b=2, *, c=3):
    "doc"
    return a + b + c


def make_closure():
    captured = [1]
    return lambda: captured


def gen():
    yield 1


def cell():
    return make_closure().__closure__[0]


# -- sizes and flags as Python reports them --------------------------------------------------------
basic = {"type": type, "object": object, "function": types.FunctionType, "list": list, "float": float,
         "complex": complex, "module": types.ModuleType, "dict": dict, "set": set, "str": str,
         "method": types.MethodType, "classmethod": classmethod, "staticmethod": staticmethod,
         "property": property, "cell": type(cell()), "tuple": tuple, "bytes": bytes, "int": int,
         "code": types.CodeType, "generator": types.GeneratorType}
facts["basicsize"] = dict((k, v.__basicsize__) for k, v in basic.items())
facts["itemsize"] = dict((k, v.__itemsize__) for k, v in basic.items())
flag_types = {"int": int, "bool": bool, "type": type, "tuple": tuple, "list": list, "bytes": bytes, "str": str,
              "dict": dict, "BaseException": BaseException, "Heap": Heap, "Abstract": Abstract, "object": object,
              "function": types.FunctionType}
facts["flags"] = dict((k, v.__flags__) for k, v in flag_types.items())
facts["gc_header"] = sys.getsizeof([]) - list.__basicsize__
facts["instance_preheader"] = sys.getsizeof(Plain()) - Plain.__basicsize__
fresh = lambda text: "".join(list(text))  # a new, non-interned str
facts["sizeof_ascii"] = sys.getsizeof(fresh("abc"))
facts["sizeof_latin1"] = sys.getsizeof(fresh("\xe9\xe9\xe9"))
facts["compiler_flags"] = dict((name, value) for value, name in dis.COMPILER_FLAG_NAMES.items())
facts["inspect_co"] = dict((n, getattr(inspect, n)) for n in dir(inspect) if n.startswith("CO_"))
facts["inspect_abstract"] = inspect.TPFLAGS_IS_ABSTRACT
facts["hexversion"] = sys.hexversion
facts["bits_per_digit"] = sys.int_info.bits_per_digit

# -- objects read raw at the table's offsets --------------------------------------------------------
closure = make_closure()
function.__dict__, function.__annotations__  # materialize the lazy members
for member, target in (("func_code", function.__code__), ("func_globals", function.__globals__),
                       ("func_name", function.__name__), ("func_qualname", function.__qualname__),
                       ("func_defaults", function.__defaults__), ("func_kwdefaults", function.__kwdefaults__),
                       ("func_module", function.__module__), ("func_doc", function.__doc__),
                       ("func_dict", function.__dict__), ("func_builtins", getattr(function, "__builtins__", None))):
    if "PyFunctionObject." + member in OFF and target is not None:
        ptr_is("PyFunctionObject." + member, function, target)
ptr_is("PyFunctionObject.func_closure", closure, closure.__closure__)
check("PyObject.ob_type", u64(at(function, "PyObject.ob_type")), id(types.FunctionType))

code = function.__code__
for member in ("co_consts", "co_names", "co_filename", "co_name", "co_qualname", "co_exceptiontable"):
    if "PyCodeObject." + member in OFF:
        ptr_is("PyCodeObject." + member, code, getattr(code, member))
if sys.version_info < (3, 11):
    ptr_is("PyCodeObject.co_code", code, code.co_code)
for member in ("co_flags", "co_argcount", "co_kwonlyargcount", "co_firstlineno", "co_stacksize"):
    check("PyCodeObject." + member, i32(at(code, "PyCodeObject." + member)), getattr(code, member))

items = (function, 1, 2)
check("PyVarObject.ob_size", i64(at(items, "PyVarObject.ob_size")), 3)
ptr_is("PyTupleObject.ob_item", items, function)
listed = [items, function]
check("PyListObject.ob_item", u64(u64(at(listed, "PyListObject.ob_item")) + 8), id(function))

check("PyTypeObject.tp_name", ctypes.string_at(u64(at(int, "PyTypeObject.tp_name"))).decode(), "int")
check("PyTypeObject.tp_basicsize", i64(at(int, "PyTypeObject.tp_basicsize")), int.__basicsize__)
check("PyTypeObject.tp_itemsize", i64(at(int, "PyTypeObject.tp_itemsize")), int.__itemsize__)
check("PyTypeObject.tp_flags", u64(at(Heap, "PyTypeObject.tp_flags")), Heap.__flags__)
check("PyTypeObject.tp_dictoffset", i64(at(Heap, "PyTypeObject.tp_dictoffset")), Heap.__dictoffset__)
ptr_is("PyTypeObject.tp_base", bool, int)
ptr_is("PyTypeObject.tp_mro", bool, bool.__mro__)
ptr_is("PyTypeObject.tp_bases", Heap, Heap.__bases__)
ptr_is("PyHeapTypeObject.ht_name", Heap, Heap.__name__)
ptr_is("PyHeapTypeObject.ht_qualname", Heap, Heap.__qualname__)

data = fresh("zen bytes").encode()
hash(data)
check("PyBytesObject.ob_sval", ctypes.string_at(at(data, "PyBytesObject.ob_sval"), len(data) + 1).hex(),
      (data + b"\0").hex())
check("PyBytesObject.ob_shash", i64(at(data, "PyBytesObject.ob_shash")), hash(data))

facts["strings"] = []
for text, width in (("zen", 1), ("z\xe9n", 1), ("z\u20acn", 2), ("z\U0001d11en", 4)):
    text = fresh(text)
    hash(text)
    check("PyASCIIObject.length " + ascii(text), i64(at(text, "PyASCIIObject.length")), len(text))
    check("PyASCIIObject.hash " + ascii(text), i64(at(text, "PyASCIIObject.hash")), hash(text))
    header = SIZE["PyASCIIObject"] if text.isascii() else SIZE["PyCompactUnicodeObject"]
    encoding = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[width]
    check("compact str data " + ascii(text), ctypes.string_at(id(text) + header, len(text) * width).hex(),
          text.encode(encoding).hex())
    facts["strings"].append([ascii(text), width, int(text.isascii()), 0, u32(id(text) + spec["state_offset"])])
interned = sys.intern(fresh("zen_interned_probe"))
facts["strings"].append(["interned", 1, 1, 1, u32(id(interned) + spec["state_offset"])])

number = 1.5 * len(sys.argv)
check("PyFloatObject.ob_fval", f64(at(number, "PyFloatObject.ob_fval")), number)
pair = complex(len(sys.argv), -2.5)
check("Py_complex.real", f64(at(pair, "PyComplexObject.cval") + OFF["Py_complex.real"]), pair.real)
check("Py_complex.imag", f64(at(pair, "PyComplexObject.cval") + OFF["Py_complex.imag"]), pair.imag)

facts["longs"] = []
for value in (0, 5, -5, 2 ** 40 + 7):
    value = int(fresh(str(value)))
    if "PyLongObject.long_value.lv_tag" in OFF:
        head = u64(at(value, "PyLongObject.long_value.lv_tag"))
        digit = u32(at(value, "PyLongObject.long_value.ob_digit"))
    else:
        head = i64(at(value, "PyVarObject.ob_size"))
        digit = u32(at(value, "PyLongObject.ob_digit"))
    facts["longs"].append([value, head, digit])

mapping = {fresh("alpha"): 1, fresh("beta"): 2}
general = {1001: "x"}
check("PyDictObject.ma_used", i64(at(mapping, "PyDictObject.ma_used")), 2)
for d, entry in ((mapping, "PyDictUnicodeEntry"), (general, "PyDictKeyEntry")):
    keys = u64(at(d, "PyDictObject.ma_keys"))
    if "PyDictKeysObject.dk_log2_size" in OFF:
        index_bytes = 1 << u8(keys + OFF["PyDictKeysObject.dk_log2_index_bytes"])
        facts.setdefault("dk_kinds", []).append(u8(keys + OFF["PyDictKeysObject.dk_kind"]))
    else:
        size = i64(keys + OFF["PyDictKeysObject.dk_size"])
        index_bytes = size * (1 if size <= 0xFF else 2 if size <= 0xFFFF else 4)
        entry = "PyDictKeyEntry"
    first = keys + OFF["PyDictKeysObject.dk_indices"] + index_bytes
    key, value = next(iter(d.items()))
    check("PyDictKeysObject.dk_nentries", i64(keys + OFF["PyDictKeysObject.dk_nentries"]), len(d))
    check(entry + ".me_key", u64(first + OFF[entry + ".me_key"]), id(key))
    check(entry + ".me_value", u64(first + OFF[entry + ".me_value"]), id(value))
    if entry == "PyDictKeyEntry":
        check("PyDictKeyEntry.me_hash", i64(first + OFF["PyDictKeyEntry.me_hash"]), hash(key))

ptr_is("PyModuleObject.md_dict", sys, sys.__dict__)
a_cell = cell()
ptr_is("PyCellObject.ob_ref", a_cell, a_cell.cell_contents)
members = {fresh("a1"), fresh("b2"), fresh("c3")}
check("PySetObject.used", i64(at(members, "PySetObject.used")), 3)
table = u64(at(members, "PySetObject.table"))
slots = [table + i * SIZE["setentry"] for i in range(i64(at(members, "PySetObject.mask")) + 1)]
found = dict((u64(s + OFF["setentry.key"]), i64(s + OFF["setentry.hash"])) for s in slots)
check("setentry.key/hash", sorted(found[id(m)] for m in members if id(m) in found), sorted(hash(m) for m in members))
instance = Heap()
bound = instance.meth
ptr_is("PyMethodObject.im_func", bound, bound.__func__)
ptr_is("PyMethodObject.im_self", bound, instance)
wrapped = classmethod(function)
ptr_is("classmethod.cm_callable", wrapped, function)
wrapped = staticmethod(function)
ptr_is("staticmethod.sm_callable", wrapped, function)
prop = property(function, make_closure, None, "prop doc")
ptr_is("propertyobject.prop_get", prop, function)
ptr_is("propertyobject.prop_set", prop, make_closure)
ptr_is("propertyobject.prop_doc", prop, prop.__doc__)
generator = gen()
ptr_is("PyGenObject.gi_name", generator, generator.__name__)
ptr_is("PyGenObject.gi_qualname", generator, generator.__qualname__)

tracked = [1, 2]
header = id(tracked) - SIZE["PyGC_Head"]
if "PyGC_Head._gc_next" in OFF:
    previous = u64(header + OFF["PyGC_Head._gc_prev"]) & ~3
    check("PyGC_Head._gc_prev/_gc_next", u64(previous + OFF["PyGC_Head._gc_next"]), header)
else:
    previous = u64(header + OFF["PyGC_Head.gc.gc_prev"])
    check("PyGC_Head.gc.gc_prev/gc_next", u64(previous + OFF["PyGC_Head.gc.gc_next"]), header)

# -- the runtime --------------------------------------------------------------------------------------
runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
get_tstate = ctypes.pythonapi.PyThreadState_Get
get_tstate.restype = ctypes.c_void_p
tstate = get_tstate()
interp = u64(tstate + OFF["PyThreadState.interp"])
check("_PyRuntimeState.interpreters.head", u64(runtime + OFF["_PyRuntimeState.interpreters.head"]), interp)
check("_PyRuntimeState.interpreters.main", u64(runtime + OFF["_PyRuntimeState.interpreters.main"]), interp)
threads_head = OFF.get("PyInterpreterState.threads.head", OFF.get("PyInterpreterState.tstate_head"))
check("PyInterpreterState.threads.head (tstate_head before 3.11)", u64(interp + threads_head), tstate)
check("PyInterpreterState.next", u64(interp + OFF["PyInterpreterState.next"]), 0)
check("PyThreadState.next", u64(tstate + OFF["PyThreadState.next"]), 0)
if "_PyRuntimeState._main_interpreter" in OFF:
    check("_PyRuntimeState._main_interpreter", runtime + OFF["_PyRuntimeState._main_interpreter"], interp)
modules = OFF.get("PyInterpreterState.modules", OFF.get("PyInterpreterState.imports.modules"))
check("PyInterpreterState.(imports.)modules", u64(interp + modules), id(sys.modules))
check("PyInterpreterState.sysdict", u64(interp + OFF["PyInterpreterState.sysdict"]), id(sys.__dict__))
check("PyInterpreterState.builtins", u64(interp + OFF["PyInterpreterState.builtins"]), id(builtins.__dict__))

if "PyInterpreterState.gc" in OFF:
    gcstate = interp + OFF["PyInterpreterState.gc"]
else:  # 3.7, 3.8
    gcstate = runtime + OFF["_PyRuntimeState.gc"]
gc.set_threshold(701, 11, 13)
generations = gcstate + OFF["_gc_runtime_state.generations"]
check("gc_generation.threshold", [i32(generations + i * SIZE["gc_generation"] + OFF["gc_generation.threshold"])
                                  for i in range(3)], [701, 11, 13])
check("_gc_runtime_state.enabled", i32(gcstate + OFF["_gc_runtime_state.enabled"]), 1)
permanent = gcstate + OFF["_gc_runtime_state.permanent_generation"] + OFF["gc_generation.head"]
next_offset, frozen, node = OFF.get("PyGC_Head._gc_next", OFF.get("PyGC_Head.gc.gc_next")), 0, None
while node != permanent and frozen <= gc.get_freeze_count():  # a circular list through its head
    node = u64((node or permanent) + next_offset)
    frozen += node != permanent
check("_gc_runtime_state.permanent_generation", frozen, gc.get_freeze_count())
if "PyObject.ob_refcnt" in OFF and "_Py_IMMORTAL_REFCNT" in spec["consts"]:
    check("_Py_IMMORTAL_REFCNT", i64(at(None, "PyObject.ob_refcnt")), spec["consts"]["_Py_IMMORTAL_REFCNT"])
if "MANAGED_DICT_OFFSET" in spec["consts"]:
    instance = Plain()
    attributes = instance.__dict__  # materialized: the managed dict pointer now holds it
    check("MANAGED_DICT_OFFSET", u64(id(instance) + spec["consts"]["MANAGED_DICT_OFFSET"]), id(attributes))
if "_PyRuntimeState.debug_offsets" in OFF:
    base = runtime + OFF["_PyRuntimeState.debug_offsets"]
    facts["debug_offsets"] = dict((name, u64(base + offset)) for name, offset in spec["debug_offsets"].items())

# -- libpython symbols, relative to the load base ---------------------------------------------------
with open("/proc/self/maps") as maps:
    for line in maps:
        fields = line.split()
        if fields[-1] == spec["libpython"] and int(fields[2], 16) == 0:
            load_base = int(fields[0].split("-")[0], 16)
            break
check("symbol _PyRuntime", load_base + spec["symbols"]["_PyRuntime"], runtime)
facts["symbol_bytes"] = dict((name, ctypes.string_at(load_base + address, 256).hex())
                             for name, address in spec["symbols"].items() if name != "_PyRuntime")

# -- opcode tables as this version's modules know them ----------------------------------------------
meta = sys.modules.get("_opcode_metadata") or opcode
specializations = getattr(meta, "_specializations", getattr(opcode, "_specializations", {}))
caches = getattr(opcode, "_inline_cache_entries", {})
if isinstance(caches, list):
    caches = dict((opcode.opname[op], n) for op, n in enumerate(caches) if n and op < len(opcode.opname))
facts["opcode"] = {
    "opname": list(opcode.opname)[:256], "all_opname": list(getattr(dis, "_all_opname", opcode.opname))[:256],
    "opmap": opcode.opmap, "all_opmap": getattr(dis, "_all_opmap", opcode.opmap),
    "HAVE_ARGUMENT": opcode.HAVE_ARGUMENT, "EXTENDED_ARG": opcode.EXTENDED_ARG,
    "MIN_INSTRUMENTED_OPCODE": getattr(opcode, "MIN_INSTRUMENTED_OPCODE", None),
    "specializations": specializations, "inline_cache_entries": caches,
}

# -- live bytecode: quickened (3.11+) and instrumented (3.12+) ---------------------------------------
namespace = {}
many_locals = "\n".join("    v%d = %d" % (i, i) for i in range(300))
exec("""
import math
class Point:
    def __init__(self, x):
        self.x = x
def workload(n):
%s
    total = 0
    points = [Point(i) for i in range(n)]
    for p in points:
        if p.x %% 2 == 0 and p.x < 10 ** 6:
            total += p.x * 2 + math.floor(p.x / 3) + len(str(p.x))
        else:
            total -= p.x
    return total + v299 + v0
""" % many_locals, namespace)
workload = namespace["workload"]
facts["bytecode"] = []


def snapshot(label, fn):
    co = fn.__code__
    units = len(co.co_code) // 2
    sample = {"label": label, "memory": ctypes.string_at(at(co, "PyCodeObject.co_code_adaptive"), 2 * units).hex()}
    monitoring = u64(at(co, "PyCodeObject._co_monitoring")) if "PyCodeObject._co_monitoring" in OFF else 0
    if monitoring:
        lines = u64(monitoring + OFF["_PyCoMonitoringData.lines"])
        per_instruction = u64(monitoring + OFF["_PyCoMonitoringData.per_instruction_opcodes"])
        if lines:
            step, original = SIZE["_PyCoLineInstrumentationData"], OFF["_PyCoLineInstrumentationData.original_opcode"]
            sample["lines"] = [u8(lines + i * step + original) for i in range(units)]
        if per_instruction:
            sample["per_instruction"] = list(ctypes.string_at(per_instruction, units))
    sample["co_code"] = co.co_code.hex()
    facts["bytecode"].append(sample)


if "PyCodeObject.co_code_adaptive" in OFF:
    for _ in range(60):
        workload(30)
    snapshot("quickened", workload)
    if hasattr(sys, "monitoring"):
        events = sys.monitoring.events
        sys.monitoring.use_tool_id(4, "zen-probe")
        for event in (events.LINE, events.INSTRUCTION, events.CALL, events.PY_RETURN, events.PY_START,
                      events.JUMP, events.BRANCH):
            sys.monitoring.register_callback(4, event, lambda *args: None)
        for label, mask in (("LINE", events.LINE), ("INSTRUCTION", events.INSTRUCTION),
                            ("LINE|INSTRUCTION", events.LINE | events.INSTRUCTION),
                            ("CALL|PY_RETURN|PY_START|JUMP|BRANCH",
                             events.CALL | events.PY_RETURN | events.PY_START | events.JUMP | events.BRANCH)):
            sys.monitoring.set_local_events(4, workload.__code__, mask)
            workload(3)
            snapshot(label, workload)
            sys.monitoring.set_local_events(4, workload.__code__, 0)

print(json.dumps({"checks": checks, "facts": facts}))
'''


@functools.lru_cache(maxsize=None)
def probe(version: str) -> dict:
    layout = load_layout(version)
    isf = read_isf(version)
    offsets = {}
    for path in PROBED_MEMBERS:
        struct, member = path.split(".", 1)
        if struct in isf["user_types"] and layout.has(struct, member):
            offsets[path] = layout.offset(struct, member)
    debug_offsets = {name: layout.offset("_Py_DebugOffsets", name)
                     for name in DEBUG_OFFSETS if layout.has("_Py_DebugOffsets", name)}
    consts = {name: layout.const(name) for name in ("_Py_IMMORTAL_REFCNT", "MANAGED_DICT_OFFSET")
              if layout.has_const(name)}
    spec = {
        "offsets": offsets, "sizes": {name: layout.size(name) for name in PROBED_SIZES if name in isf["user_types"]},
        "state_offset": layout.bitfield("PyASCIIObject", "state.kind")[0], "consts": consts,
        "debug_offsets": debug_offsets, "libpython": isf["metadata"]["producer"]["libpython"],
        "symbols": {name: symbol["address"] for name, symbol in isf["symbols"].items() if name != "Py_Version"},
    }
    result = subprocess.run([interpreter(version), "-I", "-c", PROBE], input=json.dumps(spec),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("version", VERSIONS)
def test_live_objects_read_at_the_table_offsets(version):
    mismatches = [(name, observed, expected) for name, observed, expected in probe(version)["checks"]
                  if observed != expected]
    assert not mismatches
    assert len(probe(version)["checks"]) > 80


@pytest.mark.parametrize("version", VERSIONS)
def test_type_sizes_match_the_interpreter(version):
    layout, facts = load_layout(version), probe(version)["facts"]
    basic = facts["basicsize"]
    expected = {
        "type": layout.size("PyHeapTypeObject"), "object": layout.size("PyObject"),
        "function": layout.size("PyFunctionObject"), "list": layout.size("PyListObject"),
        "float": layout.size("PyFloatObject"), "complex": layout.size("PyComplexObject"),
        "module": layout.size("PyModuleObject"), "dict": layout.size("PyDictObject"), "set": layout.size("PySetObject"),
        "str": layout.size("PyUnicodeObject"), "method": layout.size("PyMethodObject"),
        "classmethod": layout.size("classmethod"), "staticmethod": layout.size("staticmethod"),
        "property": layout.size("propertyobject"), "cell": layout.size("PyCellObject"),
        "tuple": layout.offset("PyTupleObject", "ob_item"),
        "bytes": layout.offset("PyBytesObject", "ob_sval") + 1,  # PyBytesObject_SIZE counts the NUL
        "int": layout.offset("PyLongObject", "long_value.ob_digit" if layout.has("PyLongObject", "long_value")
                             else "ob_digit"),
        # 3.11+ code objects end with the variable-size bytecode
        "code": layout.offset("PyCodeObject", "co_code_adaptive") if layout.has("PyCodeObject", "co_code_adaptive")
        else layout.size("PyCodeObject"),
    }
    if layout.version < (3, 11):  # 3.11+ generators embed a frame of variable size
        expected["generator"] = layout.size("PyGenObject")
    assert {name: basic[name] for name in expected} == expected
    assert facts["itemsize"]["tuple"] == 8 and facts["itemsize"]["int"] == 4
    assert facts["gc_header"] == layout.size("PyGC_Head")
    managed = 16 if layout.has_const("Py_TPFLAGS_MANAGED_DICT") else 0  # dict/values pointers before the GC head
    assert facts["instance_preheader"] == layout.size("PyGC_Head") + managed
    assert facts["sizeof_ascii"] == layout.size("PyASCIIObject") + 4
    assert facts["sizeof_latin1"] == layout.size("PyCompactUnicodeObject") + 4


TYPE_FLAGS = [  # (type, flag, set?)
    ("int", "Py_TPFLAGS_LONG_SUBCLASS", True), ("bool", "Py_TPFLAGS_LONG_SUBCLASS", True),
    ("type", "Py_TPFLAGS_TYPE_SUBCLASS", True), ("tuple", "Py_TPFLAGS_TUPLE_SUBCLASS", True),
    ("list", "Py_TPFLAGS_LIST_SUBCLASS", True), ("bytes", "Py_TPFLAGS_BYTES_SUBCLASS", True),
    ("str", "Py_TPFLAGS_UNICODE_SUBCLASS", True), ("dict", "Py_TPFLAGS_DICT_SUBCLASS", True),
    ("BaseException", "Py_TPFLAGS_BASE_EXC_SUBCLASS", True), ("Heap", "Py_TPFLAGS_HEAPTYPE", True),
    ("int", "Py_TPFLAGS_HEAPTYPE", False), ("list", "Py_TPFLAGS_HAVE_GC", True), ("int", "Py_TPFLAGS_HAVE_GC", False),
    ("Heap", "Py_TPFLAGS_BASETYPE", True), ("bool", "Py_TPFLAGS_BASETYPE", False),
    ("Abstract", "Py_TPFLAGS_IS_ABSTRACT", True), ("Heap", "Py_TPFLAGS_IS_ABSTRACT", False),
    ("int", "Py_TPFLAGS_READY", True), ("Heap", "Py_TPFLAGS_MANAGED_DICT", True),
    ("int", "Py_TPFLAGS_MANAGED_DICT", False), ("function", "Py_TPFLAGS_METHOD_DESCRIPTOR", True),
    ("int", "Py_TPFLAGS_METHOD_DESCRIPTOR", False), ("list", "Py_TPFLAGS_SEQUENCE", True),
    ("dict", "Py_TPFLAGS_MAPPING", True), ("object", "Py_TPFLAGS_SEQUENCE", False),
    ("str", "Py_TPFLAGS_IMMUTABLETYPE", True), ("Heap", "Py_TPFLAGS_IMMUTABLETYPE", False),
]


@pytest.mark.parametrize("version", VERSIONS)
def test_constants_match_the_interpreter(version):
    layout, facts = load_layout(version), probe(version)["facts"]
    flags = {(t, f): bool(facts["flags"][t] & layout.const(f)) for t, f, _ in TYPE_FLAGS if layout.has_const(f)}
    assert flags == {(t, f): want for t, f, want in TYPE_FLAGS if layout.has_const(f)}
    assert len(flags) >= 15
    assert layout.const("Py_TPFLAGS_IS_ABSTRACT") == facts["inspect_abstract"]
    # dis/inspect still name CO_NOFREE, which the 3.11+ headers no longer define (the flag is unused)
    flags = {name: value for name, value in facts["compiler_flags"].items() if layout.has_const("CO_" + name)}
    assert set(facts["compiler_flags"]) - set(flags) <= ({"NOFREE"} if layout.version >= (3, 11) else set())
    assert {name: layout.const("CO_" + name) for name in flags} == flags
    assert {n: layout.const(n) for n in facts["inspect_co"] if n[3:] in flags} == {
        n: v for n, v in facts["inspect_co"].items() if n[3:] in flags}
    assert layout.const("PY_VERSION_HEX") == facts["hexversion"]
    assert layout.const("PyLong_SHIFT") == facts["bits_per_digit"]


@pytest.mark.parametrize("version", VERSIONS)
def test_bitfields_and_int_representation_match_the_interpreter(version):
    layout, facts = load_layout(version), probe(version)["facts"]

    def bits(word, member):
        _, position, length = layout.bitfield("PyASCIIObject", member)
        return (word >> position) & ((1 << length) - 1)

    for label, kind, is_ascii, interned, word in facts["strings"]:
        assert (bits(word, "state.kind"), bits(word, "state.compact"), bits(word, "state.ascii")) == (kind, 1, is_ascii)
        assert (bits(word, "state.interned") != layout.const("SSTATE_NOT_INTERNED")) == bool(interned), label
    shift = layout.const("PyLong_SHIFT")
    for value, head, digit in facts["longs"]:
        ndigits = (abs(value).bit_length() + shift - 1) // shift
        if layout.has_const("_PyLong_NON_SIZE_BITS"):  # 3.12+: lv_tag = ndigits << 3 | sign
            sign = layout.const("SIGN_ZERO") if value == 0 else layout.const("SIGN_NEGATIVE") if value < 0 else 0
            assert (head >> layout.const("_PyLong_NON_SIZE_BITS"), head & layout.const("SIGN_MASK")) == (ndigits, sign)
        else:  # ob_size = +-ndigits
            assert head == (ndigits if value >= 0 else -ndigits)
        if value:
            assert digit == abs(value) & ((1 << shift) - 1)
    if layout.version >= (3, 11):
        assert facts["dk_kinds"] == [layout.const("DICT_KEYS_UNICODE"), layout.const("DICT_KEYS_GENERAL")]


def test_3_13_debug_offsets_agree_with_the_table():
    """CPython 3.13 publishes offsetof/sizeof values in _PyRuntime.debug_offsets; they must be ours."""
    layout, facts = load_layout("3.13"), probe("3.13")["facts"]
    ours = {name: layout.size(struct) if member is None else layout.offset(struct, member)
            for name, (struct, member) in DEBUG_OFFSETS.items()}
    assert facts["debug_offsets"] == ours


@pytest.mark.parametrize("version", VERSIONS)
def test_symbols_are_relative_to_the_load_base(version):
    """_PyRuntime is where the live process has it; the opcode arrays hold the shipped tables."""
    isf, facts = read_isf(version), probe(version)["facts"]
    tables = {"_PyOpcode_Deopt": "deopt", "_PyOpcode_Caches": "caches"}
    for name, table in tables.items():
        if name in isf["symbols"]:
            assert bytes.fromhex(facts["symbol_bytes"][name]) == bytes(getattr(load_layout(version).opcodes, table))
    if "DE_INSTRUMENT" in isf["symbols"]:
        live = bytes.fromhex(facts["symbol_bytes"]["DE_INSTRUMENT"])
        assert {op: base for op, base in enumerate(live) if base} == load_layout(version).opcodes.de_instrument
    assert ("Py_Version" in isf["symbols"]) == (version not in VERSIONS[:4])


# -- Opcode tables ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_opcode_tables_match_the_interpreters_modules(version):
    ops, known = load_layout(version).opcodes, probe(version)["facts"]["opcode"]
    assert ops.opname == known["all_opname"]
    assert all(ops.opname[op] == name for op, name in enumerate(known["opname"]) if not name.startswith("<"))
    assert (ops.have_argument, ops.extended_arg) == (known["HAVE_ARGUMENT"], known["EXTENDED_ARG"])
    assert ops.min_instrumented_opcode == known["MIN_INSTRUMENTED_OPCODE"]
    all_opmap = known["all_opmap"]
    assert ops.instrumented_line == all_opmap.get("INSTRUMENTED_LINE")
    assert ops.extended_arg_quick == all_opmap.get("EXTENDED_ARG_QUICK")
    if not ops.quickened:
        assert version in VERSIONS[:4] and ops.deopt == list(range(256)) and not any(ops.caches)
        return
    specialized = {all_opmap[name]: known["opmap"][base] for base, names in known["specializations"].items()
                   for name in names}
    assert len(specialized) > 40
    for op, base in specialized.items():
        assert ops.deopt[op] == base, known["all_opname"][op]
    for name, op in known["opmap"].items():
        if op < 256 and not name.startswith("INSTRUMENTED_") and name != "ENTER_EXECUTOR":
            assert ops.deopt[op] == op, name
            assert ops.caches[op] == known["inline_cache_entries"].get(name, 0), name
    assert ops.extended_arg_opcodes == {op for op in (ops.extended_arg, ops.extended_arg_quick) if op is not None}


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_de_instrument_maps_every_instrumented_opcode_to_its_base(version):
    ops, opmap = load_layout(version).opcodes, probe(version)["facts"]["opcode"]["opmap"]
    derived = {op: opmap[name[len("INSTRUMENTED_"):]] for name, op in opmap.items()
               if name.startswith("INSTRUMENTED_") and name[len("INSTRUMENTED_"):] in opmap}
    assert ops.de_instrument == derived
    assert ops.min_instrumented_opcode == min(op for name, op in opmap.items() if name.startswith("INSTRUMENTED_"))


def restore(memory: bytes, ops, lines=None, per_instruction=None) -> bytes:
    """``_Py_GetBaseOpcode`` + deopt as in docs/symbols.md, using only the shipped tables."""
    out = bytearray(memory)
    i, units = 0, len(memory) // 2
    while i < units:
        op = memory[2 * i]
        if op == ops.instrumented_line:
            op = lines[i]
        if op == ops.instrumented_instruction:
            op = per_instruction[i]
        out[2 * i] = ops.base[op]
        caches = ops.caches[ops.base[op]]
        out[2 * i + 2:2 * (i + 1 + caches)] = bytes(2 * min(caches, units - i - 1))
        i += 1 + caches
    return bytes(out)


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_live_quickened_and_instrumented_bytecode_restores_to_co_code(version):
    ops, samples = load_layout(version).opcodes, probe(version)["facts"]["bytecode"]
    seen = set()
    for sample in samples:
        memory, co_code = bytes.fromhex(sample["memory"]), bytes.fromhex(sample["co_code"])
        assert restore(memory, ops, sample.get("lines"), sample.get("per_instruction")) == co_code, sample["label"]
        seen |= {op for op in memory[::2]}
    specialized = {op for op in seen if ops.deopt[op] != op}
    assert specialized, "nothing was quickened: the test proves nothing"
    assert ops.extended_arg_opcodes & seen
    if ops.instrumented_line is not None:
        assert {ops.instrumented_line, ops.instrumented_instruction} <= seen
        assert set(ops.de_instrument) & seen


# -- Generator -------------------------------------------------------------------------------------------

def test_generator_is_byte_reproducible(tmp_path):
    """Regenerating from the same build gives the shipped bytes (3.12: every kind of table)."""
    prefix = os.path.dirname(os.path.dirname(interpreter("3.12")))
    assert_generator_reproduces("gen_cpython_isf.py", ["--python", prefix], tmp_path, layouts.SYMBOLS_DIR,
                                ["cpython-3.12.json", "opcodes-3.12.json"])


def test_generator_evaluates_c_constant_expressions():
    spec = importlib.util.spec_from_file_location("gen_cpython_isf", os.path.join(REPO, "tools", "gen_cpython_isf.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    value = lambda text: gen.normalize_constant(gen.CConstantExpression(text).value())  # noqa: E731
    assert value("(1UL << 9)") == 0x200
    assert value("(((Py_ssize_t)sizeof(PyObject *))*-3)") == -24
    assert value("(((uintptr_t) -1) << 2)") == 0xFFFFFFFFFFFFFFFC
    assert value("((3 << 24) | (11 << 16) | (7 << 8) | (0xF << 4) | (0 << 0))") == 0x30B07F0
    assert value("((Py_ssize_t)(0x7fffffff * 2U + 1U))") == 0xFFFFFFFF
    assert value("1 ? 010 : 2") == 8 and value("-7 / 2") == -3
    with pytest.raises(gen.CExpressionError):
        gen.CConstantExpression('"text"').value()
    with pytest.raises(gen.CExpressionError):
        gen.CConstantExpression("some_function(1)").value()


# -- Loader API ------------------------------------------------------------------------------------------

def test_supported_versions():
    assert supported_versions() == VERSIONS


@pytest.mark.parametrize("spelling", ["3.11", "3.11.2", "3.11.7+", (3, 11), (3, 11, 2), [3, 11], 0x030B02F0])
def test_load_layout_accepts_version_spellings(spelling):
    layout = load_layout(spelling)
    assert layout is load_layout("3.11")
    assert (layout.version, layout.build_version) == ((3, 11), "3.11.7")
    assert layout.isf_path == isf_path("3.11")


@pytest.mark.parametrize("spelling, short", [("3.6", "3.6"), ("3.6.15", "3.6"), ((2, 7), "2.7"), ("3.14", "3.14")])
def test_unsupported_versions_are_refused_with_one_line(spelling, short):
    with pytest.raises(UnsupportedVersionError) as error:
        load_layout(spelling)
    assert str(error.value) == f"CPython {short} is not supported (supported: 3.7-3.13)"


def test_unreadable_version_is_refused():
    with pytest.raises(UnsupportedVersionError, match="cannot read a CPython version"):
        load_layout("python")


def test_layout_lookups():
    layout = load_layout("3.12")
    assert layout.size("_gc_runtime_state") == layout.size("struct _gc_runtime_state") == 240
    assert layout.offset("_PyRuntimeState", "interpreters.head") == 40
    assert layout.offset("PyInterpreterState", "imports.modules") == layout.offset(
        "PyInterpreterState", "imports") + layout.offset("_import_state", "modules")
    assert layout.offset("PyObject", "ob_refcnt") == 0  # inside an anonymous union in 3.12
    assert layout.has("PyObject", "ob_refcnt")
    assert layout.offset("PyObject", "unnamed_field_0.ob_refcnt") == 0  # the anonymous field by its name too
    assert layout.has("PyCodeObject", "_co_monitoring") and not layout.has("PyCodeObject", "co_lnotab")
    assert not layout.has("NoSuchStruct", "x")
    assert layout.member_type("PyObject", "ob_type") == {"kind": "pointer",
                                                         "subtype": {"kind": "struct", "name": "PyTypeObject"}}
    assert layout.bitfield("PyASCIIObject", "state.kind") == (layout.offset("PyASCIIObject", "state"), 2, 3)
    assert layout.const("Py_TPFLAGS_HEAPTYPE") == 1 << 9 and layout.has_const("CO_FAST_FREE")
    assert layout.const("PyUnicode_4BYTE_KIND") == 4  # C enums are constants too
    assert not layout.has_const("Py_TPFLAGS_NO_SUCH_FLAG") and layout.const("Py_TPFLAGS_NO_SUCH_FLAG", 0) == 0
    assert layout.enum("macros_CO")["CO_FAST_FREE"] == layout.const("CO_FAST_FREE")


def test_layout_errors_are_key_errors_with_plain_messages():
    layout = load_layout("3.12")
    with pytest.raises(KeyError) as error:
        layout.const("Py_TPFLAGS_NO_SUCH_FLAG")
    assert str(error.value).startswith("CPython 3.12.1 headers define no constant Py_TPFLAGS_NO_SUCH_FLAG")
    with pytest.raises(LayoutKeyError, match="has no member 'co_lnotab'"):
        layout.offset("PyCodeObject", "co_lnotab")
    with pytest.raises(LayoutKeyError, match="no struct 'NoSuchStruct'"):
        layout.size("NoSuchStruct")
    with pytest.raises(LayoutKeyError, match="is not a bitfield"):
        layout.bitfield("PyASCIIObject", "length")


def test_gc_head_layout_differs_before_3_8():
    assert load_layout("3.7").offset("PyGC_Head", "gc.gc_next") == 0
    assert not load_layout("3.7").has("PyGC_Head", "_gc_next")
    assert load_layout("3.8").offset("PyGC_Head", "_gc_prev") == 8


def test_opcodes_load_lazily_and_fill_defaults_before_3_11():
    layout = CPythonLayout(isf_path("3.10"), os.path.join(layouts.SYMBOLS_DIR, "opcodes-3.10.json"))
    assert "opcodes" not in vars(layout)
    ops = layout.opcodes
    assert not ops.quickened and ops.base == list(range(256)) and ops.de_instrument == {}
    assert ops.instrumented_line is None and ops.extended_arg == 144
    assert load_layout("3.13").opcodes.enter_executor == 70


def test_loader_needs_neither_volatility_nor_jsonschema():
    code = ("import sys; from volatility3_zen.zenlib.readers.cpython.layouts import load_layout; "
            "L = load_layout('3.12'); L.offset('PyObject', 'ob_type'); L.opcodes; "
            "from volatility3_zen.zenlib.readers.torch.layouts import load_torch_layout; "
            "load_torch_layout('2.13.0').offset('c10::TensorImpl', 'numel_'); "
            "assert not {'volatility3', 'jsonschema'} & set(sys.modules), sorted(sys.modules)")
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
