#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of ELF images in process memory (zenlib/readers/elfimage.py): loaded_images over a ProcessMemory
whose one file-backed mapping holds the input, then GNU-hash symbol lookups.

    .venv/bin/python tests/fuzz/fuzz_elfimage.py -max_total_time=600 -timeout=10 CORPUS_DIR tests/fuzz/seeds/elfimage

libFuzzer writes new inputs into the first corpus folder (give it a scratch folder, the seeds stay
as they are) and a crashing input to ./crash-<sha1> (-artifact_prefix= moves it).  The target is
targets.elfimage_target, which tests/test_fuzz_regressions.py runs on every input in crashes/elfimage/.
See docs/fuzzing.md.
"""

import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]

with atheris.instrument_imports(include=["volatility3_zen", "targets"]):
    import targets


def test_one_input(data: bytes) -> None:
    targets.elfimage_target(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
