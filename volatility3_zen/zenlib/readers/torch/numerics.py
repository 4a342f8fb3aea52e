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
the code of exported functions: capstone decodes their first x86_64 instructions (with operand detail),
and a few instruction forms are looked for among them (a load from ``[rip + disp32]``, a guard-byte
test, a ``fs:``-relative load ...), RIP-relative operands resolved against the next instruction's
address.  Each operand is checked to land in a writable segment of the same library and each value to
be in range.  Whatever does not match is ``UNKNOWN`` with a note saying why; nothing is guessed.
Not recovered: MKL's and oneDNN's own thread counts and instruction-set choices (static in
libtorch_cpu, with no exported function whose code leads to them); they follow the environment and
torch's thread count.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import capstone
import numpy
from capstone import x86

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

# -- the code of exported functions, decoded by capstone ---------------------------------------------------
_X86_64 = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_X86_64.detail = True  # operands: types, registers, displacements, sizes
_NO_REGISTER = x86.X86_REG_INVALID
_T = TypeVar("_T")


@dataclass
class _Code:
    """The first bytes of an exported function and the instructions capstone decodes from them (at their
    runtime addresses, up to the first byte it cannot decode or the end of the bytes read)."""

    name: str
    address: int
    raw: bytes
    instructions: List[capstone.CsInsn]

    def hex(self, size: int = 48) -> str:
        return self.raw[:size].hex()


def _function_code(image: ElfImage, memory: ProcessMemory, name: str, limit: int = 512) -> Optional[_Code]:
    found = image.lookup(name)
    if not found:
        return None
    address, size = found
    raw = memory.read(address, min(size or limit, limit))
    return _Code(name, address, raw, list(_X86_64.disasm(raw, address)))


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


def _first(instructions: Sequence[capstone.CsInsn], form: Callable[[capstone.CsInsn], Optional[_T]],
           start: int = 0) -> Tuple[int, Optional[_T]]:
    """(index, what ``form`` says) of the first instruction from ``start`` on that has the form; (-1, None)."""
    for index in range(start, len(instructions)):
        found = form(instructions[index])
        if found is not None:
            return index, found
    return -1, None


# Operands.
def _register(op) -> Optional[int]:
    return op.reg if op.type == x86.X86_OP_REG else None


def _rip_target(insn: capstone.CsInsn, op) -> Optional[int]:
    """The address a ``[rip + disp32]`` operand points at (rip: the address of the next instruction)."""
    if op.type != x86.X86_OP_MEM:
        return None
    mem = op.mem
    if mem.base != x86.X86_REG_RIP or mem.index != _NO_REGISTER or mem.segment != _NO_REGISTER:
        return None
    return insn.address + insn.size + mem.disp


def _register_relative(op, segment: int = _NO_REGISTER) -> Optional[Tuple[int, int]]:
    """(base register, displacement) of a ``segment:[base + disp]`` operand (no index, base not rip)."""
    if op.type != x86.X86_OP_MEM:
        return None
    mem = op.mem
    if mem.base in (_NO_REGISTER, x86.X86_REG_RIP) or mem.index != _NO_REGISTER or mem.segment != segment:
        return None
    return mem.base, mem.disp


def _two_operands(insn: capstone.CsInsn, *ids: int):
    return tuple(insn.operands) if insn.id in ids and len(insn.operands) == 2 else None


# Instruction forms: each says what the instruction reads or writes, or None when it has another form.
def _dword_load_from_rip(insn: capstone.CsInsn) -> Optional[int]:
    """``mov r32, dword [rip + disp]``: the address loaded from."""
    ops = _two_operands(insn, x86.X86_INS_MOV)
    if ops is None or _register(ops[0]) is None or ops[1].size != 4:
        return None
    return _rip_target(insn, ops[1])


def _store_to_rip(insn: capstone.CsInsn) -> Optional[int]:
    """``mov [rip + disp], reg`` or ``xchg [rip + disp], reg``: the address stored to."""
    ops = _two_operands(insn, x86.X86_INS_MOV, x86.X86_INS_XCHG)
    if ops is None:
        return None
    if insn.id == x86.X86_INS_XCHG and _register(ops[0]) is not None:
        ops = ops[::-1]  # xchg reg, [mem] is the same exchange
    return _rip_target(insn, ops[0]) if _register(ops[1]) is not None else None


def _guard_test(insn: capstone.CsInsn) -> Optional[int]:
    """``movzx reg, byte [rip + disp]`` or ``cmp byte [rip + disp], 0`` (a guard variable's first byte
    tested): the byte's address."""
    ops = _two_operands(insn, x86.X86_INS_MOVZX, x86.X86_INS_CMP)
    if ops is None:
        return None
    if insn.id == x86.X86_INS_MOVZX:
        return _rip_target(insn, ops[1]) if _register(ops[0]) is not None and ops[1].size == 1 else None
    if ops[0].size == 1 and ops[1].type == x86.X86_OP_IMM and ops[1].imm == 0:
        return _rip_target(insn, ops[0])
    return None


def _dword_read_from_rip(insn: capstone.CsInsn) -> Optional[int]:
    """``mov reg, dword [rip + disp]``, or ``cmp`` of ``dword [rip + disp]`` with an immediate or a
    register (either order): the dword's address."""
    ops = _two_operands(insn, x86.X86_INS_MOV, x86.X86_INS_CMP)
    if ops is None:
        return None
    if insn.id == x86.X86_INS_MOV:
        return _rip_target(insn, ops[1]) if _register(ops[0]) is not None and ops[1].size == 4 else None
    for memory_op, other in (ops, ops[::-1]):
        if memory_op.size == 4 and other.type in (x86.X86_OP_REG, x86.X86_OP_IMM):
            target = _rip_target(insn, memory_op)
            if target is not None:
                return target
    return None


def _qword_load_from_rip(insn: capstone.CsInsn) -> Optional[Tuple[int, int]]:
    """``mov r64, qword [rip + disp]`` (a GOT slot read): (the register loaded, the address)."""
    ops = _two_operands(insn, x86.X86_INS_MOV)
    if ops is None or _register(ops[0]) is None or ops[1].size != 8:
        return None
    target = _rip_target(insn, ops[1])
    return None if target is None else (ops[0].reg, target)


def _tls_qword_load(insn: capstone.CsInsn) -> Optional[Tuple[int, int, int]]:
    """``mov r64, qword fs:[base + disp]``: (the register loaded, base, disp)."""
    ops = _two_operands(insn, x86.X86_INS_MOV)
    if ops is None or _register(ops[0]) is None or ops[1].size != 8:
        return None
    found = _register_relative(ops[1], segment=x86.X86_REG_FS)
    return None if found is None else (ops[0].reg, found[0], found[1])


@dataclass
class _Access:
    """A ``lea`` (the address taken) or ``mov`` (the value loaded) into ``register``: ``where`` is the
    displacement from a base register, or the absolute address of a RIP-relative operand."""

    lea: bool
    register: int
    where: int
    size: int  # of the value loaded (mov)


def _lea_or_load(insn: capstone.CsInsn, base: Optional[Sequence[int]]) -> Optional[_Access]:
    """``lea``/``mov reg, [b + disp]`` with b one of ``base`` (None: ``[rip + disp]``)."""
    ops = _two_operands(insn, x86.X86_INS_LEA, x86.X86_INS_MOV)
    if ops is None or _register(ops[0]) is None:
        return None
    lea = insn.id == x86.X86_INS_LEA
    if base is None:
        where = _rip_target(insn, ops[1])
    else:
        found = _register_relative(ops[1])
        where = found[1] if found is not None and found[0] in base else None
    return None if where is None else _Access(lea, ops[0].reg, where, ops[1].size)


# -- torch.set_num_threads ---------------------------------------------------------------------------------
def num_threads_variable(image: ElfImage, memory: ProcessMemory) -> int:
    """Address of ``at::(anonymous)::num_threads``: the RIP-relative dword load that begins
    ``at::init_num_threads``, where ``at::set_num_threads`` stores (xchg or mov) too."""
    init = _function_code(image, memory, INIT_NUM_THREADS, 64)
    if init is None:
        raise CorruptObjectError(f"{INIT_NUM_THREADS} is not exported by {image.path}")
    code = [insn for insn in init.instructions if insn.id != x86.X86_INS_ENDBR64]
    target = _dword_load_from_rip(code[0]) if code else None
    if target is None:
        raise CorruptObjectError(f"{INIT_NUM_THREADS} does not begin with a load of a static (code {init.hex(16)})")
    if not _writable(image, target, 4):
        raise CorruptObjectError(f"{INIT_NUM_THREADS} loads from 0x{target:x}, outside the library's data")
    store = _function_code(image, memory, SET_NUM_THREADS, 256)
    if store is not None:
        stores = {address for address in map(_store_to_rip, store.instructions) if address is not None}
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
    guard check and the first dword comparison or load after it in ``DispatchStubImpl::try_choose_cpu_impl``."""
    for name in CHOOSE_CPU_IMPL:
        found = _function_code(image, memory, name, 160)
        if found is not None:
            break
    else:
        raise CorruptObjectError(f"no DispatchStubImpl::choose_cpu_impl is exported by {image.path}")
    code = found.instructions

    def guard_in_data(insn):
        address = _guard_test(insn)
        return address if address is not None and _writable(image, address, 1) else None

    at, guard = _first(code, guard_in_data)
    if guard is None:
        raise CorruptObjectError(f"{name}: no guard-variable check of a static found")

    def capability_in_data(insn):
        address = _dword_read_from_rip(insn)
        return address if address is not None and address != guard and _writable(image, address, 4) else None

    capability = _first(code, capability_in_data, at + 1)[1]
    if capability is None:
        raise CorruptObjectError(f"{name}: no read of the capability static after its guard check")
    return guard, capability


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
    """libgomp's ``omp_get_max_threads``: ``mov GOT(%rip), %r`` (the TLS offset of its thread data) and
    ``mov %fs:disp(%r), %task``; then the task's ICV, ``lea``/``mov disp(%task)``, and the global ICV,
    ``lea``/``mov gomp_global_icv(%rip)`` (after two ``lea``: one load through the chosen pointer)."""
    found = _function_code(image, memory, OMP_GET_MAX_THREADS, 96)
    if found is None:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS} is not defined in {image.path}")
    code = found.instructions
    at, tls = _first(code, _tls_qword_load)
    slot = _got_slot(image, code[:max(at, 0)], tls[1]) if tls is not None else None
    if slot is None:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: no load of libgomp's thread data through the TLS offset "
                                 f"(code {found.hex()})")
    task_register, _, task_offset = tls
    tpoff = memory.read_i64(slot)
    if not -(1 << 24) < tpoff < 0:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: TLS offset {tpoff} is not an initial-exec offset")
    value_offset, global_value, value_size = _icv_operands(found, at + 1, task_register)
    if value_size not in (4, 8):
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: nthreads-var is read as {value_size} bytes")
    if not _writable(image, global_value, value_size) or not 0 <= task_offset < 4096 or not 0 <= value_offset < 4096:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: offsets out of range (task {task_offset}, ICV {value_offset})")
    return OmpLayout(tpoff, task_offset, value_offset, global_value, value_size)


def _got_slot(image: ElfImage, code: Sequence[capstone.CsInsn], register: int) -> Optional[int]:
    """The GOT slot that the last load of ``register`` in ``code`` reads (None unless that is a
    ``mov r64, [rip + disp]`` of a slot inside the library)."""
    for insn in reversed(code):
        if register in insn.regs_access()[1]:
            load = _qword_load_from_rip(insn)
            return load[1] if load is not None and _loaded(image, load[1], 8) else None
    return None


def _icv_operands(found: _Code, start: int, task: int) -> Tuple[int, int, int]:
    """(offset of nthreads-var in the task, address of the global nthreads-var, its size), from the
    instructions of ``omp_get_max_threads`` from ``start`` on, ``task`` holding the thread's task."""
    code = found.instructions
    at_icv, icv = _first(code, lambda insn: _lea_or_load(insn, (task,)), start)
    at_glob, glob = _first(code, lambda insn: _lea_or_load(insn, None), start)
    if icv is None or glob is None:
        raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: no read of the task's or the global ICV (code {found.hex()})")
    if icv.lea and glob.lea:  # then one load through whichever pointer was chosen
        pointers = (icv.register, glob.register)
        final = _first(code, lambda insn: _lea_or_load(insn, pointers), max(at_icv, at_glob) + 1)[1]
        if final is None or final.lea:
            raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: no load of nthreads-var (code {found.hex()})")
        return icv.where + final.where, glob.where + final.where, final.size
    if not icv.lea and not glob.lea:
        return icv.where, glob.where, icv.size
    raise CorruptObjectError(f"{OMP_GET_MAX_THREADS}: the task's and the global ICV are read differently "
                             f"(code {found.hex()})")


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
