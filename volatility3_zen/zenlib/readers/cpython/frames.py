"""The frames of the interpreter's live threads: which objects the running code holds.

A deployment usually keeps its model in a local of the function that serves it (``main()``'s
``model``, an argument of ``serve(model)``), not in a module global.  When smeared memory broke the GC
lists, those frames are the one path to such an object that needs no GC list: thread states hang off
the interpreter, frames off the thread state.

Per version (all offsets from the ISF tables):

- up to 3.10: ``tstate->frame`` is a ``PyFrameObject``, chained by ``f_back``; its fast slots
  (``f_localsplus``) hold ``co_nlocals`` locals, then the cell and free variables;
- 3.11 and 3.12: ``tstate->cframe->current_frame`` is a ``_PyInterpreterFrame``, chained by
  ``previous``; ``localsplus`` holds ``co_nlocalsplus`` variables, then the value stack up to
  ``stacktop``;
- 3.13: ``tstate->current_frame``, the code in ``f_executable``.

Everything read here may be garbage: every thread and frame is read under a bound, and a frame that
cannot be read ends that thread's chain with a warning, never the walk.
"""

from dataclasses import dataclass
from typing import Iterator, List, Set, Tuple

from .heap import Heap
from .objects import DECODE_ERRORS
from .runtime import threads_head_offset

MAX_THREADS = 4096  # a process with more thread states than this has a smeared list
MAX_FRAMES = 10000  # per thread: CPython's recursion limit is 1000 by default
MAX_SLOTS = 1 << 16  # fast slots + stack of one frame (co_nlocalsplus + co_stacksize is far smaller)
# ``reachable``: how far from a frame's slots, and how much, is looked at.  A serving loop holds its
# model directly, in a closure cell, in a container it was given (``models=[(model, spec)]``) or in an
# attribute of a server object: three steps reach all of these.  The bounds keep a local that is a
# dataset of millions of items from costing more than a glance.
REACH_DEPTH = 3
REACH_ITEMS_PER_CONTAINER = 1000
REACH_MAX_OBJECTS = 50_000


@dataclass(frozen=True)
class Frame:
    """One executing frame: its thread state, its own address, its code object and the object
    pointers of its fast slots (locals, cells, free variables) and live value stack, nulls left out."""

    thread: int
    address: int
    code: int
    values: Tuple[int, ...]


class FrameReader:
    """The frames of every thread of the main interpreter, innermost first."""

    def __init__(self, heap: Heap):
        self.rt = heap.rt
        self.o = heap.o
        self.heap = heap
        L = self.L = heap.rt.layout
        self.version = L.version
        self.warnings: List[str] = []
        self.off_next = L.offset("PyThreadState", "next")
        self.off_threads_head = threads_head_offset(L)
        if self.version >= (3, 11):
            self.off_code = L.offset("_PyInterpreterFrame", "f_executable" if self.version >= (3, 13) else "f_code")
            self.off_previous = L.offset("_PyInterpreterFrame", "previous")
            self.off_localsplus = L.offset("_PyInterpreterFrame", "localsplus")
            self.off_stacktop = L.offset("_PyInterpreterFrame", "stacktop")
            self.off_nlocalsplus = L.offset("PyCodeObject", "co_nlocalsplus")
            self.off_stacksize = L.offset("PyCodeObject", "co_stacksize")
        else:
            self.off_code = L.offset("PyFrameObject", "f_code")
            self.off_previous = L.offset("PyFrameObject", "f_back")
            self.off_localsplus = L.offset("PyFrameObject", "f_localsplus")
            self.off_nlocals = L.offset("PyCodeObject", "co_nlocals")
            self.off_cellvars = L.offset("PyCodeObject", "co_cellvars")
            self.off_freevars = L.offset("PyCodeObject", "co_freevars")

    def threads(self) -> List[int]:
        """Addresses of the interpreter's thread states, in list order."""
        out: List[int] = []
        seen = set()
        try:
            tstate = self.o.u64(self.rt.interpreter + self.off_threads_head)
            while tstate and tstate not in seen and len(out) < MAX_THREADS:
                seen.add(tstate)
                out.append(tstate)
                tstate = self.o.u64(tstate + self.off_next)
        except DECODE_ERRORS as exc:
            self.warnings.append(f"thread list broken after {len(out)} thread states ({exc})")
        return out

    def _top_frame(self, tstate: int) -> int:
        L, u64 = self.L, self.o.u64
        if self.version >= (3, 13):
            return u64(tstate + L.offset("PyThreadState", "current_frame"))
        if self.version >= (3, 11):
            cframe = u64(tstate + L.offset("PyThreadState", "cframe"))
            return u64(cframe + L.offset("_PyCFrame", "current_frame")) if cframe else 0
        return u64(tstate + L.offset("PyThreadState", "frame"))

    def _slot_count(self, frame: int, code: int) -> int:
        mem = self.o.mem
        if self.version >= (3, 11):
            variables = mem.read_i32(code + self.off_nlocalsplus)
            stacksize = mem.read_i32(code + self.off_stacksize)
            stacktop = mem.read_i32(frame + self.off_stacktop)
            if not 0 <= variables <= MAX_SLOTS:
                raise ValueError(f"code 0x{code:x} claims {variables} fast slots")
            # stacktop counts from localsplus[0]; a value beyond the code's own stack is not trusted
            return stacktop if variables <= stacktop <= variables + max(stacksize, 0) else variables
        count = mem.read_i32(code + self.off_nlocals)
        for tuple_off in (self.off_cellvars, self.off_freevars):
            pointer = self.o.u64(code + tuple_off)
            count += len(self.o.tuple_items(pointer)) if pointer else 0
        if not 0 <= count <= MAX_SLOTS:
            raise ValueError(f"code 0x{code:x} claims {count} fast slots")
        return count

    def frames(self, tstate: int) -> Iterator[Frame]:
        """The thread's frames, innermost first."""
        seen = set()
        depth = 0
        try:
            frame = self._top_frame(tstate)
            while frame and frame not in seen and depth < MAX_FRAMES:
                seen.add(frame)
                depth += 1
                code = self.o.u64(frame + self.off_code)
                values: Tuple[int, ...] = ()
                if code and self.o.kind(code) == "code":
                    slots = self._slot_count(frame, code)
                    raw = self.o.mem.read(frame + self.off_localsplus, 8 * slots)
                    values = tuple(v for v in memoryview(raw).cast("Q") if v)
                yield Frame(tstate, frame, code, values)
                frame = self.o.u64(frame + self.off_previous)
        except DECODE_ERRORS as exc:
            self.warnings.append(f"thread state 0x{tstate:x}: frame chain broken after {depth} frames ({exc})")

    def all_frames(self) -> Iterator[Frame]:
        for tstate in self.threads():
            yield from self.frames(tstate)

    def reachable(self) -> Iterator[int]:
        """Objects the running frames hold, breadth first: their slots, then up to ``REACH_DEPTH``
        steps through cells, lists, tuples, dict values and the attributes of heap-type instances.
        Each object once; a value that cannot be decoded is passed over."""
        seen: Set[int] = set()
        level = [v for frame in self.all_frames() for v in frame.values]
        for depth in range(REACH_DEPTH + 1):
            following: List[int] = []
            for obj in level:
                if obj in seen or len(seen) >= REACH_MAX_OBJECTS:
                    continue
                seen.add(obj)
                yield obj
                if depth < REACH_DEPTH:
                    following += self._referents(obj)
            level = following

    def _referents(self, obj: int) -> List[int]:
        o = self.o
        try:
            kind = o.kind(obj)
            if kind == "cell":
                ref = o.u64(obj + self.L.offset("PyCellObject", "ob_ref"))
                return [ref] if ref else []
            if kind in ("list", "tuple"):
                items = o.list_items(obj) if kind == "list" else o.tuple_items(obj)
                return list(items[:REACH_ITEMS_PER_CONTAINER])
            if kind == "dict":
                out = []
                for _key, value in o.dict_items(obj):
                    out.append(value)
                    if len(out) >= REACH_ITEMS_PER_CONTAINER:
                        break
                return out
            if kind == "heap":
                return list(self.heap.instance_dict(obj).values())[:REACH_ITEMS_PER_CONTAINER]
        except DECODE_ERRORS:
            pass
        return []
