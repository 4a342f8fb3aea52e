"""linux.zen.codeobjects on smeared or corrupted memory: a partial table and warnings, never a
traceback or a hang.

Each case corrupts a copy of a real image: pages of one process's heap (its anonymous writable
memory and [heap], where the objects live) are zeroed or overwritten with random bytes, chosen with
a fixed seed among the present pages that hold data.  The process cores get 1% of their heap pages,
which is what 1% of the process's pages spread uniformly would hit; the LiME images get the harsh
case: 1% of all the process's pages, every one of them on the heap (3-5% of the heap).

The reader must then still recover most code objects.  Every recovered code object must equal the
ground truth unless decoding it reads a corrupted page, warnings must say what was lost, and the run
must finish within 3 times the clean run plus 30 s (a hang fails: in-process runs are interrupted,
``vol`` runs have a subprocess timeout).

The interpreter's own state, where the runtime discovery looks (the data and bss of the ELF object
that holds _PyRuntime, the main interpreter and thread state), is left out of that choice:
destroying it is the separate case of a one-line error.
"""

import contextlib
import copy
import json
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

from tools.corpus import ensure_image, load_ground_truth
from volatility3_zen.zenlib.vol import session
from volatility3_zen.zenlib.vol import targets as volglue
from volatility3_zen.zenlib.readers.cpython.code import CodeReader
from volatility3_zen.zenlib.readers.elfimage import PT_LOAD
from volatility3_zen.zenlib.readers.cpython.objects import ObjectReader
from volatility3_zen.zenlib.readers.cpython.recover import PythonProcess
from volatility3_zen.zenlib.readers.cpython.runtime import threads_head_offset
from volatility3_zen.zenlib.errors import ZenError

import zen_testlib
from zen_testlib import PAGE

FRACTION = 0.01
SEEDS = (1, 2, 3)
MODES = ("zero", "random")
CORE_DEPLOYMENTS = ["plain-3.7", "plain-3.11", "plain-3.12", "plain-3.13"]
MIN_RECOVERED = 0.5  # of the ground truth's code objects, recovered and equal to it
OPEN_LIMIT = 600  # s for Volatility to open an image (the first run in a fresh XDG_CACHE_HOME indexes the ISF)


class Hang(BaseException):
    """Raised by ``time_limit`` (a BaseException, so that no per-object ``except`` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(_signum, _frame):
        raise Hang(f"no result after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Subject:
    """One process of a clean image, with what corrupting it needs and what the clean run gave."""

    image: Path  # the cached, clean image: read, never written
    pid: int
    truth: dict
    pages: Dict[int, int]  # virtual page -> file offset, every present page of the process
    heap: List[int]  # present heap pages that hold data, less the interpreter's own state
    runtime_page: int  # the page of _PyRuntime that holds interpreters.head
    clean_seconds: float
    clean_code_objects: int

    def bound(self) -> float:
        return 3 * self.clean_seconds + 30

    def choose(self, seed: int, count: Optional[int] = None) -> List[int]:
        """``count`` heap pages, by default 1% of them."""
        count = count or max(1, round(FRACTION * len(self.heap)))
        return sorted(random.Random(seed).sample(self.heap, count))


def _open(image: Path, pid: int):
    return zen_testlib.construct(str(image), pid=[pid])


def _run(image: Path, pid: int, limit: float):
    """(program or None, seconds) of the plugin's in-process recovery of ``pid``; only the recovery is
    timed, since opening the image (Volatility's automagic) does not read the process."""
    with time_limit(OPEN_LIMIT):
        plugin = _open(image, pid)
    start = time.monotonic()
    with time_limit(limit):
        programs = [program for _target, program in session.programs(plugin.context, plugin.config)]
    assert len(programs) <= 1
    return (programs[0] if programs else None), time.monotonic() - start


def _target(image: Path, pid: int):
    plugin = _open(image, pid)
    return plugin, next(volglue.targets(plugin.context, plugin.config.get("kernel"), [pid]))


def _subject(image: Path, pid: int, truth_path: Path) -> Subject:
    program, seconds = _run(image, pid, 900)
    plugin, target = _target(image, pid)
    if target.source == "core":
        pages = zen_testlib.core_page_offsets(str(image))
    else:
        from volatility3.plugins.linux import pslist

        kernel = plugin.config["kernel"]
        task, = pslist.PsList.list_tasks(plugin.context, kernel, filter_func=pslist.PsList.create_pid_filter([pid]))
        pages = zen_testlib.layer_page_offsets(plugin.context, task.add_process_layer(), target.memory.regions)
    heap = set()
    with open(image, "rb") as fh:
        for region in target.memory.regions:
            if region.writable and region.path in ("", "[heap]"):
                for page in range(region.start, region.end, PAGE):
                    if page in pages:
                        fh.seek(pages[page])
                        if fh.read(PAGE).strip(b"\0"):
                            heap.add(page)
    runtime = PythonProcess(target.memory).runtime
    heap -= interpreter_state_pages(target.memory, runtime)
    head = runtime.runtime + runtime.layout.offset("_PyRuntimeState", "interpreters.head")
    return Subject(image, pid, load_ground_truth(truth_path), pages, sorted(heap), head - head % PAGE, seconds,
                   len(program.code_objects))


def interpreter_state_pages(memory, runtime) -> Set[int]:
    """The interpreter's own state, which the runtime discovery reads: the writable segments of the ELF
    object that holds _PyRuntime (its .bss ends in anonymous memory), the main interpreter and its
    first thread state (on the heap)."""
    L = runtime.layout
    tstate = memory.read_u64(runtime.interpreter + threads_head_offset(L))
    spans = [(runtime.interpreter, L.size("PyInterpreterState")), (tstate, L.size("PyThreadState"))]
    spans += [(s.vaddr + runtime.image.bias, s.memsz) for s in runtime.image.segments if s.type == PT_LOAD and s.flags & 2]
    pages = set()
    for start, size in spans:
        pages.update(range(start - start % PAGE, start + size, PAGE))
    return pages


@contextlib.contextmanager
def corrupted(image: Path, offsets: List[int], mode: str, seed: int):
    """Zeroes or randomises the pages at ``offsets`` of ``image`` (a copy!), restored afterwards."""
    rng = random.Random(seed)
    saved = {}
    with open(image, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset)
            saved[offset] = fh.read(PAGE)
            fh.seek(offset)
            fh.write(bytes(PAGE) if mode == "zero" else rng.randbytes(PAGE))
    try:
        yield
    finally:
        with open(image, "r+b") as fh:
            for offset, data in saved.items():
                fh.seek(offset)
                fh.write(data)


def pages_read(process: PythonProcess, address: int) -> Set[int]:
    """The pages that decoding the code object at ``address`` reads (with empty decoding caches)."""
    memory = copy.copy(process.memory)
    touched: Set[int] = set()

    def traced(read):
        def wrapper(addr, size, *args):
            touched.update(range(addr - addr % PAGE, addr + size, PAGE))
            return read(addr, size, *args)

        return wrapper

    memory.read, memory.read_padded = traced(memory.read), traced(memory.read_padded)
    try:
        CodeReader(ObjectReader(memory, process.layout)).read(address)
    except ZenError:
        pass
    return touched


def check_partial(subject: Subject, program, bad_pages: List[int], seconds: float, image: Path) -> float:
    """What every corrupted run must give; returns the fraction of code objects recovered intact."""
    assert program is not None, "the process was not recovered at all"
    assert seconds < subject.bound(), f"{seconds:.1f} s against {subject.clean_seconds:.1f} s clean"
    assert program.code_objects, "empty table"
    assert len(program.code_objects) <= subject.clean_code_objects
    assert program.warnings, "corruption went unreported"
    bad = set(bad_pages)
    process = None
    intact = 0
    wrong = []
    for want in subject.truth["code_objects"]:
        got = program.code_objects.get(want["addr"])
        if got is None:
            continue
        diff = zen_testlib.code_mismatches(got, want)
        if not diff:
            intact += 1
            continue
        if process is None:
            process = PythonProcess(_target(image, subject.pid)[1].memory)
        if not pages_read(process, want["addr"]) & bad:
            wrong.append(f"{want['qualname'] or want['name']} at 0x{want['addr']:x}: {'; '.join(diff[:3])}")
    assert not wrong, "code objects on untouched memory differ from the ground truth:\n" + "\n".join(wrong[:10])
    fraction = intact / len(subject.truth["code_objects"])
    assert fraction > MIN_RECOVERED, f"only {fraction:.0%} of the code objects recovered intact"
    print(f"PID {subject.pid}: {len(bad)} pages corrupted, {fraction:.0%} of the code objects recovered intact, "
          f"{len(program.warnings)} warnings, {seconds:.1f} s ({subject.clean_seconds:.1f} s clean)")
    return fraction


def _copy(tmp_path_factory, source: Path) -> Path:
    work = tmp_path_factory.mktemp("corrupted") / source.name
    shutil.copyfile(source, work)
    return work


# -- process cores -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def core_subjects(tmp_path_factory):
    """deployment -> (Subject, a private copy of its core)."""
    made = {}

    def get(name: str):
        if name not in made:
            record = ensure_image(name, "core")
            (pid, path), = record.cores.items()
            made[name] = _subject(path, pid, record.ground_truth[pid]), _copy(tmp_path_factory, path)
        return made[name]

    return get


@pytest.mark.image
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", CORE_DEPLOYMENTS)
def test_corrupted_core_gives_a_partial_table(core_subjects, name, seed, mode):
    subject, work = core_subjects(name)
    bad = subject.choose(seed)
    with corrupted(work, [subject.pages[p] for p in bad], mode, seed):
        program, seconds = _run(work, subject.pid, subject.bound())
        check_partial(subject, program, bad, seconds, work)


@pytest.mark.image
@pytest.mark.parametrize("mode", MODES)
def test_corrupted_runtime_is_a_one_line_error(core_subjects, mode):
    """The page that holds _PyRuntime's interpreter list destroyed: no interpreter to walk."""
    subject, work = core_subjects("plain-3.12")
    with corrupted(work, [subject.pages[subject.runtime_page]], mode, SEEDS[0]):
        result = zen_testlib.run_vol(["-f", str(work), "linux.zen.codeobjects"], timeout=int(subject.bound()) + 30)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and f"PID {subject.pid}" in errors[0] and "no CPython runtime found" in errors[0], result.stderr


# -- LiME images: one process of the guest corrupted -------------------------------------------------

@pytest.fixture(scope="module")
def lime_subject(tmp_path_factory):
    """The 3.12 process of plain-multi, a private copy of the image, and the clean ``vol`` run's seconds."""
    record = ensure_image("plain-multi", "lime")
    pid = next(p["pid"] for p in record.processes if p["python_version"].startswith("3.12."))
    subject = _subject(record.image, pid, record.ground_truth[pid])
    start = time.monotonic()
    clean = zen_testlib.run_vol(["-r", "json", "-f", str(record.image), "linux.zen.codeobjects"])
    assert clean.returncode == 0, clean.stderr
    return subject, _copy(tmp_path_factory, record.image), time.monotonic() - start


def _harsh(subject: Subject, seed: int) -> List[int]:
    """1% of all the process's pages, on its heap."""
    return subject.choose(seed, round(FRACTION * len(subject.pages)))


@pytest.mark.image
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_corrupted_lime_gives_a_partial_table(lime_subject, seed, mode):
    subject, work, _clean_cli = lime_subject
    bad = _harsh(subject, seed)
    with corrupted(work, [subject.pages[p] for p in bad], mode, seed):
        program, seconds = _run(work, subject.pid, subject.bound())
        check_partial(subject, program, bad, seconds, work)


@pytest.mark.image
def test_cli_on_a_corrupted_lime_image(lime_subject):
    """The whole guest through ``vol``: a table of every process, WARNING lines, no traceback."""
    subject, work, clean_cli = lime_subject
    seed = SEEDS[0]
    bad = _harsh(subject, seed)
    bound = 3 * clean_cli + 30
    with corrupted(work, [subject.pages[p] for p in bad], "random", seed):
        start = time.monotonic()
        result = zen_testlib.run_vol(["-r", "json", "-f", str(work), "linux.zen.codeobjects"], timeout=int(bound))
        seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING") and f"PID {subject.pid}:" in line]
    assert warnings, result.stderr
    rows = json.loads(result.stdout)
    ours = [r for r in rows if r["PID"] == subject.pid]
    assert len(ours) > MIN_RECOVERED * len(subject.truth["code_objects"])
    assert len({r["PID"] for r in rows}) == 7, "the guest's other processes are untouched"
    print(f"vol on the corrupted image: {seconds:.1f} s ({clean_cli:.1f} s clean), {len(ours)} rows for PID {subject.pid}")


@pytest.mark.image
def test_corrupted_runtime_in_a_lime_image(lime_subject):
    """Named with --pid, a process whose interpreter is destroyed is a one-line error; scanning every
    process, it is a warning and the others are recovered."""
    subject, work, clean_cli = lime_subject
    timeout = int(3 * clean_cli + 30)
    with corrupted(work, [subject.pages[subject.runtime_page]], "zero", SEEDS[0]):
        named = zen_testlib.run_vol(["-f", str(work), "linux.zen.codeobjects", "--pid", str(subject.pid)], timeout=timeout)
        scan = zen_testlib.run_vol(["-r", "json", "-f", str(work), "linux.zen.codeobjects"], timeout=timeout)
    assert named.returncode != 0 and "Traceback" not in named.stderr, named.stderr
    errors = [line for line in named.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and f"PID {subject.pid}" in errors[0] and "no CPython runtime found" in errors[0], named.stderr
    assert scan.returncode == 0 and "Traceback" not in scan.stderr, scan.stderr
    assert any(line.startswith("WARNING") and f"PID {subject.pid}" in line and "no CPython runtime found" in line
               for line in scan.stderr.splitlines()), scan.stderr
    assert len({r["PID"] for r in json.loads(scan.stdout)} - {subject.pid}) == 6


@pytest.mark.image
@pytest.mark.slow
def test_harshly_corrupted_torch_lime_image(tmp_path_factory):
    """The reference image, 27k code objects: 1% of all the process's pages, all on its heap."""
    record = ensure_image("torch-custom-3.11", "lime")
    (pid, truth_path), = record.ground_truth.items()
    subject = _subject(record.image, pid, truth_path)
    work = _copy(tmp_path_factory, record.image)
    seed = SEEDS[0]
    bad = _harsh(subject, seed)
    with corrupted(work, [subject.pages[p] for p in bad], "random", seed):
        program, seconds = _run(work, pid, subject.bound())
        check_partial(subject, program, bad, seconds, work)
