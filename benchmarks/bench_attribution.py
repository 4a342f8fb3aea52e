"""Attributes every corpus model against the base model library; prints the similarity matrix, top-1
accuracy and the smallest winning margin, saves the matrix as a heatmap PNG, and times
``linux.zen.attribute`` against ``linux.pslist`` on a LiME image.  ``--calibrate`` measures the open-set
match threshold (docs/attribution.md, "Open set"): genuine scores against leave-one-out impostor scores.

Usage (from the repository root, with the suite installed; matplotlib for the PNG):
    python benchmarks/bench_attribution.py [--kind core|lime] [--bml DIR] [--png attribution.png]
                                           [--only DEPLOYMENT ...] [--timing yolov5-base-3.11] [--repeat 3]
                                           [--urs DIR] [--fresh] [--built-only] [--calibrate]

Images are built by the corpus harness on first use and cached (``--built-only`` skips those not built
yet instead).  Each model is the root the deployed process names in its ground truth.  Its UR is read
from the image once and kept in ``--urs`` (default ~/.cache/volatility3-zen/urs/<image>/pid<PID>-<root>.ur.json,
keyed by the image's cache directory, so a rebuilt image is read again; ``--fresh`` reads every image
again, e.g. after a change to the readers); attribution and calibration then run on the stored URs.
Targets (issue 5): every model's top-1 base is its family's base, a base scores UR = 1.0 against a
library that holds it, attribute / pslist < 2.0 on a LiME image.  Issue 11: a model is attributed only
when its base's UR reaches the match threshold; with its base left out of the library it is unmatched.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from tools.corpus import catalog, ensure_image, load_ground_truth  # noqa: E402


def model_root(record):
    """(pid, root address) of the model the ground truth names."""
    for pid, path in sorted(record.ground_truth.items()):
        truth = load_ground_truth(path)
        models = truth.get("models") or truth.get("plain_models") or []
        if models:
            return pid, models[0]["root_addr"]
    raise SystemExit(f"{record.name}: the ground truth names no model")


def fingerprint(record, kind):
    """The UR of the ground truth's model, recovered in-process as the plugin does."""
    from volatility3_zen.zenlib.vol import session

    pid, root = model_root(record)
    plugin = _plugin(record, kind, pid, root=[root])
    found = [found.ur for found in session.models(plugin.context, plugin.config, [root])]
    if len(found) != 1:
        raise SystemExit(f"{record.name}: expected one model at 0x{root:x}, found {len(found)}")
    return found[0]


def _plugin(record, kind, pid, **config):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from zen_testlib import construct

    image = str(record.image) if kind == "lime" else str(record.cores[pid])
    return construct(image, "linux.zen.attribute.Attribute", pid=[pid], **config)


def stray_fingerprints(record, kind):
    """The URs of the stray roots of the ground truth's process (single modules without parameters or
    of a framework class: what ``--all-roots`` adds), as the plugin makes them."""
    from volatility3_zen.zenlib.vol import session

    pid, root = model_root(record)
    plugin = _plugin(record, kind, pid, **{"all-roots": True})
    return [f.ur for f in session.models(plugin.context, plugin.config)
            if f.root != root and f.ur.mr is not None and len(f.ur.mr.layers) == 1
            and (f.ur.mr.parameter_count == 0 or not f.ur.pr.code)]


class URStore:
    """URs read from images once, kept as JSON next to nothing else (see the module docstring)."""

    def __init__(self, directory, fresh=False):
        self.directory = Path(directory).expanduser()
        self.fresh = fresh

    def _load_or_make(self, path, make):
        from volatility3_zen.zenlib.representation.unified import UnifiedRepresentation

        if path.is_file() and not self.fresh:
            return UnifiedRepresentation.loads(path.read_text())
        ur = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(ur.dumps())
        os.replace(tmp, path)
        return ur

    def model(self, record, kind):
        pid, root = model_root(record)
        path = self.directory / record.directory.name / f"pid{pid}-{root:x}.ur.json"
        return self._load_or_make(path, lambda: fingerprint(record, kind))

    def strays(self, record, kind):
        from volatility3_zen.zenlib.representation.unified import UnifiedRepresentation

        folder = self.directory / record.directory.name / "strays"
        done = folder / "done"
        if done.is_file() and not self.fresh:
            return [UnifiedRepresentation.loads(p.read_text()) for p in sorted(folder.glob("*.ur.json"))]
        urs = stray_fingerprints(record, kind)
        folder.mkdir(parents=True, exist_ok=True)
        for ur in urs:
            (folder / f"pid{ur.provenance['pid']}-{ur.provenance['root']:x}.ur.json").write_text(ur.dumps())
        done.write_text("%d\n" % len(urs))
        return urs


def image_record(deployment, kind, built_only):
    """The corpus image (built when needed), or None with ``built_only`` when it is not built yet or
    the catalogue cannot plan it (an entry being written)."""
    if not built_only:
        return ensure_image(deployment, kind)
    from tools.corpus import build, cache

    try:
        directory = build.cached_dir(deployment, kind)
    except Exception as exc:  # noqa: BLE001 - a catalogue entry in the making: skipped, and said so
        print(f"{deployment:28s} {kind:4s} skipped: cannot plan its image ({type(exc).__name__}: {exc})")
        return None
    if not cache.is_complete(directory):
        print(f"{deployment:28s} {kind:4s} skipped: image not built (--built-only)")
        return None
    return build.Image.load(directory)


def heatmap(path, rows, columns, matrix, expected):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(columns), 1.0 + 0.42 * len(rows)))
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            bold = columns[j] == expected[i]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white", fontweight="bold" if bold else "normal")
    fig.colorbar(image, ax=ax, label="UR similarity")
    ax.set_title("Attribution of the corpus models to the base model library")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def timing(deployment, repeat):
    from bench_plugins import run_once

    record = ensure_image(deployment, "lime")
    pid, _ = model_root(record)
    env = dict(os.environ)
    run_once(["-f", str(record.image), "linux.pslist"], env)  # warm the symbol cache
    results = {}
    for name, args in (("linux.pslist", ["linux.pslist"]), ("linux.zen.attribute", ["linux.zen.attribute"])):
        best = min(run_once(["-f", str(record.image)] + args, env) for _ in range(repeat))
        results[name] = best
        print(f"  {name:22s} {best[0]:7.2f} s  peak RSS {best[1] / 2**20:6.0f} MiB")
    ratio = results["linux.zen.attribute"][0] / results["linux.pslist"][0]
    print(f"  attribute / pslist = {ratio:.2f} (target < 2.0) on {deployment} LiME, pid {pid}")


# Models of the corpus that are not in the evaluation set: two more positives (the model zoo's copies of
# two bases) and two models whose base the library does not hold (negatives for the open set).
ZOO_POSITIVES = {"timm-resnet18-3.11": "resnet", "yolov8n-3.11": "yolov8"}
OUT_OF_LIBRARY = {
    "torch-custom-3.11": "the corpus' own CustomNet (torch layers, __main__ code)",
    "llama-tiny-3.11": "transformers' LlamaForCausalLM (another code base than llama-models' reference Llama)",
}
# Images whose processes hold stray roots: transformers' activation table (nanoGPT's process imports
# transformers), lone SiLU modules (yolov7, ultralytics).
STRAY_IMAGES = ("nanogpt-base-3.11", "yolov7-base-3.11", "yolov8-base-3.11")


def calibrate(genuine, impostors, threshold):
    """Prints the genuine and impostor score distributions and FAR/FRR per threshold.  The score is what
    the open-set decision weighs, ``BaseScore.evidence``: the weaker of MR and PR.

    genuine: [(label, evidence of the true base, the true base ranked first)] (full library);
    impostors: [(label, kind, best base, its evidence)] (leave-one-out, or a model without a base in the library).
    """
    scores = [g[1] for g in genuine]
    wrong = [i[3] for i in impostors]
    print(f"\ngenuine (true base in the library): n={len(scores)}, min {min(scores):.4f}, "
          f"mean {statistics.mean(scores):.4f}, median {statistics.median(scores):.4f}")
    derived = [g[1] for g in genuine if "(base)" not in g[0]]
    if derived:
        print(f"  derivatives, obfuscated and zoo copies only: n={len(derived)}, min {min(derived):.4f}, "
              f"mean {statistics.mean(derived):.4f}")
    for label, ur, first in sorted(genuine, key=lambda g: g[1])[:6]:
        print(f"    lowest: {label:40s} min(MR, PR) {ur:.4f}{'' if first else ' (not ranked first)'}")
    print(f"impostors (true base absent): n={len(impostors)}, max {max(wrong):.4f}, mean {statistics.mean(wrong):.4f}")
    for label, kind, base, ur in sorted(impostors, key=lambda i: -i[3])[:8]:
        print(f"    highest: {label:40s} {kind:14s} -> {base:12s} min(MR, PR) {ur:.4f}")
    gap = min(scores) - max(wrong)
    print(f"gap (genuine min - impostor max): {gap:+.4f}")

    def rates(t):
        far = sum(1 for w in wrong if w >= t) / len(wrong)
        frr = sum(1 for _, ur, first in genuine if ur < t or not first) / len(genuine)
        return far, frr

    print("\nthreshold   FAR (impostors accepted)   FRR (genuine rejected or wrong)")
    steps = sorted({round(0.05 * k, 2) for k in range(1, 20)} | {threshold, 0.47, 0.48, 0.50, 0.51})
    for t in steps:
        far, frr = rates(t)
        mark = "  <- MATCH_THRESHOLD" if t == threshold else ""
        print(f"  {t:5.2f}     {far:6.3f} ({round(far * len(wrong)):2d}/{len(wrong)})            "
              f"{frr:6.3f} ({round(frr * len(genuine)):2d}/{len(genuine)}){mark}")
    far, frr = rates(threshold)
    print(f"at MATCH_THRESHOLD = {threshold}: FAR {far:.3f}, FRR {frr:.3f}")
    for kind in sorted({i[1] for i in impostors}):
        group = [i for i in impostors if i[1] == kind]
        accepted = [i for i in group if i[3] >= threshold]
        print(f"  {kind:14s}: {len(accepted)}/{len(group)} accepted"
              + (f" ({', '.join(sorted({f'{i[0].split()[0]} -> {i[2]}' for i in accepted}))})" if accepted else ""))
    return far, frr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="core", choices=("core", "lime"), help="image kind of the attributed models")
    parser.add_argument("--bml", help="base model library (default: the bundled bml/)")
    parser.add_argument("--png", default="attribution-heatmap.png")
    parser.add_argument("--only", nargs="+", help="only these deployments")
    parser.add_argument("--timing", default="yolov5-base-3.11", help="LiME image for the pslist comparison ('' to skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--urs", default="~/.cache/volatility3-zen/urs", help="where the URs read from images are kept")
    parser.add_argument("--fresh", action="store_true", help="read every UR from its image again")
    parser.add_argument("--built-only", action="store_true", help="skip deployments whose image is not built (no building)")
    parser.add_argument("--calibrate", action="store_true",
                        help="leave-one-out impostor scores, stray roots and out-of-library models: FAR/FRR of the match threshold")
    args = parser.parse_args()

    from volatility3_zen.zenlib.analysis import library as bml
    from volatility3_zen.zenlib.analysis import attribution

    library = bml.BaseModelLibrary(args.bml).all()
    names = [b.name for b in library]
    store = URStore(args.urs, args.fresh)
    cases = dict(catalog.expected_attributions())
    if args.calibrate:
        cases.update({d: (base, "zoo") for d, base in ZOO_POSITIVES.items()})
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}
    rows, matrix, expected, failures, margins, genuine, impostors = [], [], [], [], [], [], []
    print(f"library {bml.BaseModelLibrary(args.bml).directory}: {', '.join(names)}")
    print(f"match threshold {attribution.MATCH_THRESHOLD}")

    def kind_of(deployment):
        kinds = catalog.get(deployment).kinds
        return args.kind if args.kind in kinds else kinds[0]

    for deployment, (base, role) in cases.items():
        kind = kind_of(deployment)
        record = image_record(deployment, kind, args.built_only)
        if record is None:
            continue
        started = time.perf_counter()
        ur = store.model(record, kind)
        recovered = time.perf_counter() - started
        started = time.perf_counter()
        result = attribution.attribute(ur, library)
        attributed = time.perf_counter() - started
        by_base = {s.base: s.ur for s in result.scores}
        label = f"{deployment} ({role})"
        rows.append(label)
        matrix.append([by_base.get(n, 0.0) for n in names])
        expected.append(base)
        ok = result.winner == base
        margins.append((result.margin, deployment))
        if not ok:
            failures.append(deployment)
        verdict = "ok" if ok else ("UNMATCHED" if result.best == base else "WRONG") + f" (expected {base})"
        print(f"{deployment:28s} {kind:4s} {role:10s} -> {result.best:12s} UR {by_base[result.best]:.4f} "
              f"margin {result.margin:.4f} {verdict}"
              f"  [UR {recovered:.1f} s, attribution {attributed:.2f} s, {len(ur.pr.code)} code objects,"
              f" matched {len(result.omega)}, added {len(result.delta)}, removed {len(result.removed)}]", flush=True)
        if args.calibrate and base in names:
            true_score = next(s for s in result.scores if s.base == base)
            genuine.append((label, true_score.evidence, result.best == base))
            rest = [b for b in library if b.name != base]
            loo = attribution.attribute(ur, rest)
            impostors.append((label, "leave-one-out", loo.best, loo.scores[0].evidence))
            print(f"{'':28s} leave-one-out (library without {base}) -> {loo.best} UR {loo.scores[0].ur:.4f} "
                  f"min(MR, PR) {loo.scores[0].evidence:.4f}: "
                  f"{'accepted (false accept)' if loo.matched else 'unmatched'}", flush=True)

    if not rows:
        print("no deployment to attribute")
        return 1
    print("\nUR similarity matrix (rows: corpus models, columns: library bases)")
    width = max(len(r) for r in rows)
    print(" " * width + " " + " ".join(f"{n[:11]:>11s}" for n in names))
    for row, values in zip(rows, matrix):
        print(f"{row:{width}s} " + " ".join(f"{v:11.4f}" for v in values))
    correct = len(rows) - len(failures)
    print(f"\ntop-1 accuracy (attributed to the expected base at the threshold): {correct}/{len(rows)} = {correct / len(rows):.3f}")
    smallest = min(margins)
    print(f"smallest winning margin: {smallest[0]:.4f} ({smallest[1]})")
    base_rows = [(r, m[names.index(e)]) for r, m, e in zip(rows, matrix, expected) if "(base)" in r and e in names]
    for row, value in base_rows:
        print(f"base self-score {row}: UR {value:.6f}")
    if failures:
        print("WRONG or UNMATCHED:", ", ".join(failures))

    if args.calibrate:
        for deployment, what in OUT_OF_LIBRARY.items():
            record = image_record(deployment, kind_of(deployment), args.built_only)
            if record is None:
                continue
            result = attribution.attribute(store.model(record, kind_of(deployment)), library)
            impostors.append((f"{deployment} (no base)", "out of library", result.best, result.scores[0].evidence))
            print(f"{deployment:28s} out of library ({what}) -> {result.best} UR {result.scores[0].ur:.4f}: "
                  f"{'accepted (false accept)' if result.matched else 'unmatched'}")
        seen = set()
        for deployment in STRAY_IMAGES:
            record = image_record(deployment, kind_of(deployment), args.built_only)
            if record is None:
                continue
            for ur in store.strays(record, kind_of(deployment)):
                root_class = ur.provenance.get("root_class")
                if root_class in seen:  # the same class elsewhere: the same UR, counted once
                    continue
                seen.add(root_class)
                result = attribution.attribute(ur, library)
                impostors.append((f"{root_class} (stray)", "stray root", result.best, result.scores[0].evidence))
                print(f"{deployment:28s} stray root {root_class} -> {result.best} UR {result.scores[0].ur:.4f}: "
                      f"{'accepted (false accept)' if result.matched else 'unmatched'}")
        if genuine and impostors:
            calibrate(genuine, impostors, attribution.MATCH_THRESHOLD)

    try:
        heatmap(args.png, rows, names, matrix, expected)
        print(f"heatmap: {args.png}")
    except ImportError:
        print("heatmap: matplotlib is not installed (pip install matplotlib); PNG skipped")
    if args.timing:
        print("\ntiming:")
        timing(args.timing, args.repeat)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
