"""Rebuilding a recovered model inside its base model's environment, from a patch bundle.

Run it where the base package is installed, under the image's CPython minor version::

    python -m volatility3_zen.reuse BUNDLE --dry-run      # verify, then list what would be injected
    python -m volatility3_zen.reuse BUNDLE                # inject, rebuild, summarise the model

    from volatility3_zen import reuse
    model = reuse.load("pid1234-7f3a....zenpatch.zip")    # sandboxed: model(x) runs in a bwrap child
    model = reuse.load(path, sandbox=False)               # an ordinary torch.nn.Module, in this process

Steps (docs/reuse.md): the manifest's hashes are checked, the signature against the trusted keys
(``python -m volatility3_zen.keys``; ``allow_unsigned=True`` skips it) and a bundle for another CPython minor
version is refused; the changed code objects replace the code of the base's live functions; the
added classes and functions are made from their code objects and put into their modules (created
where this environment lacks them), with the module globals their code reads; then the model object
is rebuilt from its recorded state (no constructor runs) and its tensors loaded from the bundle.
The image's numerics (context.json: the kernel and thread variables, torch's thread count, the CPU
capability) are applied by default, the environment before torch is imported (``numerics.py``).

Only the standard library, torch and (if installed) safetensors are imported: neither Volatility
nor the rest of volatility3_zen needs to be installed here.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from .bundle import PatchBundle, ReuseError
from .decode import Decoder
from .inject import Injector, Plan, make_plan
from .trust import Trust
from .numerics import NumericsPlan, apply_environment, apply_torch, plan_numerics

__all__ = ["PatchBundle", "ReuseError", "Plan", "Rebuilt", "NumericsPlan", "open_bundle", "plan", "rebuild", "load",
           "numerics_plan"]


@dataclass
class Rebuilt:
    model: Any  # the torch.nn.Module (or plain object) that was rebuilt
    plan: Plan
    warnings: List[str] = field(default_factory=list)
    numerics: List[str] = field(default_factory=list)  # the image's numerics as applied here (docs/reuse.md)
    numerics_warnings: List[str] = field(default_factory=list)  # what could not be applied (also in warnings)


def open_bundle(path: str, expect_sha256: Optional[str] = None, allow_unsigned: bool = False,
                trusted_keys: Sequence[str] = ()) -> PatchBundle:
    """The verified bundle (ReuseError when altered, damaged, not signed by a trusted key, or for
    another CPython).  Trusted keys: the trusted-keys folder (``python -m volatility3_zen.keys trust``)
    and the public key files ``trusted_keys``; ``allow_unsigned`` skips the signature check."""
    bundle = PatchBundle(path, expect_sha256)
    bundle.check_signature(trusted_keys, allow_unsigned)
    bundle.check_interpreter()
    return bundle


def plan(path: str, expect_sha256: Optional[str] = None, allow_unsigned: bool = False,
         trusted_keys: Sequence[str] = ()) -> Plan:
    """The dry run: what would be injected and patched; nothing is changed."""
    return make_plan(open_bundle(path, expect_sha256, allow_unsigned, trusted_keys))


def numerics_plan(path: str, expect_sha256: Optional[str] = None, allow_unsigned: bool = False,
                  trusted_keys: Sequence[str] = ()) -> NumericsPlan:
    """What the rebuild would set up of the image's numerics (environment, threads, CPU capability)."""
    return plan_numerics(open_bundle(path, expect_sha256, allow_unsigned, trusted_keys).context())


def rebuild(path: str, expect_sha256: Optional[str] = None, patch: bool = True, numerics: bool = True,
            allow_unsigned: bool = False, trusted_keys: Sequence[str] = (), sandbox: bool = True,
            setup: Optional[str] = None, output_dir: Optional[str] = None) -> Rebuilt:
    """Inject the bundle's code and rebuild its model.  ``patch=False`` rebuilds from the recorded
    state without injecting anything: how the base environment alone fares (the control).

    ``sandbox`` (the default): the bundle is verified here, and the rebuild runs in a sandboxed child
    process (sandbox.py: no network, read-only filesystem except ``output_dir``, no home directory)
    that keeps the model; ``Rebuilt.model`` is then a ``sandbox.SandboxedModel``, whose calls run
    there and return tensors.  ``sandbox=False`` rebuilds in this process and returns the model
    itself (only where running the recovered code is acceptable).  ``setup``: a Python file run first,
    after the numerics environment is set (the CLI's ``--setup``).

    ``numerics`` (the default) applies the image's numerics from context.json: the environment
    variables that choose kernels and threads (only if torch is not imported yet; otherwise their
    differences are warnings), then torch's thread count, and checks the CPU capability.  Import
    torch after this call, or call it first, for the rebuilt model to run the image's kernels."""
    if sandbox:
        from .sandbox import rebuild as rebuild_sandboxed

        return rebuild_sandboxed(path, expect_sha256, patch, numerics, setup, output_dir,
                                 dict(allow_unsigned=allow_unsigned, trusted_keys=trusted_keys))
    bundle = open_bundle(path, expect_sha256, allow_unsigned, trusted_keys)
    if not bundle.has("objects.json"):
        raise ReuseError(f"{path}: the bundle holds no object state (a plain-Python model, or the state was "
                         "unreadable in the image); there is no model to rebuild")
    applied: List[str] = []
    numerics_warnings: List[str] = []
    numerics_plan_ = plan_numerics(bundle.context()) if numerics else None
    if numerics_plan_ is not None:
        applied, numerics_warnings = apply_environment(numerics_plan_)
        applied += numerics_plan_.notes
    if setup:
        import runpy

        runpy.run_path(setup, run_name="__zen_setup__")
    doc = bundle.json("objects.json")
    files = {}

    def tensor(member: str, key: str):
        if member not in files:
            files[member] = bundle.tensors(member)
        return files[member][key]

    trust = Trust.from_bundle(bundle)  # every name objects.json gives is checked before anything is made
    trust.audit(doc)
    decoder = Decoder(doc["objects"], tensor, trust=trust)
    if patch:
        done = Injector(bundle, decoder).apply()
    else:
        done = Plan(notes=["not patched: the base environment as it is"])
    model = decoder.value(doc["root"], "(root)")
    if numerics_plan_ is not None:
        done_torch, warnings_torch = apply_torch(numerics_plan_)
        applied += done_torch
        numerics_warnings += warnings_torch
    else:
        applied.append("not applied: the environment, threads and kernels are this process's")
    return Rebuilt(model, done, list(doc.get("warnings", [])) + decoder.warnings + numerics_warnings, applied,
                   numerics_warnings)


def load(path: str, expect_sha256: Optional[str] = None, numerics: bool = True, allow_unsigned: bool = False,
         trusted_keys: Sequence[str] = (), sandbox: bool = True, setup: Optional[str] = None,
         output_dir: Optional[str] = None) -> Any:
    """The rebuilt model.  Sandboxed (the default), a ``SandboxedModel`` whose calls run the model in
    its sandboxed child and return tensors; with ``sandbox=False``, the model itself, in this process
    (an ordinary nn.Module: hooks, gradients and attacks work on it).  With ``numerics``, the image's
    thread count is set and, where torch is not imported yet, its kernel settings (``rebuild``);
    warnings go to ``warnings.warn``."""
    result = rebuild(path, expect_sha256, numerics=numerics, allow_unsigned=allow_unsigned, trusted_keys=trusted_keys,
                     sandbox=sandbox, setup=setup, output_dir=output_dir)
    if numerics:
        import warnings as _warnings

        for text in result.numerics_warnings:
            _warnings.warn(text, RuntimeWarning, stacklevel=2)
    return result.model
