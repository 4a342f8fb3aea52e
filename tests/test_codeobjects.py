"""linux.zen.codeobjects against ground truth written by the deployed processes themselves.

Every image is real: process cores of CPython 3.7-3.13 (pyenv builds, Debian's static python3.11,
processes with tracing/monitoring active) and LiME images of a QEMU guest.  For each process the
recovered functions, code objects (every co_* field, co_code byte for byte), classes and modules must
equal what the process wrote about itself.
"""

import json
import marshal
import os
import subprocess

import pytest

from tools.corpus import ensure_image, load_ground_truth
from volatility3_zen.zenlib import session
from volatility3_zen.zenlib import volatility as volglue
from volatility3_zen.zenlib.cpython.recover import PythonProcess
from volatility3_zen.zenlib.cpython.runtime import METHODS, detect_version, find_runtime

import zen_testlib

CORE_DEPLOYMENTS = [
    "plain-3.7", "plain-3.8", "plain-3.9", "plain-3.10", "plain-3.11", "plain-3.12", "plain-3.13",
    "plain-3.12-traced", "plain-3.13-traced", "plain-debian-3.11",
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
