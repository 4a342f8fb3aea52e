"""The corpus harness (tools/corpus): its ground-truth encoding, its catalogue, and the images it builds.

The unit tests need no image (one starts pyenv's 3.11).  The image tests build (or reuse) every image of the first
catalogue and check what any consumer relies on: the guest kernel's processes are visible to
Volatility with the deployed PIDs and names, each core is a real ELF core that maps its files, and
every ground truth is internally consistent and written by the interpreter it claims.
"""

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tools.corpus import catalog, cores, guest, interpreters, load_ground_truth
from tools.corpus.build import plan
from tools.corpus.deploy import _groundtruth, model_zoo
from tools.corpus.errors import BuildError
from volatility3_zen.zenlib.representation.program import CodeRef, encode_const

# The evaluation corpus' models (issue 5) are attributed from their cores in CI; of their LiME images,
# which only the shipped library (tools/build_bml.py) and the benchmark need, CI builds one per language
# of model (torch, plain Python) -- each costs 1-4 minutes of emulation.
EVALUATION_MODELS = set(catalog.expected_attributions())
LIME_IN_CI = {"resnet-base-3.11", "micrograd-base-3.11"}
LIME_IMAGES = [d.name for d in catalog.CATALOGUE.values()
               if "lime" in d.kinds and (d.name not in EVALUATION_MODELS or d.name in LIME_IN_CI)]
CORE_IMAGES = [d.name for d in catalog.CATALOGUE.values() if "core" in d.kinds]
PLAIN_PROGRAM = Path(guest.__file__).parent / "deploy" / "plain_program.py"
ZOO_IMAGES = [name for _, name, _, _ in catalog.ZOO_MODELS]
# deployment -> (root class, tensors, output shape), as measured (docs/corpus.md)
ZOO_EXPECTED = {
    "timm-resnet18-3.11": ("timm.models.resnet.ResNet", 122, [1, 10]),
    "yolov8n-3.11": ("ultralytics.nn.tasks.DetectionModel", 355, [1, 84, 84]),
    "llama-tiny-3.11": ("transformers.models.llama.modeling_llama.LlamaForCausalLM", 23, [1, 16, 256]),
}


# --- unit tests --------------------------------------------------------------------------------


def _code_to_ref(value):
    """The project's encoder takes CodeRef where the writer takes the live code object."""
    if isinstance(value, types.CodeType):
        return CodeRef(id(value))
    if isinstance(value, tuple):
        return tuple(_code_to_ref(v) for v in value)
    if isinstance(value, frozenset):
        return frozenset(_code_to_ref(v) for v in value)
    return value


def _all_constants(code):
    for const in code.co_consts:
        yield const
        if isinstance(const, types.CodeType):
            yield from _all_constants(const)


SAMPLE_CONSTANTS = [
    None, Ellipsis, True, False, 0, -1, 2 ** 64, -(2 ** 100) - 7, 1.5, -0.0, float("inf"), float("nan"),
    5e-324, 1 + 2j, complex(-0.0, float("inf")), "", "caf\xe9", "\U0001f600", "\ud800", b"", b"\x00\xff",
    (), (1, (2.5, "x", None)), frozenset(), frozenset({1, "a", b"b", (1, 2), None, 2.5, False, 3j}),
    compile("lambda: 1", "<sample>", "eval"), (compile("0", "<sample>", "eval"), frozenset({"x"})),
]


@pytest.mark.parametrize("value", SAMPLE_CONSTANTS, ids=repr)
def test_writer_encodes_constants_like_the_project(value):
    assert _groundtruth.encode_const(value) == encode_const(_code_to_ref(value))


def test_writer_encodes_every_constant_of_the_plain_program_like_the_project():
    module = compile(PLAIN_PROGRAM.read_text(), str(PLAIN_PROGRAM), "exec")
    constants = list(_all_constants(module))
    assert len(constants) > 200
    for value in constants:
        assert _groundtruth.encode_const(value) == encode_const(_code_to_ref(value))


NONE = {"t": "None"}


def test_hyperparameter_encoding_extends_constants_and_skips_the_rest():
    assert _groundtruth.encode_value([1, {"k": (2.0, None)}]) == {
        "t": "list",
        "v": [
            {"t": "int", "v": "1"},
            {"t": "dict", "v": [["k", {"t": "tuple", "v": [{"t": "float", "v": "0x1.0000000000000p+1"}, NONE]}]]},
        ],
    }
    assert _groundtruth.encode_value({1: "not a str key"}) is None
    assert _groundtruth.encode_value([object()]) is None


def test_catalogue_entries_are_complete():
    for deployment in catalog.CATALOGUE.values():
        assert deployment.kinds and set(deployment.kinds) <= set(catalog.KINDS), deployment.name
        for process in deployment.processes:
            assert (PLAIN_PROGRAM.parent / process.script).is_file(), process.script


def test_zoo_deployments_run_one_known_model_each_in_the_zoo_venv():
    assert sorted(ZOO_IMAGES) == sorted(ZOO_EXPECTED)
    models = []
    for name in ZOO_IMAGES:
        deployment = catalog.get(name)
        assert set(deployment.kinds) == {"lime", "core"}
        (process,) = deployment.processes
        assert (process.script, process.interpreter) == ("model_zoo.py", interpreters.ZOO_IDENT)
        assert process.args[0] == "--model" and process.args[1] in model_zoo.MODELS
        models.append(process.args[1])
    assert sorted(models) == sorted(model_zoo.MODELS)


def test_zoo_venv_pins_every_package_and_keys_its_support_files():
    pinned = {r.split("==")[0].lower() for r in interpreters.ZOO_CONSTRAINTS}
    assert all("==" in r for r in interpreters.ZOO_CONSTRAINTS)
    assert {r.split("==")[0] for r in interpreters.ZOO_REQUIREMENTS} <= pinned
    assert "torch==2.13.0" in interpreters.ZOO_CONSTRAINTS
    zoo = interpreters.resolve(interpreters.ZOO_IDENT, create=False)
    assert zoo.torch and set(zoo.identity()["support_files"]) == set(interpreters.ZOO_SUPPORT_FILES)
    torch = interpreters.resolve("torch-" + interpreters.TORCH_BASE, create=False)
    assert set(torch.identity()) == {"ident", "version", "requirements"}  # its image keys stay as they were


def test_zoo_input_specifications_build_the_documented_input():
    class FakeTorch:
        int64, float32 = "int64", "float32"

        @staticmethod
        def manual_seed(seed):
            FakeTorch.seed = seed

        @staticmethod
        def tensor(values, dtype):
            return types.SimpleNamespace(values=values, dtype=dtype, reshape=lambda shape: (values, dtype, shape))

        @staticmethod
        def randn(*shape, dtype):
            return ("randn", FakeTorch.seed, shape, dtype)

    ids = {"shape": [1, 3], "dtype": "int64", "seed": 7, "values": [1, 2, 3]}
    assert model_zoo.make_input(FakeTorch, ids) == ([1, 2, 3], "int64", [1, 3])
    noise = {"shape": [1, 3, 4, 4], "dtype": "float32", "seed": 5}
    assert model_zoo.make_input(FakeTorch, noise) == ("randn", 5, (1, 3, 4, 4), "float32")
    assert model_zoo.select_output(({"logits": "L"}, "raw"), {"output_path": [0, "logits"]}) == "L"
    assert model_zoo.select_output("T", noise) == "T"


def test_guest_plan_is_valid_shell_that_starts_every_process():
    deployment = catalog.get("plain-multi")
    script = guest.plan_script(deployment, plan(deployment, create=False))
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert "PROCESS_COUNT=%d" % len(catalog.PLAIN_VERSIONS) in script
    assert script.count("chroot /mnt/root /usr/bin/env -i ") == len(catalog.PLAIN_VERSIONS)


def test_a_process_that_dies_fails_the_build_with_its_log(tmp_path):
    missing = catalog.Process("missing.py", "3.11")
    deployment = catalog.Deployment("broken", "a script that does not exist", (missing,), ("core",))
    (tmp_path / "groundtruth").mkdir()
    (tmp_path / "logs").mkdir()
    with pytest.raises(BuildError) as failure:
        cores.build(deployment, plan(deployment), tmp_path)
    assert "exited with 2 before it was ready" in str(failure.value)
    assert "missing.py" in failure.value.tail


# --- image tests -------------------------------------------------------------------------------


def _vol():
    beside_python = Path(sys.executable).with_name("vol")
    return str(beside_python) if beside_python.exists() else shutil.which("vol")


def _check_ground_truth_header(image, record):
    truth = load_ground_truth(image.ground_truth[record["pid"]])
    assert truth["schema"] == _groundtruth.SCHEMA_VERSION
    assert truth["pid"] == record["pid"]
    assert truth["python_version"] == record["python_version"]
    assert truth["deployment"] == image.name
    return truth


@pytest.mark.image
@pytest.mark.slow
@pytest.mark.parametrize("name", LIME_IMAGES)
def test_pslist_lists_every_deployed_process(name, corpus, kernel_isf_dir):
    image = corpus(name, "lime")
    command = [_vol(), "-q", "-r", "json", "-s", str(kernel_isf_dir), "-f", str(image.image), "linux.pslist"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {row["PID"]: row["COMM"] for row in json.loads(result.stdout)}
    expected = {p["pid"]: p["process_name"] for p in image.processes}
    assert {pid: names.get(pid) for pid in expected} == expected
    for record in image.processes:
        _check_ground_truth_header(image, record)


def _notes(elf):
    for segment in elf.iter_segments():
        if segment["p_type"] == "PT_NOTE":
            yield from segment.iter_notes()


@pytest.mark.image
@pytest.mark.parametrize("name", CORE_IMAGES)
def test_cores_are_elf_cores_that_map_their_interpreter(name, corpus):
    image = corpus(name, "core")
    assert set(image.cores) == {p["pid"] for p in image.processes}
    for record in image.processes:
        with open(image.cores[record["pid"]], "rb") as handle:
            elf = ELFFile(handle)
            assert elf.header["e_type"] == "ET_CORE"
            (mapped,) = [n["n_desc"] for n in _notes(elf) if n["n_type"] == "NT_FILE"]
            files = {path.decode() if isinstance(path, bytes) else path for path in mapped["filename"]}
        # the interpreter binary itself (the kernel maps the resolved path, e.g. a venv's python3.11)
        assert any(path.endswith("/" + record["process_name"]) for path in files), sorted(files)
        _check_ground_truth_header(image, record)


@pytest.mark.image
@pytest.mark.parametrize("name", CORE_IMAGES)
def test_ground_truth_references_resolve(name, corpus):
    image = corpus(name, "core")
    for record in image.processes:
        truth = load_ground_truth(image.ground_truth[record["pid"]])
        codes = {c["addr"] for c in truth["code_objects"]}
        functions = {f["addr"] for f in truth["functions"]}
        assert {f["code"] for f in truth["functions"]} <= codes
        nested = {c["addr"] for code in truth["code_objects"] for c in code["consts"] if c["t"] == "code"}
        assert nested <= codes
        assert {m for c in truth["classes"] for m in c["methods"].values()} <= functions
        assert all(c["mro"][0] == c["addr"] and set(c["bases"]) <= set(c["mro"]) for c in truth["classes"])
        if truth["scenario"] not in (model_zoo.SCENARIO, "model-family", "model-trained", "model-practice"):  # scripts that may define functions only
            assert any(c["module"] == "__main__" for c in truth["classes"])
        if truth["scenario"] != "model-practice":  # a practice script may keep all its code elsewhere
            assert any(f["module"] == "__main__" for f in truth["functions"])
        assert "__main__" in {m["name"] for m in truth["modules"]}


@pytest.mark.image
def test_torch_ground_truth_describes_the_model_oddities(corpus):
    image = corpus("torch-custom-3.11", "core")
    (truth,) = [load_ground_truth(path) for path in image.ground_truth.values()]
    assert truth["torch_version"].startswith("2.13.0")
    (model,) = truth["models"]
    tensors = {t["name"]: t for t in model["tensors"]}
    tied = tensors["heads.logits.weight"], tensors["embedding.weight"]
    assert tied[0]["data_ptr"] == tied[1]["data_ptr"] and tied[0]["sha256"] == tied[1]["sha256"]
    assert tensors["offset_scale"]["storage_offset"] == 4
    assert tensors["transposed"]["stride"] == [1, 4]
    assert len(tensors["six_d"]["shape"]) == 6 and tensors["empty"]["numel"] == 0
    assert not tensors["scratch"]["persistent"] and "scratch" not in model["state_dict_keys"]
    dtypes = {t["dtype"] for t in tensors.values()}
    assert {"torch.float16", "torch.bfloat16", "torch.int8", "torch.bool", "torch.complex64"} <= dtypes
    assert model["hooks"] == {"": ["_forward_pre_hooks"], "heads.logits": ["_forward_hooks"]}
    assert {"torch.nn.modules.container.ModuleList", "torch.nn.modules.container.ModuleDict"} <= {
        cls for _, cls, _ in model["named_modules"]
    }


@pytest.mark.image
@pytest.mark.parametrize("kind", catalog.KINDS)
@pytest.mark.parametrize("name", ZOO_IMAGES)
def test_zoo_ground_truth_describes_the_whole_model(name, kind, corpus):
    image = corpus(name, kind)
    (truth,) = [load_ground_truth(path) for path in image.ground_truth.values()]
    assert truth["scenario"] == model_zoo.SCENARIO and truth["torch_version"].startswith("2.13.0")
    (model,) = truth["models"]
    root_class, tensor_count, output_shape = ZOO_EXPECTED[name]
    assert model["class"] == root_class
    assert model["named_modules"][0] == ["", root_class, model["root_addr"]]
    tensors = model["tensors"]
    assert len(tensors) == tensor_count
    assert all(len(t["sha256"]) == 64 and t["numel"] > 0 for t in tensors)
    assert set(model["state_dict_keys"]) <= {t["name"] for t in tensors}
    assert {t["name"] for t in tensors if t["persistent"]} == set(model["state_dict_keys"])
    assert model["output_shape"] == output_shape and len(model["output_sha256"]) == 64
    assert model["input"]["seed"] == model_zoo.INPUT_SEED
    module_names = {n for n, _, _ in model["named_modules"]}
    assert {t["name"].rpartition(".")[0] for t in tensors} <= module_names


@pytest.mark.image
@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_IMAGES)
def test_zoo_model_is_the_same_in_the_guest_and_on_the_host(name, corpus):
    """Same seed, same torch, MKL_CBWR=COMPATIBLE: tensors and output agree bit for bit."""
    hashes = []
    for kind in ("lime", "core"):
        image = corpus(name, kind)
        (truth,) = [load_ground_truth(path) for path in image.ground_truth.values()]
        (model,) = truth["models"]
        hashes.append(({t["name"]: t["sha256"] for t in model["tensors"]}, model["output_sha256"]))
    assert hashes[0][0] == hashes[1][0]
    assert hashes[0][1] == hashes[1][1]


@pytest.mark.image
def test_trained_models_keep_their_trained_behaviour(corpus):
    """crepe-base and its derivative: the wheel's trained weights, the same input, another output, and a
    decoded pitch that is still the 440 Hz of the input (random weights decode 177 Hz; docs/corpus.md)."""
    found = {}
    for (_, name, _, _, _, _, role, root_class) in catalog.TRAINED_MODELS:
        image = corpus(name, "core")
        (truth,) = [load_ground_truth(path) for path in image.ground_truth.values()]
        assert truth["scenario"] == "model-trained" and truth["torch_version"].startswith("2.13.0")
        (model,) = truth["models"]
        (entry,) = truth["trained_models"]
        assert model["class"] == entry["class"] == root_class and entry["role"] == role
        assert model["root_addr"] == entry["root_addr"]
        assert model["input"]["shape"] == [4, 1024] and len(model["input"]["values"]) == 4 * 1024
        assert model["output_shape"] == [4, 360]
        assert all(abs(hz - 440.0) < 5.0 for hz in entry["pitch_hz"]), entry["pitch_hz"]
        assert [float.fromhex(h) for h in entry["pitch_hz_hex"]] == entry["pitch_hz"]
        found[role] = model, entry
    (base, base_entry), (derivative, derivative_entry) = found["base"], found["derivative"]
    assert base["input"] == derivative["input"]
    assert base["output_sha256"] != derivative["output_sha256"]
    assert base_entry["weights"]["sha256"] == derivative_entry["weights"]["sha256"]
    assert derivative_entry["weights"]["not_from_file"] == ["smooth.conv.weight"]
    trained = {t["name"]: t["sha256"] for t in base["tensors"]}
    assert all(trained[t["name"]] == t["sha256"] for t in derivative["tensors"] if t["name"] in trained)


@pytest.mark.image
def test_a_second_call_reuses_the_cached_image(corpus):
    first = corpus("plain-3.12", "core")
    build_record = first.directory / "build.json"
    before = build_record.stat().st_mtime_ns
    second = corpus("plain-3.12", "core")
    assert second.directory == first.directory
    assert build_record.stat().st_mtime_ns == before

