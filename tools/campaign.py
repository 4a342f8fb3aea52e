"""Corruption campaign: seeded mutated copies of a memory image, every zen plugin run on each, compared
with the clean run (docs/campaign.md).

    python -m tools.campaign IMAGE [--pid PID] [--root ADDR] [--variants N] [--seed S]
        [--mutations LIST] [--rates 0.001,0.01,0.05] [--plugins codeobjects,model,attribute,patchgen]
        [--timeout SEC] [--jobs J] [--isf DIR] [--json OUT] [--only K,...] [--keep DIR]

The clean image is run once per plugin first.  Then each variant is a copy of the image in a temporary
directory, mutated as its recipe says (mutation kind, rate, seed: the list is a pure function of
``--seed``, ``--variants``, ``--mutations`` and ``--rates``), every plugin runs on it under a timeout,
and the copy is deleted.  Each run is classified (ok, error, traceback, hang, crash) and its recovery
measured against the clean run.  Exit status 1 when any run gave a traceback, a hang or a crash.

The page-mapping helpers at the top (``core_page_offsets``, ``layer_page_offsets``, ``construct``) are
shared with the tests (tests/zen_testlib.py imports them from here).
"""

import argparse
import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ISF = REPO / "tests" / "data" / "isf"
PAGE = 4096

PLUGINS = ("codeobjects", "model", "attribute", "patchgen")
MUTATIONS = ("page-random", "page-zero", "process-random", "process-zero", "writable-zero", "writable-random",
             "pointer-smear", "truncate")
DEFAULT_RATES = (0.001, 0.01, 0.05)
TRACEBACK_MARK = "Traceback (most recent call last)"
STDERR_TAIL_LINES = 30
# What looks like a user-space pointer on x86-64 Linux: mmap and the heap live in this range.
POINTER_LOW, POINTER_HIGH = 0x0000_5500_0000_0000, 0x0000_7FFF_FFFF_FFFF
# Verdicts; the last three fail a campaign.
OK, ERROR, TRACEBACK, HANG, CRASH = "ok", "error", "traceback", "hang", "crash"
FAILURES = (TRACEBACK, HANG, CRASH)


# -- where a process's pages are in the image file (shared with tests/zen_testlib.py) ---------------

@dataclass(frozen=True)
class CoreSegment:
    """One PT_LOAD of an ELF core: ``filesz`` bytes at file ``offset`` hold memory at ``vaddr``."""

    vaddr: int
    offset: int
    filesz: int
    writable: bool


def core_segments(core_path: str) -> List[CoreSegment]:
    """The PT_LOAD segments of an ELF core, from its program headers."""
    with open(core_path, "rb") as fh:
        ehdr = fh.read(64)
        phoff, = struct.unpack_from("<Q", ehdr, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    segments = []
    for i in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 1:  # PT_LOAD
            segments.append(CoreSegment(p_vaddr, p_offset, p_filesz, bool(p_flags & 2)))  # PF_W
    return segments


def core_page_offsets(core_path: str, writable_only: bool = False) -> Dict[int, int]:
    """{virtual page address: file offset} of every whole page a process core holds, from its PT_LOAD
    headers (p_vaddr -> p_offset, p_filesz bytes; the rest of a segment is not in the file)."""
    pages = {}
    for segment in core_segments(core_path):
        if writable_only and not segment.writable:
            continue
        for delta in range(0, segment.filesz - segment.filesz % PAGE, PAGE):
            pages[segment.vaddr + delta] = segment.offset + delta
    return pages


def _file_runs(context, layer_name: str, offset: int, length: int) -> Iterator[Tuple[int, int, int]]:
    """(start relative to ``offset``, file offset, length) of the present parts of [offset, offset+length)
    of a Volatility layer, translated down to the file through each layer's ``mapping()``."""
    from volatility3.framework import interfaces

    layer = context.layers[layer_name]
    if not isinstance(layer, interfaces.layers.TranslationLayerInterface):
        yield 0, offset, length
        return
    for start, sublength, mapped, mapped_length, sublayer in layer.mapping(offset, length, ignore_errors=True):
        if sublength != mapped_length:  # a transforming layer (compressed): no file offset for it
            continue
        for relative, file_offset, run in _file_runs(context, sublayer, mapped, mapped_length):
            yield start - offset + relative, file_offset, run


def layer_page_offsets(context, layer_name: str, regions) -> Dict[int, int]:
    """{virtual page address: file offset} of every present page of ``regions`` in a Volatility layer,
    translated down to the image file through each layer's ``mapping()`` (for a LiME image: the
    process layer gives physical addresses, the LiME layer gives file offsets).  A page counts only when
    it is one contiguous run of the file.  Whole regions are translated at once: asking page by page
    costs a mapping() call for every absent page of a large reservation."""
    pages = {}
    for region in regions:
        for relative, file_offset, length in _file_runs(context, layer_name, region.start, region.end - region.start):
            virtual = region.start + relative
            first = -(-virtual // PAGE) * PAGE  # the first page that starts inside the run
            for page in range(first, virtual + length - PAGE + 1, PAGE):
                pages[page] = file_offset + (page - virtual)
    return pages


@functools.lru_cache(maxsize=None)
def _plugins_loaded() -> bool:
    import volatility3.plugins
    from volatility3 import framework

    framework.require_interface_version(2, 0, 0)
    framework.import_files(volatility3.plugins, True)
    return True


def construct(image_path: str, plugin_name: str, isf_dir: Optional[str] = None, **config):
    """An in-process Volatility plugin instance for ``image_path`` (automagic run, like ``vol`` does);
    ``isf_dir`` is searched for kernel symbols first."""
    import volatility3.symbols
    from volatility3 import framework
    from volatility3.framework import automagic, contexts, interfaces, plugins

    _plugins_loaded()
    if isf_dir and isf_dir not in volatility3.symbols.__path__:
        volatility3.symbols.__path__.insert(0, isf_dir)
    plugin = framework.list_plugins()[plugin_name]
    ctx = contexts.Context()
    ctx.config["automagic.LayerStacker.single_location"] = "file://" + os.path.abspath(image_path)
    for key, value in config.items():
        ctx.config[interfaces.configuration.path_join("plugins", plugin.__name__, key)] = value
    automagics = automagic.choose_automagic(automagic.available(ctx), plugin)
    return plugins.construct_plugin(ctx, automagics, plugin, "plugins", None, None)


@dataclass
class ProcessPages:
    """Where one process's memory is in the image file."""

    pid: Optional[int]
    offsets: Dict[int, int]  # virtual page -> file offset, every present page
    writable: Set[int]  # the virtual pages of writable mappings


def is_elf_core(image: Path) -> bool:
    with open(image, "rb") as fh:
        head = fh.read(18)
    return head[:4] == b"\x7fELF" and struct.unpack_from("<H", head, 16)[0] == 4  # ET_CORE


def core_process_pages(image: Path, pid: Optional[int]) -> ProcessPages:
    return ProcessPages(pid, core_page_offsets(str(image)), set(core_page_offsets(str(image), writable_only=True)))


def kernel_process_pages(image: Path, pid: int, isf_dir: Optional[str]) -> ProcessPages:
    """A process of a full-system image: its VMAs from the kernel, translated to file offsets."""
    from volatility3.plugins.linux import pslist
    from volatility3_zen.zenlib.vol import targets as volglue

    plugin = construct(str(image), "linux.zen.codeobjects.CodeObjects", isf_dir, pid=[pid])
    kernel = plugin.config.get("kernel")
    target = next((t for t in volglue.targets(plugin.context, kernel, [pid]) if t.pid == pid), None)
    if target is None or target.memory is None:
        raise SystemExit(f"campaign: PID {pid} has no user memory in {image}")
    task, = pslist.PsList.list_tasks(plugin.context, kernel, filter_func=pslist.PsList.create_pid_filter([pid]))
    regions = target.memory.regions
    offsets = layer_page_offsets(plugin.context, task.add_process_layer(), regions)
    writable = {page for region in regions if region.writable for page in range(region.start, region.end, PAGE)}
    return ProcessPages(pid, offsets, writable & set(offsets))


# -- what in the image may be mutated -----------------------------------------------------------------

def _contiguous_runs(offsets: Sequence[int]) -> List[Tuple[int, int]]:
    """(first file offset, page count) of runs of consecutive pages among sorted ``offsets``."""
    runs: List[Tuple[int, int]] = []
    for offset in offsets:
        if runs and runs[-1][0] + runs[-1][1] * PAGE == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((offset, 1))
    return runs


def _read_runs(fd: int, offsets: Sequence[int], chunk_pages: int = 4096) -> Iterator[Tuple[int, bytes]]:
    """(file offset, bytes) chunks covering the pages at ``offsets`` (sorted), read in few calls."""
    for start, count in _contiguous_runs(offsets):
        for first in range(0, count, chunk_pages):
            size = min(chunk_pages, count - first) * PAGE
            data = os.pread(fd, size, start + first * PAGE)
            yield start + first * PAGE, data[: len(data) - len(data) % PAGE]


def pages_with_data(image: Path, offsets: Sequence[int]) -> List[int]:
    """The file offsets among ``offsets`` whose page is not all zeros (zeroing those changes nothing)."""
    found = []
    fd = os.open(image, os.O_RDONLY)
    try:
        for start, data in _read_runs(fd, sorted(offsets)):
            nonzero = np.frombuffer(data, np.uint8).reshape(-1, PAGE).any(axis=1)
            found.extend(start + int(i) * PAGE for i in np.flatnonzero(nonzero))
    finally:
        os.close(fd)
    return found


def file_data_pages(image: Path) -> List[int]:
    """Offsets of the 4 KiB pages of the whole file that hold data (any offset: headers, kernel, every
    process); a last partial page counts as a page."""
    size = image.stat().st_size
    whole = pages_with_data(image, range(0, size - size % PAGE, PAGE))
    if size % PAGE:
        with open(image, "rb") as fh:
            fh.seek(size - size % PAGE)
            if fh.read().strip(b"\0"):
                whole.append(size - size % PAGE)
    return whole


@dataclass
class PointerSlots:
    """Every 8-byte aligned value in a process's writable pages that looks like a user-space pointer."""

    offsets: np.ndarray  # int64 file offsets
    values: np.ndarray  # uint64 values found there


def pointer_slots(image: Path, offsets: Sequence[int]) -> PointerSlots:
    """The pointer-like values in the pages at ``offsets`` (file offsets of virtual pages; a page's
    8-byte slots are aligned in virtual memory whatever the file offset)."""
    found_offsets, found_values = [], []
    fd = os.open(image, os.O_RDONLY)
    try:
        for start, data in _read_runs(fd, sorted(offsets)):
            words = np.frombuffer(data, "<u8")
            hits = np.flatnonzero((words >= POINTER_LOW) & (words <= POINTER_HIGH))
            found_offsets.append(start + hits.astype(np.int64) * 8)
            found_values.append(words[hits])
    finally:
        os.close(fd)
    if not found_offsets:
        return PointerSlots(np.zeros(0, np.int64), np.zeros(0, np.uint64))
    return PointerSlots(np.concatenate(found_offsets), np.concatenate(found_values))


class Eligible:
    """What each mutation kind may touch in one image, computed once on first use (before the variants
    run, in the main thread) and shared by every variant."""

    def __init__(self, image: Path, pages: Callable[[], ProcessPages]):
        self.image = image
        self._process_pages = pages

    @functools.cached_property
    def process(self) -> ProcessPages:
        return self._process_pages()

    @functools.cached_property
    def file_pages(self) -> List[int]:
        return file_data_pages(self.image)

    @functools.cached_property
    def process_pages(self) -> List[int]:
        return pages_with_data(self.image, sorted(set(self.process.offsets.values())))

    @functools.cached_property
    def writable_pages(self) -> List[int]:
        offsets = self.process.offsets
        return pages_with_data(self.image, sorted({offsets[p] for p in self.process.writable if p in offsets}))

    @functools.cached_property
    def pointers(self) -> PointerSlots:
        return pointer_slots(self.image, self.writable_pages)

    def prepare(self, mutations: Iterable[str]) -> Dict[str, int]:
        """Computes what ``mutations`` need; returns how many pages / pointer slots each may touch."""
        sizes = {}
        for mutation in set(mutations):
            if mutation == "truncate":
                continue
            sizes[mutation] = len(self.pointers.offsets) if mutation == "pointer-smear" else len(self.pages_for(mutation))
        return sizes

    def pages_for(self, mutation: str) -> List[int]:
        scope = mutation.split("-")[0]
        return {"page": self.file_pages, "process": self.process_pages, "writable": self.writable_pages}[scope]


# -- the variants --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    index: int
    mutation: str
    rate: Optional[float]  # fraction of eligible pages / pointer slots; None for truncate
    seed: int

    @property
    def label(self) -> str:
        return self.mutation if self.rate is None else f"{self.mutation}@{self.rate:g}"


def variant_seed(campaign_seed: int, index: int) -> int:
    """A per-variant seed that depends only on the campaign seed and the index (not on hash())."""
    return int.from_bytes(hashlib.sha256(f"{campaign_seed}/{index}".encode()).digest()[:4], "little")


def plan_variants(count: int, mutations: Sequence[str], rates: Sequence[float], seed: int) -> List[Variant]:
    """Round-robin over the mutation kinds, then over the rates, so every (kind, rate) pair is reached
    as early as the count allows."""
    variants = []
    for index in range(count):
        mutation = mutations[index % len(mutations)]
        rate = None if mutation == "truncate" else rates[(index // len(mutations)) % len(rates)]
        variants.append(Variant(index, mutation, rate, variant_seed(seed, index)))
    return variants


def _choose(population: Sequence[int], rate: float, seed: int) -> List[int]:
    if not population:
        return []
    count = min(len(population), max(1, round(rate * len(population))))
    return sorted(random.Random(seed).sample(population, count))


def _overwrite_pages(path: Path, offsets: Sequence[int], random_bytes: Optional[random.Random]) -> None:
    """Zeroes the pages at ``offsets`` or fills them with bytes from ``random_bytes``; a page that runs
    past the end of the file is cut there (the file keeps its size)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        for offset in offsets:
            length = min(PAGE, size - offset)
            fh.seek(offset)
            fh.write(random_bytes.randbytes(length) if random_bytes else bytes(length))


def _smeared_values(slots: PointerSlots, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replacements: half another pointer of the process (a plausible pointer to the wrong object), a
    quarter the same pointer moved by up to 512 bytes (into the middle of an object), a quarter garbage."""
    count = len(chosen)
    kind = rng.integers(0, 4, count)
    other = slots.values[rng.integers(0, len(slots.values), count)]
    shift = (rng.integers(-64, 65, count) * 8).astype(np.int64)
    moved = (slots.values[chosen].astype(np.int64) + shift).astype(np.uint64)
    garbage = rng.integers(0, np.iinfo(np.uint64).max, count, dtype=np.uint64, endpoint=True)
    return np.where(kind < 2, other, np.where(kind == 2, moved, garbage)).astype("<u8")


def _smear_pointers(path: Path, slots: PointerSlots, rate: float, seed: int) -> int:
    if not len(slots.offsets):
        return 0
    rng = np.random.default_rng(seed)
    count = min(len(slots.offsets), max(1, round(rate * len(slots.offsets))))
    chosen = np.sort(rng.choice(len(slots.offsets), size=count, replace=False))
    values = _smeared_values(slots, chosen, rng)
    with open(path, "r+b") as fh:
        for offset, value in zip(slots.offsets[chosen].tolist(), values):
            fh.seek(offset)
            fh.write(value.tobytes())
    return count


def truncation_size(size: int, seed: int) -> int:
    """Where ``truncate`` cuts: a seeded fraction of 50-99% of the file, any byte offset."""
    return int(size * random.Random(seed).uniform(0.50, 0.99))


def copy_image(source: Path, target: Path, limit: Optional[int], register: Callable) -> None:
    """A private, writable copy (reflinked where the file system can); ``limit``: only the first bytes."""
    if limit is None:
        with register(subprocess.Popen(["cp", "--reflink=auto", str(source), str(target)], start_new_session=True)) as cp:
            if cp.wait() != 0:
                raise OSError(f"cp {source} {target} failed ({cp.returncode})")
    else:
        with open(source, "rb") as src, open(target, "wb") as dst:
            remaining = limit
            while remaining:
                block = src.read(min(remaining, 16 << 20))
                if not block:
                    break
                dst.write(block)
                remaining -= len(block)
    target.chmod(0o644)


def mutate(path: Path, variant: Variant, eligible: Eligible) -> dict:
    """Applies ``variant`` to the copy at ``path``; returns what was done (for the record)."""
    if variant.mutation == "truncate":
        return {"size": path.stat().st_size}  # copy_image already cut it
    if variant.mutation == "pointer-smear":
        slots = eligible.pointers
        return {"pointers": _smear_pointers(path, slots, variant.rate, variant.seed), "of": len(slots.offsets)}
    population = eligible.pages_for(variant.mutation)
    chosen = _choose(population, variant.rate, variant.seed)
    filler = random.Random(variant.seed ^ 0x5EED) if variant.mutation.endswith("random") else None
    _overwrite_pages(path, chosen, filler)
    return {"pages": len(chosen), "of": len(population)}


# -- running the plugins ---------------------------------------------------------------------------------

PLUGIN_ARGS = {"codeobjects": [], "model": ["--tensors"], "attribute": [], "patchgen": ["--dump"]}


def vol_executable() -> str:
    beside = Path(sys.executable).parent / "vol"
    return str(beside) if beside.exists() else (shutil.which("vol") or "vol")


@dataclass(frozen=True)
class Settings:
    """How every plugin run of a campaign is made."""

    isf: Optional[str]
    pid: Optional[int]
    root: Optional[int]
    cache: str  # XDG_CACHE_HOME shared by every run (Volatility's symbol index cache)
    memory_limit_gib: float

    def command(self, plugin: str, image: Path, out_dir: Path) -> List[str]:
        args = [vol_executable(), "-q"] + (["-s", self.isf] if self.isf else [])
        args += ["-r", "json", "-o", str(out_dir), "-f", str(image), f"linux.zen.{plugin}"] + PLUGIN_ARGS[plugin]
        if self.pid is not None:
            args += ["--pid", str(self.pid)]
        if self.root is not None and plugin != "codeobjects":
            args += ["--root", str(self.root)]
        return args

    def limited(self, command: List[str]) -> List[str]:
        """``command`` under an address-space limit, so that a runaway allocation is a MemoryError (a
        traceback) instead of the machine swapping (set in a fresh interpreter: no preexec_fn in threads)."""
        if not self.memory_limit_gib:
            return command
        limit = int(self.memory_limit_gib * (1 << 30))
        setter = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
                  "os.execv(sys.argv[1], sys.argv[1:])" % (limit, limit))
        return [sys.executable, "-c", setter] + command


@dataclass
class PluginOutput:
    verdict: str
    returncode: Optional[int]
    seconds: float
    rows: Optional[List[dict]]  # the JSON rows, None when there were none to parse
    error: str  # the one-line reason of an error, the exception line of a traceback
    stderr_tail: List[str]


def classify(returncode: Optional[int], stderr: str) -> Tuple[str, str]:
    """(verdict, one-line reason) of a finished or timed-out (``returncode`` None) run."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if returncode is None:
        return HANG, ""
    if TRACEBACK_MARK in stderr:
        return TRACEBACK, exception_line(stderr)
    if returncode == 0:
        return OK, ""
    explained = [line for line in lines if line.startswith(("ERROR", "Unsatisfied requirement", "vol: error"))]
    if returncode > 0 and explained:
        return ERROR, explained[0].strip()
    return CRASH, f"exit {returncode}" + (f": {lines[-1].strip()}" if lines else " with no message")


def exception_line(stderr: str) -> str:
    """The last line of the last traceback: the exception and its message."""
    after = stderr[stderr.rfind(TRACEBACK_MARK):].splitlines()
    frames_done = [line for line in after[1:] if line and not line.startswith(" ")]
    return frames_done[0].strip() if frames_done else after[-1].strip()


def traceback_location(stderr_tail: Sequence[str]) -> str:
    """The innermost frame of the last traceback, shortened to the file's name below the package."""
    frames = [line.strip() for line in stderr_tail if line.strip().startswith('File "')]
    if not frames:
        return "?"
    match = re.match(r'File "(.*)", line (\d+), in (.*)', frames[-1])
    if not match:
        return frames[-1]
    path, line, function = match.groups()
    for anchor in ("volatility3_zen/", "volatility3/", "site-packages/"):
        if anchor in path:
            path = path[path.rindex(anchor):]
            break
    return f"{path}:{line} in {function}"


class LiveProcesses:
    """The child processes now running, so that Ctrl-C or an exception can end them (their groups)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live: Set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def register(self, process: subprocess.Popen):
        @contextlib.contextmanager
        def tracked():
            with self._lock:
                self._live.add(process)
            if self.stopping.is_set():
                self.kill(process)
            try:
                yield process
            finally:
                with self._lock:
                    self._live.discard(process)

        return tracked()

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group is the child's own
        except ProcessLookupError:
            pass

    def kill_all(self) -> None:
        self.stopping.set()
        with self._lock:
            for process in list(self._live):
                self.kill(process)


def run_plugin(settings: Settings, plugin: str, image: Path, work: Path, timeout: float,
               live: LiveProcesses, keep_files: bool = False) -> PluginOutput:
    """One ``vol`` run, stdout and stderr in files under ``work`` (codeobjects' JSON is tens of MB);
    they are removed afterwards unless ``keep_files``."""
    out_dir = work / f"{plugin}.out"
    out_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = work / f"{plugin}.json", work / f"{plugin}.stderr"
    env = dict(os.environ, XDG_CACHE_HOME=settings.cache)
    started = time.monotonic()
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(settings.limited(settings.command(plugin, image, out_dir)), stdout=stdout,
                                   stderr=stderr, env=env, start_new_session=True)
        with live.register(process):
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                live.kill(process)
                process.wait()
                returncode = None
    seconds = time.monotonic() - started
    if live.stopping.is_set():
        raise KeyboardInterrupt
    text = stderr_path.read_text(errors="replace")
    verdict, reason = classify(returncode, text)
    tail = text.splitlines()[-STDERR_TAIL_LINES:] if verdict in (TRACEBACK, CRASH) else []
    rows = read_rows(stdout_path) if returncode == 0 else None
    if not keep_files:
        for path in (stdout_path, stderr_path):
            path.unlink()
        shutil.rmtree(out_dir, ignore_errors=True)
    return PluginOutput(verdict, returncode, seconds, rows, reason, tail)


def read_rows(path: Path) -> Optional[List[dict]]:
    """The rows of ``vol -r json`` output, children flattened; None if it is not JSON."""
    try:
        document = json.loads(path.read_text(errors="replace"))
    except ValueError:
        return None
    rows: List[dict] = []

    def walk(items):
        for row in items:
            rows.append(row)
            walk(row.get("__children") or [])

    walk(document if isinstance(document, list) else [])
    return rows


# -- recovery against the clean run --------------------------------------------------------------------

def _keys(plugin: str, rows: List[dict]) -> collections.Counter:
    fields = {"codeobjects": ("PID", "FunctionID", "SHA256"), "model": ("PID", "Root", "Name", "SHA256"),
              "patchgen": ("PID", "Root", "Kind", "ClassKey", "Function")}[plugin]
    return collections.Counter(tuple(row.get(f) for f in fields) for row in rows)


def winners(rows: List[dict]) -> Dict[Tuple, Tuple[str, float]]:
    """{(PID, Root): (winning base, its UR)} of linux.zen.attribute rows."""
    return {(r.get("PID"), r.get("Root")): (r.get("Base"), r.get("UR")) for r in rows if r.get("Winner")}


def recovery(plugin: str, clean: Optional[List[dict]], variant: Optional[List[dict]]) -> Tuple[Optional[float], dict]:
    """(fraction of the clean result the variant reproduced, details); None when the clean run gave no
    rows to compare with.  A variant that gave no rows recovered nothing."""
    if not clean:
        return None, {}
    variant = variant or []
    if plugin == "attribute":
        want, got = winners(clean), winners(variant)
        if not want:
            return None, {}
        same = sum(1 for key, (base, _ur) in want.items() if got.get(key, (None,))[0] == base)
        urs = [got[key][1] for key in want if key in got and got[key][1] is not None]
        return same / len(want), {"ur": urs[0] if len(urs) == 1 else urs,
                                  "clean_ur": [ur for _base, ur in want.values()][0] if len(want) == 1 else
                                  [ur for _base, ur in want.values()]}
    want, got = _keys(plugin, clean), _keys(plugin, variant)
    return sum((want & got).values()) / sum(want.values()), {"rows": len(variant), "clean_rows": len(clean)}


# -- the campaign ------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One plugin on one variant."""

    variant: Variant
    plugin: str
    verdict: str
    returncode: Optional[int]
    seconds: float
    time_ratio: float
    recovery: Optional[float]
    detail: dict
    error: str
    stderr_tail: List[str]


@dataclass
class CleanRun:
    plugin: str
    verdict: str
    seconds: float
    rows: Optional[List[dict]]
    error: str
    stderr_tail: List[str]

    def timeout(self, fixed: Optional[float]) -> float:
        return fixed if fixed else 3 * self.seconds + 60


@dataclass
class Campaign:
    image: Path
    plugins: Sequence[str]
    variants: List[Variant]
    settings: Settings
    timeout: Optional[float] = None
    jobs: int = 1
    work_dir: Optional[Path] = None  # where copies go (default: a fresh temporary directory)
    keep_dir: Optional[Path] = None  # keep the mutated copies (and the runs' files) here
    log: Callable[[str], None] = print
    clean: Dict[str, CleanRun] = field(default_factory=dict)
    runs: List[Run] = field(default_factory=list)
    applied: Dict[int, dict] = field(default_factory=dict)


def run_clean(campaign: Campaign, work: Path, live: LiveProcesses, clean_timeout: float) -> None:
    """Each plugin once on the unmodified image, after one untimed run: the first run in a symbol cache
    indexes the kernel ISF (a minute or more), and the file's first read comes from disk, both of which
    would make the clean times too long and every time ratio too small."""
    campaign.log(f"warm-up: untimed {campaign.plugins[0]} run (symbol cache {campaign.settings.cache})")
    run_plugin(campaign.settings, campaign.plugins[0], campaign.image, work / "warm-up", clean_timeout, live)
    for plugin in campaign.plugins:
        out = run_plugin(campaign.settings, plugin, campaign.image, work / "clean", clean_timeout, live)
        campaign.clean[plugin] = CleanRun(plugin, out.verdict, out.seconds, out.rows, out.error, out.stderr_tail)
        campaign.log(f"clean {plugin:<12} {out.verdict:<9} {out.seconds:7.1f} s  "
                     f"{len(out.rows or [])} rows  {out.error}".rstrip())


def choose_pid(campaign: Campaign) -> Optional[int]:
    """The process the process-* mutations hit when --pid is not given: the one with the most rows in
    the clean runs (for a core, its only process)."""
    counts: collections.Counter = collections.Counter()
    for clean in campaign.clean.values():
        counts.update(row.get("PID") for row in clean.rows or [] if row.get("PID") is not None)
    return counts.most_common(1)[0][0] if counts else None


def run_variant(campaign: Campaign, variant: Variant, eligible: Eligible, scratch: Path, live: LiveProcesses) -> List[Run]:
    """Copy, mutate, run every plugin, delete the copy (unless --keep)."""
    if live.stopping.is_set():
        raise KeyboardInterrupt
    base = campaign.keep_dir or scratch
    work = base / f"variant-{variant.index:04d}"
    work.mkdir(parents=True, exist_ok=True)
    copy = work / f"{campaign.image.stem}-v{variant.index}-{variant.mutation}{campaign.image.suffix}"
    try:
        size = campaign.image.stat().st_size
        limit = truncation_size(size, variant.seed) if variant.mutation == "truncate" else None
        copy_image(campaign.image, copy, limit, live.register)
        campaign.applied[variant.index] = mutate(copy, variant, eligible)
        runs = []
        for plugin in campaign.plugins:
            clean = campaign.clean[plugin]
            out = run_plugin(campaign.settings, plugin, copy, work, clean.timeout(campaign.timeout), live,
                             keep_files=campaign.keep_dir is not None)
            value, detail = recovery(plugin, clean.rows, out.rows)
            run = Run(variant, plugin, out.verdict, out.returncode, round(out.seconds, 2),
                      round(out.seconds / max(clean.seconds, 1e-3), 2), value, detail, out.error, out.stderr_tail)
            runs.append(run)
            campaign.log(log_line(run))
        return runs
    finally:
        if campaign.keep_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def log_line(run: Run) -> str:
    recovered = "-" if run.recovery is None else f"{run.recovery:.3f}"
    # the variant's index is the one --only takes
    return (f"v{run.variant.index:<4} {run.variant.label:<22} seed={run.variant.seed:<10} "
            f"{run.plugin:<12} {run.verdict:<9} {run.seconds:7.1f} s x{run.time_ratio:<5} rec={recovered:<6} "
            f"{run.error}").rstrip()


def _check_disk(campaign: Campaign, scratch: Path) -> None:
    needed = campaign.image.stat().st_size * max(1, campaign.jobs) + (1 << 30)
    free = shutil.disk_usage(scratch).free
    if free < needed:
        raise SystemExit(f"campaign: {free / 2**30:.1f} GiB free in {scratch}, {needed / 2**30:.1f} GiB needed "
                         f"({campaign.jobs} copies of the image at once and room for outputs)")


def execute(campaign: Campaign, process_pages: Callable[[Optional[int]], ProcessPages],
            clean_timeout: float = 3600) -> Campaign:
    """Runs the clean image, then every variant (``campaign.jobs`` at a time).  Every copy lives under one
    scratch directory that is removed on the way out, whatever happens (Ctrl-C included)."""
    scratch = Path(tempfile.mkdtemp(prefix="zen-campaign-", dir=campaign.work_dir))
    live = LiveProcesses()
    try:
        _check_disk(campaign, scratch)
        run_clean(campaign, scratch, live, clean_timeout)
        pid = campaign.settings.pid if campaign.settings.pid is not None else choose_pid(campaign)
        eligible = Eligible(campaign.image, lambda: process_pages(pid))
        started = time.monotonic()
        sizes = eligible.prepare(v.mutation for v in campaign.variants)
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(sizes.items()))
        campaign.log(f"{len(campaign.variants)} variants; eligible (PID {pid}): {counts}  "
                     f"[{time.monotonic() - started:.0f} s]")
        with futures.ThreadPoolExecutor(max_workers=max(1, campaign.jobs)) as pool:
            pending = [pool.submit(run_variant, campaign, v, eligible, scratch, live) for v in campaign.variants]
            try:
                for done in pending:
                    campaign.runs.extend(done.result())
            except BaseException:
                live.kill_all()
                for future in pending:
                    future.cancel()
                raise
    finally:
        live.kill_all()
        shutil.rmtree(scratch, ignore_errors=True)
    campaign.runs.sort(key=lambda r: (r.variant.index, campaign.plugins.index(r.plugin)))
    return campaign


# -- the report -------------------------------------------------------------------------------------------

def _median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def summary_rows(campaign: Campaign, group: Callable[[Run], str]) -> List[dict]:
    """Per plugin and group: runs by verdict, median and worst recovery, worst time ratio."""
    rows = []
    for plugin in campaign.plugins:
        by_group: Dict[str, List[Run]] = collections.defaultdict(list)
        for run in campaign.runs:
            if run.plugin == plugin:
                by_group[group(run)].append(run)
        for name in sorted(by_group, key=_group_order):
            rows.append(_summary(plugin, name, by_group[name]))
    return rows


def _group_order(name: str):
    try:
        return (0, float(name.rstrip("%")), name)
    except ValueError:
        return (1, 0.0, name)


def _summary(plugin: str, group: str, runs: List[Run]) -> dict:
    counts = collections.Counter(run.verdict for run in runs)
    values = [run.recovery for run in runs if run.recovery is not None]
    urs = [run.detail["ur"] for run in runs if isinstance(run.detail.get("ur"), (int, float))]
    return {
        "plugin": plugin, "group": group, "runs": len(runs),
        **{verdict: counts.get(verdict, 0) for verdict in (OK, ERROR, TRACEBACK, HANG, CRASH)},
        "median_recovery": _median(values), "worst_recovery": min(values) if values else None,
        "worst_time_ratio": max(run.time_ratio for run in runs),
        "median_ur": _median(urs) if plugin == "attribute" else None,
    }


def by_rate(run: Run) -> str:
    return "truncate" if run.variant.rate is None else f"{run.variant.rate * 100:g}%"


def by_mutation(run: Run) -> str:
    return run.variant.mutation


def format_table(rows: List[dict], title: str) -> str:
    head = f"{'plugin':<12} {title:<15} {'runs':>5} {'ok':>4} {'error':>5} {'tb':>4} {'hang':>4} {'crash':>5} " \
           f"{'med rec':>8} {'min rec':>8} {'worst t':>8} {'med UR':>7}"
    lines = [head, "-" * len(head)]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for row in rows:
        lines.append(f"{row['plugin']:<12} {row['group']:<15} {row['runs']:>5} {row[OK]:>4} {row[ERROR]:>5} "
                     f"{row[TRACEBACK]:>4} {row[HANG]:>4} {row[CRASH]:>5} {fmt(row['median_recovery'], '.3f'):>8} "
                     f"{fmt(row['worst_recovery'], '.3f'):>8} {fmt(row['worst_time_ratio'], '.2f'):>8} "
                     f"{fmt(row['median_ur'], '.3f'):>7}")
    return "\n".join(lines)


def failure_groups(campaign: Campaign) -> List[dict]:
    """Tracebacks, hangs and crashes, one group per (verdict, exception type, innermost frame)."""
    groups: Dict[Tuple[str, str, str], dict] = {}
    clean_failures = [(None, c.plugin, c.verdict, c.error, c.stderr_tail) for c in campaign.clean.values()
                      if c.verdict in FAILURES]
    variant_failures = [(r.variant, r.plugin, r.verdict, r.error, r.stderr_tail) for r in campaign.runs
                        if r.verdict in FAILURES]
    for variant, plugin, verdict, error, tail in clean_failures + variant_failures:
        exception = error.split(":")[0] if verdict == TRACEBACK else verdict
        location = traceback_location(tail) if verdict == TRACEBACK else plugin
        key = (verdict, exception, location)
        entry = groups.setdefault(key, {"verdict": verdict, "exception": exception, "location": location,
                                        "count": 0, "plugins": [], "variants": [], "example": error,
                                        "stderr_tail": tail})
        entry["count"] += 1
        if plugin not in entry["plugins"]:
            entry["plugins"].append(plugin)
        entry["variants"].append("clean" if variant is None else variant.index)
    return sorted(groups.values(), key=lambda g: -g["count"])


def reproduce_command(campaign: Campaign, args_line: str, index: int, plugin: str) -> str:
    return (f"python -m tools.campaign {campaign.image} {args_line} --only {index} --plugins {plugin} "
            f"--keep /tmp/zen-repro")


def report(campaign: Campaign, args_line: str) -> str:
    parts = [format_table(summary_rows(campaign, by_rate), "rate"), "",
             format_table(summary_rows(campaign, by_mutation), "mutation")]
    groups = failure_groups(campaign)
    parts += ["", f"tracebacks {sum(r.verdict == TRACEBACK for r in campaign.runs)}, "
                  f"hangs {sum(r.verdict == HANG for r in campaign.runs)}, "
                  f"crashes {sum(r.verdict == CRASH for r in campaign.runs)} "
                  f"in {len(campaign.runs)} variant-runs; {len(groups)} distinct"]
    for group in groups:
        first = next((v for v in group["variants"] if v != "clean"), None)
        parts.append(f"  {group['count']:>3} x {group['verdict']} {group['exception']} at {group['location']} "
                     f"[{', '.join(group['plugins'])}] variants {group['variants'][:12]}")
        parts.append(f"        {group['example']}")
        if first is not None:
            parts.append("        reproduce: " + reproduce_command(campaign, args_line, first, group["plugins"][0]))
    return "\n".join(parts)


def to_json(campaign: Campaign, args_line: str) -> dict:
    def run_record(run: Run) -> dict:
        record = dataclasses.asdict(run)
        record.update(variant=run.variant.index)
        return record

    return {
        "image": str(campaign.image),
        "arguments": args_line,
        "plugins": list(campaign.plugins),
        "settings": dataclasses.asdict(campaign.settings),
        "clean": {p: {"verdict": c.verdict, "seconds": round(c.seconds, 2), "rows": len(c.rows or []),
                      "error": c.error, "stderr_tail": c.stderr_tail} for p, c in campaign.clean.items()},
        "variants": [dict(dataclasses.asdict(v), applied=campaign.applied.get(v.index)) for v in campaign.variants],
        "runs": [run_record(run) for run in campaign.runs],
        "summary_by_rate": summary_rows(campaign, by_rate),
        "summary_by_mutation": summary_rows(campaign, by_mutation),
        "failures": failure_groups(campaign),
    }


def failed(campaign: Campaign) -> bool:
    return any(r.verdict in FAILURES for r in campaign.runs) or any(c.verdict in FAILURES for c in campaign.clean.values())


# -- the command line ----------------------------------------------------------------------------------------

def _csv(kind, allowed=None):
    def parse(text: str):
        items = [kind(item.strip()) for item in text.split(",") if item.strip()]
        bad = [item for item in items if allowed and item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}" if allowed else f"{text!r}")
        return items

    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.campaign", description="Corruption campaign: mutated copies of a memory image through the zen plugins (docs/campaign.md)")
    parser.add_argument("image", type=Path, help="a LiME image or an ELF process core (never modified)")
    parser.add_argument("--pid", type=int, help="the process to mutate (process-*, writable-*, pointer-smear) and "
                        "the plugins' --pid (default: the process with the most clean rows; plugins see every process)")
    parser.add_argument("--root", type=lambda s: int(s, 0), help="the model root (passed to model, attribute, patchgen)")
    parser.add_argument("--variants", type=int, default=24, help="how many variants to plan (default 24)")
    parser.add_argument("--seed", type=int, default=1, help="fixes the variant list and every mutated byte")
    parser.add_argument("--mutations", type=_csv(str, MUTATIONS), default=list(MUTATIONS),
                        help=f"comma-separated, from {','.join(MUTATIONS)} (default: all)")
    parser.add_argument("--rates", type=_csv(float), default=list(DEFAULT_RATES),
                        help="fractions of the eligible pages or pointers (default 0.001,0.01,0.05)")
    parser.add_argument("--plugins", type=_csv(str, PLUGINS), default=list(PLUGINS),
                        help="comma-separated (default: codeobjects,model,attribute,patchgen)")
    parser.add_argument("--timeout", type=float, help="seconds per run (default: 3 x the clean run + 60)")
    parser.add_argument("--jobs", type=int, default=1, help="variants at once (each holds one copy of the image)")
    parser.add_argument("--isf", default=str(DEFAULT_ISF) if DEFAULT_ISF.is_dir() else None,
                        help="kernel ISF folder for vol -s (default: tests/data/isf)")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--only", type=_csv(int), help="run only these variant indexes of the planned list")
    parser.add_argument("--keep", type=Path, help="keep the mutated copies and the runs' files under this folder")
    parser.add_argument("--work-dir", type=Path, help="where the temporary copies go (default: $TMPDIR)")
    parser.add_argument("--cache", type=Path, help="XDG_CACHE_HOME for every run (default: a fresh one per campaign)")
    parser.add_argument("--memory-limit", type=float, default=16, help="GiB of address space per run (0: none)")
    return parser.parse_args(argv)


def recipe_line(seed: int, variants: int, mutations: Sequence[str], rates: Sequence[float], pid: Optional[int] = None,
                root: Optional[int] = None, isf: Optional[str] = None) -> str:
    """The options that fix the variant list (and the process), for reproduction commands."""
    parts = [] if pid is None else [f"--pid {pid}"]
    parts += [] if root is None else [f"--root {root}"]
    parts += [f"--seed {seed}", f"--variants {variants}", f"--mutations {','.join(mutations)}",
              f"--rates {','.join(format(r, 'g') for r in rates)}"]
    if isf and isf != str(DEFAULT_ISF):
        parts.append(f"--isf {isf}")
    return " ".join(parts)


def recipe_arguments(args: argparse.Namespace) -> str:
    return recipe_line(args.seed, args.variants, args.mutations, args.rates, args.pid, args.root, args.isf)


def process_pages_finder(image: Path, isf: Optional[str]) -> Callable[[Optional[int]], ProcessPages]:
    def find(pid: Optional[int]) -> ProcessPages:
        if is_elf_core(image):
            return core_process_pages(image, pid)
        if pid is None:
            raise SystemExit("campaign: no process to mutate (no clean rows); pass --pid")
        return kernel_process_pages(image, pid, isf)

    return find


def _stop_on_sigterm() -> None:
    def stop(_signum, _frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    image = args.image.resolve()
    if not image.is_file():
        raise SystemExit(f"campaign: no such image {image}")
    cache_root = None if args.cache else Path(tempfile.mkdtemp(prefix="zen-campaign-xdg-", dir=args.work_dir))
    cache = args.cache or cache_root
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(cache)  # before anything imports Volatility (read at import time)
    variants = plan_variants(args.variants, args.mutations, args.rates, args.seed)
    if args.only:
        variants = [v for v in variants if v.index in set(args.only)]
    settings = Settings(args.isf, args.pid, args.root, str(cache), args.memory_limit)
    campaign = Campaign(image, args.plugins, variants, settings, args.timeout, args.jobs, args.work_dir, args.keep,
                        log=lambda line: print(line, flush=True))
    args_line = recipe_arguments(args)
    _stop_on_sigterm()
    try:
        execute(campaign, process_pages_finder(image, args.isf))
    except KeyboardInterrupt:
        print("campaign: interrupted; copies removed", file=sys.stderr)
        return 130
    finally:
        if cache_root:
            shutil.rmtree(cache_root, ignore_errors=True)
    print()
    print(report(campaign, args_line))
    if args.json:
        args.json.write_text(json.dumps(to_json(campaign, args_line), indent=1, default=str) + "\n")
    return 1 if failed(campaign) else 0


if __name__ == "__main__":
    sys.exit(main())
