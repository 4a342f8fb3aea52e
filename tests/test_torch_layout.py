"""The shipped PyTorch layout table (symbols/torch) and its loader.

Checked against Volatility (schema, loading, decoding a TensorImpl), against the offsets measured in
docs/cpython-and-torch-in-memory.md, against the reader's needs (every path it reads resolves, with
the size it expects), and against itself: regenerating it from the installed torch headers must give
the same bytes.  Real-process checks of the offsets are in test_torch_tensors.py.
"""

import copy
import functools
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from volatility3_zen.zenlib.errors import UnsupportedVersionError
from volatility3_zen.zenlib.readers.torch import layouts
from volatility3_zen.zenlib.readers.torch.layouts import LayoutKeyError, TorchLayout, load_torch_layout, supported_versions
from volatility3_zen.zenlib.readers.torch.tensors import FIELDS, TensorReader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = "2.13.0"
ISF_PATH = os.path.join(layouts.SYMBOLS_DIR, f"torch-{VERSION}.json")


@functools.lru_cache(maxsize=None)
def read_isf() -> dict:
    with open(ISF_PATH) as fh:
        return json.load(fh)


# -- Volatility: schema, loading ---------------------------------------------------------------------

def volatility_schema() -> dict:
    package = importlib.util.find_spec("volatility3").submodule_search_locations[0]
    with open(os.path.join(package, "schemas", "schema-6.2.0.json")) as fh:
        return json.load(fh)


def test_isf_validates_against_volatility_schema():
    jsonschema = pytest.importorskip("jsonschema")
    assert read_isf()["metadata"]["format"] == "6.2.0"
    jsonschema.Draft4Validator(volatility_schema()).validate(read_isf())


def test_schema_validation_is_not_vacuous():
    jsonschema = pytest.importorskip("jsonschema")
    broken = copy.deepcopy(read_isf())
    del broken["user_types"]["c10::TensorImpl"]["fields"]["numel_"]["offset"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(volatility_schema()).validate(broken)


def referenced_names(descriptor: dict):
    kind = descriptor["kind"]
    if kind in ("struct", "class", "union"):
        yield "user_types", descriptor["name"]
    elif kind == "enum":
        yield "enums", descriptor["name"]
    elif kind == "base":
        yield "base_types", descriptor["name"]
    for key in ("subtype", "type"):
        if key in descriptor:
            yield from referenced_names(descriptor[key])


def test_isf_is_self_contained():
    """Every type a field or enum names is defined in the same file."""
    isf = read_isf()
    descriptors = [field["type"] for struct in isf["user_types"].values() for field in struct["fields"].values()]
    missing = {(section, name) for d in descriptors for section, name in referenced_names(d)
               if name not in isf[section]}
    missing |= {("base_types", e["base"]) for e in isf["enums"].values() if e["base"] not in isf["base_types"]}
    assert not missing


def test_isf_loads_in_volatility_and_agrees_with_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pytest.importorskip("volatility3")
    from volatility3.framework import contexts
    from volatility3.framework.layers.physical import BufferDataLayer
    from volatility3.framework.symbols import intermed

    ctx = contexts.Context()
    table = intermed.IntermediateSymbolTable(ctx, "torch", "torch", "file://" + ISF_PATH, validate=False)
    ctx.symbol_space.append(table)
    layout = load_torch_layout(VERSION)
    for name in read_isf()["user_types"]:
        template = table.get_type(name)
        assert template.size == layout.size(name)
        for member, (offset, _) in template.vol.members.items():
            if layout.has(name, member):
                assert offset == layout.offset(name, member), (name, member)
            else:  # inherited from two bases: Volatility keeps one of them, the loader refuses to guess
                with pytest.raises(LayoutKeyError, match="ambiguous"):
                    layout.offset(name, member)

    # A TensorImpl in a buffer, decoded by Volatility: nested structs, an inherited member, bitfields.
    impl = bytearray(layout.size("c10::TensorImpl"))
    struct.pack_into("<q", impl, layout.offset("c10::TensorImpl", "numel_"), 12)
    struct.pack_into("<Q", impl, layout.offset("c10::TensorImpl", "sizes_and_strides_.size_"), 2)
    struct.pack_into("<2q", impl, layout.offset("c10::TensorImpl", "sizes_and_strides_.inlineStorage_"), 3, 4)
    struct.pack_into("<H", impl, layout.offset("c10::TensorImpl", "data_type_.index_"), 15)
    struct.pack_into("<Q", impl, layout.offset("c10::TensorImpl", "combined_refcount_"), 7)
    flags, position, _ = bitfield(layout, "c10::TensorImpl", "is_contiguous_")
    impl[flags] = (1 << position) | (1 << bitfield(layout, "c10::TensorImpl", "is_wrapped_number_")[1])
    ctx.add_layer(BufferDataLayer(ctx, "layer", "memory", bytes(impl)))
    obj = ctx.object("torch!c10::TensorImpl", "memory", 0)
    assert obj.numel_ == 12 and obj.sizes_and_strides_.size_ == 2
    assert list(obj.sizes_and_strides_.inlineStorage_)[:2] == [3, 4]
    assert obj.data_type_.index_ == 15
    assert obj.combined_refcount_._M_i == 7  # declared in the base class c10::intrusive_ptr_target
    assert (obj.is_contiguous_, obj.is_wrapped_number_, obj.is_channels_last_) == (1, 1, 0)


def bitfield(layout: TorchLayout, struct_name: str, member: str):
    described = layout.member_type(struct_name, member)
    assert described["kind"] == "bitfield"
    return layout.offset(struct_name, member), described["bit_position"], described["bit_length"]


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
    assert supported_versions() == [VERSION]
    layout = load_torch_layout("2.13.0+cpu")
    assert layout is load_torch_layout("2.13.0")
    assert (layout.version, layout.build_version) == ("2.13.0", "2.13.0+cpu")


@pytest.mark.parametrize("version, message", [
    ("2.5.1", "PyTorch 2.5.1 is not supported (supported: 2.13.0)"),
    ("2.13.1+cu121", "PyTorch 2.13.1 is not supported (supported: 2.13.0)"),
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
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen_torch_isf.py"), "--torch-python", python,
                    "--out", str(tmp_path)], check=True, capture_output=True, timeout=600)
    with open(tmp_path / f"torch-{VERSION}.json", "rb") as fresh, open(ISF_PATH, "rb") as shipped:
        assert fresh.read() == shipped.read()
