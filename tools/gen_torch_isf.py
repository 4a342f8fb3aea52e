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
checks this).  DWARF walking, ISF rendering (base classes as anonymous fields, ...), writing and the
command line are shared with the CPython generator (``tools/isf_builder.py``); this file says what
PyTorch needs.  See docs/symbols.md, "PyTorch".
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, Optional, Sequence, Tuple

from elftools.elf.elffile import ELFFile

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The names of the tables we derive (stored as ISF enums) and release numbers are the loader's.
from tools.isf_builder import CxxDwarf, IsfBuilder, isf_document, run_cli, sha256_file, write_json  # noqa: E402
from volatility3_zen.zenlib.readers.torch.layouts import DEVICE_ENUM, DTYPE_ENUM, ITEMSIZE_ENUM, release  # noqa: E402

PRODUCER = {"name": "volatility3-zen/tools/gen_torch_isf.py", "version": "1.0.0"}
TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
PROBE_SOURCE = os.path.join(TOOLS_DIR, "torch_probe", "probe.cpp")
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


def derived_tables(index: CxxDwarf, builder: IsfBuilder, torch_python: str) -> Dict[str, dict]:
    """The item size, dtype and device name tables, each checked against a second source."""
    enums = builder.enums
    scalar_types = enum_values(enums, "c10::ScalarType")
    device_types = enum_values(enums, "c10::DeviceType")
    item_sizes = index.constant_array(ITEM_SIZES)
    if len(item_sizes) != len(scalar_types) + 1:  # one entry per ScalarType, then Undefined
        raise SystemExit(f"{ITEM_SIZES} has {len(item_sizes)} entries for {len(scalar_types)} scalar types")
    itemsize = {name: item_sizes[value] for name, value in scalar_types.items()}

    tensor_impl = builder.user_types["c10::TensorImpl"]["fields"]
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

    builder.base_named("unsigned char", 1, signed=False)
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
        index = CxxDwarf(ELFFile(fh), where=f"the probe's DWARF (is it named in {PROBE_SOURCE}?)")
        builder = IsfBuilder(index, ROOT_TYPES)
        builder.build()
        for name in ENUMS:
            builder.add_enum(index.definition(name, ("DW_TAG_enumeration_type",)), name)
        builder.enums.update(derived_tables(index, builder, torch_python))
    producer = dict(PRODUCER, torch_version=torch_info["version"],
                    torch_headers_sha256=tree_sha256(torch_info["include"]), probe_sha256=sha256_file(PROBE_SOURCE),
                    compiler=compiler_version(cxx), compiler_flags=" ".join(CXX_FLAGS),
                    python_headers=torch_info["python_version"])
    return isf_document(builder, producer)


def generate(torch_python: str, out_dir: str, cxx: str = "g++") -> str:
    torch_info = query_torch(torch_python)
    with tempfile.TemporaryDirectory(prefix="zen-torch-probe-") as build_dir:
        isf = build_isf(compile_probe(cxx, torch_info, build_dir), torch_python, torch_info, cxx)
    path = os.path.join(out_dir, f"torch-{release(torch_info['version'])}.json")
    write_json(path, isf)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--torch-python", required=True, help="an interpreter that imports the torch to describe")
    parser.add_argument("--cxx", default="g++", help="C++ compiler (default: g++)")


def generate_table(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Iterator[Tuple[str, str]]:
    yield "", generate(args.torch_python, args.out, args.cxx)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(__doc__, "torch", argv, add_arguments, generate_table)


if __name__ == "__main__":
    sys.exit(main())
