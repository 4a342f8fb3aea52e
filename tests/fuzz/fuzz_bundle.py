#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the patch-bundle reader: zenlib/bundle/format.py (read_members, verify, manifest_sha256) and
reuse/bundle.py (PatchBundle, check_interpreter: what open_bundle does), up to acceptance or refusal.
Nothing the bundle carries is executed.

    .venv/bin/python tests/fuzz/fuzz_bundle.py -max_total_time=600 -timeout=10 CORPUS_DIR tests/fuzz/seeds/bundle

libFuzzer writes new inputs into the first corpus folder (give it a scratch folder, the seeds stay
as they are) and a crashing input to ./crash-<sha1> (-artifact_prefix= moves it).  The target is
targets.bundle_target, which tests/test_fuzz_regressions.py runs on every input in crashes/bundle/.
See docs/fuzzing.md.
"""

import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]

with atheris.instrument_imports(include=["volatility3_zen", "targets", "zipfile"]):
    import targets


def test_one_input(data: bytes) -> None:
    targets.bundle_target(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
