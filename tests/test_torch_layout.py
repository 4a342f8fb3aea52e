"""The shipped PyTorch layout table (symbols/torch) and its loader.

Checked against Volatility (schema, loading, decoding a TensorImpl), against the offsets measured in
docs/cpython-and-torch-in-memory.md, against the reader's needs (every path it reads resolves, with
the size it expects), and against itself: regenerating it from the installed torch headers must give
the same bytes.  Real-process checks of the offsets are in test_torch_tensors.py.
"""

import os
import shutil
import struct
import subprocess

import pytest

from isf_testlib import (assert_generator_reproduces, assert_schema_rejects_a_field_without_offset, assert_valid_isf,
                         assert_volatility_agrees_with_the_loader, buffer_object, missing_references, read_json,
                         volatility_context)
from volatility3_zen.zenlib.errors import UnsupportedVersionError
from volatility3_zen.zenlib.readers.torch import layouts
from volatility3_zen.zenlib.readers.torch.layouts import LayoutKeyError, load_torch_layout, supported_versions
from volatility3_zen.zenlib.readers.torch.tensors import FIELDS, TensorReader

VERSION = "2.13.0"
ISF_PATH = os.path.join(layouts.SYMBOLS_DIR, f"torch-{VERSION}.json")


def read_isf() -> dict:
    return read_json(ISF_PATH)


# -- Volatility: schema, loading ---------------------------------------------------------------------

def test_isf_validates_against_volatility_schema():
    assert_valid_isf(read_isf())


def test_schema_validation_is_not_vacuous():
    assert_schema_rejects_a_field_without_offset(read_isf(), "c10::TensorImpl", "numel_")


def test_isf_is_self_contained():
    """Every type a field, enum or symbol names is defined in the same file."""
    assert not missing_references(read_isf())


def test_isf_loads_in_volatility_and_agrees_with_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ctx = volatility_context("torch", ISF_PATH)
    layout = load_torch_layout(VERSION)
    assert_volatility_agrees_with_the_loader(ctx, "torch", read_isf()["user_types"], layout)

    # A TensorImpl in a buffer, decoded by Volatility: nested structs, an inherited member, bitfields.
    impl = bytearray(layout.size("c10::TensorImpl"))
    struct.pack_into("<q", impl, layout.offset("c10::TensorImpl", "numel_"), 12)
    struct.pack_into("<Q", impl, layout.offset("c10::TensorImpl", "sizes_and_strides_.size_"), 2)
    struct.pack_into("<2q", impl, layout.offset("c10::TensorImpl", "sizes_and_strides_.inlineStorage_"), 3, 4)
    struct.pack_into("<H", impl, layout.offset("c10::TensorImpl", "data_type_.index_"), 15)
    struct.pack_into("<Q", impl, layout.offset("c10::TensorImpl", "combined_refcount_"), 7)
    flags, position, _ = layout.bitfield("c10::TensorImpl", "is_contiguous_")
    impl[flags] = (1 << position) | (1 << layout.bitfield("c10::TensorImpl", "is_wrapped_number_")[1])
    obj = buffer_object(ctx, "torch!c10::TensorImpl", impl)
    assert obj.numel_ == 12 and obj.sizes_and_strides_.size_ == 2
    assert list(obj.sizes_and_strides_.inlineStorage_)[:2] == [3, 4]
    assert obj.data_type_.index_ == 15
    assert obj.combined_refcount_._M_i == 7  # declared in the base class c10::intrusive_ptr_target
    assert (obj.is_contiguous_, obj.is_wrapped_number_, obj.is_channels_last_) == (1, 1, 0)


# -- The 2.13.0 table measured in docs/cpython-and-torch-in-memory.md ----------------------------------

DOC_2_13_0 = {
    ("THPVariable", "cdata"): 16,
    ("c10::TensorImpl", "storage_"): 16,
    ("c10::TensorImpl", "pyobj_slot_.pyobj_"): 48,
    ("c10::TensorImpl", "sizes_and_strides_.size_"): 56,
    ("c10::TensorImpl", "sizes_and_strides_.inlineStorage_"): 64,
    ("c10::TensorImpl", "sizes_and_strides_.outOfLineStorage_"): 64,
    ("c10::TensorImpl", "storage_offset_"): 144,
    ("c10::TensorImpl", "numel_"): 152,
    ("c10::TensorImpl", "data_type_"): 160,
    ("c10::TensorImpl", "device_opt_._M_payload._M_payload._M_value.type_"): 162,
    ("c10::TensorImpl", "device_opt_._M_payload._M_payload._M_value.index_"): 163,
    ("c10::TensorImpl", "device_opt_._M_payload._M_engaged"): 164,
    ("c10::TensorImpl", "key_set_"): 168,
    ("c10::StorageImpl", "data_ptr_.ptr_.data_"): 16,
    ("c10::StorageImpl", "data_ptr_.device_"): 40,
    ("c10::StorageImpl", "size_bytes_"): 48,
}


@pytest.mark.parametrize("struct_name, member", sorted(DOC_2_13_0))
def test_2_13_0_matches_the_measured_table(struct_name, member):
    assert load_torch_layout(VERSION).offset(struct_name, member) == DOC_2_13_0[struct_name, member]


def test_measured_sizes_and_inline_capacity():
    layout = load_torch_layout(VERSION)
    assert layout.member_size("c10::TensorImpl", "data_type_") == 2  # u16 TypeMeta index
    assert layout.member_size("c10::TensorImpl", "sizes_and_strides_.inlineStorage_") == 5 * 2 * 8
    assert layout.member_size("c10::TensorImpl", "autograd_meta_") == 8


def test_dtype_and_device_tables():
    layout = load_torch_layout(VERSION)
    expected = {6: ("float32", 4), 7: ("float64", 8), 5: ("float16", 2), 15: ("bfloat16", 2), 1: ("int8", 1),
                2: ("int16", 2), 3: ("int32", 4), 4: ("int64", 8), 0: ("uint8", 1), 11: ("bool", 1),
                8: ("complex32", 4), 9: ("complex64", 8), 10: ("complex128", 16), 12: ("qint8", 1),
                24: ("float8_e4m3fn", 1), 45: ("float4_e2m1fn_x2", 1)}
    assert {value: layout.scalar_types[value] for value in expected} == expected
    assert sorted(layout.scalar_types) == list(range(46))  # every c10::ScalarType but Undefined
    assert layout.scalar_type_names[15] == "BFloat16"
    assert (layout.device_types[0], layout.device_types[1], layout.device_types[14]) == ("cpu", "cuda", "meta")
    assert layout.device_types[20] == "privateuseone"


def test_every_path_the_reader_uses_resolves():
    """TensorReader checks each path's size against its struct format when it is made."""
    reader = TensorReader(memory=None, layout=load_torch_layout(VERSION))
    assert sorted(reader._fields) == sorted(FIELDS)


# -- Loader behaviour -------------------------------------------------------------------------------

def test_supported_versions_and_version_forms():
    assert VERSION in supported_versions()  # every release's table: test_torch_tables.py
    layout = load_torch_layout("2.13.0+cpu")
    assert layout is load_torch_layout("2.13.0")
    assert (layout.version, layout.build_version) == ("2.13.0", "2.13.0+cpu")


@pytest.mark.parametrize("version, message", [
    ("2.16.0", "PyTorch 2.16.0 is not supported (supported: 1.8.0-2.15.0)"),
    ("2.13.1+cu121", "PyTorch 2.13.1 is not supported (supported: 1.8.0-2.15.0)"),
    ("2.13", "cannot read a PyTorch version from '2.13' (expected e.g. '2.13.0')"),
])
def test_unsupported_versions(version, message):
    with pytest.raises(UnsupportedVersionError) as raised:
        load_torch_layout(version)
    assert str(raised.value) == message


def test_unknown_and_ambiguous_members():
    layout = load_torch_layout(VERSION)
    with pytest.raises(LayoutKeyError) as raised:
        layout.size("c10::NoSuchImpl")
    assert str(raised.value) == "PyTorch 2.13.0 table has no struct 'c10::NoSuchImpl'"
    with pytest.raises(LayoutKeyError) as raised:
        layout.offset("c10::TensorImpl", "no_such_member_")
    assert str(raised.value) == "PyTorch 2.13.0: c10::TensorImpl has no member 'no_such_member_'"
    # std::tuple<T*, default_delete<T>> inherits _M_head_impl from two bases: C++ calls that ambiguous.
    unique_ptr = "autograd_meta_._M_t._M_t"
    with pytest.raises(LayoutKeyError, match="ambiguous"):
        layout.offset("c10::TensorImpl", f"{unique_ptr}._M_head_impl")
    assert layout.offset("c10::TensorImpl", f"{unique_ptr}.base_class_1._M_head_impl") == 24
    assert layout.offset("THPVariable", "cdata.impl_.target_") == 16  # impl_ is inherited from at::TensorBase


def test_enum_constants():
    layout = load_torch_layout(VERSION)
    assert layout.enum("c10::ScalarType")["BFloat16"] == 15
    assert layout.const("float32") == 6 and layout.const("cuda") == 1
    # "Float" is a ScalarType (6) and a key of the derived item-size table (4): const() will not pick one
    with pytest.raises(LayoutKeyError, match="Float has different values in the enums c10::ScalarType, "
                                             "zen::scalar_type_itemsize"):
        layout.const("Float")
    assert layout.enum("zen::scalar_type_itemsize")["Float"] == 4 and not layout.has_const("Float")
    assert layout.const("NoSuchConstant", 0) == 0
    with pytest.raises(LayoutKeyError) as raised:
        layout.enum("c10::NoSuchEnum")
    assert str(raised.value) == "PyTorch 2.13.0 table has no enum 'c10::NoSuchEnum'"


# -- The generator ----------------------------------------------------------------------------------

def torch_python() -> str:
    """$ZEN_TORCH_PYTHON, else the corpus harness's torch venv (created on first use, as for the torch images)."""
    python = os.environ.get("ZEN_TORCH_PYTHON")
    if not python:
        from tools.corpus import interpreters

        python = str(interpreters.resolve("torch-3.11").executable)
    return python


def test_generator_is_byte_reproducible(tmp_path):
    """Regenerating from the installed torch headers gives the shipped file, byte for byte (~25 s)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    python = torch_python()
    script = "import os, torch; print(torch.__version__, os.path.dirname(torch.__file__))"
    query = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd="/")
    if query.returncode != 0:
        pytest.skip(f"{python} cannot import torch")
    version, package = query.stdout.split()
    if not os.path.isdir(os.path.join(package, "include", "c10")):
        pytest.skip(f"torch {version} at {package} ships no C++ headers")
    if version != read_isf()["metadata"]["producer"]["torch_version"]:
        pytest.skip(f"installed torch {version} is not the release the shipped table describes")
    assert_generator_reproduces("gen_torch_isf.py", ["--torch-python", python], tmp_path, layouts.SYMBOLS_DIR,
                                [f"torch-{VERSION}.json"])
