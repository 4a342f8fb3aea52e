"""Attributes every corpus model against the base model library; prints the similarity matrix, top-1
accuracy and the smallest winning margin, saves the matrix as a heatmap PNG, and times
``linux.zen.attribute`` against ``linux.pslist`` on a LiME image.

Usage (from the repository root, with the suite installed; matplotlib for the PNG):
    python benchmarks/bench_attribution.py [--kind core|lime] [--bml DIR] [--png attribution.png]
                                           [--only DEPLOYMENT ...] [--timing yolov5-base-3.11] [--repeat 3]

Images are built by the corpus harness on first use and cached.  Each model is the root the deployed
process names in its ground truth.  Targets (issue 5): every model's top-1 base is its family's base,
a base scores UR = 1.0 against a library that holds it, attribute / pslist < 2.0 on a LiME image.
"""

import argparse
import os
import sys
import time

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
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from zen_testlib import construct
    from volatility3_zen.zenlib.vol import session

    pid, root = model_root(record)
    image = str(record.image) if kind == "lime" else str(record.cores[pid])
    plugin = construct(image, "linux.zen.attribute.Attribute", pid=[pid], root=[root])
    found = [found.ur for found in session.models(plugin.context, plugin.config, [root])]
    if len(found) != 1:
        raise SystemExit(f"{record.name}: expected one model at 0x{root:x}, found {len(found)}")
    return found[0]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="core", choices=("core", "lime"), help="image kind of the attributed models")
    parser.add_argument("--bml", help="base model library (default: the bundled bml/)")
    parser.add_argument("--png", default="attribution-heatmap.png")
    parser.add_argument("--only", nargs="+", help="only these deployments")
    parser.add_argument("--timing", default="yolov5-base-3.11", help="LiME image for the pslist comparison ('' to skip)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from volatility3_zen.zenlib.analysis import library as bml
    from volatility3_zen.zenlib.analysis import attribution

    library = bml.BaseModelLibrary(args.bml).all()
    names = [b.name for b in library]
    cases = catalog.expected_attributions()
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}
    rows, matrix, expected, failures, margins = [], [], [], [], []
    print(f"library {bml.BaseModelLibrary(args.bml).directory}: {', '.join(names)}")
    for deployment, (base, role) in cases.items():
        kind = args.kind if args.kind in catalog.get(deployment).kinds else catalog.get(deployment).kinds[0]
        record = ensure_image(deployment, kind)
        started = time.perf_counter()
        ur = fingerprint(record, kind)
        recovered = time.perf_counter() - started
        started = time.perf_counter()
        result = attribution.attribute(ur, library)
        attributed = time.perf_counter() - started
        by_base = {s.base: s.ur for s in result.scores}
        rows.append(f"{deployment} ({role})")
        matrix.append([by_base.get(n, 0.0) for n in names])
        expected.append(base)
        ok = result.winner == base
        margins.append((result.margin, deployment))
        if not ok:
            failures.append(deployment)
        print(f"{deployment:28s} {kind:4s} {role:10s} -> {result.winner:12s} UR {by_base[result.winner]:.4f} "
              f"margin {result.margin:.4f} {'ok' if ok else 'WRONG (expected ' + base + ')'}"
              f"  [UR {recovered:.1f} s, attribution {attributed:.2f} s, {len(ur.pr.code)} code objects,"
              f" matched {len(result.omega)}, added {len(result.delta)}, removed {len(result.removed)}]", flush=True)

    print("\nUR similarity matrix (rows: corpus models, columns: library bases)")
    width = max(len(r) for r in rows)
    print(" " * width + " " + " ".join(f"{n[:11]:>11s}" for n in names))
    for row, values in zip(rows, matrix):
        print(f"{row:{width}s} " + " ".join(f"{v:11.4f}" for v in values))
    correct = len(rows) - len(failures)
    print(f"\ntop-1 accuracy: {correct}/{len(rows)} = {correct / len(rows):.3f}")
    smallest = min(margins)
    print(f"smallest winning margin: {smallest[0]:.4f} ({smallest[1]})")
    base_rows = [(r, m[names.index(e)]) for r, m, e in zip(rows, matrix, expected) if "(base)" in r and e in names]
    for row, value in base_rows:
        print(f"base self-score {row}: UR {value:.6f}")
    if failures:
        print("WRONG:", ", ".join(failures))
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
