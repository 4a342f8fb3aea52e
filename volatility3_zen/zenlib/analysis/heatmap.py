"""The code-object similarity heat map of a diff: s(t, b) between the target code the diff names and
the base code it relates to, as plain data for the report (``bundle.report`` draws it).

Rows: the target's changed code, its added code, then what was pulled in unchanged.  Columns: the base
counterparts of the changed (and pulled-in) rows, the base object most similar to each added row, and
the removed base code.  The matched pairs then lie on a diagonal, an added object next to its closest
base relative, and a removed object that was in truth rewritten shows as a bright cell in an added row.
The cells are scored with the attribution's own scorer of the winning base (its prepared programs are
not rebuilt), and a matched pair shows the matching's own figure.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from ..representation.unified import UnifiedRepresentation
from .attribution import Attribution
from .diff import ModelDiff
from .similarity import DEFAULT_WEIGHTS, PairScorer, Vocabulary, Weights, prepare_program

Axis = List[Tuple[str, str]]  # (kind, function_id) per row or column


@dataclass
class Heatmap:
    rows: Axis  # kind: changed / added / pulled in
    columns: Axis  # kind: matched / nearest / removed
    values: List[List[float]]  # values[i][j] = s(row i, column j)
    pairs: List[Tuple[int, int]] = field(default_factory=list)  # (row, column) of the pairs matched by Omega
    total_rows: int = 0  # before the budget cut
    total_columns: int = 0


def code_heatmap(target: UnifiedRepresentation, base: UnifiedRepresentation, model_diff: ModelDiff,
                 result: Attribution, max_rows: int, max_columns: int,
                 weights: Weights = DEFAULT_WEIGHTS) -> Heatmap:
    """The heat map of ``model_diff``, at most ``max_rows`` rows (shared out among the three kinds) and
    ``max_columns`` columns (the related ones always fit; removed code fills the rest).  No rows: no
    target code differs; no columns: the base has no code to compare it with."""
    t_index = {c.function_id: k for k, c in enumerate(target.pr.code)}
    b_index = {c.function_id: k for k, c in enumerate(base.pr.code)}
    changed = [c for c in model_diff.changes if c.kind == "changed" and c.pulled_in_by is None]
    added = [c for c in model_diff.changes if c.kind == "added"]
    pulled = [c for c in model_diff.changes if c.kind == "changed" and c.pulled_in_by is not None]
    groups = [[(kind, c.function_id) for c in group if c.function_id in t_index]
              for kind, group in (("changed", changed), ("added", added), ("pulled in", pulled))]
    total_rows = sum(len(g) for g in groups)
    if not total_rows:
        return Heatmap([], [], [], total_rows=0)
    rows = [row for group in share_evenly(groups, max_rows) for row in group]
    shown = {fid for _, fid in rows}
    matched = {c.function_id: c.base_function_id for c in changed + pulled if c.function_id in shown}
    scorer = _scorer(target, base, result, weights)

    columns: Axis = []
    seen = set()

    def column(kind: str, fid: Optional[str]) -> None:
        if fid is not None and fid in b_index and fid not in seen:
            seen.add(fid)
            columns.append((kind, fid))

    for kind, fid in rows:
        if kind == "changed":
            column("matched", matched.get(fid))
    added_rows = [t_index[fid] for kind, fid in rows if kind == "added"]
    if added_rows and base.pr.code:
        nearest = scorer.score_matrix(added_rows, range(len(base.pr.code))).argmax(axis=1)
        for j in nearest.tolist():
            column("nearest", base.pr.code[j].function_id)
    for kind, fid in rows:
        if kind == "pulled in":
            column("matched", matched.get(fid))
    related = len(columns)
    for c in model_diff.changes:
        if c.kind == "removed":
            column("removed", c.base_function_id)
    if not columns:
        return Heatmap(rows, [], [], total_rows=total_rows)
    total_columns = len(columns)
    columns = columns[:max(max_columns, related)]
    matrix = scorer.score_matrix([t_index[fid] for _, fid in rows], [b_index[fid] for _, fid in columns])
    values = [[float(v) for v in row] for row in matrix]
    pair_s = {(c.function_id, c.base_function_id): c.similarity for c in changed + pulled}
    pairs = []
    for i, (_, t_fid) in enumerate(rows):
        for j, (_, b_fid) in enumerate(columns):
            if matched.get(t_fid) == b_fid:
                pairs.append((i, j))
                if pair_s.get((t_fid, b_fid)) is not None:
                    values[i][j] = float(pair_s[(t_fid, b_fid)])  # the matching's own figure, as in the change table
    return Heatmap(rows, columns, values, pairs, total_rows, total_columns)


def _scorer(target: UnifiedRepresentation, base: UnifiedRepresentation, result: Attribution,
            weights: Weights) -> PairScorer:
    """The attribution's scorer of target against the winner; prepared anew only for a result that
    does not carry one (e.g. read back from JSON)."""
    if result.code_similarity is not None:
        return result.code_similarity
    vocabulary = Vocabulary()
    return PairScorer(prepare_program(target, vocabulary), prepare_program(base, vocabulary), weights)


def share_evenly(groups: List[List[Any]], budget: int) -> List[List[Any]]:
    """The first items of each group, at most ``budget`` in all, shared out evenly: a group that needs
    less than its share leaves the rest to the others (so a model with hundreds of changes still
    shows some of its added code)."""
    quota = [0] * len(groups)
    left = budget
    while left > 0:
        open_groups = [k for k, g in enumerate(groups) if quota[k] < len(g)]
        if not open_groups:
            break
        share = max(1, left // len(open_groups))
        for k in open_groups:
            take = min(share, len(groups[k]) - quota[k], left)
            quota[k] += take
            left -= take
    return [g[:q] for g, q in zip(groups, quota)]
