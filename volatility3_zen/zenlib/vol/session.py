"""What every ``linux.zen.*`` plugin shares: requirements, the choice of processes, the error policy.

Plain functions (not a plugin base class: Volatility lists every PluginInterface subclass it sees).
Each step opens what the next one needs and hands it on: ``python_processes`` yields opened CPython
processes, ``torch_processes`` adds torch, ``models`` yields every model root with its process and its
UR together, and ``attributed_models`` adds the attribution, so no later step reopens the image.

Roots (``ranked_roots``): a process holds many nn.Module instances that are not models (transformers
builds its activation table at import; a loss or an activation kept in a global).  A root that is one
module and either holds no parameter or is a framework class is *stray*: left out with a one-line note
unless ``--all-roots`` (or ``--root``) asks for it.  The other roots come first by the parameter
elements they hold, then tensors, then modules, then address.

Error policy (``_Selection``): a process the investigator chose (named with ``--pid``, or the one
process of a core) that cannot be analysed is a fatal, one-line error (non-zero exit); when scanning
every process of an image, such a process is a warning and the scan goes on.  An image with neither a
Linux kernel nor a process core is fatal, never a silent empty table.  A process that hosts CPython and
is passed over says why at WARNING level (no torch, no --root for a plain-Python model, unreadable);
kernel threads and processes without CPython are counted in one line at the end of the scan (WARNING
when the scan found no CPython process at all).  An empty result always says why at WARNING level.

Output files (``check_output_dir``): a plugin that will write files checks the output directory before
the analysis, so that an unwritable ``-o`` is a one-line error at once, not a traceback at the end.
"""

import dataclasses
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.plugins.linux import pslist

from ..analysis import attribution
from ..analysis.library import BaseModelLibrary, LibraryError
from ..errors import NoPythonError, ZenError
from ..readers.cpython.objects import DECODE_ERRORS
from ..readers.cpython.reach import is_framework_module
from ..readers.cpython.recover import PythonProcess
from ..readers.cpython.runtime import hosts_python
from ..readers.fingerprint import Fingerprinter, ModelFingerprint
from ..readers.torch.model import TorchProcess
from ..representation.model import RecoveredModel
from ..representation.program import Program
from ..representation.unified import UnifiedRepresentation
from . import automagic as _register_automagic  # noqa: F401 - Volatility finds automagics by subclass
from . import targets as volglue
from .targets import Target

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
        all_roots_requirement(),
    ]


def all_roots_requirement() -> interfaces.configuration.RequirementInterface:
    return requirements.BooleanRequirement(
        name="all-roots", default=False, optional=True,
        description="Also the stray roots: single modules without parameters or of a framework class (activations, losses)")


def score_cell(value: Optional[float]):
    """A similarity for a TreeGrid cell: N/A where it does not apply (no MR on one side)."""
    return renderers.NotApplicableValue() if value is None else round(float(value), 6)


def fail(message: str) -> None:
    """A fatal, one-line error for the investigator and a non-zero exit (no traceback)."""
    vollog.error(message)
    sys.stderr.flush()
    raise SystemExit(1)


def check_output_dir(plugin) -> None:
    """Fails with one line, before any analysis, when the plugin's output directory (``vol -o DIR``)
    is not a directory or cannot be written.  A plugin run without Volatility's CLI (no output
    directory known) is not checked."""
    directory = _output_dir(plugin)
    if directory is None:
        return
    if not os.path.isdir(directory):
        fail(f"output directory {directory}: " + ("not a directory" if os.path.exists(directory) else "does not exist"))
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".zen-write-check-"):
            pass
    except OSError as exc:
        fail(f"output directory {directory}: cannot write there ({exc.strerror or exc})")


def _output_dir(plugin) -> Optional[str]:
    """The directory the plugin's file handler writes to: Volatility's CLI handler keeps it in the
    closure of its ``_get_final_filename`` (``volatility3/cli``, ``file_handler_class_factory``)."""
    try:
        handler = plugin.open
    except Exception:  # noqa: BLE001 -- no file handler set: nothing to check
        return None
    final = getattr(handler, "_get_final_filename", None)
    code, cells = getattr(final, "__code__", None), getattr(final, "__closure__", None)
    if code is None or not cells or "output_dir" not in code.co_freevars:
        return None
    try:
        value = cells[code.co_freevars.index("output_dir")].cell_contents
    except ValueError:  # an empty cell
        return None
    return value if isinstance(value, str) else None


class _Selection:
    """The error policy: which processes the investigator chose, and what a failure on one means."""

    def __init__(self, config):
        self.pids: Optional[List[int]] = config.get("pid") or None
        self.passed_over: Dict[str, int] = {}  # the reason of a routine skip (kernel thread, no CPython) -> count

    def chosen(self, target: Target) -> bool:
        # A process core holds exactly the process the investigator chose: treat it as named.
        return bool(self.pids) or target.source == "core"

    def skip(self, target: Target, reason: str, level: int = logging.WARNING, routine: str = "") -> None:
        """A process that cannot be analysed: fatal when chosen, else logged and passed over.  A
        ``routine`` skip (a kernel thread, a process without CPython) is also counted under that name
        for the one line ``passed_over_line`` gives at the end of the scan."""
        message = f"PID {target.pid} ({target.name}): {reason}"
        if self.chosen(target):
            fail(message)
        if routine:
            self.passed_over[routine] = self.passed_over.get(routine, 0) + 1
        vollog.log(level, "%s", message)

    def passed_over_line(self) -> str:
        return ", ".join(f"{count} {what}" for what, count in sorted(self.passed_over.items()))


# -- processes ---------------------------------------------------------------------------------------
def _unnamed_core(target: Target, pids: Optional[List[int]]) -> Target:
    """A core without its process notes: gcore writes them after the memory, so a truncated core has
    lost them.  Its PID is unknown: it is the one ``--pid`` names, if any (a core holds one process),
    else shown as 0; both are said once."""
    if pids and len(pids) == 1:
        vollog.warning("the core has no process notes (a truncated core loses them): its PID and name are unknown;"
                       " analysed as PID %d, as --pid says", pids[0])
        return dataclasses.replace(target, pid=pids[0], name=target.name or "?")
    vollog.warning("the core has no process notes (a truncated core loses them): its PID and name are unknown"
                   " and shown as 0 and '?'")
    return dataclasses.replace(target, name=target.name or "?")


def python_processes(context, config) -> Iterator[Tuple[Target, PythonProcess]]:
    """Opened CPython processes of the image, following the error policy above."""
    selection = _Selection(config)
    pids = selection.pids
    kernel = config.get("kernel")
    found_pids = set()
    any_target = False
    opened = 0
    for target in volglue.targets(context, kernel, pids):
        any_target = True
        if target.source == "core" and target.pid == 0:
            target = _unnamed_core(target, pids)
        found_pids.add(target.pid)
        if pids and target.pid not in pids:
            continue
        process = _open_python(target, selection)
        if process is None:
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
    passed_over = selection.passed_over_line()
    if opened == 0:
        vollog.warning("no CPython process found in the image" + (f" (passed over: {passed_over})" if passed_over else ""))
    elif passed_over:
        vollog.info("passed over: %s (-vv lists them)", passed_over)


def _open_python(target: Target, selection: _Selection) -> Optional[PythonProcess]:
    if target.memory is None:
        selection.skip(target, "no user address space (kernel thread or exiting process)", logging.DEBUG,
                       routine="kernel threads or exiting processes")
        return None
    try:
        if not hosts_python(target.memory):
            reason = ("no CPython interpreter found in this core (not a Python process, a truncated core, or"
                      " captured without file-backed pages)" if target.source == "core"
                      else "does not host a CPython interpreter")
            selection.skip(target, reason, logging.DEBUG, routine="processes without CPython")
            return None
        return PythonProcess(target.memory)
    except DECODE_ERRORS as exc:
        selection.skip(target, _describe(exc))
        return None


def programs(context, config, progress: Optional[Callable] = None) -> Iterator[Tuple[Target, Program]]:
    """The recovered ``Program`` of every selected CPython process, with warnings reported."""
    for target, process in python_processes(context, config):
        prefix = f"PID {target.pid}"
        report = (lambda pct, text: progress(pct, f"{prefix}: {text}")) if progress else None
        program = process.recover(report)
        report_warnings(target, program.warnings)
        volglue.clear_volatility_caches()
        yield target, program


def _open_torch(target: Target, process: PythonProcess, selection: _Selection) -> Optional[TorchProcess]:
    """The process's torch, or None (skipped by the policy, with a WARNING that says why: no torch
    imported, or an unreadable or unsupported one)."""
    try:
        torch_process = TorchProcess(process)
    except DECODE_ERRORS as exc:
        reason = _describe(exc)
        if isinstance(exc, NoPythonError):
            reason += "; its models cannot be read (linux.zen.codeobjects lists its code)"
        selection.skip(target, reason)
        return None
    _report_table(target, torch_process)
    return torch_process


def _report_table(target: Target, torch_process: TorchProcess) -> None:
    """A layout table borrowed from another release (validate.py) is said at WARNING level, with its figure."""
    if torch_process.table.warning:
        vollog.warning("PID %d: %s", target.pid, torch_process.table.warning)


def torch_processes(context, config) -> Iterator[Tuple[Target, TorchProcess]]:
    """CPython processes that imported torch (others are skipped, or fatal when chosen)."""
    selection = _Selection(config)
    found = 0
    for target, process in python_processes(context, config):
        torch_process = _open_torch(target, process, selection)
        if torch_process is None:
            continue
        found += 1
        yield target, torch_process
        report_warnings(target, process.reading_warnings())
        volglue.clear_volatility_caches()
    if found == 0:
        vollog.warning("no process with torch imported found in the image")


def report_warnings(target: Target, warnings: List[str]) -> None:
    for text in warnings[:MAX_REPORTED_WARNINGS]:
        vollog.warning("PID %d: %s", target.pid, text)
    if len(warnings) > MAX_REPORTED_WARNINGS:
        vollog.warning("PID %d: %d more warnings (use -vv to see them)", target.pid, len(warnings) - MAX_REPORTED_WARNINGS)
        for text in warnings[MAX_REPORTED_WARNINGS:]:
            vollog.info("PID %d: %s", target.pid, text)


# -- models ------------------------------------------------------------------------------------------
@dataclass
class FoundModel:
    """One model root, with the opened process it lives in: what the later steps (attribution, diff,
    the bundle) need, so that none of them reopens the image."""

    target: Target
    python: PythonProcess
    torch: Optional[TorchProcess]  # None for a plain-Python model
    fingerprint: ModelFingerprint

    @property
    def ur(self) -> UnifiedRepresentation:
        return self.fingerprint.ur

    @property
    def root(self) -> int:
        return int(self.ur.provenance.get("root", 0))


def models(context, config, roots=None, with_source: bool = False) -> Iterator[FoundModel]:
    """Every model root of every selected process: the nn.Module roots of torch processes (or the
    modules at ``roots``), and in processes without torch the plain-Python objects at ``roots`` (a
    plain model has no tree to find its root by)."""
    selection = _Selection(config)
    roots = set(roots or ())
    all_roots = bool(config.get("all-roots"))
    found = strays = 0
    for target, process in python_processes(context, config):
        fingerprinter = Fingerprinter(process, with_source)
        provenance = {"pid": target.pid, "process": target.name}
        try:
            torch_process = TorchProcess(process)
        except NoPythonError as exc:
            torch_process = None
            if not roots:
                selection.skip(target, f"{exc}; a plain-Python model needs --root ADDRESS")
                continue
        except DECODE_ERRORS as exc:
            selection.skip(target, _describe(exc))
            continue
        if torch_process is not None:
            _report_table(target, torch_process)
            provenance["torch"] = torch_process.torch_version
            provenance["torch_table"] = torch_process.table.table
            packages = torch_process.execution_context().packages
            kept = ranked_roots(target, torch_process, roots, all_roots, read_bytes=False)
            strays += kept.left_out
            for model in kept.models:
                try:
                    fingerprint = fingerprinter.torch_model(model, dict(provenance, root=model.root_address, packages=packages))
                except DECODE_ERRORS as exc:
                    vollog.warning("PID %d: model at 0x%x: no fingerprint (%s)", target.pid, model.root_address, _describe(exc))
                    continue
                found += 1
                yield FoundModel(target, process, torch_process, fingerprint)
        else:
            for root in sorted(roots):
                try:
                    fingerprint = fingerprinter.plain_object(root, dict(provenance, root=root))
                except DECODE_ERRORS as exc:
                    selection.skip(target, f"no readable object at --root 0x{root:x} ({exc})")
                    continue
                found += 1
                yield FoundModel(target, process, None, fingerprint)
        report_warnings(target, process.reading_warnings())
        volglue.clear_volatility_caches()
    if found == 0:
        fail("no model found" + (" at the given --root address(es)" if roots else
                                 f": only {strays} stray root(s), single modules without parameters or of a framework class"
                                 " (--all-roots lists them)" if strays else
                                 ": no process has an nn.Module tree (for a plain-Python model pass --pid and --root)"))


def _describe(exc: Exception) -> str:
    """One line for a reading error: a ZenError says what it is; anything else from decoding smeared
    memory (struct.error, ValueError...) is named by its type."""
    return str(exc) if isinstance(exc, ZenError) else f"unreadable ({type(exc).__name__}: {exc})"


@dataclass
class RankedRoots:
    models: List[RecoveredModel]  # the models first, by what they hold
    left_out: int  # stray roots not listed


def holdings(model: RecoveredModel) -> Tuple[int, int, int]:
    """(parameter elements, tensors, modules) of a model, each tensor counted once (tied ones share)."""
    unique = {t.info.address: t for t in model.tensors}
    return (sum(t.info.numel for t in unique.values() if t.kind == "parameter"), len(unique), len(model.modules))


def stray_root(model: RecoveredModel) -> bool:
    """A root that is not a model: a single module that holds no parameter (transformers' activation
    table, a Dropout or a positional table kept in a global) or whose class is the framework's (a loss,
    a lone nn.Linear)."""
    if len(model.modules) != 1:
        return False
    return holdings(model)[0] == 0 or is_framework_module(model.modules[0].class_module)


def rank_key(model: RecoveredModel):
    parameters, tensors, modules = holdings(model)
    return (-parameters, -tensors, -modules, model.root_address)


def ranked_roots(target: Target, torch_process: TorchProcess, addresses=None, all_roots: bool = False,
                 read_bytes: bool = False) -> RankedRoots:
    """The models of one torch process, models first by what they hold (``rank_key``).  Without
    ``addresses`` and ``all_roots``, stray roots (``stray_root``) are left out with one warning line."""
    models = list(torch_process.models(read_bytes=read_bytes, addresses=set(addresses) if addresses else None))
    strays = [] if addresses or all_roots else [m for m in models if stray_root(m)]
    if strays:
        classes = sorted({m.root_class for m in strays})
        shown = ", ".join(classes[:3]) + (f" and {len(classes) - 3} more classes" if len(classes) > 3 else "")
        vollog.warning("PID %d: %d stray root(s) left out, single modules without parameters or of a framework class"
                       " (%s); --all-roots lists them", target.pid, len(strays), shown)
        models = [m for m in models if not stray_root(m)]
    if not models and not strays:  # an empty result says why
        if addresses:
            vollog.warning("PID %d: no readable nn.Module at --root %s in this process", target.pid,
                           ", ".join(f"0x{a:x}" for a in sorted(addresses)))
        else:
            vollog.warning("PID %d: torch %s is imported but no nn.Module tree was found (no model built yet, or "
                           "freed; smeared GC lists: see the warnings above)", target.pid, torch_process.torch_version)
    return RankedRoots(sorted(models, key=rank_key), len(strays))


def library_bases(directory: Optional[str]) -> Dict[str, UnifiedRepresentation]:
    """Every fingerprint of the base model library, by name (an unreadable or empty library is fatal)."""
    try:
        return {ur.name: ur for ur in BaseModelLibrary(directory).all()}
    except LibraryError as exc:
        fail(str(exc))


def attributed_models(context, config, with_source: bool = False
                      ) -> Iterator[Tuple[FoundModel, attribution.Attribution, Dict[str, UnifiedRepresentation]]]:
    """(model, its attribution, the library's bases by name) for every model root (``--root``, ``--bml``)."""
    bases = library_bases(config.get("bml"))
    for found in models(context, config, config.get("root"), with_source):
        _note_partial(found)
        result = attribution.attribute(found.ur, list(bases.values()))
        for note in result.notes:
            vollog.info("PID %d root 0x%x: %s", found.target.pid, found.root, note)
        yield found, result, bases


def _note_partial(found: FoundModel) -> None:
    """Attribution runs on what was recovered: say how much that was when smeared memory kept parts out."""
    prov = found.ur.provenance
    if prov.get("unreadable") or prov.get("warnings"):
        layers = len(found.ur.mr.layers) if found.ur.mr else 0
        vollog.warning("PID %d root 0x%x: attributed on a partial model: %d layers and %d code objects recovered; "
                       "%d modules/tensors and %d code parts unreadable", found.target.pid, found.root, layers,
                       len(found.ur.pr.code), prov.get("unreadable", 0), len(prov.get("warnings", [])))


def image_name(context) -> str:
    """The file name of the image the plugin runs on ('' when Volatility did not open a single file)."""
    return os.path.basename(context.config.get("automagic.LayerStacker.single_location", ""))
