"""Checks every shipped ISF table gets, whatever it describes (tests/test_cpython_isf.py and
tests/test_torch_layout.py): Volatility's schema, self-containment, Volatility's own reading agreeing
with the zen loader (volatility3_zen.zenlib.readers.isf), and byte-reproducible regeneration."""

import copy
import functools
import importlib.util
import json
import os
import subprocess
import sys
from typing import Iterable, Iterator, Sequence, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def read_json(path: str) -> dict:
    """A shipped table, parsed once per test session (shared: do not modify it)."""
    with open(path) as fh:
        return json.load(fh)


# -- Volatility's schema -------------------------------------------------------------------------------

def volatility_schema() -> dict:
    """Volatility's own ISF 6.2.0 schema (draft-4 style: it uses ``id``)."""
    package = importlib.util.find_spec("volatility3").submodule_search_locations[0]
    with open(os.path.join(package, "schemas", "schema-6.2.0.json")) as fh:
        return json.load(fh)


def assert_valid_isf(isf: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    assert isf["metadata"]["format"] == "6.2.0"
    jsonschema.Draft4Validator(volatility_schema()).validate(isf)


def assert_schema_rejects_a_field_without_offset(isf: dict, struct: str, field: str) -> None:
    """The validation is not vacuous: a copy lacking one field offset fails it."""
    jsonschema = pytest.importorskip("jsonschema")
    broken = copy.deepcopy(isf)
    del broken["user_types"][struct]["fields"][field]["offset"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(volatility_schema()).validate(broken)


# -- Self-containment ------------------------------------------------------------------------------------

def referenced_names(descriptor: dict) -> Iterator[Tuple[str, str]]:
    """(section, name) of every type an ISF type descriptor names, nested ones included."""
    kind = descriptor["kind"]
    if kind in ("struct", "class", "union"):
        yield "user_types", descriptor["name"]
    elif kind == "enum":
        yield "enums", descriptor["name"]
    elif kind == "base":
        yield "base_types", descriptor["name"]
    for key in ("subtype", "type"):
        if key in descriptor:
            yield from referenced_names(descriptor[key])


def missing_references(isf: dict) -> Set[Tuple[str, str]]:
    """Types a field, symbol or enum names that the file does not define (none, in a good table)."""
    descriptors = [field["type"] for struct in isf["user_types"].values() for field in struct["fields"].values()]
    descriptors += [symbol["type"] for symbol in isf["symbols"].values() if "type" in symbol]
    missing = {(section, name) for d in descriptors for section, name in referenced_names(d)
               if name not in isf[section]}
    missing |= {("base_types", e["base"]) for e in isf["enums"].values() if e["base"] not in isf["base_types"]}
    return missing


# -- Volatility reading the same file ----------------------------------------------------------------

def volatility_context(table_name: str, path: str):
    """A Volatility context holding the ISF file ``path`` as symbol table ``table_name``."""
    pytest.importorskip("volatility3")
    from volatility3.framework import contexts
    from volatility3.framework.symbols import intermed

    ctx = contexts.Context()
    ctx.symbol_space.append(intermed.IntermediateSymbolTable(ctx, table_name, table_name, "file://" + path,
                                                             validate=False))
    return ctx


def assert_volatility_agrees_with_the_loader(ctx, table_name: str, struct_names: Iterable[str], layout) -> None:
    """Every struct size and member offset Volatility reads agrees with the zen loader's.  A member the
    loader lacks must be one it refuses as ambiguous (inherited from two C++ bases: Volatility keeps
    one of them, the loader refuses to guess)."""
    from volatility3_zen.zenlib.readers.isf import LayoutKeyError

    table = ctx.symbol_space[table_name]
    for name in struct_names:
        template = table.get_type(name)
        assert template.size == layout.size(name)
        for member, (offset, _) in template.vol.members.items():
            if layout.has(name, member):
                assert offset == layout.offset(name, member), (name, member)
            else:
                with pytest.raises(LayoutKeyError, match="ambiguous"):
                    layout.offset(name, member)


def buffer_object(ctx, type_name: str, data: bytes):
    """A Volatility object of ``type_name`` ("table!struct") decoded from ``data``."""
    from volatility3.framework.layers.physical import BufferDataLayer

    ctx.add_layer(BufferDataLayer(ctx, "layer", "memory", bytes(data)))
    return ctx.object(type_name, "memory", 0)


# -- The generators --------------------------------------------------------------------------------------

def assert_generator_reproduces(tool: str, arguments: Sequence[str], out_dir: str, shipped_dir: str,
                                names: Sequence[str]) -> None:
    """Running ``tools/<tool>`` into ``out_dir`` writes each of ``names`` with the shipped bytes."""
    subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *arguments, "--out", str(out_dir)],
                   check=True, capture_output=True, timeout=600)
    for name in names:
        with open(os.path.join(out_dir, name), "rb") as fresh, open(os.path.join(shipped_dir, name), "rb") as shipped:
            assert fresh.read() == shipped.read(), name
