"""The unified representation UR = (MR, PR, phi) of one model: what attribution compares.

MR is the model's mathematical side (module tree, tensor shapes, layer graph), PR its programmatic
side (one feature record per code object, and the classes that hold them), phi maps each layer to
its class and the code that implements it.  Base-model fingerprints and recovered targets share this
form, so a library of bases is just a directory of UR files.

JSON form: docs/unified-representation.md (``UR_SCHEMA_VERSION``).  ``dumps`` writes it with sorted
keys, and lists whose order carries no meaning (the code objects, the classes, phi's code lists) are
sorted, so that the same model always gives the same text and two fingerprints diff cleanly.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

UR_SCHEMA_VERSION = 1
UR_FORMAT = "zen-unified-representation"


@dataclass
class CodeFeature:
    """One code object of the PR: what similarity needs, without the process it came from."""

    function_id: str  # "module:qualname(sig)@firstline" (readers/cpython/code_index.function_id); unique within a UR
    module: str
    qualname: str
    name: str
    kind: str  # function / method / nested / lambda / comprehension / class-body
    owner_class: Optional[str]  # "module.Qualname" of the class that holds it as a method, else None
    argcount: int
    posonlyargcount: int
    kwonlyargcount: int
    nlocals: int
    flags: int
    names: List[str]  # co_names
    varnames: List[str]
    freevars: List[str]
    cellvars: List[str]
    strings: List[str]  # str constants (recursively through tuples), in order
    calls: int  # number of call instructions
    code_sha256: str  # sha256 of co_code: exact, version-specific bytecode
    bytecode_size: int  # len(co_code)
    disassembly: List[str]  # normalized disassembly tokens (no addresses/offsets/lines)
    source: Optional[str] = None  # decompiled source where a decompiler supports the version
    nested: List[str] = field(default_factory=list)  # function_ids of code objects nested in co_consts
    address: int = 0  # image-specific, never used for similarity

    @property
    def name_key(self) -> str:
        """The function_id without its first line: survives code added above it in the same file."""
        return self.function_id.rsplit("@", 1)[0]


@dataclass
class ClassFeature:
    key: str  # "module.Qualname"
    name: str
    qualname: str
    module: str
    bases: List[str]  # keys of direct bases
    methods: Dict[str, str]  # attribute name -> function_id (empty for framework classes)
    framework: bool  # defined by torch / the standard library: no code in the PR
    address: int = 0


@dataclass
class LayerNode:
    """One nn.Module of the tree (an MR node)."""

    path: str  # "" root, "model.0.conv"
    class_key: str  # "module.Qualname"
    depth: int
    children: List[str]  # child names in registration order
    tensors: List[Tuple[str, List[int], str]]  # own parameters/buffers: (local name, shape, dtype)
    hyperparameters: Dict[str, Any] = field(default_factory=dict)  # encode_value form

    def __post_init__(self):
        # One in-memory form whatever the caller passed (tuples or lists), so equality means equal content.
        self.tensors = [(str(name), [int(d) for d in shape], str(dtype)) for name, shape, dtype in self.tensors]


@dataclass
class MathematicalRepresentation:
    root_class: str
    layers: List[LayerNode]  # named_modules() order
    edges: List[Tuple[str, str, str]]  # (kind, from path, to path); kinds "contains", "next"
    parameter_count: int  # total elements of parameters
    tensor_count: int

    def __post_init__(self):
        self.edges = [(str(k), str(a), str(b)) for k, a, b in self.edges]


@dataclass
class ProgramRepresentation:
    code: List[CodeFeature]
    classes: List[ClassFeature]

    def __post_init__(self):
        # A PR is a set: kept in its canonical order so that comparisons and JSON do not depend on the
        # order in which a reader happened to find the objects.
        self.code = sorted(self.code, key=lambda c: c.function_id)
        self.classes = sorted(self.classes, key=lambda c: c.key)
        ids = [c.function_id for c in self.code]
        if len(set(ids)) != len(ids):
            dup = next(i for i, j in zip(ids, ids[1:]) if i == j)
            raise ValueError(f"function_id {dup!r} occurs twice in one program representation")


@dataclass
class UnifiedRepresentation:
    python_version: str  # "3.11" (major.minor)
    mr: Optional[MathematicalRepresentation]  # None for a plain-Python model without torch
    pr: ProgramRepresentation
    phi: Dict[str, Dict[str, Any]]  # layer path -> {"class": class key, "code": [function_ids]}
    name: Optional[str] = None  # library name when this is a base fingerprint
    provenance: Dict[str, Any] = field(default_factory=dict)  # image, pid, root address, packages, tool version

    def __post_init__(self):
        self.phi = {path: {"class": entry.get("class"), "code": sorted(entry.get("code", ()))}
                    for path, entry in self.phi.items()}

    # -- JSON -------------------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return {
            "schema": UR_SCHEMA_VERSION,
            "format": UR_FORMAT,
            "name": self.name,
            "python_version": self.python_version,
            "provenance": self.provenance,
            "mr": None if self.mr is None else _mr_to_json(self.mr),
            "pr": {
                "code": [_code_to_json(c) for c in self.pr.code],
                "classes": [_class_to_json(c) for c in self.pr.classes],
            },
            "phi": {path: {"class": e["class"], "code": list(e["code"])} for path, e in sorted(self.phi.items())},
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "UnifiedRepresentation":
        if not isinstance(data, dict):
            raise ValueError("a unified representation must be a JSON object")
        schema = data.get("schema")
        if schema != UR_SCHEMA_VERSION:
            raise ValueError(f"unified representation schema {schema!r} is not supported "
                             f"(this version reads schema {UR_SCHEMA_VERSION})")
        if data.get("format", UR_FORMAT) != UR_FORMAT:
            raise ValueError(f"not a unified representation (format {data.get('format')!r})")
        try:
            mr = data["mr"]
            return cls(
                python_version=data["python_version"],
                mr=None if mr is None else _mr_from_json(mr),
                pr=ProgramRepresentation(code=[_code_from_json(c) for c in data["pr"]["code"]],
                                         classes=[_class_from_json(c) for c in data["pr"]["classes"]]),
                phi={path: {"class": e["class"], "code": list(e["code"])} for path, e in data["phi"].items()},
                name=data.get("name"),
                provenance=dict(data.get("provenance") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed unified representation: {exc!r}") from exc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=1) + "\n"

    @classmethod
    def loads(cls, text: str) -> "UnifiedRepresentation":
        return cls.from_json(json.loads(text))


_CODE_FIELDS = ("function_id", "module", "qualname", "name", "kind", "owner_class", "argcount", "posonlyargcount",
                "kwonlyargcount", "nlocals", "flags", "names", "varnames", "freevars", "cellvars", "strings", "calls",
                "code_sha256", "bytecode_size", "disassembly", "source", "nested", "address")
_CLASS_FIELDS = ("key", "name", "qualname", "module", "bases", "methods", "framework", "address")


def _code_to_json(code: CodeFeature) -> Dict[str, Any]:
    out = {name: getattr(code, name) for name in _CODE_FIELDS}
    for name in ("names", "varnames", "freevars", "cellvars", "strings", "disassembly", "nested"):
        out[name] = list(out[name])
    return out


def _code_from_json(obj: Dict[str, Any]) -> CodeFeature:
    fields = {name: obj[name] for name in _CODE_FIELDS if name in obj}
    for name in ("names", "varnames", "freevars", "cellvars", "strings", "disassembly", "nested"):
        if name in fields:
            fields[name] = list(fields[name])
    return CodeFeature(**fields)


def _class_to_json(cls: ClassFeature) -> Dict[str, Any]:
    out = {name: getattr(cls, name) for name in _CLASS_FIELDS}
    out["bases"], out["methods"] = list(cls.bases), dict(cls.methods)
    return out


def _class_from_json(obj: Dict[str, Any]) -> ClassFeature:
    fields = {name: obj[name] for name in _CLASS_FIELDS if name in obj}
    fields["bases"], fields["methods"] = list(fields["bases"]), dict(fields["methods"])
    return ClassFeature(**fields)


def _mr_to_json(mr: MathematicalRepresentation) -> Dict[str, Any]:
    return {
        "root_class": mr.root_class,
        "parameter_count": mr.parameter_count,
        "tensor_count": mr.tensor_count,
        # Layers and edges keep their order: named_modules() and registration order are meaningful.
        "layers": [{
            "path": layer.path,
            "class_key": layer.class_key,
            "depth": layer.depth,
            "children": list(layer.children),
            "tensors": [[name, list(shape), dtype] for name, shape, dtype in layer.tensors],
            "hyperparameters": layer.hyperparameters,
        } for layer in mr.layers],
        "edges": [list(edge) for edge in mr.edges],
    }


def _mr_from_json(obj: Dict[str, Any]) -> MathematicalRepresentation:
    return MathematicalRepresentation(
        root_class=obj["root_class"],
        layers=[LayerNode(path=layer["path"], class_key=layer["class_key"], depth=layer["depth"],
                          children=list(layer["children"]),
                          tensors=[(n, list(s), d) for n, s, d in layer["tensors"]],
                          hyperparameters=dict(layer.get("hyperparameters") or {}))
                for layer in obj["layers"]],
        edges=[(k, a, b) for k, a, b in obj["edges"]],
        parameter_count=obj["parameter_count"],
        tensor_count=obj["tensor_count"],
    )
