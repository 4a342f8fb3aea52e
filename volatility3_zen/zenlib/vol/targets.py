"""Volatility processes -> ``ProcessMemory``: the targets a session examines.

Two ways in:
  full-system images   a kernel module (LiME + kernel ISF): tasks from pslist, VMAs from the mm,
                       reads through the task's process layer
  process cores        our ``ProcessCoreLayer`` (``vol -f python.core ...``): one process, no kernel

Reads bypass Volatility's per-object machinery: ``mapping()`` translates a whole 1 MiB chunk and the
physical runs are read from the layer below in as few calls as possible.
"""

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces
from volatility3.framework.layers import linear
from volatility3.plugins.linux import pslist

from ..readers.memory import MemoryRegion, ProcessMemory
from .layers.elfcore import ProcessCoreLayer

vollog = logging.getLogger(__name__)

_ANONYMOUS = "Anonymous Mapping"  # Volatility's name for anonymous memory, which MemoryRegion calls ""
_CLEAR_EVERY = 32  # Volatility lru-caches every read (512 entries); big reads would pin hundreds of MiB


@dataclass
class Target:
    """A process to examine, before any Python-specific work."""

    pid: int
    name: str
    memory: Optional[ProcessMemory]  # None for kernel threads / processes whose mm is gone
    source: str  # "kernel" or "core"


def layer_reader(context: interfaces.context.ContextInterface, layer_name: str):
    """A ``ReadRunFn`` for ProcessMemory over a Volatility translation layer."""
    layer = context.layers[layer_name]
    calls = [0]

    def read_run(address: int, size: int) -> Tuple[bytes, List[Tuple[int, int]]]:
        out = bytearray(size)
        present: List[Tuple[int, int]] = []
        pending = None  # (virtual start, physical start, length, layer) being merged
        runs = []
        for offset, sublength, mapped_offset, mapped_length, sublayer in layer.mapping(address, size, ignore_errors=True):
            if pending and pending[0] + pending[2] == offset and pending[1] + pending[2] == mapped_offset and pending[3] == sublayer and sublength == mapped_length:
                pending = (pending[0], pending[1], pending[2] + sublength, sublayer)
                continue
            if pending:
                runs.append(pending)
            pending = (offset, mapped_offset, sublength, sublayer) if sublength == mapped_length else None
            if pending is None:  # a transforming layer (compressed...): let it read this piece itself
                runs.append((offset, None, sublength, None))
        if pending:
            runs.append(pending)
        for vstart, pstart, length, sublayer in runs:
            try:
                if pstart is None:
                    data = layer.read(vstart, length, pad=False)
                else:
                    data = context.layers[sublayer].read(pstart, length, pad=False)
            except exceptions.InvalidAddressException:
                continue
            out[vstart - address : vstart - address + len(data)] = data
            if present and present[-1][1] == vstart:
                present[-1] = (present[-1][0], vstart + len(data))
            else:
                present.append((vstart, vstart + len(data)))
        calls[0] += 1
        if calls[0] % _CLEAR_EVERY == 0:
            clear_volatility_caches()
        return bytes(out), present

    return read_run


def clear_volatility_caches() -> None:
    linear.LinearlyMappedLayer.read.cache_clear()
    interfaces.layers.TranslationLayerInterface.read.cache_clear()


def _perms(vm_flags: int) -> str:
    return ("r" if vm_flags & 1 else "-") + ("w" if vm_flags & 2 else "-") + ("x" if vm_flags & 4 else "-") + ("s" if vm_flags & 8 else "p")


def task_regions(context, task) -> List[MemoryRegion]:
    """The VMAs of a task as regions.  Smeared kernel memory can break the VMA tree or list itself
    (Volatility's iterator then fails in its own code): the regions read until then are kept."""
    regions = []
    names_by_file = {}  # a library has several VMAs of one file: resolve its path (a dentry walk) once
    try:
        for vma in task.mm.get_vma_iter():
            try:
                start, end = int(vma.vm_start), int(vma.vm_end)
                vm_file = int(vma.vm_file)
                if vm_file and vm_file in names_by_file:
                    name = names_by_file[vm_file]
                else:
                    name = vma.get_name(context, task) or ""
                    if vm_file:
                        names_by_file[vm_file] = name
                if name == _ANONYMOUS:
                    name = ""
                regions.append(MemoryRegion(start, end, _perms(int(vma.vm_flags)), name, vma.get_page_offset()))
            except exceptions.InvalidAddressException:
                vollog.debug("skipping an unreadable VMA of PID %s", task.pid)
    except (exceptions.InvalidAddressException, AttributeError, TypeError, ValueError) as exc:
        # AttributeError/TypeError: Volatility's VMA extension dereferences what smear turned to None
        vollog.warning("PID %s: VMA list broken after %d regions (%s: %s); the rest of the process is not read",
                       task.pid, len(regions), type(exc).__name__, exc)
    return regions


def kernel_targets(context, kernel_module_name: str, pids: Optional[Iterable[int]] = None) -> Iterator[Target]:
    """Every user process of a full-system image (or those in ``pids``)."""
    filter_func = pslist.PsList.create_pid_filter(list(pids) if pids else None)
    for task in pslist.PsList.list_tasks(context, kernel_module_name, filter_func=filter_func):
        pid = int(task.pid)
        name = utility_comm(task)
        try:
            layer_name = task.add_process_layer() if task.mm else None
        except (exceptions.InvalidAddressException, AttributeError, TypeError, ValueError) as exc:
            vollog.warning("PID %d (%s): address space unreadable (%s: %s)", pid, name, type(exc).__name__, exc)
            layer_name = None
        if layer_name is None:
            yield Target(pid, name, None, "kernel")
            continue
        memory = ProcessMemory(task_regions(context, task), layer_reader(context, layer_name), pid, name)
        yield Target(pid, name, memory, "kernel")


def utility_comm(task) -> str:
    try:
        return task.comm.cast("string", max_length=task.comm.vol.count, errors="replace")
    except exceptions.InvalidAddressException:
        return "?"


def core_targets(context) -> Iterator[Target]:
    """The process of every ELF process core opened in this context."""
    for layer in list(context.layers.values()):
        if isinstance(layer, ProcessCoreLayer):
            memory = ProcessMemory(layer.regions(), layer_reader(context, layer.name), layer.pid, layer.process_name)
            yield Target(layer.pid, layer.process_name, memory, "core")


def targets(context, kernel_module_name: Optional[str], pids: Optional[Iterable[int]] = None) -> Iterator[Target]:
    """Processes of the image: from the kernel when there is one, else from process cores.

    A core holds one process whatever ``pids`` says; callers check the PID themselves."""
    if kernel_module_name and kernel_module_name in context.modules:
        yield from kernel_targets(context, kernel_module_name, pids)
    else:
        yield from core_targets(context)
