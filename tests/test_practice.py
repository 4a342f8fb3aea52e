"""The practice set: derivatives deployed the way practitioners write them (docs/corpus.md, "Deployments
shaped like real ones"): custom code in the serving script, in plain modules and packages beside it,
loaded by path, runpy or exec, in notebook cells, monkeypatched into base classes and modules, in
subclasses and wrappers.  Each deployment states in its ground truth (``custom_code``) which classes
it added and which base classes it changed; nothing here knows where a deployment keeps its code.

For each: linux.zen.patchgen attributes it to its base, its added and changed classes equal the
deployment's own statement, the bundle verifies, and ``python -m volatility3_zen.reuse`` rebuilds it in
the base's environment (the deployment's files absent) with the deployed output bit for bit, while the
same rebuild without the patch fails or differs.
"""

import json

import pytest

import zen_testlib
from tools import reuse_check
from tools.corpus import catalog, load_ground_truth
from volatility3_zen.zenlib.bundle import format as bundle_format

PRACTICE = catalog.practice_models()  # deployment -> (base model, shape)
EXPECTED_BASE = catalog.expected_attributions()


def added_and_changed_classes(model_diff: dict):
    """(added class keys, changed class keys) of a diff.json (``ModelDiff.changed_classes``)."""
    return ({c["key"] for c in model_diff["added_classes"]} | set(model_diff["renamed_classes"]),
            set(model_diff["changed_classes"]))


def _truth(image):
    pid, path = sorted(image.ground_truth.items())[0]
    return pid, load_ground_truth(path)


@pytest.mark.image
@pytest.mark.parametrize("deployment", sorted(PRACTICE))
def test_practice_derivative_diff_bundle_and_rebuild(deployment, corpus, tmp_path):
    image = corpus(deployment, "core")
    pid, truth = _truth(image)
    custom = truth["custom_code"]
    bundle, model, _ = reuse_check.write_bundle(image, tmp_path / "out")
    members = bundle_format.read_members(bundle)
    assert bundle_format.verify(members) == []
    attribution = json.loads(members["attribution.json"])
    assert attribution["winner"] == EXPECTED_BASE[deployment][0]

    added, changed = added_and_changed_classes(json.loads(members["diff.json"]))
    assert added == set(custom["added_classes"]), f"added: {sorted(added)}"
    assert changed == set(custom["changed_classes"]), f"changed: {sorted(changed)}"

    spec = tmp_path / "input.json"
    spec.write_text(json.dumps(model["input"]))
    python = reuse_check.interpreter(image)
    hide = reuse_check.hidden_packages(bundle)
    patched = reuse_check.run_reuse(python, bundle, "--input", str(spec), hide=hide)
    assert patched.returncode == 0, patched.stderr[-3000:]
    assert reuse_check.output_sha(patched) == model["output_sha256"], patched.stdout[-3000:]
    control = reuse_check.run_reuse(python, bundle, "--input", str(spec), "--no-patch", hide=hide)
    assert control.returncode != 0 or reuse_check.output_sha(control) != model["output_sha256"]
    assert control.returncode == 0 or len(control.stderr.strip().splitlines()[-1]) < 400


@pytest.mark.image
def test_functions_made_by_exec_are_named_after_the_function():
    """A dataclass's methods are compiled by exec under a helper's name; linux.zen.codeobjects names
    each after its function object (module, qualname) and keeps the code's own name beside it."""
    from tools.corpus import ensure_image

    image = ensure_image("llama2-wrapper-3.11", "core")
    pid, truth = _truth(image)
    by_code = {}
    for f in truth["functions"]:
        by_code.setdefault(f["code"], f)
    made = {c["addr"]: c for c in truth["code_objects"] if c["filename"] == "<string>" and c["addr"] in by_code
            and (by_code[c["addr"]]["module"] or "") not in ("", "builtins")}
    assert made, "the deployment holds no exec-made function"
    result = zen_testlib.run_vol(["-r", "json", "-f", str(image.cores[pid]), "linux.zen.codeobjects",
                                  "--module", "^(lm_service|__main__)$"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {int(r["Code"]): r for r in json.loads(result.stdout)}
    checked = 0
    for addr, code in made.items():
        func = by_code[addr]
        if func["module"] not in ("lm_service", "__main__"):
            continue
        row = rows[addr]
        assert (row["Module"], row["Qualname"]) == (func["module"], func["qualname"])
        assert row["CodeQualname"] == (code["qualname"] or code["name"])
        checked += 1
    assert checked
