"""One process's virtual memory, independent of how it was acquired.

Readers above this module (cpython/, torch/) see only ``ProcessMemory``: a list of mapped regions and
``read``.  Reads are served from a chunk cache filled by a backend in large pieces, because a memory
image is read fastest in big runs and the object walk touches the same heap pages many times.
"""

import bisect
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import MemoryReadError

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


@dataclass(frozen=True)
class MemoryRegion:
    """A mapping of the process (one VMA / one core segment)."""

    start: int
    end: int  # exclusive
    perms: str  # "rwxp" style, '-' where a permission is missing
    path: str = ""  # backing file, "[heap]", "[stack]", ... ; "" for anonymous memory
    file_offset: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[:1] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"


# A backend reads ``size`` bytes at ``address`` and returns the bytes (zero-filled where absent) and the
# sorted list of [start, end) runs that really are present in the image.
ReadRunFn = Callable[[int, int], Tuple[bytes, List[Tuple[int, int]]]]


class ProcessMemory:
    """Virtual memory of one process: regions plus cached reads.

    ``read`` raises ``MemoryReadError`` when any requested byte is outside every region or absent from
    the image (swapped out, not captured); ``read_padded`` zero-fills instead.
    """

    CHUNK = 1 << 20

    def __init__(self, regions: Iterable[MemoryRegion], read_run: ReadRunFn, pid: int = 0, name: str = ""):
        self.regions: List[MemoryRegion] = sorted(regions, key=lambda r: r.start)
        self._starts = [r.start for r in self.regions]
        self._read_run = read_run
        self.pid = pid
        self.name = name
        # chunk base -> (bytes, present runs as a sorted flat list of (start, end) absolute addresses)
        self._chunks: Dict[int, Tuple[bytes, List[Tuple[int, int]]]] = {}
        self.bytes_loaded = 0

    # -- regions ---------------------------------------------------------------------------------
    def region_at(self, address: int) -> Optional[MemoryRegion]:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address < self.regions[i].end:
            return self.regions[i]
        return None

    def is_mapped(self, address: int) -> bool:
        return self.region_at(address) is not None

    # -- reads -----------------------------------------------------------------------------------
    def _chunk(self, base: int) -> Tuple[bytes, List[Tuple[int, int]]]:
        chunk = self._chunks.get(base)
        if chunk is None:
            region = self.region_at(base)
            # Clip the chunk to regions so that the backend is never asked for unmapped memory.
            data, present = self._read_run(base, self.CHUNK) if region is not None else (b"", [])
            if region is None:
                # The chunk starts in a hole; read from the next region inside the chunk, if any.
                i = bisect.bisect_right(self._starts, base)
                if i < len(self.regions) and self.regions[i].start < base + self.CHUNK:
                    data, present = self._read_run(base, self.CHUNK)
                else:
                    data, present = bytes(self.CHUNK), []
            present = [(max(s, base), min(e, base + self.CHUNK)) for s, e in present if e > base and s < base + self.CHUNK]
            chunk = (data, present)
            self._chunks[base] = chunk
            self.bytes_loaded += len(data)
        return chunk

    def _present(self, present: Sequence[Tuple[int, int]], start: int, end: int) -> bool:
        for s, e in present:
            if s <= start and end <= e:
                return True
        # A read may straddle two adjacent present runs.
        pos = start
        for s, e in present:
            if s <= pos < e:
                pos = e
                if pos >= end:
                    return True
        return False

    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        out = []
        pos = address
        end = address + size
        while pos < end:
            base = pos - (pos % self.CHUNK)
            data, present = self._chunk(base)
            take_end = min(end, base + self.CHUNK)
            if not self._present(present, pos, take_end):
                raise MemoryReadError(address, size, "not present in the image")
            out.append(data[pos - base : take_end - base])
            pos = take_end
        return out[0] if len(out) == 1 else b"".join(out)

    def read_padded(self, address: int, size: int) -> bytes:
        out = []
        pos = address
        end = address + size
        while pos < end:
            base = pos - (pos % self.CHUNK)
            data, _present = self._chunk(base)
            take_end = min(end, base + self.CHUNK)
            out.append(data[pos - base : take_end - base])
            pos = take_end
        return b"".join(out)

    def read_u64(self, address: int) -> int:
        return _U64.unpack(self.read(address, 8))[0]

    def read_i64(self, address: int) -> int:
        return _I64.unpack(self.read(address, 8))[0]

    def read_u32(self, address: int) -> int:
        return _U32.unpack(self.read(address, 4))[0]

    def read_i32(self, address: int) -> int:
        return _I32.unpack(self.read(address, 4))[0]

    def read_cstring(self, address: int, limit: int = 4096) -> bytes:
        data = self.read_padded(address, limit)
        nul = data.find(b"\0")
        return data if nul < 0 else data[:nul]

    def drop_cache(self) -> None:
        self._chunks.clear()
