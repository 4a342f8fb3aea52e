"""Differential analysis: what a recovered model changed, added and removed relative to its base
(the ZEN paper's Algorithm 2, on unified representations only: no memory image).

Given the target UR, the winning base UR and the code-object matching of attribution
(``attribution.pr_matching``: Omega, Delta, Removed):

- *changed*: pairs of Omega whose code or attributes differ (bytecode, names, constants, variable
  tables, counts, flags, module or qualified name);
- *added*: Delta, the target code without a counterpart, grouped into the classes the target adds
  and free functions;
- *removed*: base code without a counterpart.

A change is shipped as whole code objects, and a nested helper (comprehension, lambda, inner function)
only exists inside its parent's constants.  So the helpers of a changed or added code object, and the
parents of a changed helper, are pulled in as well, as are the unchanged methods of an added class,
which the base does not define under that name: kind "changed" with no differing fields and
``Change.pulled_in_by`` naming what brought them.

docs/patchgen.md describes the JSON form (``DIFF_SCHEMA_VERSION``).
"""

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from rapidfuzz.distance import LCSseq

from ..representation.unified import CodeFeature, UnifiedRepresentation
from .attribution import Match, pr_matching
from .similarity import canonical_tokens

__all__ = ["AddedClass", "Change", "ClassChange", "DIFF_SCHEMA_VERSION", "ModelDiff", "diff_models"]

DIFF_SCHEMA_VERSION = 1
DIFF_FORMAT = "zen-model-diff"
KINDS = ("changed", "added", "removed")
# Code that lives only inside its parent's co_consts: shipped with it, never on its own.
HELPER_KINDS = frozenset({"nested", "lambda", "comprehension"})
# What makes a matched pair "changed" when both run the same CPython version: exact bytecode and
# every table the instructions index, so that a renamed global or a new constant counts too.
SAME_VERSION_FIELDS = ("code_sha256", "disassembly", "names", "strings", "varnames", "freevars", "cellvars",
                       "argcount", "posonlyargcount", "kwonlyargcount", "nlocals", "flags", "module", "qualname",
                       "name")
# Across versions bytecode, flags and co_names differ for unchanged code; compare what survives a
# recompilation (canonical tokens: docs/attribution.md).
CROSS_VERSION_FIELDS = ("tokens", "strings", "varnames", "freevars", "cellvars", "argcount", "posonlyargcount",
                        "kwonlyargcount", "module", "qualname", "name")
# Control-flow layout that compilers of different versions lay out differently for the same source
# (3.12 adds END_FOR after loops and duplicates small return blocks instead of jumping to one): left
# out of the cross-version instruction comparison.
CROSS_VERSION_LAYOUT = frozenset({"END_FOR", "JUMP", "RETURN_VALUE"})


@dataclass
class Change:
    kind: str  # changed / added / removed
    function_id: Optional[str]  # in the target; None for removed
    base_function_id: Optional[str]  # its counterpart in the base; None for added
    class_key: Optional[str]  # the class that holds it as a method (target's, or base's for removed)
    size: int  # bytecode bytes changed (estimate, see _changed_bytes), added or removed
    similarity: Optional[float]  # s(t, b) of the pair; None for added and removed
    fields: List[str] = field(default_factory=list)  # attributes that differ (changed)
    pulled_in_by: Optional[str] = None  # function_id (or added class key) that brought it in unchanged
    code_kind: str = ""  # function / method / nested / lambda / comprehension / class-body


@dataclass
class AddedClass:
    key: str
    name: str
    qualname: str
    module: str
    bases: List[str]  # keys of its direct bases
    methods: Dict[str, str]  # attribute name -> function_id in the target
    attributes: Dict[str, Any] = field(default_factory=dict)  # simple class attributes (filled from the image)


@dataclass
class ClassChange:
    """A class both have (same key, or renamed: its methods match one base class) whose shape differs."""

    key: str
    base_key: str
    bases_added: List[str] = field(default_factory=list)
    bases_removed: List[str] = field(default_factory=list)
    methods_added: List[str] = field(default_factory=list)  # attribute names
    methods_removed: List[str] = field(default_factory=list)


@dataclass
class LayerChange:
    """One layer (MR node) by path: in the target only, in the base only, or in both but different."""

    kind: str  # added / removed / changed
    path: str  # the target's path ("" is the root); the base's for removed
    class_key: Optional[str]  # the target's (None for removed)
    base_class_key: Optional[str]  # the base's (None for added)
    fields: List[str] = field(default_factory=list)  # class / children / tensors / hyperparameters (changed)
    elements: int = 0  # elements of the layer's own tensors (the base's for removed)
    base_path: Optional[str] = None  # the base layer it was aligned with (None for added)


@dataclass
class ModelDiff:
    base: Optional[str]  # the base's library name
    target_root_class: Optional[str]
    changes: List[Change]  # changed, then added, then removed; each by function_id
    added_classes: List[AddedClass]
    warnings: List[str] = field(default_factory=list)
    added_functions: List[str] = field(default_factory=list)  # added code that no added class holds (not helpers)
    removed_classes: List[str] = field(default_factory=list)
    renamed_classes: Dict[str, str] = field(default_factory=dict)  # target key -> base key
    class_changes: List[ClassChange] = field(default_factory=list)
    layer_changes: List[LayerChange] = field(default_factory=list)  # the MR side; empty when either has no MR
    skipped: List[str] = field(default_factory=list)  # function_ids whose code could not be read (either side)
    python_version: str = ""
    base_python_version: str = ""

    @property
    def empty(self) -> bool:
        return not (self.changes or self.added_classes or self.removed_classes or self.class_changes
                    or self.layer_changes)

    def counts(self) -> Dict[str, int]:
        """Changes by kind; ``pulled_in`` counts those included unchanged for a change they belong to."""
        out = {kind: sum(1 for c in self.changes if c.kind == kind) for kind in KINDS}
        out["pulled_in"] = sum(1 for c in self.changes if c.pulled_in_by is not None)
        out["added_classes"] = len(self.added_classes)
        out["removed_classes"] = len(self.removed_classes)
        for kind in KINDS:
            out[f"layers_{kind}"] = sum(1 for c in self.layer_changes if c.kind == kind)
        return out

    @property
    def changed_classes(self) -> List[str]:
        """Classes both have whose behaviour differs: a method's code was changed or added (not merely
        shipped along with a change), or the class's methods or bases differ.  A base class whose
        method a deployment rebound to its own function is one."""
        added = {c.key for c in self.added_classes} | set(self.renamed_classes)
        keys = {c.class_key for c in self.changes
                if c.kind in ("changed", "added") and c.pulled_in_by is None and c.class_key}
        keys |= {c.key for c in self.class_changes}
        return sorted(keys - added)

    def with_class_attributes(self, attributes: Dict[str, Dict[str, Any]]) -> "ModelDiff":
        """A copy whose added classes also carry the given class attributes (class key -> attribute
        name -> encoded value, as the bundle collector reads them from the image); self is unchanged."""
        added = [replace(c, attributes={**c.attributes, **attributes.get(c.key, {})}) for c in self.added_classes]
        return replace(self, added_classes=added)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["changed_classes"] = self.changed_classes
        out["counts"] = self.counts()
        return {"schema": DIFF_SCHEMA_VERSION, "format": DIFF_FORMAT, **out}


def diff_models(target: UnifiedRepresentation, base: UnifiedRepresentation,
                matching: Optional[Tuple[Sequence[Match], Sequence[str], Sequence[str]]] = None) -> ModelDiff:
    """The differences of ``target`` from ``base``.  ``matching`` is (Omega, Delta, Removed) as
    attribution returns them for the winner; without it, ``pr_matching`` computes it."""
    if matching is None:
        omega, delta, removed, _ = pr_matching(target, base)
    else:
        omega, delta, removed = matching
    t_code = {c.function_id: c for c in target.pr.code}
    b_code = {c.function_id: c for c in base.pr.code}
    same_version = target.python_version == base.python_version
    out = ModelDiff(base=base.name, target_root_class=_root_class(target), changes=[], added_classes=[],
                    python_version=target.python_version, base_python_version=base.python_version)
    if not same_version:
        out.warnings.append(f"the target runs CPython {target.python_version}, the base {base.python_version}: "
                            "code is compared by version-independent features (canonical instructions, "
                            "names, constants), not by exact bytecode")
    out.warnings.extend(f"target: {w}" for w in target.provenance.get("warnings", ()))

    def readable(fid: str, feature: Optional[CodeFeature], side: str) -> bool:
        if feature is None:
            out.warnings.append(f"{side} code {fid} is not in its representation: skipped")
        elif _unreadable(feature):
            out.warnings.append(f"{side} code {fid} could not be read (no instructions): skipped")
        else:
            return True
        out.skipped.append(fid)
        return False

    changes: Dict[str, Change] = {}  # by target function_id
    pairs: Dict[str, Match] = {}
    for m in omega:
        t, b = t_code.get(m.target), b_code.get(m.base)
        if not (readable(m.target, t, "target") and readable(m.base, b, "base")):
            continue
        pairs[m.target] = m
        fields = _differences(t, b, same_version)
        if fields:
            changes[m.target] = Change("changed", m.target, m.base, t.owner_class or b.owner_class,
                                       _changed_bytes(t, b, same_version), m.similarity, fields,
                                       code_kind=t.kind)
    for fid in delta:
        t = t_code.get(fid)
        if readable(fid, t, "target"):
            changes[fid] = Change("added", fid, None, t.owner_class, t.bytecode_size, None, code_kind=t.kind)

    _compare_classes(target, base, pairs, out)
    # Unchanged methods of an added class: the base has them only under its own class, if at all.
    for cls in out.added_classes:
        for fid in cls.methods.values():
            if fid not in changes and fid in pairs:
                changes[fid] = _pulled(t_code[fid], pairs[fid], cls.key)
    _pull_in_helpers(changes, t_code, pairs)

    removed_changes = []
    unreadable = set(target.provenance.get("unreadable_functions", ()))
    for fid in removed:
        b = b_code.get(fid)
        if b is not None and f"{b.module}.{b.qualname}" in unreadable:
            out.warnings.append(f"base code {fid}: the target's function of that name is unreadable (smeared "
                                f"memory): not reported as removed")
            out.skipped.append(fid)
            continue
        if readable(fid, b, "base"):
            removed_changes.append(Change("removed", None, fid, b.owner_class, b.bytecode_size, None, code_kind=b.kind))
    held = {fid for cls in out.added_classes for fid in cls.methods.values()}
    out.added_functions = sorted(fid for fid, c in changes.items()
                                 if c.kind == "added" and fid not in held and c.code_kind not in HELPER_KINDS)
    order = {kind: k for k, kind in enumerate(KINDS)}
    out.changes = sorted(list(changes.values()) + removed_changes,
                         key=lambda c: (order[c.kind], c.function_id or c.base_function_id or ""))
    out.skipped = sorted(set(out.skipped))
    out.layer_changes = _compare_layers(target, base, out.renamed_classes)
    return out


def _root_class(ur: UnifiedRepresentation) -> Optional[str]:
    if ur.mr is not None:
        return ur.mr.root_class
    return ur.provenance.get("root_class") or (ur.phi.get("") or {}).get("class")


def _unreadable(code: CodeFeature) -> bool:
    # The fingerprint leaves the tokens empty when xdis cannot decode the bytecode; every real code
    # object has at least a return instruction.
    return code.bytecode_size > 0 and not code.disassembly


def _differences(t: CodeFeature, b: CodeFeature, same_version: bool) -> List[str]:
    if same_version:
        return [name for name in SAME_VERSION_FIELDS if getattr(t, name) != getattr(b, name)]
    out = []
    for name in CROSS_VERSION_FIELDS:
        if name == "tokens":
            differs = _portable_tokens(t) != _portable_tokens(b)
        else:
            differs = getattr(t, name) != getattr(b, name)
        if differs:
            out.append(name)
    return out


def _portable_tokens(code: CodeFeature) -> List[str]:
    return [t for t in canonical_tokens(code.disassembly) if t not in CROSS_VERSION_LAYOUT]


def _changed_bytes(t: CodeFeature, b: CodeFeature, same_version: bool) -> int:
    """Bytes of bytecode that differ, estimated from the instruction tokens (a UR keeps co_code's hash,
    not its bytes): the instructions outside the longest common subsequence of the two token lists,
    each at its code object's average bytes per instruction (inline caches included).  At least one
    code unit (2 bytes) when the bytecode differs; 0 when only names or tables differ."""
    t_tokens = t.disassembly if same_version else _portable_tokens(t)
    b_tokens = b.disassembly if same_version else _portable_tokens(b)
    common = LCSseq.similarity(t_tokens, b_tokens)
    size = ((len(t_tokens) - common) * t.bytecode_size / max(1, len(t_tokens))
            + (len(b_tokens) - common) * b.bytecode_size / max(1, len(b_tokens)))
    size = int(round(size))
    if same_version and t.code_sha256 != b.code_sha256:
        size = max(size, 2)
    return size


def _pulled(t: CodeFeature, m: Match, by: str) -> Change:
    """A matched, unchanged code object shipped with a change: "changed" with no differing fields."""
    return Change("changed", t.function_id, m.base, t.owner_class, 0, m.similarity, [], by, t.kind)


def _pull_in_helpers(changes: Dict[str, Change], t_code: Dict[str, CodeFeature], pairs: Dict[str, Match]) -> None:
    """Close the changes over nesting: a changed or added code object brings its helpers, a changed
    helper brings its parent (and so that parent's other helpers): the unit shipped is a whole tree."""
    parent: Dict[str, str] = {}
    for code in t_code.values():
        for child in code.nested:
            parent.setdefault(child, code.function_id)
    pending = sorted(changes)
    while pending:
        fid = pending.pop()
        code = t_code.get(fid)
        if code is None:
            continue
        linked = [c for c in code.nested if t_code.get(c) is not None and t_code[c].kind in HELPER_KINDS]
        if code.kind in HELPER_KINDS and fid in parent:
            linked.append(parent[fid])
        for other in linked:
            if other in changes or other not in pairs:
                continue  # already in, or unreadable (listed in skipped)
            changes[other] = _pulled(t_code[other], pairs[other], fid)
            pending.append(other)


def _compare_classes(target: UnifiedRepresentation, base: UnifiedRepresentation, pairs: Dict[str, Match],
                     out: ModelDiff) -> None:
    """Added, removed, renamed and reshaped classes of the model's own code (framework classes hold no
    code in a PR and are left out)."""
    unreadable = set(target.provenance.get("unreadable_functions", ()))  # methods smear kept out of the target
    t_classes = {c.key: c for c in target.pr.classes if not c.framework}
    b_classes = {c.key: c for c in base.pr.classes if not c.framework}
    b_owner: Dict[str, str] = {}
    for cls in b_classes.values():
        for fid in cls.methods.values():
            b_owner.setdefault(fid, cls.key)

    matched: Dict[str, str] = {k: k for k in t_classes if k in b_classes}
    claimed: Set[str] = set(matched.values())
    for key in sorted(set(t_classes) - set(matched)):
        # Renamed: the methods that have counterparts all sit in one base class the target lacks,
        # and they are at least half of its methods.
        owners = [b_owner.get(pairs[fid].base) for fid in t_classes[key].methods.values() if fid in pairs]
        owners_set = set(owners)
        if (len(owners_set) == 1 and None not in owners_set and 2 * len(owners) >= len(t_classes[key].methods)
                and next(iter(owners_set)) not in claimed):
            matched[key] = owners[0]
            claimed.add(owners[0])
            out.renamed_classes[key] = owners[0]
    for key in sorted(set(t_classes) - set(matched)):
        c = t_classes[key]
        out.added_classes.append(AddedClass(c.key, c.name, c.qualname, c.module, list(c.bases), dict(c.methods)))
    out.removed_classes = sorted(set(b_classes) - claimed)
    for key, base_key in sorted(matched.items()):
        t, b = t_classes[key], b_classes[base_key]
        t_bases, b_bases = set(_rename(t.bases, out.renamed_classes)), set(b.bases)
        unread = {name for name in b.methods if f"{t.module}.{t.qualname}.{name}" in unreadable}
        change = ClassChange(key, base_key, sorted(t_bases - b_bases), sorted(b_bases - t_bases),
                             sorted(set(t.methods) - set(b.methods)), sorted(set(b.methods) - set(t.methods) - unread))
        if change.bases_added or change.bases_removed or change.methods_added or change.methods_removed:
            out.class_changes.append(change)


def _compare_layers(target: UnifiedRepresentation, base: UnifiedRepresentation,
                    renamed: Dict[str, str]) -> List[LayerChange]:
    """Layers aligned as trees (``_align_layers``): a block swapped in keeps its place and shows as a
    changed class; a block inserted into a numbered container is added, and the blocks after it are
    compared with the base blocks they correspond to, not with the ones at the same index."""
    if target.mr is None or base.mr is None:
        return []
    t_layers = {layer.path: layer for layer in target.mr.layers}
    b_layers = {layer.path: layer for layer in base.mr.layers}
    mapping = _align_layers(t_layers, b_layers, renamed)
    out = []
    for layer in target.mr.layers:
        other = b_layers.get(mapping.get(layer.path, None)) if layer.path in mapping else None
        if other is None:
            out.append(LayerChange("added", layer.path, layer.class_key, None, [], _elements(layer)))
            continue
        fields = []
        if renamed.get(layer.class_key, layer.class_key) != other.class_key:
            fields.append("class")
        if _children(layer, t_layers, mapping) != _children(other, b_layers, None):
            fields.append("children")
        for name in ("tensors", "hyperparameters"):
            if getattr(layer, name) != getattr(other, name):
                fields.append(name)
        if fields:  # a layer that only moved (something was inserted before it) is not a change
            out.append(LayerChange("changed", layer.path, layer.class_key, other.class_key, fields, _elements(layer),
                                   base_path=other.path))
    matched = set(mapping.values())
    out += [LayerChange("removed", layer.path, None, layer.class_key, [], _elements(layer), base_path=layer.path)
            for layer in base.mr.layers if layer.path not in matched]
    return out


def _children(layer, layers: Dict[str, Any], mapping: Optional[Dict[str, str]]) -> List[str]:
    """A layer's children as base paths (through ``mapping`` for the target).  A child listed once
    elsewhere in the tree (a module reachable twice) has no node here and is named as it is."""
    prefix = layer.path + "." if layer.path else ""
    out = []
    for name in layer.children:
        path = prefix + name
        if path not in layers:
            out.append("=" + name)
        else:
            out.append(mapping.get(path, "+" + path) if mapping is not None else path)
    return out


def _align_layers(t_layers: Dict[str, Any], b_layers: Dict[str, Any], renamed: Dict[str, str]) -> Dict[str, str]:
    """target path -> base path, walking both trees from the root.  Named children pair by name;
    numbered children (Sequential, ModuleList) pair by the longest common subsequence of their classes,
    and runs replaced one for one pair in order (a swapped block)."""
    mapping: Dict[str, str] = {}
    pending = [(_base_root_in(t_layers, b_layers, renamed), "")] if "" in t_layers and "" in b_layers else []
    while pending:
        t_path, b_path = pending.pop()
        t, b = t_layers[t_path], b_layers[b_path]
        inner = _wrapped(t, t_layers, b.class_key, renamed)
        if inner is not None:  # a wrapper put in the base layer's place: the layer it holds is the base's
            pending.append((inner, b_path))
            continue
        mapping[t_path] = b_path
        t_prefix, b_prefix = (t_path + ".") if t_path else "", (b_path + ".") if b_path else ""
        t_named = [c for c in t.children if not c.isdigit()]
        b_named = set(c for c in b.children if not c.isdigit())
        pairs = [(c, c) for c in t_named if c in b_named]
        t_numbered = [c for c in t.children if c.isdigit()]
        b_numbered = [c for c in b.children if c.isdigit()]
        if t_numbered and b_numbered:
            t_classes = [renamed.get(t_layers[t_prefix + c].class_key, t_layers[t_prefix + c].class_key)
                         if t_prefix + c in t_layers else "" for c in t_numbered]
            b_classes = [b_layers[b_prefix + c].class_key if b_prefix + c in b_layers else "" for c in b_numbered]
            pairs += [(t_numbered[i], b_numbered[j]) for i, j in _lcs_pairs(t_classes, b_classes)]
        for t_child, b_child in pairs:
            if t_prefix + t_child in t_layers and b_prefix + b_child in b_layers and t_prefix + t_child not in mapping:
                pending.append((t_prefix + t_child, b_prefix + b_child))
    return mapping


def _wrapped(layer, layers: Dict[str, Any], base_class: str, renamed: Dict[str, str]) -> Optional[str]:
    """The path of the one child of ``layer`` whose class is ``base_class``, where ``layer`` itself is
    of another class (``layer1[0] = ScaledResidual(block)``); else None."""
    if renamed.get(layer.class_key, layer.class_key) == base_class:
        return None
    prefix = layer.path + "." if layer.path else ""
    inner = [prefix + c for c in layer.children
             if prefix + c in layers and renamed.get(layers[prefix + c].class_key, layers[prefix + c].class_key) == base_class]
    return inner[0] if len(inner) == 1 else None


def _lcs_pairs(t_classes: List[str], b_classes: List[str]) -> List[Tuple[int, int]]:
    """Index pairs of two class sequences: the longest common subsequence (rapidfuzz's LCS opcodes,
    not difflib's longest-contiguous-run heuristic, which a block inserted into a run of one class
    derails), and between two matches, runs of equal length paired in order (blocks swapped one for
    one)."""
    pairs: List[Tuple[int, int]] = []
    gap_t: List[int] = []
    gap_b: List[int] = []

    def close_gap():
        if gap_t and len(gap_t) == len(gap_b):
            pairs.extend(zip(gap_t, gap_b))
        gap_t.clear()
        gap_b.clear()

    for op in LCSseq.opcodes(t_classes, b_classes):
        if op.tag == "equal":
            close_gap()
            pairs.extend(zip(range(op.src_start, op.src_end), range(op.dest_start, op.dest_end)))
        else:
            gap_t.extend(range(op.src_start, op.src_end))
            gap_b.extend(range(op.dest_start, op.dest_end))
    close_gap()
    return pairs


def _base_root_in(t_layers: Dict[str, Any], b_layers: Dict[str, Any], renamed: Dict[str, str]) -> str:
    """Where the base model sits in the target: the root, unless the target wraps it (a custom root
    holding the base model, ``self.base = Transformer(...)``): then the shallowest layer of the base
    root's class, so that the base's layers align with their own and only the wrapper is added."""
    base_root = b_layers[""].class_key
    if renamed.get(t_layers[""].class_key, t_layers[""].class_key) == base_root:
        return ""
    inside = [path for path, layer in t_layers.items()
              if path and renamed.get(layer.class_key, layer.class_key) == base_root]
    return min(inside, key=lambda p: (p.count("."), p)) if inside else ""


def _elements(layer) -> int:
    total = 0
    for _, shape, _ in layer.tensors:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _rename(keys: Iterable[str], renamed: Dict[str, str]) -> List[str]:
    return [renamed.get(k, k) for k in keys]
