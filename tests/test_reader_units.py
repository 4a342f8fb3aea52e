"""Unit tests of the pure parts of the readers and of the constant encoding they share; no image.

Covered: which modules the code walk treats as framework (``readers/cpython/reach.py``), and the
exact, JSON-safe encoding of code constants and hyper-parameters (``representation/program.py``,
``representation/model.py``) that ``readers/cpython/state.py`` writes objects.json with.  Everything
else in reach.py and state.py reads process memory (state.py has no function that does not) and is
tested on corpus images.
"""

import json
import math
import struct
import sys

import pytest

from volatility3_zen.zenlib.readers.cpython import reach
from volatility3_zen.zenlib.representation.model import encode_value, readable_value
from volatility3_zen.zenlib.representation.program import CodeRef, decode_const, encode_const, nested_code


# -- reach.py: where the walk stops ---------------------------------------------------------------------
@pytest.mark.parametrize("module, top", [("torch.nn.modules.conv", "torch"), ("ultralytics", "ultralytics"),
                                         ("", ""), (None, "")])
def test_top_package(module, top):
    assert reach.top_package(module) == top


@pytest.mark.parametrize("module", [
    "torch", "torch.nn.modules.conv", "numpy.linalg", "builtins", "_frozen_importlib_external",  # the framework
    "collections", "collections.abc", "os.path", "json.decoder", "typing", "enum",  # the standard library
    "_operator", "_collections_abc",  # private (C) modules
    "", None,  # no __module__: nothing to enter
])
def test_framework_modules_are_not_entered(module):
    assert reach.is_framework_module(module)


@pytest.mark.parametrize("module", ["ultralytics.nn.modules.conv", "nanogpt", "loralib.layers", "resnet",
                                    "torchvision.models.resnet", "numpyro", "timm"])
def test_model_packages_are_entered(module):
    """Third-party packages are model code, even when their name starts like a framework's."""
    assert not reach.is_framework_module(module)


def test_a_script_s_own_classes_are_model_code():
    assert not reach.is_framework_module("__main__")


@pytest.mark.parametrize("path, installed", [
    ("/usr/lib/python3/dist-packages/timm/models/resnet.py", True),
    ("/srv/venv/lib/python3.11/site-packages/nano_gpt/model.py", True),
    ("/srv/app/serve.py", False), ("/root/.cache/torch/hub/acme_main/hubconf.py", False), (None, False),
])
def test_installed_files_are_told_from_a_deployment_s_own(path, installed):
    assert reach.is_installed_file(path) is installed


def test_the_standard_library_list_is_the_running_interpreter_s():
    assert reach.STDLIB_PACKAGES == frozenset(sys.stdlib_module_names)
    assert {"torch", "numpy"} <= reach.FRAMEWORK_PACKAGES and not reach.FRAMEWORK_PACKAGES & {"torchvision", "timm"}


# -- program.py: constants survive JSON exactly ---------------------------------------------------------------
def through_json(value):
    return decode_const(json.loads(json.dumps(encode_const(value))))


def same(a, b) -> bool:
    """Equal and of the same type, all the way down; floats by bit pattern (nan, -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, frozenset):
        return a == b and sorted(map(repr, a)) == sorted(map(repr, b))
    return a == b


@pytest.mark.parametrize("value", [
    None, Ellipsis, True, False, 0, 1, -1, 2 ** 64 + 1, -(2 ** 200), 10 ** 40,
    0.0, -0.0, 1.5, 1e-310, float("inf"), float("-inf"), float("nan"), 0.1 + 0.2,
    complex(0.0, -0.0), complex(float("nan"), 1.0), 1j,
    "", "héllo ☃", "\ud800 lone surrogate", "\x00",
    b"", b"\x00\xff bytes",
    (), (1, ("nested", (2.5, None)), b"x"), frozenset({1, "a", (2, 3)}), frozenset(),
    CodeRef(0x7F0012345678), (CodeRef(0x10), frozenset({CodeRef(0x20)})),
])
def test_constants_round_trip_exactly_through_json(value):
    assert same(through_json(value), value)


def test_bools_and_ints_keep_their_type():
    assert encode_const(True) == {"t": "bool", "v": True} and encode_const(1) == {"t": "int", "v": "1"}
    assert through_json(True) is True and type(through_json(1)) is int


def test_big_ints_and_floats_are_encoded_as_text():
    """JSON numbers would lose digits and bits: ints go as decimal text, floats as hex."""
    assert encode_const(2 ** 70) == {"t": "int", "v": str(2 ** 70)}
    assert encode_const(0.1) == {"t": "float", "v": (0.1).hex()}
    assert math.isnan(through_json(float("nan")))


def test_frozenset_encoding_does_not_depend_on_iteration_order():
    items = ["a", "b", "c", 1, 2, (3, 4)]
    forwards, backwards = frozenset(items), frozenset(reversed(items))
    assert json.dumps(encode_const(forwards)) == json.dumps(encode_const(backwards))


def test_what_is_not_a_constant_is_refused():
    for value in ([1], {"a": 1}, object(), {1}):
        with pytest.raises(TypeError):
            encode_const(value)
    with pytest.raises(ValueError):
        decode_const({"t": "list", "v": []})


def test_nested_code_finds_code_references_inside_containers():
    consts = (None, CodeRef(1), ("x", CodeRef(2), (CodeRef(3),)), frozenset({CodeRef(4)}), 5)
    assert sorted(nested_code(consts)) == [1, 2, 3, 4]
    assert nested_code(("no", "code", 1.0)) == []


# -- model.py: hyper-parameters ---------------------------------------------------------------------------------
def test_hyper_parameters_encode_lists_and_dicts_and_read_as_python():
    value = {"kernel_size": (3, 3), "channels": [16, 32], "bias": False, "mode": "fan_out", "eps": 1e-5}
    encoded = encode_value(value)
    assert json.loads(json.dumps(encoded)) == encoded
    assert readable_value(encoded) == "{'kernel_size': (3, 3), 'channels': [16, 32], 'bias': False, " \
                                      "'mode': 'fan_out', 'eps': 1e-05}"
    assert readable_value(encode_value((7,))) == "(7,)"
