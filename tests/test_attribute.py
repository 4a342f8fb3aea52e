"""linux.zen.attribute on the evaluation corpus: every model attributed to its family's base by the
shipped base model library (bml/), the library reproduced from its images, and the error paths; a model
whose base the library omits is unmatched, and stray roots are left out unless --all-roots (issue 11).

The corpus models are attributed from their cores (the shipped fingerprints come from LiME images, so a
base scoring 1.0 also shows that both acquisitions give the same UR); benchmarks/bench_attribution.py
runs the same on the LiME images and prints the matrix.
"""

import json
import shutil
from pathlib import Path

import pytest

import zen_testlib
from tools.corpus import catalog, load_ground_truth
from volatility3_zen.zenlib.analysis import library as bml
from volatility3_zen.zenlib.vol import session
from volatility3_zen.zenlib.analysis import attribution
from volatility3_zen.zenlib.representation.unified import UnifiedRepresentation

EXPECTED = catalog.expected_attributions()
LIBRARY = bml.BaseModelLibrary(Path(__file__).resolve().parent.parent / "bml")


def _model_root(image):
    for pid, path in sorted(image.ground_truth.items()):
        truth = load_ground_truth(path)
        models = truth.get("models") or truth.get("plain_models") or []
        if models:
            return pid, models[0]["root_addr"], models[0]["class"]
    raise AssertionError(f"{image.name}: no model in the ground truth")


def _fingerprint(path, pid, root):
    plugin = zen_testlib.construct(str(path), "linux.zen.attribute.Attribute", pid=[pid], root=[root])
    (found,) = [found.ur for found in session.models(plugin.context, plugin.config, [root])]
    return found


def _without_addresses(document):
    """A UR's JSON without what differs between two acquisitions of the same deployment."""
    if isinstance(document, dict):
        return {k: _without_addresses(v) for k, v in document.items() if k not in ("address", "provenance")}
    if isinstance(document, list):
        return [_without_addresses(v) for v in document]
    return document


def test_the_shipped_library_holds_every_base_with_its_source():
    assert set(LIBRARY.names()) == set(catalog.BML_SOURCES)
    for name in LIBRARY.names():
        ur = LIBRARY.load(name)
        assert ur.name == name
        assert ur.provenance["source"].startswith(catalog.base_source(name))
        assert catalog.BML_SOURCES[name][0] in ur.provenance["source"]
        assert ur.pr.code, name


@pytest.mark.image
@pytest.mark.parametrize("deployment", sorted(EXPECTED))
def test_corpus_model_is_attributed_to_its_base(deployment, corpus):
    base, role = EXPECTED[deployment]
    image = corpus(deployment, "core")
    pid, root, root_class = _model_root(image)
    ur = _fingerprint(image.cores[pid], pid, root)
    assert ur.provenance["root_class"] == root_class
    result = attribution.attribute(ur, LIBRARY.all())
    scores = {s.base: s for s in result.scores}
    assert result.winner == base, [(s.base, round(s.ur, 4)) for s in result.scores]
    assert scores[base].evidence >= attribution.MATCH_THRESHOLD and result.matched
    assert result.margin > 0.05
    library_version = LIBRARY.load(base).python_version
    if role == "base" and ur.python_version == library_version:
        assert scores[base].ur == 1.0 and scores[base].pr == 1.0
        assert scores[base].mr in (1.0, None)
        assert not result.delta and not result.removed
    else:
        assert scores[base].ur < 1.0
    if role in ("derivative", "obfuscated"):
        # added, removed or changed code -- or, for a configuration-only derivative (Llama 3 args), another MR
        changed_code = result.delta or result.removed or any(not m.exact for m in result.omega)
        assert changed_code or (scores[base].mr is not None and scores[base].mr < 1.0)


@pytest.mark.image
def test_plugin_rows_and_json_report(corpus, tmp_path):
    image = corpus("yolov8-spdconv-3.11", "core")
    pid, root, root_class = _model_root(image)
    result = zen_testlib.run_vol(["-o", str(tmp_path), "-r", "json", "-f", str(image.cores[pid]),
                                  "linux.zen.attribute", "--root", str(root), "--dump"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert {r["Base"] for r in rows} == set(LIBRARY.names())
    assert all(r["Root"] == root and r["RootClass"] == root_class for r in rows)
    (winner,) = [r for r in rows if r["Winner"]]
    assert winner["Base"] == "yolov8" and winner["Rank"] == 1 and winner["Margin"] > 0.05 and winner["Verdict"] == "match"
    assert all(r["Verdict"] == "" for r in rows if r["Rank"] > 1)
    assert winner["Added"] > 0 and winner["Matched"] > 0
    assert sorted(r["Rank"] for r in rows) == list(range(1, len(rows) + 1))
    stem = f"pid{pid}-{root:x}"
    ur = UnifiedRepresentation.loads((tmp_path / f"{stem}.ur.json").read_text())
    report = json.loads((tmp_path / f"{stem}.attribution.json").read_text())
    assert ur.provenance["root"] == root
    assert report["winner"] == "yolov8"


@pytest.mark.image
def test_adding_a_base_is_one_command_and_it_then_scores_one(corpus, tmp_path):
    image = corpus("micrograd-base-3.11", "core")
    pid, root, _ = _model_root(image)
    library = tmp_path / "bml"
    add = zen_testlib.run_vol(["-f", str(image.cores[pid]), "linux.zen.attribute", "--pid", str(pid), "--root", str(root),
                               "--bml", str(library), "--bml-add", "my-micrograd", "--bml-source", "micrograd==0.1.0"])
    assert add.returncode == 0, add.stderr[-2000:]
    assert "my-micrograd" in add.stdout
    stored = bml.BaseModelLibrary(library).load("my-micrograd")
    assert stored.provenance["source"] == "micrograd==0.1.0" and stored.mr is None
    again = zen_testlib.run_vol(["-f", str(image.cores[pid]), "linux.zen.attribute", "--bml", str(library),
                                 "--bml-add", "my-micrograd", "--root", str(root)])
    assert again.returncode == 1 and "exists" in again.stderr
    attributed = zen_testlib.run_vol(["-r", "json", "-f", str(image.cores[pid]), "linux.zen.attribute", "--bml", str(library),
                                      "--root", str(root)])
    assert attributed.returncode == 0, attributed.stderr[-2000:]
    (row,) = json.loads(attributed.stdout)
    assert row["Base"] == "my-micrograd" and row["UR"] == 1.0 and row["Winner"]


@pytest.mark.image
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet", "micrograd"])
def test_shipped_fingerprint_is_reproduced_from_a_fresh_lime_image(name, corpus):
    deployment = catalog.BML_SOURCES[name][0]
    image = corpus(deployment, "lime")
    pid, root, _ = _model_root(image)
    fresh = _fingerprint(image.image, pid, root)
    fresh.name = name  # what --bml-add sets
    shipped = LIBRARY.load(name)
    assert _without_addresses(fresh.to_json()) == _without_addresses(shipped.to_json())


@pytest.mark.image
def test_errors_are_one_line(corpus, tmp_path):
    image = corpus("micrograd-base-3.11", "core")
    pid, root, _ = _model_root(image)
    core = str(image.cores[pid])
    cases = [
        (["linux.zen.attribute", "--bml", str(tmp_path)], "holds no fingerprints"),
        (["linux.zen.attribute"], "needs --root"),
        (["linux.zen.attribute", "--root", str(root), "--bml", str(tmp_path / "new"), "--bml-add", "bad name!"], "use letters"),
    ]
    for args, message in cases:
        result = zen_testlib.run_vol(["-f", core] + args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def _library_without(tmp_path, name):
    """A copy of the shipped library that omits one base (a library is a directory of fingerprints)."""
    directory = tmp_path / f"bml-without-{name}"
    directory.mkdir()
    for other in LIBRARY.names():
        if other != name:
            shutil.copy(LIBRARY.directory / f"{other}.json", directory / f"{other}.json")
    return directory


@pytest.mark.image
def test_a_model_whose_base_the_library_omits_is_unmatched(corpus, tmp_path):
    image = corpus("nanogpt-lora-3.11", "core")
    pid, root, _ = _model_root(image)
    core = str(image.cores[pid])
    library = _library_without(tmp_path, "nanogpt")
    attributed = zen_testlib.run_vol(["-r", "json", "-f", core, "linux.zen.attribute", "--bml", str(library),
                                      "--root", str(root)])
    assert attributed.returncode == 0, attributed.stderr[-2000:]
    rows = json.loads(attributed.stdout)
    assert {r["Base"] for r in rows} == set(LIBRARY.names()) - {"nanogpt"}
    assert not any(r["Winner"] for r in rows)
    (top,) = [r for r in rows if r["Rank"] == 1]
    assert min(top["MR"], top["PR"]) < attribution.MATCH_THRESHOLD
    assert top["Verdict"] == f"no match (min(MR, PR) < {attribution.MATCH_THRESHOLD})"
    assert top["Matched"] is None and top["Added"] is None  # N/A: there is no winner to be matched with
    notes = [line for line in attributed.stderr.splitlines() if "no base in the library matches" in line]
    assert len(notes) == 1 and f"best: {top['Base']}" in notes[0] and "Traceback" not in attributed.stderr

    out = tmp_path / "out"
    out.mkdir()
    patched = zen_testlib.run_vol(["-r", "json", "-o", str(out), "-f", core, "linux.zen.patchgen", "--bml", str(library),
                                   "--root", str(root), "--dump"])
    assert patched.returncode == 0, patched.stderr[-2000:]
    (row,) = json.loads(patched.stdout)
    assert row["Kind"] == "unmatched" and row["Base"] == "" and row["Root"] == root
    assert row["Detail"].startswith(f"no base in the library matches (best: {top['Base']}")
    assert list(out.iterdir()) == []  # no bundle, no report
    assert "no diff and no patch bundle" in patched.stderr and "Traceback" not in patched.stderr


@pytest.mark.image
def test_stray_roots_are_left_out_unless_all_roots(corpus):
    # nanoGPT's process imported transformers, whose activation table holds 9 parameter-free modules
    image = corpus("nanogpt-base-3.11", "core")
    pid, root, root_class = _model_root(image)
    core = str(image.cores[pid])
    default = zen_testlib.run_vol(["-r", "json", "-f", core, "linux.zen.attribute"])
    assert default.returncode == 0, default.stderr[-2000:]
    rows = json.loads(default.stdout)
    assert {r["Root"] for r in rows} == {root}
    assert [r["Base"] for r in rows if r["Winner"]] == ["nanogpt"]
    (note,) = [line for line in default.stderr.splitlines() if "stray root" in line]
    assert f"PID {pid}: 9 stray root(s) left out" in note and "--all-roots" in note

    everything = zen_testlib.run_vol(["-r", "json", "-f", core, "linux.zen.attribute", "--all-roots"])
    assert everything.returncode == 0, everything.stderr[-2000:]
    rows = json.loads(everything.stdout)
    roots = list(dict.fromkeys(r["Root"] for r in rows))
    assert len(roots) == 10 and roots[0] == root  # the model first: it holds the parameters
    strays = [r for r in rows if r["Root"] != root]
    assert all(r["RootClass"].startswith("transformers.activations.") for r in strays)
    assert not any(r["Winner"] for r in strays)
    assert all(r["Verdict"].startswith("no match") for r in strays if r["Rank"] == 1)
    assert "stray root" not in everything.stderr

    listed = zen_testlib.run_vol(["-r", "json", "-f", core, "linux.zen.model"])
    listed_all = zen_testlib.run_vol(["-r", "json", "-f", core, "linux.zen.model", "--all-roots"])
    assert listed.returncode == 0 and listed_all.returncode == 0, listed.stderr[-2000:] + listed_all.stderr[-2000:]
    assert [(r["Root"], r["RootClass"]) for r in json.loads(listed.stdout)] == [(root, root_class)]
    models = json.loads(listed_all.stdout)
    assert [r["Root"] for r in models] == roots  # the same roots in the same order
    assert [r["Parameters"] for r in models][1:] == [0] * 9
