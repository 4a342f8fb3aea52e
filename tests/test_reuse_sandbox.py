"""volatility3_zen.reuse runs a bundle's recovered code in a sandbox (docs/reuse.md, "Sandbox").

The rebuild and the model's execution happen in a bubblewrap child: no network, the filesystem
read-only except the output directory, private empty /tmp and home directories.  The first tests need
no image (the jail's command line, the values that cross, a missing bwrap).  The others write the
resnet-se bundle from its core image and run ``python -m volatility3_zen.reuse`` in the deployment's
own interpreter, a venv under ``$HOME`` (~/.cache/volatility3-zen/...): its prefix and sys.path are
bound back read-only over the hidden home.  Malicious code is injected as *bundle code*: the
derivative's ``SEBlock.forward`` is replaced by a code object that first does something hostile, and
the bundle's code.json and manifest are re-hashed (it passes the integrity check; it is unsigned, so
``--allow-unsigned``).  Each hostile bundle is run sandboxed, where it is stopped and reported, and,
where harmless, with ``--no-sandbox`` as the control that shows the code really does what it says.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from tools import reuse_check
from volatility3_zen.reuse import sandbox
from volatility3_zen.zenlib.bundle import format as bundle_format

import zen_testlib

REPO = Path(__file__).resolve().parent.parent
FORWARD = "SEBlock.forward"  # the derivative's added method: runs on every forward pass
ORIGINAL = "return x * self.excite(self.squeeze(x))"  # what SEBlock.forward does (code/2.txt)


# -- without an image ---------------------------------------------------------------------------------------
def test_jail_hides_home_and_tmp_and_binds_the_environment_back(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    bundle = tmp_path / "b.zenpatch.zip"
    bundle.write_bytes(b"x")
    jail = sandbox.Jail.make(str(out), [str(bundle)])
    argv = jail.argv("bwrap")
    text = " ".join(argv)
    for flag in ("--unshare-all", "--cap-drop ALL", "--die-with-parent", "--new-session", "--ro-bind / /"):
        assert flag in text
    home = os.path.realpath(os.path.expanduser("~"))
    assert ["--tmpfs", home] == argv[argv.index(home) - 1:argv.index(home) + 1]
    assert ["--tmpfs", "/tmp"] == argv[argv.index("/tmp") - 1:argv.index("/tmp") + 1]
    # the output directory and the bundle (both under the hidden /tmp) are bound after the tmpfs
    assert argv.index("--bind") > argv.index("/tmp") and argv[argv.index("--bind") + 1] == str(out.resolve())
    assert ["--ro-bind", str(bundle.resolve()), str(bundle.resolve())] == argv[argv.index(str(bundle.resolve())) - 1:
                                                                             argv.index(str(bundle.resolve())) + 2]
    # the interpreter's prefix is readable wherever it lives; $HOME itself never is
    assert any(sys.base_prefix.startswith(p) or os.path.realpath(sys.base_prefix).startswith(p) for p in jail.readable)
    assert home not in jail.readable and "/" not in jail.readable


def test_a_bundle_in_the_output_directory_stays_read_only(tmp_path, monkeypatch):
    """Even where the output directory lies in a directory on sys.path (the current one)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.zenpatch.zip").write_bytes(b"x")
    argv = sandbox.Jail.make(str(out), [str(out / "b.zenpatch.zip")]).argv("bwrap")
    where = {tuple(argv[i:i + 3]): i for i in range(len(argv) - 2)}
    ro_cwd, rw_out = where[("--ro-bind", str(tmp_path), str(tmp_path))], where[("--bind", str(out), str(out))]
    ro_bundle = where[("--ro-bind", str(out / "b.zenpatch.zip"), str(out / "b.zenpatch.zip"))]
    assert ro_cwd < rw_out < ro_bundle


def test_output_directory_may_not_expose_the_environment(tmp_path):
    with pytest.raises(sandbox.ReuseError, match="must not"):
        sandbox.Jail.make(sys.prefix)
    with pytest.raises(sandbox.ReuseError, match="must not hold"):
        sandbox.Jail.make(os.path.expanduser("~"))


VALUES = """
import json
import torch
from volatility3_zen.reuse import sandbox


def refused(call, error):
    try:
        call()
    except error:
        return
    raise AssertionError(f"not refused: {call}")


blobs = []
value = {"out": (torch.arange(6, dtype=torch.float32).reshape(2, 3), [1, 2.5, None, "s", True]),
         "empty": torch.zeros(0, 4, dtype=torch.int64), "half": torch.ones(3, dtype=torch.bfloat16)}
form = sandbox.encode_value(value, blobs)
back = sandbox.decode_value(json.loads(json.dumps(form)), [bytearray(b) for b in blobs])  # the header is JSON
assert torch.equal(back["out"][0], value["out"][0]) and back["out"][1] == [1, 2.5, None, "s", True]
assert back["empty"].shape == (0, 4) and back["half"].dtype == torch.bfloat16
refused(lambda: sandbox.encode_value(object(), []), TypeError)  # an object of some class cannot leave the child
bad = [{"tensor": 0, "dtype": "float32", "shape": [3]},  # 3 floats in 4 bytes
       {"tensor": 0, "dtype": "load", "shape": [1]},  # not a dtype: nothing beyond torch.dtype is taken
       {"tensor": 5, "dtype": "uint8", "shape": [4]}, {"pickle": "..."}, {"int": "1" * 6000}]
for form in bad:
    refused(lambda: sandbox.decode_value(form, [bytearray(4)]), sandbox.SandboxError)
print("ok")
"""


def test_values_crossing_back_are_plain_data_checked_by_the_parent():
    """What the child sends is decoded form by form: tensors from dtype, shape and bytes (sizes checked),
    numbers, strings and containers; nothing else (in the corpus' torch interpreter)."""
    from tools.corpus import interpreters

    python = os.environ.get("ZEN_TORCH_PYTHON") or str(interpreters.resolve("torch-3.11").executable)
    environ = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([python, "-c", VALUES], capture_output=True, text=True, env=environ, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_missing_bwrap_is_one_line(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxUnavailable) as caught:
        sandbox.find_bwrap()
    assert "install bubblewrap" in str(caught.value) and "--no-sandbox" in str(caught.value)
    assert "\n" not in str(caught.value)


# -- on the resnet-se core image ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_se(tmp_path_factory):
    from tools.corpus import ensure_image

    image = ensure_image("resnet-se-3.11", "core")
    bundle, model, _ = reuse_check.write_bundle(image, tmp_path_factory.mktemp("resnet-se"))
    spec = bundle.parent / "input.json"
    spec.write_text(json.dumps(model["input"]))
    return reuse_check.interpreter(image), bundle, spec, model["output_sha256"]


COMPILE = """
import hashlib, marshal, sys
source = sys.stdin.read()
module = compile(source, "/forged/resnet_se.py", "exec")
code = [c for c in module.co_consts if getattr(c, "co_name", None) == "forward"][0]
if hasattr(code, "co_qualname"):
    code = code.replace(co_qualname="SEBlock.forward")
sys.stdout.write(hashlib.sha256(code.co_code).hexdigest() + "\\n" + marshal.dumps(code).hex())
"""


def _forged(python: str, bundle: Path, target: Path, payload: str) -> Path:
    """The bundle with SEBlock.forward's code object replaced by one that runs ``payload`` first, compiled
    by the deployment's interpreter, and code.json and the manifest re-hashed (as
    tests/test_reuse_hostile.py's ``_rehashed`` does for objects.json): it passes the integrity check."""
    source = "def forward(self, x):\n" + textwrap.indent(textwrap.dedent(payload).strip() + "\n" + ORIGINAL, "    ")
    compiled = subprocess.run([python, "-c", COMPILE], input=source, capture_output=True, text=True, check=True)
    digest, marshalled = compiled.stdout.split("\n")
    members = bundle_format.read_members(bundle)
    code = json.loads(members["code.json"])
    (entry,) = [e for e in code["code_objects"] if e["qualname"] == FORWARD]
    entry["attributes"]["co_code_sha256"] = digest
    members[entry["marshal"]] = bytes.fromhex(marshalled)
    members["code.json"] = json.dumps(code).encode()
    members.pop(getattr(bundle_format, "SIGNATURE", "signature.json"), None)  # it signed the old manifest
    return zen_testlib.write_rehashed_bundle(members, ("code.json", entry["marshal"]), target)


def _run(python: str, bundle: Path, spec: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    """``python -m volatility3_zen.reuse`` as the corpus runs it (tools/reuse_check.py), sandboxed unless
    ``--no-sandbox`` is among ``args``.  ``--allow-unsigned``: the forged bundles are unsigned, and the
    signature is checked outside the sandbox, which is not what these tests are about."""
    environ = dict(os.environ, PYTHONPATH=str(REPO), **reuse_check.TORCH_ENV, **(env or {}))
    environ.pop("PYTHONHOME", None)
    return subprocess.run([python, "-m", "volatility3_zen.reuse", str(bundle), "--setup", str(reuse_check.SETUP),
                           "--input", str(spec), "--allow-unsigned", *args], capture_output=True, text=True, env=environ,
                          cwd=str(bundle.parent), timeout=600)


def _stopped(result: subprocess.CompletedProcess, *texts: str) -> str:
    """The run failed with one ERROR line holding ``texts``, and printed no output."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "Traceback" not in result.stderr, result.stderr
    for text in texts:
        assert text in lines[0], lines[0]
    assert reuse_check.output_sha(result) is None
    return lines[0]


@pytest.mark.image
def test_sandboxed_rebuild_gives_the_same_output_as_in_process(resnet_se, tmp_path):
    """The sandbox changes nothing of the numerics: the same bit-identical output as in-process and as the
    deployed process, from the CLI and from the Python API (a handle whose calls run in the child)."""
    python, bundle, spec, expected = resnet_se
    sandboxed = _run(python, bundle, spec, "--output-dir", str(tmp_path / "out"))
    assert sandboxed.returncode == 0, sandboxed.stderr[-3000:]
    in_process = _run(python, bundle, spec, "--no-sandbox")
    assert in_process.returncode == 0, in_process.stderr[-3000:]
    assert reuse_check.output_sha(sandboxed) == reuse_check.output_sha(in_process) == expected
    assert "warning:" not in sandboxed.stdout
    same = lambda r: [line for line in r.stdout.splitlines() if line.startswith(("done ", "numerics: ", "rebuilt "))]
    assert same(sandboxed) == same(in_process)

    script = textwrap.dedent("""
        import json, sys
        from volatility3_zen import reuse
        from volatility3_zen.reuse.__main__ import tensor_sha256
        spec = json.load(open(sys.argv[2]))
        result = reuse.rebuild(sys.argv[1], setup=sys.argv[3], allow_unsigned=True)
        model = result.model
        print(type(model).__name__, model.class_name, model.parameters)
        print("output", tensor_sha256(model.run_input(spec)))
        print("in-process" if "derived.others.resnet_se" not in sys.modules else "leaked")
        print("weights", len(model.state_dict()))
        model.close()
    """)
    environ = dict(os.environ, PYTHONPATH=str(REPO), **reuse_check.TORCH_ENV)
    api = subprocess.run([python, "-c", script, str(bundle), str(spec), str(reuse_check.SETUP)], capture_output=True,
                         text=True, env=environ, cwd=str(tmp_path), timeout=600)
    assert api.returncode == 0, api.stderr[-3000:]
    assert "SandboxedModel timm.models.resnet.ResNet 11271754" in api.stdout
    assert f"output {expected}" in api.stdout
    assert "in-process" in api.stdout  # the bundle's classes never entered the parent
    assert "weights 154" in api.stdout


@pytest.mark.image
def test_network_access_is_stopped_and_reported(resnet_se, tmp_path):
    """The bundle's code connects to a server listening on this machine's loopback: sandboxed, the
    connection is refused (the child has a loopback of its own) and the ERROR says why; code that
    swallows the error still gets its attempt reported.  Without the sandbox it reaches the server."""
    python, bundle, spec, expected = resnet_se
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    received = []
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                received.append(connection.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    leak = f"""
        import socket
        with socket.create_connection(("127.0.0.1", {port}), timeout=10) as s:
            s.sendall(b"zen-sandbox-leak")
    """
    swallowed = f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=10).sendall(b"zen-sandbox-leak")
        except OSError:
            pass
    """
    try:
        forged = _forged(python, bundle, tmp_path / "net.zenpatch.zip", leak)
        line = _stopped(_run(python, forged, spec), "ConnectionRefusedError",
                        "the sandbox has no network")
        assert received == [], line

        quiet = _run(python, _forged(python, bundle, tmp_path / "quiet.zenpatch.zip", swallowed), spec)
        assert quiet.returncode == 0, quiet.stderr[-2000:]
        assert f"warning: sandbox: connect ('127.0.0.1', {port}): the sandbox has no network" in quiet.stdout
        assert reuse_check.output_sha(quiet) == expected and received == []

        control = _run(python, forged, spec, "--no-sandbox")
        assert control.returncode == 0, control.stderr[-2000:]
        assert received and set(received) == {b"zen-sandbox-leak"}  # once per SE block
    finally:
        done.set()
        thread.join()
        server.close()


WRITER = """
    import os
    with open("written-inside.txt", "w") as f:  # the working directory: the output directory
        f.write("allowed")
    for path in os.environ["ZEN_TEST_PRIVATE"].split(os.pathsep):  # private to the sandbox: discarded
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("escaped")
        except OSError:
            pass
    with open(os.environ["ZEN_TEST_WRITE"], "w") as f:  # on the read-only filesystem: stopped
        f.write("escaped")
"""


@pytest.mark.image
def test_writes_outside_the_output_directory_are_stopped(resnet_se, tmp_path):
    """The bundle's code writes into its working directory (the output directory: allowed), into the
    test's temporary directory and the home directory (private to the sandbox: the files never appear),
    and into /var/tmp (read-only: stopped with one ERROR line).  Without the sandbox the files appear."""
    python, bundle, spec, _ = resnet_se
    forged = _forged(python, bundle, tmp_path / "write.zenpatch.zip", WRITER)
    outside = Path(tempfile.mkdtemp(prefix="zen-sandbox-test-", dir="/var/tmp"))
    in_home = Path(os.path.expanduser("~")) / f".zen-sandbox-test-{os.getpid()}" / "escaped.txt"
    in_tmp = tmp_path / "not-bound" / "escaped.txt"
    out = tmp_path / "out"
    try:
        env = {"ZEN_TEST_PRIVATE": os.pathsep.join([str(in_tmp), str(in_home)]), "ZEN_TEST_WRITE": str(outside / "x")}
        line = _stopped(_run(python, forged, spec, "--output-dir", str(out), env=env),
                        "Read-only file system", f"only {out.resolve()} is writable in the sandbox")
        assert not in_tmp.exists() and not in_home.parent.exists() and not (outside / "x").exists(), line
        assert (out / "written-inside.txt").read_text() == "allowed"

        control_dir = tmp_path / "control"
        control_dir.mkdir()
        env = {"ZEN_TEST_PRIVATE": str(in_tmp), "ZEN_TEST_WRITE": str(outside / "x")}
        control = _run(python, forged, spec, "--no-sandbox", env=env)
        assert control.returncode == 0, control.stderr[-2000:]
        assert in_tmp.read_text() == (outside / "x").read_text() == "escaped"
    finally:
        shutil.rmtree(outside, ignore_errors=True)
        shutil.rmtree(in_home.parent, ignore_errors=True)


@pytest.mark.image
def test_the_home_directory_cannot_be_read(resnet_se, tmp_path):
    """The bundle's code reads a file in $HOME and copies it into its output: sandboxed, $HOME is an
    empty private directory (the interpreter's venv under it is still there, read-only); without the
    sandbox the secret is copied."""
    python, bundle, spec, _ = resnet_se
    secret = Path(os.path.expanduser("~")) / f".zen-sandbox-secret-{os.getpid()}"
    reader = """
        import os
        with open(os.environ["ZEN_TEST_SECRET"]) as f:
            data = f.read()
        with open("stolen.txt", "w") as f:
            f.write(data)
    """
    forged = _forged(python, bundle, tmp_path / "read.zenpatch.zip", reader)
    out = tmp_path / "out"
    try:
        secret.write_text("the investigator's secret")
        env = {"ZEN_TEST_SECRET": str(secret)}
        _stopped(_run(python, forged, spec, "--output-dir", str(out), env=env), "FileNotFoundError",
                 f"{os.path.realpath(os.path.expanduser('~'))} is hidden in the sandbox")
        assert not (out / "stolen.txt").exists()
        control = _run(python, forged, spec, "--no-sandbox", env=env)
        assert control.returncode == 0, control.stderr[-2000:]
        assert (tmp_path / "stolen.txt").read_text() == "the investigator's secret"  # the control's cwd
    finally:
        secret.unlink(missing_ok=True)


@pytest.mark.image
def test_missing_bwrap_is_one_line_error(resnet_se, tmp_path):
    """Without bwrap on PATH: one ERROR line saying to install bubblewrap or pass --no-sandbox."""
    python, bundle, spec, _ = resnet_se
    bare = tmp_path / "bin"
    bare.mkdir()
    result = _run(python, bundle, spec, env={"PATH": str(bare)})
    _stopped(result, "install bubblewrap", "--no-sandbox")
