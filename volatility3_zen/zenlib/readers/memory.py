"""One process's virtual memory, independent of how it was acquired.

Readers above this module (cpython/, torch/) see only ``ProcessMemory``: a list of mapped regions and
``read``.  Reads are served from a chunk cache filled by a backend in large pieces, because a memory
image is read fastest in big runs and the object walk touches the same heap pages many times.
"""

import bisect
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import MemoryReadError

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


_HOLE: Tuple[bytes, List[Tuple[int, int]], bool] = (bytes(1 << 20), [], False)  # an unmapped chunk, shared


class ProcessMemory:
    """Virtual memory of one process: regions plus cached reads.

    ``read`` raises ``MemoryReadError`` when any requested byte is outside every region or absent from
    the image (swapped out, not captured); ``read_padded`` zero-fills instead.
    """

    CHUNK = len(_HOLE[0])

    def __init__(self, regions: Iterable[MemoryRegion], read_run: ReadRunFn, pid: int = 0, name: str = ""):
        self.regions: List[MemoryRegion] = sorted(regions, key=lambda r: r.start)
        self._starts = [r.start for r in self.regions]
        self._read_run = read_run
        self.pid = pid
        self.name = name
        # chunk base -> (bytes, present [start, end) runs in absolute addresses, fully present?)
        self._chunks: Dict[int, Tuple[bytes, List[Tuple[int, int]], bool]] = {}
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
    def _chunk(self, base: int) -> Tuple[bytes, List[Tuple[int, int]], bool]:
        """(bytes, present runs, fully present?) of the chunk starting at ``base``."""
        chunk = self._chunks.get(base)
        if chunk is None:
            end = base + self.CHUNK
            i = bisect.bisect_right(self._starts, base) - 1
            touches_region = (i >= 0 and base < self.regions[i].end) or (
                i + 1 < len(self.regions) and self.regions[i + 1].start < end)
            if not touches_region:
                # A chunk wholly in a hole between regions: the backend is not asked and nothing is
                # cached, so that garbage pointers in smeared memory cannot fill the cache.
                return _HOLE
            data, present = self._read_run(base, self.CHUNK)
            present = [(max(s, base), min(e, end)) for s, e in present if e > base and s < end]
            chunk = (data, present, present == [(base, end)])
            self._chunks[base] = chunk
            self.bytes_loaded += len(data)
        return chunk

    @staticmethod
    def _present(present: Sequence[Tuple[int, int]], start: int, end: int) -> bool:
        pos = start  # walk adjacent runs: a read may straddle two of them
        for s, e in present:
            if s <= pos < e:
                pos = e
                if pos >= end:
                    return True
        return False

    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        base = address - address % self.CHUNK
        end = address + size
        if end <= base + self.CHUNK:  # the common case: one chunk
            data, present, full = self._chunks.get(base) or self._chunk(base)
            if not full and not self._present(present, address, end):
                raise MemoryReadError(address, size, "not present in the image")
            return data[address - base : end - base]
        out = []
        pos = address
        while pos < end:
            base = pos - pos % self.CHUNK
            data, present, full = self._chunk(base)
            take_end = min(end, base + self.CHUNK)
            if not full and not self._present(present, pos, take_end):
                raise MemoryReadError(address, size, "not present in the image")
            out.append(data[pos - base : take_end - base])
            pos = take_end
        return b"".join(out)

    def read_padded(self, address: int, size: int) -> bytes:
        out = []
        pos = address
        end = address + size
        while pos < end:
            base = pos - (pos % self.CHUNK)
            data = self._chunk(base)[0]
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
