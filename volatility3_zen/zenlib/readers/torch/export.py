"""Turning a recovered model into investigator output: a summary row, safetensors + model.json files."""

import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...representation.model import ExecutionContext, RecoveredModel, TensorEntry, TensorInfo, readable_value

# safetensors dtype names for torch dtypes numpy cannot represent natively: stored as raw bytes with
# the right safetensors dtype tag, so torch loads them back exactly.
_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": "C64", "uint16": "U16", "uint32": "U32", "uint64": "U64",
}


@dataclass
class Summary:
    modules: int
    parameters: int
    buffers: int
    tensors: int
    weights: int
    nbytes: int
    dtypes: List[str]
    devices: List[str]


def summary(model: RecoveredModel) -> Summary:
    unique = {}
    for t in model.tensors:
        unique.setdefault(t.info.address, t)
    tensors = list(unique.values())
    return Summary(
        modules=len(model.modules),
        parameters=sum(1 for t in tensors if t.kind == "parameter"),
        buffers=sum(1 for t in tensors if t.kind == "buffer"),
        tensors=len(tensors),
        weights=sum(t.info.numel for t in tensors),
        nbytes=sum(t.info.nbytes for t in tensors),
        dtypes=sorted({t.info.dtype for t in tensors}),
        devices=sorted({t.info.device for t in tensors}),
    )


def tensors_of(model: RecoveredModel, path: str) -> List[TensorEntry]:
    """The tensors registered directly on the module at ``path``."""
    return [t for t in model.tensors if (t.name.rsplit(".", 1)[0] if "." in t.name else "") == path]


def safetensors_dtype(dtype: str) -> Optional[str]:
    """The safetensors name of a torch dtype ("float32" -> "F32"); None where the format has none."""
    return _SAFETENSORS_DTYPES.get(dtype)


def safetensors_bytes(model: RecoveredModel, read_bytes: Callable) -> bytes:
    """state_dict() as a safetensors file (names as state_dict keys; tied tensors stored under each name)."""
    entries = [(t.name, t.info) for t in model.state_dict_tensors() if t.info.device_type == "cpu"]
    return safetensors_of(entries, read_bytes, {"root_class": model.root_class})


def safetensors_of(entries: Sequence[Tuple[str, TensorInfo]], read_bytes: Callable,
                   metadata: Optional[Dict[str, str]] = None) -> bytes:
    """Named CPU tensors as a safetensors file; tensors of a dtype the format lacks are left out."""
    # Written by hand (the format is a JSON header + raw bytes) so that dtypes numpy lacks, such as
    # bfloat16, keep their exact bytes; torch's safetensors loader reads the result.
    header: Dict[str, dict] = {}
    chunks = []
    offset = 0
    for name, info in entries:
        dtype = _SAFETENSORS_DTYPES.get(info.dtype)
        if dtype is None:
            continue
        data = read_bytes(info)
        header[name] = {"dtype": dtype, "shape": list(info.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt", "producer": "volatility3-zen", **(metadata or {})}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks)


def dump(model: RecoveredModel, context: ExecutionContext, torch_process, open_file: Callable, stem: str) -> None:
    with open_file(f"{stem}.safetensors") as fh:
        fh.write(safetensors_bytes(model, torch_process.tensors.read_bytes))
    with open_file(f"{stem}.model.json") as fh:
        fh.write(json.dumps(model.to_json(context), indent=1, sort_keys=True).encode())


def readable_hyperparameters(values: Dict[str, dict]) -> str:
    return ", ".join(f"{name}={readable_value(v)}" for name, v in sorted(values.items()))
