"""disassemble / normalized_disassembly / decompile on code compiled by the real CPython 3.7-3.13
(the sample and helpers of tests/test_marshal_writer.py), checked against the target's own ``dis``."""

import dataclasses
import json
import re

import pytest
from test_marshal_writer import VERSIONS, compiled_sample, run_in_target

from volatility3_zen.zenlib.readers.cpython.disassemble import code_tree, decompile, disassemble, normalized_disassembly, xdis_code
from volatility3_zen.zenlib.errors import CorruptObjectError, UnsupportedVersionError
from volatility3_zen.zenlib.representation.program import CodeRef

version_ids = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: "%d.%d" % v)

# Runs in the target interpreter: (offset, opname) of every instruction of every code object, in
# the order code_tree walks them, as the target's dis shows them (without 3.11+ inline caches).
TARGET_DIS = r'''
import dis, json, sys, types
def walk(co, out):
    out.append([[i.offset, i.opname] for i in dis.get_instructions(co)])
    for const in co.co_consts:
        if isinstance(const, types.CodeType):
            walk(const, out)
    return out
print(json.dumps(walk(compile(sys.stdin.read(), sys.argv[1], "exec"), [])))
'''

INSTRUCTION_LINE = re.compile(r"^\s*(?:\d+:)?\s*(?:>>)?\s*(\d+) ([A-Z][A-Z0-9_]*)\b")

FUNCTION = '''\
def scale(values, factor=2, *, label="x"):
    total = 0
    for value in values:
        if value > 1000000000000:
            continue
        total += value * factor
    return label in {"a", "b"}, total, (1.5, None)
'''

SIMPLE = '''\
def area(width, height=2, *, scale=1.5):
    """Docstring."""
    if width > height:
        return width * height * scale
    names = [str(n) for n in (width, height)]
    return ", ".join(names) or None
'''


@version_ids
def test_disassembly_shows_every_instruction_as_the_target_does(version):
    sample = compiled_sample(version)
    expected = json.loads(run_in_target(version, TARGET_DIS, "zen_sample.py", stdin=sample.source))
    text = disassemble(sample.root, sample.resolve, version)
    sections = text.split("\n## ")
    assert len(sections) == len(expected) == len(list(code_tree(sample.root, sample.resolve)))
    for section, instructions in zip(sections, expected):
        shown = [[int(m.group(1)), m.group(2)] for m in map(INSTRUCTION_LINE.match, section.splitlines()) if m]
        assert shown == instructions, section.splitlines()[0]


@version_ids
def test_disassembly_names_nested_code_by_process_address(version):
    sample = compiled_sample(version)
    maker = sample.function("closure_maker")
    add = sample.resolve(next(c.address for c in maker.consts if isinstance(c, CodeRef)))
    text = disassemble(maker, sample.resolve, version)
    assert f"<code object {add.qualname or add.name} at 0x{add.address:x}" in text
    assert text.count("\n## ") == 1


@version_ids
def test_free_and_cell_variables_keep_their_names(version):
    """A code object with both: xdis 6.3 would swap them if it read our marshal bytes."""
    sample = compiled_sample(version)
    tokens = normalized_disassembly(sample.function("middle"), sample.resolve, version)
    assert any(t.startswith(("LOAD_DEREF a", "LOAD_CLOSURE a")) for t in tokens), tokens
    assert any(t.startswith("STORE_DEREF b") for t in tokens), tokens


@version_ids
def test_normalized_disassembly_ignores_lines_files_and_addresses(version):
    first = compiled_sample(version, FUNCTION, "one.py")
    moved = compiled_sample(version, "import os\n\n\n\n# moved down\n" + FUNCTION, "two.py")
    tokens = normalized_disassembly(first.function("scale"), first.resolve, version)
    assert tokens == normalized_disassembly(moved.function("scale"), moved.resolve, version)
    assert "LOAD_CONST int:1000000000000" in tokens
    assert "LOAD_CONST (float:1.5, NoneType:None)" in tokens
    assert "LOAD_CONST frozenset{str:'a', str:'b'}" in tokens
    assert any(t.startswith("LOAD_FAST") and t.endswith("factor") for t in tokens)
    assert not any(re.search(r"0x[0-9a-f]|\bto \d", t) for t in tokens), tokens


@version_ids
def test_normalized_disassembly_tells_functions_apart(version):
    sample = compiled_sample(version)
    forms = {code.name: tuple(normalized_disassembly(code, sample.resolve, version)) for code in sample.codes.values()}
    assert forms["member"] != forms["handle"] != forms["generator"]
    assert forms["member"][0].startswith("LOAD_FAST") and forms["member"][0].endswith("x")


def require_decompyle3():
    reason = "decompyle3 is missing or cannot load this xdis (it needs xdis<6.3)"
    pytest.importorskip("decompyle3.scanners.scanner38", reason=reason)


def test_decompile_round_trips_a_simple_function_on_38():
    require_decompyle3()
    version = (3, 8)
    original = compiled_sample(version, SIMPLE, "simple.py")
    source = decompile(original.root, original.resolve, version)
    assert source is not None and "def area(width, height=2, *, scale=1.5):" in source
    again = compiled_sample(version, source, "simple.py")
    for name in ("area", "<listcomp>"):
        assert normalized_disassembly(again.function(name), again.resolve, version) == normalized_disassembly(
            original.function(name), original.resolve, version
        )


def test_decompile_of_a_function_is_its_body():
    require_decompyle3()
    sample = compiled_sample((3, 7))
    body = decompile(sample.function("handle"), sample.resolve, (3, 7))
    assert body is not None and "except ZeroDivisionError as exc:" in body and "def handle" not in body


@pytest.mark.parametrize("version", [v for v in VERSIONS if v >= (3, 9)], ids=lambda v: "%d.%d" % v)
def test_no_decompiler_for_39_on(version):
    sample = compiled_sample(version, SIMPLE, "simple.py")
    assert decompile(sample.root, sample.resolve, version) is None


def test_refuses_unknown_versions_and_cycles():
    version = (3, 11)
    sample = compiled_sample(version, FUNCTION, "simple.py")
    with pytest.raises(UnsupportedVersionError):
        disassemble(sample.root, sample.resolve, (3, 6))
    root = dataclasses.replace(sample.root, consts=sample.root.consts + (CodeRef(sample.root.address),))
    looped = {**sample.codes, root.address: root}
    with pytest.raises(CorruptObjectError):
        disassemble(root, looped.__getitem__, version)
    with pytest.raises(CorruptObjectError):
        xdis_code(root, looped.__getitem__, version)
