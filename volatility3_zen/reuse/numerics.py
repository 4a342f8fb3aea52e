"""The deployment's numerics in the rebuild: apply what context.json recorded (docs/reuse.md, "Numerics"),
and compare the rebuilt model's output with a reference.

A rebuilt model reproduces the deployed output bit for bit only if it runs the same kernels with the
same number of threads.  The bundle records the process's numerics variables (each as its value or
as not set), torch's thread count and whether the process called ``torch.set_num_threads``, and the
CPU capability ATen chose.  Most of it is read once, when torch and its libraries load or first run
a kernel, so the environment is applied *before* torch is imported: the recorded variables are set,
those the process did not have are unset, ``ATEN_CPU_CAPABILITY`` names the recorded capability, and
``OMP_NUM_THREADS`` the recorded thread count where the process left it to its defaults.  After the
import, ``torch.set_num_threads`` where the process called it (or where the count still differs), and
a check of the capability.  Where torch was imported first, the environment is left alone and the
differences are warnings.
"""

import math
import os
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..zenlib.representation.model import CPU_CAPABILITIES, NUMERICS_VARIABLES
from .bundle import ReuseError


_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


@dataclass
class NumericsPlan:
    """What the rebuild sets up, from one bundle's context.json."""

    environ: Dict[str, Optional[str]] = field(default_factory=dict)  # name -> value; None: unset it
    threads: Optional[int] = None  # torch.get_num_threads() to reach
    set_num_threads: bool = False  # the process called torch.set_num_threads: call it too
    capability: Optional[str] = None  # "DEFAULT", "AVX2", "AVX512"
    notes: List[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.environ and self.threads is None and self.capability is None


def plan_numerics(context: Any) -> NumericsPlan:
    """The plan for a context.json document (anything malformed in it is left out, with a note)."""
    plan = NumericsPlan()
    numerics = context.get("numerics") if isinstance(context, dict) else None
    if not isinstance(numerics, dict):
        plan.notes.append("the bundle records no numerics (a plain-Python model, or written before they were read)")
        return plan
    environ = numerics.get("environ")
    if isinstance(environ, dict):
        for name in NUMERICS_VARIABLES:  # only these names, whatever else the document holds
            value = environ.get(name)
            if name in environ and (value is None or (isinstance(value, str) and "\0" not in value and len(value) < 4096)):
                plan.environ[name] = value
    else:
        plan.notes.append("the image's environment is unknown: variables left as they are here")
    capability = numerics.get("cpu_capability")
    if capability in CPU_CAPABILITIES:
        plan.capability = capability
        wanted = capability.lower()
        if plan.environ.get("ATEN_CPU_CAPABILITY") not in (None, wanted):
            plan.notes.append(f"the image's ATEN_CPU_CAPABILITY was {plan.environ['ATEN_CPU_CAPABILITY']!r}, but torch "
                              f"ran {capability} kernels: {capability} is used")
        plan.environ["ATEN_CPU_CAPABILITY"] = wanted
    else:
        plan.notes.append("the CPU capability of the image is unknown: torch chooses its own here")
    threads, called = numerics.get("torch_threads"), numerics.get("set_num_threads")
    if isinstance(called, int) and not isinstance(called, bool) and called > 0:
        plan.threads, plan.set_num_threads = called, True
    if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0:
        plan.threads = threads
        if not plan.set_num_threads:
            # Left to the defaults in the image (OMP_NUM_THREADS or MKL_NUM_THREADS at start, else the
            # machine's cores): the same count through the same path, OpenMP's and MKL's defaults,
            # without torch.set_num_threads (which also turns MKL's dynamic threads off).  A variable
            # that says otherwise was set after torch had started (ultralytics sets OMP_NUM_THREADS=1
            # on import): the count torch ran wins.
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                recorded = plan.environ.get(name)
                if name == "OMP_NUM_THREADS" or recorded is not None:
                    if recorded not in (None, str(threads)):
                        plan.notes.append(f"the image's {name}={recorded} was set after torch had started (it ran "
                                          f"{threads} threads): {name}={threads} is used")
                    plan.environ[name] = str(threads)
    elif plan.threads is None:
        plan.notes.append("torch's thread count in the image is unknown: left as it is here")
    return plan


def describe(plan: NumericsPlan) -> List[str]:
    """The plan in words, each a verb phrase (the dry run prints them after "would")."""
    out = []
    values = [f"{n}={v}" for n, v in plan.environ.items() if v is not None]
    unset = [n for n, v in plan.environ.items() if v is None]
    if values:
        out.append("set " + ", ".join(values))
    if unset:
        out.append("unset " + ", ".join(unset) + " (not set in the image)")
    if plan.threads is not None:
        out.append(f"run {plan.threads} torch threads" + (" (torch.set_num_threads, as the image did)"
                                                          if plan.set_num_threads else ""))
    if plan.capability:
        out.append(f"check that torch runs {plan.capability} kernels")
    return out


def apply_environment(plan: NumericsPlan, environ=None) -> Tuple[List[str], List[str]]:
    """Set and unset the plan's variables (before torch is imported).  (done, warnings): where torch
    is imported already, nothing is changed and the differences are warnings."""
    environ = os.environ if environ is None else environ
    changes = [(name, value) for name, value in plan.environ.items() if environ.get(name) != value]
    if not changes:
        return [], []
    words = ", ".join(f"{n}={v}" if v is not None else f"unset {n}" for n, v in changes)
    if "torch" in sys.modules:
        return [], [f"torch was imported before the bundle's numerics could be applied; its kernels and threads "
                    f"follow this environment, not the image's (set before importing torch: {words})"]
    for name, value in changes:
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return [f"environment {words}"], []


def apply_torch(plan: NumericsPlan) -> Tuple[List[str], List[str]]:
    """After torch is imported: the thread count, and a check of the CPU capability.  (done, warnings)"""
    done: List[str] = []
    warnings: List[str] = []
    if plan.threads is None and plan.capability is None:
        return done, warnings
    try:
        import torch
    except ImportError:
        return done, ["torch is not installed here: numerics not applied"]
    if plan.threads is not None:
        here = torch.get_num_threads()
        if plan.set_num_threads or here != plan.threads:
            torch.set_num_threads(plan.threads)
            done.append(f"torch.set_num_threads({plan.threads})" + ("" if plan.set_num_threads else f" (it had {here})"))
        else:
            done.append(f"torch threads {here}, as in the image")
    if plan.capability is not None:
        here = cpu_capability(torch)
        if here is None:
            warnings.append("this torch does not say which CPU capability it runs: not checked")
        elif here != plan.capability:
            warnings.append(f"torch runs {here} kernels here, the image ran {plan.capability}: outputs may differ "
                            "(a CPU without that instruction set, or torch imported before the environment was set)")
        else:
            done.append(f"CPU capability {here}, as in the image")
    return done, warnings


def cpu_capability(torch) -> Optional[str]:
    getter = getattr(getattr(getattr(torch, "backends", None), "cpu", None), "get_cpu_capability", None)
    getter = getter or getattr(torch._C, "_get_cpu_capability", None)
    try:
        return str(getter()).upper() if getter else None
    except Exception:  # noqa: BLE001 -- an odd build: the capability is only checked
        return None


# -- comparing outputs -------------------------------------------------------------------------------------
@dataclass
class Expected:
    values: List[float]
    shape: Optional[List[int]]
    float64: bool  # compare in float64 (a float64 reference); else as float32, like the corpus ground truth


def load_expected(path: str) -> Expected:
    """A reference output: ``.npy``, ``.safetensors`` (its only tensor, or ``output``), or JSON: a list
    of numbers or ``float.hex`` strings (nested lists give the shape), or an object with ``values_hex``
    or ``values`` and optionally ``shape`` (the corpus ground truth's ``custom_code.output``; a whole
    ground truth or custom_code section is looked into)."""
    try:
        if path.endswith(".npy"):
            import numpy

            array = numpy.load(path, allow_pickle=False)
            return Expected([float(v) for v in array.reshape(-1).tolist()], list(array.shape), array.dtype == numpy.float64)
        if path.endswith(".safetensors"):
            return _load_safetensors(path)
        import json

        with open(path) as handle:
            document = json.load(handle)
    except ReuseError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is one line for the investigator
        raise ReuseError(f"{path}: not a readable reference output ({type(exc).__name__}: {exc})") from None
    for key in ("custom_code", "output"):
        if isinstance(document, dict) and isinstance(document.get(key), dict):
            document = document[key]
    if isinstance(document, dict):
        shape = document.get("shape")
        values = document.get("values_hex", document.get("values"))
    else:
        shape, values = None, document
    if isinstance(values, list) and shape is None:
        shape, values = _nested_shape(values), _flatten(values)
    if not isinstance(values, list):
        raise ReuseError(f"{path}: no values (a list, or an object with values_hex or values)")
    try:
        floats = [float.fromhex(v) if isinstance(v, str) and "0x" in v.lower() else float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ReuseError(f"{path}: a value is not a number ({exc})") from None
    if shape is not None and (not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ReuseError(f"{path}: shape {shape!r} is not a list of sizes")
    return Expected(floats, shape, False)


def _load_safetensors(path: str) -> Expected:
    from .bundle import read_safetensors

    with open(path, "rb") as handle:
        tensors = read_safetensors(handle.read())
    if len(tensors) != 1 and "output" not in tensors:
        raise ReuseError(f"{path}: {len(tensors)} tensors and none named 'output'")
    tensor = tensors["output"] if "output" in tensors else next(iter(tensors.values()))
    import torch

    return Expected(tensor.double().reshape(-1).tolist(), list(tensor.shape), tensor.dtype == torch.float64)


def _nested_shape(values: list) -> Optional[List[int]]:
    shape = []
    level: Any = values
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
    return shape if len(shape) > 1 else None


def _flatten(values: list) -> list:
    out = []
    for v in values:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


@dataclass
class Comparison:
    identical: bool
    total: int
    differing: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    index: Optional[Tuple[int, ...]] = None  # where the largest absolute difference is
    got: Optional[float] = None
    wanted: Optional[float] = None
    shape_problem: Optional[str] = None

    def text(self) -> str:
        if self.shape_problem:
            return f"output differs: {self.shape_problem}"
        if self.identical:
            return f"output: identical ({self.total} values, bit for bit)"
        at = "[" + ", ".join(map(str, self.index or ())) + "]"
        return (f"output differs: max abs diff {_number(self.max_abs)}, max rel diff {_number(self.max_rel)} "
                f"(at index {at}: {self.got!r} here, {self.wanted!r} in the reference); "
                f"{self.differing} of {self.total} values differ")


def _number(value: float) -> str:
    return f"{value:.6g} ({value.hex()})" if math.isfinite(value) else str(value)


def compare_output(output, expected: Expected) -> Comparison:
    """The rebuilt output (a tensor) against the reference: identical bit for bit (as float32, like the
    corpus ground truth's values, or as float64 where both are float64), else the largest absolute
    and relative differences and where the former is."""
    import torch

    tensor = output.detach().cpu()
    as_float64 = expected.float64 and tensor.dtype == torch.float64
    values = (tensor.double() if as_float64 else tensor.float().double()).reshape(-1).tolist()
    return compare_values(values, list(tensor.shape), expected, as_float64)


def compare_values(got: List[float], shape: List[int], expected: Expected, as_float64: bool = False) -> Comparison:
    """``compare_output`` on plain values (``got`` flat, in ``shape``)."""
    if expected.shape is not None and list(expected.shape) != list(shape):
        return Comparison(False, len(got), shape_problem=f"shape {list(shape)} here, {list(expected.shape)} in the reference")
    if len(got) != len(expected.values):
        return Comparison(False, len(got), shape_problem=f"{len(got)} values here, {len(expected.values)} in the reference")
    wanted = list(expected.values) if as_float64 else [_float32(v) for v in expected.values]
    got = [float(v) for v in got] if as_float64 else [_float32(v) for v in got]
    if array("d", got).tobytes() == array("d", wanted).tobytes():
        return Comparison(True, len(got))
    result = Comparison(False, len(got))
    best = -1.0
    for flat, (a, b) in enumerate(zip(got, wanted)):
        if _bits(a) == _bits(b):
            continue
        result.differing += 1
        diff = abs(a - b)
        if math.isnan(diff):
            diff = math.inf  # a NaN on one side only
        rel = 0.0 if diff == 0 else (math.inf if b == 0 or math.isinf(b) else diff / abs(b))
        result.max_rel = max(result.max_rel, rel)
        if diff > best:
            best, result.max_abs, result.index, result.got, result.wanted = diff, diff, _unravel(flat, shape), a, b
    return result


def _float32(value: float) -> float:
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:  # beyond float32: what float() of such a float32 cast gives
        return math.copysign(math.inf, value)


def _bits(value: float) -> bytes:
    return _F64.pack(value)


def _unravel(flat: int, shape: Sequence[int]) -> Tuple[int, ...]:
    index = []
    for size in reversed(list(shape) or [flat + 1]):
        index.append(flat % size if size else 0)
        flat //= size if size else 1
    return tuple(reversed(index))
