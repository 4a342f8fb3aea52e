"""Patch bundles and reuse for every corpus model: per model, what patchgen found (changed / added /
removed code objects, added classes, changed layers), the bundle's size, how long patchgen and the
rebuild took, whether the rebuilt model's output equals the ground truth bit for bit, and what the
control (the same rebuild without the patch, the derivative's extra packages hidden) did.

Usage (from the repository root, with the suite installed):
    python benchmarks/bench_reuse.py [--only DEPLOYMENT ...]

The practice set (deployments shaped like real ones: code in the script, beside it, loaded by path
or exec, monkeypatched; role ``practice:<shape>``) also says whether the diff's added and changed
classes equal the classes the deployment states it added and changed (its ground truth's
``custom_code``).

Images are built by the corpus harness on first use and cached.  The torch models run under their
deployment's venv, micrograd's cross-version derivative under its 3.12 venv (plain Python: the check
there is the forward value, as float.hex()).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import reuse_check  # noqa: E402
from tools.corpus import catalog, ensure_image  # noqa: E402

PLAIN = {"micrograd-derivative-3.12": "derivative"}
MICROGRAD_SCRIPT = ("import sys; from volatility3_zen import reuse; r = reuse.rebuild(sys.argv[1], patch=sys.argv[2] == '1', sandbox=False); "
                    "print(float(r.model([float.fromhex(v) for v in sys.argv[3:]]).data).hex())")


def torch_model(image, bundle: Path, model: dict, spec: Path, role: str):
    python = reuse_check.interpreter(image)
    hide = reuse_check.hidden_packages(bundle)
    started = time.monotonic()
    patched = reuse_check.run_reuse(python, bundle, "--input", str(spec), hide=hide)
    seconds = time.monotonic() - started
    result = "identical" if reuse_check.output_sha(patched) == model["output_sha256"] else \
        ("DIFFERS" if reuse_check.output_sha(patched) else "FAILED: " + patched.stderr.strip()[-160:])
    control = "-"
    if role != "base":
        run = reuse_check.run_reuse(python, bundle, "--input", str(spec), "--no-patch", hide=hide)
        sha = reuse_check.output_sha(run)
        control = "fails" if sha is None else ("identical" if sha == model["output_sha256"] else "differs")
    return result, control, seconds


def plain_model(image, bundle: Path, model: dict):
    python = reuse_check.interpreter(image)
    env = dict(os.environ, PYTHONPATH=reuse_check.reuse_pythonpath(python))
    started = time.monotonic()
    run = subprocess.run([python, "-c", MICROGRAD_SCRIPT, str(bundle), "1", *model["input"]], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    result = "identical" if run.stdout.split() == [model["output"]] else "FAILED: " + run.stderr.strip()[-160:]
    control = subprocess.run([python, "-c", MICROGRAD_SCRIPT, str(bundle), "0", *model["input"]], capture_output=True, text=True, env=env)
    return result, "fails" if control.returncode else "runs", seconds


def custom_classes(image, bundle: Path) -> str:
    """"match" when the diff's added and changed classes are the ones the deployment states (practice
    set only), else what differs; "-" where the deployment states nothing."""
    from tools.corpus import load_ground_truth

    _, truth_path = sorted(image.ground_truth.items())[0]
    custom = load_ground_truth(truth_path).get("custom_code")
    if custom is None:
        return "-"
    model_diff = json.loads(__import__("zipfile").ZipFile(bundle).read("diff.json"))
    added = {c["key"] for c in model_diff["added_classes"]} | set(model_diff["renamed_classes"])
    changed = set(model_diff["changed_classes"])
    problems = []
    for label, got, want in (("added", added, set(custom["added_classes"])),
                             ("changed", changed, set(custom["changed_classes"]))):
        if got != want:
            problems.append(f"{label} +{sorted(got - want)} -{sorted(want - got)}")
    return "; ".join(problems) or "match"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="deployments to run (default: all)")
    args = parser.parse_args()
    models = {**{d: r for d, (_, r) in catalog.family_models().items()},
              **{d: r for d, (_, r) in catalog.trained_models().items()}, **PLAIN,
              **{d: "practice:" + shape for d, (_, shape) in catalog.practice_models().items()}}
    names = [n for n in sorted(models) if not args.only or n in args.only]
    header = ("model", "role", "base", "changed", "added", "removed", "+classes", "layers", "bundle MB",
              "patchgen s", "reuse s", "rebuilt output", "without patch", "custom classes")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    identical = matched = 0
    practice = sum(1 for n in names if models[n].startswith("practice:"))
    with tempfile.TemporaryDirectory(prefix="zen-bench-reuse-") as scratch:
        for name in names:
            image = ensure_image(name, "core")
            bundle, model, patchgen_s = reuse_check.write_bundle(image, Path(scratch) / name)
            manifest = json.loads(__import__("zipfile").ZipFile(bundle).read("manifest.json"))
            counts = manifest["counts"]
            if name in PLAIN:
                result, control, reuse_s = plain_model(image, bundle, model)
            else:
                spec = Path(scratch) / name / "input.json"
                spec.write_text(json.dumps(model["input"]))
                result, control, reuse_s = torch_model(image, bundle, model, spec, models[name])
            identical += result == "identical"
            classes = custom_classes(image, bundle)
            matched += classes == "match"
            layers = sum(v for k, v in counts.items() if k.startswith("layers_"))
            row = (name, models[name], manifest["base"]["name"], counts.get("changed", 0), counts.get("added", 0),
                   counts.get("removed", 0), counts.get("added_classes", 0), layers,
                   "%.1f" % (bundle.stat().st_size / 1e6), "%.1f" % patchgen_s, "%.1f" % reuse_s, result, control,
                   classes)
            print("| " + " | ".join(map(str, row)) + " |", flush=True)
    print(f"\nrebuilt bit-identical: {identical}/{len(names)}")
    if practice:
        print(f"practice set: added and changed classes equal the deployment's own statement: {matched}/{practice}")
    return 0 if identical == len(names) and matched == practice else 1


if __name__ == "__main__":
    sys.exit(main())
