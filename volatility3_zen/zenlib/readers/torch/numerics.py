"""The numerics-relevant execution context of a torch process, read from memory (docs/patchgen.md,
context.json): the environment variables that choose kernels and threads, torch's thread count and
the CPU capability ATen chose.

- **Environment**: ``os.environ`` (``readers/cpython/environ.py``), else the C environment; both are
  read and a disagreement is noted.  Only ``NUMERICS_VARIABLES`` (each as its value or None, not
  set) and the set variables with ``NUMERICS_PREFIXES`` are kept: an environment holds secrets.
- **Thread count**: torch's OpenMP build asks ``omp_get_max_threads()``, which reads the calling
  thread's OpenMP ICV *nthreads-var*: ``gomp_thread()->task->icv`` (the thread's libgomp TLS block), or
  libgomp's ``gomp_global_icv`` while the thread has no task.  ``omp_get_max_threads`` is exported,
  and its few instructions say where all of that is: the GOT slot with the TLS offset of libgomp's
  thread data, the offset of ``task`` in it, of the ICV in the task and the address of the global
  ICV.  The threads are found by their TCBs (x86_64 glibc: a ``tcbhead_t`` whose ``tcb`` and ``self``
  point at itself) in small anonymous mappings and at the top of thread stacks.
- **torch.set_num_threads**: the argument of the last call is ``at::(anonymous)::num_threads`` (-1
  until called), which the exported ``at::init_num_threads`` loads with its first instruction and
  ``at::set_num_threads`` stores to.
- **CPU capability**: ``at::native::get_cpu_capability()`` keeps its choice in a function-local
  static, guarded by an Itanium guard variable; the exported ``DispatchStubImpl::try_choose_cpu_impl``
  (``choose_cpu_impl`` in older releases) checks the guard and compares the static with AVX2/AVX512.
  (torch 2.13's dispatch stubs keep no cached kernel pointer, ``cpu_dispatch_ptr`` stays null, so the
  chosen kernels cannot be read off the stubs.)

The static variables are local symbols (in ``.symtab``, which is not loaded), so they are found through
the code of exported functions: a few x86_64 instruction forms, each operand checked to land in a
writable segment of the same library and each value checked to be in range.  Whatever does not match
is ``UNKNOWN`` with a note saying why; nothing is guessed.  Not recovered: MKL's and oneDNN's own
thread counts and instruction-set choices (static in libtorch_cpu, with no exported function whose
code leads to them); they follow the environment and torch's thread count.
"""

import re
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy

from ...errors import CorruptObjectError, MemoryReadError
from ...representation.model import CPU_CAPABILITIES, NUMERICS_PREFIXES, NUMERICS_VARIABLES, UNKNOWN, Numerics
from ..cpython import environ as environ_reader
from ..cpython.objects import DECODE_ERRORS
from ..elfimage import PT_LOAD, ElfImage, loaded_images
from ..memory import ProcessMemory

INIT_NUM_THREADS = "_ZN2at16init_num_threadsEv"
SET_NUM_THREADS = "_ZN2at15set_num_threadsEi"
CHOOSE_CPU_IMPL = (  # (AVX512, AVX2) builds, then older or narrower ones
    "_ZN2at6native16DispatchStubImpl19try_choose_cpu_implEPvS2_S2_",
    "_ZN2at6native16DispatchStubImpl15choose_cpu_implEPvS2_S2_",
    "_ZN2at6native16DispatchStubImpl19try_choose_cpu_implEPvS2_",
    "_ZN2at6native16DispatchStubImpl15choose_cpu_implEPvS2_",
)
OMP_GET_MAX_THREADS = "omp_get_max_threads"
PF_W = 2
MAX_THREADS = 1 << 16  # an nthreads-var or set_num_threads value beyond this is not a thread count
# Where the TCBs are looked for: writable anonymous mappings up to this size in full (the main thread's,
# made by the dynamic linker before malloc works), and the top of larger ones (glibc puts a thread's
# TCB at the top of its stack mapping, below its static TLS).
SMALL_REGION = 256 << 10
STACK_TOP = 64 << 10
GLIBC_TID_OFFSET = 0x2D0  # struct pthread.tid in glibc 2.34+ (x86_64): used only to tell the main thread

_ENDBR64 = b"\xf3\x0f\x1e\xfa"
# ModRM mod=00 rm=101: [rip + disp32], with any register (0x2d is "-": escaped, not a range)
_RIP = b"[" + b"".join(re.escape(bytes([0x05 | reg << 3])) for reg in range(8)) + b"]"


@dataclass
class _Site:
    """A RIP-relative operand found in a function's code: where its instruction starts, and its target."""

    at: int  # offset of the instruction in the code
    target: int


def _rip_sites(code: bytes, address: int, pattern: bytes, imm: int = 0) -> List[_Site]:
    """Every match of ``pattern`` (which ends with a group for the disp32) as a RIP-relative operand;
    ``imm`` bytes of immediate follow the displacement."""
    out = []
    for m in re.finditer(pattern, code, re.DOTALL):
        disp = struct.unpack("<i", m.group("disp"))[0]
        out.append(_Site(m.start(), address + m.end() + imm + disp))
    return out


def _function_code(image: ElfImage, memory: ProcessMemory, name: str, limit: int = 512) -> Optional[Tuple[int, bytes]]:
    found = image.lookup(name)
    if not found:
        return None
    address, size = found
    return address, memory.read(address, min(size or limit, limit))


def _writable(image: ElfImage, address: int, size: int) -> bool:
    """Inside a writable PT_LOAD of ``image`` (where its .data and .bss are)."""
    for seg in image.segments:
        if seg.type == PT_LOAD and seg.flags & PF_W:
            start = seg.vaddr + image.bias
            if start <= address and address + size <= start + seg.memsz:
                return True
    return False


def _loaded(image: ElfImage, address: int, size: int) -> bool:
    return any(seg.type == PT_LOAD and seg.vaddr + image.bias <= address and address + size <= seg.vaddr + image.bias + seg.memsz
               for seg in image.segments)


# -- torch.set_num_threads ---------------------------------------------------------------------------------
def num_threads_variable(image: ElfImage, memory: ProcessMemory) -> int:
    """Address of ``at::(anonymous)::num_threads``: the RIP-relative load that begins
    ``at::init_num_threads``, where ``at::set_num_threads`` stores (xchg or mov) too."""
    init = _function_code(image, memory, INIT_NUM_THREADS, 64)
    if init is None:
        raise CorruptObjectError(f"{INIT_NUM_THREADS} is not exported by {image.path}")
    address, code = init
    start = len(_ENDBR64) if code.startswith(_ENDBR64) else 0
    m = re.match(b"[\x40-\x4f]?\x8b" + _RIP + b"(?P<disp>.{4})", code[start:], re.DOTALL)
    if not m:
        raise CorruptObjectError(f"{INIT_NUM_THREADS} does not begin with a load of a static (code {code[:16].hex()})")
    target = address + start + m.end() + struct.unpack("<i", m.group("disp"))[0]
    if not _writable(image, target, 4):
        raise CorruptObjectError(f"{INIT_NUM_THREADS} loads from 0x{target:x}, outside the library's data")
    store = _function_code(image, memory, SET_NUM_THREADS, 256)
    if store is not None:
        stores = {s.target for s in _rip_sites(store[1], store[0], b"[\x40-\x4f]?[\x87\x89]" + _RIP + b"(?P<disp>.{4})")}
        if stores and target not in stores:
            raise CorruptObjectError(f"{SET_NUM_THREADS} stores elsewhere than {INIT_NUM_THREADS} loads from")
    return target


def set_num_threads_value(image: ElfImage, memory: ProcessMemory) -> Optional[int]:
    """The argument of the process's last ``torch.set_num_threads``; None when it never called it."""
    value = memory.read_i32(num_threads_variable(image, memory))
    if value == -1:
        return None
    if not 0 < value <= MAX_THREADS:
        raise CorruptObjectError(f"at::num_threads holds {value}")
    return value


# -- the CPU capability ----------------------------------------------------------------------------------
def cpu_capability_variables(image: ElfImage, memory: ProcessMemory) -> Tuple[int, int]:
    """(guard address, capability address) of ``at::native::get_cpu_capability()``'s static, from the
    guard check and the first comparison or load after it in ``DispatchStubImpl::try_choose_cpu_impl``."""
    for name in CHOOSE_CPU_IMPL:
        found = _function_code(image, memory, name, 160)
        if found is not None:
            break
    else:
        raise CorruptObjectError(f"no DispatchStubImpl::choose_cpu_impl is exported by {image.path}")
    address, code = found
    guards = (_rip_sites(code, address, b"\x0f\xb6" + _RIP + b"(?P<disp>.{4})")  # movzbl guard(%rip), %reg
              + _rip_sites(code, address, b"\x80\x3d(?P<disp>.{4})(?=\x00)", imm=1))  # cmpb $0, guard(%rip)
    guards = sorted((g for g in guards if _writable(image, g.target, 1)), key=lambda g: g.at)
    if not guards:
        raise CorruptObjectError(f"{name}: no guard-variable check of a static found")
    guard = guards[0]
    loads = (_rip_sites(code, address, b"\x83\x3d(?P<disp>.{4})", imm=1)  # cmpl $imm8, capability(%rip)
             + _rip_sites(code, address, b"[\x40-\x4f]?[\x8b\x39\x3b]" + _RIP + b"(?P<disp>.{4})"))  # mov / cmp
    loads = sorted((s for s in loads if s.at > guard.at and s.target != guard.target and _writable(image, s.target, 4)),
                   key=lambda s: s.at)
    if not loads:
        raise CorruptObjectError(f"{name}: no read of the capability static after its guard check")
    return guard.target, loads[0].target


def cpu_capability_value(image: ElfImage, memory: ProcessMemory) -> Optional[str]:
    """"DEFAULT", "AVX2" or "AVX512"; None while no CPU kernel has been dispatched (the guard is clear)."""
    guard, variable = cpu_capability_variables(image, memory)
    if memory.read(guard, 1) == b"\0":
        return None
    value = memory.read_i32(variable)
    if not 0 <= value < len(CPU_CAPABILITIES):
        raise CorruptObjectError(f"the CPU capability static holds {value}")
    return CPU_CAPABILITIES[value]


# -- OpenMP's thread count -------------------------------------------------------------------------------
@dataclass
class OmpLayout:
    """What ``omp_get_max_threads`` reads: ``fs:[tpoff + task_offset]`` is the thread's task; its
    nthreads-var is at ``task + value_offset``, the global one at ``global_value``."""

    tpoff: int
    task_offset: int
    value_offset: int
    global_value: int
    value_size: int


def omp_layout(image: ElfImage, memory: ProcessMemory) -> OmpLayout:
    found = _function_code(image, memory, OMP_GET_MAX_THREADS, 96)
    if found is None:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS} is not defined in {image.path}")
    address, code = found
    got = [s for s in _rip_sites(code, address, b"[\x48\x4c]\x8b" + _RIP + b"(?P<disp>.{4})") if _loaded(image, s.target, 8)]
    tls = re.search(b"\x64[\x48\x4c]\x8b(?P<modrm>[\x40-\x7f\x80-\xbf])", code, re.DOTALL)
    if not got or not tls or tls.start() < got[0].at or ord(tls.group("modrm")) & 7 == 4:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: no load of libgomp's thread data through the TLS offset "
                                 f"(code {code[:48].hex()})")
    task_offset, after = _displacement(code, tls.end(), ord(tls.group("modrm")))
    tpoff = memory.read_i64(got[0].target)
    if not -(1 << 24) < tpoff < 0:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: TLS offset {tpoff} is not an initial-exec offset")
    rest = code[after:]
    # The task's ICV: lea disp(%task), %reg (then one load through the chosen pointer), or a load of
    # disp(%task) itself; the global ICV: lea or load at [rip + disp32].
    icv = re.search(b"(?P<rex>[\x48\x4c]?)(?P<op>[\x8d\x8b])(?P<modrm>[\x40-\xbf])", rest, re.DOTALL)
    glob = re.search(b"(?P<rex>[\x48\x4c]?)(?P<op>[\x8d\x8b])" + _RIP + b"(?P<disp>.{4})", rest, re.DOTALL)
    if not icv or not glob or ord(icv.group("modrm")) & 7 == 4:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: no read of the task's or the global ICV (code {code[:48].hex()})")
    icv_offset, icv_end = _displacement(rest, icv.end(), ord(icv.group("modrm")))
    glob_target = address + after + glob.end() + struct.unpack("<i", glob.group("disp"))[0]
    if icv.group("op") == b"\x8d" and glob.group("op") == b"\x8d":
        last = max(icv_end, glob.end())
        final = re.search(b"(?P<rex>[\x48\x4c]?)\x8b(?P<modrm>[\x00-\x7f])", rest[last:], re.DOTALL)
        if not final or ord(final.group("modrm")) & 7 in (4, 5):
            raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: no load of nthreads-var (code {code[:48].hex()})")
        extra = _displacement(rest[last:], final.end(), ord(final.group("modrm")))[0]
        value_size = 8 if final.group("rex") else 4
        value_offset, global_value = icv_offset + extra, glob_target + extra
    elif icv.group("op") == b"\x8b" and glob.group("op") == b"\x8b":
        value_size = 8 if icv.group("rex") else 4
        value_offset, global_value = icv_offset, glob_target
    else:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: the task's and the global ICV are read differently "
                                 f"(code {code[:48].hex()})")
    if not _writable(image, global_value, value_size) or not 0 <= task_offset < 4096 or not 0 <= value_offset < 4096:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: offsets out of range (task {task_offset}, ICV {value_offset})")
    return OmpLayout(tpoff, task_offset, value_offset, global_value, value_size)


def _displacement(code: bytes, at: int, modrm: int) -> Tuple[int, int]:
    """(displacement, end) of a ModRM operand whose displacement starts at ``at`` (mod 00: none)."""
    mod = modrm >> 6
    if mod == 1:
        return struct.unpack("<b", code[at:at + 1])[0], at + 1
    if mod == 2:
        return struct.unpack("<i", code[at:at + 4])[0], at + 4
    return 0, at


def thread_control_blocks(memory: ProcessMemory) -> List[int]:
    """Addresses of the threads' TCBs (``fs`` base): x86_64 glibc's ``tcbhead_t`` begins with ``tcb``
    and has ``self`` two words on, both pointing at the TCB itself; ``dtv`` between them is a pointer
    into mapped memory."""
    found = []
    for region in memory.regions:
        if not (region.readable and region.writable) or (region.path and "/ld-linux" not in region.path):
            continue
        if region.size <= SMALL_REGION:
            start, size = region.start, region.size
        elif not region.path:
            start, size = region.end - STACK_TOP, STACK_TOP
        else:
            continue
        words = numpy.frombuffer(memory.read_padded(start, size), dtype="<u8")
        if len(words) < 3:
            continue
        addresses = numpy.arange(start, start + 8 * len(words), 8, dtype=numpy.uint64)
        hits = numpy.nonzero((words[:-2] == addresses[:-2]) & (words[2:] == addresses[:-2]))[0]
        for index in hits.tolist():
            if memory.is_mapped(int(words[index + 1])):
                found.append(int(addresses[index]))
    return found


def openmp_threads(image: ElfImage, memory: ProcessMemory) -> Tuple[Optional[int], int, List[str]]:
    """(nthreads-var of the threads that run OpenMP, or None; the global (initial) nthreads-var;
    notes).  The threads that have a libgomp task agree unless code set another count in one of them;
    then the main thread's (the TCB whose glibc tid is the pid) is taken, where it can be told."""
    layout = omp_layout(image, memory)
    read = memory.read_u64 if layout.value_size == 8 else memory.read_u32
    default = read(layout.global_value)
    if not 0 < default <= MAX_THREADS:
        raise CorruptObjectError(f"libgomp's global nthreads-var holds {default}")
    values: Dict[int, int] = {}
    for tcb in thread_control_blocks(memory):
        try:
            task = memory.read_u64(tcb + layout.tpoff + layout.task_offset)
            if task:
                value = read(task + layout.value_offset)
                if 0 < value <= MAX_THREADS:
                    values[tcb] = value
        except MemoryReadError:
            continue
    notes = []
    if not values:
        notes.append(f"no thread had initialised OpenMP (torch had run no parallel code); OpenMP's default is {default}")
        return None, default, notes
    distinct = sorted(set(values.values()))
    if len(distinct) == 1:
        return distinct[0], default, notes
    main = [tcb for tcb in values if _tid(memory, tcb) == memory.pid]
    notes.append(f"threads disagree on the OpenMP thread count ({', '.join(map(str, distinct))})")
    if len(main) == 1:
        notes.append("the main thread's is taken")
        return values[main[0]], default, notes
    return None, default, notes


def _tid(memory: ProcessMemory, tcb: int) -> Optional[int]:
    try:
        return memory.read_i32(tcb + GLIBC_TID_OFFSET)
    except MemoryReadError:
        return None


# -- the whole context -------------------------------------------------------------------------------------
def _library(memory: ProcessMemory, symbol: str, prefer: str) -> Optional[ElfImage]:
    """The loaded image that defines ``symbol`` (one whose file name contains ``prefer`` first)."""
    images = [image for image in loaded_images(memory) if image.lookup(symbol)]
    images.sort(key=lambda image: prefer not in image.path.rsplit("/", 1)[-1])
    return images[0] if images else None


def read_numerics(python) -> Numerics:
    """The ``Numerics`` of a ``PythonProcess`` that imported torch; every part best effort."""
    memory = python.memory
    result = Numerics()
    _read_environment(python, result)
    errors = DECODE_ERRORS + (MemoryReadError,)

    torch_cpu = _library(memory, INIT_NUM_THREADS, "torch_cpu")
    if torch_cpu is None:
        result.notes.append("torch's CPU library (at::init_num_threads) is not mapped: set_num_threads and "
                            "the CPU capability are unknown")
    else:
        name = torch_cpu.path.rsplit("/", 1)[-1]
        try:
            result.set_num_threads = set_num_threads_value(torch_cpu, memory)
        except errors as exc:
            result.notes.append(f"torch.set_num_threads: unknown ({exc})")
        try:
            capability = cpu_capability_value(torch_cpu, memory)
            if capability is None:
                result.notes.append("CPU capability: unknown, no CPU kernel had been dispatched yet")
            else:
                result.cpu_capability = capability
                result.cpu_capability_source = (f"{name}: at::native::get_cpu_capability()'s static, found through "
                                                 "DispatchStubImpl::try_choose_cpu_impl")
        except errors as exc:
            result.notes.append(f"CPU capability: unknown ({exc})")

    gomp = _library(memory, OMP_GET_MAX_THREADS, "gomp")
    if gomp is None:
        result.notes.append("no OpenMP runtime with omp_get_max_threads is mapped: the thread count is unknown")
    elif "gomp" not in gomp.path.rsplit("/", 1)[-1]:
        result.notes.append(f"the OpenMP runtime is {gomp.path.rsplit('/', 1)[-1]}, not libgomp: the thread count is unknown")
    else:
        try:
            threads, default, notes = openmp_threads(gomp, memory)
            result.openmp_default_threads = default
            result.notes += notes
            if threads is not None:
                result.torch_threads = threads
                result.torch_threads_source = (f"{gomp.path.rsplit('/', 1)[-1]}: OpenMP nthreads-var of the threads' "
                                               "libgomp tasks (what torch.get_num_threads() returns)")
        except errors as exc:
            result.notes.append(f"thread count: unknown ({exc})")
    if result.torch_threads == UNKNOWN and isinstance(result.set_num_threads, int):
        result.torch_threads = result.set_num_threads
        result.torch_threads_source = "the process's torch.set_num_threads (at::num_threads)"
    elif isinstance(result.set_num_threads, int) and result.torch_threads != result.set_num_threads:
        result.notes.append(f"torch.set_num_threads({result.set_num_threads}) was called, but OpenMP runs "
                            f"{result.torch_threads} threads")
    return result


def _read_environment(python, result: Numerics) -> None:
    environ = c_side = None
    problems = []
    try:
        environ = environ_reader.python_environ(python)
    except DECODE_ERRORS + (MemoryReadError,) as exc:
        problems.append(f"os.environ unreadable ({exc})")
    try:
        c_side = environ_reader.c_environ(python.memory)
    except DECODE_ERRORS + (MemoryReadError,) as exc:
        problems.append(f"the C environment unreadable ({exc})")
    if environ is not None:
        result.environ_source = "os.environ (the os module's _Environ._data)"
    elif c_side is not None:
        environ = c_side
        result.environ_source = "the C environment (libc's environ)"
    else:
        result.notes += problems
        result.notes.append("environment: unknown")
        return
    result.environ = {name: environ.get(name) for name in NUMERICS_VARIABLES}
    result.environ_other = {name: value for name, value in sorted(environ.items())
                            if name.startswith(NUMERICS_PREFIXES) and name not in result.environ}
    if c_side is not None and c_side is not environ:
        differ = [name for name in NUMERICS_VARIABLES if c_side.get(name) != environ.get(name)]
        if differ:
            result.notes.append("os.environ and the C environment (which native libraries read) differ in "
                                + ", ".join(f"{n} ({environ.get(n)!r} / {c_side.get(n)!r})" for n in differ))
