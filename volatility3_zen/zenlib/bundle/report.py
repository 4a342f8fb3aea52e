"""The forensic report: one self-contained HTML page per model root (docs/patchgen.md).

``render_html(target, base, result, model_diff)`` works on representations only (the target's UR, the
winning base's UR, the attribution and the diff), never on a memory image.  The page has inline CSS,
no script and no external resource, so that it opens on an air-gapped workstation.  It shows the
summary, the chain of custody (image sha256, size and name, analysis times, tool versions, command
line), the attribution scores, a heat map of code-object similarity, the added, renamed and
removed classes, the layer changes, a side-by-side diff of every changed code object against its
base counterpart and the text of the added code.

Every name in a UR was read from a memory image, which an attacker may control: all text is passed
through ``_text`` (non-printable characters, lone surrogates and bidirectional controls become
visible escapes) and then HTML-escaped.  The same inputs give the same bytes: no dependence on how
many reports this process wrote before, and the only timestamps are those of the ``provenance`` given
(the "Chain of custody" section, the one part that differs between two runs on the same image).
"""

import difflib
import hashlib
import html
import json
import shlex
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ... import __version__
from ..analysis import attribution, diff, heatmap, similarity
from .contents import RunProvenance
from ..representation.model import readable_value
from ..representation.unified import CodeFeature, UnifiedRepresentation

__all__ = ["MAX_HEATMAP_COLUMNS", "MAX_HEATMAP_ROWS", "REPORT_SUFFIX", "code_text", "render_html", "report_name"]

REPORT_SUFFIX = ".report.html"
# A larger heat map is unreadable on screen and in print; what is left out is counted.  The columns
# of the rows shown (at most one each) always fit; removed base code fills the rest.
MAX_HEATMAP_ROWS = 60
MAX_HEATMAP_COLUMNS = 80
# Longer texts are diffed in context view (differing regions and a few lines around them): a full
# side-by-side table of a several-thousand-instruction function is megabytes of mostly equal lines.
FULL_DIFF_LINES = 400
CONTEXT_LINES = 5
LABEL_CHARS = 44  # heat-map axis labels; the keys below the map and the tooltips carry the full IDs
VALUE_CHARS = 200  # a class attribute's value as shown

_CELL = 14
_CHAR_WIDTH = 6.7  # 11px monospace, approximately


def report_name(pid: int, root: int) -> str:
    """``pid<PID>-<root hex>.report.html``: next to the bundle of the same model root."""
    return f"pid{pid}-{root:x}{REPORT_SUFFIX}"


# -- safe text ---------------------------------------------------------------------------------------------
def _text(value: Any, keep_newlines: bool = False) -> str:
    """Printable text: what is not printable (control and format characters, bidirectional overrides,
    lone surrogates read from memory, unusual spaces) becomes a visible escape such as \\u202e, so it
    can neither disguise a name nor make the page unencodable."""
    value = str(value)
    if value.isprintable():
        return value
    out = []
    for ch in value:
        if ch.isprintable() or (keep_newlines and ch in "\n\t"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _e(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _short(value: Any, limit: int) -> str:
    value = _text(value)
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _score(value: Optional[float]) -> str:
    return "N/A" if value is None else f"{value:.4f}"


def _colour(value: float) -> Tuple[int, int, int]:
    """0 -> near white, 1 -> dark blue (a sequential scale that prints in grey too)."""
    v = min(1.0, max(0.0, float(value)))
    low, high = (247, 251, 255), (8, 48, 107)
    return tuple(int(round(a + (b - a) * v)) for a, b in zip(low, high))


def _fill(value: Optional[float]) -> str:
    if value is None:
        return ""
    r, g, b = _colour(value)
    ink = "#fff" if value > 0.55 else "#000"
    return f' style="background:#{r:02x}{g:02x}{b:02x};color:{ink}"'


# -- code objects as text ----------------------------------------------------------------------------------
def code_text(code: CodeFeature, portable: bool = False) -> List[str]:
    """The readable text of one code object: its attributes, then one instruction per line, then its
    decompiled source when the UR has one.  ``portable``: the instructions in the version-independent
    form the cross-version diff compares (docs/patchgen.md), not this version's spelling."""
    lines = [
        f"# {_text(code.function_id)}",
        f"module: {_text(code.module)}",
        f"qualname: {_text(code.qualname)}",
        f"name: {_text(code.name)}  kind: {_text(code.kind)}  class: {_text(code.owner_class or '-')}",
        f"args: {code.argcount}  posonly: {code.posonlyargcount}  kwonly: {code.kwonlyargcount}  "
        f"nlocals: {code.nlocals}  flags: 0x{code.flags:x}",
        f"names: {_text(', '.join(code.names))}",
        f"varnames: {_text(', '.join(code.varnames))}",
        f"freevars: {_text(', '.join(code.freevars))}  cellvars: {_text(', '.join(code.cellvars))}",
        # repr: quotes show where a string ends, and repr escapes what is not printable
        f"strings: {_text(', '.join(repr(s) for s in code.strings))}",
    ]
    if not portable:
        lines.append(f"co_code sha256: {code.code_sha256}  ({code.bytecode_size} bytes)")
    tokens = ([t for t in similarity.canonical_tokens(code.disassembly) if t not in diff.CROSS_VERSION_LAYOUT]
              if portable else code.disassembly)
    lines.append("--- instructions (canonical, version-independent) ---" if portable else "--- instructions ---")
    lines += [_text(t) for t in tokens]
    if code.source is not None:
        lines.append("--- source ---")
        lines += _text(code.source, keep_newlines=True).expandtabs(4).splitlines()
    return lines


class _HtmlDiff(difflib.HtmlDiff):
    """HtmlDiff numbers its anchors with a process-wide counter; this one counts per report, so that
    the same inputs give the same page."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._tables = 0

    def _make_prefix(self):
        self._prefix = [f"from{self._tables}_", f"to{self._tables}_"]
        self._tables += 1


# -- the heat map ------------------------------------------------------------------------------------------
def _heatmap(target: UnifiedRepresentation, base: UnifiedRepresentation, model_diff: diff.ModelDiff,
             result: attribution.Attribution, weights: similarity.Weights) -> str:
    """The heat map of ``analysis.heatmap`` as inline SVG, with its row and column key."""
    hm = heatmap.code_heatmap(target, base, model_diff, result, MAX_HEATMAP_ROWS, MAX_HEATMAP_COLUMNS, weights)
    if not hm.rows:
        return '<p class="note">No code object of the target differs from the base: no heat map.</p>'
    if not hm.columns:
        return '<p class="note">The base has no code to compare the differing code with: no heat map.</p>'
    rows, columns = hm.rows, hm.columns
    pairs = set(hm.pairs)
    t_code = {c.function_id: c for c in target.pr.code}
    b_code = {c.function_id: c for c in base.pr.code}
    row_labels = [f"t{i + 1} {_short(t_code[fid].qualname, LABEL_CHARS)}" for i, (_, fid) in enumerate(rows)]
    col_labels = [f"b{j + 1} {_short(b_code[fid].qualname, LABEL_CHARS)}" for j, (_, fid) in enumerate(columns)]
    left = 8 + int(_CHAR_WIDTH * max(len(s) for s in row_labels))
    top = 8 + int(_CHAR_WIDTH * max(len(s) for s in col_labels))
    # Wide enough for the legend below the cells, however few columns there are.
    width, height = left + max(_CELL * len(columns) + 8, 420), top + _CELL * len(rows) + 44
    out = [f'<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="code-object similarity heat map">',
           '<defs><linearGradient id="zen-scale">'
           + "".join('<stop offset="{0:.0%}" stop-color="#{1:02x}{2:02x}{3:02x}"/>'.format(v, *_colour(v))
                     for v in (0.0, 0.5, 1.0))
           + "</linearGradient></defs>",
           '<g font-family="monospace" font-size="11">']
    for i, label in enumerate(row_labels):
        out.append(f'<text x="{left - 4}" y="{top + _CELL * i + 11}" text-anchor="end">{html.escape(label)}</text>')
    for j, label in enumerate(col_labels):
        x = left + _CELL * j + 11
        out.append(f'<text transform="translate({x},{top - 4}) rotate(-90)">{html.escape(label)}</text>')
    out.append("</g>")
    for i, (row_kind, t_fid) in enumerate(rows):
        for j, (col_kind, b_fid) in enumerate(columns):
            is_pair = (i, j) in pairs
            value = hm.values[i][j]
            r, g, b = _colour(value)
            stroke = ' stroke="#d62728" stroke-width="2"' if is_pair else ""
            tip = f"t{i + 1} ({row_kind}) {_text(t_fid)}\n× b{j + 1} ({col_kind}) {_text(b_fid)}\ns = {value:.4f}"
            if is_pair:
                tip += " (matched pair)"
            out.append(f'<rect x="{left + _CELL * j}" y="{top + _CELL * i}" width="{_CELL - 1}" height="{_CELL - 1}" '
                       f'fill="#{r:02x}{g:02x}{b:02x}"{stroke}><title>{html.escape(tip)}</title></rect>')
    legend_y = top + _CELL * len(rows) + 12
    out.append(f'<rect x="{left}" y="{legend_y}" width="150" height="10" fill="url(#zen-scale)" stroke="#888"/>')
    out.append(f'<g font-family="sans-serif" font-size="10"><text x="{left}" y="{legend_y + 22}">0</text>'
               f'<text x="{left + 90}" y="{legend_y + 22}">{similarity.MIN_MATCH}</text>'
               f'<text x="{left + 146}" y="{legend_y + 22}">1</text>'
               f'<text x="{left + 160}" y="{legend_y + 9}">s(t, b); red outline: pair matched by Ω</text></g>')
    out.append("</svg>")
    notes = []
    if hm.total_rows > len(rows):
        notes.append(f"{len(rows)} of {hm.total_rows} rows are shown: the first of each kind, shared out evenly")
    if hm.total_columns > len(columns):
        notes.append(f"{len(columns)} of {hm.total_columns} columns are shown: the removed code is cut short")
    key = ['<details class="key"><summary>Row and column key</summary><table class="data" id="heatmap-key">'
           "<tr><th>#</th><th>kind</th><th>function ID</th></tr>"]
    for prefix, entries in (("t", rows), ("b", columns)):
        key += [f'<tr><td>{prefix}{k + 1}</td><td>{_e(kind)}</td><td class="id">{_e(fid)}</td></tr>'
                for k, (kind, fid) in enumerate(entries)]
    key.append("</table></details>")
    return ("".join(f'<p class="note">{_e(n.capitalize())}.</p>' for n in notes)
            + '<div class="scroll">' + "\n".join(out) + "</div>" + "".join(key))


# -- sections ----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:sans-serif;font-size:14px;margin:1.5em;color:#111;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1.05em;margin-top:1.5em}
table.data,table.kv{border-collapse:collapse;margin:.5em 0}
table.data td,table.data th,table.kv td,table.kv th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
table.data th,table.kv th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.id,code,pre{font-family:monospace;word-break:break-all}
pre{background:#f7f7f7;border:1px solid #ddd;padding:6px;white-space:pre-wrap;font-size:12px}
.note{color:#444;font-style:italic}
.warn{color:#8a4b00}
.scroll{overflow-x:auto}
tr.winner td{font-weight:bold}
table.diff{font-family:monospace;font-size:12px;border:1px solid #ccc;margin:.5em 0}
table.diff td{padding:0 4px;vertical-align:top}
.diff_header{background:#e0e0e0}
td.diff_header{color:#555;text-align:right}
.diff_next{background:#c0c0c0}
.diff_add{background:#aaffaa}.diff_chg{background:#ffff77}.diff_sub{background:#ffaaaa}
"""


def _kv(pairs: Iterable[Tuple[str, Any]]) -> str:
    return '<table class="kv">' + "".join(
        f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _list(items: Sequence[Any], css: str = "") -> str:
    if not items:
        return '<p class="note">None.</p>'
    cls = f' class="{css}"' if css else ""
    return f"<ul{cls}>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _value_text(encoded: Any) -> str:
    """A class attribute in the tagged form of representation.model.encode_value, as a Python literal
    (its JSON where the form is not one ``readable_value`` knows)."""
    try:
        return readable_value(encoded)
    except (KeyError, TypeError, ValueError):
        return json.dumps(encoded, sort_keys=True, default=str)


def _numerics_section(context: Optional[Dict[str, Any]]) -> str:
    """The numerics of the process (context.json ``numerics``): what reuse applies so that the rebuilt
    model runs the same kernels with the same threads."""
    numerics = context.get("numerics") if isinstance(context, dict) else None
    if not isinstance(numerics, dict):
        return '<p class="note">Not recorded (no execution context, or a plain-Python model).</p>'

    def sourced(value: Any, source: Any) -> str:
        return _e(value) + (f' <span class="note">({_e(source)})</span>' if source else "")

    called = numerics.get("set_num_threads")
    rows = [
        ("CPU capability (ATen kernels)", sourced(numerics.get("cpu_capability"), numerics.get("cpu_capability_source"))),
        ("torch threads", sourced(numerics.get("torch_threads"), numerics.get("torch_threads_source"))),
        ("torch.set_num_threads", _e("never called" if called is None else called)),
        ("OpenMP default threads", _e(numerics.get("openmp_default_threads"))),
        ("environment read from", _e(numerics.get("environ_source") or "-")),
    ]
    environ = numerics.get("environ")
    if isinstance(environ, dict):
        set_vars = [f"{k}={v}" for k, v in environ.items() if v is not None]
        rows.append(("variables set", _e(", ".join(set_vars) if set_vars else "none of the numerics variables")))
        rows.append(("variables not set", _e(", ".join(k for k, v in environ.items() if v is None) or "-")))
    else:
        rows.append(("variables", _e(environ)))
    other = numerics.get("environ_other")
    if isinstance(other, dict) and other:
        rows.append(("related variables (not applied)", _e(", ".join(f"{k}={v}" for k, v in other.items()))))
    notes = numerics.get("notes") if isinstance(numerics.get("notes"), list) else []
    return (_kv(rows) + ("<h3>Notes</h3>" + _list(notes, "warn") if notes else "")
            + '<p class="note"><code>python -m volatility3_zen.reuse</code> sets these before torch is imported '
            "(<code>--no-numerics</code> skips it): without the same kernels and thread count, a rebuilt model's output can differ in its last "
            "bits.</p>")


def _custody_section(provenance: Optional[RunProvenance]) -> str:
    """The chain of custody: which image by content, when, with which tools, by which command."""
    if provenance is None:
        return '<p class="note">Not recorded (the report was rendered outside a plugin run).</p>'
    p = provenance
    size = "unknown" if p.image_size is None else f"{p.image_size:,} bytes"
    rows = [
        ("image file name", _e(p.image_name or "(not known)")),
        ("image size", _e(size)),
        ("image sha256", f"<code>{_e(p.image_sha256)}</code>" if p.image_sha256 else _e("not computed")),
        ("analysis started (UTC)", _e(p.started)),
        ("analysis finished (UTC)", _e(p.finished)),
        ("volatility3-zen", _e(p.tool_version)),
        ("Volatility 3", _e(p.volatility_version)),
        ("Python (analysis)", _e(p.python_version)),
        # sys.argv quoted as a shell would need it: copied back, it runs the same command.
        ("command line", f"<code>{_e(shlex.join(p.command_line))}</code>"),
    ]
    return (_kv(rows) + ("<h3>Notes</h3>" + _list(p.notes, "warn") if p.notes else "")
            + '<p class="note">The sha256 is of the image file as it lies on disk: <code>sha256sum</code> on the '
            "evidence copy gives the same value. The bundle's manifest.json records the same fields under "
            "<code>provenance</code>.</p>")


def _attribution_table(result: attribution.Attribution) -> str:
    out = ['<table class="data" id="attribution"><tr><th>rank</th><th>base</th><th>MR</th><th>PR</th><th>UR</th>'
           "<th>candidate</th><th>exact matches</th><th>matched</th><th>added (Δ)</th><th>removed</th></tr>"]
    for s in result.scores:
        d = s.details
        counts = "".join(f'<td class="num">{int(d[k]) if k in d else ""}</td>' for k in ("pr.matched", "pr.delta", "pr.removed"))
        row = ' class="winner"' if s.base == result.winner else ""
        out.append(f'<tr{row}><td class="num">{s.rank}</td>'
                   f"<td>{_e(s.base)}</td>"
                   + "".join(f'<td class="num"{_fill(v)}>{_score(v)}</td>' for v in (s.mr, s.pr, s.ur))
                   + f"<td>{'yes' if s.candidate else 'no'}</td><td class=\"num\">{s.exact_matches}</td>{counts}</tr>")
    out.append("</table>")
    return "".join(out)


def _classes_section(model_diff: diff.ModelDiff) -> str:
    out = [f"<h3>Added classes ({len(model_diff.added_classes)})</h3>"]
    if not model_diff.added_classes:
        out.append('<p class="note">None.</p>')
    for k, cls in enumerate(model_diff.added_classes):
        methods = "".join(f"<tr><td><code>{_e(name)}</code></td><td class=\"id\">{_e(fid)}</td></tr>"
                          for name, fid in sorted(cls.methods.items()))
        attributes = "".join(f"<tr><td><code>{_e(name)}</code></td>"
                             f"<td><code>{_e(_short(_value_text(v), VALUE_CHARS))}</code></td></tr>"
                             for name, v in sorted(cls.attributes.items()))
        out.append(f'<div class="added-class" id="class-{k}"><h4 class="id">{_e(cls.key)}</h4>'
                   + _kv([("name", _e(cls.name)), ("qualname", _e(cls.qualname)), ("module", _e(cls.module)),
                          ("bases", "<br>".join(_e(b) for b in cls.bases) or "-")])
                   + (f'<table class="data"><tr><th>method</th><th>function ID</th></tr>{methods}</table>' if methods
                      else '<p class="note">No methods.</p>')
                   + (f'<table class="data"><tr><th>class attribute</th><th>value</th></tr>{attributes}</table>'
                      if attributes else '<p class="note">No simple class attributes.</p>')
                   + "</div>")
    out.append(f"<h3>Renamed classes ({len(model_diff.renamed_classes)})</h3>")
    if model_diff.renamed_classes:
        out.append('<table class="data"><tr><th>target class</th><th>base class</th></tr>'
                   + "".join(f'<tr><td class="id">{_e(k)}</td><td class="id">{_e(v)}</td></tr>'
                             for k, v in sorted(model_diff.renamed_classes.items())) + "</table>")
    else:
        out.append('<p class="note">None.</p>')
    out.append(f"<h3>Removed classes ({len(model_diff.removed_classes)})</h3>" + _list(model_diff.removed_classes, "id"))
    out.append(f"<h3>Changed classes ({len(model_diff.class_changes)})</h3>")
    if model_diff.class_changes:
        out.append('<table class="data"><tr><th>class</th><th>base class</th><th>bases added</th><th>bases removed</th>'
                   "<th>methods added</th><th>methods removed</th></tr>")
        for c in model_diff.class_changes:
            cells = [c.key, c.base_key] + [", ".join(v) for v in (c.bases_added, c.bases_removed, c.methods_added,
                                                                  c.methods_removed)]
            out.append("<tr>" + "".join(f'<td class="id">{_e(v)}</td>' for v in cells) + "</tr>")
        out.append("</table>")
    else:
        out.append('<p class="note">None.</p>')
    out.append(f"<h3>Added functions outside added classes ({len(model_diff.added_functions)})</h3>"
               + _list(model_diff.added_functions, "id"))
    return "".join(out)


def _layers_section(model_diff: diff.ModelDiff, target: UnifiedRepresentation, base: UnifiedRepresentation) -> str:
    if target.mr is None or base.mr is None:
        return '<p class="note">The target or the base has no MR (a plain-Python model): no layers to compare.</p>'
    if not model_diff.layer_changes:
        return '<p class="note">No layer differs.</p>'
    out = ['<table class="data"><tr><th>kind</th><th>path</th><th>base path</th><th>class</th><th>base class</th>'
           "<th>differs in</th><th>elements</th></tr>"]
    for c in model_diff.layer_changes:
        base_path = "" if c.base_path is None else (c.base_path or "(root)")
        out.append(f"<tr><td>{_e(c.kind)}</td><td class=\"id\">{_e(c.path or '(root)')}</td>"
                   f"<td class=\"id\">{_e(base_path)}</td>"
                   f"<td class=\"id\">{_e(c.class_key or '')}</td><td class=\"id\">{_e(c.base_class_key or '')}</td>"
                   f"<td>{_e(', '.join(c.fields))}</td><td class=\"num\">{c.elements}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _changes_table(model_diff: diff.ModelDiff, anchors: Dict[int, str]) -> str:
    if not model_diff.changes:
        return '<p class="note">No code object differs.</p>'
    out = ['<table class="data" id="changes"><tr><th>kind</th><th>function (target)</th><th>base function</th>'
           "<th>class</th><th>size</th><th>s(t, b)</th><th>differs in / detail</th></tr>"]
    for k, c in enumerate(model_diff.changes):
        detail = ", ".join(c.fields) if c.fields else (f"pulled in with {c.pulled_in_by}" if c.pulled_in_by else "")
        name = _e(c.function_id or "")
        if k in anchors:
            name = f'<a href="#{anchors[k]}">{name}</a>'
        out.append(f"<tr><td>{_e(c.kind)}</td><td class=\"id\">{name}</td><td class=\"id\">{_e(c.base_function_id or '')}</td>"
                   f"<td class=\"id\">{_e(c.class_key or '')}</td><td class=\"num\">{c.size}</td>"
                   f'<td class="num"{_fill(c.similarity)}>{_score(c.similarity)}</td><td>{_e(detail)}</td></tr>')
    out.append("</table>")
    return "".join(out)


# -- the page ----------------------------------------------------------------------------------------------
def render_html(target: UnifiedRepresentation, base: UnifiedRepresentation, result: attribution.Attribution,
                model_diff: diff.ModelDiff, *, image: Optional[str] = None, bundle: Optional[str] = None,
                warnings: Sequence[str] = (), weights: similarity.Weights = similarity.DEFAULT_WEIGHTS,
                context: Optional[Dict[str, Any]] = None, provenance: Optional[RunProvenance] = None) -> str:
    """The report of one model root as one HTML document (a str; encode as UTF-8).

    ``target`` is the recovered model's UR (its provenance gives PID, process, root and root class),
    ``base`` the winning base's UR, ``result`` the attribution against the library and ``model_diff``
    the diff against ``base``.  ``image`` names the memory image, ``bundle`` the patch bundle written
    next to the report, ``warnings`` what the caller adds (such as why no bundle was written),
    ``context`` the bundle's context.json (its ``numerics`` get a section), ``provenance`` the run's
    chain of custody (image sha256, times, versions, command line; the section says when it is absent).
    """
    prov = target.provenance
    root = prov.get("root")
    pid = prov.get("pid")
    root_class = model_diff.target_root_class or prov.get("root_class") or ""
    winner = result.scores[0] if result.scores else None
    same_version = target.python_version == base.python_version
    root_text = hex(root) if isinstance(root, int) else str(root or "?")
    title = f"volatility3-zen forensic report: PID {pid if pid is not None else '?'} root {root_text} ({root_class})"

    counts = model_diff.counts()
    summary = _kv([
        ("image", _e(image or prov.get("image") or "(not given)")),
        ("process", _e(prov.get("process", ""))),
        ("PID", _e(pid if pid is not None else "?")),
        ("root", f"<code>{_e(root_text)}</code>"),
        ("root class", f"<code>{_e(root_class)}</code>"),
        ("CPython of the image", _e(f"{prov.get('python') or target.python_version}")),
        ("torch", _e(prov.get("torch") or "-")),
        ("winning base", f"<b>{_e(result.winner)}</b> (CPython {_e(base.python_version)}; "
                         f"from {_e(base.provenance.get('source') or 'unknown')})"),
        ("UR / MR / PR", " / ".join(_score(v) for v in ((winner.ur, winner.mr, winner.pr) if winner else (None,) * 3))),
        ("margin over the next base", _score(result.margin)),
        ("code changed / added / removed",
         f"{counts['changed'] - counts['pulled_in']} / {counts['added']} / {counts['removed']} "
         f"(+{counts['pulled_in']} pulled in unchanged)"),
        ("classes added / removed / renamed", f"{counts['added_classes']} / {counts['removed_classes']} / "
                                              f"{len(model_diff.renamed_classes)}"),
        ("layers added / removed / changed", f"{counts['layers_added']} / {counts['layers_removed']} / "
                                             f"{counts['layers_changed']}"),
        ("target UR sha256", f"<code>{hashlib.sha256(target.dumps().encode()).hexdigest()}</code> (ur.json of the bundle)"),
        ("base fingerprint sha256", f"<code>{hashlib.sha256(base.dumps().encode()).hexdigest()}</code>"),
        ("patch bundle", _e(bundle or "not written")),
        ("producer", _e(f"volatility3-zen {__version__} on Python {sys.version.split()[0]}")),
    ])
    all_warnings = list(result.notes) + list(model_diff.warnings) + list(warnings)

    # The side-by-side diffs: every changed code object that changed itself (pulled-in ones are
    # identical to their counterpart by definition).
    t_code = {c.function_id: c for c in target.pr.code}
    b_code = {c.function_id: c for c in base.pr.code}
    differ = _HtmlDiff(tabsize=4, wrapcolumn=100)
    anchors: Dict[int, str] = {}
    diffs, added = [], []
    for k, c in enumerate(model_diff.changes):
        if c.kind == "changed" and c.pulled_in_by is None and c.function_id in t_code and c.base_function_id in b_code:
            anchors[k] = f"diff-{k}"
            left = code_text(b_code[c.base_function_id], portable=not same_version)
            right = code_text(t_code[c.function_id], portable=not same_version)
            context = max(len(left), len(right)) > FULL_DIFF_LINES
            diffs.append(
                f'<div class="change" id="diff-{k}"><h3 class="id">{_e(c.function_id)}</h3>'
                f"<p>against base <code>{_e(c.base_function_id)}</code>; s(t, b) = {_score(c.similarity)}; "
                f"differs in: {_e(', '.join(c.fields))}; about {c.size} bytes of bytecode"
                + (f"; context view, {CONTEXT_LINES} lines around each difference" if context else "") + "</p>"
                + '<div class="scroll">'
                + differ.make_table(left, right, _e(f"base {result.winner}"), _e("target"), context=context,
                                    numlines=CONTEXT_LINES)
                + "</div></div>")
        elif c.kind == "added" and c.function_id in t_code:
            anchors[k] = f"added-{k}"
            added.append(f'<div class="added-code" id="added-{k}"><h3 class="id">{_e(c.function_id)}</h3>'
                         f"<pre>{html.escape(chr(10).join(code_text(t_code[c.function_id])))}</pre></div>")

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="generator" content="volatility3-zen">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<section id="summary"><h2>Summary</h2>', summary,
        "<h3>Warnings and notes</h3>", _list(all_warnings, "warn"), "</section>",
        '<section id="provenance"><h2>Chain of custody</h2>', _custody_section(provenance), "</section>",
        ('<section id="numerics"><h2>Numerics of the process</h2>' + _numerics_section(context) + "</section>"
         if context is not None else ""),
        '<section id="scores"><h2>Attribution</h2>',
        '<p class="note">UR = 0.5·MR + 0.5·PR (PR alone without an MR); only candidates (bases that share '
        "enough byte-identical code, docs/attribution.md) can win. Cells are shaded by score.</p>",
        _attribution_table(result), "</section>",
        '<section id="heatmap"><h2>Code-object similarity</h2>',
        f'<p class="note">s(t, b) between the target\'s code objects that the diff lists (rows t: changed, then '
        f"added, then pulled in unchanged) and the base {_e(result.winner)}'s code they relate to (columns b: the "
        "matched counterpart of each changed row, the base object most similar to each added row, then the "
        "removed base code). Matched pairs are outlined in red. An added row with a bright cell in a removed "
        f"column is code that was probably rewritten rather than new. At most {MAX_HEATMAP_ROWS} rows (shared "
        f"among the three kinds) and {MAX_HEATMAP_COLUMNS} columns are drawn; hover over a cell for its function "
        "IDs and value.</p>",
        _heatmap(target, base, model_diff, result, weights), "</section>",
        '<section id="classes"><h2>Classes and functions</h2>', _classes_section(model_diff), "</section>",
        '<section id="layers"><h2>Layers</h2>', _layers_section(model_diff, target, base), "</section>",
        f'<section id="code"><h2>Code objects ({len(model_diff.changes)})</h2>', _changes_table(model_diff, anchors),
        "</section>",
        f'<section id="diffs"><h2>Changed code against the base ({len(diffs)})</h2>',
        '<p class="note">Left: the base; right: the target. Each side lists the code object\'s attributes, then '
        "one instruction per line (normalised disassembly: constants and names, no offsets or jump targets)"
        + ("" if same_version else ", here in the version-independent form the cross-version diff compares, "
                                   f"since the target runs CPython {_e(target.python_version)} and the base "
                                   f"{_e(base.python_version)}")
        + ", then the decompiled source where the representation has one. Pulled-in code is identical to its "
        "counterpart and is not shown.</p>",
        "".join(diffs) or '<p class="note">None.</p>', "</section>",
        f'<section id="added"><h2>Added code ({len(added)})</h2>', "".join(added) or '<p class="note">None.</p>',
        "</section>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
