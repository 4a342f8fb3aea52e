"""Small hand-built unified representations for unit tests of analysis/ (no image, no compiler).

A code feature is written as its function_id and its instruction tokens; everything similarity and
the diff compare is derived from those, so two features with the same tokens have the same bytecode.
``tests/test_attribution.py`` builds larger URs from real source instead (``make_ur``).
"""

import hashlib
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from volatility3_zen.zenlib.representation.model import encode_value
from volatility3_zen.zenlib.representation.unified import (
    ClassFeature,
    CodeFeature,
    LayerNode,
    MathematicalRepresentation,
    ProgramRepresentation,
    UnifiedRepresentation,
)

MODULE_BASE = "torch.nn.modules.module.Module"
_NAME_OPS = ("LOAD_ATTR", "LOAD_GLOBAL", "LOAD_METHOD", "STORE_ATTR", "IMPORT_NAME")


def code(function_id: str, tokens: Sequence[str], kind: str = "function", owner: Optional[str] = None,
         **overrides) -> CodeFeature:
    """A code feature from ``"module:Qual.name(arg, ...)@line"`` and its disassembly tokens."""
    module, rest = function_id.split(":", 1)
    qualname, args = re.fullmatch(r"(.+)\((.*)\)@\d+", rest).groups()
    varnames = [a for a in args.split(", ") if a]
    names = list(dict.fromkeys(t.split(" ", 1)[1] for t in tokens if t.split(" ", 1)[0] in _NAME_OPS))
    strings = [t.split("str:", 1)[1].strip("'") for t in tokens if t.startswith("LOAD_CONST str:")]
    fields = dict(
        function_id=function_id, module=module, qualname=qualname, name=qualname.rsplit(".", 1)[-1], kind=kind,
        owner_class=owner, argcount=len(varnames), posonlyargcount=0, kwonlyargcount=0, nlocals=len(varnames),
        flags=0x3, names=names, varnames=varnames, freevars=[], cellvars=[], strings=strings,
        calls=sum(t.startswith("CALL") for t in tokens),
        code_sha256=hashlib.sha256("\n".join(tokens).encode()).hexdigest(), bytecode_size=2 * len(tokens),
        disassembly=list(tokens))
    fields.update(overrides)
    return CodeFeature(**fields)


def method(class_key: str, function_id: str, tokens: Sequence[str], **overrides) -> CodeFeature:
    return code(function_id, tokens, kind="method", owner=class_key, **overrides)


def class_of(key: str, methods: Iterable[CodeFeature], bases: Sequence[str] = (MODULE_BASE,)) -> ClassFeature:
    """A model class holding the given method features (by their name)."""
    module, _, qualname = key.rpartition(".")
    return ClassFeature(key=key, name=qualname.rsplit(".", 1)[-1], qualname=qualname, module=module,
                        bases=list(bases), methods={m.name: m.function_id for m in methods}, framework=False)


def framework_class(key: str) -> ClassFeature:
    module, _, name = key.rpartition(".")
    return ClassFeature(key=key, name=name, qualname=name, module=module, bases=[], methods={}, framework=True)


def layer(path: str, class_key: str, children: Sequence[str] = (), tensors: Sequence[Tuple[str, List[int]]] = (),
          **hyperparameters) -> LayerNode:
    """An MR node; tensors as (name, shape) in float32, hyper-parameters as plain values (encoded here)."""
    return LayerNode(path=path, class_key=class_key, depth=path.count(".") + 1 if path else 0,
                     children=list(children), tensors=[(n, list(s), "float32") for n, s in tensors],
                     hyperparameters={k: encode_value(v) for k, v in hyperparameters.items()})


def mr_of(layers: Sequence[LayerNode]) -> MathematicalRepresentation:
    edges = [("contains", n.path.rpartition(".")[0], n.path) for n in layers if n.path]
    elements = [_numel(shape) for n in layers for _, shape, _ in n.tensors]
    return MathematicalRepresentation(root_class=layers[0].class_key, layers=list(layers), edges=edges,
                                      parameter_count=sum(elements), tensor_count=len(elements))


def ur_of(code_features: Sequence[CodeFeature], classes: Sequence[ClassFeature],
          layers: Optional[Sequence[LayerNode]] = None, name: Optional[str] = None,
          version: str = "3.11") -> UnifiedRepresentation:
    """A UR; phi ties each layer to its class and that class's methods."""
    mr = mr_of(layers) if layers else None
    methods: Dict[str, List[str]] = {c.key: sorted(c.methods.values()) for c in classes}
    phi = {n.path: {"class": n.class_key, "code": methods.get(n.class_key, [])} for n in (layers or ())}
    return UnifiedRepresentation(python_version=version, mr=mr, pr=ProgramRepresentation(list(code_features),
                                                                                        list(classes)),
                                 phi=phi, name=name, provenance={"tool": "tests/ur_builders.py"})


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
