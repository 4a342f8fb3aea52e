"""Signed bundles (docs/reuse.md, "Signed bundles"): ``linux.zen.patchgen --dump`` signs the manifest's
sha256 with the investigator's ed25519 key (``signature.json``, not listed in the manifest), and
``python -m volatility3_zen.reuse`` accepts a bundle only when a trusted key signed it, unless
``--allow-unsigned``.  Every refusal is one ERROR line and exit status 1, without a traceback.

The bundle is micrograd's derivative from its CPython 3.12 core image, written once per session by
the ``patchgen_dump`` fixture and signed with the suite's throwaway key (conftest ``signing_key``);
reuse runs in the deployment's own interpreter (micrograd installed, cryptography added on its path
by ``reuse_check.reuse_pythonpath``).  The forgeries are made from it.
"""

import base64
import hashlib
import json
import logging
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tools import reuse_check
from volatility3_zen import keys
from volatility3_zen.reuse.bundle import PatchBundle, ReuseError
from volatility3_zen.zenlib.bundle import format as bundleformat
from volatility3_zen.zenlib.bundle import signing

DEPLOYMENT = "micrograd-derivative-3.12"


@pytest.fixture(scope="module")
def signed(patchgen_dump, corpus):
    """(the deployment's interpreter, the signed bundle patchgen wrote)."""
    run = patchgen_dump(DEPLOYMENT)
    (bundle,) = run.out.glob(f"*{bundleformat.BUNDLE_SUFFIX}")
    return reuse_check.interpreter(corpus(DEPLOYMENT, "core")), bundle


def _reuse(python: str, bundle: Path, *args: str, config: Path = None, crypto: bool = True) -> subprocess.CompletedProcess:
    """The reuse command in ``python``; ``config``: another configuration folder (its trusted keys);
    ``crypto``: with the cryptography package on the path."""
    path = reuse_check.reuse_pythonpath(python) if crypto else str(reuse_check.REPO)
    env = dict(os.environ, PYTHONPATH=path)
    if config is not None:
        env[signing.CONFIG_ENV] = str(config)
    return subprocess.run([python, "-m", "volatility3_zen.reuse", str(bundle), "--dry-run", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _accepted(result: subprocess.CompletedProcess, provenance: str) -> None:
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"provenance: {provenance}" in result.stdout and "nothing changed" in result.stdout, result.stdout[-2000:]


def _refused(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "nothing changed" not in result.stdout
    return lines[0]


def _rewritten(source: Path, target: Path, change) -> Path:
    """The bundle with ``change(members)`` applied, written manifest first."""
    members = bundleformat.read_members(source)
    change(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name in sorted(members, key=lambda name: name != bundleformat.MANIFEST):
            archive.writestr(name, members[name])
    return target


def _suite_key_id(signing_key) -> str:
    return signing.load_public_key(signing_key[1]).key_id


# -- what patchgen writes ---------------------------------------------------------------------------------------
@pytest.mark.image
def test_patchgen_signs_its_bundles(signed, signing_key):
    _, bundle = signed
    members = bundleformat.read_members(bundle)
    manifest = json.loads(members[bundleformat.MANIFEST])
    assert bundleformat.SIGNATURE in members and bundleformat.SIGNATURE not in manifest["members"]
    assert bundleformat.verify(members) == []  # the one member the manifest does not list
    document = json.loads(members[bundleformat.SIGNATURE])
    assert document["algorithm"] == "ed25519" and document["key_id"] == _suite_key_id(signing_key)
    assert document["manifest_sha256"] == bundleformat.manifest_sha256(members)
    signer = signing.check(members[bundleformat.SIGNATURE], bundleformat.manifest_sha256(members),
                           signing.trusted_keys())
    assert signer.key.key_id == document["key_id"]


@pytest.mark.image
def test_signed_bundle_is_accepted(signed, signing_key):
    python, bundle = signed
    _accepted(_reuse(python, bundle), f"signed by ed25519 sha256:{_suite_key_id(signing_key)}")


@pytest.mark.image
def test_unsigned_bundle_is_refused_unless_allowed(signed, tmp_path):
    python, bundle = signed
    unsigned = _rewritten(bundle, tmp_path / "unsigned.zenpatch.zip", lambda m: m.pop(bundleformat.SIGNATURE))
    _refused(_reuse(python, unsigned), "refused, unsigned", "--allow-unsigned")
    _accepted(_reuse(python, unsigned, "--allow-unsigned"), "signature not checked (--allow-unsigned)")
    # --expect-sha256 still pins the manifest, signed or not
    sha256 = bundleformat.manifest_sha256(bundleformat.read_members(unsigned))
    _accepted(_reuse(python, unsigned, "--allow-unsigned", "--expect-sha256", sha256), "signature not checked")
    _refused(_reuse(python, unsigned, "--allow-unsigned", "--expect-sha256", "0" * 64), "not the expected " + "0" * 64)


@pytest.mark.image
def test_bundle_signed_by_an_unknown_key_is_refused(signed, signing_key, tmp_path):
    python, bundle = signed
    elsewhere = tmp_path / "another-machine"  # no trusted keys
    _refused(_reuse(python, bundle, config=elsewhere), f"sha256:{_suite_key_id(signing_key)}", "not trusted here",
             "keys trust FILE")
    _accepted(_reuse(python, bundle, "--trusted-key", str(signing_key[1]), config=elsewhere), "signed by")


@pytest.mark.image
def test_bundle_edited_after_signing_is_refused(signed, tmp_path):
    """A member changed and the manifest re-hashed: the manifest verifies, its signature does not."""
    python, bundle = signed

    def edit(members, claim_new_manifest=False):
        code = next(name for name in members if name.endswith(".txt"))
        members[code] += b"# edited after signing\n"
        manifest = json.loads(members[bundleformat.MANIFEST])
        manifest["members"][code] = {"sha256": hashlib.sha256(members[code]).hexdigest(), "size": len(members[code])}
        members[bundleformat.MANIFEST] = json.dumps(manifest).encode()
        if claim_new_manifest:  # the forger also puts the new manifest's hash into the signature member
            document = json.loads(members[bundleformat.SIGNATURE])
            document["manifest_sha256"] = bundleformat.manifest_sha256(members)
            members[bundleformat.SIGNATURE] = json.dumps(document).encode()

    edited = _rewritten(bundle, tmp_path / "edited.zenpatch.zip", edit)
    assert bundleformat.verify(bundleformat.read_members(edited)) == []
    _refused(_reuse(python, edited), "signs another manifest", "changed after it was signed")
    claimed = _rewritten(bundle, tmp_path / "claimed.zenpatch.zip", lambda m: edit(m, claim_new_manifest=True))
    _refused(_reuse(python, claimed), "the signature does not verify under the trusted key")


@pytest.mark.image
def test_tampered_signature_member_is_refused(signed, signing_key, tmp_path):
    python, bundle = signed
    stranger = signing.new_key()

    def signature_edit(change):
        def apply(members):
            document = json.loads(members[bundleformat.SIGNATURE])
            change(document, members)
            members[bundleformat.SIGNATURE] = json.dumps(document).encode()
        return apply

    def flip(document, members):
        raw = bytearray(base64.b64decode(document["signature"]))
        raw[10] ^= 1
        document["signature"] = base64.b64encode(bytes(raw)).decode()

    def stranger_claims_the_trusted_key(document, members):
        """Signed by another key, naming the trusted key (its id and public key)."""
        document["signature"] = base64.b64encode(stranger.key.sign(
            signing.signed_message(bundleformat.manifest_sha256(members)))).decode()

    def stranger_signs(document, members):
        document.update(json.loads(signing.signature_member(stranger, bundleformat.manifest_sha256(members))))

    def claims_a_key_it_does_not_have(document, members):
        document["public_key"] = base64.b64encode(stranger.public.raw).decode()

    cases = {
        "flipped bit": (signature_edit(flip), "the signature does not verify"),
        "another key, naming the trusted one": (signature_edit(stranger_claims_the_trusted_key), "does not verify"),
        "another key": (signature_edit(stranger_signs), f"sha256:{stranger.public.key_id}, a key not trusted here"),
        "public key and key id disagree": (signature_edit(claims_a_key_it_does_not_have), "does not have its key id"),
        "algorithm": (signature_edit(lambda d, m: d.update(algorithm="rsa")), "algorithm 'rsa' (only ed25519)"),
        "not base64": (signature_edit(lambda d, m: d.update(signature="%%%")), "not base64"),
        "not JSON": (lambda m: m.__setitem__(bundleformat.SIGNATURE, b"{\n"), "signature.json is not JSON"),
        "not a signature": (lambda m: m.__setitem__(bundleformat.SIGNATURE, b"[]"), "not a bundle signature"),
    }
    for case, (change, text) in cases.items():
        forged = _rewritten(bundle, tmp_path / "forged.zenpatch.zip", change)
        line = _refused(_reuse(python, forged), "refused", text)
        assert "\\n" not in line, (case, line)


@pytest.mark.image
def test_without_cryptography_the_refusal_says_what_to_install(signed, tmp_path):
    python, bundle = signed
    if subprocess.run([python, "-c", "import cryptography"], capture_output=True).returncode == 0:
        pytest.skip(f"{python} has cryptography")
    _refused(_reuse(python, bundle, crypto=False), "cannot check its signature", "pip install cryptography",
             "--allow-unsigned")
    _accepted(_reuse(python, bundle, "--allow-unsigned", crypto=False), "signature not checked")
    unsigned = _rewritten(bundle, tmp_path / "unsigned.zenpatch.zip", lambda m: m.pop(bundleformat.SIGNATURE))
    _refused(_reuse(python, unsigned, crypto=False), "refused, unsigned")


API = """
import sys
from volatility3_zen import reuse
for kwargs in ({}, {"allow_unsigned": True}, {"trusted_keys": [sys.argv[2]]}):
    try:
        print(len(reuse.plan(sys.argv[1], **kwargs).actions), "actions")
    except reuse.ReuseError as exc:
        print("refused:", exc)
"""


@pytest.mark.image
def test_python_api(signed, signing_key, tmp_path):
    python, bundle = signed
    unsigned = _rewritten(bundle, tmp_path / "unsigned.zenpatch.zip", lambda m: m.pop(bundleformat.SIGNATURE))
    env = dict(os.environ, PYTHONPATH=reuse_check.reuse_pythonpath(python), **{signing.CONFIG_ENV: str(tmp_path)})
    result = subprocess.run([python, "-c", API, str(unsigned), str(signing_key[1])], capture_output=True, text=True, env=env)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3, result.stderr[-2000:]
    assert "refused, unsigned" in lines[0] and lines[1].endswith(" actions") and "refused, unsigned" in lines[2]
    result = subprocess.run([python, "-c", API, str(bundle), str(signing_key[1])], capture_output=True, text=True, env=env)
    lines = result.stdout.splitlines()
    assert "not trusted here" in lines[0] and lines[1].endswith(" actions") and lines[2].endswith(" actions"), lines
    # in this process (CPython 3.11, so no further than the signature)
    opened = PatchBundle(str(bundle))
    assert opened.check_signature().startswith(f"signed by ed25519 sha256:{_suite_key_id(signing_key)}")
    with pytest.raises(ReuseError, match="unsigned"):
        PatchBundle(str(unsigned)).check_signature()
    assert "not checked" in PatchBundle(str(unsigned)).check_signature(allow_unsigned=True)


# -- patchgen's key, and the keys command (no image) ---------------------------------------------------------------
def test_patchgen_without_a_key_warns_once_and_with_a_bad_key_fails(tmp_path, monkeypatch, caplog):
    from volatility3_zen.plugins.linux.zen import patchgen

    monkeypatch.setenv(signing.CONFIG_ENV, str(tmp_path / "empty"))
    # Volatility's command line, run in-process by other tests, sets its loggers' levels: set this one's
    with caplog.at_level(logging.WARNING, logger=patchgen.vollog.name):
        assert patchgen._signing_key(None) is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "written unsigned" in record.getMessage()
    assert "python -m volatility3_zen.keys generate" in record.getMessage()
    caplog.clear()
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    with caplog.at_level(logging.ERROR, logger=patchgen.session.vollog.name), pytest.raises(SystemExit) as exited:
        patchgen._signing_key(str(tmp_path / "not-a-key.pem"))
    assert exited.value.code == 1
    (record,) = caplog.records
    assert "--sign-key" in record.getMessage() and "not an unencrypted PEM private key" in record.getMessage()
    private, _, _ = signing.generate(tmp_path / "keys")
    assert patchgen._signing_key(str(private)).public.key_id == signing.load_private_key(private).public.key_id


def test_keys_generate_show_trust_list(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(signing.CONFIG_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "xdg" / "volatility3-zen"
    assert signing.config_dir() == folder

    assert keys.main(["generate"]) == 0
    private = folder / signing.PRIVATE_KEY
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    fingerprint = signing.load_private_key(private).public.fingerprint
    out = capsys.readouterr().out
    assert fingerprint in out
    assert [key.fingerprint for key in signing.trusted_keys()] == [fingerprint]  # the default key is trusted
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left

    assert keys.main(["generate"]) == 1  # never overwritten by accident
    assert "exists (keep it, or replace it with --force)" in capsys.readouterr().err
    assert signing.load_private_key(private).public.fingerprint == fingerprint

    assert keys.main(["show"]) == 0 and fingerprint in capsys.readouterr().out

    other = tmp_path / "other"
    assert keys.main(["generate", "--out", str(other)]) == 0
    capsys.readouterr()
    assert keys.main(["trust", str(other / signing.PUBLIC_KEY)]) == 0
    assert keys.main(["list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 2  # trust's line, then two keys

    assert keys.main(["trust", str(other / signing.PRIVATE_KEY)]) == 1
    assert "a private key; give the public key" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("junk")
    assert keys.main(["trust", str(tmp_path / "junk.pem")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a PEM or OpenSSH public key" in err
    assert keys.main(["generate", "--force"]) == 0 and signing.load_private_key(private).public.fingerprint != fingerprint
