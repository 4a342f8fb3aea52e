"""How alike two unified representations are: MR similarity (layers, tensors, graph spectrum) and PR
similarity (a one-to-one matching of code objects).

Everything is deterministic: no randomness, no dependence on dict or set iteration order, and a
representation compared with itself scores exactly 1.0.  The algorithm, its weights and thresholds
and the reasons for them are in docs/attribution.md.

The PR side is the expensive one (programs hold thousands of code objects), so features are prepared
once per representation (``prepare_program``) and pairs are scored in blocks with numpy, scipy.sparse
and rapidfuzz's C++ batch scorer rather than in Python loops over pairs.
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import networkx
import numpy
import scipy.sparse
import threadpoolctl
from rapidfuzz import process
from rapidfuzz.distance import Indel
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from ..representation.unified import MathematicalRepresentation, UnifiedRepresentation


@dataclass(frozen=True)
class Weights:
    """All weights of the similarity; each group is normalised by its own sum."""

    # UR = mr * MR + pr * PR (PR alone when either side has no MR)
    mr: float = 0.5
    pr: float = 0.5
    # MR parts
    layer_types: float = 0.3
    parameters: float = 0.1
    tensors: float = 0.1
    shapes: float = 0.25
    spectral: float = 0.25
    # s(t, b) of two code objects
    attributes: float = 0.4
    bytecode: float = 0.6
    # attribute parts of s(t, b)
    names: float = 0.35
    strings: float = 0.2
    varnames: float = 0.15
    counts: float = 0.2
    kind: float = 0.1


DEFAULT_WEIGHTS = Weights()

MIN_MATCH = 0.6  # s(t, b) below this is not a match (see docs/attribution.md for the measured spread)
MIN_SAME_NAME = 0.3  # lower bar for a pair that also has the same name: a heavily rewritten method
MAX_ASSIGNMENT = 1500  # larger connected groups of candidate pairs are matched greedily
UNIQUE_SHA_MIN_INSTRUCTIONS = 8  # identical bytecode shorter than this is too common to pair on its own
MAX_SPECTRAL_NODES = 2000  # larger layer graphs leave the spectral part out (dense O(n^3) eigensolver)
SPECTRUM_BINS = numpy.linspace(-0.05, 2.05, 22)  # 21 bins centred on 0, 0.1, ..., 2: 0, 1, 2 are bin centres

# Module prefixes of classes that count as framework classes when the PR does not say.
FRAMEWORK_PACKAGES = frozenset({"torch", "builtins"})
CUSTOM_LAYER = "<custom>"


# -- small set measures ------------------------------------------------------------------------------
def ratio_similarity(a: float, b: float) -> float:
    """min/max, 1.0 when both are 0."""
    if a == b:
        return 1.0
    return min(a, b) / max(a, b) if max(a, b) > 0 else 1.0


def multiset_jaccard(a: Counter, b: Counter) -> float:
    """Weighted Jaccard sum(min)/sum(max) of two multisets; 1.0 when both are empty."""
    keys = set(a) | set(b)
    top = sum(max(a[k], b[k]) for k in keys)
    return sum(min(a[k], b[k]) for k in keys) / top if top else 1.0


# -- MR ------------------------------------------------------------------------------------------------
@dataclass
class PreparedModel:
    """What MR similarity reads from one MR, computed once."""

    layer_types: Counter
    shapes: Counter
    parameter_count: int
    tensor_count: int
    spectrum: Optional[numpy.ndarray]  # eigenvalue histogram (counts per bin); None: graph too large


def prepare_model(ur: UnifiedRepresentation) -> Optional[PreparedModel]:
    mr = ur.mr
    if mr is None:
        return None
    framework = {c.key: c.framework for c in ur.pr.classes}
    return PreparedModel(
        layer_types=Counter(layer_label(layer.class_key, framework) for layer in mr.layers),
        shapes=Counter(tuple(shape) for layer in mr.layers for _, shape, _ in layer.tensors),
        parameter_count=mr.parameter_count,
        tensor_count=mr.tensor_count,
        spectrum=spectrum_histogram(mr),
    )


def layer_label(class_key: str, framework: Dict[str, bool]) -> str:
    """Framework classes by their key (torch.nn.modules.conv.Conv2d keeps it in any derivative);
    the model's own classes all alike, since an obfuscated derivative renames them."""
    is_framework = framework.get(class_key)
    if is_framework is None:
        is_framework = class_key.split(".", 1)[0] in FRAMEWORK_PACKAGES
    return class_key if is_framework else CUSTOM_LAYER


def layer_graph(mr: MathematicalRepresentation) -> networkx.Graph:
    """The undirected simple graph of layers: "contains" and "next" edges, one node per layer path.
    Without recorded edges, containment is derived from the paths."""
    graph = networkx.Graph()
    graph.add_nodes_from(layer.path for layer in mr.layers)
    edges = [(a, b) for _, a, b in mr.edges]
    if not edges:
        edges = [(layer.path.rpartition(".")[0], layer.path) for layer in mr.layers if layer.path]
    graph.add_edges_from((a, b) for a, b in edges if a != b)
    return graph


def laplacian_spectrum(graph: networkx.Graph) -> numpy.ndarray:
    """Sorted eigenvalues of the normalised Laplacian (all in [0, 2])."""
    if graph.number_of_nodes() == 0:
        return numpy.zeros(0)
    nodes = sorted(graph.nodes)  # any fixed order: the spectrum does not depend on it, the rounding does
    matrix = networkx.normalized_laplacian_matrix(graph, nodelist=nodes).toarray()
    # One BLAS thread: for matrices of a few hundred rows, OpenBLAS's threads cost ten times the work.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return numpy.clip(numpy.linalg.eigvalsh(matrix), 0.0, 2.0)


def spectrum_histogram(mr: MathematicalRepresentation) -> Optional[numpy.ndarray]:
    if len(mr.layers) > MAX_SPECTRAL_NODES:
        return None
    counts, _ = numpy.histogram(laplacian_spectrum(layer_graph(mr)), bins=SPECTRUM_BINS)
    return counts


def spectral_similarity(a: numpy.ndarray, b: numpy.ndarray) -> float:
    """Overlap sum(min(p, q)) = 1 - total variation of the two eigenvalue distributions (histograms
    divided by the node counts): the shape of the wiring, whatever the depth, since size is what the
    layer-type and count parts measure.  Computed on integers, so identical graphs give exactly 1.0."""
    na, nb = int(a.sum()), int(b.sum())
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return int(numpy.minimum(a.astype(numpy.int64) * nb, b.astype(numpy.int64) * na).sum()) / (na * nb)


def mr_similarity(a: PreparedModel, b: PreparedModel, weights: Weights = DEFAULT_WEIGHTS) -> Tuple[float, Dict[str, float]]:
    """MR = weighted mean of its parts; the parts are returned as details ("mr.<part>")."""
    parts = {
        "layer_types": (weights.layer_types, multiset_jaccard(a.layer_types, b.layer_types)),
        "parameters": (weights.parameters, ratio_similarity(a.parameter_count, b.parameter_count)),
        "tensors": (weights.tensors, ratio_similarity(a.tensor_count, b.tensor_count)),
        "shapes": (weights.shapes, multiset_jaccard(a.shapes, b.shapes)),
    }
    if a.spectrum is not None and b.spectrum is not None:
        parts["spectral"] = (weights.spectral, spectral_similarity(a.spectrum, b.spectrum))
    return _weighted_mean(parts.values()), {f"mr.{k}": v for k, (_, v) in parts.items()}


def _weighted_mean(parts: Iterable[Tuple[float, float]]) -> float:
    # Numerator and denominator add the same weights in the same order: all-1.0 parts give exactly 1.0.
    num = den = 0.0
    for weight, value in parts:
        num += weight * value
        den += weight
    return num / den if den else 0.0


# -- PR: normalised instruction tokens -------------------------------------------------------------
_BINARY_OPS = {"POWER": "**", "MULTIPLY": "*", "MATRIX_MULTIPLY": "@", "FLOOR_DIVIDE": "//", "TRUE_DIVIDE": "/",
               "MODULO": "%", "ADD": "+", "SUBTRACT": "-", "LSHIFT": "<<", "RSHIFT": ">>", "AND": "&",
               "XOR": "^", "OR": "|"}
# Interpreter plumbing that one version emits and another does not.
_DROPPED_OPS = frozenset({"PRECALL", "PUSH_NULL", "COPY_FREE_VARS", "MAKE_CELL", "RETURN_GENERATOR", "GEN_START",
                          "TO_BOOL", "NOP", "CACHE", "EXTENDED_ARG", "RESUME", "RESUME_CHECK"})
_RENAMED_OPS = {"LOAD_METHOD": "LOAD_ATTR", "LOAD_SUPER_ATTR": "LOAD_ATTR", "KW_NAMES": "LOAD_CONST",
                "JUMP_ABSOLUTE": "JUMP", "JUMP_FORWARD": "JUMP", "JUMP_BACKWARD": "JUMP",
                "JUMP_BACKWARD_NO_INTERRUPT": "JUMP", "LOAD_FAST_CHECK": "LOAD_FAST",
                "LOAD_FAST_AND_CLEAR": "LOAD_FAST", "LOAD_CLOSURE": "LOAD_FAST"}
_CALL_OPS = frozenset({"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW", "CALL_KW"})
_SUPER_INSTRUCTIONS = {"LOAD_FAST_LOAD_FAST": ("LOAD_FAST", "LOAD_FAST"),
                       "STORE_FAST_LOAD_FAST": ("STORE_FAST", "LOAD_FAST"),
                       "STORE_FAST_STORE_FAST": ("STORE_FAST", "STORE_FAST")}
_NULL_PREFIX = re.compile(r"^NULL(?:\|self)? \+ ")
_LEADING_INT = re.compile(r"^(\d+)")
_DIRECTED_JUMP = re.compile(r"^POP_JUMP_(?:FORWARD|BACKWARD)_IF_")


@lru_cache(maxsize=1 << 16)
def canonical_token(token: str) -> Tuple[str, ...]:
    """One normalized_disassembly token in a form shared by CPython 3.7-3.13 (zero, one or two tokens):
    call opcodes become "CALL n", BINARY_ADD becomes "BINARY_OP +", LOAD_METHOD becomes LOAD_ATTR,
    the 3.11+ "NULL + " argument prefixes go, 3.13 super-instructions are split, plumbing is dropped."""
    op, _, arg = token.partition(" ")
    if op in _DROPPED_OPS:
        return ()
    arg = _NULL_PREFIX.sub("", arg)
    if op in _SUPER_INSTRUCTIONS:
        first, _, second = arg.partition(", ")
        ops = _SUPER_INSTRUCTIONS[op]
        return (f"{ops[0]} {first}", f"{ops[1]} {second}")
    if op == "RETURN_CONST":
        return (f"LOAD_CONST {arg}", "RETURN_VALUE")
    if op in _CALL_OPS:
        count = _LEADING_INT.match(arg)
        return (f"CALL {count.group(1)}" if count else "CALL",)
    if op.startswith(("BINARY_", "INPLACE_")):
        kind, _, rest = op.partition("_")
        symbol = _BINARY_OPS.get(rest)
        if symbol is not None:
            return (f"BINARY_OP {symbol}{'=' if kind == 'INPLACE' else ''}",)
    op = _RENAMED_OPS.get(op, op)
    op = _DIRECTED_JUMP.sub("POP_JUMP_IF_", op)
    return (f"{op} {arg}" if arg else op,)


def canonical_tokens(tokens: Sequence[str]) -> List[str]:
    return [out for token in tokens for out in canonical_token(token)]


# -- PR: prepared features ----------------------------------------------------------------------------
class Vocabulary:
    """Ids shared by the programs of one comparison: set items (names, strings, kinds) and instruction
    tokens.

    Tokens become single characters so that rapidfuzz compares token sequences as strings (its fast
    path); only equality of ids matters, so scores do not depend on the order in which ids were given.
    """

    def __init__(self):
        self.items: Dict[Tuple[str, str], int] = {}
        self.tokens: Dict[str, str] = {}

    def item(self, space: str, value: str) -> int:
        key = (space, value)
        found = self.items.get(key)
        if found is None:
            found = self.items[key] = len(self.items)
        return found

    def text(self, tokens: Sequence[str]) -> str:
        out = []
        for token in tokens:
            char = self.tokens.get(token)
            if char is None:
                n = len(self.tokens)
                n += 0x800 if n >= 0xD800 else 0  # no surrogate code points
                if n > 0x10FFFF:
                    raise ValueError("more distinct instruction tokens than Unicode code points")
                char = self.tokens[token] = chr(n)
            out.append(char)
        return "".join(out)


class _Rows:
    """One set-valued feature of every code object as sorted integer keys, row after row (CSR layout),
    so that the sizes of all pairwise intersections are one sparse matrix product."""

    def __init__(self, keys: numpy.ndarray, lengths: Sequence[int]):
        self.keys = keys
        self.sizes = numpy.asarray(lengths, dtype=numpy.float64)
        self.indptr = numpy.zeros(len(lengths) + 1, dtype=numpy.int64)
        self.indptr[1:] = numpy.cumsum(lengths)

    @classmethod
    def of_sets(cls, sets: List[List[int]]) -> "_Rows":
        return cls(numpy.array([i for s in sets for i in s], dtype=numpy.int64), [len(s) for s in sets])

    @classmethod
    def of_bags(cls, texts: List[str]) -> "_Rows":
        """Token multisets (one character per token): each occurrence is its own key (token, k-th), so
        that set intersection counts min(count_t, count_b) per token."""
        lengths = [len(s) for s in texts]
        chars = numpy.frombuffer("".join(texts).encode("utf-32-le"), dtype=numpy.uint32).astype(numpy.int64)
        rows = numpy.repeat(numpy.arange(len(texts)), lengths)
        order = numpy.lexsort((chars, rows))
        chars, rows = chars[order], rows[order]
        position = numpy.arange(len(chars))
        new_run = numpy.ones(len(chars), dtype=bool)
        new_run[1:] = (chars[1:] != chars[:-1]) | (rows[1:] != rows[:-1])
        occurrence = position - numpy.maximum.accumulate(numpy.where(new_run, position, 0))
        return cls((chars << 24) | occurrence, lengths)

    def matrix(self, indices: numpy.ndarray, width: int) -> scipy.sparse.csr_matrix:
        data = numpy.ones(len(indices), dtype=numpy.float32)  # counts stay exact up to 2**24
        return scipy.sparse.csr_matrix((data, indices, self.indptr), shape=(len(self.indptr) - 1, width))


# Set features of s(t, b).  The instruction multisets only bound the bytecode similarity (candidate_pairs).
SET_FEATURES = ("names", "strings", "varnames")
BAG_FEATURES = ("tokens", "opcodes")


@dataclass
class PreparedProgram:
    """What PR similarity reads from one PR, computed once per comparison vocabulary."""

    version: str
    ids: List[str]
    name_keys: List[str]
    shas: List[str]
    lengths: numpy.ndarray  # canonical instruction count
    weights: numpy.ndarray  # 1 + instruction count: the size weight of the PR score
    kinds: numpy.ndarray
    counts: numpy.ndarray  # (n, 4): argcount, kwonlyargcount, nlocals, calls
    rows: Dict[str, _Rows]  # SET_FEATURES (vocabulary ids) and BAG_FEATURES (token occurrences)
    tokens: List[str]  # canonical tokens, one character each
    opcodes: List[str]  # the opnames alone: the bytecode's shape, which renaming does not touch
    sources: List[Optional[str]]
    has_source: numpy.ndarray
    vocabulary: Vocabulary = field(repr=False, default_factory=Vocabulary)

    def __len__(self) -> int:
        return len(self.ids)


def prepare_program(ur: UnifiedRepresentation, vocabulary: Vocabulary) -> PreparedProgram:
    code = ur.pr.code
    canon = [canonical_tokens(c.disassembly) for c in code]
    tokens = [vocabulary.text(t) for t in canon]
    opcodes = [vocabulary.text([tok.partition(" ")[0] for tok in t]) for t in canon]
    lengths = numpy.array([len(t) for t in canon], dtype=numpy.float64)
    rows = {name: _Rows.of_sets([sorted({vocabulary.item(name, v) for v in getattr(c, name)}) for c in code])
            for name in SET_FEATURES}
    rows["tokens"], rows["opcodes"] = _Rows.of_bags(tokens), _Rows.of_bags(opcodes)
    return PreparedProgram(
        version=ur.python_version,
        ids=[c.function_id for c in code],
        name_keys=[c.name_key for c in code],
        shas=[c.code_sha256 for c in code],
        lengths=lengths,
        weights=lengths + 1.0,
        kinds=numpy.array([vocabulary.item("kind", c.kind) for c in code], dtype=numpy.int64),
        counts=numpy.array([[c.argcount, c.kwonlyargcount, c.nlocals, c.calls] for c in code],
                           dtype=numpy.float64).reshape(len(code), 4),
        rows=rows,
        tokens=tokens,
        opcodes=opcodes,
        sources=[c.source for c in code],
        has_source=numpy.array([c.source is not None for c in code], dtype=bool),
        vocabulary=vocabulary,
    )


# -- PR: pair similarity s(t, b) ------------------------------------------------------------------------
#   s = (attributes * A + bytecode * B) / (attributes + bytecode)
#   A = weighted mean of: Jaccard of co_names, of str constants, of co_varnames (each left out when empty
#       on both sides), closeness of argcount/kwonlyargcount/nlocals/calls, same kind
#   B = mean of the Indel similarity of the canonical token sequences, of the opname sequences, and of
#       the decompiled sources when both sides have one
class PairScorer:
    """s(t, b) between the code objects of one target and one base program."""

    def __init__(self, t: PreparedProgram, b: PreparedProgram, weights: Weights = DEFAULT_WEIGHTS):
        if t.vocabulary is not b.vocabulary:
            raise ValueError("programs prepared with different vocabularies cannot be compared")
        self.t, self.b, self.weights = t, b, weights
        self.matrices = {}
        width = len(t.vocabulary.items)
        for name in SET_FEATURES:
            self.matrices[name] = (t.rows[name].matrix(t.rows[name].keys, width),
                                   b.rows[name].matrix(b.rows[name].keys, width))
        for name in BAG_FEATURES:  # occurrence keys are sparse in a huge space: number them for this pair
            tk, bk = t.rows[name].keys, b.rows[name].keys
            unique, inverse = numpy.unique(numpy.concatenate([tk, bk]), return_inverse=True)
            self.matrices[name] = (t.rows[name].matrix(inverse[:len(tk)], len(unique)),
                                   b.rows[name].matrix(inverse[len(tk):], len(unique)))

    def _intersections(self, name: str, rows, cols) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """|t ∩ b| and |t| + |b| for every (row, col), dense, in BLOCK_DTYPE."""
        xt, xb = self.matrices[name]
        inter = (xt[rows] @ xb[cols].T).toarray()
        sizes_t = self.t.rows[name].sizes[rows].astype(BLOCK_DTYPE)
        return inter, sizes_t[:, None] + self.b.rows[name].sizes[cols].astype(BLOCK_DTYPE)[None, :]

    def attribute_block(self, rows: numpy.ndarray, cols: numpy.ndarray) -> numpy.ndarray:
        """A for every (row, col), in BLOCK_DTYPE: only an input to the bound of candidate_pairs."""
        t, b, w = self.t, self.b, self.weights
        num = _closeness(t.counts[rows].astype(BLOCK_DTYPE)[:, None, :], b.counts[cols].astype(BLOCK_DTYPE)[None, :, :])
        num *= BLOCK_DTYPE(w.counts)
        num += (t.kinds[rows][:, None] == b.kinds[cols][None, :]) * BLOCK_DTYPE(w.kind)
        den = numpy.full(num.shape, w.kind + w.counts, dtype=BLOCK_DTYPE)
        for name in SET_FEATURES:
            inter, total = self._intersections(name, rows, cols)
            _add_jaccard(num, den, inter, total, BLOCK_DTYPE(getattr(w, name)))
        num /= den
        return num

    def attribute_pairs(self, rows: numpy.ndarray, cols: numpy.ndarray) -> numpy.ndarray:
        t, b, w = self.t, self.b, self.weights
        num = _closeness(t.counts[rows], b.counts[cols]) * w.counts
        num += (t.kinds[rows] == b.kinds[cols]) * w.kind
        den = numpy.full(num.shape, w.kind + w.counts)
        for name in SET_FEATURES:
            xt, xb = self.matrices[name]
            inter = numpy.asarray(xt[rows].multiply(xb[cols]).sum(axis=1)).ravel().astype(numpy.float64)
            _add_jaccard(num, den, inter, t.rows[name].sizes[rows] + b.rows[name].sizes[cols], getattr(w, name))
        num /= den
        return num

    def bytecode_bound(self, rows: numpy.ndarray, cols: numpy.ndarray) -> numpy.ndarray:
        """An upper bound of B for every (row, col): Indel similarity is 2 LCS / (m + n), and the LCS
        is at most the multiset intersection of the tokens, which a sparse product counts for all pairs."""
        bound = None
        for name in BAG_FEATURES:
            inter, total = self._intersections(name, rows, cols)
            inter *= 2
            part = numpy.divide(inter, total, out=numpy.ones_like(inter), where=total > 0)
            bound = part if bound is None else bound + part
        with_source = self.t.has_source[rows][:, None] & self.b.has_source[cols][None, :]
        if not with_source.any():
            bound *= BLOCK_DTYPE(0.5)
            return bound
        return numpy.where(with_source, (bound + 1) / 3, bound / 2).astype(BLOCK_DTYPE)

    def bytecode_pairs(self, rows: numpy.ndarray, cols: numpy.ndarray) -> numpy.ndarray:
        t, b = self.t, self.b
        if len(rows) == 0:
            return numpy.zeros(0)
        total = _pairwise([t.tokens[i] for i in rows], [b.tokens[j] for j in cols])
        total += _pairwise([t.opcodes[i] for i in rows], [b.opcodes[j] for j in cols])
        parts = numpy.full(len(rows), 2.0)
        both = numpy.flatnonzero(t.has_source[rows] & b.has_source[cols])
        if len(both):
            total[both] += _pairwise([t.sources[rows[k]] for k in both], [b.sources[cols[k]] for k in both])
            parts[both] += 1.0
        return total / parts

    def _combine(self, attributes, bytecode):
        w = self.weights
        return (w.attributes * attributes + w.bytecode * bytecode) / (w.attributes + w.bytecode)

    def score_pairs(self, pairs: Sequence[Tuple[int, int]]) -> numpy.ndarray:
        """s for a list of (target index, base index) pairs."""
        if not pairs:
            return numpy.zeros(0)
        rows = numpy.array([p[0] for p in pairs], dtype=numpy.int64)
        cols = numpy.array([p[1] for p in pairs], dtype=numpy.int64)
        return self._combine(self.attribute_pairs(rows, cols), self.bytecode_pairs(rows, cols))

    def score_matrix(self, rows: Sequence[int], cols: Sequence[int]) -> numpy.ndarray:
        """s for every target object in ``rows`` against every base object in ``cols`` (dense: for small
        sets; the matching uses candidate_pairs)."""
        rows, cols = numpy.asarray(rows, dtype=numpy.int64), numpy.asarray(cols, dtype=numpy.int64)
        r, c = (g.ravel() for g in numpy.meshgrid(rows, cols, indexing="ij"))
        return self.score_pairs(list(zip(r.tolist(), c.tolist()))).reshape(len(rows), len(cols))

    def candidate_pairs(self, rows: Sequence[int], cols: Sequence[int], threshold: float) -> List[Tuple[int, int, float]]:
        """Every (row, col, s) with s >= threshold, by row then column.

        A (vectorised) and the bound of B give an upper bound of s for all pairs at once; only pairs whose
        bound reaches the threshold are scored exactly (about 1% for unrelated programs).
        """
        rows, cols = numpy.asarray(rows, dtype=numpy.int64), numpy.asarray(cols, dtype=numpy.int64)
        out = []
        for start in range(0, len(rows), ROW_CHUNK):
            chunk = rows[start:start + ROW_CHUNK]
            bound = self._combine(self.attribute_block(chunk, cols), self.bytecode_bound(chunk, cols))
            r, c = numpy.nonzero(bound >= threshold - BOUND_SLACK)
            if len(r) == 0:
                continue
            pairs = list(zip(chunk[r].tolist(), cols[c].tolist()))
            scores = self.score_pairs(pairs)
            out.extend((i, j, float(s)) for (i, j), s in zip(pairs, scores) if s >= threshold)
        return out


ROW_CHUNK = 512  # target objects scored at a time: bounds the dense blocks to ROW_CHUNK x base size
# The bound runs in float32 (half the memory traffic of float64; intersection counts stay exact), the
# exact scores in float64; the slack covers float32 rounding, so no pair that reaches the threshold is lost.
BLOCK_DTYPE = numpy.float32
BOUND_SLACK = 1e-4


def _add_jaccard(num, den, inter, total, weight):
    # A set feature empty on both sides says nothing: it leaves the mean instead of counting as equal.
    union = total - inter
    active = union > 0
    numpy.maximum(union, 1.0, out=union)  # inter is 0 where union is: the quotient stays 0 there
    quotient = inter / union
    quotient *= weight
    num += quotient
    den += active * weight


def _closeness(a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    """Mean over the count columns (last axis) of (min + 1) / (max + 1), for broadcastable a and b."""
    total = None
    for k in range(a.shape[-1]):
        x, y = a[..., k] + 1.0, b[..., k] + 1.0
        part = numpy.minimum(x, y)
        part /= numpy.maximum(x, y)
        total = part if total is None else total + part
    return total / a.shape[-1]


def _pairwise(queries: List[str], choices: List[str]) -> numpy.ndarray:
    if hasattr(process, "cpdist"):  # rapidfuzz >= 3.6
        return process.cpdist(queries, choices, scorer=Indel.normalized_similarity, dtype=numpy.float64, workers=1)
    return numpy.array([Indel.normalized_similarity(q, c) for q, c in zip(queries, choices)], dtype=numpy.float64)


# -- PR: the matching Omega -------------------------------------------------------------------------------
@dataclass
class ProgramMatching:
    """A one-to-one matching of target code objects (indexes into the target's PR) to base ones."""

    pairs: List[Tuple[int, int, float, bool]]  # (target index, base index, s, exact), by target index
    delta: List[int]  # target code objects without a match
    removed: List[int]  # base code objects without a match
    score: float  # the PR similarity
    stages: Dict[str, int]  # pairs found by each stage
    scorer: Optional[PairScorer] = field(default=None, repr=False, compare=False)  # s(t, b) of these programs


def exact_bytecode_matches(t: PreparedProgram, b: PreparedProgram) -> int:
    """Code objects of the target that the base also has byte for byte: same co_code and the same names
    and constants in every instruction (a multiset intersection; 0 across CPython versions, whose
    bytecode differs).  co_code alone is not enough: it holds indexes, not names, and unrelated
    programs share hundreds of identical co_code strings (short __init__s, properties, class bodies)."""
    if t.version != b.version:
        return 0
    return sum((Counter(zip(t.shas, t.tokens)) & Counter(zip(b.shas, b.tokens))).values())


def match_programs(t: PreparedProgram, b: PreparedProgram, weights: Weights = DEFAULT_WEIGHTS) -> ProgramMatching:
    """Omega, in stages that each take what the previous ones left:

    1. exact: same function_id and same co_code (same CPython version): s = 1;
    2. same function_id, different code: accepted when s >= MIN_SAME_NAME;
    3. same function_id apart from the first line, unique on both sides: s >= MIN_SAME_NAME;
    4. same co_code (same version), unique on both sides and at least UNIQUE_SHA_MIN_INSTRUCTIONS long,
       whatever the names (renamed code): s >= MIN_MATCH;
    5. the rest: a maximum-weight assignment over pairs with s >= MIN_MATCH.

    PR score = sum over Omega of s * (size_t + size_b) / (total size of both programs), size = 1 + the
    number of instructions: 1.0 exactly for a program against itself, lower for extra or missing code.
    """
    scorer = PairScorer(t, b, weights)
    pairs: Dict[int, Tuple[int, float, bool]] = {}
    taken_b = set()
    stages = {}

    def accept(candidates: List[Tuple[int, int]], threshold: float, stage: str):
        found = 0
        for (i, j), s in zip(candidates, scorer.score_pairs(candidates)):
            if s >= threshold:
                pairs[i] = (j, float(s), False)
                taken_b.add(j)
                found += 1
        stages[stage] = found

    # 1. exact
    same_version = t.version == b.version
    if same_version:
        by_id_sha = {(fid, sha): j for j, (fid, sha) in enumerate(zip(b.ids, b.shas))}
        for i, key in enumerate(zip(t.ids, t.shas)):
            j = by_id_sha.get(key)
            if j is not None:
                pairs[i] = (j, 1.0, True)
                taken_b.add(j)
    stages["exact"] = len(pairs)

    # 2. same function_id
    by_id = {fid: j for j, fid in enumerate(b.ids) if j not in taken_b}
    accept([(i, by_id[fid]) for i, fid in enumerate(t.ids) if i not in pairs and fid in by_id],
           MIN_SAME_NAME, "same_id")

    # 3. same name, first line moved
    accept(_unique_pairs(t.name_keys, b.name_keys, pairs, taken_b), MIN_SAME_NAME, "same_name")

    # 4. identical bytecode under another name
    if same_version:
        long_t = [sha if t.lengths[i] >= UNIQUE_SHA_MIN_INSTRUCTIONS else None for i, sha in enumerate(t.shas)]
        long_b = [sha if b.lengths[j] >= UNIQUE_SHA_MIN_INSTRUCTIONS else None for j, sha in enumerate(b.shas)]
        accept(_unique_pairs(long_t, long_b, pairs, taken_b), MIN_MATCH, "same_bytecode")

    # 5. assignment over the rest
    rows = [i for i in range(len(t)) if i not in pairs]
    cols = [j for j in range(len(b)) if j not in taken_b]
    assigned = _assign(scorer, rows, cols)
    for i, j, s in assigned:
        pairs[i] = (j, s, False)
        taken_b.add(j)
    stages["assignment"] = len(assigned)

    ordered = [(i, j, s, exact) for i, (j, s, exact) in sorted(pairs.items())]
    numerator = sum(s * (t.weights[i] + b.weights[j]) for i, j, s, _ in ordered)
    denominator = float(t.weights.sum() + b.weights.sum())
    score = numerator / denominator if denominator else 1.0
    return ProgramMatching(
        pairs=ordered,
        delta=[i for i in range(len(t)) if i not in pairs],
        removed=[j for j in range(len(b)) if j not in taken_b],
        score=float(min(score, 1.0)),
        stages=stages,
        scorer=scorer,
    )


def _unique_pairs(t_keys: List[Optional[str]], b_keys: List[Optional[str]], paired_t, taken_b) -> List[Tuple[int, int]]:
    """(i, j) where key i occurs once among the unpaired target objects and once among the free base ones."""
    t_left = Counter(k for i, k in enumerate(t_keys) if k is not None and i not in paired_t)
    b_index: Dict[str, int] = {}
    b_left: Counter = Counter()
    for j, k in enumerate(b_keys):
        if k is not None and j not in taken_b:
            b_left[k] += 1
            b_index[k] = j
    return [(i, b_index[k]) for i, k in enumerate(t_keys)
            if k is not None and i not in paired_t and t_left[k] == 1 and b_left[k] == 1]


def _assign(scorer: PairScorer, rows: List[int], cols: List[int]) -> List[Tuple[int, int, float]]:
    """Maximum total s * (size_t + size_b) over pairs with s >= MIN_MATCH.  The graph of such pairs
    falls apart into connected groups (similar small helpers, one changed method and its original, ...)
    that are solved one by one: the optimum is the same, and each linear_sum_assignment is small.
    Groups above MAX_ASSIGNMENT objects on a side are matched greedily (best pair first)."""
    candidates = scorer.candidate_pairs(rows, cols, MIN_MATCH)
    if not candidates:
        return []
    row_pos = {i: k for k, i in enumerate(rows)}
    col_pos = {j: k for k, j in enumerate(cols)}
    r = numpy.array([row_pos[i] for i, _, _ in candidates])
    c = numpy.array([col_pos[j] for _, j, _ in candidates])
    s = numpy.array([score for _, _, score in candidates])
    size = scorer.t.weights[numpy.asarray(rows)[r]] + scorer.b.weights[numpy.asarray(cols)[c]]
    n_rows, n_cols = len(rows), len(cols)
    graph = scipy.sparse.coo_matrix((numpy.ones(len(r)), (r, n_rows + c)), shape=(n_rows + n_cols, n_rows + n_cols))
    _, labels = connected_components(graph, directed=False)
    pair_group = labels[r]
    order = numpy.argsort(pair_group, kind="stable")
    out = []
    for members in numpy.split(order, numpy.flatnonzero(numpy.diff(pair_group[order])) + 1):
        g_rows, r_local = numpy.unique(r[members], return_inverse=True)
        g_cols, c_local = numpy.unique(c[members], return_inverse=True)
        profit = numpy.zeros((len(g_rows), len(g_cols)))
        sim = numpy.zeros_like(profit)
        profit[r_local, c_local] = s[members] * size[members]
        sim[r_local, c_local] = s[members]
        if max(len(g_rows), len(g_cols)) <= MAX_ASSIGNMENT:
            chosen = zip(*linear_sum_assignment(profit, maximize=True))
        else:
            chosen = _greedy(profit)
        out.extend((rows[g_rows[a]], cols[g_cols[k]], float(sim[a, k])) for a, k in chosen if profit[a, k] > 0)
    return sorted(out)


def _greedy(profit: numpy.ndarray) -> List[Tuple[int, int]]:
    """Best pair first (ties: lower row, then lower column) for groups too large to assign exactly."""
    r_idx, c_idx = numpy.nonzero(profit > 0)
    order = numpy.lexsort((c_idx, r_idx, -profit[r_idx, c_idx]))
    used_r, used_c, chosen = set(), set(), []
    for k in order:
        a, c = int(r_idx[k]), int(c_idx[k])
        if a not in used_r and c not in used_c:
            used_r.add(a)
            used_c.add(c)
            chosen.append((a, c))
    return chosen
