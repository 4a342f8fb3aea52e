"""Differential analysis (analysis/diff.py) on small URs built here, and linux.zen.patchgen with its
patch bundles on real core images of the evaluation corpus.

Image tests attribute against the base model library the plugin uses by default (bml/, or $ZEN_BML),
check that each derivative's own classes are what the diff adds and that a base diffs empty, verify
every bundle member against the manifest, and load every marshal file in a CPython of the image's
version, whose co_code must equal what the deployed process wrote about itself.
"""

import json
import subprocess
import zipfile

import pytest

import zen_testlib
from test_attribution import OBFUSCATION, RESNET, as_other_version, make_ur, obfuscate, resnet_se_source, resnet_spec
from tools.corpus import interpreters, load_ground_truth
from volatility3_zen.zenlib.bundle import format as bundle_format
from volatility3_zen.zenlib.bundle import write as bundle_write
from volatility3_zen.zenlib.analysis.attribution import pr_matching
from volatility3_zen.zenlib.analysis.diff import diff_models
from volatility3_zen.zenlib.representation.unified import (
    LayerNode, MathematicalRepresentation, ProgramRepresentation, UnifiedRepresentation,
)


@pytest.fixture(scope="module")
def resnet():
    return make_ur("resnet", RESNET, "resnet", resnet_spec())


@pytest.fixture(scope="module")
def resnet_se():
    return make_ur(None, resnet_se_source(), "resnet", resnet_spec(se=True, classes=10))


def _edited(ur, **changes):
    """A copy of ``ur`` with some code features changed: function_id -> {field: value}."""
    data = ur.to_json()
    for c in data["pr"]["code"]:
        c.update(changes.get(c["function_id"], {}))
    return UnifiedRepresentation.from_json(data)


def _fid(ur, prefix):
    (fid,) = [c.function_id for c in ur.pr.code if c.function_id.startswith(prefix)]
    return fid


# -- diff.py on hand-built URs ---------------------------------------------------------------------------
def test_a_model_against_itself_differs_in_nothing(resnet):
    d = diff_models(resnet, resnet)
    assert d.empty and not d.changes and not d.added_classes and not d.warnings and not d.skipped
    assert d.counts()["changed"] == d.counts()["added"] == d.counts()["removed"] == 0
    assert d.base == "resnet" and d.target_root_class == "resnet.ResNet"


def test_derivative_changes_additions_and_removals(resnet, resnet_se):
    d = diff_models(resnet_se, resnet)
    by_kind = {kind: {c.function_id or c.base_function_id for c in d.changes if c.kind == kind}
               for kind in ("changed", "added", "removed")}
    assert {f.split("(")[0] for f in by_kind["changed"]} == {"resnet:BasicBlock.__init__", "resnet:BasicBlock.forward"}
    assert by_kind["added"] == {c.function_id for c in resnet_se.pr.code if c.qualname.startswith("SELayer")}
    assert by_kind["removed"] == {c.function_id for c in resnet.pr.code if c.qualname.startswith("load_checkpoint")}
    # Moved below the inserted class (other first line), identical code: not a change.
    assert not any(f.startswith("resnet:ResNet.forward") for f in by_kind["changed"])
    (added,) = d.added_classes
    assert (added.key, added.name, added.module) == ("resnet.SELayer", "SELayer", "resnet")
    assert set(added.methods) == {"__init__", "forward"} and added.bases == ["torch.nn.modules.module.Module"]
    assert d.added_functions == [_fid(resnet_se, "resnet:SELayer(")]  # the class body holds no method
    forward = next(c for c in d.changes if c.function_id and c.function_id.startswith("resnet:BasicBlock.forward"))
    assert {"code_sha256", "disassembly", "names"} <= set(forward.fields)
    assert forward.class_key == "resnet.BasicBlock" and 0.5 < forward.similarity < 1.0
    assert forward.size > 0 and forward.pulled_in_by is None
    for c in d.changes:
        if c.kind == "added":
            feature = next(f for f in resnet_se.pr.code if f.function_id == c.function_id)
            assert c.size == feature.bytecode_size and c.similarity is None
    # The layer side: the SE blocks are new layers, the head has another shape.
    layers = {(c.kind, c.path) for c in d.layer_changes}
    assert ("added", "layer1.0.se") in layers and ("changed", "fc") in layers
    assert not any(kind == "removed" for kind, _ in layers)
    fc = next(c for c in d.layer_changes if c.path == "fc")
    assert fc.fields == ["tensors"] and fc.elements == 10 * 512 + 10


def test_matching_given_or_computed_gives_the_same_diff(resnet, resnet_se):
    omega, delta, removed, _ = pr_matching(resnet_se, resnet)
    assert diff_models(resnet_se, resnet, (omega, delta, removed)) == diff_models(resnet_se, resnet)


def test_an_attribute_change_alone_is_a_change(resnet):
    fid = _fid(resnet, "resnet:conv3x3(")
    feature = next(c for c in resnet.pr.code if c.function_id == fid)
    target = _edited(resnet, **{fid: {"strings": feature.strings + ["extra"], "flags": feature.flags | 0x20}})
    (change,) = diff_models(target, resnet).changes
    assert change.kind == "changed" and change.fields == ["strings", "flags"]
    assert change.size == 0  # same bytecode


def test_nested_helpers_are_pulled_in_both_ways(resnet):
    outer = _fid(resnet, "resnet:load_checkpoint(")
    (inner,) = [c.function_id for c in resnet.pr.code if c.function_id.startswith("resnet:load_checkpoint.<locals>")]
    tokens = next(c for c in resnet.pr.code if c.function_id == outer).disassembly
    # The function changes: its comprehension comes along unchanged.
    d = diff_models(_edited(resnet, **{outer: {"code_sha256": "0" * 64, "disassembly": tokens + ["NOP"]}}), resnet)
    assert [(c.function_id, c.kind, c.pulled_in_by) for c in d.changes] == [(outer, "changed", None), (inner, "changed", outer)]
    assert d.changes[1].fields == [] and d.changes[1].size == 0
    # Only the comprehension changes: the function that holds it comes along.
    d = diff_models(_edited(resnet, **{inner: {"code_sha256": "0" * 64}}), resnet)
    assert sorted((c.function_id, c.pulled_in_by) for c in d.changes) == sorted([(inner, None), (outer, inner)])


def test_unreadable_code_is_skipped_and_listed(resnet, resnet_se):
    fid = _fid(resnet_se, "resnet:SELayer.forward(")
    target = _edited(resnet_se, **{fid: {"disassembly": []}})
    d = diff_models(target, resnet)
    assert fid in d.skipped and fid not in {c.function_id for c in d.changes}
    assert any(fid in w and "could not be read" in w for w in d.warnings)


def test_renamed_classes_are_recognised(resnet):
    rename = {"BasicBlock": OBFUSCATION["BasicBlock"], "ResNet": OBFUSCATION["ResNet"]}
    target = make_ur(None, obfuscate(RESNET), "x9", resnet_spec(), rename=rename)
    d = diff_models(target, resnet)
    assert d.renamed_classes == {"x9.C_b2": "resnet.BasicBlock", "x9.C_c3": "resnet.ResNet"}
    assert not d.added_classes and not d.removed_classes
    assert {c.kind for c in d.changes} <= {"changed", "added", "removed"}
    changed = [c for c in d.changes if c.kind == "changed"]
    assert changed and all("module" in c.fields for c in changed)
    (reshaped,) = [c for c in d.class_changes if c.key == "x9.C_c3"]
    assert reshaped.methods_added == ["m_d4", "m_e5"] and reshaped.methods_removed == ["_forward_impl", "_make_layer"]


def test_cross_version_compares_canonical_instructions(resnet, resnet_se):
    d = diff_models(as_other_version(resnet), resnet)
    assert not d.changes and any("3.12" in w for w in d.warnings)
    d = diff_models(as_other_version(resnet_se), resnet)
    assert {c.kind for c in d.changes} == {"changed", "added", "removed"}
    assert all("code_sha256" not in c.fields for c in d.changes)


def test_diff_json(resnet, resnet_se):
    data = json.loads(json.dumps(diff_models(resnet_se, resnet).to_json()))
    assert data["schema"] == 1 and data["format"] == "zen-model-diff"
    assert data["counts"]["added"] == 3 and data["counts"]["added_classes"] == 1
    assert [c["kind"] for c in data["changes"]] == sorted((c["kind"] for c in data["changes"]),
                                                          key=("changed", "added", "removed").index)
    assert data["added_classes"][0]["key"] == "resnet.SELayer"


# -- linux.zen.patchgen on the corpus --------------------------------------------------------------------
# deployment -> the own classes (top-level package, name) its diff must add (tools/corpus/deploy/derived/);
# a base adds none.
DERIVED = {
    "yolov8-spdconv-3.11": {("spdconv", "SPDConv")},
    "resnet-se-3.11": {("derived", "SEBlock")},
    "nanogpt-lora-3.11": {("loralib", "Linear"), ("loralib", "LoRALayer")},
    "resnet-base-3.11": set(),
}


def _model(image):
    pid, path = sorted(image.ground_truth.items())[0]
    truth = load_ground_truth(path)
    model = (truth.get("models") or truth.get("plain_models"))[0]
    return pid, model["root_addr"], truth


def _interpreter(version):
    """The corpus harness's CPython of ``version`` ("3.11"), to load marshal files as the target would."""
    try:
        return str(interpreters.resolve(version, create=False).executable)
    except interpreters.InterpreterMissing as exc:
        pytest.skip(f"no CPython {version} to load the marshal files with: {exc}")


LOAD_MARSHAL = "import json, marshal, sys; print(json.dumps([marshal.loads(open(p, 'rb').read()).co_code.hex() for p in sys.argv[1:]]))"


def _check_bundle(path, truth, tmp_path):
    """The bundle's members against its manifest, and its code against the ground truth."""
    members = bundle_format.read_members(path)
    assert list(zipfile.ZipFile(path).namelist())[0] == "manifest.json"
    assert bundle_format.verify(members) == []
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "zen-patch-bundle" and manifest["python_version"] == truth["python_version"][:4]
    code = json.loads(members["code.json"])
    assert not code["skipped"]
    entries = code["code_objects"]
    assert all(f"{e['marshal'][:-8]}.txt" in members for e in entries)
    if entries:
        files = []
        for k, e in enumerate(entries):
            files.append(tmp_path / f"{k}.marshal")
            files[-1].write_bytes(members[e["marshal"]])
        exe = _interpreter(manifest["python_version"])
        loaded = subprocess.run([exe, "-c", LOAD_MARSHAL] + [str(f) for f in files], capture_output=True, text=True)
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        truth_code = {c["addr"]: c["code"] for c in truth["code_objects"]}
        assert json.loads(loaded.stdout) == [truth_code[e["address"]] for e in entries]
    return members, manifest


@pytest.mark.image
@pytest.mark.parametrize("deployment", sorted(DERIVED))
def test_patchgen_rows_diff_and_bundle(deployment, corpus, tmp_path):
    image = corpus(deployment, "core")
    pid, root, truth = _model(image)
    out = tmp_path / "out"
    out.mkdir()
    result = zen_testlib.run_vol(["-o", str(out), "-r", "json", "-f", str(image.cores[pid]), "linux.zen.patchgen",
                                  "--root", str(root), "--dump"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert rows and all(r["Root"] == root and r["Base"] == rows[0]["Base"] for r in rows)
    members, manifest = _check_bundle(out / bundle_write.bundle_name(pid, root), truth, tmp_path)
    model_diff = json.loads(members["diff.json"])
    added = {(c["module"].split(".")[0], c["name"]) for c in model_diff["added_classes"]}
    assert added == DERIVED[deployment]
    assert manifest["base"]["name"] == json.loads(members["attribution.json"])["winner"]
    assert {"weights.safetensors", "model.json", "context.json", "classes.json", "ur.json"} <= set(members)
    context = json.loads(members["context.json"])
    assert context["torch_version"] == truth["torch_version"] and "torch==" + truth["torch_version"] in context["requirements"]
    header = int.from_bytes(members["weights.safetensors"][:8], "little")
    weights = json.loads(members["weights.safetensors"][8:8 + header])
    assert set(weights) - {"__metadata__"} == set(truth["models"][0]["state_dict_keys"])
    if not DERIVED[deployment]:  # a base: nothing differs, one row says so, the bundle holds no code
        assert [r["Kind"] for r in rows] == ["identical"]
        assert model_diff["changes"] == [] and model_diff["layer_changes"] == []
        assert manifest["target"]["ur"] == 1.0 and json.loads(members["code.json"])["code_objects"] == []
        return
    kinds = {r["Kind"] for r in rows}
    assert "added" in kinds and "class-added" in kinds
    classes = json.loads(members["classes.json"])["added"]
    code = {e["function_id"]: e for e in json.loads(members["code.json"])["code_objects"]}
    for cls in classes:  # every method of an added class is shipped
        assert set(cls["methods"].values()) <= set(code), cls["key"]
    added_code = {c["function_id"] for c in model_diff["changes"] if c["kind"] in ("added", "changed")}
    assert added_code == set(code)


@pytest.mark.image
def test_plain_python_cross_version_bundle(corpus, tmp_path):
    """micrograd's derivative under CPython 3.12 against the 3.11 base: no torch, no weights; the
    marshal files are 3.12's."""
    image = corpus("micrograd-derivative-3.12", "core")
    pid, root, truth = _model(image)
    out = tmp_path / "out"
    out.mkdir()
    result = zen_testlib.run_vol(["-o", str(out), "-r", "json", "-f", str(image.cores[pid]), "linux.zen.patchgen",
                                  "--pid", str(pid), "--root", str(root), "--dump"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert {r["Base"] for r in rows} == {"micrograd"}
    members, manifest = _check_bundle(out / bundle_write.bundle_name(pid, root), truth, tmp_path)
    assert manifest["python_version"] == "3.12" and manifest["torch_version"] is None
    assert "weights.safetensors" not in members and "model.json" not in members
    added = {c["name"] for c in json.loads(members["diff.json"])["added_classes"]}
    assert {"MLPWithNorm", "RMSNorm"} <= added


@pytest.mark.image
def test_errors_are_one_line(corpus, tmp_path):
    image = corpus("micrograd-base-3.11", "core")
    pid, root, _ = _model(image)
    result = zen_testlib.run_vol(["-f", str(image.cores[pid]), "linux.zen.patchgen", "--root", str(root),
                                  "--bml", str(tmp_path)])
    assert result.returncode == 1 and "holds no fingerprints" in result.stderr and "Traceback" not in result.stderr


def _layered(children_classes):
    """A UR whose root holds a numbered container ("body") of conv-like blocks of the given classes."""
    layers = [LayerNode("", "m.Net", 0, ["body", "head"], []),
              LayerNode("body", "torch.nn.modules.container.Sequential", 1, [str(i) for i in range(len(children_classes))], [])]
    for i, cls in enumerate(children_classes):
        layers.append(LayerNode(f"body.{i}", cls, 2, [], [("weight", [4, 4], "float32")]))
    layers.append(LayerNode("head", "torch.nn.modules.linear.Linear", 1, [], [("weight", [2, 4], "float32")]))
    mr = MathematicalRepresentation("m.Net", layers, [], 0, 0)
    return UnifiedRepresentation("3.11", mr, ProgramRepresentation([], []), {})


def test_an_inserted_block_is_added_and_the_blocks_after_it_align_with_their_own_counterparts():
    base = _layered(["m.Conv", "m.Conv", "m.C3", "m.Conv"])
    target = _layered(["m.Conv", "m.Conv", "m.CBAM", "m.C3", "m.Conv"])
    changes = {(c.kind, c.path, c.base_path) for c in diff_models(target, base).layer_changes}
    assert changes == {("added", "body.2", None), ("changed", "body", "body")}  # its children list grew
    swapped = _layered(["m.Conv", "m.Ghost", "m.C3", "m.Conv"])
    changes = {(c.kind, c.path, tuple(c.fields)) for c in diff_models(swapped, base).layer_changes}
    assert changes == {("changed", "body.1", ("class",))}
