"""Tensors read back from a real torch process's core dump (volatility3_zen.zenlib.readers.torch.tensors).

A torch interpreter builds tensors of every kind, writes what torch itself says about each (id,
shape, strides, storage offset, dtype, storage, and the sha256 of ``t.detach().contiguous()``'s
bytes), and sleeps; gcore captures it.  The core is read through a ProcessMemory built on a minimal
ELF-core reader below, and every field and every byte must match.

The torch interpreter is $ZEN_TORCH_PYTHON, else the corpus harness's torch venv;
the harness installs gdb and creates that venv when they are missing.
"""

import dataclasses
import hashlib
import json
import mmap
import os
import struct
import subprocess
import time
from typing import List, Tuple

import pytest

from volatility3_zen.zenlib.errors import CorruptObjectError
from volatility3_zen.zenlib.readers.memory import MemoryRegion, ProcessMemory
from volatility3_zen.zenlib.readers.torch.layouts import load_torch_layout
from volatility3_zen.zenlib.readers.torch.tensors import TensorDataUnavailableError, TensorReader

def torch_python() -> Tuple[str, str]:
    """(interpreter, torch.__version__): $ZEN_TORCH_PYTHON, else the corpus harness's torch venv (created
    on first use, as for the torch images)."""
    python = os.environ.get("ZEN_TORCH_PYTHON")
    if not python:
        from tools.corpus import interpreters

        python = str(interpreters.resolve("torch-3.11").executable)
    found = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                           text=True, cwd="/", check=True)
    return python, found.stdout.strip()


# Runs in the torch interpreter: argv[1] is where the ground truth goes.  Names are the test ids.
PROGRAM = r'''
import ctypes, hashlib, json, os, sys, time
import torch

torch.manual_seed(0)
base = torch.randn(6, 8)
shared = torch.arange(40, dtype=torch.float32)
parameter = torch.nn.Parameter(torch.randn(4, 3))
tensors = {
    "float32": torch.randn(3, 4),
    "float64": torch.randn(3, 4, dtype=torch.float64),
    "float16": torch.randn(5).half(),
    "bfloat16": torch.randn(2, 3).bfloat16(),
    "int8": torch.randint(-128, 128, (7,), dtype=torch.int8),
    "int16": torch.randint(-30000, 30000, (2, 5), dtype=torch.int16),
    "int32": torch.randint(-2**31, 2**31 - 1, (9,), dtype=torch.int32),
    "int64": torch.arange(-5, 6, dtype=torch.int64) * 2**40,
    "uint8": torch.randint(0, 256, (4, 4), dtype=torch.uint8),
    "bool": torch.rand(3, 5) > 0.5,
    "complex64": torch.randn(4, dtype=torch.complex64),
    "complex128": torch.randn(2, 2, dtype=torch.complex128),
    "float8_e4m3fn": torch.randn(6).to(torch.float8_e4m3fn),
    "scalar": torch.tensor(3.5),
    "base": base,
    "transposed": base.t(),
    "sliced": base[1:4, 2:7],
    "expanded": torch.arange(4.0).expand(3, 4),
    "6d": torch.randn(2, 1, 3, 1, 2, 2),
    "7d": torch.randn(1, 2, 1, 2, 1, 2, 3),
    "6d_permuted": torch.randn(2, 3, 1, 2, 2, 3).permute(5, 3, 0, 2, 4, 1),
    "empty": torch.empty(0, 5),
    "shared_view": shared.view(5, 8),
    "shared_slice": shared[10:30:2],
    "parameter": parameter,
    "grad_fn": parameter * 2,
    "large": torch.randn(1024, 1024),
    "meta": torch.empty(3, 4, device="meta"),
}


def contents(t):
    c = t.detach().contiguous()
    return ctypes.string_at(c.data_ptr(), c.numel() * c.element_size()) if c.numel() else b""


truth = {"not_tensors": {"dict": id(tensors), "function": id(contents)}, "tensors": {}}
for name, t in tensors.items():
    storage = t.untyped_storage()
    truth["tensors"][name] = {
        "id": id(t), "shape": list(t.shape), "stride": list(t.stride()), "storage_offset": t.storage_offset(),
        "dtype": str(t.dtype)[len("torch."):], "numel": t.numel(), "requires_grad": t.requires_grad,
        "device": str(t.device), "data_ptr": storage.data_ptr(), "storage_nbytes": storage.nbytes(),
        "sha256": hashlib.sha256(contents(t)).hexdigest() if t.device.type == "cpu" else None,
    }
with open(sys.argv[1] + ".tmp", "w") as fh:
    json.dump(truth, fh)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
'''
NAMES = ["float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
         "complex64", "complex128", "float8_e4m3fn", "scalar", "base", "transposed", "sliced", "expanded", "6d",
         "7d", "6d_permuted", "empty", "shared_view", "shared_slice", "parameter", "grad_fn", "large", "meta"]


# -- a minimal ELF core reader (the project's real one is zenlib/vol/layers) -------------------------------

PT_LOAD = 1
PHDR = struct.Struct("<IIQQQQQQ")  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align


def core_memory(path: str) -> ProcessMemory:
    """ProcessMemory over the PT_LOAD segments of an x86_64 ELF core; bytes beyond p_filesz are absent."""
    fh = open(path, "rb")
    image = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    assert image[:4] == b"\x7fELF" and struct.unpack_from("<H", image, 0x10)[0] == 4, "not an ELF core"
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    segments: List[Tuple[int, int, int]] = []  # (vaddr, filesz, file offset)
    regions = []
    for index in range(phnum):
        p_type, flags, offset, vaddr, _, filesz, memsz, _ = PHDR.unpack_from(image, phoff + index * phentsize)
        if p_type == PT_LOAD:
            perms = "".join(c if flags & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1))) + "p"
            regions.append(MemoryRegion(vaddr, vaddr + memsz, perms))
            if filesz:
                segments.append((vaddr, filesz, offset))

    def read_run(address: int, size: int):
        out = bytearray(size)
        present = []
        for vaddr, filesz, offset in segments:
            start, end = max(address, vaddr), min(address + size, vaddr + filesz)
            if start < end:
                out[start - address:end - address] = image[offset + start - vaddr:offset + end - vaddr]
                present.append((start, end))
        return bytes(out), sorted(present)

    return ProcessMemory(regions, read_run, name=os.path.basename(path))


# -- the captured process ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """(ground truth, ProcessMemory of the core, torch version)."""
    python, version = torch_python()
    from tools.corpus import system

    system.ensure_for_kind("core")  # installs gdb (gcore) at its pinned version when missing
    workdir = tmp_path_factory.mktemp("torch-tensors")
    truth_path, core_prefix = workdir / "truth.json", workdir / "core"
    process = subprocess.Popen([python, "-c", PROGRAM, str(truth_path)], cwd="/")
    try:
        deadline = time.monotonic() + 300
        while not truth_path.exists():
            assert process.poll() is None, f"the torch program exited with {process.returncode}"
            assert time.monotonic() < deadline, "the torch program did not write its ground truth"
            time.sleep(0.2)
        with open(f"/proc/{process.pid}/coredump_filter", "w") as fh:
            fh.write("0x7f")  # every mapping kind, file-backed and shared memory included
        subprocess.run(["gcore", "-o", str(core_prefix), str(process.pid)], check=True, capture_output=True,
                       timeout=600)
    finally:
        process.kill()
        process.wait()
    with open(truth_path) as fh:
        truth = json.load(fh)
    core = f"{core_prefix}.{process.pid}"
    yield truth, core_memory(core), version
    os.unlink(core)  # about 650 MB: pytest keeps the temporary folders of the last runs


@pytest.fixture(scope="module")
def reader(captured):
    _, memory, version = captured
    return TensorReader(memory, load_torch_layout(version))


def test_the_program_builds_every_named_tensor(captured):
    assert sorted(captured[0]["tensors"]) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_bytes_match_torch(captured, reader, name):
    want = captured[0]["tensors"][name]
    info = reader.read_tensor(want["id"])
    got = {"id": info.address, "shape": list(info.shape), "stride": list(info.strides),
           "storage_offset": info.storage_offset, "dtype": info.dtype, "numel": info.numel,
           "requires_grad": info.requires_grad, "device": info.device, "data_ptr": info.data_ptr,
           "storage_nbytes": info.storage_nbytes,
           "sha256": hashlib.sha256(reader.read_bytes(info)).hexdigest() if info.device_type == "cpu" else None}
    assert got == want
    assert info.warnings == []
    assert info.itemsize * info.numel == info.nbytes


def test_views_share_their_base_storage(captured, reader):
    tensors = captured[0]["tensors"]
    storage = {name: reader.read_tensor(tensors[name]["id"]).storage_address for name in tensors}
    assert storage["transposed"] == storage["sliced"] == storage["base"]
    assert storage["shared_view"] == storage["shared_slice"]
    assert storage["shared_view"] != storage["base"]


def test_reads_a_storage_span_in_one_read(captured, reader, monkeypatch):
    """Performance contract: one memory read per tensor's bytes, whatever its size or striding."""
    tensors = captured[0]["tensors"]
    calls = []
    read = reader.memory.read
    monkeypatch.setattr(reader.memory, "read", lambda address, size: calls.append(size) or read(address, size))
    for name, span in (("large", 4 << 20), ("transposed", 6 * 8 * 4), ("expanded", 4 * 4)):
        info = reader.read_tensor(tensors[name]["id"])
        calls.clear()
        reader.read_bytes(info)
        assert calls == [span], name


def test_device_tensors_give_metadata_only(captured, reader):
    meta = reader.read_tensor(captured[0]["tensors"]["meta"]["id"])
    with pytest.raises(TensorDataUnavailableError, match="resident in device memory"):
        reader.read_bytes(meta)
    on_gpu = dataclasses.replace(reader.read_tensor(captured[0]["tensors"]["float32"]["id"]),
                                 device_type="cuda", device_index=0)
    with pytest.raises(TensorDataUnavailableError, match="is on cuda:0: its weights are resident in device memory"):
        reader.read_bytes(on_gpu)


def test_objects_that_are_not_tensors_are_rejected(captured, reader):
    """A dict's word at the cdata offset is a count (unreadable), a function's is a pointer to its
    globals dict (readable, but nothing points back): both are rejected, and so is unmapped memory."""
    truth = captured[0]
    for address, reason in ((truth["not_tensors"]["dict"], "is not a readable torch.Tensor"),
                            (truth["not_tensors"]["function"], "is not a torch.Tensor: its TensorImpl"),
                            (8, "is not a readable torch.Tensor")):
        assert not reader.looks_like_tensor(address)
        with pytest.raises(CorruptObjectError, match=reason):
            reader.read_tensor(address)
    assert all(reader.looks_like_tensor(t["id"]) for t in truth["tensors"].values())
