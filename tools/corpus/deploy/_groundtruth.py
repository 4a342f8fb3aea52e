"""Ground truth that a deployed process writes about itself, right before it signals "ready".

Every deployment script imports this module and ends with ``write_and_wait(...)``.  The process
walks its own objects (functions, the code objects reachable from them, heap classes, modules and,
for torch deployments, its models), writes ``$ZEN_CORPUS_OUT/groundtruth/<pid>.json`` and then
``<pid>.ready``, and sleeps forever.  The memory image is taken while it sleeps, so what the file
says is exactly what memory holds.  The schema is documented in docs/corpus.md.

Constraints that shape this file:
- It runs unchanged under CPython 3.6 to 3.13: no syntax newer than 3.6, stdlib only (torch is
  imported only by torch deployments, which pass their models in).
- It runs under QEMU's emulated CPU, where Python is 10-20x slower: one pass over the objects,
  JSON streamed item by item (a 27k-code-object torch process never holds its whole document).
- It must not leave new Python functions behind after the snapshot: everything it needs is imported
  here, at module import, and the models (whose forward pass may run arbitrary torch code) are
  described *before* the snapshot of functions, classes and modules is taken.
- It never imports the project: the constant encoding duplicates ``encode_const`` of
  volatility3_zen/zenlib/representation/program.py, and tests/test_corpus.py checks both agree.
"""

import gc
import hashlib
import json
import os
import platform
import sys
import time
import types

SCHEMA_VERSION = 1
OUT_ENV = "ZEN_CORPUS_OUT"
DEPLOYMENT_ENV = "ZEN_CORPUS_DEPLOYMENT"

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE
_COMPACT = (",", ":")
_FunctionType = types.FunctionType
_CodeType = types.CodeType


def encode_const(value):
    """Tagged, exact JSON encoding of a code-object constant (same output as the project's)."""
    if value is None:
        return {"t": "None"}
    if value is Ellipsis:
        return {"t": "Ellipsis"}
    if isinstance(value, _CodeType):
        return {"t": "code", "addr": id(value)}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": value.hex()}
    if isinstance(value, complex):
        return {"t": "complex", "re": value.real.hex(), "im": value.imag.hex()}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, bytes):
        return {"t": "bytes", "v": value.hex()}
    if isinstance(value, tuple):
        return {"t": "tuple", "v": [encode_const(v) for v in value]}
    if isinstance(value, frozenset):
        items = [encode_const(v) for v in value]
        items.sort(key=_sort_key)
        return {"t": "frozenset", "v": items}
    raise TypeError("not a code constant: %s" % type(value).__name__)


def _sort_key(encoded):
    return json.dumps(encoded, sort_keys=True)


def encode_value(value):
    """``encode_const`` extended to lists and str-keyed dicts (module hyper-parameters).

    Returns None for anything that is not built from simple values, so callers can skip it.
    """
    if isinstance(value, list):
        items = [encode_value(v) for v in value]
        return None if None in items else {"t": "list", "v": items}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return None
        items = [[k, encode_value(v)] for k, v in value.items()]
        return None if any(v is None for _, v in items) else {"t": "dict", "v": items}
    if isinstance(value, tuple):
        items = [encode_value(v) for v in value]
        return None if None in items else {"t": "tuple", "v": items}
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return encode_const(value)
    return None


# --- Python objects ----------------------------------------------------------------------------


def _hex_attr(code, *names):
    """Hex of the first attribute in ``names`` the code object has, else ""."""
    for name in names:
        if hasattr(code, name):
            return getattr(code, name).hex()
    return ""


def describe_code(code):
    return {
        "addr": id(code),
        "name": code.co_name,
        "qualname": getattr(code, "co_qualname", None),
        "filename": code.co_filename,
        "firstlineno": code.co_firstlineno,
        "argcount": code.co_argcount,
        "posonlyargcount": getattr(code, "co_posonlyargcount", 0),
        "kwonlyargcount": code.co_kwonlyargcount,
        "nlocals": code.co_nlocals,
        "stacksize": code.co_stacksize,
        "flags": code.co_flags,
        "code": code.co_code.hex(),
        "consts": [encode_const(c) for c in code.co_consts],
        "names": list(code.co_names),
        "varnames": list(code.co_varnames),
        "cellvars": list(code.co_cellvars),
        "freevars": list(code.co_freevars),
        "linetable": _hex_attr(code, "co_linetable", "co_lnotab"),
        "exceptiontable": _hex_attr(code, "co_exceptiontable"),
    }


def reachable_code(functions):
    """Every code object of ``functions`` and, recursively, of their co_consts (deduplicated)."""
    seen = {}
    stack = [f.__code__ for f in functions]
    while stack:
        code = stack.pop()
        if id(code) in seen:
            continue
        seen[id(code)] = code
        stack.extend(c for c in code.co_consts if isinstance(c, _CodeType))
    return list(seen.values())


def describe_function(func):
    module = func.__module__
    return {
        "addr": id(func),
        "code": id(func.__code__),
        "name": func.__name__,
        "qualname": func.__qualname__,
        "module": module if isinstance(module, str) else None,
    }


def _method_function(value):
    """The Python function a class attribute stands for, or None (see the schema's ``methods``)."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    elif isinstance(value, property):
        value = value.fget
    return value if type(value) is _FunctionType else None


def describe_class(cls):
    module = cls.__dict__.get("__module__")
    methods = {}
    for name, value in list(cls.__dict__.items()):
        func = _method_function(value)
        if func is not None:
            methods[name] = id(func)
    return {
        "addr": id(cls),
        "name": cls.__name__,
        "qualname": cls.__qualname__,
        "module": module if isinstance(module, str) else None,
        "bases": [id(b) for b in cls.__bases__],
        "mro": [id(m) for m in cls.__mro__],
        "methods": methods,
    }


def describe_module(name, module):
    path = module.__dict__.get("__file__")  # never getattr: a module __getattr__ could run code
    return {"addr": id(module), "name": name, "file": path if isinstance(path, str) else None}


def describe_instance(obj, names):
    """One instance and the attributes the program says it has (read one by one: reading __dict__ or
    vars() would turn a 3.11+ values table into a dict and change what memory holds)."""
    attrs = {}
    for name in names:
        encoded = encode_value(getattr(obj, name))
        if encoded is None:
            raise TypeError("attribute %s of %r is not a simple value" % (name, type(obj)))
        attrs[name] = encoded
    return {"addr": id(obj), "class_qualname": type(obj).__qualname__, "attrs": attrs}


def snapshot():
    """Live functions, heap classes and modules, taken at one moment after a full collection."""
    gc.collect()
    functions, classes = [], []
    for obj in gc.get_objects():
        kind = type(obj)
        if kind is _FunctionType:
            functions.append(obj)
        elif issubclass(kind, type) and obj.__flags__ & _HEAPTYPE:
            classes.append(obj)
    modules = [(n, m) for n, m in list(sys.modules.items()) if issubclass(type(m), types.ModuleType)]
    return functions, classes, modules


# --- torch models ------------------------------------------------------------------------------


def _tensor_sha256(tensor):
    if tensor.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    import torch  # only torch deployments get here, and torch is imported by then

    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def _class_name(obj):
    cls = type(obj)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def describe_tensor(name, kind, tensor, persistent):
    return {
        "name": name,
        "kind": kind,
        "persistent": persistent,
        "shape": list(tensor.shape),
        "stride": list(tensor.stride()),
        "storage_offset": tensor.storage_offset(),
        "dtype": str(tensor.dtype),
        "device": str(tensor.device),
        "requires_grad": tensor.requires_grad,
        "numel": tensor.numel(),
        "nbytes": tensor.nbytes,
        "data_ptr": tensor.data_ptr(),
        "storage_data_ptr": tensor.untyped_storage().data_ptr(),
        "sha256": _tensor_sha256(tensor),
    }


def _hyperparameters(module):
    """Public instance attributes of simple kinds (ints, strs, tuples, ...), encoded."""
    found = {}
    for name, value in sorted(vars(module).items()):
        encoded = None if name.startswith("_") else encode_value(value)
        if encoded is not None:
            found[name] = encoded
    return found


def _hook_dicts(module):
    return sorted(
        name for name, value in vars(module).items() if "hooks" in name and isinstance(value, dict) and value
    )


def _model_output(model, input_spec):
    import torch

    torch.manual_seed(input_spec["seed"])
    sample = torch.randn(*input_spec["shape"], dtype=getattr(torch, input_spec["dtype"]))
    with torch.no_grad():
        output = model(sample)
    return output


def describe_model(model, input_spec):
    """Everything a test compares for one root nn.Module; input_spec = {shape, dtype, seed}."""
    output = _model_output(model, input_spec)
    state_keys = list(model.state_dict().keys())
    persistent = set(state_keys)
    tensors = [
        describe_tensor(n, "parameter", t, True) for n, t in model.named_parameters(remove_duplicate=False)
    ]
    tensors += [
        describe_tensor(n, "buffer", t, n in persistent) for n, t in model.named_buffers(remove_duplicate=False)
    ]
    named = list(model.named_modules())
    hooks = dict((n, _hook_dicts(m)) for n, m in named)
    return {
        "root_addr": id(model),
        "class": _class_name(model),
        "named_modules": [[n, _class_name(m), id(m)] for n, m in named],
        "hyperparameters": {n: _hyperparameters(m) for n, m in named},
        "tensors": tensors,
        "state_dict_keys": state_keys,
        "input": dict(input_spec),
        "output_shape": list(output.shape),
        "output_sha256": _tensor_sha256(output),
        "hooks": dict((n, names) for n, names in hooks.items() if names),
    }


# --- writing -----------------------------------------------------------------------------------


def _write_document(out, header, sections):
    """Streams ``{**header, name: [items...], ...}`` as compact JSON, one item at a time."""
    out.write(json.dumps(header, separators=_COMPACT)[:-1])
    for name, items in sections:
        out.write(",%s:[" % json.dumps(name))
        separator = ""
        for item in items:
            out.write(separator)
            out.write(json.dumps(item, separators=_COMPACT))
            separator = ","
        out.write("]")
    out.write("}")


def write_ground_truth(scenario, models=(), instances=()):
    """Writes <out>/groundtruth/<pid>.json (atomically) and returns its path.

    ``models`` is a sequence of (root nn.Module, input_spec) pairs; they are described first, so
    whatever torch runs for the forward pass is already in place when the snapshot is taken.
    ``instances`` is a sequence of (object, attribute names) pairs, written as the optional
    ``instances`` section.
    """
    out_dir = os.path.join(os.environ[OUT_ENV], "groundtruth")
    pid = os.getpid()
    header = {
        "schema": SCHEMA_VERSION,
        "pid": pid,
        "executable": sys.executable,
        "python_version": platform.python_version(),
        "hexversion": sys.hexversion,
        "deployment": os.environ.get(DEPLOYMENT_ENV),
        "scenario": scenario,
    }
    model_docs = [describe_model(m, spec) for m, spec in models]
    if models:
        import torch

        header["torch_version"] = str(torch.__version__)
    functions, classes, modules = snapshot()
    sections = [
        ("modules", (describe_module(n, m) for n, m in modules)),
        ("classes", (describe_class(c) for c in classes)),
        ("functions", (describe_function(f) for f in functions)),
        ("code_objects", (describe_code(c) for c in reachable_code(functions))),
    ]
    if models:
        sections.append(("models", model_docs))
    if instances:
        sections.append(("instances", (describe_instance(obj, names) for obj, names in instances)))
    path = os.path.join(out_dir, "%d.json" % pid)
    with open(path + ".tmp", "w") as out:
        _write_document(out, header, sections)
    os.rename(path + ".tmp", path)
    return path


def signal_ready_and_wait(path):
    """Creates <pid>.ready next to the ground truth, then sleeps until the process is killed."""
    with open(path[: -len(".json")] + ".ready", "w"):
        pass
    while True:
        time.sleep(3600)


def write_and_wait(scenario, models=(), instances=()):
    signal_ready_and_wait(write_ground_truth(scenario, models, instances))
