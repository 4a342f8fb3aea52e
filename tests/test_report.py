"""The forensic HTML report (zenlib/bundle/report.py) and its file next to the patch bundle.

The report is rendered from representations only: hand-built URs (no image needed), a base of the
library against itself, and targets that linux.zen.patchgen recovered from corpus images (the UR the
bundle carries) against the library's bml/ fingerprints.  Each page must parse, contain every
changed function, every added class and every base's scores, carry the heat map, load nothing from
outside, and show names read from memory escaped.
"""

import hashlib
import html
import json
from dataclasses import replace
from html.parser import HTMLParser
from typing import Dict, List

import pytest

from test_attribution import RESNET, make_ur, resnet_se_source, resnet_spec
from volatility3_zen.zenlib.analysis import library as bml
from volatility3_zen.zenlib.bundle import format as bundle_format
from volatility3_zen.zenlib.bundle import write as bundle_write
from volatility3_zen.zenlib.bundle import report
from volatility3_zen.zenlib.analysis import attribution, diff
from volatility3_zen.zenlib.bundle.report import _text as visible  # how the page shows a name read from memory
from volatility3_zen.zenlib.representation.unified import UnifiedRepresentation

# Elements that never have an end tag; everything else must nest properly.
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Parses a report: checks nesting, and collects text, tags, ids, links and table cells."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: List[str] = []
        self.tags: List[str] = []
        self.ids: Dict[str, str] = {}
        self.hrefs: List[str] = []
        self.chunks: List[str] = []
        self.tables: Dict[str, List[List[str]]] = {}
        self.rects: List[dict] = []
        self.attribute_values: List[str] = []
        self._table = None
        self._cell = None
        self.raw = text
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed elements: {self.stack}"
        self.text = "".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        self.attribute_values += [v or "" for _, v in attrs]
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids[attrs["id"]] = tag
        for name in ("href", "src"):
            if name in attrs:
                self.hrefs.append(attrs[name])
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "rect":
            self.rects.append(attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.attribute_values += [v or "" for _, v in attrs]
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("href", "src"):
                self.hrefs.append(value)
        if tag == "rect":
            self.rects.append(dict(attrs))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.chunks.append(data)
        if self._cell is not None:
            self._cell.append(data)


def render(target, library, **kwargs):
    """(page text, attribution, diff) of ``target`` against ``library``, as the plugin computes them."""
    bases = {b.name: b for b in library}
    result = attribution.attribute(target, library, threshold=0.0)  # a report is made for a winner; force one
    model_diff = diff.diff_models(target, bases[result.winner], (result.omega, result.delta, result.removed))
    return report.render_html(target, bases[result.winner], result, model_diff, **kwargs), result, model_diff


def check_page(text, result, model_diff):
    """What every report must show, whatever the model."""
    text.encode("utf-8")  # strict: nothing unencodable (lone surrogates) reaches the page
    page = Page(text)
    assert not {"script", "iframe", "object", "embed", "link", "img"} & set(page.tags)
    assert all(h.startswith("#") for h in page.hrefs), page.hrefs  # only links within the page
    # Nothing fetched from elsewhere (URLs in the code's string constants are text, not attributes).
    assert not [v for v in page.attribute_values if "://" in v and v != "http://www.w3.org/2000/svg"]
    assert all(v.startswith("url(#") for v in page.attribute_values if "url(" in v)
    # Every base's scores, in rank order.
    rows = page.tables["attribution"]
    assert rows[0][:5] == ["rank", "base", "MR", "PR", "UR"]
    assert [r[:5] for r in rows[1:]] == [
        [str(s.rank), s.base] + ["N/A" if v is None else f"{v:.4f}" for v in (s.mr, s.pr, s.ur)] for s in result.scores]
    # Every code change, every changed function with its side-by-side diff, every added class.
    for k, c in enumerate(model_diff.changes):
        assert visible(c.function_id or c.base_function_id) in page.text
        if c.kind == "changed" and c.pulled_in_by is None:
            assert page.ids.get(f"diff-{k}") == "div" and f"#diff-{k}" in page.hrefs
        elif c.kind == "added":
            assert page.ids.get(f"added-{k}") == "div"
    assert text.count('<table class="diff"') == sum(1 for c in model_diff.changes
                                                     if c.kind == "changed" and c.pulled_in_by is None)
    for cls in model_diff.added_classes:
        assert visible(cls.key) in page.text and all(visible(fid) in page.text for fid in cls.methods.values())
    for key in model_diff.removed_classes + sorted(model_diff.renamed_classes):
        assert visible(key) in page.text
    return page


def check_heatmap(page, model_diff):
    """One cell per (row, column), each with a tooltip naming both sides; the matched pairs outlined."""
    assert "svg" in page.tags and '<svg class="heatmap"' in page.raw
    assert " rows are shown" not in page.text and " columns are shown" not in page.text  # small enough here
    cells = [r for r in page.rects if r.get("fill", "").startswith("#")]  # not the legend's gradient bar
    assert cells and page.text.count("\n× b") == len(cells)
    outlined = [r for r in cells if r.get("stroke") == "#d62728"]
    assert len(outlined) == sum(1 for c in model_diff.changes if c.kind == "changed")  # Omega is one-to-one
    for c in model_diff.changes:  # each outlined cell carries the matching's s(t, b), as the change table does
        if c.kind == "changed":
            assert f"{visible(c.base_function_id)}\ns = {c.similarity:.4f} (matched pair)" in page.text
    assert all(visible(c.function_id) in page.text for c in model_diff.changes if c.kind != "removed")


@pytest.fixture(scope="module")
def hand_built():
    base = make_ur("resnet", RESNET, "resnet", resnet_spec())
    target = make_ur(None, resnet_se_source(), "resnet", resnet_spec(se=True, classes=10))
    return target, base


# -- the report on hand-built URs (no image) ---------------------------------------------------------------
def test_report_of_a_derivative(hand_built):
    target, base = hand_built
    target = replace(target, provenance=dict(target.provenance, pid=4242, process="python3", root=0x7F00DEADBEEF,
                                             root_class="resnet.ResNet"))
    text, result, model_diff = render(target, [base], image="dump.lime", bundle="pid4242-7f00deadbeef.zenpatch.zip")
    page = check_page(text, result, model_diff)
    check_heatmap(page, model_diff)
    assert {c.kind for c in model_diff.changes} == {"changed", "added", "removed"}
    for needle in ("dump.lime", "4242", "0x7f00deadbeef", "resnet.ResNet", "pid4242-7f00deadbeef.zenpatch.zip",
                   "resnet.SELayer", "layer1.0.se"):
        assert needle in page.text, needle
    assert report.report_name(4242, 0x7F00DEADBEEF) == "pid4242-7f00deadbeef.report.html"
    # Same inputs, same bytes: difflib's anchors are numbered per report, not per process.
    assert render(target, [base], image="dump.lime", bundle="pid4242-7f00deadbeef.zenpatch.zip")[0] == text


def test_report_of_a_base_against_itself():
    base = bml.BaseModelLibrary(None).load("resnet")
    text, result, model_diff = render(base, [base])
    page = check_page(text, result, model_diff)
    assert model_diff.empty and "svg" not in page.tags and '<table class="diff"' not in text
    assert "No code object of the target differs from the base" in page.text


def test_large_heatmap_is_cut_and_shared_among_kinds():
    """An unrelated pair of bases: hundreds of changed, added and removed code objects."""
    library = bml.BaseModelLibrary(None)
    target, base = replace(library.load("yolov8"), name=None), library.load("yolov7")
    text, result, model_diff = render(target, [base])
    page = check_page(text, result, model_diff)
    counts = model_diff.counts()
    assert counts["changed"] > report.MAX_HEATMAP_ROWS and counts["added"] > report.MAX_HEATMAP_ROWS
    cells = [r for r in page.rects if r.get("fill", "").startswith("#")]
    assert len(cells) == report.MAX_HEATMAP_ROWS * report.MAX_HEATMAP_COLUMNS
    assert f"{report.MAX_HEATMAP_ROWS} of {counts['changed'] + counts['added']} rows are shown" in page.text
    assert " columns are shown" in page.text
    kinds = [kind for number, kind, _ in page.tables["heatmap-key"][1:] if number.startswith("t")]
    assert kinds.count("changed") == kinds.count("added") == report.MAX_HEATMAP_ROWS // 2  # no pulled-in code


HOSTILE = '<script>alert("x")</script>\u202e\udc80\x00&amp;'


def _renamed_everywhere(ur, old, new):
    """``ur`` with ``old`` replaced by ``new`` in every string of its JSON form (IDs, names, keys, tokens)."""
    def walk(value):
        if isinstance(value, str):
            return value.replace(old, new)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {walk(k): walk(v) for k, v in value.items()}
        return value
    return UnifiedRepresentation.from_json(walk(ur.to_json()))


def test_hostile_names_are_escaped(hand_built):
    target, base = hand_built
    target = _renamed_everywhere(target, "SELayer", "SE" + HOSTILE)
    library = [base]
    result = attribution.attribute(target, library)
    model_diff = diff.diff_models(target, base, (result.omega, result.delta, result.removed))
    (cls,) = model_diff.added_classes
    cls.attributes = {"x<y": {"t": "str", "v": "</pre><script>"}, "n": {"t": "int", "v": "7"}}
    text = report.render_html(target, base, result, model_diff, image=HOSTILE, warnings=[HOSTILE])
    page = check_page(text, result, model_diff)
    assert "<script" not in text and "</pre><script>" not in text
    for raw in ("\u202e", "\udc80", "\x00"):
        assert raw not in text
    visible = '<script>alert("x")</script>\\u202e\\udc80\\x00&amp;'  # what the reader sees
    assert "SE" + visible in page.text and cls.key.replace(HOSTILE, visible) in page.text
    assert "'</pre><script>'" in page.text and "x<y" in page.text


# -- targets recovered by linux.zen.patchgen ----------------------------------------------------------------
# A plain-Python derivative under another CPython than its base (changed, added and pulled-in code, added
# classes, no MR), and a torch model that copies and edits its base's module (renamed and removed classes,
# layer changes, same-version diffs).
DEPLOYMENTS = ("micrograd-derivative-3.12", "llama2-torchonly-3.11")


@pytest.fixture(scope="module")
def dumped(patchgen_dump):
    """``dumped(deployment)`` -> (pid, root, output folder, core path): one patchgen --dump per deployment
    and test session (conftest.py; tests/test_provenance.py reads the same run)."""
    return lambda deployment: (lambda r: (r.pid, r.root, r.out, r.core))(patchgen_dump(deployment))


@pytest.mark.image
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_report_of_a_recovered_model(deployment, dumped):
    pid, root, out, _ = dumped(deployment)
    members = bundle_format.read_members(out / bundle_write.bundle_name(pid, root))
    target = UnifiedRepresentation.loads(members["ur.json"].decode())
    text, result, model_diff = render(target, bml.BaseModelLibrary(None).all())
    page = check_page(text, result, model_diff)
    check_heatmap(page, model_diff)
    assert result.winner == json.loads(members["attribution.json"])["winner"]
    assert model_diff.changes and [c.kind for c in model_diff.changes if c.kind == "changed"]
    if target.mr is None:
        assert "no layers to compare" in page.text
    else:
        assert all(c.path in page.text for c in model_diff.layer_changes if c.path)


@pytest.mark.image
@pytest.mark.parametrize("deployment", DEPLOYMENTS[:1])
def test_patchgen_writes_the_report_next_to_the_bundle(deployment, dumped):
    pid, root, out, core = dumped(deployment)
    bundle = bundle_write.bundle_name(pid, root)
    path = out / report.report_name(pid, root)
    assert sorted(p.name for p in out.iterdir()) == sorted([bundle, path.name])
    text = path.read_bytes().decode("utf-8")
    members = bundle_format.read_members(out / bundle)
    target = UnifiedRepresentation.loads(members["ur.json"].decode())
    model_diff = json.loads(members["diff.json"])
    page = Page(text)
    ur_sha256 = hashlib.sha256(members["ur.json"]).hexdigest()  # the report names the bundle's UR
    for needle in (str(pid), hex(root), core.name, bundle, "volatility3-zen", ur_sha256):
        assert needle in page.text, needle
    assert all(c["key"] in page.text for c in model_diff["added_classes"])
    assert all(c["function_id"] in page.text for c in model_diff["changes"] if c["kind"] == "changed")
    # The plugin's page is the library's rendering of the bundle's representations: same heat map,
    # same diffs (the rest adds what only the plugin knows: image name, bundle, its warnings).
    again, _, _ = render(target, bml.BaseModelLibrary(None).all())
    for start, end in (("<svg", "</svg>"), ('<section id="diffs">', "</section>")):
        assert text[text.index(start):text.index(end, text.index(start))] == \
            again[again.index(start):again.index(end, again.index(start))]
    assert html.escape(target.provenance["root_class"]) in text
