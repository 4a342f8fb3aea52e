"""linux.zen.model against the ground truth written by the deployed torch processes.

The tree must equal ``named_modules()`` (paths, classes, identities), every tensor must equal the
process's own description (shape, stride, storage offset, dtype, device, requires_grad, byte hash), and
the dumped safetensors, loaded into a freshly built copy of the architecture in a torch interpreter,
must reproduce the recorded output for the fixed input bit for bit.
"""

import json
import os
import subprocess

import pytest

from tools.corpus import ensure_image, load_ground_truth
from tools.corpus import interpreters
from volatility3_zen.zenlib.vol import session

import zen_testlib

ZOO = ("timm-resnet18-3.11", "yolov8n-3.11", "llama-tiny-3.11")
MODEL_IMAGES = [(name, kind) for name in ("torch-custom-3.11",) + ZOO for kind in ("core", "lime")]
# deployment -> (deploy script, expression that builds a fresh copy of the architecture, interpreter)
REBUILD = {
    "torch-custom-3.11": ("torch_custom.py", "build_model()", "torch-3.11"),
    "timm-resnet18-3.11": ("model_zoo.py", "build_timm_resnet18(torch)", "torch-zoo-3.11"),
    "yolov8n-3.11": ("model_zoo.py", "build_yolov8n(torch)", "torch-zoo-3.11"),
    "llama-tiny-3.11": ("model_zoo.py", "build_llama_tiny(torch)", "torch-zoo-3.11"),
}


def _image_path(record, kind):
    return record.image if kind == "lime" else next(iter(record.cores.values()))


def _recover(path, roots):
    """The models rooted at the ground truth's roots (which may sit inside a wrapper module, as
    ultralytics' DetectionModel does inside YOLO)."""
    plugin = zen_testlib.construct(path, "linux.zen.model.Model")
    out = {}
    for target, tp in session.torch_processes(plugin.context, plugin.config):
        out[target.pid] = (tp, list(tp.models(addresses=roots)))
    return out


def _tensor_fields(entry):
    info = entry.info
    return {
        "kind": entry.kind, "persistent": entry.persistent, "shape": list(info.shape), "stride": list(info.strides),
        "storage_offset": info.storage_offset, "dtype": "torch." + info.dtype, "device": info.device,
        "requires_grad": info.requires_grad, "numel": info.numel, "nbytes": info.nbytes,
        "data_ptr": info.data_ptr + info.storage_offset * info.itemsize if info.numel else None,
        "sha256": entry.sha256,
    }


@pytest.mark.image
@pytest.mark.parametrize("name,kind", MODEL_IMAGES)
def test_model_matches_ground_truth(name, kind):
    record = ensure_image(name, kind)
    truths = {pid: load_ground_truth(path) for pid, path in record.ground_truth.items()}
    recovered = _recover(_image_path(record, kind), {m["root_addr"] for t in truths.values() for m in t["models"]})
    for pid, truth in truths.items():
        tp, models = recovered[pid]
        assert tp.torch_version == truth["torch_version"]
        by_root = {m.root_address: m for m in models}
        for want in truth["models"]:
            model = by_root[want["root_addr"]]
            assert model.root_class == want["class"]
            assert [[n.path, n.class_path, n.address] for n in model.modules] == want["named_modules"]
            assert {n.path: n.hyperparameters for n in model.modules} == want["hyperparameters"]
            assert {n.path: n.hooks for n in model.modules if n.hooks} == want["hooks"]
            assert [t.name for t in model.state_dict_tensors()] == want["state_dict_keys"]
            got = [dict(_tensor_fields(t), name=t.name) for t in model.tensors]
            expected = []
            for t in want["tensors"]:
                t = dict(t)
                t.pop("storage_data_ptr", None)
                if not t["numel"]:
                    t["data_ptr"] = None
                expected.append(t)
            key = lambda t: (t["kind"], t["name"])  # noqa: E731 - the ground truth lists parameters, then buffers
            assert sorted(got, key=key) == sorted(expected, key=key)


@pytest.mark.image
@pytest.mark.parametrize("name,kind", MODEL_IMAGES)
def test_dumped_weights_rebuild_the_same_model(tmp_path, name, kind):
    record = ensure_image(name, kind)
    path = _image_path(record, kind)
    roots = [str(m["root_addr"]) for path in record.ground_truth.values() for m in load_ground_truth(path)["models"]]
    result = zen_testlib.run_vol(["-o", str(tmp_path), "-r", "json", "-f", path, "linux.zen.model", "--dump", "--root"] + roots)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    script, builder, interpreter = REBUILD[name]
    python = interpreters.resolve(interpreter).executable
    for pid, truth_path in record.ground_truth.items():
        truth = load_ground_truth(truth_path)
        for want in truth["models"]:
            stem = tmp_path / f"pid{pid}-{want['root_addr']:x}"
            assert any(r["Root"] == want["root_addr"] for r in rows)
            description = json.loads(stem.with_suffix(".model.json").read_text())
            assert description["root_class"] == want["class"]
            out = subprocess.run(
                [str(python), os.path.join(zen_testlib.REPO, "tests", "rebuild_model.py"),
                 os.path.join(zen_testlib.REPO, "tools", "corpus", "deploy", script), builder,
                 str(stem.with_suffix(".safetensors")), json.dumps(want["input"])],
                capture_output=True, text=True, env=dict(os.environ, DNNL_MAX_CPU_ISA="SSE41", ATEN_CPU_CAPABILITY="default", MKL_CBWR="COMPATIBLE",
                                                        OMP_NUM_THREADS="1"), timeout=600)
            assert out.returncode == 0, out.stderr[-2000:]
            assert out.stdout.split()[-1] == want["output_sha256"]
