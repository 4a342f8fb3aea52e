"""The corruption campaign (tools/campaign.py, docs/campaign.md): its CI subset and its mechanics.

The subset runs seeded mutated copies of real images through all four plugins: a plain-Python model
core (micrograd, every mutation kind, fast), a torch model core (resnet-se, the model plugin's tensors),
a LiME image (micrograd in a guest, the process's pages found through the kernel), and the variants of
the full campaign that gave tracebacks.  Whatever the mutation does to the recovered content, no run
may end in a traceback or a hang.

The mechanics (variant plan, classification, page finding, mutations) are checked without an image.
"""

import os
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pytest

from tools import campaign
from tools.corpus import ensure_image, load_ground_truth

SEED = 1


@dataclass(frozen=True)
class Case:
    """One campaign of the CI subset: the image, the plugins, the variant plan and which of it to run."""

    deployment: str
    kind: str
    plugins: Tuple[str, ...]
    mutations: Tuple[str, ...]
    rates: Tuple[float, ...]
    planned: int  # --variants
    only: Optional[Tuple[int, ...]] = None  # --only; None: every planned variant

    @property
    def count(self) -> int:
        return len(self.only) if self.only else self.planned

    @property
    def id(self) -> str:
        return f"{self.deployment}-{self.kind}" + (f"-v{'-'.join(map(str, self.only))}" if self.only else "")


# The cheapest images that cover every plugin: a plain-Python model core (every mutation kind), a torch
# core (the model plugin's tensors), a LiME image.  The pinned variants are the tracebacks the first full
# campaign found (docs/campaign.md), kept as regressions.
CI_CASES = [
    Case("micrograd-derivative-3.12", "core", ("codeobjects", "attribute", "patchgen"), campaign.MUTATIONS,
         (0.01, 0.05), 10),
    Case("resnet-se-3.11", "core", ("model", "attribute", "patchgen"),
         ("process-random", "pointer-smear", "writable-zero", "page-random", "truncate"), (0.01,), 5),
    Case("micrograd-base-3.11", "lime", ("codeobjects", "attribute", "patchgen"),
         ("process-random", "pointer-smear", "page-random", "truncate"), (0.01,), 4),
    # MemoryError in readers/memory.py _chunk: every chunk read at a garbage address is cached
    Case("resnet-se-3.11", "core", ("codeobjects",), campaign.MUTATIONS, campaign.DEFAULT_RATES, 30, (16,)),
    # AttributeError in Volatility's vma.is_valid() while targets.task_regions iterates the VMAs
    Case("torch-custom-3.11", "lime", ("codeobjects",), campaign.MUTATIONS, campaign.DEFAULT_RATES, 15, (8,)),
]


def test_the_ci_subset_covers_every_plugin_and_twenty_variants():
    assert sum(case.count for case in CI_CASES) >= 20
    assert {plugin for case in CI_CASES for plugin in case.plugins} == set(campaign.PLUGINS)
    assert {"core", "lime"} <= {case.kind for case in CI_CASES}


def _model_root(record):
    pid, path = sorted(record.ground_truth.items())[0]
    truth = load_ground_truth(path)
    model = (truth.get("models") or truth.get("plain_models"))[0]
    return pid, model["root_addr"]


def _failure_report(run_list, args_line, image):
    lines = []
    for run in run_list:
        lines.append(f"variant {run.variant.index} {run.variant.label} seed {run.variant.seed} {run.plugin}: "
                     f"{run.verdict} {run.error}")
        lines.append(f"  python -m tools.campaign {image} {args_line} --only {run.variant.index} "
                     f"--plugins {run.plugin} --keep /tmp/zen-repro")
        lines += ["  | " + line for line in run.stderr_tail[-8:]]
    return "\n".join(lines)


@pytest.mark.image
@pytest.mark.slow
@pytest.mark.parametrize("case", CI_CASES, ids=[case.id for case in CI_CASES])
def test_mutated_images_give_no_traceback_and_no_hang(case, tmp_path):
    record = ensure_image(case.deployment, case.kind)
    pid, root = _model_root(record)
    image = Path(record.image if case.kind == "lime" else record.cores[pid])
    # LiME: name the process, as an investigator would; a core holds one process anyway
    plugin_pid = pid if case.kind == "lime" else None
    settings = campaign.Settings(str(campaign.DEFAULT_ISF), plugin_pid, root, os.environ["XDG_CACHE_HOME"], 16)
    variants = campaign.plan_variants(case.planned, case.mutations, case.rates, SEED)
    variants = [v for v in variants if case.only is None or v.index in case.only]
    log = []
    run = campaign.Campaign(image, case.plugins, variants, settings, work_dir=tmp_path, log=log.append)
    campaign.execute(run, campaign.process_pages_finder(image, settings.isf))
    args_line = campaign.recipe_line(SEED, case.planned, case.mutations, case.rates, plugin_pid, root)
    print("\n".join(log) + "\n\n" + campaign.report(run, args_line))

    assert all(clean.verdict == campaign.OK for clean in run.clean.values()), \
        {p: (c.verdict, c.error, c.stderr_tail[-5:]) for p, c in run.clean.items()}
    assert len(run.runs) == case.count * len(case.plugins)
    broken = [r for r in run.runs if r.verdict in (campaign.TRACEBACK, campaign.HANG)]
    assert not broken, f"{len(broken)} of {len(run.runs)} runs:\n" + _failure_report(broken, args_line, image)
    assert not list(tmp_path.glob("zen-campaign-*")), "the copies were not removed"


# -- the mechanics, without an image ------------------------------------------------------------------------

def test_the_variant_plan_is_a_function_of_the_seed():
    first = campaign.plan_variants(20, campaign.MUTATIONS, campaign.DEFAULT_RATES, 7)
    assert first == campaign.plan_variants(20, campaign.MUTATIONS, campaign.DEFAULT_RATES, 7)
    assert first != campaign.plan_variants(20, campaign.MUTATIONS, campaign.DEFAULT_RATES, 8)
    assert [v.mutation for v in first[:8]] == list(campaign.MUTATIONS)
    assert {v.rate for v in first if v.mutation != "truncate"} == set(campaign.DEFAULT_RATES)
    assert all(v.rate is None for v in first if v.mutation == "truncate")


@pytest.mark.parametrize("returncode,stderr,verdict", [
    (0, "WARNING  x: PID 1: 3 objects unreadable\n", campaign.OK),
    (1, "ERROR    volatility3_zen.zenlib.vol.session: PID 1 (python): no CPython runtime found\n", campaign.ERROR),
    (1, "Unsatisfied requirement plugins.CodeObjects.primary: Memory layer\n", campaign.ERROR),
    (1, "Traceback (most recent call last):\n  File \"/x/volatility3_zen/a.py\", line 3, in f\n    g()\n"
        "ValueError: bad\n", campaign.TRACEBACK),
    (0, "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyError: 3\n", campaign.TRACEBACK),
    (None, "", campaign.HANG),
    (-9, "", campaign.CRASH),
    (1, "Killed\n", campaign.CRASH),
])
def test_runs_are_classified(returncode, stderr, verdict):
    assert campaign.classify(returncode, stderr)[0] == verdict


def test_a_traceback_is_named_by_its_exception_and_innermost_frame():
    stderr = ("Traceback (most recent call last):\n"
              '  File "/v/lib/python3.11/site-packages/volatility3/cli/__init__.py", line 9, in run\n    x()\n'
              '  File "/work/main/volatility3_zen/zenlib/readers/torch/model.py", line 42, in tensors\n    y()\n'
              "OverflowError: cannot fit 'int' into an index-sized integer\n")
    assert campaign.classify(1, stderr) == (campaign.TRACEBACK, "OverflowError: cannot fit 'int' into an index-sized integer")
    assert campaign.traceback_location(stderr.splitlines()) == "volatility3_zen/zenlib/readers/torch/model.py:42 in tensors"


def _fake_core(path: Path, segments):
    """An ELF core with PT_LOAD segments [(vaddr, data bytes, writable)] and nothing else."""
    phoff, phentsize = 64, 56
    offset = phoff + phentsize * len(segments)
    offset += -offset % campaign.PAGE
    headers, blobs = b"", b""
    for vaddr, data, writable in segments:
        headers += struct.pack("<IIQQQQQQ", 1, 4 | (2 if writable else 0), offset + len(blobs), vaddr, 0, len(data),
                               len(data), campaign.PAGE)
        blobs += data
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, phentsize,
                                                           len(segments), 64, 0, 0)
    head = ehdr + headers
    path.write_bytes(head + bytes(-len(head) % campaign.PAGE) + blobs)


def test_a_core_process_pages_and_its_pointers_are_found(tmp_path):
    pointer = 0x7F00_1234_5678
    writable = np.zeros(2 * campaign.PAGE // 8, "<u8")
    writable[[3, 700]] = pointer  # one pointer on each page
    writable[5] = 0x4000_0000_0000  # not a user-space pointer of the range
    code = bytes(range(256)) * 16
    core = tmp_path / "p.core"
    _fake_core(core, [(0x400000, code, False), (0x7F00_0000_0000, writable.tobytes(), True)])
    assert campaign.is_elf_core(core)
    pages = campaign.core_process_pages(core, None)
    assert sorted(pages.offsets) == [0x400000, 0x7F00_0000_0000, 0x7F00_0000_1000]
    assert pages.writable == {0x7F00_0000_0000, 0x7F00_0000_1000}
    eligible = campaign.Eligible(core, lambda: pages)
    assert len(eligible.process_pages) == 3 and len(eligible.writable_pages) == 2
    assert eligible.pointers.values.tolist() == [pointer, pointer]
    assert [o - pages.offsets[0x7F00_0000_0000] for o in eligible.pointers.offsets.tolist()] == [3 * 8, 700 * 8]


def test_mutations_are_deterministic_and_stay_in_scope(tmp_path):
    words = np.full(4 * campaign.PAGE // 8, 0x7F00_0000_1000, "<u8")
    core = tmp_path / "p.core"
    _fake_core(core, [(0x400000, b"\x90" * campaign.PAGE, False), (0x7F00_0000_0000, words.tobytes(), True)])
    pages = campaign.core_process_pages(core, None)
    eligible = campaign.Eligible(core, lambda: pages)
    code_offset = pages.offsets[0x400000]
    results = {}
    for mutation in ("writable-random", "writable-zero", "pointer-smear", "process-zero"):
        variant = campaign.Variant(0, mutation, 0.5, 1234)
        copies = []
        for attempt in range(2):
            copy = tmp_path / f"{mutation}-{attempt}.core"
            campaign.copy_image(core, copy, None, lambda process: _no_tracking(process))
            results[mutation] = campaign.mutate(copy, variant, eligible)
            copies.append(copy.read_bytes())
        assert copies[0] == copies[1], f"{mutation} is not deterministic"
        assert copies[0] != core.read_bytes(), f"{mutation} changed nothing"
        if mutation != "process-zero":  # writable scope: the code page is untouched
            assert copies[0][code_offset:code_offset + campaign.PAGE] == b"\x90" * campaign.PAGE
    assert results["writable-zero"] == {"pages": 2, "of": 4}
    assert results["pointer-smear"] == {"pointers": 1024, "of": 2048}
    size = core.stat().st_size
    assert all(size // 2 <= campaign.truncation_size(size, seed) < size for seed in range(50))
    cut = tmp_path / "cut.core"
    campaign.copy_image(core, cut, campaign.truncation_size(size, 5), _no_tracking)
    assert cut.stat().st_size == campaign.truncation_size(size, 5)
    assert cut.read_bytes() == core.read_bytes()[:cut.stat().st_size]


def _no_tracking(process):
    import contextlib

    return contextlib.nullcontext(process)


def test_recovery_compares_with_the_clean_rows():
    clean = [{"PID": 1, "FunctionID": f"m:f{i}", "SHA256": str(i)} for i in range(4)]
    variant = clean[:2] + [{"PID": 1, "FunctionID": "m:f2", "SHA256": "changed"}]
    assert campaign.recovery("codeobjects", clean, variant)[0] == 0.5
    assert campaign.recovery("codeobjects", clean, None)[0] == 0.0
    assert campaign.recovery("codeobjects", [], variant)[0] is None
    base = [{"PID": 1, "Root": 9, "Base": "resnet", "UR": 0.9, "Winner": True},
            {"PID": 1, "Root": 9, "Base": "yolov5", "UR": 0.4, "Winner": False}]
    flipped = [dict(base[0], Winner=False), dict(base[1], Winner=True)]
    assert campaign.recovery("attribute", base, base) == (1.0, {"ur": 0.9, "clean_ur": 0.9})
    assert campaign.recovery("attribute", base, flipped)[0] == 0.0


def test_random_filler_differs_between_seeds(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(bytes(3 * campaign.PAGE + 100))
    campaign._overwrite_pages(target, [0, 3 * campaign.PAGE], random.Random(1))
    data = target.read_bytes()
    assert len(data) == 3 * campaign.PAGE + 100, "a page at the end of the file is cut there"
    assert data[:campaign.PAGE].strip(b"\0") and data[3 * campaign.PAGE:].strip(b"\0")
    assert not data[campaign.PAGE:3 * campaign.PAGE].strip(b"\0")
