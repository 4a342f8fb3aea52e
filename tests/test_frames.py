"""Frames of live threads (readers/cpython/frames.py): the path to a model that needs no GC list.

A deployed process keeps its model in the frame that serves it; the corpus processes hold theirs in
``main()`` and in ``write_and_wait(models=[(model, spec)])`` while they wait to be captured.  Checked
on real cores of every CPython the corpus has: the thread states and frame chains are read under each
version's layout (PyFrameObject up to 3.10, _PyInterpreterFrame after), the frames are the functions
the process was running, and the ground truth's model roots are among the objects the frames reach.

Then the case the path exists for (issue 16): smeared memory that takes an object off the GC lists
while the lists stay consistent.  In a copy of a real core, the model root's neighbours on its GC list
are linked to each other (what a smeared pair of links looks like).  The GC walk no longer meets the
root; without the frames, its children became roots, each a partial model.  With them the model is the
whole model again, with a warning that says how it was found.
"""

import json
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tools.corpus import ensure_image, load_ground_truth
from volatility3_zen.zenlib.readers.cpython.frames import FrameReader

import zen_testlib

# (image, the functions the process runs while it waits, innermost first)
FRAME_CORES = [
    ("plain-3.7", ["signal_ready_and_wait", "write_and_wait", "main", "<module>"]),
    ("plain-3.9", ["signal_ready_and_wait", "write_and_wait", "main", "<module>"]),
    ("plain-3.10", ["signal_ready_and_wait", "write_and_wait", "main", "<module>"]),
    ("micrograd-base-3.11", ["signal_ready_and_wait", "main", "<module>"]),
    ("micrograd-derivative-3.12", ["signal_ready_and_wait", "main", "<module>"]),
    ("plain-3.13", ["signal_ready_and_wait", "write_and_wait", "main", "<module>"]),
    ("torch-custom-3.11", ["signal_ready_and_wait", "write_and_wait", "main", "<module>"]),
]


def _core(name):
    record = ensure_image(name, "core")
    (pid, core), = record.cores.items()
    truth = load_ground_truth(record.ground_truth[pid])
    return core, truth


def _roots(truth):
    return [m["root_addr"] for m in truth.get("models", []) + truth.get("plain_models", [])]


@pytest.mark.image
@pytest.mark.parametrize("name,functions", FRAME_CORES, ids=[n for n, _ in FRAME_CORES])
def test_frames_of_live_threads(name, functions):
    core, truth = _core(name)
    python, _memory = zen_testlib.open_core(core)
    frames = FrameReader(python.heap)
    assert len(frames.threads()) == 1
    names = []
    for frame in frames.all_frames():
        if python.objects.kind(frame.code) == "code":  # 3.12+: the C stack's shim frames have none
            names.append(python.objects.read_str(python.objects.u64(frame.code + python.layout.offset("PyCodeObject", "co_name"))))
    assert [n for n in names if not n.startswith("<interpreter")] == functions
    reached = set(frames.reachable())
    assert all(root in reached for root in _roots(truth))
    assert not frames.warnings


def _unlink_from_gc_list(core_copy: Path, obj: int, gc_size: int):
    """Link the GC neighbours of ``obj`` to each other in the copy (3.8+ PyGC_Head: _gc_next, then
    _gc_prev whose low bits are flags)."""
    with open(core_copy, "r+b") as f:
        elf = ELFFile(f)
        head = obj - gc_size
        at = lambda address: zen_testlib.core_file_offset(elf, address)  # noqa: E731
        f.seek(at(head))
        following, previous_word = struct.unpack("<QQ", f.read(16))
        previous = previous_word & ~0x3
        f.seek(at(previous))  # previous._gc_next = following
        f.write(struct.pack("<Q", following))
        f.seek(at(following + 8))
        flags = struct.unpack("<Q", f.read(8))[0] & 0x3
        f.seek(at(following + 8))  # following._gc_prev = previous, its flags kept
        f.write(struct.pack("<Q", previous | flags))


def _model_rows(core):
    result = zen_testlib.run_vol(["-r", "json", "-f", str(core), "linux.zen.model"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout), result.stderr


@pytest.mark.image
def test_model_off_the_gc_lists_is_found_through_the_frames(tmp_path):
    core, truth = _core("torch-custom-3.11")
    root = truth["models"][0]["root_addr"]
    clean, _ = _model_rows(core)
    smeared = tmp_path / "smeared.core"
    shutil.copyfile(core, smeared)
    python, _memory = zen_testlib.open_core(core)
    _unlink_from_gc_list(smeared, root, python.layout.size("PyGC_Head"))
    python, _memory = zen_testlib.open_core(smeared)
    assert root not in {obj for obj, _type in python.heap.gc_objects()}
    assert not python.heap.lists_broken  # consistent lists: only the frames can find the root
    rows, stderr = _model_rows(smeared)
    assert rows == clean
    assert "nn.Module object(s) not on the GC lists found through the frames of live threads" in stderr
