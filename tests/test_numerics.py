"""The numerics of a deployment (docs/patchgen.md, context.json; docs/reuse.md, "Numerics"): the
environment variables that choose kernels and threads, torch's thread count and the CPU capability,
read from memory (``zenlib/readers/torch/numerics.py``), applied by reuse, and the comparison of a
rebuilt output with a reference.

- Units, no image: the instruction forms the reader looks for, on the code of torch 2.13.0's wheel
  and its libgomp laid into a synthetic process; the reuse plan; the output comparison.
- A deployment with the corpus's numerics variables (resnet-base-3.11), one with none of them
  (yolov8-runpy-3.11, whose ultralytics sets OMP_NUM_THREADS=1 after torch has started), and a
  process captured here that calls torch.set_num_threads and changes variables after import.
  Where the wheel's own libtorch_cpu.so is on disk, its .symtab says where the statics the reader
  finds through code really are.
"""

import json
import os
import re
import struct
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import pytest

import zen_testlib

from volatility3_zen.reuse import numerics as reuse_numerics
from volatility3_zen.zenlib.errors import CorruptObjectError
from volatility3_zen.zenlib.readers.elfimage import PT_LOAD, ElfImage, Segment
from volatility3_zen.zenlib.readers.memory import MemoryRegion, ProcessMemory
from volatility3_zen.zenlib.readers.torch import numerics
from volatility3_zen.zenlib.representation.model import NUMERICS_VARIABLES

# -- torch 2.13.0+cpu's code (link-time addresses, the functions' first bytes) ---------------------------
INIT_NUM_THREADS = (0x1950C50, "8b3dc293f81285ff7e06e981de66ff904883ec08e8c7dd66ff4883c40889c7e9fcdd66ff")
SET_NUM_THREADS = (0x1950BC0, "5385ff7e3389fb89f887054994f812e89cde66ff89dfe8a5de66ff31ffe8aede66ff4863fbe8964b4a03"
                              "4885c074315be9ab4dbe00")
TRY_CHOOSE_CPU_IMPL = (0x1DA70E0, "415541544989f4554889cd534889d34883ec380fb6059e1cb71284c0744a833d9b1cb712017e294885db"
                                  "0f848800000048895c2410c644241800488b442410488b5424184883c4385b5d415c415dc390744e4d"
                                  "85e474394c89642410c644241800ebd70f1f4400004c8d2d491cb7124c89efe8d95421ff85c074a3e8"
                                  "00f8ffff4c89ef8905371cb712e8f25421ffeb8e")
NUM_THREADS = 0x148DA018  # at::(anonymous)::num_threads, from .symtab
CAPABILITY_GUARD, CAPABILITY = 0x14918D98, 0x14918DA0  # get_cpu_capability()'s guard and static
OMP_GET_MAX_THREADS = (0xC490, "f30f1efa488b052dab220064488b50504885d2488d8290000000488d15afab2200480f44c2488b00c3")
GOMP_GOT, GOMP_GLOBAL_ICV = 0x236FC8, 0x237060  # the TLS-offset slot, gomp_global_icv
TORCH_BIAS, GOMP_BIAS = 0x7F0000000000, 0x7F1000000000


class Synthetic:
    """A process made of a few pages: code and data at given addresses, every other byte absent."""

    def __init__(self):
        self.pages: Dict[int, bytearray] = {}

    def put(self, address: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            page = (address + i) & ~0xFFF
            self.pages.setdefault(page, bytearray(0x1000))[(address + i) & 0xFFF] = byte

    def memory(self, pid: int = 4242) -> ProcessMemory:
        def read_run(address, size):
            out = bytearray(size)
            present = []
            for page, data in self.pages.items():
                start, end = max(address, page), min(address + size, page + 0x1000)
                if start < end:
                    out[start - address:end - address] = data[start - page:end - page]
                    present.append((start, end))
            return bytes(out), sorted(present)

        regions = [MemoryRegion(page, page + 0x1000, "rw-p") for page in sorted(self.pages)]
        return ProcessMemory(regions, read_run, pid=pid)


def image(memory: ProcessMemory, path: str, bias: int, symbols: Dict[str, Tuple[int, int]],
          data: Tuple[int, int]) -> ElfImage:
    """An ElfImage with one text and one writable segment, its symbols looked up from ``symbols``."""
    segments = [Segment(PT_LOAD, 5, 0, 0, 0x2000000, 0x2000000), Segment(PT_LOAD, 6, data[0], data[0], data[1], data[1])]
    elf = ElfImage(path=path, base=bias, bias=bias, elf_type=3, segments=segments, _memory=memory)
    elf._symbol_cache.update({name: (bias + address, size) for name, (address, size) in symbols.items()})
    for name in numerics.CHOOSE_CPU_IMPL + (numerics.OMP_GET_MAX_THREADS, numerics.INIT_NUM_THREADS,
                                            numerics.SET_NUM_THREADS):
        elf._symbol_cache.setdefault(name, None)
    return elf


def torch_process(num_threads: int = -1, guard: int = 1, capability: int = 2):
    space = Synthetic()
    symbols = {}
    for name, (address, code) in ((numerics.INIT_NUM_THREADS, INIT_NUM_THREADS), (numerics.SET_NUM_THREADS, SET_NUM_THREADS),
                                  (numerics.CHOOSE_CPU_IMPL[0], TRY_CHOOSE_CPU_IMPL)):
        space.put(TORCH_BIAS + address, bytes.fromhex(code))
        symbols[name] = (address, len(bytes.fromhex(code)))
    space.put(TORCH_BIAS + NUM_THREADS, struct.pack("<i", num_threads))
    space.put(TORCH_BIAS + CAPABILITY_GUARD, struct.pack("<Q", guard))
    space.put(TORCH_BIAS + CAPABILITY, struct.pack("<i", capability))
    memory = space.memory()
    return memory, image(memory, "/venv/torch/lib/libtorch_cpu.so", TORCH_BIAS, symbols, (0x148D9000, 0x130000))


def test_set_num_threads_is_read_through_init_num_threads():
    memory, torch_cpu = torch_process(num_threads=-1)
    assert numerics.num_threads_variable(torch_cpu, memory) == TORCH_BIAS + NUM_THREADS
    assert numerics.set_num_threads_value(torch_cpu, memory) is None  # never called
    memory, torch_cpu = torch_process(num_threads=3)
    assert numerics.set_num_threads_value(torch_cpu, memory) == 3
    memory, torch_cpu = torch_process(num_threads=0)
    with pytest.raises(CorruptObjectError, match="num_threads holds 0"):
        numerics.set_num_threads_value(torch_cpu, memory)


def test_cpu_capability_is_read_through_try_choose_cpu_impl():
    memory, torch_cpu = torch_process()
    assert numerics.cpu_capability_variables(torch_cpu, memory) == (TORCH_BIAS + CAPABILITY_GUARD, TORCH_BIAS + CAPABILITY)
    assert numerics.cpu_capability_value(torch_cpu, memory) == "AVX512"
    assert numerics.cpu_capability_value(*torch_process(capability=0)[::-1]) == "DEFAULT"
    assert numerics.cpu_capability_value(*torch_process(guard=0)[::-1]) is None  # no kernel dispatched yet
    with pytest.raises(CorruptObjectError, match="holds 7"):
        numerics.cpu_capability_value(*torch_process(capability=7)[::-1])


def test_code_of_another_shape_is_not_read():
    """Where the instruction forms are not there (another compiler, another release), nothing is
    guessed: the reader says why."""
    memory, torch_cpu = torch_process()
    space = Synthetic()
    space.put(TORCH_BIAS + INIT_NUM_THREADS[0], b"\x90" * 36)
    space.put(TORCH_BIAS + TRY_CHOOSE_CPU_IMPL[0], b"\x90" * 160)
    memory = space.memory()
    torch_cpu._memory = memory
    with pytest.raises(CorruptObjectError, match="does not begin with a load"):
        numerics.num_threads_variable(torch_cpu, memory)
    with pytest.raises(CorruptObjectError, match="no guard-variable check"):
        numerics.cpu_capability_variables(torch_cpu, memory)


def gomp_process(tcbs: List[Tuple[int, int]], global_threads: int = 2, pid: int = 4242):
    """libgomp's omp_get_max_threads, its TLS offset (-264) and global ICV, and threads: (TCB, its
    task's nthreads-var or 0 for no task; a TCB with value < 0 carries a glibc tid equal to the pid)."""
    space = Synthetic()
    address, code = OMP_GET_MAX_THREADS
    space.put(GOMP_BIAS + address, bytes.fromhex(code))
    space.put(GOMP_BIAS + GOMP_GOT, struct.pack("<q", -264))
    space.put(GOMP_BIAS + GOMP_GLOBAL_ICV, struct.pack("<Q", global_threads))
    for n, (tcb, value) in enumerate(tcbs):
        space.put(tcb, struct.pack("<QQQ", tcb, tcb + 0x40, tcb))  # tcb, dtv (mapped), self
        space.put(tcb + numerics.GLIBC_TID_OFFSET, struct.pack("<i", pid + n))
        task = tcb + 0x2000 if value else 0
        space.put(tcb - 264 + 0x50, struct.pack("<Q", task))
        if task:
            space.put(task + 0x90, struct.pack("<Q", value))
    memory = space.memory(pid)
    symbols = {numerics.OMP_GET_MAX_THREADS: (address, len(bytes.fromhex(code)))}
    return memory, image(memory, "/venv/torch/lib/libgomp.so.1", GOMP_BIAS, symbols, (0x2369F8, 0x2000))


def test_openmp_thread_count_from_the_threads_icv():
    memory, gomp = gomp_process([(0x7E0000001B80, 3), (0x7E0000101B80, 0), (0x7E0000201B80, 3)])
    layout = numerics.omp_layout(gomp, memory)
    assert (layout.tpoff, layout.task_offset, layout.value_offset, layout.value_size) == (-264, 0x50, 0x90, 8)
    assert layout.global_value == GOMP_BIAS + GOMP_GLOBAL_ICV
    assert sorted(numerics.thread_control_blocks(memory)) == [0x7E0000001B80, 0x7E0000101B80, 0x7E0000201B80]
    assert numerics.openmp_threads(gomp, memory) == (3, 2, [])


def test_openmp_threads_that_disagree_take_the_main_thread_or_say_unknown():
    memory, gomp = gomp_process([(0x7E0000001B80, 4), (0x7E0000101B80, 1)])  # the first has tid == pid
    threads, default, notes = numerics.openmp_threads(gomp, memory)
    assert (threads, default) == (4, 2) and "disagree" in notes[0]
    memory, gomp = gomp_process([(0x7E0000001B80, 0)], global_threads=8)
    threads, default, notes = numerics.openmp_threads(gomp, memory)
    assert (threads, default) == (None, 8) and "no thread had initialised OpenMP" in notes[0]


# -- reuse: the plan, applying it, comparing outputs --------------------------------------------------------
def context(**numerics_fields):
    environ = {name: None for name in NUMERICS_VARIABLES}
    environ.update(numerics_fields.pop("environ", {}))
    return {"numerics": dict({"environ": environ, "torch_threads": 2, "set_num_threads": None,
                              "cpu_capability": "AVX512"}, **numerics_fields)}


def test_plan_sets_the_recorded_variables_and_unsets_the_others():
    plan = reuse_numerics.plan_numerics(context(environ={"MKL_CBWR": "COMPATIBLE", "LD_PRELOAD": "/tmp/x.so"}))
    assert plan.environ["MKL_CBWR"] == "COMPATIBLE"
    assert plan.environ["DNNL_MAX_CPU_ISA"] is None  # not set in the image: unset here
    assert plan.environ["ATEN_CPU_CAPABILITY"] == "avx512"  # the capability torch chose
    assert plan.environ["OMP_NUM_THREADS"] == "2"  # the default count, reached through the same path
    assert "LD_PRELOAD" not in plan.environ  # only the numerics variables, whatever the bundle says
    assert (plan.threads, plan.set_num_threads) == (2, False)
    described = reuse_numerics.describe(plan)
    assert described[0] == "set OMP_NUM_THREADS=2, ATEN_CPU_CAPABILITY=avx512, MKL_CBWR=COMPATIBLE"
    assert "DNNL_MAX_CPU_ISA" in described[1] and described[1].startswith("unset ")
    assert described[2:] == ["run 2 torch threads", "check that torch runs AVX512 kernels"]


def test_plan_prefers_what_torch_ran_over_variables_set_after_it_started():
    plan = reuse_numerics.plan_numerics(context(environ={"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"}))
    assert plan.environ["OMP_NUM_THREADS"] == "2" and plan.environ["ATEN_CPU_CAPABILITY"] == "avx512"
    assert any("OMP_NUM_THREADS=1 was set after torch had started" in n for n in plan.notes)
    assert any("ATEN_CPU_CAPABILITY was 'default'" in n for n in plan.notes)


def test_plan_calls_set_num_threads_where_the_image_did_and_leaves_unknowns_alone():
    plan = reuse_numerics.plan_numerics(context(set_num_threads=3, torch_threads=3))
    assert (plan.threads, plan.set_num_threads) == (3, True) and plan.environ["OMP_NUM_THREADS"] is None
    plan = reuse_numerics.plan_numerics({"numerics": {"environ": "unknown", "torch_threads": "unknown",
                                                      "set_num_threads": "unknown", "cpu_capability": "unknown"}})
    assert plan.empty and len(plan.notes) == 3
    assert reuse_numerics.plan_numerics({"python_version": "3.11"}).empty  # a bundle without numerics


def test_environment_is_applied_only_before_torch_is_imported(monkeypatch):
    plan = reuse_numerics.plan_numerics(context(environ={"MKL_CBWR": "COMPATIBLE"}))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    environ = {"DNNL_MAX_CPU_ISA": "SSE41", "PATH": "/bin"}
    done, warnings = reuse_numerics.apply_environment(plan, environ)
    assert warnings == [] and "MKL_CBWR=COMPATIBLE" in done[0] and "unset DNNL_MAX_CPU_ISA" in done[0]
    assert environ == {"PATH": "/bin", "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "2"}
    assert reuse_numerics.apply_environment(plan, environ) == ([], [])  # already applied
    monkeypatch.setitem(sys.modules, "torch", object())
    environ = {"OMP_NUM_THREADS": "8"}
    done, warnings = reuse_numerics.apply_environment(plan, environ)
    assert done == [] and environ == {"OMP_NUM_THREADS": "8"} and "torch was imported before" in warnings[0]


def test_output_comparison():
    expected = reuse_numerics.Expected([1.0, 2.0, 3.0, 0.0], [2, 2], False)
    assert reuse_numerics.compare_values([1.0, 2.0, 3.0, 0.0], [2, 2], expected).text().startswith("output: identical")
    result = reuse_numerics.compare_values([1.0, 2.0, 3.25, 0.0], [2, 2], expected)
    assert (result.identical, result.differing, result.max_abs, result.index) == (False, 1, 0.25, (1, 0))
    assert result.text() == ("output differs: max abs diff 0.25 (0x1.0000000000000p-2), max rel diff 0.0833333 "
                             "(0x1.5555555555555p-4) (at index [1, 0]: 3.25 here, 3.0 in the reference); 1 of 4 values differ")
    assert reuse_numerics.compare_values([1.0, 2.0, 3.0, 1e-3], [2, 2], expected).max_rel == float("inf")
    assert "shape [4] here, [2, 2]" in reuse_numerics.compare_values([1.0, 2.0, 3.0, 0.0], [4], expected).text()
    # float32 values: a reference written with float.hex of float32 outputs compares bit for bit
    third = struct.unpack("<f", struct.pack("<f", 1 / 3))[0]
    assert reuse_numerics.compare_values([1 / 3], [1], reuse_numerics.Expected([third], None, False)).identical


def test_reference_output_files(tmp_path):
    hexes = [float(v).hex() for v in (0.5, -1.25, 3.0, 4.0)]
    (tmp_path / "truth.json").write_text(json.dumps({"custom_code": {"output": {"shape": [2, 2], "values_hex": hexes}}}))
    (tmp_path / "list.json").write_text(json.dumps([[0.5, -1.25], [3.0, "0x1.0p+2"]]))
    for name in ("truth.json", "list.json"):
        loaded = reuse_numerics.load_expected(str(tmp_path / name))
        assert (loaded.values, loaded.shape) == ([0.5, -1.25, 3.0, 4.0], [2, 2])
    numpy = pytest.importorskip("numpy")
    numpy.save(tmp_path / "out.npy", numpy.array([[0.5, -1.25], [3.0, 4.0]], dtype=numpy.float32))
    loaded = reuse_numerics.load_expected(str(tmp_path / "out.npy"))
    assert (loaded.values, loaded.shape, loaded.float64) == ([0.5, -1.25, 3.0, 4.0], [2, 2], False)
    (tmp_path / "bad.json").write_text('{"nothing": 1}')
    with pytest.raises(reuse_numerics.ReuseError, match="no values"):
        reuse_numerics.load_expected(str(tmp_path / "bad.json"))


# -- images --------------------------------------------------------------------------------------------------
open_core = zen_testlib.open_core


def symtab_addresses(elf: ElfImage, names: List[str]) -> Dict[str, int]:
    """Runtime addresses of local symbols from the on-disk library's .symtab, when its build ID is the
    one in memory (else {})."""
    if not elf.build_id or not os.path.isfile(elf.path):
        return {}
    numpy = pytest.importorskip("numpy")
    from elftools.elf.elffile import ELFFile

    with open(elf.path, "rb") as handle:
        lib = ELFFile(handle)
        note = lib.get_section_by_name(".note.gnu.build-id")
        ids = [n["n_desc"] for n in note.iter_notes()] if note is not None else []
        symtab, strtab = lib.get_section_by_name(".symtab"), lib.get_section_by_name(".strtab")
        if not ids or bytes.fromhex(ids[0]) != elf.build_id or symtab is None or strtab is None:
            return {}
        table = numpy.frombuffer(symtab.data(), dtype=[("name", "<u4"), ("info", "u1"), ("other", "u1"),
                                                       ("shndx", "<u2"), ("value", "<u8"), ("size", "<u8")])
        strings = strtab.data()
    out = {}
    for name in names:
        offset = strings.find(b"\0" + name.encode() + b"\0") + 1
        hits = table[table["name"] == offset] if offset else []
        if len(hits):
            out[name] = int(hits["value"][0]) + elf.bias
    return out


def check_statics_against_symtab(memory):
    """The statics found through code are the ones .symtab names (where the wheel's file is here)."""
    from volatility3_zen.zenlib.readers.elfimage import loaded_images

    torch_cpu = next(i for i in loaded_images(memory) if i.path.endswith("/libtorch_cpu.so"))
    names = ["_ZN2at12_GLOBAL__N_111num_threadsE", "_ZGVZN2at6native18get_cpu_capabilityEvE10capability",
             "_ZZN2at6native18get_cpu_capabilityEvE10capability"]
    symbols = symtab_addresses(torch_cpu, names)
    if len(symbols) != 3:
        return False
    assert numerics.num_threads_variable(torch_cpu, memory) == symbols[names[0]]
    assert numerics.cpu_capability_variables(torch_cpu, memory) == (symbols[names[1]], symbols[names[2]])
    return True


@pytest.mark.image
def test_deployment_with_the_numerics_variables(corpus):
    """resnet-base-3.11: the harness sets OMP_NUM_THREADS=1, ATEN_CPU_CAPABILITY=default,
    DNNL_MAX_CPU_ISA=SSE41 and MKL_CBWR=COMPATIBLE; torch ran one thread and its DEFAULT kernels."""
    from tools.corpus.deployed import TORCH_ENV

    image = corpus("resnet-base-3.11", "core")
    python, memory = open_core(next(iter(image.cores.values())))
    found = numerics.read_numerics(python)
    assert found.environ == {name: TORCH_ENV.get(name) for name in NUMERICS_VARIABLES}
    assert found.environ_source.startswith("os.environ")
    assert (found.torch_threads, found.set_num_threads, found.openmp_default_threads) == (1, None, 1)
    assert found.cpu_capability == "DEFAULT" and found.notes == []
    check_statics_against_symtab(memory)


@pytest.mark.image
def test_deployment_without_numerics_variables_is_rebuilt_bit_for_bit(corpus, tmp_path):
    """yolov8-runpy-3.11 sets none of the variables (ultralytics sets OMP_NUM_THREADS=1 on import, after
    torch has started its two threads).  The bundle records what the process ran; reuse, started with
    the harness's variables in its environment, undoes them and gives the deployed output bit for
    bit; with --no-numerics it runs the harness's kernels and says by how much the output differs."""
    from tools import reuse_check
    from tools.corpus import load_ground_truth
    from volatility3_zen.zenlib.bundle import format as bundle_format

    image = corpus("yolov8-runpy-3.11", "core")
    pid, truth_path = sorted(image.ground_truth.items())[0]
    truth = load_ground_truth(truth_path)["custom_code"]
    python, memory = open_core(image.cores[pid])
    found = numerics.read_numerics(python)
    assert {name: found.environ[name] for name in truth["numerics"]} == truth["numerics"]
    assert found.torch_threads == truth["torch_threads"] and found.set_num_threads is None
    assert found.cpu_capability == truth["cpu_capability"].upper()
    check_statics_against_symtab(memory)

    bundle, model, _ = reuse_check.write_bundle(image, tmp_path / "out")
    recorded = json.loads(bundle_format.read_members(bundle)["context.json"])["numerics"]
    assert recorded["torch_threads"] == truth["torch_threads"] and recorded["environ"]["MKL_CBWR"] is None
    spec, expected = tmp_path / "input.json", tmp_path / "expected.json"
    spec.write_text(json.dumps(model["input"]))
    expected.write_text(json.dumps(truth["output"]))
    interpreter, hide = reuse_check.interpreter(image), reuse_check.hidden_packages(bundle)
    applied = reuse_check.run_reuse(interpreter, bundle, "--input", str(spec), "--expect-output", str(expected), hide=hide)
    assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-2000:]
    assert "unset DNNL_MAX_CPU_ISA" in applied.stdout and "unset MKL_CBWR" in applied.stdout  # the harness's
    assert "output: identical" in applied.stdout
    assert reuse_check.output_sha(applied) == model["output_sha256"]
    control = reuse_check.run_reuse(interpreter, bundle, "--input", str(spec), "--expect-output", str(expected),
                                    "--no-numerics", hide=hide)
    verdict = [line for line in control.stdout.splitlines() if line.startswith("output") and "sha256" not in line]
    assert verdict and (control.returncode, verdict[0].startswith("output: identical")) in ((0, True), (2, False))
    if control.returncode == 2:
        assert re.match(r"output differs: max abs diff \S+ \(0x.*\), max rel diff \S+ .*\(at index \[\d+, \d+, \d+\]", verdict[0])


# -- a process captured here: torch.set_num_threads and variables changed after import -----------------------
PROGRAM = r'''
import os, sys, time
import torch
torch.set_num_threads(3)
os.environ["MKL_CBWR"] = "AVX2"           # after torch started: in os.environ and (putenv) the C environment
os.putenv("DNNL_MAX_CPU_ISA", "AVX2")     # the C environment only
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(14, 4))
with torch.no_grad():
    model(torch.randn(1, 3, 16, 16))
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write("%d %s %d" % (torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
'''


def torch_python() -> str:
    """$ZEN_TORCH_PYTHON, else the corpus harness's torch venv (created on first use), as in
    tests/test_torch_tensors.py."""
    python = os.environ.get("ZEN_TORCH_PYTHON")
    if not python:
        from tools.corpus import interpreters

        python = str(interpreters.resolve("torch-3.11").executable)
    return python


def test_set_num_threads_and_late_variables_of_a_captured_process(tmp_path):
    from tools.corpus import system

    python = torch_python()
    system.ensure_for_kind("core")
    truth = tmp_path / "truth.txt"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    process = subprocess.Popen([python, "-c", PROGRAM, str(truth)], cwd="/", env=env)
    try:
        deadline = time.monotonic() + 300
        while not truth.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the torch program did not start"
            time.sleep(0.2)
        with open(f"/proc/{process.pid}/coredump_filter", "w") as handle:
            handle.write("0x7f")
        subprocess.run(["gcore", "-o", str(tmp_path / "core"), str(process.pid)], check=True, capture_output=True, timeout=600)
    finally:
        process.kill()
        process.wait()
    threads, capability, pid = truth.read_text().split()
    core = tmp_path / f"core.{pid}"
    try:
        python_process, memory = open_core(core)
        found = numerics.read_numerics(python_process)
        assert (found.set_num_threads, found.torch_threads) == (3, int(threads) == 3 and 3)
        assert found.cpu_capability == capability
        assert found.environ["MKL_CBWR"] == "AVX2" and found.environ["DNNL_MAX_CPU_ISA"] is None
        assert found.environ["OMP_NUM_THREADS"] is None and found.environ_source.startswith("os.environ")
        assert any("DNNL_MAX_CPU_ISA (None / 'AVX2')" in note for note in found.notes)
        check_statics_against_symtab(memory)
    finally:
        core.unlink()


def test_report_shows_the_numerics():
    from volatility3_zen.zenlib.bundle import report

    recorded = context(environ={"MKL_CBWR": "<COMPATIBLE>"})
    recorded["numerics"].update(torch_threads_source="libgomp.so.1", notes=["threads disagree"])
    text = report._numerics_section(recorded)
    assert "MKL_CBWR=&lt;COMPATIBLE&gt;" in text and "AVX512" in text and "never called" in text
    assert "threads disagree" in text and "DNNL_MAX_CPU_ISA" in text
    assert "Not recorded" in report._numerics_section({"python_version": "3.11"})


def test_cli_refuses_expect_output_without_input(capsys):
    from volatility3_zen.reuse.__main__ import main

    assert main(["nonexistent.zenpatch.zip", "--expect-output", "ref.json"]) == 1
    assert "--expect-output needs --input" in capsys.readouterr().err
