"""linux.zen.codeobjects against ground truth written by the deployed processes themselves.

Every image is real: process cores of CPython 3.7-3.13 (pyenv builds, Debian's static python3.11, a
stripped python3.11 + libpython, processes with tracing/monitoring active) and LiME images of a QEMU
guest; a CPython 3.6 core for the unsupported-version error.  For each process the
recovered functions, code objects (every co_* field, co_code byte for byte), classes and modules must
equal what the process wrote about itself.
"""

import json
import os
import subprocess

import pytest

from tools.corpus import ensure_image, load_ground_truth
from volatility3_zen.zenlib.vol import session
from volatility3_zen.zenlib.vol import targets as volglue
from volatility3_zen.zenlib.readers.cpython.recover import PythonProcess
from volatility3_zen.zenlib.readers.cpython.runtime import METHODS, detect_version, find_runtime
from volatility3_zen.zenlib.representation.program import encode_const

import zen_testlib

CORE_DEPLOYMENTS = [
    "plain-3.7", "plain-3.8", "plain-3.9", "plain-3.10", "plain-3.11", "plain-3.12", "plain-3.13",
    "plain-3.12-traced", "plain-3.13-traced", "plain-debian-3.11", "plain-stripped-3.11",
]
LIME_DEPLOYMENTS = ["plain-multi", "torch-custom-3.11"]
PYENV = "/root/.pyenv/versions"


def _core(name):
    record = ensure_image(name, "core")
    (pid, path), = record.cores.items()
    return pid, path, load_ground_truth(record.ground_truth[pid])


def _programs(image_path):
    plugin = zen_testlib.construct(image_path)
    return {target.pid: program for target, program in session.programs(plugin.context, plugin.config)}


@pytest.mark.image
@pytest.mark.parametrize("name", CORE_DEPLOYMENTS)
def test_core_matches_ground_truth(name):
    pid, path, truth = _core(name)
    programs = _programs(path)
    assert list(programs) == [pid]
    program = programs[pid]
    assert program.interpreter.version == truth["python_version"]
    problems = zen_testlib.compare_program(program, truth)
    assert not problems, zen_testlib.summarize(problems)
    assert not program.warnings


@pytest.mark.image
@pytest.mark.parametrize("name", LIME_DEPLOYMENTS)
def test_lime_matches_ground_truth(name):
    record = ensure_image(name, "lime")
    programs = _programs(record.image)
    assert set(record.ground_truth) <= set(programs), "a deployed process was not found"
    for pid, truth_path in sorted(record.ground_truth.items()):
        truth = load_ground_truth(truth_path)
        program = programs[pid]
        assert program.interpreter.version == truth["python_version"]
        problems = zen_testlib.compare_program(program, truth)
        assert not problems, f"PID {pid} ({truth['python_version']}):\n" + zen_testlib.summarize(problems)


def _applicable(method, version):
    minor = tuple(int(x) for x in version.split(".")[:2])
    return {
        "dynsym": True, "pointer-scan": True, "section": minor >= (3, 10),
        "debug-cookie": minor >= (3, 13), "main-interp": minor >= (3, 11),
    }[method]


@pytest.mark.image
@pytest.mark.parametrize("name", CORE_DEPLOYMENTS)
def test_every_discovery_method_finds_the_same_runtime(name):
    """Each fallback works on its own, as it must for stripped or static interpreters."""
    _pid, path, truth = _core(name)
    plugin = zen_testlib.construct(path)
    target = next(volglue.core_targets(plugin.context))
    reference = find_runtime(target.memory, ["dynsym"])
    for method in METHODS:
        if not _applicable(method, truth["python_version"]):
            continue
        found = find_runtime(target.memory, [method])
        assert (found.runtime, found.interpreter) == (reference.runtime, reference.interpreter), method
    # The version also comes from the Py_GetVersion banner when Py_Version is not exported (< 3.11).
    assert detect_version(target.memory, reference.image) == truth["python_version"]


@pytest.mark.image
def test_stripped_interpreter_is_stripped_and_found_through_its_section():
    """The stripped deployment really runs the stripped copies: no .symtab or DWARF in either file,
    while .dynsym, the build ID and the .PyRuntime section header survive (so ``section`` applies)."""
    from elftools.elf.elffile import ELFFile

    _pid, path, truth = _core("plain-stripped-3.11")
    plugin = zen_testlib.construct(path)
    target = next(volglue.core_targets(plugin.context))
    found = find_runtime(target.memory, ["section"])
    assert found.method == "section" and "/interpreters/stripped-3.11-" in found.image.path
    assert truth["executable"].startswith(os.path.dirname(os.path.dirname(found.image.path)))
    sections = {}
    for file in (found.image.path, truth["executable"]):
        with open(file, "rb") as fh:
            sections[file] = {section.name for section in ELFFile(fh).iter_sections()}
        assert ".symtab" not in sections[file] and not any(n.startswith(".debug") for n in sections[file]), file
        assert {".dynsym", ".note.gnu.build-id"} <= sections[file], file
    assert ".PyRuntime" in sections[found.image.path]
    assert found.image.lookup("_PyRuntime")[0] == found.runtime


# -- instance attributes (Heap.instance_dict) ----------------------------------------------------------

def _instance_problems(process: PythonProcess, truth) -> list:
    """Each recorded instance: exactly its attribute names, each value decoded as recorded."""
    problems = []
    assert truth["instances"], "the ground truth records no instances"
    for inst in truth["instances"]:
        label = f"{inst['class_qualname']} at 0x{inst['addr']:x}"
        attrs = process.heap.instance_dict(inst["addr"])
        if sorted(attrs) != sorted(inst["attrs"]):
            problems.append(f"{label}: names {sorted(attrs)} != {sorted(inst['attrs'])}")
            continue
        for name, address in attrs.items():
            got = encode_const(process.objects.read_const(address))
            if got != inst["attrs"][name]:
                problems.append(f"{label}.{name}: {got} != {inst['attrs'][name]}")
    return problems


@pytest.mark.image
@pytest.mark.parametrize("name", CORE_DEPLOYMENTS)
def test_instance_dicts_on_cores(name):
    _pid, path, truth = _core(name)
    plugin = zen_testlib.construct(path)
    target = next(volglue.core_targets(plugin.context))
    problems = _instance_problems(PythonProcess(target.memory), truth)
    assert not problems, "\n".join(problems)


@pytest.mark.image
def test_instance_dicts_on_lime():
    record = ensure_image("plain-multi", "lime")
    plugin = zen_testlib.construct(record.image)
    processes = {target.pid: process for target, process in session.python_processes(plugin.context, plugin.config)}
    assert set(record.ground_truth) <= set(processes), "a deployed process was not found"
    for pid, truth_path in sorted(record.ground_truth.items()):
        truth = load_ground_truth(truth_path)
        problems = _instance_problems(processes[pid], truth)
        assert not problems, f"PID {pid} ({truth['python_version']}):\n" + "\n".join(problems)


# -- the plugin as an investigator runs it -----------------------------------------------------------

@pytest.mark.image
def test_cli_json_and_dump_load_in_the_target_interpreter(tmp_path):
    pid, path, truth = _core("plain-3.12")
    result = zen_testlib.run_vol(["-o", str(tmp_path), "-r", "json", "-f", path, "linux.zen.codeobjects",
                                  "--user-only", "--dump", "--module", "^__main__$"])
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(r["PID"] == pid and r["Module"] == "__main__" and r["User"] for r in rows)
    index = json.loads((tmp_path / f"codeobjects-{pid}.json").read_text())
    assert len(index["code_objects"]) == len(rows)
    truth_code = {c["addr"]: c for c in truth["code_objects"]}
    checker = (
        "import marshal, sys, json\n"
        "out = []\n"
        "for p in sys.argv[1:]:\n"
        "    c = marshal.loads(open(p, 'rb').read())\n"
        "    out.append([c.co_code.hex(), c.co_qualname, c.co_firstlineno])\n"
        "print(json.dumps(out))\n"
    )
    files = [str(tmp_path / e["marshal"]) for e in index["code_objects"]]
    loaded = json.loads(subprocess.run([f"{PYENV}/3.12.1/bin/python", "-c", checker] + files,
                                       capture_output=True, text=True, check=True).stdout)
    for entry, (code_hex, qualname, line) in zip(index["code_objects"], loaded):
        want = truth_code[entry["address"]]
        assert (code_hex, qualname, line) == (want["code"], want["qualname"], want["firstlineno"])


@pytest.mark.image
def test_decompile_column_on_38():
    _pid, path, _truth = _core("plain-3.8")
    result = zen_testlib.run_vol(["-r", "json", "-f", path, "linux.zen.codeobjects", "--module", "^__main__$", "--decompile"])
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(r["Source"] for r in rows)


@pytest.mark.image
def test_errors_are_one_line_and_non_zero(tmp_path):
    _pid, path, _truth = _core("plain-3.11")
    cases = {
        "--pid that is not in the image": (["-f", path, "linux.zen.codeobjects", "--pid", "1"], "PID 1 not found"),
        "not a memory image": (["-f", __file__, "linux.zen.codeobjects"], "not a supported memory image"),
    }
    truncated = tmp_path / "truncated.core"
    with open(path, "rb") as src:
        truncated.write_bytes(src.read(4096))
    cases["truncated core"] = (["-f", str(truncated), "linux.zen.codeobjects"], "no CPython interpreter found in this core")
    for label, (args, expected) in cases.items():
        result = zen_testlib.run_vol(args, timeout=300)
        assert result.returncode != 0, label
        assert "Traceback" not in result.stderr, label
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and expected in errors[0], (label, result.stderr)


@pytest.mark.image
def test_unsupported_version_is_one_error_line():
    """A CPython 3.6 core: with or without --pid, one ERROR line naming 3.6 and the supported range."""
    pid, path, truth = _core("plain-3.6")
    assert truth["python_version"].startswith("3.6.")
    for args in ([], ["--pid", str(pid)]):
        result = zen_testlib.run_vol(["-f", path, "linux.zen.codeobjects", *args], timeout=300)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr, args
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1, (args, result.stderr)
        assert "CPython 3.6 is not supported (supported: 3.7-3.13)" in errors[0], (args, errors)
        assert f"PID {pid}" in errors[0], (args, errors)
