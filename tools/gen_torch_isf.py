#!/usr/bin/env python3
"""Generate the PyTorch tensor layout table (Volatility ISF) from the DWARF of a small C++ probe.

PyTorch wheels ship without debug information, but they ship their C++ headers.  The probe
(``tools/torch_probe/probe.cpp``) names the structures a tensor is made of; compiled with ``-g
-femit-class-debug-always`` against the installed headers, its DWARF holds their exact layout as the
wheel's compiler laid them out (same ABI: x86_64 Itanium C++ ABI, libstdc++).  The enums come from the
same DWARF, the item size of every ScalarType from the DWARF constant value of
``caffe2::scalarTypeItemSizes``, and the Python names of dtypes and devices from the installed torch
itself (each dtype's ScalarType number read back from a live tensor at the offset the DWARF gives).

    python tools/gen_torch_isf.py --torch-python <a python with torch==2.13.0, e.g. the corpus torch venv>

The output (``symbols/torch/torch-<version>.json``) is deterministic: sorted keys, no timestamps or
paths, so regenerating from the same torch, headers and compiler gives the same bytes (the test suite
checks this).  See docs/symbols.md, "PyTorch".
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from elftools.elf.elffile import ELFFile

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# DWARF attribute helpers and the JSON writer are shared with the CPython table generator; the names
# of the tables we derive (stored as ISF enums) and release numbers are the loader's.
from tools.gen_cpython_isf import (BASE_KINDS, ISF_FORMAT, array_counts, attr_int, bit_layout, die_name,  # noqa: E402
                                   member_location, sha256_file, write_json)
from volatility3_zen.zenlib.readers.torch.layouts import DEVICE_ENUM, DTYPE_ENUM, ITEMSIZE_ENUM, release  # noqa: E402

PRODUCER = {"name": "volatility3-zen/tools/gen_torch_isf.py", "version": "1.0.0"}
TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
PROBE_SOURCE = os.path.join(TOOLS_DIR, "torch_probe", "probe.cpp")
DEFAULT_OUT = os.path.join(os.path.dirname(TOOLS_DIR), "volatility3_zen", "symbols", "torch")
CXX_FLAGS = ("-std=c++20", "-g", "-fPIC", "-shared", "-femit-class-debug-always")


# --------------------------------------------------------------------------------------------------
# What is extracted (edit these lists, not the code below)
# --------------------------------------------------------------------------------------------------

# Structures described in full, under their C++ qualified names.  Everything they embed by value
# (members and base classes, recursively) is described too; pointers to anything else become void*.
ROOT_TYPES = (
    "THPVariable",  # the Python object of a torch.Tensor (PyObject head + at::Tensor cdata)
    "at::Tensor",
    "c10::TensorImpl",
    "c10::StorageImpl",
    "c10::Device",
    "torch::autograd::AutogradMeta",  # requires_grad_, grad_fn_
    "THPDtype",  # torch.dtype objects (module hyper-parameters): scalar_type, name
    "THPDevice",  # torch.device objects: c10::Device
)

# C++ enums exported whole (each also lists its non-value enumerators: counts and sentinels).
ENUMS = {
    "c10::ScalarType": ("Undefined", "NumOptions"),
    "c10::DeviceType": ("COMPILE_TIME_MAX_DEVICE_TYPES",),
}

# Header-only constexpr array: byte size of one element of each ScalarType, indexed by its value.
ITEM_SIZES = "caffe2::scalarTypeItemSizes"

# torch.device type names that are not simply the lower-cased c10::DeviceType enumerator.
DEVICE_NAME_EXCEPTIONS = {"PrivateUse1": "privateuseone"}


# --------------------------------------------------------------------------------------------------
# The installation being described
# --------------------------------------------------------------------------------------------------

TORCH_QUERY = r"""
import json, os, platform, sysconfig, torch
print(json.dumps({"version": torch.__version__, "package": os.path.dirname(torch.__file__),
                  "python_include": sysconfig.get_paths()["include"], "python_version": platform.python_version()}))
"""


def query_torch(python: str) -> dict:
    out = subprocess.run([python, "-c", TORCH_QUERY], check=True, capture_output=True, text=True, cwd="/")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    info["include"] = os.path.join(info["package"], "include")
    if not os.path.isdir(os.path.join(info["include"], "c10")):
        raise SystemExit(f"{info['include']}: torch's C++ headers are not installed with this torch")
    return info


def tree_sha256(root: str) -> str:
    """One digest over every file below ``root`` (relative path and content), independent of where
    the tree is installed."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(f"{os.path.relpath(path, root)}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], check=True, capture_output=True, text=True).stdout.splitlines()[0]


def compile_probe(cxx: str, torch_info: dict, out_dir: str) -> str:
    """Link the probe as a shared object: pyelftools cannot apply the relocations of a .o's DWARF."""
    library = os.path.join(out_dir, "probe.so")
    include = torch_info["include"]
    subprocess.run([cxx, *CXX_FLAGS, "-I", include, "-I", os.path.join(include, "torch", "csrc", "api", "include"),
                    "-I", torch_info["python_include"], PROBE_SOURCE, "-o", library], check=True)
    return library


# --------------------------------------------------------------------------------------------------
# C++ DWARF: qualified names
# --------------------------------------------------------------------------------------------------

AGGREGATES = {"DW_TAG_structure_type": "struct", "DW_TAG_class_type": "class", "DW_TAG_union_type": "union"}
SCOPES = ("DW_TAG_namespace",) + tuple(AGGREGATES)
QUALIFIERS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type",
              "DW_TAG_atomic_type")
REFERENCES = ("DW_TAG_reference_type", "DW_TAG_rvalue_reference_type")


class CxxDwarf:
    """Complete type definitions and variables by C++ qualified name (``c10::impl::PyObjectSlot``,
    ``std::optional<c10::Device>``; GCC names template instances with their arguments).

    Names are built from the enclosing namespaces and classes.  A DIE with DW_AT_specification (an
    out-of-line definition) takes the name and scope of the declaration it completes.  A declaration
    (``struct X;``) is resolved to the definition of the same name.
    """

    def __init__(self, elf: ELFFile):
        self.names: Dict[int, str] = {}  # DIE offset -> qualified name
        self.definitions: Dict[str, object] = {}  # qualified name -> complete struct/class/union/enum DIE
        self.variables: Dict[str, List[object]] = {}
        self.typedef_of: Dict[int, str] = {}  # offset of an unnamed type -> the typedef naming it
        completions = []
        for cu in elf.get_dwarf_info().iter_CUs():
            completions += self._walk(cu.get_top_DIE(), "")
        for die in completions:  # their declarations have been named by now
            name = self.names.get(die.get_DIE_from_attribute("DW_AT_specification").offset)
            if name is not None:
                self._add(die, name)
                if die.tag in SCOPES:
                    self._walk(die, name)

    def _walk(self, scope, prefix: str) -> List[object]:
        completions = []
        for die in scope.iter_children():
            if "DW_AT_specification" in die.attributes:
                completions.append(die)
                continue
            name = die_name(die)
            if name is None:
                if die.tag == "DW_TAG_namespace":
                    name = "(anonymous namespace)"
                else:
                    continue
            qualified = f"{prefix}::{name}" if prefix else name
            self._add(die, qualified)
            if die.tag in SCOPES:
                completions += self._walk(die, qualified)
        return completions

    def _add(self, die, qualified: str) -> None:
        self.names[die.offset] = qualified
        if die.tag == "DW_TAG_variable":
            self.variables.setdefault(qualified, []).append(die)
        elif die.tag == "DW_TAG_typedef" and "DW_AT_type" in die.attributes:
            target = die.get_DIE_from_attribute("DW_AT_type")
            if die_name(target) is None:
                self.typedef_of.setdefault(target.offset, qualified)
        elif (die.tag in AGGREGATES or die.tag == "DW_TAG_enumeration_type") \
                and "DW_AT_declaration" not in die.attributes:
            self.definitions.setdefault(qualified, die)

    def strip(self, die):
        """Follow typedefs and qualifiers; resolve declarations to their definition."""
        while die.tag in QUALIFIERS and "DW_AT_type" in die.attributes:
            die = die.get_DIE_from_attribute("DW_AT_type")
        if "DW_AT_declaration" in die.attributes and die.offset in self.names:
            die = self.definitions.get(self.names[die.offset], die)
        return die

    def name_of(self, die) -> Optional[str]:
        return self.names.get(die.offset) or self.typedef_of.get(die.offset)

    def definition(self, name: str, tags: Sequence[str]):
        die = self.definitions.get(name)
        if die is None or die.tag not in tags:
            raise SystemExit(f"{name} is not defined in the probe's DWARF (is it named in {PROBE_SOURCE}?)")
        return die

    def constant_array(self, name: str) -> List[int]:
        """The DW_AT_const_value bytes of a constexpr array of bytes (a header-only table)."""
        for die in self.variables.get(name, ()):
            value = die.attributes.get("DW_AT_const_value")
            if value is not None and isinstance(value.value, list):
                return list(value.value)
        raise SystemExit(f"{name} has no constant value in the probe's DWARF")


# --------------------------------------------------------------------------------------------------
# DWARF types -> ISF
# --------------------------------------------------------------------------------------------------

def is_static_member(die) -> bool:
    """DWARF 4 describes a static data member as a member declaration (DWARF 5 uses DW_TAG_variable)."""
    return "DW_AT_external" in die.attributes or "DW_AT_declaration" in die.attributes


class IsfBuilder:
    """Renders the roots, and every type they embed by value, into ISF user_types/base_types/enums.

    C++ specifics: a base class becomes an anonymous field ``base_class_N`` at its offset, so that
    Volatility (and the zen loader) reach inherited members directly, as C++ does; the vtable pointer
    is the artificial ``_vptr.<Class>`` member GCC emits; a reference member is a pointer; a bitfield
    declared ``bool`` is given ``unsigned char`` storage, because ISF bitfields are read as integers.
    Unnamed types are called ``<Parent>__<member>``.  Pointers lead only to roots; any other
    pointed-to struct becomes ``void``, so every name the file references is defined in it.
    """

    def __init__(self, index: CxxDwarf, roots: Sequence[str]):
        self.index = index
        self.roots = {index.definition(name, tuple(AGGREGATES)).offset: name for name in roots}
        self.user_types: Dict[str, dict] = {}
        self.base_types: Dict[str, dict] = {"void": {"kind": "void", "size": 0, "signed": False, "endian": "little"},
                                            "pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"}}
        self.enums: Dict[str, dict] = {}
        for name in sorted(roots):
            self.add_aggregate(self.index.definition(name, tuple(AGGREGATES)), name)

    def add_aggregate(self, die, name: str) -> None:
        size = attr_int(die, "DW_AT_byte_size", 0)
        previous = self.user_types.get(name)
        if previous is not None:
            if previous["size"] != size:
                raise SystemExit(f"two different types are named {name} ({previous['size']} and {size} bytes)")
            return
        self.user_types[name] = {"kind": AGGREGATES[die.tag], "size": size, "fields": {}}
        self.user_types[name]["fields"] = self.fields(die, name)

    def fields(self, die, name: str) -> Dict[str, dict]:
        fields: Dict[str, dict] = {}
        bases = unnamed = 0
        for member in die.iter_children():
            if member.tag == "DW_TAG_inheritance":
                field_name, bases = f"base_class_{bases}", bases + 1
                field = {"offset": member_location(member), "anonymous": True}
            elif member.tag == "DW_TAG_member" and not is_static_member(member):
                field_name = die_name(member)
                field = {"offset": member_location(member)}
                if field_name is None:
                    field_name, unnamed = f"unnamed_field_{unnamed}", unnamed + 1
                    field["anonymous"] = True
            else:
                continue
            context = f"{name}__{field_name}"
            if "DW_AT_bit_size" in member.attributes:
                field["offset"], field["type"] = self.bitfield(member, context)
            else:
                field["type"] = self.describe(member.get_DIE_from_attribute("DW_AT_type"), context)
            fields[field_name] = field
        return fields

    def bitfield(self, member, context: str) -> Tuple[int, dict]:
        storage = self.index.strip(member.get_DIE_from_attribute("DW_AT_type"))
        size = attr_int(storage, "DW_AT_byte_size")
        unit, position, length = bit_layout(member, size)
        if storage.tag == "DW_TAG_base_type" and BASE_KINDS.get(attr_int(storage, "DW_AT_encoding"))[0] == "bool":
            described = {"kind": "base", "name": self.base_named("unsigned char", 1, signed=False)}
        else:
            described = self.describe(storage, context)
        return unit, {"kind": "bitfield", "bit_position": position, "bit_length": length, "type": described}

    def describe(self, die, context: str) -> dict:
        die = self.index.strip(die)
        if die.tag == "DW_TAG_base_type":
            return self.base(die)
        if die.tag == "DW_TAG_pointer_type" or die.tag in REFERENCES:
            return {"kind": "pointer", "subtype": self.pointee(die, context)}
        if die.tag == "DW_TAG_array_type":
            described = self.describe(die.get_DIE_from_attribute("DW_AT_type"), context)
            for count in reversed(array_counts(die)):
                described = {"kind": "array", "count": count, "subtype": described}
            return described
        if die.tag == "DW_TAG_enumeration_type":
            return {"kind": "enum", "name": self.add_enum(die, self.index.name_of(die) or context)}
        if die.tag == "DW_TAG_subroutine_type":
            return {"kind": "function"}
        if die.tag in AGGREGATES:
            name = self.roots.get(die.offset) or self.index.name_of(die) or context
            self.add_aggregate(die, name)
            return {"kind": AGGREGATES[die.tag], "name": name}
        if die.tag in QUALIFIERS:  # a typedef or qualifier of void
            return {"kind": "base", "name": "void"}
        raise SystemExit(f"unsupported DWARF type {die.tag} in {context}")

    def pointee(self, pointer, context: str) -> dict:
        if "DW_AT_type" not in pointer.attributes:
            return {"kind": "base", "name": "void"}
        target = self.index.strip(pointer.get_DIE_from_attribute("DW_AT_type"))
        if target.tag in AGGREGATES:
            root = self.roots.get(target.offset)
            return {"kind": AGGREGATES[target.tag], "name": root} if root else {"kind": "base", "name": "void"}
        return self.describe(target, context)

    def base(self, die) -> dict:
        kind, signed = BASE_KINDS.get(attr_int(die, "DW_AT_encoding"), ("int", False))
        name = die_name(die)
        self.base_types[name] = {"kind": kind, "size": attr_int(die, "DW_AT_byte_size"), "signed": signed,
                                 "endian": "little"}
        return {"kind": "base", "name": name}

    def base_named(self, name: str, size: int, signed: bool) -> str:
        self.base_types.setdefault(name, {"kind": "int", "size": size, "signed": signed, "endian": "little"})
        return name

    def add_enum(self, die, name: str) -> str:
        constants = {die_name(e): attr_int(e, "DW_AT_const_value") for e in die.iter_children()
                     if e.tag == "DW_TAG_enumerator"}
        size = attr_int(die, "DW_AT_byte_size")
        if "DW_AT_type" in die.attributes:
            base = self.base(self.index.strip(die.get_DIE_from_attribute("DW_AT_type")))["name"]
        else:
            signed = min(constants.values(), default=0) < 0
            base = self.base_named("int" if signed else "unsigned int", size, signed)
        self.enums[name] = {"size": size, "base": base, "constants": constants}
        return name


# --------------------------------------------------------------------------------------------------
# Names from the installed torch: dtypes and device types
# --------------------------------------------------------------------------------------------------

# Runs in the torch interpreter.  Input: the offsets of TensorImpl.data_type_ and of the device type;
# output: every torch.dtype with the ScalarType number its tensors carry, and torch.device names.
TORCH_PROBE = r"""
import ctypes, json, sys, warnings
import torch

spec = json.loads(sys.stdin.read())
warnings.simplefilter("ignore")  # complex32 and quantized dtypes warn that they are experimental
dtypes = {}
for value in vars(torch).values():
    if isinstance(value, torch.dtype):
        impl = torch.empty(0, dtype=value)._cdata  # the TensorImpl*
        scalar_type = ctypes.c_uint16.from_address(impl + spec["data_type"]).value
        dtypes[str(value)[len("torch."):]] = {"scalar_type": scalar_type, "itemsize": value.itemsize}
devices = {}
for name in spec["device_names"]:
    try:
        devices[name] = torch.device(name).type
    except RuntimeError:  # a device type torch.device does not parse (e.g. metal)
        devices[name] = None
device_read = {kind: ctypes.c_int8.from_address(torch.empty(0, device=kind)._cdata + spec["device_type"]).value
               for kind in ("cpu", "meta")}
print(json.dumps({"dtypes": dtypes, "devices": devices, "device_read": device_read}))
"""


def enum_values(enums: Dict[str, dict], name: str) -> Dict[str, int]:
    """An exported enum's enumerators that name a value (sentinels and counts left out)."""
    return {k: v for k, v in enums[name]["constants"].items() if k not in ENUMS[name]}


def derived_tables(index: CxxDwarf, isf: dict, torch_python: str) -> Dict[str, dict]:
    """The item size, dtype and device name tables, each checked against a second source."""
    enums = isf["enums"]
    scalar_types = enum_values(enums, "c10::ScalarType")
    device_types = enum_values(enums, "c10::DeviceType")
    item_sizes = index.constant_array(ITEM_SIZES)
    if len(item_sizes) != len(scalar_types) + 1:  # one entry per ScalarType, then Undefined
        raise SystemExit(f"{ITEM_SIZES} has {len(item_sizes)} entries for {len(scalar_types)} scalar types")
    itemsize = {name: item_sizes[value] for name, value in scalar_types.items()}

    tensor_impl = isf["user_types"]["c10::TensorImpl"]["fields"]
    device_names = {value: DEVICE_NAME_EXCEPTIONS.get(name, name.lower()) for name, value in device_types.items()}
    spec = {"data_type": tensor_impl["data_type_"]["offset"],
            "device_type": tensor_impl["device_opt_"]["offset"],  # optional<Device>: the Device comes first
            "device_names": sorted(device_names.values())}
    found = json.loads(subprocess.run([torch_python, "-c", TORCH_PROBE], input=json.dumps(spec), check=True,
                                      capture_output=True, text=True, cwd="/").stdout)
    dtypes = {name: entry["scalar_type"] for name, entry in found["dtypes"].items()}
    by_value = {value: name for name, value in scalar_types.items()}
    if sorted(dtypes.values()) != sorted(scalar_types.values()):
        raise SystemExit(f"torch dtypes {dtypes} do not cover c10::ScalarType {scalar_types} one to one")
    wrong_size = {name: entry for name, entry in found["dtypes"].items()
                  if entry["itemsize"] != itemsize[by_value[entry["scalar_type"]]]}
    if wrong_size:
        raise SystemExit(f"dtype.itemsize disagrees with {ITEM_SIZES}: {wrong_size}")
    if any(parsed not in (name, None) for name, parsed in found["devices"].items()):
        raise SystemExit(f"torch.device names these device types differently: {found['devices']}")
    if found["device_read"] != {"cpu": device_types["CPU"], "meta": device_types["Meta"]}:
        raise SystemExit(f"device type read back from live tensors: {found['device_read']}")

    item_base = {"kind": "int", "size": 1, "signed": False, "endian": "little"}
    isf["base_types"].setdefault("unsigned char", item_base)
    scalar_enum = enums["c10::ScalarType"]
    device_enum = enums["c10::DeviceType"]
    return {
        ITEMSIZE_ENUM: {"size": 1, "base": "unsigned char", "constants": itemsize},
        DTYPE_ENUM: {"size": scalar_enum["size"], "base": scalar_enum["base"], "constants": dtypes},
        DEVICE_ENUM: {"size": device_enum["size"], "base": device_enum["base"],
                      "constants": {name: value for value, name in device_names.items()}},
    }


# --------------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------------

def build_isf(library: str, torch_python: str, torch_info: dict, cxx: str) -> dict:
    with open(library, "rb") as fh:
        index = CxxDwarf(ELFFile(fh))
        builder = IsfBuilder(index, ROOT_TYPES)
        for name in ENUMS:
            builder.add_enum(index.definition(name, ("DW_TAG_enumeration_type",)), name)
        isf = {"base_types": builder.base_types, "user_types": builder.user_types, "enums": builder.enums,
               "symbols": {}}
        isf["enums"].update(derived_tables(index, isf, torch_python))
    isf["metadata"] = {
        "format": ISF_FORMAT,
        "producer": dict(PRODUCER, torch_version=torch_info["version"],
                         torch_headers_sha256=tree_sha256(torch_info["include"]),
                         probe_sha256=sha256_file(PROBE_SOURCE), compiler=compiler_version(cxx),
                         compiler_flags=" ".join(CXX_FLAGS),
                         python_headers=torch_info["python_version"]),
    }
    return isf


def generate(torch_python: str, out_dir: str, cxx: str = "g++") -> str:
    torch_info = query_torch(torch_python)
    with tempfile.TemporaryDirectory(prefix="zen-torch-probe-") as build_dir:
        isf = build_isf(compile_probe(cxx, torch_info, build_dir), torch_python, torch_info, cxx)
    path = os.path.join(out_dir, f"torch-{release(torch_info['version'])}.json")
    write_json(path, isf)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True, help="an interpreter that imports the torch to describe")
    parser.add_argument("--cxx", default="g++", help="C++ compiler (default: g++)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: the package's symbols/torch)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = generate(args.torch_python, args.out, args.cxx)
    print(f"{path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
