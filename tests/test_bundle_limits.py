"""The container limits of a patch bundle (bundle/format.py): what the zip's central directory claims
is checked before anything is decompressed, members are hashed while they are read, and every
container fault is one ERROR line that names the member.

The zip bomb: a 1 GiB member of zeros, deflated, with a manifest that lists its true sha256 and size
(so the bundle looks consistent), is refused by ``python -m volatility3_zen.reuse`` within 1 s and
with less than 100 MB of peak RSS more than a control bundle of 1 MiB (the old reader inflated the
whole member first: 28 s and 2.1 GB for a 46 MB bundle).  The bombs are built without ever holding
or deflating the gigabyte: one deflated MiB, repeated (``deflated_zeros``).
"""

import functools
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from volatility3_zen.zenlib.bundle import format as bundleformat

REPO = Path(__file__).resolve().parent.parent
MiB, GiB = 1 << 20, 1 << 30


# -- building zips member by member (raw data, so that nothing large is ever compressed here) ----------------
def deflated_zeros(size: int) -> bytes:
    """A raw deflate stream of ``size`` zero bytes (a multiple of a MiB): one MiB deflated and ended by a
    full flush (byte-aligned, no reference to what came before) concatenates with copies of itself;
    an empty final block closes the stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (size // MiB) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


@functools.lru_cache(maxsize=None)
def zeros_digests(size: int):
    """(sha256 hex, crc32) of ``size`` zero bytes, a MiB at a time."""
    digest, crc, chunk = hashlib.sha256(), 0, bytes(MiB)
    for _ in range(size // MiB):
        digest.update(chunk)
        crc = zlib.crc32(chunk, crc)
    return digest.hexdigest(), crc


def build_zip(entries) -> bytes:
    """A zip of (name, method, raw data as stored, crc32, uncompressed size, flags) entries (APPNOTE 4.3:
    local headers, then the central directory and its end record)."""
    out, directory = io.BytesIO(), []
    for name, method, raw, crc, size, flags in entries:
        offset = out.tell()
        encoded = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, len(raw), size,
                              len(encoded), 0) + encoded)
        out.write(raw)
        directory.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 0x21, crc,
                                     len(raw), size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    start = out.tell()
    out.write(b"".join(directory))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), out.tell() - start, start, 0))
    return out.getvalue()


def stored(name: str, data: bytes, flags: int = 0):
    return name, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data), flags


def deflated(name: str, data: bytes, flags: int = 0):
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, zipfile.ZIP_DEFLATED, compressor.compress(data) + compressor.flush(), zlib.crc32(data), len(data), flags


def manifest_of(listed) -> bytes:
    """A manifest listing {name: (sha256, size)}, as bundle.write writes one (the fields reuse reads)."""
    return json.dumps({"format": bundleformat.BUNDLE_FORMAT, "schema": bundleformat.BUNDLE_SCHEMA_VERSION,
                       "python_version": "%d.%d" % sys.version_info[:2], "torch_version": None,
                       "base": {"name": "base", "source": None}, "target": {"pid": 1},
                       "members": {name: {"sha256": sha, "size": size} for name, (sha, size) in listed.items()}}).encode()


def zeros_bundle(path: Path, size: int, name: str = "objects.json", claimed=None) -> Path:
    """A bundle whose member ``name`` is ``size`` zero bytes, deflated, listed in the manifest with its
    true sha256 and size; ``claimed`` (the size its directory entry gives) is the true size unless given."""
    sha, crc = zeros_digests(size)
    manifest = manifest_of({name: (sha, claimed or size)})
    bomb = (name, zipfile.ZIP_DEFLATED, deflated_zeros(size), crc, claimed or size, 0)
    path.write_bytes(build_zip([stored(bundleformat.MANIFEST, manifest), bomb]))
    return path


def intact_bundle(member: bytes = b'{"x": 1}\n', name: str = "objects.json"):
    """(manifest, member) entries of a small bundle that verifies."""
    manifest = manifest_of({name: (hashlib.sha256(member).hexdigest(), len(member))})
    return stored(bundleformat.MANIFEST, manifest), deflated(name, member)


# -- the zip bomb, on the command line -------------------------------------------------------------------------
MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"seconds": time.monotonic() - started, "rc": result.returncode, "stderr": result.stderr,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measured_reuse(bundle: Path) -> dict:
    """``python -m volatility3_zen.reuse BUNDLE --dry-run``, its wall time and peak RSS, measured by a small
    parent process (a child of this large test process would start with its peak RSS: Linux keeps the
    high-water mark across exec)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "volatility3_zen.reuse", str(bundle),
                             "--dry-run"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_error_line(stderr: str, *words: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "control": zeros_bundle(folder / "control.zenpatch.zip", MiB),
        "bomb": zeros_bundle(folder / "bomb.zenpatch.zip", GiB),
        # the same gigabyte behind a directory entry that claims 1 MiB (with the crc of the gigabyte):
        # zipfile stops inflating at the claimed size
        "understated": zeros_bundle(folder / "understated.zenpatch.zip", GiB, claimed=MiB),
        "bomb as weights": zeros_bundle(folder / "weights.zenpatch.zip", GiB, name="weights.safetensors"),
    }


def test_zip_bomb_is_refused_quickly_in_little_memory(bombs):
    assert bombs["bomb"].stat().st_size < 2 * MiB
    control = measured_reuse(bombs["control"])
    # the control is read whole and verified, and refused only for want of a signature
    one_error_line(control["stderr"], "unsigned")
    figures = {"control": control}
    for case, text in (("bomb", "objects.json: 1073741824 bytes, more than a deflated or JSON member may hold"),
                       ("bomb as weights", "weights.safetensors: 1073741824 bytes"),
                       ("understated", "objects.json: damaged (Bad CRC-32")):
        run = figures[case] = measured_reuse(bombs[case])
        assert run["rc"] == 1
        one_error_line(run["stderr"], "not a readable patch bundle", text)
        assert run["seconds"] < 1.0, (case, run)
        assert run["maxrss_mb"] - control["maxrss_mb"] < 100, (case, run, control)
    print("; ".join(f"{case}: {run['seconds']:.2f} s, peak RSS {run['maxrss_mb']:.0f} MB" for case, run in figures.items()))


def test_the_bomb_is_refused_from_the_directory_without_decompressing(bombs, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a member was opened for reading")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    for reader in (bundleformat.read_members, bundleformat.read_verified):
        with pytest.raises(zipfile.BadZipFile, match="objects.json: 1073741824 bytes"):
            reader(bombs["bomb"])


# -- each limit, from the central directory ---------------------------------------------------------------------
def test_each_limit_is_checked_before_decompressing(monkeypatch):
    small = bundleformat.Limits(members=3, member_bytes=4000, total_bytes=6000, parsed_bytes=2000,
                                inflated_bytes=3000, signature_bytes=100, ratio=50)
    cases = {
        "4 members (bundles have at most 3)": [stored(f"m{k}", b"x") for k in range(4)],
        "a.bin: 5000 bytes, more than a member may hold (4000)": [stored("a.bin", bytes(5000))],
        "b.bin: the members up to this one hold 7000 bytes": [stored("a.bin", bytes(3500)), stored("b.bin", bytes(3500))],
        "a.json: 2500 bytes, more than a deflated or JSON member may hold (2000)": [stored("a.json", bytes(2500))],
        "b.txt: the deflated members up to this one hold 3600 bytes": [deflated("a.txt", os.urandom(1800)),
                                                                      deflated("b.txt", os.urandom(1800))],
        "signature.json: 200 bytes, more than a signature may hold (100)": [stored("signature.json", bytes(200))],
        "a.txt: claims 1900 bytes from": [deflated("a.txt", bytes(1900))],  # ratio > 50
        "a.bin: stored, yet claims 10 bytes from 3": [("a.bin", zipfile.ZIP_STORED, b"abc", 0, 10, 0)],
    }
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("a member was opened for reading"))
    for expected, entries in cases.items():
        with pytest.raises(zipfile.BadZipFile, match=expected.replace("(", r"\(").replace(")", r"\)")):
            bundleformat.read_members(io.BytesIO(build_zip(entries)), small)


def test_too_many_members_is_refused_from_the_end_record(tmp_path):
    """The count of the end record, before zipfile makes an entry for each of 10,001 members."""
    path = tmp_path / "many.zenpatch.zip"
    path.write_bytes(build_zip([stored(f"m{k}", b"") for k in range(10_001)]))
    with pytest.raises(zipfile.BadZipFile, match=r"^10001 members \(bundles have at most 10000\)$"):
        bundleformat.read_members(path)


def test_members_the_manifest_does_not_list_or_sizes_it_does_not_give_are_not_read(monkeypatch):
    manifest, member = intact_bundle()
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: opened.append(getattr(info, "filename", info))
                        or real_open(self, info, *a, **k))
    verified = bundleformat.read_verified(io.BytesIO(build_zip([manifest, member, deflated("extra.py", b"import os")])))
    assert verified.problems == ["extra.py: not in the manifest"] and "extra.py" not in opened
    wrong_size = stored(bundleformat.MANIFEST, manifest_of({"objects.json": ("0" * 64, 3)}))
    opened.clear()
    verified = bundleformat.read_verified(io.BytesIO(build_zip([wrong_size, member])))
    assert verified.problems == ["objects.json: 9 bytes, the manifest says 3"] and opened == [bundleformat.MANIFEST]


def test_members_are_hashed_while_read_in_chunks(monkeypatch):
    """A member larger than a chunk verifies (and a changed byte in its last chunk does not)."""
    monkeypatch.setattr(bundleformat, "_CHUNK", 1000)
    data = os.urandom(10_500)
    manifest, member = intact_bundle(data, "weights.safetensors")
    verified = bundleformat.read_verified(io.BytesIO(build_zip([manifest, member])))
    assert verified.problems == [] and verified.members["weights.safetensors"] == data
    changed = data[:-1] + bytes([data[-1] ^ 1])
    verified = bundleformat.read_verified(io.BytesIO(build_zip([manifest, deflated("weights.safetensors", changed)])))
    assert verified.problems == ["weights.safetensors: sha256 differs"]


def test_written_bundles_still_verify():
    for name in ("written.zip", "written-lean.zip", "minimal-stored.zip"):
        path = REPO / "tests" / "fuzz" / "seeds" / "bundle" / name
        assert bundleformat.read_verified(path).problems == [], name


# -- damaged members, on the command line ------------------------------------------------------------------------
def _reuse(bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "volatility3_zen.reuse", str(bundle), "--dry-run"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)


def test_corrupt_and_encrypted_members_are_one_line_naming_the_member(tmp_path):
    manifest, member = intact_bundle(json.dumps({"values": list(range(2000))}).encode())
    name, method, raw, crc, size, flags = member
    cases = {
        # deflate's block type 3 does not exist: the stream is invalid from its first bits
        "corrupt": ((name, method, b"\xff" + raw[1:], crc, size, flags), "objects.json: damaged (Error -3 while decompressing"),
        "truncated": ((name, method, raw[: len(raw) // 2], crc, size, flags), "objects.json: damaged ("),
        "encrypted": ((name, method, raw, crc, size, 0x1), "objects.json: encrypted"),
        "bad crc": ((name, method, raw, crc ^ 1, size, flags), "objects.json: damaged (Bad CRC-32"),
    }
    for case, (entry, text) in cases.items():
        path = tmp_path / f"{case}.zenpatch.zip"
        path.write_bytes(build_zip([manifest, entry]))
        result = _reuse(path)
        assert result.returncode == 1, (case, result.stdout, result.stderr)
        one_error_line(result.stderr, "not a readable patch bundle", text)
