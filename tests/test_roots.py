"""Which nn.Module roots are models (issue 11): stray roots left out, models ranked by what they hold.
On RecoveredModels built here; no memory image."""

import pytest

from volatility3_zen.zenlib.representation.model import ModuleNode, RecoveredModel, TensorEntry, TensorInfo
from volatility3_zen.zenlib.vol import session


def _tensor(name, kind, numel, address):
    info = TensorInfo(address=address, impl_address=address + 8, shape=(numel,), strides=(1,), storage_offset=0,
                      dtype="float32", scalar_type=6, itemsize=4, numel=numel, device_type="cpu", device_index=-1,
                      requires_grad=kind == "parameter", storage_address=address + 16, storage_nbytes=4 * numel,
                      data_ptr=address + 32)
    return TensorEntry(name, kind, True, info)


def _model(root, cls, modules=1, params=(), buffers=()):
    module, _, qualname = cls.rpartition(".")
    nodes = [ModuleNode("", root, module, qualname, 0, [f"m{k}" for k in range(1, modules)], {}, [])]
    nodes += [ModuleNode(f"m{k}", root + k, "torch.nn.modules.linear", "Linear", 1, [], {}, []) for k in range(1, modules)]
    tensors = [_tensor(f"p{k}", "parameter", n, root + 0x100 + k) for k, n in enumerate(params)]
    tensors += [_tensor(f"b{k}", "buffer", n, root + 0x200 + k) for k, n in enumerate(buffers)]
    return RecoveredModel(root_address=root, root_class=cls, modules=nodes, tensors=tensors)


GELU = _model(0x1000, "transformers.activations.GELUActivation")
SILU = _model(0x2000, "torch.nn.modules.activation.SiLU")
LONE_LINEAR = _model(0x3000, "torch.nn.modules.linear.Linear", params=(64, 8))
POSITIONS = _model(0x4000, "mypkg.layers.Positions", buffers=(512,))
ONE_LAYER_MODEL = _model(0x5000, "mypkg.model.TinyNet", params=(10,))
SMALL = _model(0x6000, "mypkg.model.Net", modules=3, params=(100,))
BIG = _model(0x7000, "mypkg.model.Big", modules=5, params=(1000, 10))
PARAMETER_FREE_TREE = _model(0x8000, "mypkg.model.Pipeline", modules=2)


def test_stray_roots_are_single_modules_without_parameters_or_of_the_framework():
    assert session.stray_root(GELU) and session.stray_root(SILU) and session.stray_root(POSITIONS)
    assert session.stray_root(LONE_LINEAR)  # a framework class alone: a layer kept in a global, not a model
    assert not session.stray_root(ONE_LAYER_MODEL)  # the model's own class, with parameters
    assert not session.stray_root(SMALL) and not session.stray_root(PARAMETER_FREE_TREE)


def test_holdings_count_tied_tensors_once():
    tied = _model(0x9000, "mypkg.model.Tied", modules=2, params=(50,))
    tied.tensors.append(TensorEntry("lm_head.weight", "parameter", True, tied.tensors[0].info))
    assert session.holdings(tied) == (50, 1, 2)


class _Torch:
    def __init__(self, models):
        self._models = models
        self.asked = None

    def models(self, read_bytes=True, addresses=None):
        self.asked = (read_bytes, addresses)
        return [m for m in self._models if addresses is None or m.root_address in addresses]


class _Target:
    pid = 42


ALL = [GELU, SMALL, SILU, PARAMETER_FREE_TREE, BIG, POSITIONS, ONE_LAYER_MODEL, LONE_LINEAR]


@pytest.fixture
def warnings(monkeypatch):
    """The session's warning lines (caught at the logger: other tests reconfigure logging)."""
    seen = []
    monkeypatch.setattr(session.vollog, "warning", lambda message, *args: seen.append(message % args))
    return seen


def test_models_first_by_parameters_and_strays_left_out_with_one_line(warnings):
    ranked = session.ranked_roots(_Target(), _Torch(ALL))
    assert [m.root_class for m in ranked.models] == ["mypkg.model.Big", "mypkg.model.Net", "mypkg.model.TinyNet",
                                                     "mypkg.model.Pipeline"]
    assert ranked.left_out == 4
    (text,) = warnings
    assert "\n" not in text and text.startswith("PID 42: 4 stray root(s) left out") and "--all-roots" in text


def test_all_roots_and_named_roots_keep_everything(warnings):
    everything = session.ranked_roots(_Target(), _Torch(ALL), all_roots=True)
    named = session.ranked_roots(_Target(), _Torch(ALL), addresses={GELU.root_address, SMALL.root_address})
    assert not warnings
    assert everything.left_out == 0 and len(everything.models) == len(ALL)
    assert [m.root_class for m in everything.models[:4]] == ["mypkg.model.Big", "mypkg.model.Net",
                                                             "torch.nn.modules.linear.Linear", "mypkg.model.TinyNet"]
    # parameter-free roots last: the buffer holder, then the tree of two, then single modules by address
    assert [m.root_address for m in everything.models[4:]] == [0x4000, 0x8000, 0x1000, 0x2000]
    assert [m.root_class for m in named.models] == ["mypkg.model.Net", "transformers.activations.GELUActivation"]


def test_the_flag_is_offered_by_every_plugin_that_lists_models():
    from volatility3_zen.plugins.linux.zen import attribute, model, patchgen

    for plugin in (attribute.Attribute, model.Model, patchgen.PatchGen):
        assert "all-roots" in {r.name for r in plugin.get_requirements()}, plugin
