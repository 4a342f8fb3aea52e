"""Attribution: which base model of a library a recovered model was derived from (ZEN, NDSS 2026).

``attribute(target, library)`` scores the target's unified representation against every base with
UR = w_mr * MR + w_pr * PR (similarity.py), after a pre-filter on byte-identical code, and ranks the
bases.  The set is open: the top-ranked base is the winner only when its MR and its PR both reach
``MATCH_THRESHOLD``; otherwise the target matches no base of the library (``winner`` is None).  ``pr_matching`` exposes the code-object matching (Omega, Delta, Removed) that the differential
analysis reuses.  docs/attribution.md describes the algorithm, weights, determinism and cost.
"""

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..representation.unified import UnifiedRepresentation
from .similarity import (
    DEFAULT_WEIGHTS,
    PreparedModel,
    PairScorer,
    PreparedProgram,
    ProgramMatching,
    Vocabulary,
    Weights,
    exact_bytecode_matches,
    match_programs,
    mr_similarity,
    prepare_model,
    prepare_program,
)

__all__ = ["ATTRIBUTION_SCHEMA_VERSION", "Attribution", "BaseScore", "DEFAULT_WEIGHTS", "MATCH_THRESHOLD", "Match",
           "MIN_EXACT_FRACTION", "Weights", "attribute", "compare", "no_match_text", "pr_matching", "similarity_matrix",
           "to_json"]

# 2: open-set attribution (``winner`` is None below the threshold; ``best`` and ``threshold`` added).
ATTRIBUTION_SCHEMA_VERSION = 2

# A base of the target's CPython version is a candidate when at least this fraction of the smaller
# program's code objects is byte-identical in both (and at least one is).  Derivatives keep far more
# (the ZEN paper's most customised model still shares 16.7% of its functions with its base); unrelated
# models of the same version share only small helpers.
MIN_EXACT_FRACTION = 0.05
# Open-set attribution: the top-ranked base wins only when both views agree that it is the origin: the
# weaker of its MR and PR (``BaseScore.evidence``; PR alone where either side has no MR) reaches this;
# below it no base of the library matches the target.  A derivative keeps most of its base's
# architecture *and* most of its code; a sibling base of the same package shares code (timm's resnet and
# mobilenetv2: PR 0.75) but not architecture (MR <= 0.48), and bases of related packages share
# architecture (yolov5/yolov8: MR 0.80) but not code (PR 0.13).  Calibrated on the corpus
# (docs/attribution.md, "Open set"; benchmarks/bench_attribution.py --calibrate, 41 models of 9 bases,
# cores): genuine evidence min 0.506, impostor max 0.475; the midpoint: FAR 0/52, FRR 0/41, in-sample.
MATCH_THRESHOLD = 0.49


@dataclass
class BaseScore:
    base: str
    mr: Optional[float]  # None when the target or the base has no MR
    pr: float
    ur: float
    rank: int  # 1 = winner
    candidate: bool  # passed the exact-bytecode pre-filter; only candidates can win
    exact_matches: int  # target code objects whose exact bytecode the base also has
    details: Dict[str, float] = field(default_factory=dict)

    @property
    def evidence(self) -> float:
        """What the open-set decision weighs: the weaker of MR and PR (PR where there is no MR)."""
        return self.pr if self.mr is None else min(self.mr, self.pr)


@dataclass
class Match:
    target: str  # function_id in the target
    base: str  # function_id in the base
    similarity: float
    exact: bool  # same function_id and byte-identical code


@dataclass
class Attribution:
    target: Optional[str]
    scores: List[BaseScore]  # rank order
    winner: Optional[str]
    margin: float  # winner UR - best UR of the other bases (0 for them when the library has one base)
    omega: List[Match]  # the best base's matching (the winner's, when there is one)
    delta: List[str]  # target code objects the best base lacks (added or rewritten beyond recognition)
    removed: List[str]  # best base code objects the target lacks
    cross_version: bool  # the best base's CPython version is not the target's
    notes: List[str] = field(default_factory=list)
    # The top-ranked base, winner or not; ``winner`` is this base when its UR reaches ``threshold``, else
    # None: no base of the library matches (open set).
    best: Optional[str] = None
    threshold: float = 0.0
    # s(t, b) between the target's and the winner's code objects, as the matching scored them (the
    # report's heat map reuses it); not part of the JSON form.
    code_similarity: Optional[PairScorer] = field(default=None, repr=False, compare=False)

    @property
    def matched(self) -> bool:
        """A base of the library matches (its UR reaches the threshold)."""
        return self.winner is not None


class _Session:
    """Prepared features of every representation in one run, so that each is prepared once, with one
    shared vocabulary (which the PR scorer requires of the two programs it compares)."""

    def __init__(self):
        self.vocabulary = Vocabulary()
        self._programs: Dict[int, Tuple[UnifiedRepresentation, PreparedProgram]] = {}
        self._models: Dict[int, Tuple[UnifiedRepresentation, Optional[PreparedModel]]] = {}

    def program(self, ur: UnifiedRepresentation) -> PreparedProgram:
        # Keyed by identity; the representation is held too, so that its id cannot be reused meanwhile.
        if id(ur) not in self._programs:
            self._programs[id(ur)] = (ur, prepare_program(ur, self.vocabulary))
        return self._programs[id(ur)][1]

    def model(self, ur: UnifiedRepresentation) -> Optional[PreparedModel]:
        if id(ur) not in self._models:
            self._models[id(ur)] = (ur, prepare_model(ur))
        return self._models[id(ur)][1]


@dataclass
class _Comparison:
    mr: Optional[float]
    pr: float
    ur: float
    exact_matches: int
    details: Dict[str, float]
    matching: ProgramMatching


def _compare(session: _Session, target: UnifiedRepresentation, base: UnifiedRepresentation,
             weights: Weights) -> _Comparison:
    t_prog, b_prog = session.program(target), session.program(base)
    matching = match_programs(t_prog, b_prog, weights)
    details: Dict[str, float] = {
        "pr.matched": len(matching.pairs),
        "pr.exact": matching.stages.get("exact", 0),
        "pr.delta": len(matching.delta),
        "pr.removed": len(matching.removed),
    }
    t_model, b_model = session.model(target), session.model(base)
    mr = None
    if t_model is not None and b_model is not None:
        mr, mr_details = mr_similarity(t_model, b_model, weights)
        details.update(mr_details)
        ur = (weights.mr * mr + weights.pr * matching.score) / (weights.mr + weights.pr)
    else:
        ur = matching.score
    return _Comparison(mr, matching.score, ur, exact_bytecode_matches(t_prog, b_prog), details, matching)


def compare(target: UnifiedRepresentation, base: UnifiedRepresentation,
            weights: Weights = DEFAULT_WEIGHTS) -> Tuple[Optional[float], float, float, Dict[str, float]]:
    """(MR, PR, UR, details) of one target against one base, without the pre-filter."""
    c = _compare(_Session(), target, base, weights)
    return c.mr, c.pr, c.ur, c.details


def _base_names(library: Sequence[UnifiedRepresentation]) -> List[str]:
    """Each base's name; an unnamed base gets one from its content, so that names (which order ties)
    do not depend on the order of the library."""
    names = [ur.name or "<unnamed:%s>" % hashlib.sha256(ur.dumps().encode()).hexdigest()[:12] for ur in library]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"library bases share a name: {', '.join(duplicates)}")
    return names


def _matches(target: UnifiedRepresentation, base: UnifiedRepresentation, matching: ProgramMatching):
    t_code, b_code = target.pr.code, base.pr.code
    omega = [Match(t_code[i].function_id, b_code[j].function_id, s, exact) for i, j, s, exact in matching.pairs]
    return omega, [t_code[i].function_id for i in matching.delta], [b_code[j].function_id for j in matching.removed]


def pr_matching(target: UnifiedRepresentation, base: UnifiedRepresentation,
                weights: Weights = DEFAULT_WEIGHTS) -> Tuple[List[Match], List[str], List[str], float]:
    """(Omega, Delta, Removed, PR score) of the target against one base: matched code objects,
    target code without a counterpart, base code without one (function_ids, sorted)."""
    session = _Session()
    matching = match_programs(session.program(target), session.program(base), weights)
    omega, delta, removed = _matches(target, base, matching)
    return omega, delta, removed, matching.score


def attribute(target: UnifiedRepresentation, library: Sequence[UnifiedRepresentation],
              weights: Weights = DEFAULT_WEIGHTS, threshold: float = MATCH_THRESHOLD) -> Attribution:
    """Rank the bases of ``library`` as the origin of ``target``.

    Every base gets a row with its scores; the pre-filter only decides which rows may win.  Ranking:
    candidates before non-candidates, then UR descending, then base name (deterministic, and the
    order of ``library`` does not matter).  The top-ranked base (``best``) is the ``winner`` only when
    its UR reaches ``threshold``; otherwise ``winner`` is None and a note says that no base matches.
    """
    names = _base_names(library)
    notes: List[str] = []
    if not library:
        return Attribution(target.name, [], None, 0.0, [], [], [], False, ["the library is empty"], None, threshold)
    session = _Session()
    comparisons = {name: _compare(session, target, base, weights) for name, base in zip(names, library)}
    bases = dict(zip(names, library))

    t_size = len(target.pr.code)
    candidates = {}
    for name, base in bases.items():
        if base.python_version != target.python_version:
            candidates[name] = True  # exact bytecode cannot be compared across versions: no filter
        else:
            needed = max(1, math.ceil(MIN_EXACT_FRACTION * min(t_size, len(base.pr.code))))
            candidates[name] = comparisons[name].exact_matches >= needed
    if not any(candidates.values()):
        candidates = dict.fromkeys(candidates, True)
        notes.append("no base shares enough byte-identical code with the target "
                     f"(at least {MIN_EXACT_FRACTION:.0%} of the smaller program): every base is a candidate")
    if not all(b.python_version == target.python_version for b in library):
        other = sorted({b.python_version for b in library if b.python_version != target.python_version})
        notes.append(f"target runs CPython {target.python_version}, bases of {', '.join(other)} are compared "
                     "without exact bytecode (names, strings and instruction sequences)")
    if target.mr is None:
        notes.append("the target has no MR: UR = PR")
    else:
        without = sorted(n for n, b in bases.items() if b.mr is None)
        if without:
            notes.append(f"bases without MR, scored on PR alone: {', '.join(without)}")

    order = sorted(names, key=lambda n: (not candidates[n], -comparisons[n].ur, n))
    scores = [BaseScore(base=n, mr=comparisons[n].mr, pr=comparisons[n].pr, ur=comparisons[n].ur, rank=k + 1,
                        candidate=candidates[n], exact_matches=comparisons[n].exact_matches,
                        details=comparisons[n].details)
              for k, n in enumerate(order)]
    best = order[0]
    others = [s.ur for s in scores[1:]]
    margin = scores[0].ur - (max(others) if others else 0.0)
    if margin < 0:
        notes.append("a base that failed the pre-filter has a higher UR than the best candidate")
    matched = scores[0].evidence >= threshold
    if not matched:
        notes.append(no_match_text(best, scores[0], threshold))
    omega, delta, removed = _matches(target, bases[best], comparisons[best].matching)
    return Attribution(
        target=target.name,
        scores=scores,
        winner=best if matched else None,
        margin=margin,
        omega=omega,
        delta=delta,
        removed=removed,
        cross_version=bases[best].python_version != target.python_version,
        notes=notes,
        best=best,
        threshold=threshold,
        code_similarity=comparisons[best].matching.scorer,
    )


def no_match_text(best: str, score: "BaseScore", threshold: float) -> str:
    """The one line that says an attribution found no base (the plugins' rows and warnings use it)."""
    views = "PR" if score.mr is None else f"MR {score.mr:.3f}, PR {score.pr:.3f}"
    return (f"no base in the library matches (best: {best}, UR {score.ur:.3f}; {views}: "
            f"weaker {score.evidence:.3f} < threshold {threshold})")


def similarity_matrix(targets: Sequence[UnifiedRepresentation], library: Sequence[UnifiedRepresentation],
                      weights: Weights = DEFAULT_WEIGHTS) -> Tuple[List[str], List[str], List[List[float]]]:
    """UR of every target (rows) against every base (columns), in the given orders, without the
    pre-filter: the heat map of the benchmark."""
    columns = _base_names(library)
    rows = [t.name or f"target{k}" for k, t in enumerate(targets)]
    session = _Session()
    matrix = [[_compare(session, t, base, weights).ur for base in library] for t in targets]
    return rows, columns, matrix


def to_json(result: Attribution) -> Dict[str, Any]:
    """The JSON form of an attribution (docs/attribution.md): the dataclass fields as they are, under a
    schema number; scores in rank order, Omega by target function_id, Delta and Removed sorted."""
    out = asdict(replace(result, code_similarity=None))
    del out["code_similarity"]
    out["matched"] = result.matched
    out["omega"] = sorted(out["omega"], key=lambda m: (m["target"], m["base"]))
    return {"schema": ATTRIBUTION_SCHEMA_VERSION, "format": "zen-attribution", **out}
