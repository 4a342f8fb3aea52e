"""Rebuilding a recovered model inside its base model's environment, from a patch bundle.

Run it where the base package is installed, under the image's CPython minor version::

    python -m volatility3_zen.reuse BUNDLE --dry-run      # verify, then list what would be injected
    python -m volatility3_zen.reuse BUNDLE                # inject, rebuild, summarise the model

    from volatility3_zen import reuse
    model = reuse.load("pid1234-7f3a....zenpatch.zip")    # an ordinary torch.nn.Module

Steps (docs/reuse.md): the manifest's hashes are checked and a bundle for another CPython minor
version is refused; the changed code objects replace the code of the base's live functions; the
added classes and functions are made from their code objects and put into their modules (created
where this environment lacks them), with the module globals their code reads; then the model object
is rebuilt from its recorded state (no constructor runs) and its tensors loaded from the bundle.

Only the standard library, torch and (if installed) safetensors are imported: neither Volatility
nor the rest of volatility3_zen needs to be installed here.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from .bundle import PatchBundle, ReuseError
from .decode import Decoder
from .inject import Injector, Plan, make_plan

__all__ = ["PatchBundle", "ReuseError", "Plan", "Rebuilt", "open_bundle", "plan", "rebuild", "load"]


@dataclass
class Rebuilt:
    model: Any  # the torch.nn.Module (or plain object) that was rebuilt
    plan: Plan
    warnings: List[str] = field(default_factory=list)


def open_bundle(path: str, expect_sha256: Optional[str] = None) -> PatchBundle:
    """The verified bundle (ReuseError when altered, damaged, or for another CPython)."""
    bundle = PatchBundle(path, expect_sha256)
    bundle.check_interpreter()
    return bundle


def plan(path: str, expect_sha256: Optional[str] = None) -> Plan:
    """The dry run: what would be injected and patched; nothing is changed."""
    return make_plan(open_bundle(path, expect_sha256))


def rebuild(path: str, expect_sha256: Optional[str] = None, patch: bool = True) -> Rebuilt:
    """Inject the bundle's code and rebuild its model.  ``patch=False`` rebuilds from the recorded
    state without injecting anything: how the base environment alone fares (the control)."""
    bundle = open_bundle(path, expect_sha256)
    if not bundle.has("objects.json"):
        raise ReuseError(f"{path}: the bundle holds no object state (a plain-Python model, or the state was "
                         "unreadable in the image); there is no model to rebuild")
    doc = bundle.json("objects.json")
    files = {}

    def tensor(member: str, key: str):
        if member not in files:
            files[member] = bundle.tensors(member)
        return files[member][key]

    decoder = Decoder(doc["objects"], tensor)
    if patch:
        done = Injector(bundle, decoder).apply()
    else:
        done = Plan(notes=["not patched: the base environment as it is"])
    model = decoder.value(doc["root"], "(root)")
    return Rebuilt(model, done, list(doc.get("warnings", [])) + decoder.warnings)


def load(path: str, expect_sha256: Optional[str] = None) -> Any:
    """The rebuilt model (an ordinary nn.Module: hooks, gradients and attacks work on it)."""
    return rebuild(path, expect_sha256).model
