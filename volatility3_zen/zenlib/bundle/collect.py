"""The reader side of a patch bundle: what the bundle carries that only the live process holds.

``collect`` works on the process the session already opened (``vol.session.FoundModel``) and returns
``BundleContents``, plain data: the changed and added code objects serialised with ``marshal_writer``
for the image's CPython version (the fingerprint's walk already read them; code it did not reach is
read here), the added classes' simple attributes, the weights (safetensors), the model description,
the execution context and the object state a rebuild needs.  ``bundle.write`` turns that, the UR, the
attribution and the diff into the zip; nothing here decides what changed (``analysis.diff`` did).
"""

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..analysis.diff import ModelDiff
from ..errors import ZenError
from ..readers.cpython import code_index, disassemble, marshal_writer
from ..readers.cpython.objects import DECODE_ERRORS
from ..readers.cpython.layouts import minor_version
from ..readers.cpython.recover import PythonProcess
from ..readers.cpython.state import OBJECTS_SCHEMA_VERSION, StateReader
from ..readers.torch import export
from ..readers.torch.model import TorchProcess
from ..readers.torch.state import TorchValues
from ..representation.model import RecoveredModel, encode_value
from ..representation.program import CodeObject, encode_const, nested_code
from ..representation.unified import CodeFeature, UnifiedRepresentation
from .contents import BundleContents

_NESTED_KINDS = ("nested", "lambda", "comprehension", "class-body")  # made at run time by their parent
_VALUE_DEPTH = 8  # how deep a class attribute's containers are decoded
_VALUE_OBJECTS = 100_000  # how many objects the simple attributes of one class may hold in all


def collect(found, base: UnifiedRepresentation, model_diff: ModelDiff) -> BundleContents:
    """The process-side contents of the bundle of ``found`` (a ``vol.session.FoundModel``: target,
    opened process, torch and fingerprint) against the winning ``base`` and the diff.  Reading errors
    are warnings at the part they spoil; one that spoils the whole is a ZenError."""
    try:
        return _collect(found, base, model_diff)
    except DECODE_ERRORS as exc:
        if isinstance(exc, ZenError):
            raise
        raise ZenError(f"bundle contents unreadable ({type(exc).__name__}: {exc})") from exc


def _collect(found, base: UnifiedRepresentation, model_diff: ModelDiff) -> BundleContents:
    python: PythonProcess = found.python
    target = found.ur
    root = found.root
    warnings: List[str] = []
    code = _CodeMembers(python, minor_version(python.runtime.version), warnings, found.fingerprint.code_objects)
    code.add_changes(target, model_diff)
    class_attributes = _added_class_attributes(python, target, model_diff, warnings)
    parts = _torch_parts(python, found.torch, root, target, warnings)
    contents = BundleContents(found.target.pid, root, python.runtime.version, parts.torch_version, {}, {},
                              class_attributes, parts.context, model=parts.description, weights=parts.weights,
                              warnings=warnings)
    if parts.readable is not None or target.mr is None:  # plain-Python models have an object state too
        state = _ObjectState(python, found.torch, parts.readable, code, warnings)
        state.collect(root, target, base, model_diff)
        contents.objects, contents.state = state.document, state.tensors
    contents.code = code.index(target)
    contents.code_files = code.files
    return contents


# -- code objects -----------------------------------------------------------------------------------
class _CodeMembers:
    """code/<n>.marshal and code/<n>.txt for each changed and added code object, and their index
    (which keeps growing as the object state ``carry``-s unchanged code the rebuild needs)."""

    def __init__(self, python: PythonProcess, version: Tuple[int, int], warnings: List[str],
                 already_read: Dict[int, CodeObject]):
        self.py = python
        self.version = version
        self.warnings = warnings
        self.files: Dict[str, bytes] = {}
        self._read: Dict[int, CodeObject] = dict(already_read)
        self.entries: List[Dict[str, Any]] = []
        self.skipped: List[Dict[str, Any]] = []
        self.by_address: Dict[int, str] = {}  # code address -> function_id of a shipped entry

    def resolve(self, address: int) -> CodeObject:
        # Nested code comes with its parent (marshal embeds it in the parent's consts).
        if address not in self._read:
            self._read[address] = self.py.code_reader.read(address)
        return self._read[address]

    def add_changes(self, target: UnifiedRepresentation, model_diff: ModelDiff) -> None:
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

    def index(self, target: UnifiedRepresentation) -> Dict[str, Any]:
        """code.json."""
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

    def names_read(self) -> Dict[str, set]:
        """module -> the global names the shipped code of that module (and its nested code) reads."""
        names_by_module: Dict[str, set] = {}
        for entry in self.entries:
            if entry["module"]:
                names = names_by_module.setdefault(entry["module"], set())
                pending, seen = [entry["address"]], set()
                while pending:
                    address = pending.pop()
                    if address in seen:  # smeared consts can make code hold itself
                        continue
                    seen.add(address)
                    co = self.resolve(address)
                    names.update(co.names)
                    pending.extend(nested_code(co.consts))
        return names_by_module

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
        function_id = feature.function_id if feature else code_index.function_id(module, code.qualname, code, self.version)
        stem = f"code/{len(self.entries)}"
        self.files[stem + ".marshal"] = data
        self.files[stem + ".txt"] = self._text(function_id, feature, code).encode("utf-8", "surrogateescape")
        self.entries.append({
            "function_id": function_id, "module": feature.module if feature else module,
            "qualname": code.qualname, "owner_class": feature.owner_class if feature else None,
            "code_kind": feature.kind if feature else "method", **change,
            "address": address, "nested": feature.nested if feature else [],
            "attributes": _code_attributes(code), "marshal": stem + ".marshal", "text": stem + ".txt",
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


def _code_attributes(code: CodeObject) -> Dict[str, Any]:
    return {
        "name": code.name, "qualname": code.qualname, "filename": code.filename, "firstlineno": code.firstlineno,
        "argcount": code.argcount, "posonlyargcount": code.posonlyargcount, "kwonlyargcount": code.kwonlyargcount,
        "nlocals": code.nlocals, "stacksize": code.stacksize, "flags": code.flags, "names": list(code.names),
        "varnames": list(code.varnames), "freevars": list(code.freevars), "cellvars": list(code.cellvars),
        "consts": [encode_const(c) for c in code.consts], "co_code_sha256": hashlib.sha256(code.code).hexdigest(),
        "bytecode_size": len(code.code),
    }


# -- added classes ------------------------------------------------------------------------------------
def _added_class_attributes(python: PythonProcess, target: UnifiedRepresentation, model_diff: ModelDiff,
                            warnings: List[str]) -> Dict[str, Dict[str, Any]]:
    """Added class key -> the simple attributes of its namespace (classes read without error only)."""
    addresses = {c.key: c.address for c in target.pr.classes}
    out = {}
    for cls in model_diff.added_classes:
        address = addresses.get(cls.key)
        if address:
            try:
                out[cls.key] = class_attributes(python, address, warnings, cls.key)
            except DECODE_ERRORS as exc:
                warnings.append(f"class {cls.key}: attributes unreadable ({exc})")
    return out


def class_attributes(python: PythonProcess, address: int, warnings: Optional[List[str]] = None,
                     label: str = "") -> Dict[str, Any]:
    """Public data attributes of a class's own namespace, where they are simple values (the encoded
    form of ``representation.model.encode_value``); methods, descriptors and objects are left out.
    A container that contains itself is not a simple value; the walk of one class is bounded by
    ``_VALUE_DEPTH`` and by ``_VALUE_OBJECTS`` objects in all (past it, attributes are left out)."""
    out = {}
    walk = {"open": set(), "left": _VALUE_OBJECTS}
    for name, value in sorted(python.objects.type_namespace(address).items()):
        if name.startswith("__") and name.endswith("__") or python.method_function(value):
            continue
        encoded = _simple_value(python, value, 0, walk)
        if encoded is not None:
            out[name] = encoded
    if walk["left"] <= 0 and warnings is not None:
        warnings.append(f"class {label or hex(address)}: the walk of its attributes stopped at its budget of "
                        f"{_VALUE_OBJECTS:,} objects; attributes it had not reached are left out (a partial result)")
    return out


def _simple_value(python: PythonProcess, obj: int, depth: int, walk: Dict[str, Any]) -> Optional[dict]:
    o = python.objects
    if depth > _VALUE_DEPTH or obj in walk["open"] or walk["left"] <= 0:
        return None
    walk["left"] -= 1
    try:
        kind = o.kind(obj)  # exact kinds only: a subclass of int (an enum member) is not a plain value
        if kind in ("list", "tuple", "dict"):
            walk["open"].add(obj)
            try:
                return _simple_container(python, obj, kind, depth, walk)
            finally:
                walk["open"].discard(obj)
        if kind in ("str", "bytes", "int", "bool", "float", "complex", "NoneType"):
            return encode_value(o.read_const(obj))
    except DECODE_ERRORS + (UnicodeDecodeError,):
        return None
    return None


def _simple_container(python: PythonProcess, obj: int, kind: str, depth: int, walk: Dict[str, Any]) -> Optional[dict]:
    """None at the first item that is not a simple value."""
    o = python.objects
    items = []
    if kind == "dict":
        for k, v in o.dict_items(obj):
            encoded = _simple_value(python, v, depth + 1, walk) if o.kind(k) == "str" else None
            if encoded is None:
                return None
            items.append([o.read_str(k), encoded])
        return {"t": "dict", "v": items}
    for item in (o.list_items(obj) if kind == "list" else o.tuple_items(obj)):
        encoded = _simple_value(python, item, depth + 1, walk)
        if encoded is None:
            return None
        items.append(encoded)
    return {"t": kind, "v": items}


# -- weights, model description, execution context ----------------------------------------------------
@dataclass
class _TorchParts:
    torch_version: Optional[str]
    context: Dict[str, Any]  # context.json
    description: Optional[Dict[str, Any]] = None  # model.json: the model as found, unreadable tensors included
    readable: Optional[RecoveredModel] = None  # the model with the tensors in weights.safetensors
    weights: Optional[bytes] = None  # weights.safetensors


def _torch_parts(python: PythonProcess, torch_process: Optional[TorchProcess], root: int,
                 target: UnifiedRepresentation, warnings: List[str]) -> _TorchParts:
    """The execution context, and for an nn.Module root its description and weights."""
    context = {"python_version": target.python_version, "python": python.runtime.version, "torch_version": None,
               "packages": {}, "requirements": [], "native_libraries": [],
               "model_packages": list(target.provenance.get("model_packages", []))}
    if target.mr is None:
        context["note"] = "a plain-Python model: no torch, no weights"
        return _TorchParts(None, context)
    try:
        model = next(iter(torch_process.models(read_bytes=True, addresses={root})), None)
    except DECODE_ERRORS as exc:
        warnings.append(f"model at 0x{root:x}: weights not exported ({exc})")
        return _TorchParts(target.provenance.get("torch"), context)
    execution = torch_process.execution_context(numerics=True)
    context.update(torch_version=execution.torch_version, packages=dict(execution.packages),
                   requirements=execution.requirements(), native_libraries=list(execution.native_libraries),
                   numerics=dataclasses.asdict(execution.numerics))
    parts = _TorchParts(execution.torch_version, context)
    if model is None:
        warnings.append(f"model at 0x{root:x}: no nn.Module there any more; weights not exported")
        return parts
    parts.description = model.to_json(execution)
    # A tensor whose bytes could not be read (its read left a warning) is left out, not the whole file.
    unreadable = [t.name for t in model.tensors if t.warning]
    if unreadable:
        warnings.append(f"{len(unreadable)} tensors unreadable, not in weights.safetensors: {', '.join(unreadable[:5])}")
    readable = dataclasses.replace(model, tensors=[t for t in model.tensors if not t.warning])
    try:
        parts.weights = export.safetensors_bytes(readable, torch_process.tensors.read_bytes)
    except DECODE_ERRORS as exc:
        warnings.append(f"model at 0x{root:x}: weights not exported ({exc})")
        return parts
    parts.readable = readable
    return parts


# -- the object state (objects.json, state.safetensors) ---------------------------------------------
class _ObjectState:
    """objects.json: the model's object graph, the classes and functions to inject (with the module
    globals their code reads) and the functions to patch; state.safetensors: the tensors that are not
    in the state_dict.  Unchanged methods of the classes to inject are shipped as ``carried`` code."""

    def __init__(self, python: PythonProcess, torch_process: Optional[TorchProcess], model: Optional[RecoveredModel],
                 code: _CodeMembers, warnings: List[str]):
        weight_names: Dict[int, str] = {}
        for t in model.state_dict_tensors() if model else ():
            weight_names.setdefault(t.info.address, t.name)
        self.torch_process = torch_process
        self.torch_values = TorchValues(torch_process, weight_names) if torch_process is not None else None
        self.python = python
        self.code = code
        self.warnings = warnings
        self.class_entries: Dict[int, Optional[Dict[str, Any]]] = {}  # class address -> entry (None: unreadable)
        self.reader: Optional[StateReader] = None
        self.document: Optional[Dict[str, Any]] = None
        self.tensors: Optional[bytes] = None
        self._features_by_address: Dict[int, CodeFeature] = {}

    def collect(self, root: int, target: UnifiedRepresentation, base: UnifiedRepresentation, model_diff: ModelDiff) -> None:
        self._features_by_address = {c.address: c for c in target.pr.code if c.address}
        classes = {c.key: c for c in target.pr.classes}
        inject_keys = [c.key for c in model_diff.added_classes] + sorted(model_diff.renamed_classes)
        local_modules = {classes[k].module for k in inject_keys if k in classes}
        added = {c.function_id: c for c in target.pr.code if c.function_id in set(model_diff.added_functions)}
        local_modules |= {f.module for f in added.values()}
        # Modules of injected classes that the base has too (an added class in a base module) stay the base's.
        local_modules -= {c.module for c in base.pr.classes}
        # The deployment's own modules (the script, files beside it, exec'd code) exist nowhere else:
        # everything of theirs the rebuild meets is described in full, and reuse makes them afresh.
        local_modules |= set(target.provenance.get("deployment_modules", ()))
        reader = self.reader = StateReader(self.python, self.torch_values, local_modules)
        try:
            root_ref = reader.encode(root, "")
        except DECODE_ERRORS as exc:
            self.warnings.append(f"model at 0x{root:x}: object state unreadable ({exc}); the bundle cannot rebuild it")
            return
        self._inject(classes[k].address for k in inject_keys if k in classes and classes[k].address)
        functions, patched = self._functions_to_ship(target, model_diff, classes)
        module_globals = self._complete()
        self.document = {
            "format": "zen-object-state", "schema": OBJECTS_SCHEMA_VERSION, "root": root_ref,
            "objects": reader.objects, "classes": _bases_first([e for e in self.class_entries.values() if e]),
            "functions": functions, "patched": patched, "globals": module_globals,
            "local_modules": sorted(m for m in local_modules if m), "warnings": list(reader.warnings),
        }
        self.warnings.extend(reader.warnings)
        if self.torch_values is not None and self.torch_values.tensor_table:
            self.tensors = export.safetensors_of(self.torch_values.tensor_table, self.torch_process.tensors.read_bytes,
                                                 {"content": "tensors outside the state_dict"})

    def _complete(self) -> Dict[str, Dict[str, Any]]:
        """Ships what the state found so far needs, to a fixpoint: functions the object state describes
        in full (decorators' wrappers, dataclass methods) need their code shipped; the module globals the
        shipped code reads can name more of those, or more classes of the modules to create (a helper
        class of the derivative's file).  Returns the globals the shipped code reads, by module."""
        module_globals = None
        while module_globals is None or self._pending():
            self._inject(self._classes_met_to_inject())
            for entry in self._functions_without_code():
                self._ship(entry, entry.get("path") or "a function in the object state")
            module_globals = self._globals_read()
        return module_globals

    def _pending(self) -> bool:
        return bool(self._classes_met_to_inject()) or bool(self._functions_without_code())

    def _classes_met_to_inject(self) -> List[int]:
        return [a for a in self.reader.classes_met(self.reader.local_modules) if a not in self.class_entries]

    def _functions_without_code(self) -> List[Dict[str, Any]]:
        return [e for e in list(self.reader.objects.values()) if e.get("kind") == "function" and "code" in e]

    def _ship(self, entry: Dict[str, Any], reason: str) -> None:
        """Replaces the entry's code address by the function_id of shipped code (carried if need be)."""
        address = entry.pop("code")
        entry["function_id"] = self.code.carry(address, self._features_by_address.get(address), entry.get("module"), reason)
        for slot in ("fset", "fdel"):
            if slot in entry:
                self._ship(entry[slot], reason)

    def _inject(self, addresses: Iterable[int]) -> None:
        """Class entries (with their methods' code shipped) for the classes to inject."""
        for address in addresses:
            if address in self.class_entries:
                continue
            try:
                entry = self.reader.class_entry(address)
            except DECODE_ERRORS as exc:
                self.warnings.append(f"class at 0x{address:x}: namespace unreadable ({exc}); not injected")
                self.class_entries[address] = None
                continue
            for method in entry["methods"].values():
                self._ship(method, f"{entry['module']}.{entry['qualname']}")
            self.class_entries[address] = entry

    def _functions_to_ship(self, target: UnifiedRepresentation, model_diff: ModelDiff,
                           classes: Dict[str, Any]) -> Tuple[List[dict], List[dict]]:
        """(module-level functions to inject, functions to patch) for the diff's changed and added code
        that is not a method of an injected class."""
        reader = self.reader
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
            if owner_addr in self.class_entries:
                continue  # injected with its class
            if not owner_addr and change.kind == "added":
                reader.describe_in_full(func_addr)
                functions.append({"module": feature.module, "attr": attr, "value": reader.encode(func_addr, attr)})
                continue
            entry = reader.function_entry(func_addr, wrapper, owner_addr)
            self._ship(entry, feature.function_id)
            entry["attr"] = attr
            if owner_addr:
                entry["owner"] = reader.class_ref(owner_addr)
            patched.append(entry)
        return functions, patched

    def _globals_read(self) -> Dict[str, Dict[str, Any]]:
        """module -> the globals the shipped code of that module reads, encoded."""
        out = {}
        for module, names in sorted(self.code.names_read().items()):
            try:
                out[module] = self.reader.module_globals(module, names)
            except DECODE_ERRORS as exc:
                self.warnings.append(f"module {module}: globals unreadable ({exc})")
        return out


def _function_object(reader: StateReader, feature: CodeFeature, classes: Dict[str, Any]) -> Optional[Tuple[int, str, int, str]]:
    """(function address, wrapper kind, owning class address or 0, attribute name) of the function
    object whose code is the feature's: looked up in its class's namespace or its module's globals."""
    py, o = reader.py, reader.o
    owner = classes.get(feature.owner_class) if feature.owner_class else None
    try:
        if owner and owner.address:
            namespace = o.type_namespace(owner.address)
            scope = owner.address
        else:
            module_addr = reader.modules().get(feature.module)
            if not module_addr:
                return None
            namespace = o.module_namespace(module_addr)
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
