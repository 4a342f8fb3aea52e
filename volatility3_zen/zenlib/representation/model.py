"""The representation of a PyTorch model recovered from one process: its tensors, as read from memory.

Plain data only (``dataclasses.asdict`` gives the JSON form): readers in ``zenlib.torch`` fill these
in, analysis and export consume them without touching process memory again, except to fetch a
tensor's bytes (``TensorReader.read_bytes``).
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple


@dataclass
class TensorInfo:
    """A torch.Tensor (or nn.Parameter) found in memory: its metadata and where its bytes live.

    Sizes, strides and the storage offset count elements, as ``Tensor.shape``/``stride()``/
    ``storage_offset()`` do.  The tensor's first element is at ``data_ptr + storage_offset * itemsize``.
    """

    address: int  # the Python object (THPVariable)
    impl_address: int  # its c10::TensorImpl
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    storage_offset: int
    dtype: str  # torch name without the "torch." prefix: "float32", "bfloat16", "int64", "bool", ...
    scalar_type: int  # c10::ScalarType value
    itemsize: int
    numel: int
    device_type: str  # torch.device type: "cpu", "cuda", "meta", ...
    device_index: int  # -1 when the device has no index (CPU tensors)
    requires_grad: Optional[bool]  # None when the autograd metadata could not be read
    storage_address: int  # its c10::StorageImpl; 0 for tensors without storage (sparse, nested, ...)
    storage_nbytes: int  # the whole storage, which views and tied parameters share
    data_ptr: int  # start of the storage's bytes (0 for an empty storage)
    warnings: List[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Size of the tensor's own contents (what ``read_bytes`` returns)."""
        return self.numel * self.itemsize

    @property
    def device(self) -> str:
        """``str(tensor.device)``: "cpu", "cuda:0"."""
        return self.device_type if self.device_index < 0 else f"{self.device_type}:{self.device_index}"

    @property
    def is_contiguous(self) -> bool:
        """Row-major without gaps, as ``Tensor.is_contiguous()`` says (dimensions of size 1 may have any
        stride; an empty tensor is contiguous)."""
        if self.numel == 0:
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True
