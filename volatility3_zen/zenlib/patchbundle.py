"""The patch bundle of one model root: everything needed to rebuild the recovered derivative on top of
its base, in one self-describing zip (docs/patchgen.md describes it member by member).

The diff (``analysis.diff``) says which code objects changed or were added; this module reads those
code objects in full from the process (by the address the UR keeps), serialises them with
``marshal_writer`` for the image's CPython version, and adds the added classes, the model's weights
(safetensors), its description, the execution context, the diff and the attribution.  A manifest
lists the sha256 of every other member.  JSON, marshal, text and safetensors only: no pickle.
"""

import dataclasses
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import __version__
from .analysis import attribution as attribution_mod
from .analysis.diff import ModelDiff
from .cpython import disassemble, marshal_writer
from .cpython.objects import DECODE_ERRORS
from .cpython.recover import PythonProcess
from .errors import ZenError
from .fingerprint import version_of
from .representation.model import encode_value
from .representation.program import CodeObject, encode_const
from .representation.unified import CodeFeature, UnifiedRepresentation

BUNDLE_FORMAT = "zen-patch-bundle"
BUNDLE_SCHEMA_VERSION = 1
BUNDLE_SUFFIX = ".zenpatch.zip"
MANIFEST = "manifest.json"
# Fixed zip timestamps: the same model and base give the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_VALUE_DEPTH = 8  # how deep a class attribute's containers are decoded


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


def build(pid: int, python: PythonProcess, target: UnifiedRepresentation, base: UnifiedRepresentation,
          result: attribution_mod.Attribution, model_diff: ModelDiff) -> Bundle:
    """The bundle of one model root of the process ``python`` (pid ``pid``)."""
    root = int(target.provenance.get("root", 0))
    bundle = Bundle(bundle_name(pid, root), {})
    members = bundle.members
    version = version_of(python)
    code = _CodeMembers(python, version, bundle.warnings)
    members["code.json"] = _json(code.add_all(target, model_diff))
    members.update(code.files)
    members["classes.json"] = _json(_classes(python, target, model_diff, bundle.warnings))

    torch_version, context = _torch_parts(python, root, target, members, bundle.warnings)
    members["context.json"] = _json(context)
    members["diff.json"] = _json(model_diff.to_json())
    members["attribution.json"] = _json(attribution_mod.to_json(result))
    members["ur.json"] = target.dumps().encode()

    base_text = base.dumps().encode()
    manifest = {
        "format": BUNDLE_FORMAT,
        "schema": BUNDLE_SCHEMA_VERSION,
        "producer": f"volatility3-zen {__version__}",
        "python_version": target.python_version,
        "python": python.runtime.version,
        "torch_version": torch_version,
        "base": {"name": base.name, "fingerprint_sha256": hashlib.sha256(base_text).hexdigest(),
                 "python_version": base.python_version, "source": base.provenance.get("source")},
        "target": {"pid": pid, "process": target.provenance.get("process"), "root": root,
                   "root_class": model_diff.target_root_class, "ur": result.scores[0].ur if result.scores else None,
                   "margin": result.margin},
        "counts": model_diff.counts(),
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    for name, data in sorted(members.items())},
        "warnings": list(model_diff.warnings) + bundle.warnings,
    }
    members[MANIFEST] = _json(manifest)
    return bundle


class _CodeMembers:
    """code/<n>.marshal and code/<n>.txt for each changed and added code object, and their index."""

    def __init__(self, python: PythonProcess, version: Tuple[int, int], warnings: List[str]):
        self.py = python
        self.version = version
        self.warnings = warnings
        self.files: Dict[str, bytes] = {}
        self._read: Dict[int, CodeObject] = {}

    def resolve(self, address: int) -> CodeObject:
        # Nested code is read from the image like its parent; marshal embeds it in the parent's consts.
        if address not in self._read:
            self._read[address] = self.py.code_reader.read(address)
        return self._read[address]

    def add_all(self, target: UnifiedRepresentation, model_diff: ModelDiff) -> Dict[str, Any]:
        features = {c.function_id: c for c in target.pr.code}
        entries, skipped = [], [{"function_id": fid, "reason": "not read from memory"} for fid in model_diff.skipped]
        for change in model_diff.changes:
            if change.kind == "removed":
                continue
            feature = features[change.function_id]
            try:
                code = self._checked(feature)
                data = marshal_writer.dumps_code(code, self.resolve, self.version)
            except DECODE_ERRORS as exc:
                self.warnings.append(f"{feature.function_id}: code object at 0x{feature.address:x} not dumped ({exc})")
                skipped.append({"function_id": feature.function_id, "reason": str(exc)})
                continue
            stem = f"code/{len(entries)}"
            self.files[stem + ".marshal"] = data
            self.files[stem + ".txt"] = self._text(feature, code).encode("utf-8", "surrogateescape")
            entries.append({
                "function_id": feature.function_id, "module": feature.module, "qualname": feature.qualname,
                "owner_class": feature.owner_class, "kind": change.kind, "code_kind": feature.kind,
                "base_function_id": change.base_function_id, "differs_in": change.fields,
                "pulled_in_by": change.pulled_in_by, "similarity": change.similarity, "size": change.size,
                "address": feature.address, "nested": feature.nested,
                "attributes": _attributes(code),
                "marshal": stem + ".marshal", "text": stem + ".txt",
            })
        return {"python_version": target.python_version, "marshal_version": 4, "code_objects": entries,
                "skipped": skipped}

    def _checked(self, feature: CodeFeature) -> CodeObject:
        code = self.resolve(feature.address)
        if hashlib.sha256(code.code).hexdigest() != feature.code_sha256 or code.name != feature.name:
            raise ZenError("the code object at its address is not the one fingerprinted")
        return code

    def _text(self, feature: CodeFeature, code: CodeObject) -> str:
        header = f"# {feature.function_id}\n# {code.filename}:{code.firstlineno}, CPython {'.'.join(map(str, self.version))}\n"
        try:
            text = feature.source or disassemble.decompile(code, self.resolve, self.version)
            return header + (text if text is not None else disassemble.disassemble(code, self.resolve, self.version))
        except Exception as exc:  # noqa: BLE001 -- xdis asserts on garbled bytecode, decompilers raise anything
            return header + f"# no source or disassembly: {type(exc).__name__}: {exc}\n"


def _attributes(code: CodeObject) -> Dict[str, Any]:
    return {
        "name": code.name, "qualname": code.qualname, "filename": code.filename, "firstlineno": code.firstlineno,
        "argcount": code.argcount, "posonlyargcount": code.posonlyargcount, "kwonlyargcount": code.kwonlyargcount,
        "nlocals": code.nlocals, "stacksize": code.stacksize, "flags": code.flags, "names": list(code.names),
        "varnames": list(code.varnames), "freevars": list(code.freevars), "cellvars": list(code.cellvars),
        "consts": [encode_const(c) for c in code.consts], "co_code_sha256": hashlib.sha256(code.code).hexdigest(),
        "bytecode_size": len(code.code),
    }


# -- classes ------------------------------------------------------------------------------------------
def _classes(python: PythonProcess, target: UnifiedRepresentation, model_diff: ModelDiff,
             warnings: List[str]) -> Dict[str, Any]:
    """Added classes with their simple class attributes read from the class's namespace (also put into
    the diff's AddedClass, so that diff.json carries them)."""
    addresses = {c.key: c.address for c in target.pr.classes}
    added = []
    for cls in model_diff.added_classes:
        attributes = dict(cls.attributes)
        address = addresses.get(cls.key)
        if address:
            try:
                attributes.update(class_attributes(python, address))
            except DECODE_ERRORS as exc:
                warnings.append(f"class {cls.key}: attributes unreadable ({exc})")
        cls.attributes = attributes
        added.append({"key": cls.key, "name": cls.name, "qualname": cls.qualname, "module": cls.module,
                      "bases": list(cls.bases), "methods": dict(cls.methods), "attributes": attributes,
                      "address": address})
    return {"added": added, "renamed": dict(model_diff.renamed_classes), "removed": list(model_diff.removed_classes),
            "changed": [vars(c) for c in model_diff.class_changes]}


def class_attributes(python: PythonProcess, address: int) -> Dict[str, Any]:
    """Public data attributes of a class's own namespace, where they are simple values (the encoded
    form of ``representation.model.encode_value``); methods, descriptors and objects are left out."""
    o = python.objects
    namespace = o.str_dict(o.u64(address + o.off_tp_dict))
    out = {}
    for name, value in sorted(namespace.items()):
        if name.startswith("__") and name.endswith("__") or python.method_function(value):
            continue
        encoded = _simple_value(python, value, 0)
        if encoded is not None:
            out[name] = encoded
    return out


def _simple_value(python: PythonProcess, obj: int, depth: int) -> Optional[dict]:
    o = python.objects
    if depth > _VALUE_DEPTH:
        return None
    try:
        kind = o.kind(obj)  # exact kinds only: a subclass of int (an enum member) is not a plain value
        if kind in ("list", "tuple"):
            items = [_simple_value(python, i, depth + 1) for i in (o.list_items(obj) if kind == "list" else o.tuple_items(obj))]
            return None if any(i is None for i in items) else {"t": kind, "v": items}
        if kind == "dict":
            items = []
            for k, v in o.dict_items(obj):
                encoded = _simple_value(python, v, depth + 1)
                if o.kind(k) != "str" or encoded is None:
                    return None
                items.append([o.read_str(k), encoded])
            return {"t": "dict", "v": items}
        if kind in ("str", "bytes", "int", "bool", "float", "complex", "NoneType"):
            return encode_value(o.read_const(obj))
    except DECODE_ERRORS + (UnicodeDecodeError,):
        return None
    return None


# -- weights, model description, execution context ----------------------------------------------------
def _torch_parts(python: PythonProcess, root: int, target: UnifiedRepresentation, members: Dict[str, bytes],
                 warnings: List[str]) -> Tuple[Optional[str], Dict[str, Any]]:
    """weights.safetensors and model.json for an nn.Module root; (torch version, context.json)."""
    from .torch import export
    from .torch.model import TorchProcess

    context = {"python_version": target.python_version, "python": python.runtime.version, "torch_version": None,
               "packages": {}, "requirements": [], "native_libraries": [],
               "model_packages": list(target.provenance.get("model_packages", []))}
    if target.mr is None:
        context["note"] = "a plain-Python model: no torch, no weights"
        return None, context
    try:
        torch_process = TorchProcess(python)
        model = next(iter(torch_process.models(read_bytes=True, addresses={root})), None)
    except DECODE_ERRORS as exc:
        warnings.append(f"model at 0x{root:x}: weights not exported ({exc})")
        return target.provenance.get("torch"), context
    execution = torch_process.execution_context()
    context.update(torch_version=execution.torch_version, packages=dict(execution.packages),
                   requirements=execution.requirements(), native_libraries=list(execution.native_libraries))
    if model is None:
        warnings.append(f"model at 0x{root:x}: no nn.Module there any more; weights not exported")
        return execution.torch_version, context
    members["model.json"] = _json(model.to_json(execution))
    # A tensor whose bytes could not be read (its read left a warning) is left out, not the whole file.
    unreadable = [t.name for t in model.tensors if t.warning]
    if unreadable:
        warnings.append(f"{len(unreadable)} tensors unreadable, not in weights.safetensors: {', '.join(unreadable[:5])}")
    readable = dataclasses.replace(model, tensors=[t for t in model.tensors if not t.warning])
    try:
        members["weights.safetensors"] = export.safetensors_bytes(readable, torch_process.tensors.read_bytes)
    except DECODE_ERRORS as exc:
        warnings.append(f"model at 0x{root:x}: weights not exported ({exc})")
    return execution.torch_version, context


def verify(members: Dict[str, bytes]) -> List[str]:
    """Problems of a bundle's members against its manifest (empty when it is intact)."""
    manifest = json.loads(members[MANIFEST])
    problems = []
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"not a patch bundle (format {manifest.get('format')!r})")
    listed = manifest.get("members", {})
    for name in sorted(set(members) - {MANIFEST} | set(listed)):
        if name not in members:
            problems.append(f"{name}: listed but missing")
        elif name not in listed:
            problems.append(f"{name}: not in the manifest")
        elif hashlib.sha256(members[name]).hexdigest() != listed[name]["sha256"]:
            problems.append(f"{name}: sha256 differs")
    return problems


def read_members(path_or_handle) -> Dict[str, bytes]:
    with zipfile.ZipFile(path_or_handle) as archive:
        return {name: archive.read(name) for name in archive.namelist()}
