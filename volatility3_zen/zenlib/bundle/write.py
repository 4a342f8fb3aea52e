"""The patch bundle of one model root, written from representations: everything needed to rebuild the
recovered derivative on top of its base, in one self-describing zip (docs/patchgen.md describes it
member by member).

``build`` sees only plain data: the contents ``bundle.collect`` read from the process (``bundle.contents``), the target's
and the base's URs, the attribution and the diff.  A manifest lists the sha256 of every other member.
JSON, marshal, text and safetensors only: no pickle.  The same inputs give the same bytes; between two
runs on the same image only the manifest's ``provenance`` (the run's chain of custody) differs.
"""

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ... import __version__
from ..analysis import attribution
from ..analysis.diff import ModelDiff
from ..representation.unified import UnifiedRepresentation
from .contents import BundleContents, RunProvenance
from .format import BUNDLE_FORMAT, BUNDLE_SCHEMA_VERSION, BUNDLE_SUFFIX, MANIFEST

# Fixed zip timestamps: the same model and base give the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class Bundle:
    name: str  # the zip's file name
    members: Dict[str, bytes]  # member name -> content; manifest.json included
    warnings: List[str] = field(default_factory=list)

    def write(self, handle) -> None:
        """The zip, manifest first, into a binary file handle (a plugin's ``open``)."""
        with zipfile.ZipFile(handle, "w") as archive:
            for name in [MANIFEST] + sorted(n for n in self.members if n != MANIFEST):
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                # Weights and marshal data barely compress; JSON and text do.
                info.compress_type = zipfile.ZIP_STORED if name.endswith((".safetensors", ".marshal")) else zipfile.ZIP_DEFLATED
                archive.writestr(info, self.members[name])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()


def bundle_name(pid: int, root: int) -> str:
    return f"pid{pid}-{root:x}{BUNDLE_SUFFIX}"


def _json(document: Any) -> bytes:
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def build(contents: BundleContents, target: UnifiedRepresentation, base: UnifiedRepresentation,
          result: attribution.Attribution, model_diff: ModelDiff, provenance: Optional[RunProvenance] = None) -> Bundle:
    """The bundle.  ``model_diff`` is the diff as the bundle records it: with the added classes'
    attributes that ``collect`` read (``ModelDiff.with_class_attributes``); ``provenance`` the run's
    chain of custody (null in the manifest when not given)."""
    members: Dict[str, bytes] = {
        "classes.json": _json(_classes(target, model_diff)),
        "context.json": _json(contents.context),
        "code.json": _json(contents.code),
        "diff.json": _json(model_diff.to_json()),
        "attribution.json": _json(attribution.to_json(result)),
        "ur.json": target.dumps().encode(),
        **contents.code_files,
    }
    optional = {"model.json": contents.model, "objects.json": contents.objects}
    members.update((name, _json(document)) for name, document in optional.items() if document is not None)
    binary = {"weights.safetensors": contents.weights, "state.safetensors": contents.state}
    members.update((name, data) for name, data in binary.items() if data is not None)

    base_text = base.dumps().encode()
    manifest = {
        "format": BUNDLE_FORMAT,
        "schema": BUNDLE_SCHEMA_VERSION,
        "producer": f"volatility3-zen {__version__}",
        "python_version": target.python_version,
        "python": contents.python,
        "torch_version": contents.torch_version,
        "base": {"name": base.name, "fingerprint_sha256": hashlib.sha256(base_text).hexdigest(),
                 "python_version": base.python_version, "source": base.provenance.get("source")},
        "target": {"pid": contents.pid, "process": target.provenance.get("process"), "root": contents.root,
                   "root_class": model_diff.target_root_class, "ur": result.scores[0].ur if result.scores else None,
                   "margin": result.margin},
        "counts": model_diff.counts(),
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    for name, data in sorted(members.items())},
        "warnings": list(model_diff.warnings) + contents.warnings,
        "provenance": provenance.to_json() if provenance is not None else None,
    }
    members[MANIFEST] = _json(manifest)
    return Bundle(bundle_name(contents.pid, contents.root), members, list(contents.warnings))


def _classes(target: UnifiedRepresentation, model_diff: ModelDiff) -> Dict[str, Any]:
    """classes.json: the added classes (with their simple class attributes), renamed, removed, changed."""
    addresses = {c.key: c.address for c in target.pr.classes}
    added = [{"key": cls.key, "name": cls.name, "qualname": cls.qualname, "module": cls.module,
              "bases": list(cls.bases), "methods": dict(cls.methods), "attributes": dict(cls.attributes),
              "address": addresses.get(cls.key)} for cls in model_diff.added_classes]
    return {"added": added, "renamed": dict(model_diff.renamed_classes), "removed": list(model_diff.removed_classes),
            "changed": [vars(c) for c in model_diff.class_changes]}
