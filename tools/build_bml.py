"""Builds the shipped base model library (bml/) from real LiME images of the corpus' base deployments.

    python tools/build_bml.py                 # every base of the catalogue, into bml/
    python tools/build_bml.py yolov5 resnet   # only these bases
    python tools/build_bml.py --bml DIR --kind core

For each base the corpus harness builds (or reuses) the image of its deployment; the model root is the
one the deployed process names in its ground truth, and one ``vol linux.zen.attribute --bml-add NAME``
stores its fingerprint.  That is the same single command an investigator runs to add a base of their own.
The exact package and version each base comes from is recorded in the fingerprint (``--bml-source``).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools.corpus import catalog, ensure_image, load_ground_truth  # noqa: E402

ISF_DIR = os.path.join(REPO, "tests", "data", "isf")


def vol_executable() -> str:
    return shutil.which("vol") or os.path.join(os.path.dirname(sys.executable), "vol")


def build_one(name: str, deployment: str, kind: str, library: str) -> None:
    record = ensure_image(deployment, kind)
    pid, truth_path = sorted(record.ground_truth.items())[0]
    truth = load_ground_truth(truth_path)
    root = truth["models"][0]["root_addr"] if truth.get("models") else truth["plain_models"][0]["root_addr"]
    image = str(record.image) if kind == "lime" else str(record.cores[pid])
    source = f"{catalog.base_source(name)}; corpus deployment {deployment}, {kind} image {record.directory.name}"
    args = [vol_executable(), "-q", "-s", ISF_DIR, "-f", image, "linux.zen.attribute", "--pid", str(pid),
            "--root", str(root), "--bml", library, "--bml-add", name, "--replace", "--bml-source", source]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, XDG_CACHE_HOME=cache)
        result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{name}: vol failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    print(f"{name}: {deployment} ({kind}) pid {pid} root 0x{root:x}, {source}, {time.monotonic() - started:.1f} s", flush=True)


def main() -> int:
    bases = catalog.base_deployments()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"bases to build (default: all of {', '.join(sorted(bases))})")
    parser.add_argument("--bml", default=os.path.join(REPO, "bml"), help="library directory (default: bml/)")
    parser.add_argument("--kind", default="lime", choices=("lime", "core"))
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in bases]
    if unknown:
        parser.error(f"unknown base(s) {', '.join(unknown)}; known: {', '.join(sorted(bases))}")
    for name in args.names or sorted(bases):
        build_one(name, bases[name], args.kind, args.bml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
