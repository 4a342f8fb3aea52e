"""The programmatic representation of one CPython process: code objects, functions, classes, modules.

Constants are encoded with ``encode_const`` / ``decode_const`` so that big ints, float bit patterns,
complex numbers, bytes, frozensets and references to nested code objects survive a round trip exactly.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

PROGRAM_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CodeRef:
    """A constant that is itself a code object, referenced by its address in the process."""

    address: int


@dataclass
class CodeObject:
    address: int
    name: str
    qualname: Optional[str]  # co_qualname exists from 3.11 on; None before
    filename: str
    firstlineno: int
    argcount: int
    posonlyargcount: int  # 0 before 3.8
    kwonlyargcount: int
    nlocals: int
    stacksize: int
    flags: int
    code: bytes  # original (de-quickened, de-instrumented) co_code
    consts: Tuple[Any, ...]  # str/bytes/int/float/complex/tuple/frozenset/None/Ellipsis/bool/CodeRef
    names: Tuple[str, ...]
    varnames: Tuple[str, ...]
    cellvars: Tuple[str, ...]
    freevars: Tuple[str, ...]
    linetable: bytes  # co_lnotab before 3.10, co_linetable from 3.10 on
    exceptiontable: bytes  # b"" before 3.11
    # 3.11+ keep locals, cells and free variables in one table; the kinds byte string (CO_FAST_*) is
    # needed to rebuild an exact code object (marshal), varnames/cellvars/freevars are derived views.
    localsplusnames: Optional[Tuple[str, ...]] = None
    localspluskinds: Optional[bytes] = None
    quickened: bool = False  # memory held specialised or instrumented bytecode that we restored
    warnings: List[str] = field(default_factory=list)


@dataclass
class Function:
    address: int
    code: int  # address of its code object
    name: str
    qualname: str
    module: Optional[str]  # __module__, when it is a str
    defaults: int = 0  # number of positional defaults
    kwdefaults: int = 0
    closure: int = 0  # number of cells
    kind: str = "function"  # function / method / nested / lambda


@dataclass
class ClassInfo:
    address: int
    name: str
    qualname: str
    module: Optional[str]
    # Every field below has a default: a bare ``mro`` annotation would pick up ``type.mro`` as its default.
    bases: List[int] = field(default_factory=list)
    mro: List[int] = field(default_factory=list)
    methods: Dict[str, int] = field(default_factory=dict)  # name -> function (plain, static, class methods, property getters)
    attributes: Dict[str, Any] = field(default_factory=dict)  # simple class attributes (encoded consts)


@dataclass
class ModuleInfo:
    address: int
    name: str
    file: Optional[str]
    functions: List[int] = field(default_factory=list)  # function addresses defined in this module's dict
    classes: List[int] = field(default_factory=list)


@dataclass
class InterpreterInfo:
    version: str  # "3.11.7"
    runtime_address: int
    interpreter_address: int
    discovery: str  # which method found _PyRuntime
    binary: str  # path of the ELF that holds _PyRuntime


@dataclass
class Program:
    pid: int
    process: str
    interpreter: InterpreterInfo
    code_objects: Dict[int, CodeObject] = field(default_factory=dict)
    functions: Dict[int, Function] = field(default_factory=dict)
    classes: Dict[int, ClassInfo] = field(default_factory=dict)
    modules: Dict[str, ModuleInfo] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


def nested_code(consts) -> List[int]:
    """Addresses of the code objects among ``co_consts`` (inside tuples and frozensets too)."""
    out = []
    for c in consts:
        if isinstance(c, CodeRef):
            out.append(c.address)
        elif isinstance(c, (tuple, frozenset)):
            out.extend(nested_code(c))
    return out


def encode_const(value: Any) -> Dict[str, Any]:
    """Tagged, exact JSON encoding of a code-object constant (shared with the corpus ground truth)."""
    if value is None:
        return {"t": "None"}
    if value is Ellipsis:
        return {"t": "Ellipsis"}
    if isinstance(value, CodeRef):
        return {"t": "code", "addr": value.address}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": value.hex()}
    if isinstance(value, complex):
        return {"t": "complex", "re": value.real.hex(), "im": value.imag.hex()}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, bytes):
        return {"t": "bytes", "v": value.hex()}
    if isinstance(value, tuple):
        return {"t": "tuple", "v": [encode_const(v) for v in value]}
    if isinstance(value, frozenset):
        items = [encode_const(v) for v in value]
        items.sort(key=lambda e: json.dumps(e, sort_keys=True))
        return {"t": "frozenset", "v": items}
    raise TypeError(f"not a code constant: {type(value).__name__}")


def decode_const(obj: Dict[str, Any]) -> Any:
    tag = obj["t"]
    if tag == "None":
        return None
    if tag == "Ellipsis":
        return Ellipsis
    if tag == "code":
        return CodeRef(obj["addr"])
    if tag == "bool":
        return bool(obj["v"])
    if tag == "int":
        return int(obj["v"])
    if tag == "float":
        return float.fromhex(obj["v"])
    if tag == "complex":
        return complex(float.fromhex(obj["re"]), float.fromhex(obj["im"]))
    if tag == "str":
        return obj["v"]
    if tag == "bytes":
        return bytes.fromhex(obj["v"])
    if tag == "tuple":
        return tuple(decode_const(v) for v in obj["v"])
    if tag == "frozenset":
        return frozenset(decode_const(v) for v in obj["v"])
    raise ValueError(f"unknown constant tag {tag!r}")
