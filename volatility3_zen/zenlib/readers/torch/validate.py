"""Choosing the layout table of a process's torch, and checking a borrowed one on the process's own tensors.

A registry build of a release with a table (``2.4.1``, ``1.11.0+cu113``) gets that table, unchecked.
Anything else (a release newer than every table, a patch release never tabled, a pre-release or a
custom build: ``2.6.0a0+git1234``) borrows the nearest release's table (``layouts.candidate_layouts``),
which must first read a sample of the process's tensors consistently (``tensor_problem``):

- the TensorImpl points back to its Python object (``TensorReader.impl_of``);
- the dtype is one of the table's ScalarTypes, the device type one of its DeviceTypes;
- ``numel_`` equals the product of the sizes, sizes and strides are non-negative and below 2**48;
- the view (storage offset, sizes, strides) ends inside the storage's ``nbytes``;
- a CPU tensor's data lie in mapped memory, first byte and last.

A table that reads at least ``MIN_CONSISTENT`` of the sample this way is used, with a warning that names
it and the figure ("412/412 tensors consistent"); when no candidate does, the process is refused with
one line that gives each candidate's figure and its first problem.
"""

import dataclasses
import math
from typing import Callable, Iterable, List, Optional

from ...errors import CorruptObjectError, MemoryReadError, UnsupportedVersionError
from ..memory import ProcessMemory
from .layouts import TorchLayout, candidate_layouts
from .tensors import TensorReader

# The sample: the parameters and buffers of the process's modules, at most this many.
SAMPLE_SIZE = 512
# Smeared memory may spoil a few tensors of a LiME image; a wrong table reads next to none.
MIN_CONSISTENT = 0.9
# Larger than any real size, stride, offset or byte count (2**48 bytes is the x86_64 address space).
SANE_LIMIT = 1 << 48
MAX_DEVICE_INDEX = 255


@dataclasses.dataclass
class TableValidation:
    """How a table read the sample of a process's tensors."""

    table: str  # "torch-2.13.0"
    checked: int
    consistent: int
    problems: List[str]  # the first few inconsistencies

    @property
    def figure(self) -> str:
        return f"{self.consistent}/{self.checked} tensors consistent"

    @property
    def passed(self) -> bool:
        return self.checked > 0 and self.consistent >= math.ceil(MIN_CONSISTENT * self.checked)


@dataclasses.dataclass
class TableChoice:
    """The table a process's tensors are read with, and why."""

    torch_version: str  # the process's torch.__version__
    layout: TorchLayout
    exact: bool  # the release's own table
    validation: Optional[TableValidation] = None  # how a borrowed table read the process's tensors

    @property
    def table(self) -> str:
        return self.layout.table

    @property
    def warning(self) -> Optional[str]:
        """What the investigator must be told about a borrowed table (None for the release's own)."""
        if self.exact:
            return None
        return (f"PyTorch {self.torch_version} has no layout table of its own: read with {self.table} (nearest "
                f"release), validated on the process's tensors: {self.validation.figure}")


def tensor_problem(reader: TensorReader, address: int) -> Optional[str]:
    """Why the tensor at ``address`` does not read consistently with the reader's table (None if it does)."""
    try:
        info = reader.read_tensor(address)
    except (CorruptObjectError, MemoryReadError, UnsupportedVersionError) as error:
        return str(error)
    where = f"tensor 0x{address:x}"
    if info.numel < 0 or info.numel != math.prod(info.shape):
        return f"{where}: numel {info.numel} for shape {list(info.shape)}"
    if len(info.shape) != len(info.strides) or any(not 0 <= v < SANE_LIMIT for v in info.shape + info.strides):
        return f"{where}: implausible shape {list(info.shape)} / strides {list(info.strides)}"
    if info.device_type.startswith("unknown-device") or not -1 <= info.device_index <= MAX_DEVICE_INDEX:
        return f"{where}: device {info.device}"
    if not 0 <= info.storage_offset < SANE_LIMIT or not -1 <= info.storage_nbytes < SANE_LIMIT:
        return f"{where}: storage offset {info.storage_offset}, storage size {info.storage_nbytes}"
    if info.numel == 0:
        return None
    end = (info.storage_offset + sum((s - 1) * d for s, d in zip(info.shape, info.strides)) + 1) * info.itemsize
    if info.storage_address and info.storage_nbytes >= 0 and end > info.storage_nbytes:
        return f"{where}: the view ends at byte {end} of a {info.storage_nbytes}-byte storage"
    if info.device_type == "cpu":
        memory = reader.memory
        if not info.data_ptr or not memory.is_mapped(info.data_ptr) or not memory.is_mapped(info.data_ptr + end - 1):
            return f"{where}: data 0x{info.data_ptr:x} (+{end} bytes) is not in mapped memory"
    return None


def validate_layout(memory: ProcessMemory, layout: TorchLayout, addresses: Iterable[int]) -> TableValidation:
    """Read every tensor at ``addresses`` with ``layout`` and count the consistent ones."""
    addresses = list(addresses)
    checked = consistent = 0
    problems: List[str] = []
    try:
        reader = TensorReader(memory, layout)
    except (UnsupportedVersionError, KeyError) as error:  # the table lacks a member the reader needs
        return TableValidation(layout.table, len(addresses), 0, [str(error)])
    for address in addresses:
        checked += 1
        problem = tensor_problem(reader, address)
        if problem is None:
            consistent += 1
        elif len(problems) < 3:
            problems.append(problem)
    return TableValidation(layout.table, checked, consistent, problems)


def choose_layout(memory: ProcessMemory, torch_version: str, sample: Callable[[], List[int]]) -> TableChoice:
    """The table for the process's torch: its own, or the nearest one that validates on ``sample()``
    (tensor object addresses, taken only when needed).  UnsupportedVersionError, one line, when none does."""
    exact, candidates = candidate_layouts(torch_version)
    if exact:
        return TableChoice(torch_version, candidates[0], True)
    if not candidates:
        raise UnsupportedVersionError(f"PyTorch {torch_version}: no layout table is installed")
    addresses = list(dict.fromkeys(sample()))[:SAMPLE_SIZE]
    if not addresses:
        raise UnsupportedVersionError(f"PyTorch {torch_version} has no layout table of its own, and the process holds "
                                      f"no module tensor to validate the nearest ({candidates[0].table}) on")
    tried = []
    for layout in candidates:
        validation = validate_layout(memory, layout, addresses)
        if validation.passed:
            return TableChoice(torch_version, layout, False, validation)
        first = f" ({validation.problems[0]})" if validation.problems else ""
        tried.append(f"{layout.table}: {validation.figure}{first}")
    raise UnsupportedVersionError(f"PyTorch {torch_version} has no layout table of its own and no nearby table reads "
                                  f"this process's tensors consistently: {'; '.join(tried)}")
