#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the ELF process-core layer (zenlib/vol/layers/elfcore.py): read_elf_core, ProcessCoreStacker,
then what the zen readers ask of a stacked ProcessCoreLayer (pid, name, NT_FILE, auxv, regions, reads
through vol/targets.layer_reader, the ELF images in it: readers/elfimage.py).

    .venv/bin/python tests/fuzz/fuzz_elfcore.py -max_total_time=600 -timeout=10 CORPUS_DIR tests/fuzz/seeds/elfcore

libFuzzer writes new inputs into the first corpus folder (give it a scratch folder, the seeds stay
as they are) and a crashing input to ./crash-<sha1> (-artifact_prefix= moves it).  The target is
targets.elfcore_target, which tests/test_fuzz_regressions.py runs on every input in crashes/elfcore/.
See docs/fuzzing.md.
"""

import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]

with atheris.instrument_imports(include=["volatility3_zen", "targets", "volatility3.framework.layers.segmented"]):
    import targets


def test_one_input(data: bytes) -> None:
    targets.elfcore_target(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
