"""dumps_code / pyc_bytes against the real interpreters: compile a sample in CPython 3.7-3.13, rebuild
each code object as a recovered CodeObject, marshal it for that version and load it back there.

Needs the pyenv interpreters (``$PYENV_ROOT/versions/3.X.*``); a version that is not installed is skipped.
``compiled_sample`` and ``target_python`` are shared with tests/test_disassemble.py.
"""

import dataclasses
import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from volatility3_zen.zenlib.readers.cpython import marshal_writer
from volatility3_zen.zenlib.readers.cpython.marshal_writer import CODE_FIELDS, PYC_MAGIC, dumps_code, pyc_bytes
from volatility3_zen.zenlib.errors import CorruptObjectError, UnsupportedVersionError
from volatility3_zen.zenlib.representation import program
from volatility3_zen.zenlib.representation.program import CodeObject, CodeRef, decode_const

VERSIONS = sorted(CODE_FIELDS)
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SAMPLE_FILENAME = "zen_sample.py"

SAMPLE_SOURCE = '''\
"""A module with every kind of code object and constant that marshal writes."""
import asyncio
import contextlib

BIG = 123456789012345678901234567890
NEG_BIG = -98765432109876543210
EDGE = (2 ** 31 - 1, -2 ** 31, 2 ** 31, -2 ** 31 - 1, 2 ** 63, 1 << 15, 1 << 30, -(1 << 45))
FLOATS = (0.1, -0.0, 1e308, 1e999, -1e999)
MISC = (1 + 2j, -3.5j, b"\\x00bytes\\xff", Ellipsis, None, True, False, "caf\\u00e9 \\u2603 \\U0001f40d", "")
LONG_TEXT = "x" * 300
LONG_NAME_LIKE = "y" * 300
MANY = tuple(range(300))
SQUARES = [n * n for n in range(4)]  # 3.12+: n is a hidden fast local of the module code


def member(x):
    return x in {"a", "b", "c"} or x in {1, 2, 3} or x in {1.5, b"z"}


def closure_maker(start, *args, step=1, **kwargs):
    total = start

    def add(n):
        nonlocal total
        total += n * step
        return total

    return add, args, kwargs


def cell_arg(x, y):
    return lambda: x + y


def outer(a):
    def middle():  # both a free and a cell variable
        b = a

        def inner():
            return a + b

        return inner

    return middle


def generator(n):
    for i in range(n):
        try:
            yield i * 2
        except ValueError:
            yield -1
        finally:
            pass


async def coroutine(xs):
    await asyncio.sleep(0)
    return [x async for x in agen(xs)]


async def agen(xs):
    for x in xs:
        yield x


def comprehensions(xs):
    x = "outer"
    squares = [x * x for x in xs]
    table = {x: str(x) for x in xs if x % 2}
    uniq = {x % 3 for x in xs}
    gen = sum(x for x in xs)
    return x, squares, table, uniq, gen


class Shape:
    sides = 0
    corners = [corner for corner in "abc"]

    def __init__(self, name):
        self.name = name

    def describe(self):
        return f"{self.name} with {self.sides} sides"

    @property
    def kind(self):
        return type(self).__name__

    class Inner:
        def method(self):
            return __class__


class Square(Shape):
    sides = 4

    def describe(self):
        return "square: " + super().describe()


def handle(value):
    try:
        result = 10 // value
    except ZeroDivisionError as exc:
        result = str(exc)
    except (TypeError, ValueError):
        result = None
    else:
        result = result + 1
    finally:
        value = None
    with contextlib.suppress(KeyError):
        {}["missing"]
    return result


def main():
    print(BIG, NEG_BIG, EDGE, FLOATS, MISC, len(LONG_TEXT + LONG_NAME_LIKE), sum(MANY))
    print(member("a"), member(2), member(b"z"), member(9))
    add, args, kwargs = closure_maker(1, 2, 3, step=2, k="v")
    print(add(5), add(1), args, kwargs)
    print(cell_arg(3, 4)(), outer(5)()())
    print(list(generator(3)))
    print(asyncio.run(coroutine([1, 2, 3])))
    print(comprehensions([1, 2, 3]), SQUARES, Shape.corners)
    print(Square("sq").describe(), Shape("tri").kind, Shape.Inner().method().__name__)
    print(handle(0), handle(5), handle("x"))
'''

# Syntax that 3.7 cannot compile.
SAMPLE_SOURCE_38 = '''

def positional_only(a, b=2, /, c=3, *, d, e=5):
    return (a, b, c, d, e)


def walrus(xs):
    return [y for x in xs if (y := x * 2) > 2]


def main38():
    print(positional_only(1, d=4), walrus([1, 2, 3]))
'''

# Runs in the target interpreter: compiles stdin and prints every code object's fields as JSON,
# constants in program.py's tagged encoding (program.py is loaded from its path: the project itself
# need not import there), plus marshal.dumps of the module code for the byte-level comparison.
DUMPER = r'''
import importlib.util, json, marshal, sys, types

spec = importlib.util.spec_from_file_location("zen_program", sys.argv[1])
program = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = program
spec.loader.exec_module(program)

def as_const(value):
    if isinstance(value, types.CodeType):
        return program.CodeRef(id(value))
    if isinstance(value, tuple):
        return tuple(as_const(v) for v in value)
    if isinstance(value, frozenset):
        return frozenset(as_const(v) for v in value)
    return value

def record(co):
    return {
        "address": id(co), "name": co.co_name, "qualname": getattr(co, "co_qualname", None),
        "filename": co.co_filename, "firstlineno": co.co_firstlineno, "argcount": co.co_argcount,
        "posonlyargcount": getattr(co, "co_posonlyargcount", 0), "kwonlyargcount": co.co_kwonlyargcount,
        "nlocals": co.co_nlocals, "stacksize": co.co_stacksize, "flags": co.co_flags,
        "code": co.co_code.hex(), "consts": [program.encode_const(as_const(c)) for c in co.co_consts],
        "names": co.co_names, "varnames": co.co_varnames, "cellvars": co.co_cellvars,
        "freevars": co.co_freevars,
        "linetable": (co.co_linetable if sys.version_info >= (3, 10) else co.co_lnotab).hex(),
        "exceptiontable": getattr(co, "co_exceptiontable", b"").hex(),
    }

def walk(co, out):
    out.append(record(co))
    for const in co.co_consts:
        if isinstance(const, types.CodeType):
            walk(const, out)
    return out

root = compile(sys.stdin.read(), sys.argv[2], "exec")
json.dump({"codes": walk(root, []), "marshal": marshal.dumps(root).hex()}, sys.stdout)
'''

# Runs in the target interpreter: loads our marshal bytes and compares them with a fresh compile of
# the source, field by field (recursively through code constants), and from 3.11 on also as
# marshal.dumps(version 2), which has no references and so compares everything marshal knows,
# localspluskinds included (before 3.11 set order would make that comparison flaky).
CHECKER = r'''
import json, marshal, sys, types

FIELDS = ["co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_nlocals", "co_stacksize",
          "co_flags", "co_code", "co_consts", "co_names", "co_varnames", "co_cellvars", "co_freevars",
          "co_filename", "co_name", "co_qualname", "co_firstlineno", "co_lnotab", "co_linetable",
          "co_exceptiontable"]

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, types.CodeType):
        return not differences(a, b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, frozenset):
        return sorted(map(repr, a)) == sorted(map(repr, b))
    if isinstance(a, (float, complex)):
        return repr(a) == repr(b)
    return a == b

def differences(original, ours):
    return [f for f in FIELDS if hasattr(original, f) and not same(getattr(original, f), getattr(ours, f))]

request = json.load(sys.stdin)
original = compile(request["source"], request["filename"], "exec")
ours = marshal.loads(bytes.fromhex(request["marshal"]))
bad = differences(original, ours)
if sys.version_info >= (3, 11) and marshal.dumps(original, 2) != marshal.dumps(ours, 2):
    bad.append("marshal.dumps(version 2)")
print(json.dumps(bad))
'''

# Runs in the target interpreter: imports the module from a .pyc alone, then from source, and runs
# both main()s; prints what each printed, as JSON.
RUNNER = r'''
import contextlib, importlib.machinery, importlib.util, io, json, sys

def run(loader_class, name, path):
    loader = loader_class(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        loader.exec_module(module)
        module.main()
        if hasattr(module, "main38"):
            module.main38()
    return out.getvalue()

pyc, source = sys.argv[1:3]
print(json.dumps([run(importlib.machinery.SourcelessFileLoader, "from_pyc", pyc),
                  run(importlib.machinery.SourceFileLoader, "from_source", source)]))
'''


@functools.lru_cache(maxsize=None)
def target_python(version: Tuple[int, int]) -> Optional[str]:
    """The newest installed pyenv release (``versions/3.X.Y``) of ``version``, or None."""
    found = []
    for python in PYENV_VERSIONS.glob("%d.%d.*/bin/python" % version):
        patch = python.parent.parent.name.split(".")[2]
        if patch.isdigit():
            found.append((int(patch), str(python)))
    return max(found)[1] if found else None


def require_python(version: Tuple[int, int]) -> str:
    python = target_python(version)
    if python is None:
        pytest.skip(f"CPython {version[0]}.{version[1]} is not installed under {PYENV_VERSIONS}")
    return python


def run_in_target(version: Tuple[int, int], script: str, *args: str, stdin: str = "") -> str:
    result = subprocess.run(
        [require_python(version), "-I", "-c", script, *args],
        input=stdin, capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def sample_source(version: Tuple[int, int]) -> str:
    return SAMPLE_SOURCE + (SAMPLE_SOURCE_38 if version >= (3, 8) else "")


@dataclasses.dataclass
class CompiledSample:
    """Code objects compiled by a target interpreter, as the recovery would represent them."""

    version: Tuple[int, int]
    source: str
    root: CodeObject
    codes: Dict[int, CodeObject]
    marshal: bytes  # marshal.dumps of the module code in the target

    def resolve(self, address: int) -> CodeObject:
        return self.codes[address]

    def function(self, name: str) -> CodeObject:
        return next(code for code in self.codes.values() if code.name == name)


def compiled_sample(version: Tuple[int, int], source: Optional[str] = None,
                    filename: str = SAMPLE_FILENAME) -> CompiledSample:
    source = sample_source(version) if source is None else source
    return _compiled(version, source, filename)


@functools.lru_cache(maxsize=None)
def _compiled(version: Tuple[int, int], source: str, filename: str) -> CompiledSample:
    dumped = json.loads(run_in_target(version, DUMPER, program.__file__, filename, stdin=source))
    data = bytes.fromhex(dumped["marshal"])
    codes = [_code_object(record) for record in dumped["codes"]]
    if version >= (3, 11):
        scan = MarshalScan(data, version)
        scan.object()
        for code, (names, kinds) in zip(codes, scan.localsplus):
            code.localsplusnames, code.localspluskinds = names, kinds
    return CompiledSample(version, source, codes[0], {code.address: code for code in codes}, data)


def _code_object(record: Dict[str, Any]) -> CodeObject:
    fields = dict(record)
    for name in ("code", "linetable", "exceptiontable"):
        fields[name] = bytes.fromhex(fields[name])
    for name in ("names", "varnames", "cellvars", "freevars"):
        fields[name] = tuple(fields[name])
    fields["consts"] = tuple(decode_const(c) for c in fields["consts"])
    return CodeObject(**fields)


class MarshalScan:
    """Reads marshal bytes of a version into (a) the same bytes with references expanded, FLAG_REF
    cleared and set elements sorted -- what our writer should produce -- and (b) each code
    object's 3.11+ localsplusnames/kinds in pre-order: Python code cannot see the kinds otherwise.
    """

    FLAG_REF = 0x80
    FIXED = {"N": 0, "F": 0, "T": 0, ".": 0, "i": 4, "g": 8, "y": 16}

    def __init__(self, data: bytes, version: Tuple[int, int]):
        self.data, self.pos, self.fields = data, 0, CODE_FIELDS[version]
        self.refs: List[Tuple[Any, bytes]] = []
        self.localsplus: List[Tuple[Tuple[str, ...], bytes]] = []

    def object(self) -> Tuple[Any, bytes]:
        """(value of strings, bytes and tuples, else None; the ref-free bytes)."""
        code = self.take(1)[0]
        kind = chr(code & ~self.FLAG_REF)
        if kind == "r":
            return self.refs[self.u32()]
        slot = len(self.refs)
        if code & self.FLAG_REF:
            self.refs.append((None, b""))
        value, body = self.body(kind)
        result = (value, kind.encode() + body)
        if code & self.FLAG_REF:
            self.refs[slot] = result
        return result

    def body(self, kind: str) -> Tuple[Any, bytes]:
        if kind in self.FIXED:
            return None, self.take(self.FIXED[kind])
        if kind == "l":
            size = self.take(4)
            return None, size + self.take(2 * abs(int.from_bytes(size, "little", signed=True)))
        if kind in "zZ":
            size = self.take(1)
            data = self.take(size[0])
            return data.decode("ascii"), size + data
        if kind in "sutaA":
            size = self.take(4)
            data = self.take(int.from_bytes(size, "little"))
            return (data if kind == "s" else data.decode("utf-8", "surrogatepass")), size + data
        if kind in "()<>[":
            size = self.take(1 if kind == ")" else 4)
            items = [self.object() for _ in range(int.from_bytes(size, "little"))]
            data = [b for _, b in items]
            if kind in "<>":  # before 3.11 the order follows string hashing, which varies by process
                data.sort()
            return tuple(v for v, _ in items), size + b"".join(data)
        if kind == "c":
            return None, self.code()
        raise AssertionError(f"unexpected marshal type {kind!r} at {self.pos - 1}")

    def code(self) -> bytes:
        slot = len(self.localsplus)
        self.localsplus.append(((), b""))
        out, values = b"", {}
        for name, kind in self.fields:
            if kind == "int":
                out += self.take(4)
            else:
                values[name], data = self.object()
                out += data
        if "localspluskinds" in values:
            self.localsplus[slot] = (values["localsplusnames"], values["localspluskinds"])
        return out

    def take(self, n: int) -> bytes:
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")


def loads_differences(sample: CompiledSample, data: bytes) -> List[str]:
    request = {"source": sample.source, "filename": SAMPLE_FILENAME, "marshal": data.hex()}
    return json.loads(run_in_target(sample.version, CHECKER, stdin=json.dumps(request)))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: "%d.%d" % v)
class TestAgainstTarget:
    def test_target_loads_identical_code(self, version):
        sample = compiled_sample(version)
        assert loads_differences(sample, dumps_code(sample.root, sample.resolve, version)) == []

    def test_bytes_equal_marshal_dumps_without_references(self, version):
        sample = compiled_sample(version)
        scan = MarshalScan(sample.marshal, version)
        _, expected = scan.object()
        assert scan.pos == len(sample.marshal)
        assert dumps_code(sample.root, sample.resolve, version) == expected

    def test_pyc_imports_and_runs_like_the_source(self, version, tmp_path):
        sample = compiled_sample(version)
        pyc = tmp_path / "zen_sample.pyc"
        pyc.write_bytes(pyc_bytes(sample.root, sample.resolve, version))
        source = tmp_path / "src" / SAMPLE_FILENAME
        source.parent.mkdir()
        source.write_text(sample.source)
        from_pyc, from_source = json.loads(run_in_target(version, RUNNER, str(pyc), str(source)))
        assert from_pyc == from_source and "square: sq with 4 sides" in from_pyc

    def test_magic_number_is_the_interpreters(self, version):
        magic = bytes.fromhex(run_in_target(version, "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"))
        sample = compiled_sample(version)
        assert pyc_bytes(sample.root, sample.resolve, version)[:4] == magic
        assert int.from_bytes(magic[:2], "little") == PYC_MAGIC[version]


@pytest.mark.parametrize("version", [v for v in VERSIONS if v >= (3, 11)], ids=lambda v: "%d.%d" % v)
def test_localsplus_derived_when_not_recovered(version):
    """Without the recovered table the derived one loads to the same varnames/cellvars/freevars;
    only the 3.12+ CO_FAST_HIDDEN marks of inlined comprehensions are lost."""
    sample = compiled_sample(version)
    stripped = {
        address: dataclasses.replace(code, localsplusnames=None, localspluskinds=None)
        for address, code in sample.codes.items()
    }
    data = dumps_code(stripped[sample.root.address], stripped.__getitem__, version)
    hidden = any(any(k & 0x10 for k in code.localspluskinds) for code in sample.codes.values())
    assert hidden == (version >= (3, 12))
    assert loads_differences(sample, data) == (["marshal.dumps(version 2)"] if hidden else [])


@pytest.mark.parametrize("version", [v for v in VERSIONS if v >= (3, 11)], ids=lambda v: "%d.%d" % v)
def test_derived_localsplus_matches_compiler_without_hidden(version):
    sample = compiled_sample(version)
    for code in sample.codes.values():
        recovered = (code.localsplusnames, bytes(k & ~0x10 for k in code.localspluskinds))
        derived = marshal_writer.localsplus(dataclasses.replace(code, localsplusnames=None), version)
        assert derived == recovered, code.qualname


@pytest.mark.parametrize("version", [v for v in VERSIONS if v >= (3, 11)], ids=lambda v: "%d.%d" % v)
def test_missing_qualname_falls_back_to_the_name(version):
    sample = compiled_sample(version)
    code = dataclasses.replace(sample.function("describe"), qualname=None)
    script = "import marshal, sys; c = marshal.loads(bytes.fromhex(sys.stdin.read())); print(c.co_qualname)"
    assert run_in_target(version, script, stdin=dumps_code(code, sample.resolve, version).hex()).strip() == "describe"


def _tiny_code(**changes) -> CodeObject:
    fields = dict(
        address=0x1000, name="f", qualname="f", filename="x.py", firstlineno=1, argcount=0,
        posonlyargcount=0, kwonlyargcount=0, nlocals=0, stacksize=1, flags=0, code=b"",
        consts=(None,), names=(), varnames=(), cellvars=(), freevars=(), linetable=b"", exceptiontable=b"",
    )
    fields.update(changes)
    return CodeObject(**fields)


def test_unsupported_version_is_refused():
    with pytest.raises(UnsupportedVersionError):
        dumps_code(_tiny_code(), {}.__getitem__, (3, 6))
    with pytest.raises(UnsupportedVersionError):
        pyc_bytes(_tiny_code(), {}.__getitem__, (3, 14))


def test_code_that_contains_itself_is_corrupt():
    code = _tiny_code(consts=(None, CodeRef(0x1000)))
    with pytest.raises(CorruptObjectError):
        dumps_code(code, {0x1000: code}.__getitem__, (3, 8))


def test_frozenset_order_does_not_depend_on_hashing():
    one = dumps_code(_tiny_code(consts=(frozenset({"b", "a", 1, 2.5}),)), {}.__getitem__, (3, 11))
    two = dumps_code(_tiny_code(consts=(frozenset({2.5, 1, "a", "b"}),)), {}.__getitem__, (3, 11))
    assert one == two
