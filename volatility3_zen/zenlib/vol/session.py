"""What every ``linux.zen.*`` plugin shares: requirements, the choice of processes, the error policy.

Plain functions (not a plugin base class: Volatility lists every PluginInterface subclass it sees).

Error policy: a process the user named with ``--pid`` that cannot be analysed is a fatal, one-line
error (non-zero exit); when scanning every process, such a process is a warning and the scan goes on.
An image with neither a Linux kernel nor a process core is fatal, never a silent empty table.
"""

import hashlib
import logging
import re
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from volatility3.framework import interfaces
from volatility3.framework.configuration import requirements
from volatility3.plugins.linux import pslist

from . import automagic as _register_automagic  # noqa: F401 - Volatility finds automagics by subclass
from . import targets as volglue
from ..readers.cpython.objects import DECODE_ERRORS
from ..readers.cpython.recover import PythonProcess
from ..readers.cpython.runtime import hosts_python
from ..errors import CorruptObjectError, NoPythonError, ZenError
from ..representation.program import CodeObject, Program

vollog = logging.getLogger(__name__)
MAX_REPORTED_WARNINGS = 20


def common_requirements() -> List[interfaces.configuration.RequirementInterface]:
    return [
        requirements.TranslationLayerRequirement(name="primary", description="Memory layer (LiME image or process core)"),
        requirements.ModuleRequirement(
            name="kernel", description="Linux kernel (absent for a single-process core)", architectures=["Intel64"], optional=True
        ),
        requirements.VersionRequirement(name="pslist", component=pslist.PsList, version=(4, 0, 0)),
        requirements.ListRequirement(name="pid", element_type=int, description="Process IDs to examine (default: every process hosting CPython)", optional=True),
    ]


def model_requirements() -> List[interfaces.configuration.RequirementInterface]:
    """What the plugins that compare models with the base model library add: the roots and the library."""
    return common_requirements() + [
        requirements.ListRequirement(name="root", element_type=int, optional=True,
                                     description="Only the models rooted at these addresses (nn.Modules, or any object of a plain-Python model; with --pid)"),
        requirements.StringRequirement(name="bml", optional=True, description="Base model library directory (default: the bundled bml/)"),
    ]


def score_cell(value: Optional[float]):
    """A similarity for a TreeGrid cell: N/A where it does not apply (no MR on one side)."""
    from volatility3.framework import renderers

    return renderers.NotApplicableValue() if value is None else round(float(value), 6)


def fail(message: str) -> None:
    """A fatal, one-line error for the investigator and a non-zero exit (no traceback)."""
    vollog.error(message)
    sys.stderr.flush()
    raise SystemExit(1)


def python_processes(context, config) -> Iterator[Tuple[volglue.Target, PythonProcess]]:
    """Opened CPython processes of the image, following the error policy above."""
    pids = config.get("pid") or None
    kernel = config.get("kernel")
    found_pids = set()
    any_target = False
    opened = 0
    for target in volglue.targets(context, kernel, pids):
        any_target = True
        found_pids.add(target.pid)
        if pids and target.pid not in pids:
            continue
        # A process core holds exactly the process the investigator chose: treat it as named.
        named = bool(pids) or target.source == "core"
        if target.memory is None:
            if named:
                fail(f"PID {target.pid} ({target.name}) has no user address space (kernel thread or exiting process)")
            continue
        try:
            if not hosts_python(target.memory):
                if target.source == "core":
                    fail(f"PID {target.pid} ({target.name}): no CPython interpreter found in this core"
                         " (not a Python process, a truncated core, or captured without file-backed pages)")
                if named:
                    fail(f"PID {target.pid} ({target.name}) does not host a CPython interpreter")
                continue
            process = PythonProcess(target.memory)
        except ZenError as exc:
            if named:
                fail(f"PID {target.pid} ({target.name}): {exc}")
            vollog.warning("PID %d (%s): %s", target.pid, target.name, exc)
            continue
        opened += 1
        yield target, process
    if not any_target:
        if kernel and kernel in context.modules:
            fail("no process matched" + (f" PID(s) {', '.join(map(str, pids))}" if pids else ""))
        fail("no Linux kernel and no process core found: the file is not a supported memory image, is truncated,"
             " or its kernel symbols (ISF) are missing or do not match (pass the ISF folder with -s)")
    for pid in pids or []:
        if pid not in found_pids:
            fail(f"PID {pid} not found in the image (it holds PID {', '.join(map(str, sorted(found_pids)))})"
                 if len(found_pids) <= 5 else f"PID {pid} not found in the image")
    if opened == 0:
        vollog.warning("no CPython process found in the image")


def programs(context, config, progress: Optional[Callable] = None) -> Iterator[Tuple[volglue.Target, Program]]:
    """The recovered ``Program`` of every selected CPython process, with warnings reported."""
    for target, process in python_processes(context, config):
        prefix = f"PID {target.pid}"
        report = (lambda pct, text: progress(pct, f"{prefix}: {text}")) if progress else None
        program = process.recover(report)
        report_warnings(target, program.warnings)
        volglue.clear_volatility_caches()
        yield target, program


def torch_processes(context, config) -> Iterator[Tuple[volglue.Target, "TorchProcess"]]:  # noqa: F821 - imported lazily
    """CPython processes that imported torch (others are skipped, or fatal when named with --pid)."""
    from ..readers.torch.model import TorchProcess

    pids = config.get("pid") or None
    found = 0
    for target, process in python_processes(context, config):
        try:
            torch_process = TorchProcess(process)
        except ZenError as exc:
            if pids or target.source == "core":
                fail(f"PID {target.pid} ({target.name}): {exc}")
            # A Python process without torch is routine; an unreadable or unsupported torch is not.
            level = logging.INFO if isinstance(exc, NoPythonError) else logging.WARNING
            vollog.log(level, "PID %d (%s): %s", target.pid, target.name, exc)
            continue
        found += 1
        yield target, torch_process
        report_warnings(target, process.objects.warnings)
        volglue.clear_volatility_caches()
    if found == 0:
        vollog.warning("no process with torch imported found in the image")


def report_warnings(target, warnings: List[str]) -> None:
    for text in warnings[:MAX_REPORTED_WARNINGS]:
        vollog.warning("PID %d: %s", target.pid, text)
    if len(warnings) > MAX_REPORTED_WARNINGS:
        vollog.warning("PID %d: %d more warnings (use -vv to see them)", target.pid, len(warnings) - MAX_REPORTED_WARNINGS)
        for text in warnings[MAX_REPORTED_WARNINGS:]:
            vollog.info("PID %d: %s", target.pid, text)


def _version_tuple(program: Program) -> Tuple[int, int]:
    major, minor = program.interpreter.version.split(".")[:2]
    return int(major), int(minor)


def _resolver(program: Program) -> Callable[[int], CodeObject]:
    """Recovered code objects by address, for nested code; one that smeared memory made unreadable
    is a CorruptObjectError (not a bare KeyError)."""

    def resolve(address: int) -> CodeObject:
        code = program.code_objects.get(address)
        if code is None:
            raise CorruptObjectError(f"code object at 0x{address:x} (nested) was not recovered")
        return code

    return resolve


def source_text(program: Program, code: CodeObject) -> str:
    """Decompiled source where a decompiler supports the version, else disassembly; for a code object
    that neither can render (its nested code lost, or garbled by smeared memory), a comment saying why."""
    from ..readers.cpython import disassemble

    version = _version_tuple(program)
    resolve = _resolver(program)
    try:
        text = disassemble.decompile(code, resolve, version)
        return text if text is not None else disassemble.disassemble(code, resolve, version)
    except Exception as exc:  # noqa: BLE001 -- xdis asserts on garbled bytecode, decompilers raise anything
        return f"# no source or disassembly of code object 0x{code.address:x}: {_describe(exc)}"


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ZenError) else f"{type(exc).__name__}: {exc}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def dump_code_objects(program: Program, entries, open_file, sources: Optional[Dict[int, str]] = None) -> Dict:
    """One marshal file per code object (loadable by ``marshal.loads`` of the image's Python version)
    plus source / disassembly text, written through the plugin's ``open``; returns the JSON index.
    ``sources`` (code address -> text) is filled so that a caller showing the text too does not
    decompile twice (decompiling is the slow part)."""
    sources = {} if sources is None else sources
    from ..readers.cpython import marshal_writer

    version = _version_tuple(program)
    resolve = _resolver(program)
    index = {"pid": program.pid, "process": program.process, "python": program.interpreter.version, "code_objects": []}
    for e in entries:
        stem = f"pid{program.pid}.{_UNSAFE.sub('_', (e.module or 'unknown') + '.' + e.qualname)[:120]}.{e.code.address:x}"
        try:
            data = marshal_writer.dumps_code(e.code, resolve, version)
        except DECODE_ERRORS as exc:
            vollog.warning("PID %d: code object at 0x%x not dumped: %s", program.pid, e.code.address, _describe(exc))
            continue
        with open_file(stem + ".marshal") as fh:
            fh.write(data)
        if e.code.address not in sources:
            sources[e.code.address] = source_text(program, e.code)
        source = sources[e.code.address]
        with open_file(stem + ".txt") as fh:
            fh.write(source.encode("utf-8", "surrogateescape"))
        index["code_objects"].append({
            "function_id": e.function_id, "address": e.code.address, "module": e.module, "qualname": e.qualname,
            "kind": e.kind, "user_code": e.user_code, "filename": e.code.filename, "firstlineno": e.code.firstlineno,
            "co_code_sha256": e.sha256, "marshal": stem + ".marshal", "marshal_sha256": hashlib.sha256(data).hexdigest(),
            "source": stem + ".txt", "quickened_in_memory": e.code.quickened,
        })
    return index


def model_fingerprints(context, config, roots=None, with_source: bool = False):
    """(target, UR) for every model root of every selected process: the nn.Module roots of torch
    processes (or the modules at ``roots``), and in processes without torch the plain-Python objects
    at ``roots`` (a plain model has no tree to find its root by)."""
    from ..readers.fingerprint import Fingerprinter
    from ..readers.torch.model import TorchProcess

    pids = config.get("pid") or None
    roots = set(roots or ())
    found = 0
    for target, process in python_processes(context, config):
        fingerprinter = Fingerprinter(process, with_source)
        provenance = {"pid": target.pid, "process": target.name}
        try:
            torch_process = TorchProcess(process)
        except NoPythonError as exc:
            torch_process = None
            if not roots:
                if pids or target.source == "core":
                    fail(f"PID {target.pid} ({target.name}): {exc}; a plain-Python model needs --root ADDRESS")
                vollog.info("PID %d (%s): %s", target.pid, target.name, exc)
                continue
        except ZenError as exc:
            if pids or target.source == "core":
                fail(f"PID {target.pid} ({target.name}): {exc}")
            vollog.warning("PID %d (%s): %s", target.pid, target.name, exc)
            continue
        if torch_process is not None:
            provenance["torch"] = torch_process.torch_version
            context_info = torch_process.execution_context()
            for model in torch_process.models(read_bytes=False, addresses=roots or None):
                if not roots and _trivial_root(model):
                    continue
                ur = fingerprinter.torch_model(model, dict(provenance, root=model.root_address,
                                                           packages=context_info.packages))
                found += 1
                yield target, ur
        else:
            for root in sorted(roots):
                try:
                    ur = fingerprinter.plain_object(root, dict(provenance, root=root))
                except DECODE_ERRORS as exc:
                    if pids or target.source == "core":
                        fail(f"PID {target.pid}: no readable object at --root 0x{root:x} ({exc})")
                    continue
                found += 1
                yield target, ur
        report_warnings(target, process.objects.warnings)
        volglue.clear_volatility_caches()
    if found == 0:
        fail("no model found" + (" at the given --root address(es)" if roots else
                                 ": no process has an nn.Module tree (for a plain-Python model pass --pid and --root)"))


def _trivial_root(model) -> bool:
    """A lone framework module (a loss function, an activation kept in a global) is not a model."""
    from ..readers.cpython.reach import is_framework_module

    return len(model.modules) == 1 and is_framework_module(model.modules[0].class_module)
