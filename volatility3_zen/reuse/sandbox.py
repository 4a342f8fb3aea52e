"""Running a bundle's recovered code in a sandbox (docs/reuse.md, "Sandbox").

The code a bundle carries comes from a machine under investigation and may be malicious.  By default
reuse rebuilds the model, and runs it, in a child process that bubblewrap (``bwrap``) puts into new
Linux namespaces: no network (a network namespace of its own, loopback only), a read-only view of the
filesystem, one writable output directory, a private empty ``/tmp``, empty private home directories
(``$HOME``, ``/root``, ``/home``) and ``/run`` (where the host's Unix sockets live: a read-only mount does
not stop a ``connect`` to a socket), its own PID, IPC, UTS and cgroup namespaces, no capabilities
(``--cap-drop ALL``: bwrap started by root keeps them otherwise), a new session (no terminal
injection), and it dies with its parent.  What the child needs to read is bound back read-only over
the hidden directories: the interpreter's prefixes and ``sys.path`` (a venv or pyenv under
``$HOME``), the bundle and the files the command names.

Nothing made from the bundle ever reaches the parent.  The rebuilt model is made of the bundle's
classes: pickling it back would run the bundle's code in the parent when unpickled.  So the child
keeps the model, and the parent gets a ``SandboxedModel`` handle: each call sends the inputs to the
child, runs the model there, and gets back plain data only (tensors as dtype, shape and raw bytes;
numbers, strings, lists, tuples and dicts of them), decoded by the parent under size limits.  The
plan, warnings and numerics of the rebuild come back as strings.  Messages are length-prefixed JSON
headers followed by raw bytes, on a pipe pair of their own (the model's code may print to stdout).
"""

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .bundle import ReuseError

INSTALL_HINT = "install bubblewrap (Debian: apt-get install bubblewrap)"
# The directories hidden behind an empty private tmpfs (besides $HOME): other users' homes, the
# shared temporary directory and /run with the host's sockets.
HIDDEN_DIRS = ("/root", "/home", "/tmp", "/run")
# The namespaces: everything bwrap can unshare (network, PID, IPC, UTS, cgroup and, where the kernel
# lets it, user), and no capabilities left in them.
NAMESPACE_FLAGS = ("--unshare-all", "--cap-drop", "ALL", "--die-with-parent", "--new-session")
MAX_HEADER = 64 << 20  # the JSON part of one message from the child
MAX_REPLY = 4 << 30  # the raw bytes of one reply (tensors); the child is not trusted to be modest
MAX_VALUE_DEPTH = 32
NETWORK_ERRNOS = {errno.ENETUNREACH, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL}


class SandboxUnavailable(ReuseError):
    """bwrap is missing or cannot make namespaces here."""


class SandboxError(ReuseError):
    """The sandboxed child failed or ended; the message is the child's one line."""


# -- the jail ----------------------------------------------------------------------------------------------
def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def hidden_dirs() -> List[str]:
    """The existing directories the sandbox replaces by empty private ones."""
    home = os.path.expanduser("~")
    out = []
    for path in (home,) + HIDDEN_DIRS:
        if path and path != "/" and os.path.isdir(path) and _real(path) not in out:
            out.append(_real(path))
    return sorted(out, key=len)  # /home before /home/user: a later mount lies over an earlier one


def environment_paths() -> List[str]:
    """What the child's interpreter reads: its prefixes (the venv and the Python it was made from),
    the directory of the executable it links to, ``sys.path`` (the current directory for ``''``), our
    package's root, and ``LD_LIBRARY_PATH``."""
    paths = [sys.prefix, sys.exec_prefix, getattr(sys, "base_prefix", sys.prefix),
             getattr(sys, "base_exec_prefix", sys.exec_prefix), os.path.dirname(sys.executable),
             os.path.dirname(_real(sys.executable)),
             os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    paths += [entry or os.getcwd() for entry in sys.path]
    paths += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    return [p for p in paths if p and os.path.exists(p)]


@dataclass
class Jail:
    """The child's view of the filesystem."""

    output_dir: str  # the one writable directory (the child's working directory)
    readable: List[str] = field(default_factory=list)  # bound read-only at their own paths, over the hidden ones
    hidden: List[str] = field(default_factory=hidden_dirs)  # replaced by empty private tmpfs
    skipped: List[str] = field(default_factory=list)  # readable paths not bound: they are or hold a hidden one

    @classmethod
    def make(cls, output_dir: str, files: Iterable[str] = ()) -> "Jail":
        output = _real(output_dir)
        jail = cls(output)
        environment = environment_paths()
        prefixes = {_real(p) for p in (sys.prefix, sys.exec_prefix, getattr(sys, "base_prefix", sys.prefix))}
        for path in jail.hidden + [_real(p) for p in environment if os.path.isdir(p)]:
            if _under(path, output):  # writable, it could change the environment every later run imports
                raise ReuseError(f"the output directory {output} must not hold {path} (a directory the sandbox hides, "
                                 "or one of the interpreter's environment): choose another --output-dir")
        for path in prefixes:
            if _under(output, path):
                raise ReuseError(f"the output directory {output} must not lie inside the interpreter's environment "
                                 f"{path}: choose another --output-dir")
        binds: List[str] = []
        for path in environment + [f for f in files if f and os.path.exists(f)]:
            for candidate in dict.fromkeys((os.path.abspath(path), _real(path))):
                if candidate == "/" or any(_under(hidden, candidate) for hidden in jail.hidden):
                    jail.skipped.append(candidate)  # $HOME itself on sys.path (run from ~): never shown whole
                elif candidate not in binds:
                    binds.append(candidate)
        binds.sort(key=len)  # a path inside another bound one needs no mount of its own ...
        for path in binds:
            if _under(path, output) or not any(_under(path, kept) and os.path.isdir(kept) for kept in jail.readable):
                jail.readable.append(path)  # ... unless it is in the output directory: bound again, read-only
        return jail

    def argv(self, bwrap: str) -> List[str]:
        """The bwrap command line up to the program: mounts in order (a later one lies over an earlier one)."""
        out = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for path in self.hidden:
            out += ["--tmpfs", path]
        inside = [p for p in self.readable if _under(p, self.output_dir)]
        for path in self.readable:
            if path not in inside and any(_under(path, hidden) for hidden in self.hidden):
                out += ["--ro-bind", path, path]
        # After the read-only binds (the output directory may lie in the current directory, on
        # sys.path), and before those inside it: a bundle in the output directory stays read-only.
        out += ["--bind", self.output_dir, self.output_dir]
        for path in inside:
            out += ["--ro-bind", path, path]
        out += list(NAMESPACE_FLAGS)
        out += ["--setenv", "TMPDIR", "/tmp", "--chdir", self.output_dir, "--"]
        return out

    def hint(self, exc: BaseException) -> str:
        """Why an error is the sandbox's doing, in words; "" when it does not look like it."""
        if not isinstance(exc, OSError):
            return ""
        if exc.errno in NETWORK_ERRNOS or type(exc).__name__ in ("gaierror", "herror"):
            return "the sandbox has no network"
        name = exc.filename if isinstance(exc.filename, str) else ""
        if exc.errno == errno.EROFS:
            return f"only {self.output_dir} is writable in the sandbox"
        hidden = [h for h in self.hidden if name and _under(os.path.abspath(name), h)]
        if hidden and exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
            return f"{hidden[0]} is hidden in the sandbox: an empty private directory"
        return ""


_WORKS: Dict[str, str] = {}  # bwrap path -> "" when it works here, else why not (checked once per process)


def find_bwrap() -> str:
    """The bwrap executable, checked to make the namespaces here (SandboxUnavailable otherwise)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"the sandbox needs bubblewrap, and bwrap is not installed: {INSTALL_HINT}, or "
                                 "pass --no-sandbox (sandbox=False) to run the bundle's code in this process")
    if bwrap not in _WORKS:
        try:
            result = subprocess.run([bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                     *NAMESPACE_FLAGS, "true"], capture_output=True, text=True, timeout=60)
            _WORKS[bwrap] = "" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["failed"])[-1]
        except (OSError, subprocess.SubprocessError) as exc:
            _WORKS[bwrap] = str(exc)
    if _WORKS[bwrap]:
        raise SandboxUnavailable(f"the sandbox does not work here ({_WORKS[bwrap]}; unprivileged user namespaces "
                                 "may be turned off): pass --no-sandbox (sandbox=False) to run the bundle's code in "
                                 "this process")
    return bwrap


# -- messages ----------------------------------------------------------------------------------------------
_LENGTH = struct.Struct("<Q")


def _send(stream, header: Dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
    head = json.dumps(dict(header, blobs=[len(b) for b in blobs])).encode()
    stream.write(_LENGTH.pack(len(head)) + head)
    for blob in blobs:
        stream.write(blob)
    stream.flush()


def _read_exactly(stream, size: int) -> bytearray:
    out = bytearray(size)
    view, done = memoryview(out), 0
    while done < size:
        got = stream.readinto(view[done:])
        if not got:
            raise EOFError
        done += got
    return out


def _receive(stream, max_blobs: int = MAX_REPLY) -> Tuple[Dict[str, Any], List[bytearray]]:
    """One message, its sizes checked before anything is allocated (the sender may be hostile)."""
    length = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))[0]
    if length > MAX_HEADER:
        raise SandboxError(f"the sandbox sent a {length}-byte message header (at most {MAX_HEADER})")
    try:
        header = json.loads(_read_exactly(stream, length))
    except (ValueError, RecursionError) as exc:
        raise SandboxError(f"the sandbox sent a message that is not JSON ({exc})") from None
    sizes = header.get("blobs") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes) or sum(sizes) > max_blobs:
        raise SandboxError(f"the sandbox sent a malformed message or more than {max_blobs} bytes")
    return header, [_read_exactly(stream, size) for size in sizes]


# -- values: what may cross ----------------------------------------------------------------------------------
def encode_value(value: Any, blobs: List[bytes], depth: int = 0) -> Any:
    """A JSON form of tensors, numbers, strings, None and lists, tuples and dicts of them; each tensor's
    bytes are appended to ``blobs``.  Anything else cannot leave the process (TypeError)."""
    if depth > MAX_VALUE_DEPTH:
        raise TypeError(f"a value nested deeper than {MAX_VALUE_DEPTH}")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return {"int": str(int(value))} if isinstance(value, int) else {"float": float(value).hex()}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [encode_value(v, blobs, depth + 1) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a dict with keys other than strings")
        return {"dict": [[k, encode_value(v, blobs, depth + 1)] for k, v in value.items()]}
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized:
            raise TypeError(f"a {value.layout} tensor")
        tensor = value.detach().cpu().contiguous()
        blobs.append(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return {"tensor": len(blobs) - 1, "dtype": str(tensor.dtype).replace("torch.", ""), "shape": list(tensor.shape)}
    if torch is not None and isinstance(value, torch.Size):
        return {"tuple": [encode_value(int(v), blobs, depth + 1) for v in value]}
    raise TypeError(f"a {type(value).__module__}.{type(value).__qualname__} object")


def decode_value(form: Any, blobs: Sequence[bytearray], depth: int = 0) -> Any:
    """The value ``encode_value`` described, checked form by form (the child is not trusted)."""
    if depth > MAX_VALUE_DEPTH:
        raise SandboxError(f"the sandbox sent a value nested deeper than {MAX_VALUE_DEPTH}")
    if form is None or isinstance(form, (bool, str)):
        return form
    if isinstance(form, dict) and len(form) == 1:
        ((kind, inner),) = form.items()
        if kind == "int" and isinstance(inner, str) and len(inner) < 5000:
            return int(inner)
        if kind == "float" and isinstance(inner, str):
            return float.fromhex(inner)
        if kind in ("list", "tuple") and isinstance(inner, list):
            items = [decode_value(v, blobs, depth + 1) for v in inner]
            return items if kind == "list" else tuple(items)
        if kind == "dict" and isinstance(inner, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                               for p in inner):
            return {k: decode_value(v, blobs, depth + 1) for k, v in inner}
    if isinstance(form, dict) and set(form) == {"tensor", "dtype", "shape"}:
        return _decode_tensor(form, blobs)
    raise SandboxError(f"the sandbox sent a value reuse does not read ({json.dumps(form)[:80]})")


def _decode_tensor(form: Dict[str, Any], blobs: Sequence[bytearray]):
    import torch

    index, name, shape = form["tensor"], form["dtype"], form["shape"]
    dtype = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(dtype, torch.dtype) or not isinstance(index, int) or not 0 <= index < len(blobs) or \
            not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise SandboxError(f"the sandbox sent a malformed tensor ({json.dumps(form)[:80]})")
    count = 1
    for n in shape:
        count *= n
    raw = blobs[index]
    if count * torch.empty((), dtype=dtype).element_size() != len(raw):
        raise SandboxError(f"the sandbox sent a {name} tensor of shape {shape} in {len(raw)} bytes")
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)


# -- the parent's side -----------------------------------------------------------------------------------------
_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
         "from volatility3_zen.reuse.sandbox import serve; serve(int(sys.argv[2]), int(sys.argv[3]))")


def _close_process(process: subprocess.Popen, to_child, from_child, owned_dir: Optional[str]) -> None:
    for stream in (to_child, from_child):
        try:
            stream.close()
        except OSError:
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if owned_dir:
        shutil.rmtree(owned_dir, ignore_errors=True)


class Sandbox:
    """One sandboxed child: started by ``start``, asked by ``request``, ended by ``close``."""

    def __init__(self, files: Iterable[str] = (), output_dir: Optional[str] = None):
        bwrap = find_bwrap()
        owned = None
        if output_dir is None:
            owned = output_dir = tempfile.mkdtemp(prefix="zen-reuse-out-")
        else:
            os.makedirs(output_dir, exist_ok=True)
        try:
            self.jail = Jail.make(output_dir, files)
        except ReuseError:
            if owned:
                shutil.rmtree(owned, ignore_errors=True)
            raise
        self.output_dir = self.jail.output_dir
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        child_path = [entry or os.getcwd() for entry in sys.path]
        command = self.jail.argv(bwrap) + [sys.executable, "-c", _BOOT, json.dumps(child_path),
                                           str(to_child_r), str(from_child_w)]
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            self.process = subprocess.Popen(command, pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL)
        except OSError as exc:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            if owned:
                shutil.rmtree(owned, ignore_errors=True)
            raise SandboxUnavailable(f"the sandbox could not start: {exc}") from None
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._to = os.fdopen(to_child_w, "wb")
        self._from = os.fdopen(from_child_r, "rb")
        self._finalizer = weakref.finalize(self, _close_process, self.process, self._to, self._from, owned)
        self.reports: List[str] = []  # what the code in the sandbox tried and the sandbox stopped

    def request(self, header: Dict[str, Any], blobs: Sequence[bytes] = ()) -> Tuple[Dict[str, Any], List[bytearray]]:
        if not self._finalizer.alive:
            raise SandboxError("the sandboxed model is closed")
        try:
            _send(self._to, header, blobs)
            reply, data = _receive(self._from)
        except (EOFError, BrokenPipeError, OSError):
            self.close()
            raise SandboxError(f"the sandboxed process ended (exit status {self.process.returncode}) before it "
                               "answered") from None
        reports = reply.get("reports")
        if isinstance(reports, list):
            self.reports += [str(r)[:300] for r in reports[:20]]
        if "error" in reply:
            raise SandboxError(str(reply["error"]))
        return reply, data

    def close(self) -> None:
        if self._finalizer.alive:
            try:
                _send(self._to, {"op": "close"})
            except OSError:
                pass
            self._finalizer()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SandboxedModel:
    """The rebuilt model, which stays in its sandboxed child: calls run there and return plain data.

    ``model(x)`` runs a forward pass without gradients and returns its tensors (numbers, strings and
    lists, tuples, dicts of them); ``run_input(spec)``, ``state_dict()`` and ``fgsm(spec, eps)`` do
    what the CLI does.  Hooks and gradients on the model itself need the model in this process
    (``sandbox=False``: only on a machine where running the bundle's code is acceptable)."""

    def __init__(self, sandbox: Sandbox, summary: Dict[str, Any]):
        self.sandbox = sandbox
        self.class_name = str(summary.get("class", "?"))
        self.parameters = int(summary.get("parameters", 0))
        self.output_dir = sandbox.output_dir

    @property
    def reports(self) -> List[str]:
        """What the code in the sandbox tried that the sandbox stopped (connections, ...)."""
        return list(self.sandbox.reports)

    def _ask(self, header: Dict[str, Any], blobs: Sequence[bytes] = ()) -> Any:
        reply, data = self.sandbox.request(header, blobs)
        return decode_value(reply.get("value"), data)

    def __call__(self, *args, **kwargs) -> Any:
        blobs: List[bytes] = []
        form = encode_value({"args": list(args), "kwargs": kwargs}, blobs)
        return self._ask({"op": "call", "value": form}, blobs)

    def run_input(self, spec: Dict[str, Any]):
        """The CLI's ``--input``: one forward pass on the spec's input."""
        return self._ask({"op": "run_input", "spec": spec})

    def state_dict(self) -> Dict[str, Any]:
        return self._ask({"op": "state_dict"})

    def fgsm(self, spec: Dict[str, Any], epsilon: float = 0.03, samples: int = 64, seed: int = 0):
        from .whitebox import FgsmResult

        fields = self._ask({"op": "fgsm", "spec": spec, "epsilon": float(epsilon), "samples": int(samples),
                            "seed": int(seed)})
        try:
            return FgsmResult(**{k: (float if k in ("epsilon", "input_grad_norm") else int)(v) for k, v in fields.items()})
        except (TypeError, ValueError, AttributeError) as exc:
            raise SandboxError(f"the sandbox sent a malformed FGSM result ({exc})") from None

    def close(self) -> None:
        self.sandbox.close()

    def __enter__(self) -> "SandboxedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SandboxedModel {self.class_name}: {self.parameters} parameters, in a sandboxed process>"


def rebuild(path: str, expect_sha256: Optional[str], patch: bool, numerics: bool, setup: Optional[str] = None,
            output_dir: Optional[str] = None, open_kwargs: Optional[Dict[str, Any]] = None):
    """``reuse.rebuild`` in a sandboxed child: the bundle is verified here first, and the child is held
    to the manifest verified here (its sha256)."""
    from . import Rebuilt, open_bundle
    from .inject import Action, Plan

    bundle = open_bundle(path, expect_sha256, **(open_kwargs or {}))
    files = [os.path.abspath(path)] + ([os.path.abspath(setup)] if setup else [])
    box = Sandbox(files, output_dir)
    try:
        reply, _ = box.request({"op": "rebuild", "bundle": os.path.abspath(path), "sha256": bundle.sha256,
                                "patch": bool(patch), "numerics": bool(numerics),
                                "setup": os.path.abspath(setup) if setup else None})
        strings = {key: [str(s) for s in reply.get(key, [])] for key in ("notes", "warnings", "numerics",
                                                                            "numerics_warnings")}
        actions = [Action(str(a.get("kind")), str(a.get("target")), str(a.get("detail", "")))
                   for a in reply.get("actions", []) if isinstance(a, dict)]
        model = SandboxedModel(box, reply.get("model") if isinstance(reply.get("model"), dict) else {})
    except BaseException:
        box.close()
        raise
    return Rebuilt(model, Plan(actions, strings["notes"]), strings["warnings"], strings["numerics"],
                   strings["numerics_warnings"])


PATH_OPTIONS = ("bundle", "input", "expect_output", "setup")  # the CLI's options that name files to read


def run_cli(args, bundle) -> int:
    """The CLI's rebuild (``__main__.rebuild_and_report``) in a sandboxed child, on the bundle verified
    here: its output goes straight to this stdout; an error comes back as the one line to print."""
    request = {key: value for key, value in vars(args).items() if value is None or isinstance(value, (bool, int, float, str))
               or (isinstance(value, list) and all(isinstance(v, str) for v in value))}
    for key in PATH_OPTIONS:
        if request.get(key):
            request[key] = os.path.abspath(request[key])
    # Held to the manifest verified here, signature included (the trusted keys may be under the hidden $HOME).
    request.update(expect_sha256=bundle.sha256, allow_unsigned=True, trusted_key=[], no_sandbox=True)
    files = [request[key] for key in PATH_OPTIONS if request.get(key)]
    with Sandbox(files, getattr(args, "output_dir", None)) as box:
        reply, _ = box.request({"op": "cli", "args": request})
    status = reply.get("status")
    return status if isinstance(status, int) else 1


# -- the child's side --------------------------------------------------------------------------------------------
class _Child:
    """The sandboxed process: rebuilds on request, keeps the model, answers with plain data."""

    NETWORK_EVENTS = ("socket.connect", "socket.sendto", "socket.sendmsg")

    def __init__(self):
        self.model = None
        self.reports: List[str] = []
        self.jail = Jail(os.getcwd(), hidden=hidden_dirs())
        if hasattr(sys, "addaudithook"):  # CPython 3.8+; a report of what was tried, the namespaces stop it
            sys.addaudithook(self._audit)

    def _audit(self, event: str, args: Tuple[Any, ...]) -> None:
        if event in self.NETWORK_EVENTS and len(self.reports) < 100:
            self.reports.append(f"{event.replace('socket.', '')} {args[1]!r}: the sandbox has no network")

    def taken_reports(self) -> List[str]:
        out, self.reports = list(dict.fromkeys(self.reports)), []
        return out

    def error_text(self, exc: BaseException) -> str:
        from .__main__ import error_text

        hint = self.jail.hint(exc) or (f"the sandbox stopped: {self.reports[0]}" if self.reports else "")
        return f"{error_text(exc)} ({hint})" if hint else error_text(exc)

    # -- operations -----------------------------------------------------------------------------------------
    def op_cli(self, request):
        import argparse

        from . import open_bundle
        from .__main__ import rebuild_and_report
        from .numerics import plan_numerics

        args = argparse.Namespace(**request["args"])
        numerics = None if args.no_numerics else plan_numerics(
            open_bundle(args.bundle, args.expect_sha256, allow_unsigned=True).context())
        status = rebuild_and_report(args, numerics)
        for line in self.taken_reports():
            print(f"warning: sandbox: {line}")
        return {"status": status}, []

    def op_rebuild(self, request):
        import runpy

        from . import open_bundle, rebuild
        from .numerics import apply_environment, plan_numerics

        done, warnings = [], []
        if request["numerics"]:  # before the setup file, as the CLI does it
            done, warnings = apply_environment(plan_numerics(
                open_bundle(request["bundle"], request["sha256"], allow_unsigned=True).context()))
        if request.get("setup"):
            runpy.run_path(request["setup"], run_name="__zen_setup__")
        # The parent checked the signature of this manifest (request["sha256"]); the keys may be hidden here.
        result = rebuild(request["bundle"], request["sha256"], patch=request["patch"], numerics=request["numerics"],
                         allow_unsigned=True, sandbox=False)
        self.model = model = result.model
        parameters = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
        return {"actions": [asdict(a) for a in result.plan.actions], "notes": result.plan.notes,
                "warnings": warnings + result.warnings, "numerics": done + result.numerics,
                "numerics_warnings": warnings + result.numerics_warnings,
                "model": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                          "parameters": parameters}}, []

    def _value(self, value):
        blobs: List[bytes] = []
        return {"value": encode_value(value, blobs)}, blobs

    def op_call(self, request, data):
        import torch

        call = decode_value(request["value"], data)
        with torch.no_grad():
            return self._value(self.model(*call["args"], **call["kwargs"]))

    def op_run_input(self, request):
        from .__main__ import run_input

        return self._value(run_input(self.model, request["spec"]))

    def op_state_dict(self, request):
        return self._value(dict(self.model.state_dict()))

    def op_fgsm(self, request):
        from .whitebox import fgsm_demo

        result = fgsm_demo(self.model, request["spec"], request["epsilon"], request["samples"], request["seed"])
        return self._value({k: v for k, v in asdict(result).items()})

    def handle(self, request, data):
        op = request.get("op")
        if op in ("call", "run_input", "state_dict", "fgsm") and self.model is None:
            raise ReuseError("no model was rebuilt in the sandbox")
        if op == "call":
            return self.op_call(request, data)
        method = getattr(self, f"op_{op}", None) if op in ("cli", "rebuild", "run_input", "state_dict", "fgsm") else None
        if method is None:
            raise ReuseError(f"unknown sandbox request {op!r}")
        return method(request)


def serve(fd_in: int, fd_out: int) -> None:
    """The child's loop: one reply per request, until "close" or the parent goes; then it ends at once
    (the bundle's atexit handlers and threads do not keep it)."""
    child = _Child()
    to_parent = os.fdopen(fd_out, "wb")
    from_parent = os.fdopen(fd_in, "rb")
    while True:
        try:
            request, data = _receive(from_parent, max_blobs=1 << 62)
        except EOFError:
            request, data = {"op": "close"}, []
        if request.get("op") == "close":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        try:
            reply, blobs = child.handle(request, data)
        except BaseException as exc:  # noqa: BLE001 -- the bundle's code: report it as one line, keep serving
            if isinstance(exc, KeyboardInterrupt):
                raise
            reply, blobs = {"error": child.error_text(exc)}, []
        reply["reports"] = child.taken_reports()
        sys.stdout.flush()
        sys.stderr.flush()
        _send(to_parent, reply, blobs)
