"""The Integrity column of linux.zen.codeobjects (readers/cpython/integrity.py, and the in-memory
checks of readers/cpython/code.py): issue 17, "code objects whose bytes differ from what their
address should hold are not flagged per row".

- On code the analysing interpreter compiled (its version, when supported): every code object of a
  few stdlib modules is "ok", and each kind of damage is named with its offset.
- On clean corpus cores of CPython 3.7-3.13 (tracing ones included) every code object is "ok".
- On a copy of a real core whose bytes were overwritten inside one code object's bytecode (found by
  the plugin's own Code column), that row is flagged and every other row stays "ok".
"""

import dataclasses
import dis
import importlib
import json
import shutil
import sys
import types

import pytest
from elftools.elf.elffile import ELFFile

import zen_testlib
from tools.corpus import ensure_image
from volatility3_zen.zenlib.readers.cpython import integrity
from volatility3_zen.zenlib.readers.cpython.layouts import load_layout, supported_versions
from volatility3_zen.zenlib.representation.program import CodeObject

HERE = sys.version_info[:2]
HERE_SUPPORTED = "%d.%d" % HERE in supported_versions()
needs_supported_interpreter = pytest.mark.skipif(not HERE_SUPPORTED, reason=f"CPython {HERE} has no opcode table")


# -- code the analysing interpreter compiled -----------------------------------------------------------------
def as_recovered(code: types.CodeType) -> CodeObject:
    """A live code object as the reader would recover it (3.11+ co_code is already de-quickened)."""
    localsplus = None
    if HERE >= (3, 11):
        localsplus = code.co_varnames + tuple(c for c in code.co_cellvars if c not in code.co_varnames) + code.co_freevars
    return CodeObject(
        address=id(code), name=code.co_name, qualname=getattr(code, "co_qualname", None), filename=code.co_filename,
        firstlineno=code.co_firstlineno, argcount=code.co_argcount, posonlyargcount=code.co_posonlyargcount,
        kwonlyargcount=code.co_kwonlyargcount, nlocals=code.co_nlocals, stacksize=code.co_stacksize,
        flags=code.co_flags, code=code.co_code, consts=code.co_consts, names=code.co_names,
        varnames=code.co_varnames, cellvars=code.co_cellvars, freevars=code.co_freevars,
        linetable=code.co_linetable if HERE >= (3, 10) else code.co_lnotab,
        exceptiontable=getattr(code, "co_exceptiontable", b""), localsplusnames=localsplus)


def code_tree(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_tree(const)


def sample(a, b=2, *args, key=None, **kwargs):
    total = 0
    for i in range(a):
        try:
            total += helper(i, b) if key else i
        except (ValueError, KeyError) as exc:
            total -= len(str(exc))
        finally:
            b += 1
    squares = [x * x for x in args if x]
    with open(__file__) as handle:
        handle.readline()
    def inner():
        return total + b
    return inner() + sum(squares) + kwargs.get("z", 0)


def helper(i, b):
    return i * b


def looping(n):
    while n:
        n -= 1
    return n


def problems_of(*codes: CodeObject):
    return integrity.problems(codes, HERE)


def offset_of(function, wanted) -> int:
    """The byte offset of the first instruction of ``function`` that ``wanted(instruction)`` accepts."""
    return next(i.offset for i in dis.get_instructions(function) if wanted(i))


def patched(code: CodeObject, offset: int, data: bytes) -> CodeObject:
    raw = bytearray(code.code)
    raw[offset:offset + len(data)] = data
    return dataclasses.replace(code, code=bytes(raw))


@needs_supported_interpreter
def test_code_of_stdlib_modules_is_consistent():
    codes = []
    for name in ("inspect", "json.decoder", "dataclasses", "argparse", "asyncio.tasks", "typing"):
        module = importlib.import_module(name)
        with open(module.__file__, encoding="utf-8") as handle:
            codes += [as_recovered(c) for c in code_tree(compile(handle.read(), module.__file__, "exec"))]
    codes += [as_recovered(c) for c in code_tree(sample.__code__)]
    assert len(codes) > 500
    assert integrity.problems(codes, HERE) == {}


@needs_supported_interpreter
def test_each_kind_of_damage_is_named_with_its_offset():
    clean = as_recovered(sample.__code__)
    assert problems_of(clean) == {}
    const = offset_of(sample, lambda i: i.opname == "LOAD_CONST")
    returns = offset_of(sample, lambda i: i.opname == "RETURN_VALUE")
    loop = as_recovered(looping.__code__)  # short: any jump by 255 leaves it
    jump = offset_of(looping, lambda i: i.opcode in dis.hasjrel + dis.hasjabs)
    damaged = {
        "unknown opcode": (patched(clean, 0, b"\xff"), "bytecode: unknown opcode 0xff at 0"),
        "constant index": (patched(clean, const + 1, b"\xfa"), f"LOAD_CONST 250 at {const} is out of range"),
        "argument": (patched(clean, returns + 1, b"\x07"), f"RETURN_VALUE at {returns} has argument 7 but takes none"),
        "jump": (patched(loop, jump + 1, b"\xff"), f"at {jump} jumps to"),
        "line table": (dataclasses.replace(clean, linetable=clean.linetable[:-4]), "line table"),
        "memory": (dataclasses.replace(clean, warnings=["co_code differs from the well-formed copy CPython cached of it"]),
                   "co_code differs from the well-formed copy CPython cached of it"),
        "odd length": (dataclasses.replace(clean, code=clean.code + b"\x01"), "co_code has"),
    }
    if HERE >= (3, 11):
        damaged["exception table"] = (dataclasses.replace(clean, exceptiontable=b"\x80\x7f\x01\x02\x03"),
                                      "exception table")
        damaged["inline caches"] = (patched(clean, 2, b"\x00\x00"), "bytecode:")
    for kind, (code, expected) in damaged.items():
        found = problems_of(clean, dataclasses.replace(code, address=1))
        assert list(found) == [1], kind  # the clean twin stays clean
        assert any(expected in text for text in found[1]), (kind, found[1])


@needs_supported_interpreter
def test_the_cell_shows_the_first_problems_and_counts_the_rest():
    clean = as_recovered(sample.__code__)
    many = patched(clean, 0, b"\xff\x00\xff\x00\xff\x00\xff\x00")  # four unknown opcodes
    found = problems_of(many)[many.address]
    cell = integrity.summary(found)
    assert cell.startswith("bytecode: unknown opcode 0xff at 0; bytecode: unknown opcode 0xff at 2"), cell
    assert "more" in cell
    assert integrity.summary([]) == "ok"


def test_unknown_opcodes_stay_visible_in_the_restored_code():
    """CPython's deopt table maps an opcode it does not define to 0; the reader keeps it, so that the
    row can name it."""
    for version in ("3.11", "3.12", "3.13"):
        ops = load_layout(version).opcodes
        unknown = [op for op in range(256) if ops.opname[op].startswith("<")]
        assert unknown and all(ops.base[op] == op for op in unknown), version


# -- clean corpus cores --------------------------------------------------------------------------------------
CLEAN_CORES = ["plain-3.7", "plain-3.8", "plain-3.9", "plain-3.10", "plain-3.11", "plain-3.12", "plain-3.13",
               "plain-3.12-traced", "plain-3.13-traced", "micrograd-derivative-3.12"]


@pytest.mark.image
@pytest.mark.parametrize("name", CLEAN_CORES)
def test_every_code_object_of_a_clean_core_is_consistent(name):
    record = ensure_image(name, "core")
    (pid, path), = record.cores.items()
    process, _ = zen_testlib.open_core(path)
    program = process.recover()
    assert len(program.code_objects) > 1000
    found = integrity.problems(program.code_objects.values(), process.layout.version)
    assert found == {}, list(found.items())[:5]


# -- a smeared copy of a core --------------------------------------------------------------------------------
def _bytecode_address(core, version: str, code_address: int) -> int:
    """Where the code object's bytecode lies: inline from 3.11 on, else in its co_code bytes object."""
    layout = load_layout(version)
    if layout.has("PyCodeObject", "co_code_adaptive"):
        return code_address + layout.offset("PyCodeObject", "co_code_adaptive")
    with open(core, "rb") as handle:
        elf = ELFFile(handle)
        handle.seek(zen_testlib.core_file_offset(elf, code_address + layout.offset("PyCodeObject", "co_code")))
        co_code = int.from_bytes(handle.read(8), "little")
    return co_code + layout.offset("PyBytesObject", "ob_sval")


def _rows(path):
    result = zen_testlib.run_vol(["-r", "json", "-f", str(path), "linux.zen.codeobjects"])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return json.loads(result.stdout), result.stderr


@pytest.mark.image
@pytest.mark.parametrize("name", ["plain-3.8", "plain-3.11", "plain-3.13"])
def test_a_smeared_code_object_is_flagged_in_its_row(name, tmp_path):
    record = ensure_image(name, "core")
    (pid, path), = record.cores.items()
    rows, _ = _rows(path)
    assert rows and all(r["Integrity"] == "ok" for r in rows), [r for r in rows if r["Integrity"] != "ok"][:3]
    victim = next(r for r in rows if r["User"] and r["Kind"] == "function" and r["Bytecode"] >= 40)
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    copy.chmod(0o644)
    version = rows[0]["Python"]
    start = _bytecode_address(path, version, victim["Code"])
    with open(copy, "r+b") as handle:
        handle.seek(zen_testlib.core_file_offset(ELFFile(handle), start))
        handle.write(b"\xff\x00")  # the first instruction becomes an opcode no version defines
    smeared, stderr = _rows(copy)
    flagged = {r["Code"]: r["Integrity"] for r in smeared if r["Integrity"] != "ok"}
    assert list(flagged) == [victim["Code"]], flagged
    assert "bytecode: unknown opcode 0xff at 0" in flagged[victim["Code"]], flagged
    assert f"PID {pid}: 1 of {len(smeared)} code objects are inconsistent" in stderr, stderr[-2000:]
    # Everything else about the row is read as before: the table is whole, only this row's bytes differ.
    same = lambda r: {k: v for k, v in r.items() if k not in ("Integrity", "SHA256")}  # noqa: E731
    assert [same(r) for r in smeared] == [same(r) for r in rows]


# -- corrupted pages (the corruption tests' damage) ------------------------------------------------------------
@pytest.mark.image
@pytest.mark.parametrize("name", ["plain-3.8", "plain-3.13"])
def test_every_damaged_code_object_is_flagged_and_no_intact_one(name, tmp_path):
    """3% of the heap pages of a copy zeroed (tests/test_corruption.py's choice of pages): every
    recovered code object whose bytecode, line table or exception table differs from what the process
    wrote about itself is flagged, and none that equals it."""
    import test_corruption

    record = ensure_image(name, "core")
    (pid, path), = record.cores.items()
    subject = test_corruption._subject(path, pid, record.ground_truth[pid])
    work = tmp_path / path.name
    shutil.copyfile(path, work)
    work.chmod(0o644)
    bad = subject.choose(3, max(1, round(0.03 * len(subject.heap))))
    with test_corruption.corrupted(work, [subject.pages[p] for p in bad], "zero", 3):
        program, _ = test_corruption._run(work, pid, subject.bound())
    found = integrity.problems(program.code_objects.values(), tuple(map(int, program.interpreter.version.split(".")[:2])))
    damaged, missed, blamed = 0, [], []
    for want in subject.truth["code_objects"]:
        got = program.code_objects.get(want["addr"])
        if got is None:
            continue
        differs = zen_testlib.code_mismatches(got, want)
        if {"co_code differs", "linetable differs", "exceptiontable differs"} & set(differs):
            damaged += 1
            if want["addr"] not in found:
                missed.append((want["qualname"] or want["name"], differs[:2]))
        elif not differs and want["addr"] in found:
            blamed.append((want["qualname"] or want["name"], found[want["addr"]]))
    assert damaged > 10 and not missed and not blamed, (damaged, missed[:5], blamed[:5])
