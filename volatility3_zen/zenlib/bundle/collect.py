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

from ... import __version__
from ..analysis import attribution as attribution_mod
from ..readers.cpython import code_index
from .format import BUNDLE_FORMAT, BUNDLE_SCHEMA_VERSION, BUNDLE_SUFFIX, MANIFEST, read_members, verify  # noqa: F401
from ..analysis.diff import ModelDiff
from ..readers.cpython import disassemble, marshal_writer
from ..readers.cpython.objects import DECODE_ERRORS
from ..readers.cpython.recover import PythonProcess
from ..errors import ZenError
from ..readers.fingerprint import version_of
from ..representation.model import encode_value
from ..representation.program import CodeObject, encode_const, nested_code
from ..representation.unified import CodeFeature, UnifiedRepresentation

# Fixed zip timestamps: the same model and base give the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_NESTED_KINDS = ("nested", "lambda", "comprehension", "class-body")  # made at run time by their parent
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
    code_index = code.add_all(target, model_diff)
    members["classes.json"] = _json(_classes(python, target, model_diff, bundle.warnings))

    torch_version, context, parts = _torch_parts(python, root, target, members, bundle.warnings)
    members["context.json"] = _json(context)
    if parts is not None or target.mr is None:  # plain-Python models have an object state too
        _object_state(python, parts, root, target, base, model_diff, code, members, bundle.warnings)
    members["code.json"] = _json(code_index)
    members.update(code.files)
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
        self.entries: List[Dict[str, Any]] = []
        self.skipped: List[Dict[str, Any]] = []
        self.by_address: Dict[int, str] = {}  # code address -> function_id of a shipped entry

    def resolve(self, address: int) -> CodeObject:
        # Nested code is read from the image like its parent; marshal embeds it in the parent's consts.
        if address not in self._read:
            self._read[address] = self.py.code_reader.read(address)
        return self._read[address]

    def add_all(self, target: UnifiedRepresentation, model_diff: ModelDiff) -> Dict[str, Any]:
        """code.json (its lists keep growing as ``carry`` adds code the rebuild needs)."""
        features = {c.function_id: c for c in target.pr.code}
        self.skipped.extend({"function_id": fid, "reason": "not read from memory"} for fid in model_diff.skipped)
        for change in model_diff.changes:
            if change.kind == "removed":
                continue
            feature = features[change.function_id]
            try:
                code = self._checked(feature)
            except DECODE_ERRORS as exc:
                self._skip(feature.function_id, feature.address, exc)
                continue
            self._add(code, feature.address, feature, {
                "kind": change.kind, "base_function_id": change.base_function_id, "differs_in": change.fields,
                "pulled_in_by": change.pulled_in_by, "similarity": change.similarity, "size": change.size})
        return {"python_version": target.python_version, "marshal_version": 4, "code_objects": self.entries,
                "skipped": self.skipped}

    def carry(self, address: int, feature: Optional[CodeFeature], module: Optional[str], reason: str) -> Optional[str]:
        """Ships unchanged code the rebuild needs (a method of a class the base lacks under this name);
        returns its function_id, or None when it cannot be read."""
        if address in self.by_address:
            return self.by_address[address]
        try:
            code = self._checked(feature) if feature else self.resolve(address)
        except DECODE_ERRORS as exc:
            self._skip(feature.function_id if feature else f"code at 0x{address:x}", address, exc)
            return None
        return self._add(code, address, feature, {"kind": "carried", "base_function_id": None, "differs_in": [],
                                                  "pulled_in_by": reason, "similarity": None, "size": 0},
                         module=module)

    def _skip(self, function_id: str, address: int, exc: Exception) -> None:
        self.warnings.append(f"{function_id}: code object at 0x{address:x} not dumped ({exc})")
        self.skipped.append({"function_id": function_id, "reason": str(exc)})

    def _add(self, code: CodeObject, address: int, feature: Optional[CodeFeature], change: Dict[str, Any],
             module: Optional[str] = None) -> Optional[str]:
        try:
            data = marshal_writer.dumps_code(code, self.resolve, self.version)
        except DECODE_ERRORS as exc:
            self._skip(feature.function_id if feature else code.qualname, address, exc)
            return None
        function_id = feature.function_id if feature else code_index.function_id(module, code.qualname, code)
        stem = f"code/{len(self.entries)}"
        self.files[stem + ".marshal"] = data
        self.files[stem + ".txt"] = self._text(function_id, feature, code).encode("utf-8", "surrogateescape")
        self.entries.append({
            "function_id": function_id, "module": feature.module if feature else module,
            "qualname": code.qualname, "owner_class": feature.owner_class if feature else None,
            "code_kind": feature.kind if feature else "method", **change,
            "address": address, "nested": feature.nested if feature else [],
            "attributes": _attributes(code), "marshal": stem + ".marshal", "text": stem + ".txt",
        })
        self.by_address[address] = function_id
        return function_id

    def _checked(self, feature: CodeFeature) -> CodeObject:
        code = self.resolve(feature.address)
        if hashlib.sha256(code.code).hexdigest() != feature.code_sha256 or code.name != feature.name:
            raise ZenError("the code object at its address is not the one fingerprinted")
        return code

    def _text(self, function_id: str, feature: Optional[CodeFeature], code: CodeObject) -> str:
        header = f"# {function_id}\n# {code.filename}:{code.firstlineno}, CPython {'.'.join(map(str, self.version))}\n"
        try:
            text = (feature.source if feature else None) or disassemble.decompile(code, self.resolve, self.version)
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
                 warnings: List[str]) -> Tuple[Optional[str], Dict[str, Any], Optional[tuple]]:
    """weights.safetensors and model.json for an nn.Module root; (torch version, context.json,
    (TorchProcess, ModelRepresentation) for the object state, or None)."""
    from ..readers.torch import export
    from ..readers.torch.model import TorchProcess

    context = {"python_version": target.python_version, "python": python.runtime.version, "torch_version": None,
               "packages": {}, "requirements": [], "native_libraries": [],
               "model_packages": list(target.provenance.get("model_packages", []))}
    if target.mr is None:
        context["note"] = "a plain-Python model: no torch, no weights"
        return None, context, None
    try:
        torch_process = TorchProcess(python)
        model = next(iter(torch_process.models(read_bytes=True, addresses={root})), None)
    except DECODE_ERRORS as exc:
        warnings.append(f"model at 0x{root:x}: weights not exported ({exc})")
        return target.provenance.get("torch"), context, None
    execution = torch_process.execution_context()
    context.update(torch_version=execution.torch_version, packages=dict(execution.packages),
                   requirements=execution.requirements(), native_libraries=list(execution.native_libraries))
    if model is None:
        warnings.append(f"model at 0x{root:x}: no nn.Module there any more; weights not exported")
        return execution.torch_version, context, None
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
        return execution.torch_version, context, None
    return execution.torch_version, context, (torch_process, readable)


# -- the object state (objects.json, state.safetensors) ---------------------------------------------
def _object_state(python: PythonProcess, parts: Optional[tuple], root: int, target: UnifiedRepresentation, base: UnifiedRepresentation,
                  model_diff: ModelDiff,
                  code: "_CodeMembers", members: Dict[str, bytes], warnings: List[str]) -> None:
    """objects.json: the model's object graph, the classes and functions to inject (with the module
    globals their code reads) and the functions to patch; state.safetensors: the tensors that are not
    in the state_dict.  Unchanged methods of the classes to inject are shipped as ``carried`` code."""
    from ..readers.torch import export
    from ..readers.cpython.state import OBJECTS_SCHEMA_VERSION, StateReader, referenced_classes
    from ..readers.torch.state import TorchValues

    torch_process, model = parts if parts else (None, None)
    weight_names: Dict[int, str] = {}
    for t in model.state_dict_tensors() if model else ():
        weight_names.setdefault(t.info.address, t.name)
    torch_values = TorchValues(torch_process, weight_names) if torch_process is not None else None
    reader = StateReader(python, torch_values)
    features_by_address = {c.address: c for c in target.pr.code if c.address}
    classes = {c.key: c for c in target.pr.classes}
    inject_keys = [c.key for c in model_diff.added_classes] + sorted(model_diff.renamed_classes)
    local_modules = {classes[k].module for k in inject_keys if k in classes}
    added = {c.function_id: c for c in target.pr.code if c.function_id in set(model_diff.added_functions)}
    local_modules |= {f.module for f in added.values()}
    # Modules of injected classes that the base has too (an added class in a base module) stay the base's.
    local_modules -= {c.module for c in base.pr.classes}
    reader.local_modules = set(local_modules)
    try:
        root_ref = reader.encode(root, "")
    except DECODE_ERRORS as exc:
        warnings.append(f"model at 0x{root:x}: object state unreadable ({exc}); the bundle cannot rebuild it")
        return

    def shipped(entry: Dict[str, Any], reason: str) -> None:
        """Replaces the entry's code address by the function_id of shipped code (carried if need be)."""
        address = entry.pop("code")
        entry["function_id"] = code.carry(address, features_by_address.get(address), entry.get("module"), reason)
        for slot in ("fset", "fdel"):
            if slot in entry:
                shipped(entry[slot], reason)

    class_entries: Dict[int, Optional[Dict[str, Any]]] = {}

    def inject(addresses) -> None:
        """Class entries (with their methods' code shipped) for the classes to inject."""
        for address in addresses:
            if address in class_entries:
                continue
            try:
                entry = reader.class_entry(address)
            except DECODE_ERRORS as exc:
                warnings.append(f"class at 0x{address:x}: namespace unreadable ({exc}); not injected")
                class_entries[address] = None
                continue
            for method in entry["methods"].values():
                shipped(method, f"{entry['module']}.{entry['qualname']}")
            class_entries[address] = entry

    inject(classes[k].address for k in inject_keys if k in classes and classes[k].address)
    functions, patched = _functions_to_ship(reader, target, model_diff, classes, class_entries, shipped)
    # Functions the object state describes in full (decorators' wrappers, dataclass methods) need their
    # code shipped; the module globals the shipped code reads can name more of those, or more classes
    # of the modules to create (a helper class of the derivative's file): until nothing is new.
    while True:
        inject(a for a in referenced_classes(reader, local_modules) if a not in class_entries)
        for entry in list(reader.objects.values()):
            if entry.get("kind") == "function" and "code" in entry:
                shipped(entry, entry.get("path") or "a function in the object state")
        module_globals = _globals_read(reader, code, warnings)
        if all(a in class_entries for a in referenced_classes(reader, local_modules)) and not any(
                e.get("kind") == "function" and "code" in e for e in reader.objects.values()):
            break

    document = {
        "format": "zen-object-state", "schema": OBJECTS_SCHEMA_VERSION, "root": root_ref,
        "objects": reader.objects, "classes": _bases_first([e for e in class_entries.values() if e]),
        "functions": functions, "patched": patched, "globals": module_globals,
        "local_modules": sorted(m for m in local_modules if m), "warnings": list(reader.warnings),
    }
    warnings.extend(reader.warnings)
    members["objects.json"] = _json(document)
    if torch_values is not None and torch_values.tensor_table:
        members["state.safetensors"] = export.safetensors_of(torch_values.tensor_table, torch_process.tensors.read_bytes,
                                                             {"content": "tensors outside the state_dict"})


def _functions_to_ship(reader, target: UnifiedRepresentation, model_diff: ModelDiff, classes: Dict[str, Any],
                       class_entries: Dict[int, Any], shipped) -> Tuple[List[dict], List[dict]]:
    """(module-level functions to inject, functions to patch) for the diff's changed and added code
    that is not a method of an injected class."""
    functions, patched = [], []
    features = {f.function_id: f for f in target.pr.code}
    for change in model_diff.changes:
        feature = features.get(change.function_id)
        if change.kind not in ("changed", "added") or feature is None or feature.kind in _NESTED_KINDS:
            continue
        located = _function_object(reader, feature, classes)
        if located is None:
            continue
        func_addr, wrapper, owner_addr, attr = located
        if owner_addr in class_entries:
            continue  # injected with its class
        if not owner_addr and change.kind == "added":
            reader.inline_functions.add(func_addr)
            functions.append({"module": feature.module, "attr": attr, "value": reader.encode(func_addr, attr)})
            continue
        entry = reader.function_entry(func_addr, wrapper, owner_addr)
        shipped(entry, feature.function_id)
        entry["attr"] = attr
        if owner_addr:
            entry["owner"] = reader.class_ref(owner_addr)
        patched.append(entry)
    return functions, patched


def _globals_read(reader, code: "_CodeMembers", warnings: List[str]) -> Dict[str, Dict[str, Any]]:
    """module -> the globals the shipped code of that module reads (co_names of it and its nested
    code that the module defines), encoded."""
    names_by_module: Dict[str, set] = {}
    for entry in code.entries:
        if entry["module"]:
            names = names_by_module.setdefault(entry["module"], set())
            pending = [entry["address"]]
            while pending:
                co = code.resolve(pending.pop())
                names.update(co.names)
                pending.extend(nested_code(co.consts))
    out = {}
    for module, names in sorted(names_by_module.items()):
        try:
            out[module] = reader.module_globals(module, names)
        except DECODE_ERRORS as exc:
            warnings.append(f"module {module}: globals unreadable ({exc})")
    return out


def _function_object(reader, feature: CodeFeature, classes: Dict[str, Any]) -> Optional[Tuple[int, str, int, str]]:
    """(function address, wrapper kind, owning class address or 0, attribute name) of the function
    object whose code is the feature's: looked up in its class's namespace or its module's globals."""
    py, o = reader.py, reader.o
    owner = classes.get(feature.owner_class) if feature.owner_class else None
    try:
        if owner and owner.address:
            namespace = o.str_dict(o.u64(owner.address + o.off_tp_dict))
            scope = owner.address
        else:
            module_addr = reader.modules().get(feature.module)
            if not module_addr:
                return None
            namespace = o.str_dict(o.u64(module_addr + o.off_md_dict))
            scope = 0
        for attr, value in namespace.items():
            func = py.method_function(value)
            if func and py.function_pointers(func)["func_code"] == feature.address:
                return func, o.base_kind(value), scope, attr
    except DECODE_ERRORS:
        return None
    return None


def _bases_first(entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Classes ordered so that each comes after the injected classes it derives from."""
    by_key = {(e["module"], e["qualname"]): e for e in entries}
    ordered, done = [], set()

    def visit(key, trail=()):
        if key in done or key not in by_key or key in trail:
            return
        for base in by_key[key]["bases"]:
            visit((base["module"], base["qualname"]), trail + (key,))
        done.add(key)
        ordered.append(by_key[key])

    for key in sorted(by_key, key=lambda k: (k[0] or "", k[1])):
        visit(key)
    return ordered
