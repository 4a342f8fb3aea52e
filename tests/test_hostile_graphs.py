"""Pathological but legal object graphs, and the small crashes and silences of issue 17 (item 5).

A deployed model may hold anything its authors (or an attacker) put in it.  Every walk over the object
graph is bounded by a seen-set and an overall budget (``readers/cpython/state.py``: ``WalkBudget``;
docs/model.md and docs/patchgen.md, "Budgets"), so such a model costs about what a plain one does,
and what was cut is a warning.  The processes are real: a small torch program, run here with the
corpus harness's torch interpreter and captured with ``python -m volatility3_zen.capture``:

- *control*: ``Net`` (two ``Block``s, a head, a 25-level ``Chain`` of modules, a list, a dict);
- *hostile*: the same model where the list contains itself twice, another list holds itself four
  times, the dict contains itself, the model is registered as its own child and as the child of its
  own child (``self.a.owner = self``), and every level of the chain registers the next one twice
  (2**25 names for 26 modules: ``named_parameters(remove_duplicate=False)`` never ends);
- a process that imported torch and built no model, and a Python process without torch.

Before the budgets (63536a6, 2 shared cores), ``model`` ran past 200 s on the hostile model (control
3.5 s; the list with four self-references alone past 150 s, as did ``attribute``; the shared chain
alone 17 s, ``attribute`` 29 s) and ``patchgen --dump`` on the list that contains itself twice was
killed at 241 s holding 6.5 GB and growing (control 3.0 s).  With them, each plugin runs the hostile
model within a few seconds of the control.  Findings covered here:

- self-referencing models finish in about their control time, with warnings that say what was cut:
  ``test_hostile_model_finishes_in_about_its_control_time`` (model, attribute, patchgen --dump);
- the walks on the captured process, and their budgets run out on purpose:
  ``test_walks_of_the_hostile_process``, ``test_budgets_run_out_with_one_warning``, ``test_walk_budget``;
- a zeroed bucket count in libpython's ``.gnu.hash`` (was a ZeroDivisionError):
  ``test_zeroed_gnu_hash_bucket_count``;
- an unwritable or non-directory ``-o`` with ``--dump`` is a one-line error before the analysis:
  ``test_output_directory_is_checked_before_the_analysis``;
- ``model`` on a process without a model, or without torch, says why at WARNING (or ERROR) level:
  ``test_empty_results_say_why``; a process passed over while scanning says why at WARNING level:
  ``test_process_passed_over_says_why``.
"""

import json
import logging
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from volatility3_zen.zenlib.readers.cpython.state import StateReader, WalkBudget
from volatility3_zen.zenlib.readers.elfimage import DT_GNU_HASH, loaded_images
from volatility3_zen.zenlib.readers.torch import model as torch_model
from volatility3_zen.zenlib.readers.torch.state import TorchValues
from volatility3_zen.zenlib.representation.model import encode_value

import zen_testlib

REPO = Path(__file__).resolve().parent.parent

PROGRAM = r'''
import os, sys, time

mode, ready = sys.argv[1], sys.argv[2]
if mode != "no-torch":
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.act = nn.ReLU()
            self.scale = 2

        def forward(self, x):
            return self.act(self.fc(x)) * self.scale

    class Chain(nn.Module):
        """25 levels of modules; hostile, each level registers the next one twice (a shared submodule)."""

        def __init__(self, levels, shared):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            if levels:
                self.left = Chain(levels - 1, shared)
                if shared:
                    self.right = self.left

        def forward(self, x):
            return x

    class Net(nn.Module):
        def __init__(self, hostile):
            super().__init__()
            self.a = Block()
            self.b = Block()
            self.head = nn.Linear(8, 2)
            self.chain = Chain(24, hostile)
            self.sizes = [8, 8, 2]
            self.knot = {"k": 1}
            self.loop4 = [1]
            if hostile:
                self.sizes.append(self.sizes)
                self.sizes.append(self.sizes)  # a list that contains itself twice
                self.knot["self"] = self.knot  # a dict that contains itself
                self.loop4 += [self.loop4] * 4  # four self-references in one list
                self.me = self  # a module registered as its own child
                self.a.owner = self  # a child that registered its parent

        def forward(self, x):
            return self.head(self.b(self.a(x)))

    if mode in ("control", "hostile"):
        model = Net(mode == "hostile")
        with torch.no_grad():
            model(torch.randn(2, 8))
    else:
        tensor = torch.ones(3)  # torch imported, no module built
with open(ready + ".tmp", "w") as out:
    out.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
time.sleep(3600)
'''
MODES = ("control", "hostile", "no-model", "no-torch")


def torch_python() -> str:
    """$ZEN_TORCH_PYTHON, else the corpus harness's torch venv (created on first use)."""
    python = os.environ.get("ZEN_TORCH_PYTHON")
    if not python:
        from tools.corpus import interpreters

        python = str(interpreters.resolve("torch-3.11").executable)
    return python


open_core = zen_testlib.open_core


@pytest.fixture(scope="module")
def cores(tmp_path_factory):
    """mode -> the core of a process running PROGRAM in that mode (captured with our own tool)."""
    work = tmp_path_factory.mktemp("hostile")
    python = torch_python()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work)}
    processes = {}
    out = {}
    try:
        for mode in MODES:
            processes[mode] = subprocess.Popen([python, "-c", PROGRAM, mode, str(work / f"{mode}.ready")], cwd="/", env=env)
        deadline = time.monotonic() + 300
        for mode, process in processes.items():
            ready = work / f"{mode}.ready"
            while not ready.exists():
                assert process.poll() is None, f"the {mode} program exited with {process.returncode}"
                assert time.monotonic() < deadline, f"the {mode} program did not start"
                time.sleep(0.2)
            core = work / f"{mode}.core"
            captured = subprocess.run([sys.executable, "-m", "volatility3_zen.capture", str(process.pid), str(core)],
                                      cwd=REPO, capture_output=True, text=True, timeout=600)
            if captured.returncode != 0 and ("ermission" in captured.stderr or "ptrace" in captured.stderr):
                pytest.skip(f"cannot capture a process here: {captured.stderr.strip()}")
            assert captured.returncode == 0, captured.stderr
            out[mode] = core
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
    yield out
    for core in out.values():  # 650 MB each: not left for pytest's kept temporary directories
        core.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def library(cores, tmp_path_factory):
    """A base model library holding the control model as ``tinynet``."""
    folder = tmp_path_factory.mktemp("bml")
    added = zen_testlib.run_vol(["-f", str(cores["control"]), "linux.zen.attribute", "--bml", str(folder),
                                 "--bml-add", "tinynet"], timeout=600)
    assert added.returncode == 0, added.stderr[-2000:]
    return folder


def warnings_of(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("WARNING")]


def timed_vol(args, timeout):
    start = time.monotonic()
    try:
        result = zen_testlib.run_vol(args, timeout=int(timeout))
    except subprocess.TimeoutExpired:
        pytest.fail(f"vol {' '.join(args)} ran past {timeout:.0f} s")
    return result, time.monotonic() - start


PLUGIN_ARGS = {
    "model": lambda library: ["linux.zen.model"],
    "attribute": lambda library: ["linux.zen.attribute", "--bml", str(library)],
    "patchgen": lambda library: ["linux.zen.patchgen", "--bml", str(library), "--dump"],
}


@pytest.mark.parametrize("plugin", sorted(PLUGIN_ARGS))
def test_hostile_model_finishes_in_about_its_control_time(cores, library, plugin, tmp_path):
    runs = {}
    for mode in ("control", "hostile"):
        out = tmp_path / mode
        out.mkdir()
        args = ["-r", "json", "-o", str(out), "-f", str(cores[mode])] + PLUGIN_ARGS[plugin](library)
        bound = 600 if mode == "control" else 3 * runs["control"][1] + 30
        result, seconds = timed_vol(args, bound)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        runs[mode] = (result, seconds, out)
    control, hostile = runs["control"], runs["hostile"]
    print(f"{plugin}: control {control[1]:.1f} s, hostile {hostile[1]:.1f} s")
    rows = json.loads(hostile[0].stdout)
    assert rows and all(r.get("RootClass") == "__main__.Net" for r in rows), rows[:3]
    warned = "\n".join(warnings_of(hostile[0].stderr))
    assert not warnings_of(control[0].stderr) or plugin == "patchgen", control[0].stderr  # patchgen: 'nested too deeply'
    if plugin in ("model", "attribute"):
        assert "is its own ancestor and no root holds it (a cycle of _modules): taken as a root" in warned
        assert "module me at" in warned and "not walked: it is its own ancestor" in warned
        assert "shared submodules: the walk stopped at its budget of 20,000" in warned
    if plugin == "attribute":
        assert rows[0]["Base"] == "tinynet" and "attributed on a partial model" in warned
    if plugin == "patchgen":
        for text in ("sizes[3]: a list met again inside itself", "knot.self: a dict met again inside itself",
                     "loop4[1]: a list met again inside itself"):
            assert text in warned
        (bundle,) = hostile[2].glob("*.zenpatch.zip")
        with zipfile.ZipFile(bundle) as archive:
            objects = archive.read("objects.json").decode()
            described = json.loads(archive.read("model.json"))
        assert objects.count('"type": "cycle"') + objects.count('"type":"cycle"') >= 3
        root = next(m for m in described["modules"] if m["path"] == "")
        assert "sizes" not in root["hyperparameters"]  # a list that contains itself is not a simple value
        (control_bundle,) = control[2].glob("*.zenpatch.zip")
        with zipfile.ZipFile(control_bundle) as archive:
            control_root = next(m for m in json.loads(archive.read("model.json"))["modules"] if m["path"] == "")
        assert control_root["hyperparameters"]["sizes"] == encode_value([8, 8, 2])


def test_walks_of_the_hostile_process(cores):
    """In process: the hostile model's tree, its hyper-parameters and its object state."""
    python, _ = open_core(cores["hostile"])
    tp = torch_model.TorchProcess(python)
    (model,) = [m for m in tp.models(read_bytes=False) if m.root_class == "__main__.Net"]
    paths = {m.path for m in model.modules}
    assert {"", "a", "a.fc", "b", "head", "chain"} <= paths and len(paths) == len(model.modules) == 33
    root = next(m for m in model.modules if m.path == "")
    assert set(root.hyperparameters) == {"training"}  # sizes, knot and loop4 contain themselves
    assert root.children == ["a", "b", "head", "chain", "me"]
    assert "module me" in model.unreadable and "module a.owner" in model.unreadable
    # Each chain level's weight under its first name, and other names (the deepest first) up to the budget.
    names = [t.name for t in model.tensors]
    assert "chain.left.left.weight" in names and any(".right." in n for n in names)
    assert torch_model.MAX_REPEATED_VISITS // 4 <= len(names) <= torch_model.MAX_REPEATED_VISITS + 100
    reader = StateReader(python, TorchValues(tp, {}))
    reader.encode(model.root_address, "")
    cycles = [w for w in reader.warnings if "met again inside itself" in w]
    assert sorted(w.split(":")[0] for w in cycles) == ["knot.self", "loop4[1]", "sizes[3]"]
    assert reader.budget.exceeded is None and reader.budget.objects < 20_000


def test_budgets_run_out_with_one_warning(cores, monkeypatch):
    """The budgets, made small, stop the walks with one warning each and a partial result."""
    python, _ = open_core(cores["control"])
    tp = torch_model.TorchProcess(python)
    monkeypatch.setattr(torch_model, "MAX_MODULE_VISITS", 10)
    monkeypatch.setattr(torch_model, "VALUE_MAX_OBJECTS", 3)
    (model,) = [m for m in tp.models(read_bytes=False) if m.root_class == "__main__.Net"]
    warned = [w for w in python.objects.warnings if "the walk stopped at its budget" in w]
    assert len(warned) == 2, warned
    assert "module tree: the walk stopped at its budget of 10 module visits and tensor entries" in warned[0]
    assert "hyper-parameters: the walk stopped at its budget of 3 objects" in warned[1]
    assert len(model.modules) + len(model.tensors) <= 10 and "modules and tensors beyond the walk's budget" in model.unreadable
    reader = StateReader(python, budget=WalkBudget("object state", 50, 1 << 20))
    assert reader.encode(model.root_address, "") == {"t": "ref", "v": "o0"}
    assert '"type": "budget"' in json.dumps(reader.objects)
    assert [w for w in reader.warnings if "the walk stopped at its budget of 50 objects" in w] == [reader.budget.exceeded]
    bytes_reader = StateReader(python, budget=WalkBudget("object state", 10_000, 64))
    bytes_reader.encode(model.root_address, "")
    assert "budget of 64 bytes of values" in bytes_reader.budget.exceeded


def test_walk_budget():
    budget = WalkBudget("a walk", 3, 10, unit="things")
    assert budget.visit("a") and budget.visit("b", 2) and budget.read("c", 10)
    assert not budget.visit("d") and budget.spent
    assert budget.exceeded == ("a walk: the walk stopped at its budget of 3 things (at d); what it had not "
                               "reached is left out (a partial result)")
    assert not budget.visit("e") and not budget.read("f", 0) and "(at d)" in budget.exceeded  # the first place
    by_bytes = WalkBudget("values", 100, 10)
    assert by_bytes.read("x", 10) and not by_bytes.read("y", 1) and "10 bytes of values (at y)" in by_bytes.exceeded


def test_zeroed_gnu_hash_bucket_count(cores, tmp_path):
    """libpython's .gnu.hash with a bucket count of 0 (a ZeroDivisionError in ``elfimage.py`` once):
    no symbol is found through it, the reader goes on, and the plugins give a table or one line."""
    python, memory = open_core(cores["control"])
    (image,) = [i for i in loaded_images(memory) if i.lookup("_PyRuntime")]
    table = image._dyn_ptr(DT_GNU_HASH)
    from elftools.elf.elffile import ELFFile

    with open(cores["control"], "rb") as handle:
        offset = next(s["p_offset"] + table - s["p_vaddr"] for s in ELFFile(handle).iter_segments()
                      if s["p_type"] == "PT_LOAD" and s["p_vaddr"] <= table < s["p_vaddr"] + s["p_filesz"])
    broken = tmp_path / "gnuhash.core"
    subprocess.run(["cp", "--sparse=always", str(cores["control"]), str(broken)], check=True)
    try:
        with open(broken, "r+b") as handle:
            handle.seek(offset)
            assert struct.unpack("<I", handle.read(4))[0] > 0
            handle.seek(offset)
            handle.write(b"\0\0\0\0")
        _, broken_memory = open_core(broken)
        (same,) = [i for i in loaded_images(broken_memory) if i.path == image.path]
        assert same.lookup("_PyRuntime") is None and same.lookup("PyList_Type") is None
        for plugin in ("linux.zen.codeobjects", "linux.zen.model"):
            result = zen_testlib.run_vol(["-f", str(broken), plugin], timeout=600)
            assert "Traceback" not in result.stderr and "ZeroDivisionError" not in result.stderr, result.stderr[-3000:]
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            assert (result.returncode, len(errors)) in ((0, 0), (1, 1)), (plugin, result.stderr[-3000:])
    finally:
        broken.unlink(missing_ok=True)


def _unwritable_dir(tmp_path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path("/sys")  # sysfs: no file can be created there, not even by root


@pytest.mark.parametrize("plugin", ["codeobjects", "model", "attribute", "patchgen"])
def test_output_directory_is_checked_before_the_analysis(cores, tmp_path, plugin):
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("x")
    for out, reason in ((not_a_directory, "not a directory"), (_unwritable_dir(tmp_path), "cannot write there")):
        result = zen_testlib.run_vol(["-o", str(out), "-f", str(cores["control"]), f"linux.zen.{plugin}", "--dump"], timeout=600)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and f"output directory {out}: {reason}" in errors[0], result.stderr
        assert not warnings_of(result.stderr), result.stderr  # nothing analysed
        assert not re.search(r"^\d+\t", result.stdout, re.M), result.stdout


def test_empty_results_say_why(cores):
    no_model = zen_testlib.run_vol(["-f", str(cores["no-model"]), "linux.zen.model"], timeout=600)
    assert no_model.returncode == 0, no_model.stderr
    assert not re.search(r"^\d+\t", no_model.stdout, re.M)
    assert any("is imported but no nn.Module tree was found" in w or "stray root" in w
               for w in warnings_of(no_model.stderr)), no_model.stderr
    no_torch = zen_testlib.run_vol(["-f", str(cores["no-torch"]), "linux.zen.model"], timeout=600)
    errors = [line for line in no_torch.stderr.splitlines() if line.startswith("ERROR")]
    assert no_torch.returncode == 1 and len(errors) == 1 and "torch is not imported" in errors[0], no_torch.stderr
    wrong_root = zen_testlib.run_vol(["-f", str(cores["control"]), "linux.zen.model", "--root", "4096"], timeout=600)
    assert wrong_root.returncode == 0 and any("no readable nn.Module at --root 0x1000" in w
                                              for w in warnings_of(wrong_root.stderr)), wrong_root.stderr
    filtered = zen_testlib.run_vol(["-f", str(cores["no-torch"]), "linux.zen.codeobjects", "--module", "^no_such_module$"],
                                   timeout=600)
    assert filtered.returncode == 0 and any("code objects matches --module ^no_such_module$" in w
                                            for w in warnings_of(filtered.stderr)), filtered.stderr


def test_process_passed_over_says_why(cores, caplog):
    """Scanning a whole image (not a core, which the investigator chose), a Python process without torch
    is passed over with a WARNING that says why; kernel threads and processes without CPython are
    counted for one line at the end."""
    from volatility3_zen.zenlib.vol import session
    from volatility3_zen.zenlib.vol.targets import Target

    python, memory = open_core(cores["no-torch"])
    selection = session._Selection({})
    scanned = Target(memory.pid, "python", memory, "kernel")
    with caplog.at_level(logging.INFO, logger=session.__name__):
        assert session._open_torch(scanned, python, selection) is None
        assert session._open_python(Target(2, "kthreadd", None, "kernel"), selection) is None
    (record,) = [r for r in caplog.records if "torch is not imported" in r.getMessage()]
    assert record.levelno == logging.WARNING and f"PID {memory.pid} (python)" in record.getMessage()
    assert selection.passed_over_line() == "1 kernel threads or exiting processes"
