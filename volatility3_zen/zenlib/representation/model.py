"""The representation of a PyTorch model recovered from one process: its tensors, as read from memory.

Plain data only (``dataclasses.asdict`` gives the JSON form): readers in ``zenlib.readers.torch`` fill these
in, analysis and export consume them without touching process memory again, except to fetch a
tensor's bytes (``TensorReader.read_bytes``).
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from .program import decode_const, encode_const


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


# 2: ``execution_context`` has ``numerics`` (the kernels' and threads' settings of the process).
MODEL_SCHEMA_VERSION = 2


def encode_value(value: Any) -> Optional[Dict[str, Any]]:
    """``encode_const`` extended to lists and str-keyed dicts (module hyper-parameters); the
    corpus ground truth uses the same form."""
    if isinstance(value, list):
        return {"t": "list", "v": [encode_value(v) for v in value]}
    if isinstance(value, dict):
        return {"t": "dict", "v": [[k, encode_value(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"t": "tuple", "v": [encode_value(v) for v in value]}
    return encode_const(value)


def readable_value(encoded: dict) -> str:
    """Python-like text of an encoded hyper-parameter (the JSON dump keeps the exact tagged form)."""
    tag = encoded["t"]
    if tag in ("list", "tuple"):
        items = [readable_value(v) for v in encoded["v"]]
        if tag == "tuple":
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        return "[" + ", ".join(items) + "]"
    if tag == "dict":
        return "{" + ", ".join(f"{k!r}: {readable_value(v)}" for k, v in encoded["v"]) + "}"
    if tag == "dtype":
        return f"torch.{encoded['v']}"
    if tag == "device":
        return f"device({encoded['v']!r})"
    return repr(decode_const(encoded))


@dataclass
class ModuleNode:
    """One nn.Module of a model tree, in ``named_modules()`` order."""

    path: str  # "" for the root, "blocks.0.up" below it
    address: int
    class_module: str
    class_qualname: str
    depth: int
    children: List[str]  # child names in registration order
    hyperparameters: Dict[str, Any]  # public instance attributes of simple types, encoded (encode_value)
    hooks: List[str]  # names of the non-empty hook dicts (_forward_hooks, ...)

    @property
    def class_path(self) -> str:
        return f"{self.class_module}.{self.class_qualname}"


@dataclass
class TensorEntry:
    """A parameter or buffer under its state_dict-style name."""

    name: str
    kind: str  # "parameter" or "buffer"
    persistent: bool  # False for buffers registered with persistent=False (not in state_dict)
    info: TensorInfo
    sha256: Optional[str] = None  # of the logical contents (t.contiguous() bytes), when read
    shares_storage_with: Optional[str] = None  # the first tensor of the model on the same storage
    warning: Optional[str] = None


UNKNOWN = "unknown"  # a numerics value that memory did not tell (never a guess)

# Environment variables that choose the CPU (and GPU) kernels or the number of threads, and so can
# change a model's output in its last bits.  The numerics reader records each as its value or None
# (not set in the process); reuse sets or unsets exactly these names, never others.
NUMERICS_VARIABLES = (
    # threads: OpenMP (libgomp, Intel's libiomp5), MKL, OpenBLAS
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DYNAMIC", "MKL_DYNAMIC", "OMP_THREAD_LIMIT", "OPENBLAS_NUM_THREADS",
    # which kernels: ATen's vectorised kernels, oneDNN, MKL, OpenBLAS, Intel OpenMP's reductions
    "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "DNNL_CPU_ISA_HINTS", "ONEDNN_CPU_ISA_HINTS",
    "DNNL_DEFAULT_FPMATH_MODE", "ONEDNN_DEFAULT_FPMATH_MODE", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE", "OPENBLAS_CORETYPE", "KMP_DETERMINISTIC_REDUCTION",
    # GPU: cuBLAS's reduction order and TF32
    "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
)
# Set variables with these prefixes are recorded too (``environ_other``), for the investigator; reuse
# does not apply them.
NUMERICS_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "DNNL_", "ONEDNN_", "ATEN_", "OPENBLAS_")
# ATen's CPUCapability (x86_64 builds): the value of at::native::get_cpu_capability()'s static, and the
# name torch.backends.cpu.get_cpu_capability() gives it; ATEN_CPU_CAPABILITY takes the lower-case name.
CPU_CAPABILITIES = ("DEFAULT", "AVX2", "AVX512")


@dataclass
class Numerics:
    """What decided the kernels and threads of the process (docs/patchgen.md, context.json).  A value
    memory did not tell is ``UNKNOWN``; each ``*_source`` says where a value was read."""

    environ: Union[Dict[str, Optional[str]], str] = UNKNOWN  # NUMERICS_VARIABLES -> value, None when not set
    environ_source: str = ""
    environ_other: Dict[str, str] = field(default_factory=dict)  # other set variables with NUMERICS_PREFIXES
    torch_threads: Union[int, str] = UNKNOWN  # torch.get_num_threads() of the main thread
    torch_threads_source: str = ""
    set_num_threads: Union[int, None, str] = UNKNOWN  # the last torch.set_num_threads(n); None: never called
    openmp_default_threads: Union[int, str] = UNKNOWN  # OpenMP's initial nthreads-var (OMP_NUM_THREADS or the CPUs)
    cpu_capability: str = UNKNOWN  # one of CPU_CAPABILITIES
    cpu_capability_source: str = ""
    notes: List[str] = field(default_factory=list)


@dataclass
class ExecutionContext:
    python_version: str
    torch_version: str
    packages: Dict[str, str]  # top-level modules exposing __version__
    native_libraries: List[str]  # mapped shared objects
    numerics: Optional[Numerics] = None  # read on request (TorchProcess.execution_context(numerics=True))

    def requirements(self) -> List[str]:
        return [f"{name}=={version}" for name, version in sorted(self.packages.items())]


@dataclass
class RecoveredModel:
    """One model root as recovered from memory: its module tree, tensors and graph (the input from
    which ``readers.fingerprint`` derives the UR's mathematical representation MR, which is
    ``representation.unified.MathematicalRepresentation``)."""

    root_address: int
    root_class: str
    modules: List[ModuleNode] = field(default_factory=list)
    tensors: List[TensorEntry] = field(default_factory=list)
    graph_edges: List[Tuple[str, str, str]] = field(default_factory=list)  # (kind, from path, to path)
    unreadable: List[str] = field(default_factory=list)  # what smeared memory kept out: "module PATH", "tensor NAME"

    def state_dict_tensors(self) -> List[TensorEntry]:
        """What ``state_dict()`` holds: parameters and persistent buffers, first occurrence of each name."""
        seen = set()
        out = []
        for t in self.tensors:
            if t.persistent and t.name not in seen:
                seen.add(t.name)
                out.append(t)
        return out

    def to_json(self, context: Optional[ExecutionContext] = None) -> Dict[str, Any]:
        return {
            "schema": MODEL_SCHEMA_VERSION,
            "root_address": self.root_address,
            "root_class": self.root_class,
            "modules": [dict(asdict(m), class_path=m.class_path) for m in self.modules],
            "tensors": [dict(asdict(t), info=dict(asdict(t.info), device=t.info.device)) for t in self.tensors],
            "graph": {"nodes": [m.path for m in self.modules],
                      "edges": [list(e) for e in self.graph_edges],
                      "encoding": "contains: parent -> child (registration order); next: consecutive leaf modules in registration order"},
            "execution_context": asdict(context) if context else None,
            **({"unreadable": list(self.unreadable)} if self.unreadable else {}),
        }
