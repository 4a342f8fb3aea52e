"""Finding the CPython runtime (``_PyRuntime``) and the interpreter version in a process.

Discovery methods, tried in this order, each candidate validated like pystack does
(``interp->threads.head->interp == interp``):
  dynsym        exported ``_PyRuntime`` via the in-memory GNU hash table (every build we know)
  section       the ``.PyRuntime`` section (3.10+), from the on-disk file when its build ID matches
  debug-cookie  the ``_Py_DebugOffsets`` cookie ``xdebugpy`` that starts ``_PyRuntime`` (3.13+)
  main-interp   3.11+ embed the main interpreter in ``_PyRuntime``: ``interpreters.head`` points a fixed
                distance into the same structure, a signature found by one vectorised scan
  pointer-scan  ``interpreters.head == interpreters.main`` pairs in the data segment, then validated
"""

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy

from ..elfimage import ElfImage, PT_LOAD, loaded_images
from ...errors import MemoryReadError, NoPythonError, UnsupportedVersionError
from ..memory import ProcessMemory
from .layouts import CPythonLayout, load_layout, supported_versions

METHODS = ("dynsym", "section", "debug-cookie", "main-interp", "pointer-scan")

_LIB_NAME = re.compile(rb"(?:^|/)(?:lib)?python(3\.\d{1,2})")
_BANNER = re.compile(rb"(3\.\d{1,2}\.\d{1,2})(?:[abrc+][0-9+]*)? \([^\x00)]{0,80}\) *\n?\[")


@dataclass
class Runtime:
    runtime: int  # address of _PyRuntime
    interpreter: int  # main PyInterpreterState
    version: str  # "3.11.7" (or "3.11" when only the minor version is known)
    layout: CPythonLayout
    image: ElfImage  # the ELF object that holds _PyRuntime
    method: str


def python_images(memory: ProcessMemory) -> List[ElfImage]:
    """Loaded ELF objects that may hold the interpreter, the likeliest first."""
    images = list(loaded_images(memory))

    def rank(img: ElfImage) -> int:
        name = (img.soname or img.path).encode()
        if b"libpython" in name:
            return 0
        if _LIB_NAME.search(img.path.encode()):
            return 1
        return 2

    return sorted(images, key=rank)


def _data_segments(image: ElfImage) -> List[Tuple[int, int]]:
    """Writable PT_LOAD ranges (.data + .bss) at run time."""
    return [(s.vaddr + image.bias, s.memsz) for s in image.segments if s.type == PT_LOAD and s.flags & 2]


def detect_version(memory: ProcessMemory, image: ElfImage) -> Optional[str]:
    """Full version from ``Py_Version`` or the ``Py_GetVersion`` banner, else X.Y from the file name."""
    sym = image.lookup("Py_Version")
    if sym:
        try:
            hexversion = memory.read_u32(sym[0])
            major, minor, micro = hexversion >> 24, (hexversion >> 16) & 0xFF, (hexversion >> 8) & 0xFF
            if major == 3:
                return f"{major}.{minor}.{micro}"
        except MemoryReadError:
            pass
    for start, size in _data_segments(image):
        match = _BANNER.search(memory.read_padded(start, size))
        if match:
            return match.group(1).decode()
    for name in (image.soname or "", image.path):
        match = _LIB_NAME.search(name.encode())
        if match:
            return match.group(1).decode()
    return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def threads_head_offset(layout: CPythonLayout) -> int:
    """``interp->threads.head`` (3.11+) was ``interp->tstate_head`` before."""
    if layout.has("PyInterpreterState", "threads.head"):
        return layout.offset("PyInterpreterState", "threads.head")
    return layout.offset("PyInterpreterState", "tstate_head")


def validate(memory: ProcessMemory, layout: CPythonLayout, runtime: int) -> Optional[int]:
    """The main interpreter address if ``runtime`` really is ``_PyRuntime``, else None."""
    try:
        head = memory.read_u64(runtime + layout.offset("_PyRuntimeState", "interpreters.head"))
        if not head or head % 8:
            return None
        tstate = memory.read_u64(head + threads_head_offset(layout))
        if not tstate or tstate % 8:
            return None
        if memory.read_u64(tstate + layout.offset("PyThreadState", "interp")) != head:
            return None
        # 3.9+ interpreters point back at their runtime: rules out look-alike pairs in .data.
        if layout.has("PyInterpreterState", "runtime") and memory.read_u64(head + layout.offset("PyInterpreterState", "runtime")) != runtime:
            return None
        return head
    except MemoryReadError:
        return None


def _candidates(memory: ProcessMemory, image: ElfImage, layout: CPythonLayout, method: str) -> Iterable[int]:
    if method == "dynsym":
        sym = image.lookup("_PyRuntime")
        if sym:
            yield sym[0]
    elif method == "section":
        sec = image.section_from_file(".PyRuntime")
        if sec:
            yield sec[0]
    elif method == "debug-cookie":
        if layout.version >= (3, 13):
            for start, size in _data_segments(image):
                data = memory.read_padded(start, size)
                pos = data.find(b"xdebugpy")
                while pos >= 0:
                    yield start + pos
                    pos = data.find(b"xdebugpy", pos + 8)
    elif method == "main-interp":
        if layout.version >= (3, 11):
            off_head = layout.offset("_PyRuntimeState", "interpreters.head")
            delta = layout.offset("_PyRuntimeState", "_main_interpreter") - off_head
            for start, words in _word_arrays(memory, image):
                addrs = numpy.arange(start, start + 8 * len(words), 8, dtype=numpy.uint64)
                for hit in numpy.nonzero(words - addrs == numpy.uint64(delta))[0]:
                    yield start + 8 * int(hit) - off_head
    elif method == "pointer-scan":
        off_head = layout.offset("_PyRuntimeState", "interpreters.head")
        off_main = layout.offset("_PyRuntimeState", "interpreters.main")
        step = (off_main - off_head) // 8
        for start, words in _word_arrays(memory, image):
            if step <= 0 or len(words) <= step:
                continue
            same = (words[:-step] == words[step:]) & (words[:-step] != 0) & (words[:-step] % 8 == 0)
            for hit in numpy.nonzero(same)[0]:
                yield start + 8 * int(hit) - off_head


def _word_arrays(memory: ProcessMemory, image: ElfImage):
    for start, size in _data_segments(image):
        aligned = start - start % 8
        data = memory.read_padded(aligned, size + start - aligned)
        yield aligned, numpy.frombuffer(data[: len(data) - len(data) % 8], dtype="<u8")


def find_runtime(memory: ProcessMemory, methods: Sequence[str] = METHODS, version: Optional[str] = None) -> Runtime:
    """Locate and validate ``_PyRuntime``; raises NoPythonError / UnsupportedVersionError."""
    images = python_images(memory)
    unsupported = None
    for image in images:
        image_version = version or detect_version(memory, image)
        if image_version is None:
            if not image.lookup("_PyRuntime"):
                continue
            raise NoPythonError(f"{image.path} exports _PyRuntime but its Python version could not be determined")
        try:
            layout = load_layout(_minor(image_version))
        except UnsupportedVersionError as exc:
            unsupported = exc
            continue
        for method in methods:
            for candidate in _candidates(memory, image, layout, method):
                interp = validate(memory, layout, candidate)
                if interp:
                    return Runtime(candidate, interp, image_version, layout, image, method)
    if unsupported is not None:
        raise unsupported
    raise NoPythonError(
        f"no CPython runtime found in PID {memory.pid} ({memory.name}); tried {', '.join(methods)}"
        f" in {len(images)} mapped ELF objects (supported: CPython {supported_versions()[0]}-{supported_versions()[-1]})"
    )


def hosts_python(memory: ProcessMemory) -> bool:
    """Cheap test used to pick processes: a libpython / pythonX.Y mapping or an exported _PyRuntime."""
    for region in memory.regions:
        if _LIB_NAME.search(region.path.encode()):
            return True
    return any(img.lookup("_PyRuntime") for img in loaded_images(memory))
