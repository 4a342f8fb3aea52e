"""Smeared builtin type objects (issue 16: contain an error at the smallest unit that owns it).

libpython's type objects live in its writable data, which smear can hit like any other page.  Before,
the kind of an object was read from its type object's ``tp_flags`` and ``tp_name``: one smeared
``PyTuple_Type`` made every code object whose constants or names hold a tuple unreadable.  A campaign
variant of the micrograd core (50 random pages, two of them on ``PyTuple_Type`` and ``PyCode_Type``)
went from 43 code objects of the model to 2, and its attribution from micrograd at UR 1.0 to no match.

The builtin types are now known by the addresses of their exported symbols.  In a copy of a real core,
the name and flags of ``PyTuple_Type``, ``PyCode_Type`` and ``PyUnicode_Type`` are overwritten with
garbage: codeobjects still lists every code object of the clean run, byte for byte, and attribution
still names the base with the clean UR.
"""

import json
import shutil

import pytest
from elftools.elf.elffile import ELFFile

from tools.corpus import ensure_image, load_ground_truth

import zen_testlib

SMEARED_TYPES = ("PyTuple_Type", "PyCode_Type", "PyUnicode_Type")


def _rows(args):
    result = zen_testlib.run_vol(["-r", "json"] + args)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.image
def test_smeared_builtin_type_objects(tmp_path):
    record = ensure_image("micrograd-base-3.11", "core")
    (pid, core), = record.cores.items()
    root = load_ground_truth(record.ground_truth[pid])["plain_models"][0]["root_addr"]
    python, _memory = zen_testlib.open_core(core)
    off_name = python.layout.offset("PyTypeObject", "tp_name")
    off_flags = python.layout.offset("PyTypeObject", "tp_flags")
    smeared = tmp_path / "smeared.core"
    shutil.copyfile(core, smeared)
    with open(smeared, "r+b") as f:
        elf = ELFFile(f)
        for symbol in SMEARED_TYPES:
            address, _size = python.runtime.image.lookup(symbol)
            for member in (off_name, off_flags):
                f.seek(zen_testlib.core_file_offset(elf, address + member))
                f.write(b"\x5a\xa5\x3c\xc3\x96\x69\xf0\x0f")

    def code_rows(image):
        return sorted((r["FunctionID"], r["SHA256"]) for r in _rows(["-f", str(image), "linux.zen.codeobjects", "--pid", str(pid)]))

    def attribution(image):
        rows = _rows(["-f", str(image), "linux.zen.attribute", "--pid", str(pid), "--root", str(root)])
        return [(r["Base"], r["UR"]) for r in rows]

    assert code_rows(smeared) == code_rows(core)
    assert attribution(smeared) == attribution(core)
