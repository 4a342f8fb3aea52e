"""Every input that crashed a fuzzer (tests/fuzz/crashes/<target>/) and every seed, fed to the same
target function the fuzzer calls (tests/fuzz/targets.py), without atheris; the refusals that the
crashes now get; and a short run of each fuzz script where atheris is installed.  docs/fuzzing.md.
"""

import importlib.util
import io
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from volatility3_zen.reuse.bundle import PatchBundle, ReuseError
from volatility3_zen.zenlib.bundle import format as bundleformat

FUZZ = Path(__file__).resolve().parent / "fuzz"
REPO = FUZZ.parent.parent
_spec = importlib.util.spec_from_file_location("zen_fuzz_targets", FUZZ / "targets.py")
targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(targets)


def _inputs(folder: str):
    return [pytest.param(target, path, id=f"{target}/{path.name}")
            for target in sorted(targets.TARGETS) for path in sorted((FUZZ / folder / target).glob("*"))]


@pytest.mark.parametrize("target, path", _inputs("crashes"))
def test_crash_input_is_handled_cleanly(target, path):
    targets.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target, path", _inputs("seeds"))
def test_seed_is_handled_cleanly(target, path):
    targets.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("path", sorted((FUZZ / "crashes" / "elfcore").glob("*")) + sorted((FUZZ / "seeds" / "elfcore").glob("*")),
                         ids=lambda path: path.name)
def test_elfcore_input_through_a_file_layer(path, tmp_path):
    """As ``vol -f`` opens the core (FileLayer), not only the fuzzer's in-memory buffer."""
    targets.elfcore_target(path.read_bytes(), targets.file_layer(str(tmp_path / "input.core")))


def test_every_target_has_seeds():
    for target in targets.TARGETS:
        assert list((FUZZ / "seeds" / target).glob("*")), target


# -- what the crashes get now -------------------------------------------------------------------------------
def _refusal(data: bytes, tmp_path) -> str:
    path = tmp_path / "input.zenpatch.zip"
    path.write_bytes(data if data[:2] == b"PK" else targets.structured_bundle(data))
    with pytest.raises(ReuseError) as error:
        PatchBundle(str(path)).check_interpreter()
    message = str(error.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: "), message
    return message


@pytest.mark.parametrize("name, expected", [
    # reuse refuses it for its missing manifest before reading code.json; read_members names the damage
    ("zip-negative-seek", "code.json: damaged ([Errno 22] Invalid argument)"),
    ("zip-version-not-implemented", "not a readable patch bundle (damaged zip directory (zip file version 23.6))"),
    ("zip-name-bad-utf8", "not a readable patch bundle (damaged zip directory ('utf-8' codec can't decode"),
    ("zip-compression-unsupported", "code.json: compression method 2048 (bundles are stored or deflated)"),
    ("deflate-invalid-stream", "(manifest.json: damaged (Error -3 while decompressing data"),
    ("deflate-truncated-stream", "(manifest.json: damaged (EOFError))"),
    ("member-name-control-char", "\\x0b: not in the manifest"),
    ("manifest-member-entry-not-object", "manifest.json: its members are not a JSON object"),
])
def test_crashing_bundles_are_refused_in_one_line(name, expected, tmp_path):
    """The refusal reuse gives (or one of verify's problems, or read_members' refusal) names the fault."""
    data = (FUZZ / "crashes" / "bundle" / name).read_bytes()
    message = _refusal(data, tmp_path)
    try:
        problems = bundleformat.verify(bundleformat.read_members(tmp_path / "input.zenpatch.zip"))
    except zipfile.BadZipFile as exc:
        problems = [str(exc)]
    assert expected in message or any(expected in problem for problem in problems), (message, problems)


def test_member_names_are_shown_escaped(tmp_path):
    members = bundleformat.read_members(io.BytesIO(targets.structured_bundle(
        (FUZZ / "crashes" / "bundle" / "member-name-control-char").read_bytes())))
    assert "\x0b" in members
    problems = bundleformat.verify(members)
    assert "\\x0b: not in the manifest" in problems, problems
    assert all(len(problem.splitlines()) == 1 for problem in problems)


_MANIFEST = {"format": "zen-patch-bundle", "schema": 1, "python_version": "%d.%d" % sys.version_info[:2],
             "torch_version": "2.3.0", "base": {"name": "base", "source": "base-pkg==1.0"}, "target": {"pid": 1},
             "members": "auto"}


def _without(key):
    return {k: v for k, v in _MANIFEST.items() if k != key}


# Found by reading reuse/bundle.py while fixing the fuzzers' crashes (the fuzzer had not reached them):
# manifests that verify but whose fields reuse reads are missing or of another type, and JSON nested
# deeper than the parser's recursion limit.
@pytest.mark.parametrize("manifest, expected", [
    (_without("python_version"), "has no valid 'python_version'"),
    ({**_MANIFEST, "python_version": 3.11}, "has no valid 'python_version'"),
    ({**_MANIFEST, "base": "resnet"}, "has no valid 'base'"),
    ({**_MANIFEST, "base": {"name": "b", "source": 1}}, "has no valid 'base'"),
    ({**_MANIFEST, "base": {"source": None}}, "has no valid 'base'"),
    (_without("target"), "has no valid 'target'"),
    ({**_MANIFEST, "torch_version": ["2.3.0"]}, "has no valid 'torch_version'"),
    ({**_MANIFEST, "schema": "1\nan injected line"}, "bundle schema '1\\nan injected line' is not supported"),
    ({**_MANIFEST, "members": {"code.json": "0" * 64}}, "code.json: no sha256 in the manifest"),
    ({**_MANIFEST, "members": ["code.json"]}, "manifest.json: its members are not a JSON object"),
    ([_MANIFEST], "manifest.json is not a JSON object"),
], ids=["no-python-version", "python-version-number", "base-string", "base-source-number", "base-without-name",
        "no-target", "torch-version-list", "schema-with-newline", "member-entry-string", "members-list", "manifest-list"])
def test_manifest_fields_reuse_reads_are_checked(manifest, expected, tmp_path):
    data = b"D" + b"\n@@".join([b"manifest.json\n" + json.dumps(manifest).encode(), b"code.json\n{}"])
    message = _refusal(data, tmp_path)
    assert expected in message, message


def test_manifest_nested_too_deep_is_refused(tmp_path):
    message = _refusal(b"D" + b"manifest.json\n" + b"[" * 100_000, tmp_path)
    assert "manifest.json is not JSON" in message, message


def test_a_valid_structured_bundle_is_accepted(tmp_path):
    path = tmp_path / "ok.zenpatch.zip"
    path.write_bytes(targets.structured_bundle(b"D" + b"manifest.json\n" + json.dumps(_MANIFEST).encode()))
    bundle = PatchBundle(str(path))
    bundle.check_interpreter()
    assert sorted(bundle.members) == ["manifest.json"]


# -- the container limits read_members enforces (no fuzzer crash: what a bundle.write zip never holds) --------
def _zip(*entries) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, data)
    return out.getvalue()


def _directory_patched(data: bytes, field_offset: int, value: bytes) -> bytes:
    """``data`` with a field of its last central directory entry overwritten."""
    at = data.rindex(b"PK\x01\x02") + field_offset
    return data[:at] + value + data[at + len(value) :]


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_refused_containers():
    stored, deflated = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
    bomb = _zip(("a", bytes(100_000), deflated))
    size = zipfile.ZipFile(io.BytesIO(bomb)).getinfo("a").file_size.to_bytes(4, "little")
    cases = {
        "a: more than one member has this name": _zip(("a", b"1", stored), ("a", b"2", stored)),
        "a: compression method 12": _zip(("a", b"x" * 100, zipfile.ZIP_BZIP2)),
        "a: encrypted": _directory_patched(_zip(("a", b"x", stored)), 8, b"\x01\x00"),  # general purpose flags
        # a member claiming far more bytes than deflate can make of its data: a decompression bomb
        "a: claims 1000000000 bytes": bomb.replace(size, (10**9).to_bytes(4, "little")),
        # two directory entries sharing one member's data: the overlapping zip bomb (42: local header offset)
        "a: overlaps": _directory_patched(_zip(("a", bytes(1000), deflated), ("b", b"", stored)), 42, bytes(4)),
    }
    for expected, data in cases.items():
        with pytest.raises(zipfile.BadZipFile, match=expected):
            bundleformat.read_members(io.BytesIO(data))


def test_written_bundles_still_read():
    for name in ("written.zip", "written-lean.zip", "minimal-stored.zip"):
        members = bundleformat.read_members(FUZZ / "seeds" / "bundle" / name)
        assert bundleformat.verify(members) == [], name


# -- the fuzz scripts themselves ----------------------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_fuzz_script_runs(target, tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # A child forked from this (large) test process starts with its peak RSS (Linux keeps it across
    # exec), which libFuzzer's default 2 GiB RSS limit would count as the target's: allow 2 GiB beyond it.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    result = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{target}.py"), "-max_total_time=5", "-timeout=10",
         f"-rss_limit_mb={inherited_mb + 2048}", "-malloc_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(corpus), str(FUZZ / "seeds" / target)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done " in result.stderr, result.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*")), result.stderr[-3000:]
