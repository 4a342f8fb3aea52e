"""The bundle writer (zenlib/bundle/write.py) and the report on representations alone: no image.

The contents that ``bundle.collect`` would read from a process are given here as plain data; the URs,
the attribution and the diff are computed from small hand-built representations (test_attribution).
"""

import io
import json

import pytest

from test_attribution import RESNET, make_ur, resnet_se_source, resnet_spec
from volatility3_zen.zenlib.analysis import attribution, diff
from volatility3_zen.zenlib.bundle import format as bundle_format
from volatility3_zen.zenlib.bundle import report, write
from volatility3_zen.zenlib.bundle.contents import BundleContents

PID, ROOT = 4242, 0x7F00DEAD0000


@pytest.fixture(scope="module")
def analysed():
    base = make_ur("resnet", RESNET, "resnet", resnet_spec())
    target = make_ur(None, resnet_se_source(), "resnet", resnet_spec(se=True, classes=10))
    target.provenance.update(pid=PID, process="python3", root=ROOT)
    result = attribution.attribute(target, [base])
    model_diff = diff.diff_models(target, base, (result.omega, result.delta, result.removed))
    return target, base, result, model_diff


def _contents(model_diff, **changes) -> BundleContents:
    added = model_diff.added_classes[0].key
    code = {"python_version": "3.11", "marshal_version": 4, "skipped": [],
            "code_objects": [{"function_id": "resnet:SE.forward(self, x)@1", "marshal": "code/0.marshal", "text": "code/0.txt"}]}
    fields = dict(pid=PID, root=ROOT, python="3.11.7", torch_version="2.13.0", code=code,
                  code_files={"code/0.marshal": b"\xe3marshal", "code/0.txt": b"# text\n"},
                  class_attributes={added: {"reduction": {"t": "int", "v": 16}}},
                  context={"python_version": "3.11", "torch_version": "2.13.0"},
                  model={"schema": 1, "root_class": "resnet.ResNet"}, weights=b"weights", objects={"format": "zen-object-state"},
                  state=None, warnings=["a tensor left out"])
    fields.update(changes)
    return BundleContents(**fields)


def _build(analysed, contents):
    target, base, result, model_diff = analysed
    recorded = model_diff.with_class_attributes(contents.class_attributes)
    return write.build(contents, target, base, result, recorded)


def test_members_verify_against_the_manifest(analysed):
    bundle = _build(analysed, _contents(analysed[3]))
    members = bundle_format.read_members(io.BytesIO(bundle.to_bytes()))
    assert bundle_format.verify(members) == []
    assert bundle.name == f"pid{PID}-{ROOT:x}{bundle_format.BUNDLE_SUFFIX}"
    assert set(members) == {"manifest.json", "classes.json", "context.json", "code.json", "diff.json", "attribution.json",
                            "ur.json", "model.json", "objects.json", "weights.safetensors", "code/0.marshal", "code/0.txt"}
    manifest = json.loads(members["manifest.json"])
    target, base, result, model_diff = analysed
    assert manifest["target"] == {"pid": PID, "process": "python3", "root": ROOT, "root_class": model_diff.target_root_class,
                                  "ur": result.scores[0].ur, "margin": result.margin}
    assert manifest["python"] == "3.11.7" and manifest["torch_version"] == "2.13.0"
    assert manifest["base"]["name"] == "resnet"
    assert manifest["warnings"] == list(model_diff.warnings) + ["a tensor left out"]
    assert json.loads(members["ur.json"]) == json.loads(target.dumps())


def test_absent_parts_are_absent_members(analysed):
    bundle = _build(analysed, _contents(analysed[3], model=None, weights=None, objects=None, state=b"state"))
    assert "model.json" not in bundle.members and "weights.safetensors" not in bundle.members
    assert "objects.json" not in bundle.members and bundle.members["state.safetensors"] == b"state"


def test_same_inputs_give_the_same_bytes(analysed):
    assert _build(analysed, _contents(analysed[3])).to_bytes() == _build(analysed, _contents(analysed[3])).to_bytes()


def test_class_attributes_are_recorded_without_changing_the_diff(analysed):
    target, base, result, model_diff = analysed
    before = json.dumps(model_diff.to_json(), sort_keys=True)
    contents = _contents(model_diff)
    bundle = _build(analysed, contents)
    assert json.dumps(model_diff.to_json(), sort_keys=True) == before  # the analysis' diff is not mutated
    key = model_diff.added_classes[0].key
    classes = json.loads(bundle.members["classes.json"])
    recorded = {c["key"]: c["attributes"] for c in classes["added"]}
    assert recorded[key] == {"reduction": {"t": "int", "v": 16}}
    in_diff = {c["key"]: c["attributes"] for c in json.loads(bundle.members["diff.json"])["added_classes"]}
    assert in_diff[key] == recorded[key]
    addresses = {c.key: c.address for c in target.pr.classes}
    assert {c["key"]: c["address"] for c in classes["added"]} == {c.key: addresses.get(c.key) for c in model_diff.added_classes}


def test_the_report_needs_no_bundle_and_no_image(analysed):
    """The report renders from representations whether or not a bundle was written, and the heat map
    reuses the attribution's scorer: a result read back without it gives the same page."""
    target, base, result, model_diff = analysed
    page = report.render_html(target, base, result, model_diff, image="dump.lime", bundle=None, warnings=["no bundle"])
    assert "not written" in page and "no bundle" in page and '<svg class="heatmap"' in page
    without_scorer = attribution.Attribution(**{**vars(result), "code_similarity": None})
    assert report.render_html(target, base, without_scorer, model_diff, image="dump.lime", bundle=None,
                              warnings=["no bundle"]) == page
