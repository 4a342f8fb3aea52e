"""Single-process ELF core files as a Volatility layer.

A process core (``gcore``, a kernel core dump, ``python -m volatility3_zen.capture``) is an ET_CORE ELF
file whose PT_LOAD segments hold a process's memory at their *virtual* addresses (p_vaddr); p_paddr is
0 throughout.  Volatility's own Elf64Stacker accepts such a file and maps every segment at p_paddr,
all at address 0, which silently yields garbage.  ``ProcessCoreStacker`` runs before it, claims process
cores only, and leaves physical-memory ELF dumps (QEMU ``dump-guest-memory``, kdump) to Elf64Stacker.

The notes of a process core describe the process: NT_PRPSINFO (pid, name, arguments), NT_FILE (the
file-backed mappings) and NT_AUXV (the auxiliary vector).
"""

import bisect
import collections
import enum
import functools
import logging
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from volatility3.framework import constants, exceptions, interfaces
from volatility3.framework.layers import linear, segmented

from ...readers.memory import MemoryRegion

vollog = logging.getLogger(__name__)


class ElfStruct:
    """A little-endian C structure declared as (field, struct format) pairs; a ``None`` field is padding.

    Declaring each structure once serves both directions: the layer unpacks, the capture packs.
    """

    def __init__(self, name: str, fields: Sequence[Tuple[Optional[str], str]]) -> None:
        self.name = name
        self._struct = struct.Struct("<" + "".join(fmt for _, fmt in fields))
        self._tuple = collections.namedtuple(name, [field for field, _ in fields if field])
        self.size = self._struct.size

    def unpack(self, data: bytes, offset: int = 0) -> NamedTuple:
        return self._tuple._make(self._struct.unpack_from(data, offset))

    def pack(self, **fields) -> bytes:
        """Packs a structure; every field must be given."""
        return self._struct.pack(*self._tuple(**fields))


ELF64_EHDR = ElfStruct(
    "Elf64_Ehdr",
    [
        ("e_ident", "16s"),
        ("e_type", "H"),
        ("e_machine", "H"),
        ("e_version", "I"),
        ("e_entry", "Q"),
        ("e_phoff", "Q"),
        ("e_shoff", "Q"),
        ("e_flags", "I"),
        ("e_ehsize", "H"),
        ("e_phentsize", "H"),
        ("e_phnum", "H"),
        ("e_shentsize", "H"),
        ("e_shnum", "H"),
        ("e_shstrndx", "H"),
    ],
)
ELF64_PHDR = ElfStruct(
    "Elf64_Phdr",
    [
        ("p_type", "I"),
        ("p_flags", "I"),
        ("p_offset", "Q"),
        ("p_vaddr", "Q"),
        ("p_paddr", "Q"),
        ("p_filesz", "Q"),
        ("p_memsz", "Q"),
        ("p_align", "Q"),
    ],
)
# Only read for PN_XNUM: section header 0 then holds the real program header count in sh_info.
ELF64_SHDR = ElfStruct(
    "Elf64_Shdr",
    [
        ("sh_name", "I"),
        ("sh_type", "I"),
        ("sh_flags", "Q"),
        ("sh_addr", "Q"),
        ("sh_offset", "Q"),
        ("sh_size", "Q"),
        ("sh_link", "I"),
        ("sh_info", "I"),
        ("sh_addralign", "Q"),
        ("sh_entsize", "Q"),
    ],
)
ELF64_NHDR = ElfStruct("Elf64_Nhdr", [("n_namesz", "I"), ("n_descsz", "I"), ("n_type", "I")])
# struct elf_prpsinfo of 64-bit Linux (x86_64, aarch64): 136 bytes.
ELF_PRPSINFO = ElfStruct(
    "elf_prpsinfo",
    [
        ("pr_state", "b"),
        ("pr_sname", "c"),
        ("pr_zomb", "b"),
        ("pr_nice", "b"),
        (None, "4x"),
        ("pr_flag", "Q"),
        ("pr_uid", "I"),
        ("pr_gid", "I"),
        ("pr_pid", "i"),
        ("pr_ppid", "i"),
        ("pr_pgrp", "i"),
        ("pr_sid", "i"),
        ("pr_fname", "16s"),
        ("pr_psargs", "80s"),
    ],
)
# NT_FILE: a header, ``count`` entries, then ``count`` NUL-terminated paths.
NT_FILE_HEADER = ElfStruct("nt_file_header", [("count", "Q"), ("page_size", "Q")])
NT_FILE_ENTRY = ElfStruct("nt_file_entry", [("start", "Q"), ("end", "Q"), ("page_offset", "Q")])
AUXV_ENTRY = ElfStruct("Elf64_auxv_t", [("a_type", "Q"), ("a_val", "Q")])

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_CORE = 4
PN_XNUM = 0xFFFF
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRPSINFO = 3
NT_AUXV = 6
NT_FILE = 0x46494C45
CORE_OWNER = "CORE"

# Notes only a process core has, and note owners only a physical-memory dump has.
_PROCESS_NOTE_TYPES = frozenset({NT_PRPSINFO, NT_AUXV, NT_FILE})
_PHYSICAL_DUMP_OWNERS = frozenset({"QEMU", "VMCOREINFO"})
# Note segments are a few KiB to a few MiB; a larger claim is garbage and is not read in full.
_MAX_NOTES_SIZE = 64 << 20
# Volatility caches the 512 latest reads of a layer (LinearlyMappedLayer.read is an lru_cache).  That
# serves the small, repeated reads of objects, but the zen readers read whole mappings in 1 MiB
# chunks and keep them in their own cache: through Volatility's cache such chunks would be held twice
# (up to 512 MiB) and reads would be 10-20x slower, every chunk needing fresh memory.
_UNCACHED_READ_SIZE = 64 << 10
_uncached_read = getattr(linear.LinearlyMappedLayer.read, "__wrapped__", linear.LinearlyMappedLayer.read)


class AuxType(enum.IntEnum):
    """The auxiliary vector entries the layer uses (``auxv`` is keyed by plain ints)."""

    AT_NULL = 0
    AT_PHDR = 3
    AT_PAGESZ = 6
    AT_BASE = 7
    AT_ENTRY = 9
    AT_EXECFN = 31
    AT_SYSINFO_EHDR = 33


class ElfCoreFormatException(exceptions.LayerException):
    """Thrown when a file is not a 64-bit little-endian ELF core file."""


@dataclass(frozen=True)
class CoreSegment:
    """One PT_LOAD: ``size`` bytes of the process at ``address``, the first ``present`` of them in the
    file at ``offset`` (fewer than p_filesz when the file is truncated)."""

    address: int
    size: int
    offset: int
    present: int
    flags: int

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def perms(self) -> str:
        """Permissions as /proc/PID/maps writes them; a core does not record whether a mapping was
        shared, so the last letter is always "p"."""
        letters = ((PF_R, "r"), (PF_W, "w"), (PF_X, "x"))
        return "".join(letter if self.flags & flag else "-" for flag, letter in letters) + "p"


@dataclass(frozen=True)
class FileMapping:
    """One NT_FILE entry: [start, end) maps ``path`` from byte ``offset``."""

    start: int
    end: int
    offset: int
    path: str


@dataclass(frozen=True)
class CoreNote:
    owner: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class ElfCore:
    """What the headers and notes of an ET_CORE file say; the segment data stays in the file."""

    segments: Tuple[CoreSegment, ...]  # PT_LOADs sorted by address, without overlaps
    notes: Tuple[CoreNote, ...]
    missing: int  # bytes the PT_LOADs claim beyond the end of a truncated file
    has_physical_addresses: bool  # some PT_LOAD has p_paddr != 0

    def core_notes(self, note_type: int) -> List[bytes]:
        return [note.desc for note in self.notes if note.owner == CORE_OWNER and note.type == note_type]

    @property
    def is_process_core(self) -> bool:
        if any(note.owner in _PHYSICAL_DUMP_OWNERS for note in self.notes):
            return False
        if any(note.owner == CORE_OWNER and note.type in _PROCESS_NOTE_TYPES for note in self.notes):
            return True
        # gcore writes its notes after the memory, so a truncated gcore file has lost them.  Its
        # segments still tell: several virtual ranges and no physical address anywhere.
        return len(self.segments) > 1 and not self.has_physical_addresses


def read_elf_core(layer: interfaces.layers.DataLayerInterface) -> ElfCore:
    """Parses the program headers and notes of the ELF core file in ``layer``.

    Raises ElfCoreFormatException when the file is not a 64-bit little-endian ELF core.  Notes that
    do not parse are dropped; segment data beyond the end of the file is counted as missing.
    """
    file_size = layer.maximum_address + 1
    ehdr = _read_struct(layer, ELF64_EHDR, 0)
    _check_ident(layer.name, ehdr)
    phdrs = _read_program_headers(layer, ehdr)
    loads = [phdr for phdr in phdrs if phdr.p_type == PT_LOAD]
    segments, missing = _segments(loads, file_size)
    notes = []
    for phdr in phdrs:
        if phdr.p_type == PT_NOTE:
            notes.extend(_parse_notes(_read_available(layer, phdr.p_offset, phdr.p_filesz)))
    return ElfCore(
        segments=tuple(segments),
        notes=tuple(notes),
        missing=missing,
        has_physical_addresses=any(phdr.p_paddr for phdr in loads),
    )


def _read_struct(layer: interfaces.layers.DataLayerInterface, elf_struct: ElfStruct, offset: int):
    try:
        return elf_struct.unpack(layer.read(offset, elf_struct.size))
    except exceptions.InvalidAddressException:
        raise ElfCoreFormatException(layer.name, f"{elf_struct.name} at 0x{offset:x} is beyond the end")


def _check_ident(layer_name: str, ehdr) -> None:
    ident = ehdr.e_ident
    if ident[:4] != ELF_MAGIC:
        raise ElfCoreFormatException(layer_name, "no ELF magic")
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
        raise ElfCoreFormatException(layer_name, "not a 64-bit little-endian ELF file")
    if ehdr.e_type != ET_CORE:
        raise ElfCoreFormatException(layer_name, f"ELF type {ehdr.e_type} is not ET_CORE")
    if ehdr.e_phentsize != ELF64_PHDR.size:
        raise ElfCoreFormatException(layer_name, f"program header size {ehdr.e_phentsize}")


def _read_program_headers(layer: interfaces.layers.DataLayerInterface, ehdr) -> list:
    count = ehdr.e_phnum
    if count == PN_XNUM and ehdr.e_shoff:
        count = _read_struct(layer, ELF64_SHDR, ehdr.e_shoff).sh_info
    try:
        table = layer.read(ehdr.e_phoff, count * ELF64_PHDR.size)
    except exceptions.InvalidAddressException:
        raise ElfCoreFormatException(layer.name, f"{count} program headers do not fit in the file")
    return [ELF64_PHDR.unpack(table, i * ELF64_PHDR.size) for i in range(count)]


def _segments(loads: list, file_size: int) -> Tuple[List[CoreSegment], int]:
    """PT_LOADs as segments sorted by address, and the number of bytes they lack beyond the end of
    a truncated file.  A segment overlapping the previous one (only in a corrupt file) is dropped."""
    segments: List[CoreSegment] = []
    missing = 0
    for phdr in sorted(loads, key=lambda phdr: phdr.p_vaddr):
        if segments and phdr.p_vaddr < segments[-1].end:
            vollog.debug(f"Dropping PT_LOAD at 0x{phdr.p_vaddr:x}: overlaps the previous segment")
            continue
        claimed = min(phdr.p_filesz, phdr.p_memsz)
        present = min(claimed, max(0, file_size - phdr.p_offset))
        missing += claimed - present
        segments.append(CoreSegment(phdr.p_vaddr, phdr.p_memsz, phdr.p_offset, present, phdr.p_flags))
    return segments, missing


def _read_available(layer: interfaces.layers.DataLayerInterface, offset: int, size: int) -> bytes:
    """Reads what the file holds of [offset, offset + size), capped at _MAX_NOTES_SIZE."""
    size = min(size, _MAX_NOTES_SIZE, max(0, layer.maximum_address + 1 - offset))
    return layer.read(offset, size) if size else b""


def _align4(size: int) -> int:
    return (size + 3) & ~3


def _parse_notes(data: bytes) -> Iterator[CoreNote]:
    """Walks a note segment; stops at the first note that does not fit (garbage or truncation)."""
    pos = 0
    while pos + ELF64_NHDR.size <= len(data):
        nhdr = ELF64_NHDR.unpack(data, pos)
        name_at = pos + ELF64_NHDR.size
        desc_at = name_at + _align4(nhdr.n_namesz)
        if desc_at + nhdr.n_descsz > len(data):
            vollog.debug(f"Note at offset {pos} of the note segment overruns it; ignoring the rest")
            return
        owner = data[name_at : name_at + nhdr.n_namesz].split(b"\0", 1)[0].decode("ascii", "replace")
        yield CoreNote(owner, nhdr.n_type, data[desc_at : desc_at + nhdr.n_descsz])
        pos = desc_at + _align4(nhdr.n_descsz)


def parse_nt_file(desc: bytes) -> List[FileMapping]:
    """Decodes an NT_FILE note; a note whose count disagrees with its size is corrupt and ignored."""
    if len(desc) < NT_FILE_HEADER.size:
        return []
    header = NT_FILE_HEADER.unpack(desc)
    names_at = NT_FILE_HEADER.size + header.count * NT_FILE_ENTRY.size
    paths = desc[names_at:].split(b"\0")[: header.count]
    if names_at > len(desc) or len(paths) < header.count:
        vollog.debug(f"Ignoring an NT_FILE note of {len(desc)} bytes that claims {header.count} mappings")
        return []
    mappings = []
    for i, raw_path in enumerate(paths):
        entry = NT_FILE_ENTRY.unpack(desc, NT_FILE_HEADER.size + i * NT_FILE_ENTRY.size)
        path = raw_path.decode("utf-8", "surrogateescape")
        mappings.append(FileMapping(entry.start, entry.end, entry.page_offset * header.page_size, path))
    return mappings


def parse_auxv(desc: bytes) -> Dict[int, int]:
    """Decodes an NT_AUXV note up to AT_NULL."""
    auxv = {}
    for offset in range(0, len(desc) - AUXV_ENTRY.size + 1, AUXV_ENTRY.size):
        entry = AUXV_ENTRY.unpack(desc, offset)
        if entry.a_type == AuxType.AT_NULL:
            break
        auxv[entry.a_type] = entry.a_val
    return auxv


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


@functools.lru_cache(maxsize=None)
def _warn_truncated(source: str, missing: int) -> None:
    """Warns once per file: automagic builds the layer twice (when stacking, then from the config)."""
    vollog.warning(f"{source} is truncated: {missing} bytes of process memory are missing and read as absent")


class ProcessCoreLayer(segmented.SegmentedLayer):
    """The virtual address space of one process, from an ELF core file.

    Only the bytes a PT_LOAD holds in the file are mapped: the tail of a segment whose p_filesz is
    smaller than p_memsz, a segment with p_filesz 0 and data cut off by truncation all read as
    absent (invalid addresses), never as zeros.  ``regions()`` still lists such segments, since the
    mapping existed in the process.
    """

    _version = (1, 0, 0)

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        """Reads like any Volatility layer; reads of 64 KiB or more bypass Volatility's read cache."""
        if length >= _UNCACHED_READ_SIZE:
            return _uncached_read(self, offset, length, pad)
        return super().read(offset, length, pad)

    def mapping(
        self, offset: int, length: int, ignore_errors: bool = False
    ) -> Iterator[Tuple[int, int, int, int, str]]:
        """As SegmentedLayer.mapping, without the empty run it yields (ignoring errors) when a
        segment starts exactly where the requested range ends."""
        for run in super().mapping(offset, length, ignore_errors):
            if run[1] or not length:
                yield run

    def _load_segments(self) -> None:
        base_layer = self.context.layers[self._base_layer]
        self._core = read_elf_core(base_layer)
        if self._core.missing:
            _warn_truncated(getattr(base_layer, "location", base_layer.name), self._core.missing)
        self._segments = [(s.address, s.offset, s.present, s.present) for s in self._core.segments if s.present]
        if not self._segments:
            raise ElfCoreFormatException(self.name, f"No process memory in {self._base_layer}")

    @functools.cached_property
    def _prpsinfo(self):
        for desc in self._core.core_notes(NT_PRPSINFO):
            if len(desc) >= ELF_PRPSINFO.size:
                return ELF_PRPSINFO.unpack(desc)
        return None

    @property
    def pid(self) -> int:
        """The process id, 0 when the core has no NT_PRPSINFO note."""
        return self._prpsinfo.pr_pid if self._prpsinfo else 0

    @property
    def process_name(self) -> str:
        """The kernel's name of the process (comm, at most 15 characters)."""
        return _c_string(self._prpsinfo.pr_fname) if self._prpsinfo else ""

    @property
    def command_line(self) -> str:
        """The first 79 bytes of the command line, arguments separated by spaces."""
        return _c_string(self._prpsinfo.pr_psargs).rstrip() if self._prpsinfo else ""

    @functools.cached_property
    def file_mappings(self) -> Tuple[FileMapping, ...]:
        """The file-backed mappings from NT_FILE, sorted by address."""
        mappings = [mapping for desc in self._core.core_notes(NT_FILE) for mapping in parse_nt_file(desc)]
        return tuple(sorted(mappings, key=lambda mapping: mapping.start))

    @functools.cached_property
    def auxv(self) -> Dict[int, int]:
        """The auxiliary vector (keys: AuxType values), empty without an NT_AUXV note."""
        notes = self._core.core_notes(NT_AUXV)
        return parse_auxv(notes[0]) if notes else {}

    def regions(self) -> List[MemoryRegion]:
        """Every mapping of the process, sorted by address, including those whose data is absent.

        Segments take their path from the NT_FILE entry they lie in; NT_FILE mappings that no
        segment covers are listed with perms "---p" (their permissions are unknown).
        """
        return list(self._regions)

    @functools.cached_property
    def _regions(self) -> Tuple[MemoryRegion, ...]:
        mappings = self.file_mappings
        mapping_starts = [mapping.start for mapping in mappings]
        regions = [self._segment_region(segment, mappings, mapping_starts) for segment in self._core.segments]
        segment_starts = [segment.address for segment in self._core.segments]
        for mapping in mappings:
            i = bisect.bisect_left(segment_starts, mapping.end) - 1
            if i < 0 or self._core.segments[i].end <= mapping.start:
                regions.append(MemoryRegion(mapping.start, mapping.end, "---p", mapping.path, mapping.offset))
        return tuple(sorted(regions, key=lambda region: region.start))

    def _segment_region(
        self, segment: CoreSegment, mappings: Sequence[FileMapping], mapping_starts: List[int]
    ) -> MemoryRegion:
        i = bisect.bisect_right(mapping_starts, segment.address) - 1
        if i >= 0 and segment.address < mappings[i].end:
            mapping = mappings[i]
            offset = mapping.offset + segment.address - mapping.start
            return MemoryRegion(segment.address, segment.end, segment.perms, mapping.path, offset)
        return MemoryRegion(segment.address, segment.end, segment.perms, self._pseudo_path(segment))

    def _pseudo_path(self, segment: CoreSegment) -> str:
        """Names the anonymous mappings the auxiliary vector identifies, as /proc/PID/maps does."""
        if segment.address == self.auxv.get(AuxType.AT_SYSINFO_EHDR):
            return "[vdso]"
        if segment.address <= self.auxv.get(AuxType.AT_EXECFN, -1) < segment.end:
            return "[stack]"
        return ""


class ProcessCoreStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks a ProcessCoreLayer on ELF cores of a single process.

    Runs before Volatility's Elf64Stacker (stack_order 10), which accepts the same files but maps
    them at their physical addresses, all 0 in a process core.
    """

    stack_order = 9

    @classmethod
    def stack(
        cls,
        context: interfaces.context.ContextInterface,
        layer_name: str,
        progress_callback: constants.ProgressCallback = None,
    ) -> Optional[interfaces.layers.DataLayerInterface]:
        try:
            core = read_elf_core(context.layers[layer_name])
            if not core.is_process_core:
                vollog.log(constants.LOGLEVEL_VVVV, f"{layer_name} is an ELF core but not of a single process")
                return None
            new_name = context.layers.free_layer_name("ProcessCoreLayer")
            context.config[interfaces.configuration.path_join(new_name, "base_layer")] = layer_name
            return ProcessCoreLayer(context, new_name, new_name)
        except (ElfCoreFormatException, exceptions.InvalidAddressException) as excp:
            vollog.log(constants.LOGLEVEL_VVVV, f"Not a process core: {excp}")
            return None
