"""One model in one process -> its unified representation UR = (MR, PR, phi).

MR comes from the recovered module tree (``torch.model``); PR is the code its layer classes reach
(``cpython.reach``); phi ties every layer to its class and that class's code.  For a plain-Python
model (no torch) the root is any object: its class and the classes of the objects its attributes
hold make the PR, and there is no MR.

The result is plain data (``representation.unified``); analysis never needs the image again.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from .cpython.code_index import function_id as make_function_id, nested_kind
from .cpython import disassemble
from .cpython.objects import DECODE_ERRORS
from .cpython.reach import CodeReach, ReachedCode, is_framework_module
from .cpython.layouts import minor_version
from .cpython.recover import PythonProcess
from ..errors import CorruptObjectError
from ..representation.model import RecoveredModel
from ..representation.program import ClassInfo, CodeObject, nested_code
from ..representation.unified import ClassFeature, CodeFeature, LayerNode, MathematicalRepresentation, ProgramRepresentation, UnifiedRepresentation

TOOL = "volatility3-zen"
CALL_OPS = ("CALL", "CALL_FUNCTION", "CALL_FUNCTION_KW", "CALL_FUNCTION_EX", "CALL_METHOD", "CALL_KW")
PLAIN_ATTRIBUTE_DEPTH = 4  # how deep a plain-Python root's attributes are searched for its parts' classes
STATE_ATTRIBUTES = 256  # attributes (and container items) of one layer looked at for deployment classes


@dataclass
class ModelFingerprint:
    """A model's UR, and the code objects the walk read for it (by address), which the patch bundle
    serialises without reading them again."""

    ur: UnifiedRepresentation
    code_objects: Dict[int, CodeObject] = field(default_factory=dict)


# -- MR ---------------------------------------------------------------------------------------------
def mathematical_representation(model: RecoveredModel) -> MathematicalRepresentation:
    own: Dict[str, List[Tuple[str, List[int], str]]] = {}
    parameters = 0
    for entry in model.tensors:
        path, _, local = entry.name.rpartition(".")
        own.setdefault(path, []).append((local, list(entry.info.shape), entry.info.dtype))
        if entry.kind == "parameter" and entry.shares_storage_with is None:
            parameters += entry.info.numel
    layers = [
        LayerNode(node.path, node.class_path, node.depth, list(node.children), own.get(node.path, []),
                  dict(node.hyperparameters))
        for node in model.modules
    ]
    return MathematicalRepresentation(model.root_class, layers, [tuple(e) for e in model.graph_edges],
                                      parameters, len(model.tensors))


# -- PR ---------------------------------------------------------------------------------------------
def class_key(info: ClassInfo) -> str:
    return f"{info.module or '?'}.{info.qualname}"


def _strings(consts) -> List[str]:
    out = []
    for c in consts:
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, (tuple, frozenset)):
            out.extend(_strings(sorted(c, key=repr) if isinstance(c, frozenset) else c))
    return out


def program_representation(python: PythonProcess, reached: ReachedCode,
                           with_source: bool = False) -> Tuple[ProgramRepresentation, Dict[int, str]]:
    """The PR of what the walk reached, and each class's key by address (for phi)."""
    version = minor_version(python.runtime.version)
    codes = reached.code_objects

    def resolve(address: int) -> CodeObject:
        code = codes.get(address)
        if code is None:
            raise CorruptObjectError(f"nested code object at 0x{address:x} was not recovered")
        return code

    method_owner: Dict[int, str] = {}
    for info in reached.classes.values():
        for func in info.methods.values():
            method_owner.setdefault(func, class_key(info))

    # Module and qualname of every code object: its function's, or its parent code's for nested code.
    named: Dict[int, Tuple[str, str, str, Optional[str]]] = {}  # code -> (module, qualname, kind, owner class)
    by_function = {f.code: f for f in reached.functions.values()}
    order = sorted(codes, key=lambda a: (reached.code_owner[a][1] is not None, a))
    for addr in order:
        func_addr, parent = reached.code_owner[addr]
        func = reached.functions.get(func_addr)
        code = codes[addr]
        if parent is None or addr in by_function:
            owner = by_function.get(addr, func)
            module = (owner.module if owner else None) or "?"
            qualname = (owner.qualname if owner else "") or code.qualname or code.name
            kind = owner.kind if owner else "function"
            named[addr] = (module, qualname, kind, method_owner.get(owner.address) if owner else None)
    pending = [a for a in order if a not in named]
    while pending:  # parents before children: resolve in rounds
        left = []
        for addr in pending:
            parent = reached.code_owner[addr][1]
            if parent in named:
                module, pqual, _, _ = named[parent]
                code = codes[addr]
                named[addr] = (module, code.qualname or f"{pqual}.<locals>.{code.name}", nested_kind(code), None)
            else:
                left.append(addr)
        if len(left) == len(pending):
            for addr in left:
                named[addr] = ("?", codes[addr].qualname or codes[addr].name, nested_kind(codes[addr]), None)
            break
        pending = left

    features: Dict[int, CodeFeature] = {}
    used_ids: Dict[str, int] = {}
    for addr in sorted(codes, key=lambda a: (named[a][0], named[a][1], codes[a].firstlineno, a)):
        code = codes[addr]
        module, qualname, kind, owner = named[addr]
        fid = make_function_id(module, qualname, code, version)
        used_ids[fid] = used_ids.get(fid, 0) + 1
        if used_ids[fid] > 1:  # two lambdas on one line: same name, signature and line
            fid = f"{fid}#{used_ids[fid]}"
        try:
            tokens = disassemble.normalized_disassembly(code, resolve, version)
        except Exception as exc:  # noqa: BLE001 -- xdis asserts on garbled bytecode
            reached.warnings.append(f"{fid}: no disassembly ({type(exc).__name__}: {exc})")
            tokens = []
        source = None
        if with_source:
            try:
                source = disassemble.decompile(code, resolve, version)
            except Exception:  # noqa: BLE001 -- decompilers raise anything
                source = None
        features[addr] = CodeFeature(
            function_id=fid, module=module, qualname=qualname, name=code.name, kind=kind, owner_class=owner,
            argcount=code.argcount, posonlyargcount=code.posonlyargcount, kwonlyargcount=code.kwonlyargcount,
            nlocals=code.nlocals, flags=code.flags, names=list(code.names), varnames=list(code.varnames),
            freevars=list(code.freevars), cellvars=list(code.cellvars), strings=_strings(code.consts),
            calls=sum(1 for t in tokens if t.split(" ", 1)[0] in CALL_OPS),
            code_sha256=hashlib.sha256(code.code).hexdigest(), bytecode_size=len(code.code),
            disassembly=tokens, source=source, address=addr,
        )
    for addr, feature in features.items():
        feature.nested = sorted(features[child].function_id for child in nested_code(codes[addr].consts)
                                if child in features)

    function_ids = {f: features[f_obj.code].function_id for f, f_obj in reached.functions.items() if f_obj.code in features}
    keys: Dict[int, str] = {}
    classes = []
    for addr, info in list(reached.classes.items()) + list(reached.framework_classes.items()):
        keys[addr] = class_key(info)
    for addr, info in sorted(list(reached.classes.items()) + list(reached.framework_classes.items()),
                             key=lambda kv: (class_key(kv[1]), kv[0])):
        framework = addr in reached.framework_classes
        methods = {} if framework else {name: function_ids[f] for name, f in sorted(info.methods.items()) if f in function_ids}
        classes.append(ClassFeature(class_key(info), info.name, info.qualname, info.module or "?",
                                    [keys[b] for b in info.bases if b in keys], methods, framework, addr))
    code_list = sorted(features.values(), key=lambda f: f.function_id)
    return ProgramRepresentation(code_list, classes), keys


def class_code(reached: ReachedCode, class_addr: int, pr: ProgramRepresentation) -> List[str]:
    """phi's programmatic side of a class: the function IDs of the methods it has, its own and those it
    inherits from model-package bases (first in MRO wins, as attribute lookup does)."""
    by_address = {c.address: c for c in pr.classes}
    info = reached.classes.get(class_addr) or reached.framework_classes.get(class_addr)
    if info is None:
        return []
    chosen: Dict[str, str] = {}
    for base in info.mro or [class_addr]:
        feature = by_address.get(base)
        if feature is None:
            continue
        for name, fid in feature.methods.items():
            chosen.setdefault(name, fid)
    return sorted(set(chosen.values()))


# -- the whole UR -------------------------------------------------------------------------------------
class Fingerprinter:
    """Builds URs of the models of one process; the code walk is shared between its models."""

    def __init__(self, python: PythonProcess, with_source: bool = False):
        self.py = python
        self.o = python.objects
        self.with_source = with_source

    def _type(self, obj: int) -> int:
        return self.o.type_of(obj)

    def torch_model(self, model: RecoveredModel, provenance: Optional[dict] = None) -> ModelFingerprint:
        node_class = {}
        for node in model.modules:
            try:
                node_class[node.path] = self._type(node.address)
            except DECODE_ERRORS:
                pass
        mr = mathematical_representation(model)
        if model.unreadable:  # the UR says what it is missing (a clean image records nothing here)
            provenance = dict(provenance or {}, unreadable=len(model.unreadable), unreadable_parts=model.unreadable[:50])
        reach = CodeReach(self.py)
        state = self._state_classes([node.address for node in model.modules], set(node_class.values()), reach)
        return self._build(node_class, mr, model.root_class, provenance, extra_classes=state, reach=reach)

    def _state_classes(self, layers: Iterable[int], layer_classes: Set[int], reach: CodeReach) -> Set[int]:
        """Classes of the deployment's own code whose instances the layers hold as attributes (directly
        or in a list, tuple or dict): a wrapper's dataclass config, a custom tokenizer or scheduler
        that forward reads.  Only deployment code (``CodeReach.is_deployment_module``): what an
        installed package's layers hold is the package's business and stays out of its fingerprint."""
        found: Set[int] = set()
        for layer in layers:
            try:
                values = list(self.py.heap.instance_dict(layer).values())
            except DECODE_ERRORS:
                continue
            for value in values[:STATE_ATTRIBUTES]:
                try:
                    kind = self.o.base_kind(value)
                    if kind in ("list", "tuple"):
                        items = self.o.list_items(value) if kind == "list" else self.o.tuple_items(value)
                    elif kind == "dict":
                        items = [v for _, v in self.o.dict_items(value)]
                    else:
                        items = [value]
                    for item in items[:STATE_ATTRIBUTES]:
                        if self.o.kind(item) != "heap":
                            continue
                        type_addr = self._type(item)
                        if type_addr in layer_classes or type_addr in found:
                            continue
                        info = self.py.read_class(type_addr)
                        if reach.is_deployment_module(info.module):
                            found.add(type_addr)
                except DECODE_ERRORS:
                    continue
        return found

    def plain_object(self, root: int, provenance: Optional[dict] = None) -> ModelFingerprint:
        """A model that is not an nn.Module: the classes of the root and of what its attributes hold."""
        root_type = self._type(root)
        node_class = {"": root_type}
        classes = self._attribute_classes(root, PLAIN_ATTRIBUTE_DEPTH)
        info = self.py.read_class(root_type)
        return self._build(node_class, None, class_key(info), provenance, extra_classes=classes)

    def _attribute_classes(self, root: int, depth: int) -> Set[int]:
        found: Set[int] = set()
        seen: Set[int] = set()
        frontier = [root]
        for _ in range(depth):
            nxt = []
            for obj in frontier:
                if obj in seen:
                    continue
                seen.add(obj)
                try:
                    kind = self.o.base_kind(obj)
                    if kind in ("list", "tuple"):
                        items = self.o.list_items(obj) if kind == "list" else self.o.tuple_items(obj)
                        nxt.extend(items[:10000])
                    elif kind == "dict":
                        nxt.extend(v for _, v in self.o.dict_items(obj))
                    elif self.o.kind(obj) == "heap":
                        type_addr = self._type(obj)
                        found.add(type_addr)
                        nxt.extend(self.py.heap.instance_dict(obj).values())
                except DECODE_ERRORS:
                    continue
            frontier = nxt
        return found

    def _build(self, node_class: Dict[str, int], mr: Optional[MathematicalRepresentation], root_class: str,
               provenance: Optional[dict], extra_classes: Iterable[int] = (),
               reach: Optional[CodeReach] = None) -> ModelFingerprint:
        reach = reach or CodeReach(self.py)
        starts = sorted(set(node_class.values()) | set(extra_classes))
        reached = reach.walk(starts)
        pr, keys = program_representation(self.py, reached, self.with_source)
        phi = {}
        for path, type_addr in sorted(node_class.items()):
            phi[path] = {"class": keys.get(type_addr, "?"), "code": class_code(reached, type_addr, pr)}
        major, minor = minor_version(self.py.runtime.version)
        prov = {"tool": TOOL, "python": self.py.runtime.version, "root_class": root_class,
                "model_packages": sorted(reached.packages)}
        if reached.deployment_modules:  # code that no installed package holds (reach.py); bases have none
            prov["deployment_modules"] = sorted(reached.deployment_modules)
        prov.update(provenance or {})
        if reached.warnings:
            prov["warnings"] = reached.warnings[:50]
        if reached.unreadable_functions:
            prov["unreadable_functions"] = sorted(reached.unreadable_functions)
        return ModelFingerprint(UnifiedRepresentation(f"{major}.{minor}", mr, pr, phi, provenance=prov),
                                reached.code_objects)


def framework_class(key: str) -> bool:
    return is_framework_module(key.rsplit(".", 1)[0])
