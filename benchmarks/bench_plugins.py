"""Prints wall time and peak RSS of linux.zen.* plugins next to linux.pslist on the same image.

Usage (from the repository root, with the suite installed):
    python benchmarks/bench_plugins.py [--image NAME] [--kind lime] [--plugins linux.zen.codeobjects] [--repeat 3]

The reference image is the corpus' ``torch-custom-3.11`` LiME image (a QEMU guest running CPython 3.11
with torch 2.13.0: ~27k functions).  Each command runs as its own ``vol`` process, the way an investigator
runs it, with a warm Volatility symbol cache (one untimed pslist first).  Targets from the issues:
plugin / pslist <= 2.0, peak RSS <= 1 GiB.
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

from tools.corpus import ensure_image  # noqa: E402

ISF_DIR = os.path.join(REPO, "tests", "data", "isf")


def run_once(args, env):
    """(wall seconds, peak RSS bytes) of one vol run; raises on failure."""
    vol = shutil.which("vol") or os.path.join(os.path.dirname(sys.executable), "vol")
    # wait4 gives the child's own peak RSS (ru_maxrss of RUSAGE_CHILDREN would be a running maximum).
    start = time.perf_counter()
    proc = subprocess.Popen([vol, "-q", "-s", ISF_DIR] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"vol {' '.join(args)} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="torch-custom-3.11")
    parser.add_argument("--kind", default="lime", choices=("lime", "core"))
    parser.add_argument("--plugins", nargs="+", default=["linux.zen.codeobjects"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    record = ensure_image(args.image, args.kind)
    image = record.image if args.kind == "lime" else next(iter(record.cores.values()))
    env = dict(os.environ)
    env.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="zen-bench-"))
    print(f"image: {image} ({os.path.getsize(image) / 2**20:.0f} MiB)")
    run_once(["-f", image, "linux.pslist"], env)  # fills Volatility's symbol cache, untimed

    results = {}
    for plugin in ["linux.pslist"] + args.plugins:
        runs = [run_once(["-f", image, plugin], env) for _ in range(args.repeat)]
        best = min(w for w, _ in runs)
        rss = max(r for _, r in runs)
        results[plugin] = (best, rss)
        print(f"{plugin:28s} best of {args.repeat}: {best:6.2f} s   peak RSS {rss / 2**20:7.1f} MiB")
    base = results["linux.pslist"][0]
    for plugin in args.plugins:
        wall, rss = results[plugin]
        verdict = "ok" if wall / base <= 2.0 and rss <= 2**30 else "OVER TARGET"
        print(f"ratio {plugin} / linux.pslist = {wall / base:.2f} (target <= 2.0); peak RSS {rss / 2**20:.0f} MiB (target <= 1024): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
