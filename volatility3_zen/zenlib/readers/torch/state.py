"""Torch values of the object state (``cpython/state.py``): tensors, dtypes, devices, sizes.

A tensor that is in the model's ``state_dict`` refers to its entry in ``weights.safetensors``; any
other tensor (a non-persistent buffer, a plain tensor attribute) is read here and collected in
``tensor_table`` for ``state.safetensors``.
"""

from typing import Dict, List, Optional, Tuple

from ..cpython.objects import DECODE_ERRORS
from ..cpython.state import StateReader
from .export import safetensors_dtype
from .model import TorchProcess
from .tensors import TensorDataUnavailableError


class TorchValues:
    """The ``StateReader`` extension for a process with torch."""

    def __init__(self, torch_process: TorchProcess, weight_names: Dict[int, str]):
        self.tp = torch_process
        self.weight_names = weight_names  # tensor object address -> state_dict name in weights.safetensors
        self.tensor_table: List[Tuple[str, object]] = []  # (key in state.safetensors, TensorInfo)

    def value(self, reader: StateReader, obj: int, type_addr: int, path: str, depth: int) -> Optional[dict]:
        name = reader.o.type_name(type_addr)
        if name == "torch.dtype":
            return {"t": "dtype", "v": self.tp.dtype_name(obj)}
        if name == "torch.device":
            return {"t": "device", "v": self.tp.device_name(obj)}
        if name == "torch.Size":
            return {"t": "size", "v": [reader.o.read_int(i) for i in reader.o.tuple_items(obj)]}
        if self.tp.tensors.looks_like_tensor(obj):
            return reader.identity(obj, path, depth, lambda address, where, _: self._tensor_entry(reader, address, where))
        return None

    def _tensor_entry(self, reader: StateReader, obj: int, path: str) -> dict:
        info = self.tp.tensors.read_tensor(obj)
        entry = {"kind": "tensor", "class": reader.class_ref(reader.o.type_of(obj)), "path": path,
                 "requires_grad": bool(info.requires_grad), "dtype": info.dtype, "shape": list(info.shape)}
        if obj in self.weight_names:
            entry.update(member="weights.safetensors", key=self.weight_names[obj])
        elif info.device_type != "cpu" or safetensors_dtype(info.dtype) is None:
            reader.warnings.append(f"{path}: a {info.device} {info.dtype} tensor cannot be exported; left out")
            entry.update(member=None, key=None)
        else:
            try:
                self.tp.tensors.read_bytes(info)  # readable now, so that the file can hold it
            except (TensorDataUnavailableError,) + DECODE_ERRORS as exc:
                reader.warnings.append(f"{path}: tensor bytes unreadable ({exc}); left out")
                entry.update(member=None, key=None)
                return entry
            key = f"t{len(self.tensor_table)}"
            self.tensor_table.append((key, info))
            entry.update(member="state.safetensors", key=key)
        return entry

