"""Captures a live process into an ELF core file without gdb.

    python -m volatility3_zen.capture [--pause] [--force] PID OUTPUT.core

Reads /proc/PID/maps and /proc/PID/mem (root, or ptrace access to the process) and writes an ET_CORE
file that ``ProcessCoreLayer`` (and gdb, readelf) open: NT_PRPSINFO, NT_AUXV and NT_FILE notes, then
one PT_LOAD per mapping.  Pages the kernel refuses to read (no read permission, a file mapping past
the end of its file, device memory) are left out of the file rather than written as zeros, so they
read as absent; [vvar] is skipped altogether.  Unlike gcore this needs no debugger and ignores
coredump_filter, but it records no registers (no NT_PRSTATUS): the process is not stopped unless
--pause is given, so the capture is not an instant snapshot of a running process.

The file is written next to OUTPUT under a temporary name and renamed when complete.
"""

import argparse
import contextlib
import errno
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator, List, Optional, Sequence

from volatility3_zen.zenlib.errors import ZenError
from volatility3_zen.zenlib.vol.layers.elfcore import CORE_OWNER, ELF64_EHDR, ELF64_NHDR, ELF64_PHDR, ELF_MAGIC, ELF_PRPSINFO, ELFCLASS64, ELFDATA2LSB, ET_CORE, EV_CURRENT, NT_AUXV, NT_FILE, NT_FILE_ENTRY, NT_FILE_HEADER, NT_PRPSINFO, PF_R, PF_W, PF_X, PN_XNUM, PT_LOAD, PT_NOTE

_MACHINES = {"x86_64": 62, "aarch64": 183}
_READ_CHUNK = 1 << 20
_SKIPPED_MAPPINGS = ("[vvar]", "[vvar_vclock]")  # kernel data pages that /proc/PID/mem cannot read
_UNREADABLE = (errno.EIO, errno.EFAULT)


class CaptureError(ZenError):
    """A capture that cannot proceed (no such process, no access, output exists)."""


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def is_file_backed(self) -> bool:
        return self.inode != 0


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD to write: [start, end) of the process, its first ``present`` bytes at ``offset``."""

    start: int
    end: int
    offset: int
    present: int
    flags: int


@dataclass(frozen=True)
class CaptureSummary:
    pid: int
    path: str
    segments: int
    bytes_present: int
    bytes_absent: int


def parse_maps(text: str) -> List[Mapping]:
    mappings = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(value, 16) for value in fields[0].split("-"))
        path = fields[5] if len(fields) > 5 else ""
        mappings.append(Mapping(start, end, fields[1], int(fields[2], 16), int(fields[4]), path))
    return mappings


def _note(note_type: int, desc: bytes) -> bytes:
    name = CORE_OWNER.encode() + b"\0"
    header = ELF64_NHDR.pack(n_namesz=len(name), n_descsz=len(desc), n_type=note_type)
    return header + _pad4(name) + _pad4(desc)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def prpsinfo_note(pid: int, stat: str, status: str, cmdline: bytes) -> bytes:
    """NT_PRPSINFO filled as the kernel fills it, from /proc/PID/stat, status and cmdline."""
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 of proc(5), the state
    state = fields[0]
    ids = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line[:4] in ("Uid:", "Gid:")}
    return _note(
        NT_PRPSINFO,
        ELF_PRPSINFO.pack(
            pr_state=max("RSDTZW".find(state), 0),
            pr_sname=state.encode()[:1],
            pr_zomb=int(state == "Z"),
            pr_nice=int(fields[16]),
            pr_flag=int(fields[6]),
            pr_uid=ids["Uid"],
            pr_gid=ids["Gid"],
            pr_pid=pid,
            pr_ppid=int(fields[1]),
            pr_pgrp=int(fields[2]),
            pr_sid=int(fields[3]),
            pr_fname=comm.encode()[:15],
            pr_psargs=cmdline[:79].replace(b"\0", b" ").rstrip(),
        ),
    )


def file_note(mappings: Sequence[Mapping], page_size: int) -> bytes:
    files = [mapping for mapping in mappings if mapping.is_file_backed]
    entries = b"".join(
        NT_FILE_ENTRY.pack(start=m.start, end=m.end, page_offset=m.offset // page_size) for m in files
    )
    paths = b"".join(os.fsencode(m.path) + b"\0" for m in files)
    return _note(NT_FILE, NT_FILE_HEADER.pack(count=len(files), page_size=page_size) + entries + paths)


def _flags(perms: str) -> int:
    return (PF_R if perms[0] == "r" else 0) | (PF_W if perms[1] == "w" else 0) | (PF_X if perms[2] == "x" else 0)


def _pread(fd: int, size: int, address: int) -> bytes:
    """Reads process memory; b"" when the page at ``address`` cannot be read.  A short result means
    the page after it cannot."""
    try:
        data = os.pread(fd, size, address)
    except OSError as excp:
        if excp.errno in _UNREADABLE:
            return b""
        raise
    if not data:  # unreadable pages fail with EIO; end of file means the address space is gone
        raise CaptureError("the process exited during the capture")
    return data


def copy_mapping(mem_fd: int, mapping: Mapping, out: BinaryIO, page_size: int) -> List[Segment]:
    """Copies the readable pages of ``mapping`` to ``out`` and returns the segments describing them.

    Usually that is one segment: all of the mapping, or a readable head followed by an absent tail
    (p_filesz < p_memsz).  Readable pages after an unreadable run start a new segment, so that
    nothing is misplaced and nothing is invented.
    """
    flags = _flags(mapping.perms)
    if not flags & PF_R:
        return [Segment(mapping.start, mapping.end, out.tell(), 0, flags)]
    segments = []
    start, offset, present, in_gap = mapping.start, out.tell(), 0, False
    address = mapping.start
    while address < mapping.end:
        data = _pread(mem_fd, min(_READ_CHUNK, mapping.end - address), address)
        if not data:
            address += page_size
            in_gap = True
            continue
        if in_gap:
            segments.append(Segment(start, address, offset, present, flags))
            start, offset, present, in_gap = address, out.tell(), 0, False
        out.write(data)
        present += len(data)
        address += len(data)
    segments.append(Segment(start, mapping.end, offset, present, flags))
    return segments


def _elf_header(machine: int, phoff: int, phnum: int) -> bytes:
    ident = ELF_MAGIC + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    return ELF64_EHDR.pack(
        e_ident=ident,
        e_type=ET_CORE,
        e_machine=machine,
        e_version=EV_CURRENT,
        e_entry=0,
        e_phoff=phoff,
        e_shoff=0,
        e_flags=0,
        e_ehsize=ELF64_EHDR.size,
        e_phentsize=ELF64_PHDR.size,
        e_phnum=phnum,
        e_shentsize=0,
        e_shnum=0,
        e_shstrndx=0,
    )


def _program_header(p_type: int, flags: int, offset: int, vaddr: int, filesz: int, memsz: int, align: int) -> bytes:
    return ELF64_PHDR.pack(
        p_type=p_type,
        p_flags=flags,
        p_offset=offset,
        p_vaddr=vaddr,
        p_paddr=0,
        p_filesz=filesz,
        p_memsz=memsz,
        p_align=align,
    )


def _align(value: int, alignment: int) -> int:
    return value + -value % alignment


def write_core(pid: int, mem_fd: int, mappings: Sequence[Mapping], notes: bytes, out: BinaryIO) -> List[Segment]:
    """Writes the core: ELF header, notes, program headers, then the memory.

    The headers come first so that a truncated copy of the file still opens.  The number of segments
    is only known once every mapping has been read (unreadable pages split a mapping), so room for
    two per mapping is reserved; a process that needs more gets its program headers at the end.
    """
    page_size = os.sysconf("SC_PAGE_SIZE")
    mappings = [mapping for mapping in mappings if mapping.path not in _SKIPPED_MAPPINGS]
    reserved_offset = _align(ELF64_EHDR.size + len(notes), 8)
    reserved = 1 + 2 * len(mappings)
    out.seek(_align(reserved_offset + reserved * ELF64_PHDR.size, page_size))
    segments = [segment for mapping in mappings for segment in copy_mapping(mem_fd, mapping, out, page_size)]
    phnum = 1 + len(segments)
    if phnum >= PN_XNUM:
        raise CaptureError(f"process {pid} has too many mappings ({len(segments)}) for an ELF core")
    phoff = reserved_offset if phnum <= reserved else _align(out.tell(), 8)
    out.seek(phoff)
    out.write(_program_header(PT_NOTE, 0, ELF64_EHDR.size, 0, len(notes), 0, 4))
    for s in segments:
        out.write(_program_header(PT_LOAD, s.flags, s.offset, s.start, s.present, s.end - s.start, page_size))
    out.seek(0)
    out.write(_elf_header(_MACHINES.get(os.uname().machine, _MACHINES["x86_64"]), phoff, phnum))
    out.write(notes)
    return segments


def _read_proc(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as proc_file:
        return proc_file.read()


def _open_mem(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except FileNotFoundError:
        raise CaptureError(f"no process with PID {pid}") from None
    except PermissionError:
        raise CaptureError(
            f"permission denied reading /proc/{pid}/mem: run as root, or as the process's user with ptrace"
            " allowed (kernel.yama.ptrace_scope)"
        ) from None


def _notes(pid: int, mappings: Sequence[Mapping]) -> bytes:
    stat, status = _read_proc(pid, "stat").decode(), _read_proc(pid, "status").decode()
    return (
        prpsinfo_note(pid, stat, status, _read_proc(pid, "cmdline"))
        + _note(NT_AUXV, _read_proc(pid, "auxv"))
        + file_note(mappings, os.sysconf("SC_PAGE_SIZE"))
    )


def _task_states(pid: int) -> List[str]:
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = _read_proc(pid, f"task/{task}/stat").decode()
        except FileNotFoundError:  # the thread exited meanwhile
            continue
        states.append(stat[stat.rindex(")") + 2])
    return states


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """Stops every thread of the process for the capture; resumes it unless it was stopped before."""
    was_stopped = all(state in "tT" for state in _task_states(pid))
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while not all(state in "tT" for state in _task_states(pid)):
            if time.monotonic() > deadline:
                raise CaptureError(f"process {pid} did not stop within 5 s")
            time.sleep(0.001)
        yield
    finally:
        if not was_stopped:
            os.kill(pid, signal.SIGCONT)


def _publish(temp_path: str, output: str, force: bool) -> None:
    """Moves the finished core into place; without ``force`` never replaces an existing file."""
    if force:
        os.replace(temp_path, output)
        return
    try:
        os.link(temp_path, output)  # atomic, and fails if ``output`` appeared meanwhile
    except FileExistsError:
        raise CaptureError(f"{output} exists (use --force to replace it)") from None
    except OSError:  # a file system without hard links
        if os.path.exists(output):
            raise CaptureError(f"{output} exists (use --force to replace it)") from None
        os.rename(temp_path, output)
        return
    finally:
        if os.path.exists(temp_path):
            os.unlink(temp_path)


def capture(pid: int, output: str, force: bool = False, pause: bool = False) -> CaptureSummary:
    """Writes an ELF core of process ``pid`` to ``output``; raises CaptureError with a one-line reason."""
    if os.path.exists(output) and not force:
        raise CaptureError(f"{output} exists (use --force to replace it)")
    mem_fd = _open_mem(pid)
    try:
        with _stopped(pid) if pause else contextlib.nullcontext():
            mappings = parse_maps(_read_proc(pid, "maps").decode())
            notes = _notes(pid, mappings)
            fd, temp_path = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(output)), prefix=".capture-")
            try:
                with os.fdopen(fd, "wb") as out:
                    segments = write_core(pid, mem_fd, mappings, notes, out)
            except BaseException:
                os.unlink(temp_path)
                raise
    except (FileNotFoundError, ProcessLookupError):
        if not os.path.exists(f"/proc/{pid}"):
            raise CaptureError(f"process {pid} exited during the capture") from None
        raise
    finally:
        os.close(mem_fd)
    _publish(temp_path, output, force)
    present = sum(s.present for s in segments)
    return CaptureSummary(pid, output, len(segments), present, sum(s.end - s.start for s in segments) - present)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m volatility3_zen.capture", description="Capture a live process into an ELF core file."
    )
    parser.add_argument("pid", type=int, metavar="PID")
    parser.add_argument("output", metavar="OUTPUT.core")
    parser.add_argument("--pause", action="store_true", help="stop the process (SIGSTOP) during the capture")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)
    try:
        summary = capture(args.pid, args.output, force=args.force, pause=args.pause)
    except (CaptureError, OSError) as excp:
        print(f"capture: error: {excp}", file=sys.stderr)
        return 1
    print(
        f"captured PID {summary.pid} into {summary.path}: {summary.segments} segments,"
        f" {summary.bytes_present} bytes, {summary.bytes_absent} bytes unreadable"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
