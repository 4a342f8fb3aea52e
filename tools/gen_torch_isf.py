#!/usr/bin/env python3
"""Generate the PyTorch tensor layout tables (Volatility ISF) from the DWARF of a small C++ probe.

PyTorch wheels ship without debug information, but they ship their C++ headers.  The probe
(``tools/torch_probe/probe.cpp``) names the structures a tensor is made of; compiled with ``-g
-femit-class-debug-always`` against a release's headers, its DWARF holds their exact layout as the
wheel's compiler laid them out (same ABI: x86_64 Itanium C++ ABI, libstdc++).  The enums come from the
same DWARF, the item size of every ScalarType from the DWARF constant value of
``caffe2::scalarTypeItemSizes``.  The Python names of dtypes come from the c10::ScalarType enumerators
(``Float`` -> ``float32``: torch's own mapping, ``DTYPE_NAME_EXCEPTIONS``), checked against the wheel's
``torch/_C/__init__.pyi``; with ``--torch-python`` they are read from an imported torch instead (each
dtype's ScalarType number read back from a live tensor), and both give the same table for 2.13.0.

    python tools/gen_torch_isf.py --release 2.4.1        # download the release's wheel into a scratch folder
    python tools/gen_torch_isf.py --all                  # every release in RELEASES (about 20 min)
    python tools/gen_torch_isf.py --wheel torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    python tools/gen_torch_isf.py --torch-python <a python with torch installed>

``--release`` downloads exactly ``torch==<release>`` (no dependencies: never the nvidia packages, never
installed anywhere), extracts ``torch/include``, ``torch/version.py`` and the stubs, deletes the wheel,
compiles the probe, and deletes the extracted files.  Each table is ``symbols/torch/torch-<release>.json``;
``symbols/torch/releases.json`` maps every release to its table: a patch release whose headers (those
the probe includes) are identical to another patch release's of the same minor shares that table.

The output is deterministic: sorted keys, no timestamps or paths, so regenerating from the same torch,
headers and compiler gives the same bytes (the test suite checks this for 2.13.0).  DWARF walking, ISF
rendering, writing and the command line are shared with the CPython generator
(``tools/isf_builder.py``).  See docs/symbols.md, "PyTorch".
"""

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from elftools.elf.elffile import ELFFile

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The names of the tables we derive (stored as ISF enums), the index and release numbers are the loader's.
from tools.isf_builder import (CxxDwarf, IsfBuilder, format_json, isf_document, run_cli, sha256_file,  # noqa: E402
                               write_json)
from volatility3_zen.zenlib.readers.torch.layouts import (DEVICE_ENUM, DTYPE_ENUM, INDEX_NAME, ITEMSIZE_ENUM,  # noqa: E402
                                                          parse_version, release)

PRODUCER = {"name": "volatility3-zen/tools/gen_torch_isf.py", "version": "1.0.0"}
TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
PROBE_SOURCE = os.path.join(TOOLS_DIR, "torch_probe", "probe.cpp")
# The first standard the release's headers compile under is used (and recorded in the table).
CXX_STANDARDS = ("-std=c++20", "-std=c++17", "-std=c++14")
CXX_FLAGS = ("-g", "-fPIC", "-shared", "-femit-class-debug-always")
PYENV_VERSIONS = os.path.expanduser("~/.pyenv/versions")


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

# torch dtype names (str(dtype) without "torch.") that are not simply the lower-cased c10::ScalarType
# enumerator: torch/csrc/utils/tensor_dtypes.cpp, getDtypeNames, first name of each pair.
DTYPE_NAME_EXCEPTIONS = {
    "Byte": "uint8", "Char": "int8", "Short": "int16", "Int": "int32", "Long": "int64", "Half": "float16",
    "Float": "float32", "Double": "float64", "ComplexHalf": "complex32", "ComplexFloat": "complex64",
    "ComplexDouble": "complex128",
}
# The second names of getDtypeNames' pairs: aliases the stubs declare too (torch.half is torch.float16).
DTYPE_ALIASES = {"float", "double", "half", "short", "int", "long", "cfloat", "cdouble", "chalf"}

# Every registry release from 1.8 to 2.15 (x86_64 Linux wheels).  The wheel is downloaded for a CPython
# the release has wheels for, whose headers (for THPVariable's PyObject head) pyenv has:
# ``registry_cpython``.  2.13.0 is the local CPU wheel (the tests regenerate it).
RELEASES = (
    "1.8.0", "1.8.1", "1.9.0", "1.9.1", "1.10.0", "1.10.1", "1.10.2", "1.11.0", "1.12.0", "1.12.1",
    "1.13.0", "1.13.1", "2.0.0", "2.0.1", "2.1.0", "2.1.1", "2.1.2", "2.2.0", "2.2.1", "2.2.2",
    "2.3.0", "2.3.1", "2.4.0", "2.4.1", "2.5.0", "2.5.1", "2.6.0", "2.7.0", "2.7.1", "2.8.0",
    "2.9.0", "2.9.1", "2.10.0", "2.11.0", "2.12.0", "2.12.1", "2.13.0", "2.14.0", "2.14.1", "2.15.0",
)
# A wheel and its extracted headers take at most about 3 GB: refuse to start one with less free.
MIN_FREE_BYTES = 4 << 30


def registry_cpython(release_number: str) -> str:
    """The CPython whose wheel is downloaded: 3.8 has 1.4-2.4, 3.11 has 1.13 on."""
    return "3.8" if parse_version(release_number).key < (1, 13, 0) else "3.11"


# --------------------------------------------------------------------------------------------------
# The torch being described: an interpreter that imports it, or a wheel's files
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TorchSource:
    version: str  # torch.__version__: "2.13.0+cpu"
    include: str  # torch/include
    python_include: str  # the CPython headers THPVariable's PyObject head comes from
    python_version: str  # their version: "3.11.7"
    torch_python: Optional[str] = None  # an interpreter that imports this torch (dtype names read from it)
    stubs: Optional[str] = None  # torch/_C/__init__.pyi (the dtype names the Python API declares)


TORCH_QUERY = r"""
import json, os, platform, sysconfig, torch
print(json.dumps({"version": torch.__version__, "package": os.path.dirname(torch.__file__),
                  "python_include": sysconfig.get_paths()["include"], "python_version": platform.python_version()}))
"""


def query_torch(python: str) -> TorchSource:
    out = subprocess.run([python, "-c", TORCH_QUERY], check=True, capture_output=True, text=True, cwd="/")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    include = os.path.join(info["package"], "include")
    if not os.path.isdir(os.path.join(include, "c10")):
        raise SystemExit(f"{include}: torch's C++ headers are not installed with this torch")
    return TorchSource(info["version"], include, info["python_include"], info["python_version"], torch_python=python)


def pyenv_python_include(cpython: str) -> Tuple[str, str]:
    """(include folder, full version) of pyenv's newest build of CPython ``cpython`` ("3.8")."""
    found = sorted(glob.glob(os.path.join(PYENV_VERSIONS, f"{cpython}.*", "include", f"python{cpython}")),
                   key=lambda path: [int(p) for p in re.findall(r"\d+", path.split(os.sep)[-3])])
    if not found:
        raise SystemExit(f"no CPython {cpython} headers under {PYENV_VERSIONS} (pass --python-include)")
    return found[-1], python_header_version(found[-1])


def python_header_version(include: str) -> str:
    with open(os.path.join(include, "patchlevel.h")) as fh:
        match = re.search(r'#define\s+PY_VERSION\s+"([^"]+)"', fh.read())
    if not match:
        raise SystemExit(f"{include}/patchlevel.h has no PY_VERSION")
    return match.group(1)


def wheel_cpython(wheel: str) -> str:
    """"torch-2.4.1-cp38-cp38-manylinux1_x86_64.whl" -> "3.8"."""
    match = re.search(r"-cp(\d)(\d+)-", os.path.basename(wheel))
    if not match:
        raise SystemExit(f"{os.path.basename(wheel)}: not a CPython wheel name (torch-X.Y.Z-cpXY-...)")
    return f"{match.group(1)}.{match.group(2)}"


# From a wheel: the headers, the version and the stubs; nothing else (the libraries are most of its size).
WHEEL_MEMBERS = ("torch/include/", "torch/version.py", "torch/_C/__init__.pyi")


def extract_wheel(wheel: str, folder: str, python_include: Optional[str] = None) -> TorchSource:
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.startswith(WHEEL_MEMBERS[0]) or n in WHEEL_MEMBERS[1:]]
            archive.extractall(folder, members)
    except (OSError, zipfile.BadZipFile) as error:
        raise SystemExit(f"{wheel}: cannot read the wheel ({error})") from None
    package = os.path.join(folder, "torch")
    include = os.path.join(package, "include")
    if not os.path.isdir(os.path.join(include, "c10")):
        raise SystemExit(f"{os.path.basename(wheel)} has no torch/include/c10: not a torch wheel with headers")
    with open(os.path.join(package, "version.py")) as fh:
        match = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", fh.read(), re.M)
    if not match:
        raise SystemExit(f"{os.path.basename(wheel)}: torch/version.py has no __version__")
    if python_include:
        python_version = python_header_version(python_include)
    else:
        python_include, python_version = pyenv_python_include(wheel_cpython(wheel))
    stubs = os.path.join(package, "_C", "__init__.pyi")
    return TorchSource(match.group(1), include, python_include, python_version,
                       stubs=stubs if os.path.exists(stubs) else None)


def download_wheel(release_number: str, folder: str) -> Tuple[str, float]:
    """pip downloads exactly ``torch==<release>`` (no dependencies) into ``folder``: (path, seconds).
    A machine-wide constraint that caps torch below the release is lifted for this one command."""
    usage = shutil.disk_usage(folder)
    if usage.free < MIN_FREE_BYTES:
        raise SystemExit(f"{folder}: {usage.free >> 20} MiB free, a torch wheel needs {MIN_FREE_BYTES >> 20} MiB")
    command = [sys.executable, "-m", "pip", "download", f"torch=={release_number}", "--no-deps",
               "--only-binary=:all:", "--python-version", registry_cpython(release_number), "--no-cache-dir",
               "--disable-pip-version-check", "--quiet", "-d", folder]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    # With --no-deps, only a constraint can make torch==X unresolvable (pip --quiet does not say which).
    if done.returncode != 0 and ("(constraint)" in done.stderr or "ResolutionImpossible" in done.stderr):
        # The variable replaces the configuration's constraints file (an empty value would be ignored).
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PIP_CONSTRAINT=os.devnull))
    wheels = glob.glob(os.path.join(folder, "torch-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise SystemExit(f"torch=={release_number}: download failed ({last})")
    return wheels[0], time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# Compiling the probe
# --------------------------------------------------------------------------------------------------

def compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], check=True, capture_output=True, text=True).stdout.splitlines()[0]


def include_flags(source: TorchSource) -> List[str]:
    return ["-I", source.include, "-I", os.path.join(source.include, "torch", "csrc", "api", "include"),
            "-I", source.python_include]


def probe_headers(cxx: str, source: TorchSource) -> Tuple[str, List[str]]:
    """(standard, the torch headers the probe includes): the first standard they preprocess under."""
    for standard in CXX_STANDARDS:
        done = subprocess.run([cxx, standard, "-M", *include_flags(source), PROBE_SOURCE],
                              capture_output=True, text=True)
        if done.returncode == 0:
            paths = done.stdout.replace("\\\n", " ").split(":", 1)[1].split()
            root = os.path.realpath(source.include) + os.sep
            return standard, sorted({os.path.relpath(os.path.realpath(p), root) for p in paths
                                     if os.path.realpath(p).startswith(root)})
    raise SystemExit(f"torch {source.version}: the probe's headers do not preprocess "
                     f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'})")


def headers_sha256(source: TorchSource, headers: Sequence[str]) -> str:
    """One digest over the headers the probe includes (relative path and content): patch releases
    with equal digests have equal layouts."""
    digest = hashlib.sha256()
    for name in headers:
        digest.update(f"{name}\0{sha256_file(os.path.join(source.include, name))}\n".encode())
    return digest.hexdigest()


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


def compile_probe(cxx: str, source: TorchSource, out_dir: str, standards: Sequence[str]) -> Tuple[str, Tuple[str, ...]]:
    """Link the probe as a shared object (pyelftools cannot apply the relocations of a .o's DWARF):
    (library, the flags used), with the first standard in ``standards`` that compiles."""
    library = os.path.join(out_dir, "probe.so")
    error = ""
    for standard in standards:
        flags = (standard,) + CXX_FLAGS
        done = subprocess.run([cxx, *flags, *include_flags(source), PROBE_SOURCE, "-o", library],
                              capture_output=True, text=True)
        if done.returncode == 0:
            return library, flags
        error = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[-300:])
    raise SystemExit(f"torch {source.version}: the probe does not compile ({error})")


# --------------------------------------------------------------------------------------------------
# Names: dtypes and device types
# --------------------------------------------------------------------------------------------------

# Runs in the torch interpreter (--torch-python).  Input: the offsets of TensorImpl.data_type_ and of
# the device type; output: every torch.dtype with the ScalarType number its tensors carry, and
# torch.device names.
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


def dtype_names(scalar_types: Dict[str, int]) -> Dict[str, int]:
    """torch dtype name -> ScalarType value, from the enumerators: "Float" -> "float32", "BFloat16" -> "bfloat16"."""
    return {DTYPE_NAME_EXCEPTIONS.get(name, name.lower()): value for name, value in scalar_types.items()}


def check_stubs(stubs: Optional[str], dtypes: Dict[str, int]) -> List[str]:
    """Every dtype the wheel's Python API declares (``float32: dtype = ...`` in torch/_C/__init__.pyi) is
    named by the header mapping; the notes say which ScalarTypes the stubs do not declare."""
    if stubs is None:
        return ["the wheel has no torch/_C/__init__.pyi: dtype names not cross-checked"]
    with open(stubs, encoding="utf-8") as fh:
        declared = set(re.findall(r"^(\w+): dtype\b", fh.read(), re.M))
    unknown = declared - set(dtypes) - DTYPE_ALIASES
    if unknown:
        raise SystemExit(f"the stubs declare dtypes no c10::ScalarType maps to: {sorted(unknown)}")
    undeclared = sorted(set(dtypes) - declared)
    return [f"ScalarTypes the stubs declare no dtype for: {', '.join(undeclared)}"] if undeclared else []


def live_dtype_names(builder: IsfBuilder, source: TorchSource, scalar_types: Dict[str, int],
                     itemsize: Dict[str, int], device_names: Dict[int, str], device_types: Dict[str, int]) -> Dict[str, int]:
    """--torch-python: the dtype names of the imported torch, each dtype's ScalarType read back from a live
    tensor at the DWARF's offset; the item sizes and device names checked against it."""
    tensor_impl = builder.user_types["c10::TensorImpl"]["fields"]
    spec = {"data_type": tensor_impl["data_type_"]["offset"],
            "device_type": tensor_impl["device_opt_"]["offset"],  # optional<Device>: the Device comes first
            "device_names": sorted(device_names.values())}
    found = json.loads(subprocess.run([source.torch_python, "-c", TORCH_PROBE], input=json.dumps(spec), check=True,
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
    return dtypes


def derived_tables(index: CxxDwarf, builder: IsfBuilder, source: TorchSource, notes: List[str]) -> Dict[str, dict]:
    """The item size, dtype and device name tables, each checked against a second source."""
    enums = builder.enums
    scalar_types = enum_values(enums, "c10::ScalarType")
    device_types = enum_values(enums, "c10::DeviceType")
    item_sizes = index.constant_array(ITEM_SIZES)
    if len(item_sizes) != len(scalar_types) + 1:  # one entry per ScalarType, then Undefined
        raise SystemExit(f"{ITEM_SIZES} has {len(item_sizes)} entries for {len(scalar_types)} scalar types")
    itemsize = {name: item_sizes[value] for name, value in scalar_types.items()}
    device_names = {value: DEVICE_NAME_EXCEPTIONS.get(name, name.lower()) for name, value in device_types.items()}

    dtypes = dtype_names(scalar_types)
    if source.torch_python:
        live = live_dtype_names(builder, source, scalar_types, itemsize, device_names, device_types)
        if live != dtypes:  # the mapping of DTYPE_NAME_EXCEPTIONS is torch's own
            raise SystemExit(f"torch names its dtypes {sorted(live.items())}, the enumerators give {sorted(dtypes.items())}")
    else:
        notes += check_stubs(source.stubs, dtypes)

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

def build_isf(library: str, flags: Sequence[str], source: TorchSource, cxx: str, notes: List[str]) -> dict:
    with open(library, "rb") as fh:
        index = CxxDwarf(ELFFile(fh), where=f"the probe's DWARF (is it named in {PROBE_SOURCE}?)")
        builder = IsfBuilder(index, ROOT_TYPES)
        builder.build()
        for name in ENUMS:
            builder.add_enum(index.definition(name, ("DW_TAG_enumeration_type",)), name)
        builder.enums.update(derived_tables(index, builder, source, notes))
    producer = dict(PRODUCER, torch_version=source.version,
                    torch_headers_sha256=tree_sha256(source.include), probe_sha256=sha256_file(PROBE_SOURCE),
                    compiler=compiler_version(cxx), compiler_flags=" ".join(flags),
                    python_headers=source.python_version)
    return isf_document(builder, producer)


@dataclasses.dataclass
class Generated:
    release: str
    table: str  # the release whose table file serves it
    headers_sha256: str
    path: str  # the table file
    notes: List[str]
    wheel: str = ""
    wheel_bytes: int = 0
    download_seconds: float = 0.0
    seconds: float = 0.0


def read_index(out_dir: str) -> Dict[str, dict]:
    path = os.path.join(out_dir, INDEX_NAME)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)["releases"]


def write_index(out_dir: str, releases: Dict[str, dict]) -> None:
    path = os.path.join(out_dir, INDEX_NAME)
    with open(path + ".tmp", "w") as fh:  # keys sorted as text, like the tables'
        fh.write(format_json({"format": 1, "releases": releases}) + "\n")
    os.replace(path + ".tmp", path)


def shared_table(index: Dict[str, dict], release_number: str, digest: str, out_dir: str) -> Optional[str]:
    """Another patch release of the same minor with the same headers whose table exists, or None."""
    own = index.get(release_number, {})
    if own.get("table") == release_number:  # a table of its own: regenerate it
        return None
    minor = parse_version(release_number).key[:2]
    for other, entry in sorted(index.items(), key=lambda item: parse_version(item[0]).key):
        if (other != release_number and parse_version(other).key[:2] == minor and entry.get("headers_sha256") == digest
                and os.path.exists(os.path.join(out_dir, f"torch-{entry['table']}.json"))):
            return entry["table"]
    return None


def generate(source: TorchSource, out_dir: str, cxx: str = "g++", wheel: Optional[dict] = None) -> Generated:
    """Write the table of ``source`` (or share another patch release's) and its index entry."""
    started = time.monotonic()
    number = release(source.version)
    standard, headers = probe_headers(cxx, source)
    digest = headers_sha256(source, headers)
    os.makedirs(out_dir, exist_ok=True)
    index = read_index(out_dir)
    notes: List[str] = []
    table = shared_table(index, number, digest, out_dir)
    if table is None:
        table = number
        with tempfile.TemporaryDirectory(prefix="zen-torch-probe-") as build_dir:
            standards = CXX_STANDARDS[CXX_STANDARDS.index(standard):]
            library, flags = compile_probe(cxx, source, build_dir, standards)
            write_json(os.path.join(out_dir, f"torch-{number}.json"), build_isf(library, flags, source, cxx, notes))
    else:
        notes.append(f"headers identical to {table}'s: shares torch-{table}.json")
    index[number] = dict(index.get(number, {}), **(wheel or {}), table=table, headers_sha256=digest)
    write_index(out_dir, index)
    return Generated(number, table, digest, os.path.join(out_dir, f"torch-{table}.json"), notes,
                     seconds=time.monotonic() - started)


def generate_from_wheel(wheel: str, out_dir: str, cxx: str, python_include: Optional[str] = None,
                        delete_wheel: bool = False, scratch: Optional[str] = None) -> Generated:
    """Extract what the probe needs into a throwaway folder (deleting the wheel then, if asked), describe it."""
    if not os.path.isfile(wheel):
        raise SystemExit(f"{wheel}: cannot read the wheel (no such file)")
    described = {"wheel": os.path.basename(wheel), "wheel_bytes": os.path.getsize(wheel)}
    with tempfile.TemporaryDirectory(prefix="zen-torch-wheel-", dir=scratch) as folder:
        try:
            source = extract_wheel(wheel, folder, python_include)
        finally:
            if delete_wheel:
                os.unlink(wheel)
        return generate(source, out_dir, cxx, described)


def generate_release(release_number: str, out_dir: str, cxx: str, scratch: Optional[str]) -> Generated:
    """Download the release's wheel into a throwaway folder, describe it, delete it."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zen-torch-release-", dir=scratch) as folder:
        wheel, download = download_wheel(release_number, folder)
        found = parse_version(os.path.basename(wheel).split("-")[1]).release
        if found != release_number:
            raise SystemExit(f"torch=={release_number}: pip downloaded {os.path.basename(wheel)}")
        size = os.path.getsize(wheel)
        result = generate_from_wheel(wheel, out_dir, cxx, delete_wheel=True, scratch=folder)
    result.wheel, result.wheel_bytes, result.download_seconds = os.path.basename(wheel), size, download
    result.seconds = time.monotonic() - started
    return result


def describe(result: Generated) -> str:
    wheel = (f"{result.wheel} ({result.wheel_bytes / 1e6:.0f} MB, downloaded in {result.download_seconds:.0f} s), "
             if result.wheel_bytes else "")
    notes = "; ".join(result.notes)
    return (f"torch {result.release}: {wheel}table torch-{result.table}.json, {result.seconds:.0f} s"
            + (f" [{notes}]" if notes else ""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--release", nargs="+", metavar="X.Y.Z", help="registry release(s): download each wheel")
    what.add_argument("--all", action="store_true", help="every release in RELEASES (1.8.0 ... 2.15.0)")
    what.add_argument("--wheel", help="a torch wheel already on disk")
    what.add_argument("--torch-python", help="an interpreter that imports the torch to describe (names read from it)")
    parser.add_argument("--cxx", default="g++", help="C++ compiler (default: g++)")
    parser.add_argument("--python-include", help="CPython headers for --wheel (default: pyenv's for the wheel's tag)")
    parser.add_argument("--scratch", help="where wheels are downloaded and extracted (default: the system's temp)")


def generate_tables(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Iterator[Tuple[str, str]]:
    if args.torch_python:
        results = [generate(query_torch(args.torch_python), args.out, args.cxx)]
    elif args.wheel:
        results = [generate_from_wheel(args.wheel, args.out, args.cxx, args.python_include, scratch=args.scratch)]
    else:
        wanted = RELEASES if args.all else args.release
        for number in wanted:
            if not re.fullmatch(r"\d+\.\d+\.\d+", number):
                parser.error(f"--release {number}: give a release number X.Y.Z")
        results, failed = [], []
        for number in sorted(wanted, key=lambda n: parse_version(n).key):
            try:
                results.append(generate_release(number, args.out, args.cxx, args.scratch))
            except SystemExit as error:  # one release's failure does not stop the others
                failed.append(number)
                print(f"torch {number}: FAILED: {error}", flush=True)
                continue
            print(describe(results[-1]), flush=True)
        if failed:
            yield from ((result.release, result.path) for result in results)
            raise SystemExit(f"no table for {', '.join(failed)} (see above)")
    for result in results:
        if not result.wheel_bytes:
            print(describe(result))
        yield result.release, result.path


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(__doc__, "torch", argv, add_arguments, generate_tables)


if __name__ == "__main__":
    sys.exit(main())
