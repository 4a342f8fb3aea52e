"""ProcessCoreLayer / ProcessCoreStacker and volatility3_zen.capture against real processes.

A real CPython 3.11 process (pyenv, shared libpython) reports the addresses and bytes of a few objects
and its own /proc/self/maps, then sleeps; it is captured with gdb's ``gcore`` and with our capture.
Needs root or ptrace access to child processes; gdb and QEMU are installed by the corpus harness when
missing.
"""

import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from volatility3 import framework
from volatility3.framework import automagic, constants, contexts, exceptions, interfaces
from volatility3.framework.automagic import stacker
from volatility3.framework.layers import elf, physical

from volatility3_zen import capture
from volatility3_zen.zenlib.vol.layers import elfcore

import zen_testlib

REPO = Path(__file__).resolve().parent.parent
ISF_DIR = REPO / "tests" / "data" / "isf"
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SKIPPED_MAPPINGS = ("[vvar]", "[vvar_vclock]")  # neither gcore nor our capture can read them
CHUNK = 1 << 20

TARGET_SOURCE = textwrap.dedent(
    '''
    import ctypes, hashlib, json, os, sys, threading, time

    out = sys.argv[1]
    small = b"zen-bytes-" + os.urandom(8).hex().encode()
    big = os.urandom(3 << 20)  # an mmap'ed object of its own, read across 1 MiB chunks
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()  # a thread stack + guard page
    truth = {
        "pid": os.getpid(),
        "comm": open("/proc/self/comm").read().strip(),
        "small": {"id": id(small), "object": ctypes.string_at(id(small), sys.getsizeof(small)).hex(),
                  "value": small.hex()},
        "big": {"id": id(big), "size": len(big), "sha256": hashlib.sha256(big).hexdigest()},
    }
    with open(out + ".json", "w") as f:
        json.dump(truth, f)
    maps_file = os.open(out + ".maps.tmp", os.O_WRONLY | os.O_CREAT)
    maps = open("/proc/self/maps", "rb").read()  # last, so that the layout stays as recorded
    os.write(maps_file, maps)
    os.close(maps_file)
    os.rename(out + ".maps.tmp", out + ".maps")
    time.sleep(3600)
    '''
)


def _python311() -> str:
    candidates = sorted(glob.glob(str(PYENV_VERSIONS / "3.11.*" / "bin" / "python3.11")))
    candidates.append(shutil.which("python3.11") or "")
    for candidate in candidates:
        if candidate and glob.glob(str(Path(candidate).resolve().parent.parent / "lib" / "libpython3.11.so*")):
            return candidate
    pytest.skip("no CPython 3.11 with a shared libpython (pyenv) found")


@pytest.fixture(scope="module", autouse=True)
def _cache_home(tmp_path_factory):
    """Keeps Volatility's caches out of the user's home, here and in the subprocesses (vol, capture:
    importing Volatility creates its cache folder)."""
    home = tmp_path_factory.mktemp("cache")
    (home / "volatility3").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(home))
        patch.setattr(constants, "CACHE_PATH", str(home / "volatility3"))
        yield


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A sleeping CPython 3.11 process: (pid, truth, maps lines)."""
    work = tmp_path_factory.mktemp("target")
    script = work / "target.py"
    script.write_text(TARGET_SOURCE)
    out = work / "truth"
    process = subprocess.Popen([_python311(), str(script), str(out)])
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{out}.maps").exists():
            assert process.poll() is None, "the target process died"
            assert time.monotonic() < deadline, "the target process did not get ready"
            time.sleep(0.05)
        truth = json.loads(Path(f"{out}.json").read_text())
        yield process.pid, truth, capture.parse_maps(Path(f"{out}.maps").read_text())
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def gcore_core(target, tmp_path_factory) -> Path:
    from tools.corpus import system

    system.ensure_for_kind("core")  # gdb at its pinned version, as for corpus cores
    pid = target[0]
    Path(f"/proc/{pid}/coredump_filter").write_text("0x7f")  # keep read-only file pages (libpython .text)
    prefix = tmp_path_factory.mktemp("gcore") / "python"
    subprocess.run(["gcore", "-o", str(prefix), str(pid)], check=True, capture_output=True, timeout=120)
    return Path(f"{prefix}.{pid}")


def _run_capture(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "volatility3_zen.capture", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def captured_core(target, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("capture") / "python.core"
    result = _run_capture(str(target[0]), str(path))
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(params=["gcore", "capture"])
def core(request) -> Tuple[str, Path]:
    fixture = "gcore_core" if request.param == "gcore" else "captured_core"
    return request.param, request.getfixturevalue(fixture)


def _stackers() -> List[type]:
    """Every stacker Volatility would try, ours included, in Volatility's order."""
    automagic.available(contexts.Context())  # imports the automagic modules (LinuxIntelStacker...)
    framework.import_files(sys.modules["volatility3.framework.layers"], True)
    return sorted(
        framework.class_subclasses(interfaces.automagic.StackerLayerInterface), key=lambda stacker: stacker.stack_order
    )


def stack(path: Path) -> Tuple[contexts.Context, interfaces.layers.DataLayerInterface]:
    """Stacks layers on ``path`` as Volatility's automagic does; returns the top layer."""
    context = contexts.Context()
    context.config["FileLayer.location"] = path.resolve().as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    names = stacker.LayerStacker.stack_layer(context, "FileLayer", _stackers())
    return context, context.layers[names[0]]


def read_chunked(layer, address: int, size: int) -> bytes:
    return b"".join(layer.read(a, min(CHUNK, address + size - a)) for a in range(address, address + size, CHUNK))


# -- the layer on real cores -------------------------------------------------------------------------------


def test_stacker_picks_process_core_layer(core, target):
    pid, truth, _maps = target
    _kind, path = core
    _context, layer = stack(path)
    assert isinstance(layer, elfcore.ProcessCoreLayer)
    assert layer.pid == pid
    assert layer.process_name == truth["comm"]
    assert layer.auxv[elfcore.AuxType.AT_PAGESZ] == os.sysconf("SC_PAGE_SIZE")


def test_reads_the_bytes_the_process_reported(core, target):
    _pid, truth, _maps = target
    _context, layer = stack(core[1])
    small = truth["small"]
    assert layer.read(small["id"], len(small["object"]) // 2) == bytes.fromhex(small["object"])
    # CPython 3.11 PyBytesObject: ob_refcnt, ob_type, ob_size, ob_shash, then the payload.
    assert layer.read(small["id"] + 32, len(small["value"]) // 2) == bytes.fromhex(small["value"])
    big = truth["big"]
    assert hashlib.sha256(read_chunked(layer, big["id"] + 32, big["size"])).hexdigest() == big["sha256"]
    runs = list(layer.mapping(big["id"] + 32, big["size"], ignore_errors=True))
    assert sum(run[1] for run in runs) == big["size"]


def test_regions_match_the_process_maps(core, target):
    kind, path = core
    _pid, _truth, maps = target
    _context, layer = stack(path)
    regions = {(region.start, region.end): region for region in layer.regions()}
    expected = [mapping for mapping in maps if mapping.path not in SKIPPED_MAPPINGS]
    assert sorted(regions) == sorted((mapping.start, mapping.end) for mapping in expected)
    for mapping in expected:
        region = regions[mapping.start, mapping.end]
        if mapping.is_file_backed:
            assert (region.path, region.file_offset) == (mapping.path, mapping.offset)
        elif mapping.path in ("[stack]", "[vdso]"):
            assert region.path == mapping.path
        else:
            assert region.path == ""
        # gcore marks mappings without permissions (guard pages, [vsyscall]) readable and dumps them.
        if kind == "capture":
            assert region.perms[:3] == mapping.perms[:3], mapping


def test_nt_file_lists_the_file_mappings(core, target):
    _pid, _truth, maps = target
    _context, layer = stack(core[1])
    paths = {mapping.path for mapping in layer.file_mappings}
    assert paths == {mapping.path for mapping in maps if mapping.is_file_backed}
    assert any("libpython3.11.so" in path for path in paths)


def test_unreadable_mapping_is_absent_but_listed(captured_core, target):
    _pid, _truth, maps = target
    _context, layer = stack(captured_core)
    guard = next(m for m in maps if m.perms.startswith("---") and not m.is_file_backed)
    region = next(r for r in layer.regions() if r.start == guard.start)
    assert (region.end, region.perms) == (guard.end, "---p")
    with pytest.raises(exceptions.InvalidAddressException):
        layer.read(guard.start, 16)
    assert layer.read(guard.start, 16, pad=True) == bytes(16)
    assert not list(layer.mapping(guard.start, guard.end - guard.start, ignore_errors=True))


# -- other ELF files and broken cores ------------------------------------------------------------------------


def test_qemu_physical_dump_is_left_to_elf64(tmp_path):
    from tools.corpus import system

    system.ensure_packages(["qemu-system-x86"])
    dump = tmp_path / "guest.elf"
    subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", "16", "-display", "none", "-nodefaults", "-monitor", "stdio"],
        input=f"dump-guest-memory {dump}\nquit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dump.exists(), "QEMU wrote no dump"
    context = contexts.Context()
    context.config["FileLayer.location"] = dump.as_uri()
    context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
    assert elfcore.ProcessCoreStacker.stack(context, "FileLayer") is None
    _context, layer = stack(dump)
    assert isinstance(layer, elf.Elf64Layer)


def _segment_containing(path: Path, address: int) -> elfcore.CoreSegment:
    context, _layer = stack(path)
    core = elfcore.read_elf_core(context.layers["FileLayer"])
    return next(s for s in core.segments if s.address <= address < s.address + s.present)


def _truncated_copy(path: Path, size: int, tmp_path: Path) -> Path:
    copy = tmp_path / f"truncated-{path.name}"
    with open(path, "rb") as source, open(copy, "wb") as out:
        out.write(source.read(size))
    return copy


def test_truncated_core_stacks_and_reads_what_remains(captured_core, target, tmp_path, caplog):
    _pid, truth, _maps = target
    payload = truth["big"]["id"] + 32
    _context, full = stack(captured_core)
    segment = _segment_containing(captured_core, payload)
    kept = CHUNK + 12345  # cut the big object's payload after 1 MiB and a bit
    cut = _truncated_copy(captured_core, segment.offset + payload - segment.address + kept, tmp_path)
    with caplog.at_level(logging.WARNING, logger=elfcore.__name__):
        _context, layer = stack(cut)
        stack(cut)
    assert isinstance(layer, elfcore.ProcessCoreLayer)
    assert layer.pid == truth["pid"]
    assert len([record for record in caplog.records if "truncated" in record.getMessage()]) == 1
    assert layer.read(payload, kept) == full.read(payload, kept)
    with pytest.raises(exceptions.InvalidAddressException):
        layer.read(payload, kept + 1)
    assert layer.read(payload + kept, 4096, pad=True) == bytes(4096)
    assert len(layer.regions()) == len(full.regions())


def test_truncated_gcore_without_notes_still_stacks(gcore_core, target, tmp_path):
    """gcore writes its notes after the memory: a truncated gcore file has none left."""
    _pid, truth, _maps = target
    small = truth["small"]
    segment = _segment_containing(gcore_core, small["id"])
    cut = _truncated_copy(gcore_core, segment.offset + segment.present, tmp_path)
    _context, layer = stack(cut)
    assert isinstance(layer, elfcore.ProcessCoreLayer)
    assert (layer.pid, layer.process_name, layer.file_mappings) == (0, "", ())
    assert layer.read(small["id"] + 32, len(small["value"]) // 2) == bytes.fromhex(small["value"])


def _notes_segment(path: Path) -> Tuple[int, int]:
    data = path.read_bytes()[: 1 << 20]
    ehdr = elfcore.ELF64_EHDR.unpack(data)
    for i in range(ehdr.e_phnum):
        phdr = elfcore.ELF64_PHDR.unpack(data, ehdr.e_phoff + i * elfcore.ELF64_PHDR.size)
        if phdr.p_type == elfcore.PT_NOTE:
            return phdr.p_offset, phdr.p_filesz
    raise AssertionError("no PT_NOTE")


def _patched_copy(path: Path, patches: Dict[int, bytes], tmp_path: Path) -> Path:
    copy = tmp_path / f"patched-{path.name}"
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as out:
        for offset, data in patches.items():
            out.seek(offset)
            out.write(data)
    return copy


def test_garbage_notes_do_not_raise(captured_core, target, tmp_path):
    _pid, truth, _maps = target
    offset, size = _notes_segment(captured_core)
    garbage = _patched_copy(captured_core, {offset: os.urandom(size)}, tmp_path)
    _context, layer = stack(garbage)
    assert isinstance(layer, elfcore.ProcessCoreLayer)
    layer.regions(), layer.file_mappings, layer.auxv, layer.pid, layer.command_line
    small = truth["small"]
    assert layer.read(small["id"] + 32, len(small["value"]) // 2) == bytes.fromhex(small["value"])


def test_nt_file_with_an_impossible_count(captured_core, target, tmp_path):
    _pid, _truth, maps = target
    offset, size = _notes_segment(captured_core)
    notes = captured_core.read_bytes()[offset : offset + size]
    desc_at = next(
        offset + at
        for at, note in _note_offsets(notes)
        if note.n_type == elfcore.NT_FILE
    )
    broken = _patched_copy(captured_core, {desc_at: (2**64 - 1).to_bytes(8, "little")}, tmp_path)
    _context, layer = stack(broken)
    assert layer.pid == target[0]
    assert layer.file_mappings == ()
    assert {r.path for r in layer.regions()} <= {"", "[stack]", "[vdso]"}


def _note_offsets(notes: bytes):
    """(offset of the descriptor, header) of each note."""
    pos = 0
    while pos < len(notes):
        nhdr = elfcore.ELF64_NHDR.unpack(notes, pos)
        desc_at = pos + elfcore.ELF64_NHDR.size + (-(-nhdr.n_namesz // 4) * 4)
        yield desc_at, nhdr
        pos = desc_at + (-(-nhdr.n_descsz // 4) * 4)


# -- vol itself ------------------------------------------------------------------------------------------------

CHECK_PLUGIN = textwrap.dedent(
    '''
    from volatility3.framework import interfaces, renderers
    from volatility3.framework.configuration import requirements
    from volatility3_zen.zenlib.vol.layers import elfcore  # registers the stacker


    class CoreCheck(interfaces.plugins.PluginInterface):
        _required_framework_version = (2, 0, 0)
        _version = (1, 0, 0)

        @classmethod
        def get_requirements(cls):
            return [requirements.TranslationLayerRequirement(name="primary")]

        def run(self):
            layer = self.context.layers[self.config["primary"]]
            row = (type(layer).__name__, getattr(layer, "pid", -1))
            return renderers.TreeGrid([("Layer", str), ("PID", int)], iter([(0, row)]))
    '''
)


def test_vol_stacks_the_process_core_layer(captured_core, target, tmp_path):
    """``vol -f python.core`` with a Linux ISF present, so that LinuxIntelStacker scans our layer too."""
    plugin_dir = tmp_path / "plugins" / "linux"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "zencorecheck.py").write_text(CHECK_PLUGIN)
    vol = shutil.which("vol") or str(Path(sys.executable).parent / "vol")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [vol, "-q", "-r", "json", "-s", str(ISF_DIR), "-p", str(tmp_path / "plugins"), "-f", str(captured_core)]
    result = subprocess.run(command + ["linux.zencorecheck"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"Layer": "ProcessCoreLayer", "PID": target[0], "__children": []}]
    assert "Traceback" not in result.stderr


# -- capture's command line ----------------------------------------------------------------------------------


def test_capture_refuses_an_existing_output(captured_core, target):
    before = captured_core.stat().st_mtime_ns
    result = _run_capture(str(target[0]), str(captured_core))
    assert result.returncode == 1
    assert result.stderr.strip() == f"capture: error: {captured_core} exists (use --force to replace it)"
    assert captured_core.stat().st_mtime_ns == before


def test_capture_no_such_process(tmp_path):
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    result = _run_capture(str(pid), str(tmp_path / "none.core"))
    assert (result.returncode, result.stderr.strip()) == (1, f"capture: error: no process with PID {pid}")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_capture_permission_denied(target):
    with tempfile.TemporaryDirectory() as nobody_home:  # pytest's folders are private to root
        os.chmod(nobody_home, 0o777)
        env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=nobody_home)
        command = [sys.executable, "-m", "volatility3_zen.capture", str(target[0]), f"{nobody_home}/x.core"]
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"capture: error: permission denied reading /proc/{target[0]}/mem")
    assert len(result.stderr.strip().splitlines()) == 1


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_capture_pause_and_force(captured_core, target, tmp_path):
    pid = target[0]
    copy = tmp_path / "again.core"
    shutil.copyfile(captured_core, copy)
    result = _run_capture("--pause", "--force", str(pid), str(copy))
    assert result.returncode == 0, result.stderr
    _context, layer = stack(copy)
    assert layer.pid == pid
    assert _state(pid) not in "tT", "the process was left stopped"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".capture-")]


def test_capture_leaves_a_stopped_process_stopped(target, tmp_path):
    pid = target[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        while _state(pid) not in "tT":
            time.sleep(0.01)
        result = _run_capture("--pause", str(pid), str(tmp_path / "stopped.core"))
        assert result.returncode == 0, result.stderr
        time.sleep(0.1)
        assert _state(pid) in "tT"
    finally:
        os.kill(pid, signal.SIGCONT)


def test_truncated_gcore_without_notes_has_an_unknown_pid(gcore_core, target, tmp_path):
    """The plugins on a core that lost its notes: the PID is the one --pid names (said once), else
    0 with a warning; never "PID N not found in the image (it holds PID 0)"."""
    pid, truth, _maps = target
    segment = _segment_containing(gcore_core, truth["small"]["id"])
    cut = _truncated_copy(gcore_core, segment.offset + segment.present, tmp_path)
    for args in (["--pid", str(pid)], []):
        result = zen_testlib.run_vol(["-r", "json", "-f", str(cut), "linux.zen.codeobjects"] + args)
        assert "Traceback" not in result.stderr
        assert "not found in the image" not in result.stderr
        assert "the core has no process notes" in result.stderr
        if result.returncode == 0:
            assert {row["PID"] for row in json.loads(result.stdout)} <= {int(args[1]) if args else 0}
        else:
            assert [line for line in result.stderr.splitlines() if line.startswith("ERROR")], result.stderr[-1000:]
