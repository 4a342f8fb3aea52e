"""ELF images as they lie in a process's memory (not on disk).

The loader maps the ELF header and program headers with the first PT_LOAD, and glibc relocates the
dynamic section in place, so a loaded library can be queried for exported symbols with no file at hand:
PT_DYNAMIC -> DT_GNU_HASH / DT_SYMTAB / DT_STRTAB.  Section headers are not loaded; ``section_from_file``
reads them from the on-disk file only when its build ID matches the one in memory.
"""

import os
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import MemoryReadError
from .memory import MemoryRegion, ProcessMemory

# Declarative ELF64 little-endian structures (what we read, in one place).
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # ident type machine version entry phoff shoff flags ehsize phentsize phnum shentsize shnum shstrndx
PHDR = struct.Struct("<IIQQQQQQ")  # type flags offset vaddr paddr filesz memsz align
DYN = struct.Struct("<qQ")  # tag value
SYM = struct.Struct("<IBBHQQ")  # name info other shndx value size
NHDR = struct.Struct("<III")  # namesz descsz type

ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_NOTE = 1, 2, 4
DT_NULL, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_SONAME, DT_GNU_HASH = 0, 5, 6, 10, 14, 0x6FFFFEF5
NT_GNU_BUILD_ID = 3
# A GNU hash chain is a few entries long; a walk longer than this is reading garbage (a corrupt table in
# a large zero-filled mapping would otherwise be walked to its end).
_MAX_CHAIN = 1 << 16


@dataclass
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


@dataclass
class ElfImage:
    """One loaded ELF object (executable or shared library) of a process."""

    path: str
    base: int  # address of the ELF header in memory
    bias: int  # load bias: runtime address = link-time vaddr + bias
    elf_type: int
    segments: List[Segment]
    dynamic: Dict[int, int] = field(default_factory=dict)
    soname: Optional[str] = None
    build_id: Optional[bytes] = None
    _memory: Optional[ProcessMemory] = field(default=None, repr=False)
    _symbol_cache: Dict[str, Optional[Tuple[int, int]]] = field(default_factory=dict, repr=False)

    def runtime(self, link_address: int) -> int:
        return link_address + self.bias

    # -- dynamic symbols ---------------------------------------------------------------------------
    def _dyn_ptr(self, tag: int) -> Optional[int]:
        value = self.dynamic.get(tag)
        if value is None:
            return None
        # glibc relocates these d_ptr entries in place; the vDSO and some loaders do not.
        return value if value >= self.bias else value + self.bias

    def lookup(self, name: str) -> Optional[Tuple[int, int]]:
        """(runtime address, size) of a defined dynamic symbol, through the GNU hash table."""
        if name in self._symbol_cache:
            return self._symbol_cache[name]
        result = None
        try:
            result = self._gnu_lookup(name)
        except (MemoryReadError, struct.error):
            result = None
        self._symbol_cache[name] = result
        return result

    def _gnu_lookup(self, name: str) -> Optional[Tuple[int, int]]:
        mem = self._memory
        hash_addr, symtab, strtab = self._dyn_ptr(DT_GNU_HASH), self._dyn_ptr(DT_SYMTAB), self._dyn_ptr(DT_STRTAB)
        if not (hash_addr and symtab and strtab):
            return None
        nbuckets, symoffset, bloom_size, _shift = struct.unpack("<IIII", mem.read(hash_addr, 16))
        if nbuckets == 0:  # an empty (or corrupt) table: no symbol can be found through it
            return None
        buckets_addr = hash_addr + 16 + bloom_size * 8
        chain_addr = buckets_addr + nbuckets * 4
        h = 5381
        encoded = name.encode()
        for c in encoded:
            h = (h * 33 + c) & 0xFFFFFFFF
        index = mem.read_u32(buckets_addr + (h % nbuckets) * 4)
        if index < symoffset:
            return None
        for _ in range(_MAX_CHAIN):
            chain_hash = mem.read_u32(chain_addr + (index - symoffset) * 4)
            if (chain_hash | 1) == (h | 1):
                st_name, _info, _other, shndx, value, size = SYM.unpack(mem.read(symtab + index * SYM.size, SYM.size))
                if shndx != 0 and mem.read_cstring(strtab + st_name, len(encoded) + 1) == encoded:
                    return value + self.bias, size
            if chain_hash & 1:
                return None
            index += 1
        return None

    # -- on-disk sections, only for a matching file -------------------------------------------------
    def section_from_file(self, section: str) -> Optional[Tuple[int, int]]:
        """(runtime address, size) of a section, read from the on-disk file if its build ID matches."""
        if not self.build_id or not os.path.isfile(self.path):
            return None
        try:
            from elftools.elf.elffile import ELFFile

            with open(self.path, "rb") as fh:
                elf = ELFFile(fh)
                note_section = elf.get_section_by_name(".note.gnu.build-id")
                if note_section is None:
                    return None
                ids = [n["n_desc"] for n in note_section.iter_notes() if n["n_type"] == "NT_GNU_BUILD_ID"]
                if not ids or bytes.fromhex(ids[0]) != self.build_id:
                    return None
                sec = elf.get_section_by_name(section)
                if sec is None:
                    return None
                return sec["sh_addr"] + self.bias, sec["sh_size"]
        except Exception:  # an unreadable or odd file only means this method does not apply
            return None


def _parse_image(memory: ProcessMemory, region: MemoryRegion) -> Optional[ElfImage]:
    head = memory.read(region.start, EHDR.size)
    if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
        return None
    (_ident, etype, _machine, _version, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_rest) = EHDR.unpack(head)
    if etype not in (ET_EXEC, ET_DYN) or phentsize != PHDR.size or not 0 < phnum < 128:
        return None
    raw = memory.read(region.start + phoff, phnum * PHDR.size)
    segments = [Segment(t, fl, off, va, fs, ms) for (t, fl, off, va, _pa, fs, ms, _al) in PHDR.iter_unpack(raw)]
    loads = [s for s in segments if s.type == PT_LOAD]
    if not loads:
        return None
    first = min(loads, key=lambda s: s.vaddr)
    bias = region.start - (first.vaddr - first.vaddr % 4096) if etype == ET_DYN else 0
    image = ElfImage(path=region.path, base=region.start, bias=bias, elf_type=etype, segments=segments, _memory=memory)
    for seg in segments:
        if seg.type == PT_DYNAMIC:
            try:
                data = memory.read(seg.vaddr + bias, min(seg.memsz, 4096))
            except MemoryReadError:
                continue
            for tag, value in DYN.iter_unpack(data[: len(data) - len(data) % DYN.size]):
                if tag == DT_NULL:
                    break
                image.dynamic.setdefault(tag, value)
        elif seg.type == PT_NOTE:
            image.build_id = image.build_id or _read_build_id(memory, seg.vaddr + bias, seg.filesz)
    soname_off, strtab = image.dynamic.get(DT_SONAME), image._dyn_ptr(DT_STRTAB)
    if soname_off is not None and strtab:
        try:
            image.soname = memory.read_cstring(strtab + soname_off, 256).decode("utf-8", "replace")
        except MemoryReadError:
            pass
    return image


def _read_build_id(memory: ProcessMemory, address: int, size: int) -> Optional[bytes]:
    try:
        data = memory.read(address, min(size, 4096))
    except MemoryReadError:
        return None
    pos = 0
    while pos + NHDR.size <= len(data):
        namesz, descsz, ntype = NHDR.unpack_from(data, pos)
        name_start = pos + NHDR.size
        desc_start = name_start + ((namesz + 3) & ~3)
        if ntype == NT_GNU_BUILD_ID and data[name_start : name_start + namesz].rstrip(b"\0") == b"GNU":
            return data[desc_start : desc_start + descsz]
        pos = desc_start + ((descsz + 3) & ~3)
    return None


def loaded_images(memory: ProcessMemory) -> Iterator[ElfImage]:
    """Every ELF object mapped from a file (its header is at the start of a file offset 0 mapping)."""
    for region in memory.regions:
        if not region.path or region.path.startswith("[") or region.file_offset != 0 or not region.readable:
            continue
        try:
            image = _parse_image(memory, region)
        except (MemoryReadError, struct.error):
            continue
        if image is not None:
            yield image
