"""Decode a torch.Tensor Python object from raw process memory: metadata, then its bytes.

The path from the Python object to the bytes (every offset comes from the release's layout table)::

    THPVariable (the PyObject)  .cdata.impl_.target_            -> c10::TensorImpl
    c10::TensorImpl             .pyobj_slot_.pyobj_              -> back to the PyObject (validation)
                                .sizes_and_strides_, .storage_offset_, .numel_, .data_type_, .device_opt_
                                .autograd_meta_                  -> torch::autograd::AutogradMeta
                                .storage_.storage_impl_.target_  -> c10::StorageImpl
    c10::StorageImpl            .data_ptr_.ptr_.data_            -> the storage's bytes, .size_bytes_

A tensor is a strided view of its storage, so ``read_bytes`` reads the span of the storage the view
covers in one read and lets numpy gather the elements (``as_strided`` over the bytes, with a numpy
type of the element's size that is copied and never interpreted, so every dtype works).
"""

import math
import struct
from typing import Dict, List, Optional, Tuple

import numpy
from numpy.lib.stride_tricks import as_strided

from ...errors import CorruptObjectError, MemoryReadError, UnsupportedVersionError, ZenError
from ..memory import ProcessMemory
from ...representation.model import TensorInfo
from .layouts import TorchLayout

THP_VARIABLE = "THPVariable"
TENSOR_IMPL = "c10::TensorImpl"
STORAGE_IMPL = "c10::StorageImpl"
AUTOGRAD_META = "torch::autograd::AutogradMeta"

# Every value the reader takes from memory: name -> (struct, member paths, struct format).  Where releases
# name a member differently, the paths are alternatives, newest release's first; the first one the
# table has is read.  The formats are checked against the member sizes when a reader is made, so a
# release that changes a type fails loudly instead of reading garbage.
FIELDS: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    # cdata is an at::Tensor, or (1.10-2.9) a c10::MaybeOwned<at::Tensor> whose borrowed and owned
    # Tensor share one place in a union.
    "impl": (THP_VARIABLE, ("cdata.impl_.target_", "cdata.own_.impl_.target_"), "Q"),
    # c10::impl::PyObjectSlot's atomic pointer (2.10+), its plain pointer (2.0-2.9), TensorImpl's own (1.8-1.13).
    "pyobj": (TENSOR_IMPL, ("pyobj_slot_.pyobj_._M_b._M_p", "pyobj_slot_.pyobj_", "pyobj_"), "Q"),
    "storage": (TENSOR_IMPL, ("storage_.storage_impl_.target_",), "Q"),
    # std::unique_ptr with the default (empty) deleter: just the pointer.
    "autograd_meta": (TENSOR_IMPL, ("autograd_meta_",), "Q"),
    "ndim": (TENSOR_IMPL, ("sizes_and_strides_.size_",), "Q"),
    # ndim <= inline capacity: sizes then strides in place; else a pointer to n sizes then n strides.
    "out_of_line_sizes": (TENSOR_IMPL, ("sizes_and_strides_.outOfLineStorage_",), "Q"),
    "storage_offset": (TENSOR_IMPL, ("storage_offset_",), "q"),
    "numel": (TENSOR_IMPL, ("numel_",), "q"),
    "scalar_type": (TENSOR_IMPL, ("data_type_.index_",), "H"),  # TypeMeta index == ScalarType value
    # std::optional<Device> (libstdc++) since 2.2; c10's own optional before.
    "device_type": (TENSOR_IMPL, ("device_opt_._M_payload._M_payload._M_value.type_",
                                  "device_opt_.storage_.value_.type_"), "b"),
    "device_index": (TENSOR_IMPL, ("device_opt_._M_payload._M_payload._M_value.index_",
                                   "device_opt_.storage_.value_.index_"), "b"),
    "device_engaged": (TENSOR_IMPL, ("device_opt_._M_payload._M_engaged", "device_opt_.init_"), "B"),
    "data_ptr": (STORAGE_IMPL, ("data_ptr_.ptr_.data_",), "Q"),
    # c10::SymInt (negative when symbolic) since 1.13; a size_t before.
    "storage_nbytes": (STORAGE_IMPL, ("size_bytes_.data_", "size_bytes_"), "q"),
    "storage_device_type": (STORAGE_IMPL, ("data_ptr_.device_.type_",), "b"),
    "storage_device_index": (STORAGE_IMPL, ("data_ptr_.device_.index_",), "b"),
    "requires_grad": (AUTOGRAD_META, ("requires_grad_",), "B"),
    # c10::intrusive_ptr<Node> since 2.13; a std::shared_ptr before.
    "grad_fn": (AUTOGRAD_META, ("grad_fn_.target_", "grad_fn_._M_ptr"), "Q"),
}
INLINE_SIZES = (TENSOR_IMPL, "sizes_and_strides_.inlineStorage_")

# Torch sets no hard limit, but real tensors have a handful of dimensions: a larger count is garbage.
MAX_DIMS = 64


class TensorDataUnavailableError(ZenError):
    """The tensor's bytes are not in the process image (device memory, no storage)."""


class TensorReader:
    """Reads torch.Tensor objects of one process with one release's layout.

    ``read_tensor`` validates the object first: a TensorImpl points back to its Python object
    (``pyobj_slot_``), which garbage and other objects practically never do.
    """

    def __init__(self, memory: ProcessMemory, layout: TorchLayout):
        self.memory = memory
        self.layout = layout
        self._fields: Dict[str, Tuple[int, struct.Struct]] = {}
        for name, (owner, paths, fmt) in FIELDS.items():
            unpacker = struct.Struct("<" + fmt)
            path = next((p for p in paths if layout.has(owner, p)), None)
            if path is None:
                raise UnsupportedVersionError(f"PyTorch {layout.version}: {owner} has no member {' or '.join(paths)}")
            size = layout.member_size(owner, path)
            if size != unpacker.size:
                raise UnsupportedVersionError(f"PyTorch {layout.version}: {owner}.{path} is {size} bytes, "
                                              f"the reader expects {unpacker.size}")
            self._fields[name] = (layout.offset(owner, path), unpacker)
        self._inline_capacity = layout.member_size(*INLINE_SIZES) // 16  # int64 sizes + strides
        self._inline = struct.Struct(f"<{2 * self._inline_capacity}q")
        self._inline_offset = layout.offset(*INLINE_SIZES)
        self._sizes = {owner: layout.size(owner) for owner in (TENSOR_IMPL, STORAGE_IMPL, AUTOGRAD_META)}

    def _get(self, name: str, block: bytes) -> int:
        offset, unpacker = self._fields[name]
        return unpacker.unpack_from(block, offset)[0]

    def _read_field(self, name: str, base: int) -> int:
        offset, unpacker = self._fields[name]
        return unpacker.unpack(self.memory.read(base + offset, unpacker.size))[0]

    # -- validation ------------------------------------------------------------------------------

    def impl_of(self, pyobj_address: int) -> int:
        """The TensorImpl of a torch.Tensor object; CorruptObjectError unless it points back to it."""
        try:
            impl = self._read_field("impl", pyobj_address)
            # Some releases tag the pointer's low bit when C++ owns the PyObject (a resurrected tensor).
            back = self._read_field("pyobj", impl) & ~1 if impl else 0
        except MemoryReadError as error:
            raise CorruptObjectError(f"0x{pyobj_address:x} is not a readable torch.Tensor ({error})") from None
        if not impl or back != pyobj_address:
            raise CorruptObjectError(f"0x{pyobj_address:x} is not a torch.Tensor: its TensorImpl 0x{impl:x} "
                                     f"points back to 0x{back:x}")
        return impl

    def looks_like_tensor(self, pyobj_address: int) -> bool:
        """Cheap check for candidates (two 8-byte reads): does the object's TensorImpl point back to it?"""
        try:
            self.impl_of(pyobj_address)
        except CorruptObjectError:
            return False
        return True

    # -- metadata --------------------------------------------------------------------------------

    def read_tensor(self, pyobj_address: int) -> TensorInfo:
        """Metadata of the torch.Tensor (or Parameter, or other subclass) whose PyObject is at the address."""
        impl = self.impl_of(pyobj_address)
        block = self.memory.read(impl, self._sizes[TENSOR_IMPL])
        warnings: List[str] = []
        shape, strides = self._sizes_and_strides(impl, block)
        scalar_type = self._get("scalar_type", block)
        if scalar_type not in self.layout.scalar_types:
            raise CorruptObjectError(f"tensor 0x{pyobj_address:x}: unknown ScalarType {scalar_type}")
        dtype, itemsize = self.layout.scalar_types[scalar_type]
        numel = self._get("numel", block)
        if numel != math.prod(shape):
            warnings.append(f"numel_ is {numel} but the shape {shape} holds {math.prod(shape)} elements")

        storage = self._get("storage", block)
        data_ptr = storage_nbytes = 0
        storage_device = (-1, -1)
        try:
            storage_block = self.memory.read(storage, self._sizes[STORAGE_IMPL]) if storage else None
        except MemoryReadError as error:
            storage_block = None
            warnings.append(f"the StorageImpl is unreadable: {error}")
        if storage_block is not None:
            data_ptr = self._get("data_ptr", storage_block)
            storage_nbytes = self._get("storage_nbytes", storage_block)
            storage_device = (self._get("storage_device_type", storage_block),
                              self._get("storage_device_index", storage_block))
            if storage_nbytes < 0:
                warnings.append("the storage size is symbolic (SymInt), not a number")
        elif not storage:
            warnings.append("the tensor has no storage (sparse, nested or a tensor subclass without data)")

        if self._get("device_engaged", block):
            device = (self._get("device_type", block), self._get("device_index", block))
        else:
            device = storage_device
            warnings.append("the tensor has no device of its own; its storage's device is reported")
        device_type = self.layout.device_types.get(device[0])
        if device_type is None:
            device_type = f"unknown-device-{device[0]}"
            warnings.append(f"unknown DeviceType {device[0]}")

        return TensorInfo(
            address=pyobj_address, impl_address=impl, shape=shape, strides=strides,
            storage_offset=self._get("storage_offset", block), dtype=dtype, scalar_type=scalar_type,
            itemsize=itemsize, numel=numel, device_type=device_type, device_index=device[1],
            requires_grad=self._requires_grad(self._get("autograd_meta", block), warnings),
            storage_address=storage, storage_nbytes=storage_nbytes, data_ptr=data_ptr, warnings=warnings)

    def _sizes_and_strides(self, impl: int, block: bytes) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        ndim = self._get("ndim", block)
        if ndim > MAX_DIMS:
            raise CorruptObjectError(f"TensorImpl 0x{impl:x}: {ndim} dimensions")
        if ndim <= self._inline_capacity:
            values = self._inline.unpack_from(block, self._inline_offset)
            shape, strides = values[:ndim], values[self._inline_capacity:self._inline_capacity + ndim]
        else:
            values = struct.unpack(f"<{2 * ndim}q", self.memory.read(self._get("out_of_line_sizes", block), 16 * ndim))
            shape, strides = values[:ndim], values[ndim:]
        if min(shape + strides, default=0) < 0:  # torch has no negative sizes or strides
            raise CorruptObjectError(f"TensorImpl 0x{impl:x}: negative size or stride in {shape} / {strides}")
        return shape, strides

    def _requires_grad(self, autograd_meta: int, warnings: List[str]) -> Optional[bool]:
        """``AutogradMeta::requires_grad()``: the flag, or a grad_fn (a non-leaf result of a
        differentiable operation).  No autograd metadata means False."""
        if not autograd_meta:
            return False
        try:
            meta = self.memory.read(autograd_meta, self._sizes[AUTOGRAD_META])
        except MemoryReadError as error:
            warnings.append(f"autograd metadata unreadable: {error}")
            return None
        return bool(self._get("requires_grad", meta) or self._get("grad_fn", meta))

    # -- contents --------------------------------------------------------------------------------

    def read_bytes(self, info: TensorInfo, pad_missing: bool = False) -> bytes:
        """The tensor's elements in row-major order: the bytes of ``t.detach().contiguous()``.

        One read covers the span of the storage the view uses; views with gaps, transposes and
        stride-0 (expanded) dimensions are gathered by numpy.  ``pad_missing`` zero-fills pages
        missing from the image instead of raising MemoryReadError.
        """
        if info.device_type != "cpu":
            raise TensorDataUnavailableError(
                f"tensor 0x{info.address:x} is on {info.device}: its weights are resident in device memory, "
                f"not in the process image; only its metadata can be recovered")
        if info.numel == 0:
            return b""
        if not info.storage_address or not info.data_ptr:
            raise TensorDataUnavailableError(f"tensor 0x{info.address:x} has {info.numel} elements but no "
                                             f"data pointer (storage 0x{info.storage_address:x})")
        itemsize = info.itemsize
        last = info.storage_offset + sum((size - 1) * stride for size, stride in zip(info.shape, info.strides))
        span = (last - info.storage_offset + 1) * itemsize
        if info.storage_nbytes >= 0 and (last + 1) * itemsize > info.storage_nbytes:
            raise CorruptObjectError(f"tensor 0x{info.address:x}: the view ends at byte {(last + 1) * itemsize} of "
                                     f"a {info.storage_nbytes}-byte storage")
        read = self.memory.read_padded if pad_missing else self.memory.read
        data = read(info.data_ptr + info.storage_offset * itemsize, span)
        if info.is_contiguous:
            return data
        elements = as_strided(numpy.frombuffer(data, dtype=_element_type(itemsize)), shape=info.shape,
                              strides=tuple(stride * itemsize for stride in info.strides), writeable=False)
        return elements.tobytes()


def _element_type(itemsize: int) -> numpy.dtype:
    """A numpy type that moves one element as a unit: an unsigned integer where one has the size (fast
    copies), else opaque bytes.  Values are never interpreted, so bfloat16, float8, complex, bool and
    sub-byte packed types are all copied bit for bit."""
    return numpy.dtype(f"<u{itemsize}") if itemsize in (1, 2, 4, 8) else numpy.dtype(f"V{itemsize}")
