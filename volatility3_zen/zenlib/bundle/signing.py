"""Signed bundles: the investigator's ed25519 key signs the manifest's sha256 (docs/reuse.md, "Signed bundles").

The manifest lists the sha256 of every other member, so a signature of its hash covers the whole
bundle.  The signature is the member ``signature.json`` (``format.SIGNATURE``), which the manifest
does not list: signing leaves the manifest, and the bundle's identity, as they were.  The signed
message is the ASCII text ``zen-patch-bundle manifest sha256 <hex>``.

Keys live in the configuration folder (``config_dir``): ``signing-key.pem`` (the private key, PKCS#8
PEM, mode 0600), ``signing-key.pub.pem`` and ``trusted-keys/*.pem`` (public keys whose signatures
reuse accepts).  ``python -m volatility3_zen.keys`` makes and trusts them.

Standard library at import time; pyca ``cryptography`` only when a key is made or read, or a
signature made or checked: ``volatility3_zen.reuse`` imports this module in the base model's
environment, where cryptography may be missing (``CryptographyMissing`` says so in one line).
"""

import base64
import binascii
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .format import BUNDLE_FORMAT, SIGNATURE, manifest_sha256, shown

ALGORITHM = "ed25519"
SIGNATURE_FORMAT = "zen-bundle-signature"
SIGNATURE_VERSION = 1
CONFIG_ENV = "ZEN_CONFIG_DIR"  # overrides the configuration folder (the test suite uses its own)
PRIVATE_KEY = "signing-key.pem"
PUBLIC_KEY = "signing-key.pub.pem"
TRUSTED_KEYS = "trusted-keys"
KEYS_COMMAND = "python -m volatility3_zen.keys"


class SigningError(Exception):
    """A key or a signature that cannot be used; the message is one line."""

    def __init__(self, message: str):
        super().__init__(shown(message, limit=1000))


class CryptographyMissing(SigningError):
    """The cryptography package is not installed here."""


class Unsigned(SigningError):
    """The bundle has no signature member."""


def _crypto():
    """cryptography's ed25519 and serialization modules (CryptographyMissing when not installed)."""
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise CryptographyMissing(f"the cryptography package is not installed here ({exc.name or exc}): "
                                  "pip install cryptography") from None
    return ed25519, serialization, exceptions


# -- where keys are -------------------------------------------------------------------------------------
def config_dir() -> Path:
    """$ZEN_CONFIG_DIR, else $XDG_CONFIG_HOME/volatility3-zen, else ~/.config/volatility3-zen."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "volatility3-zen"


def default_private_key() -> Path:
    return config_dir() / PRIVATE_KEY


def trusted_keys_dir() -> Path:
    return config_dir() / TRUSTED_KEYS


# -- keys ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the 32 bytes of the ed25519 public key
    source: str  # where it came from (a file, or "signature.json")

    @property
    def key_id(self) -> str:
        """sha256 of the raw public key, hex: what a signature names its key by."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def fingerprint(self) -> str:
        return f"{ALGORITHM} sha256:{self.key_id}"

    def pem(self) -> bytes:
        ed25519, serialization, _ = _crypto()
        return ed25519.Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    key: Any  # cryptography's Ed25519PrivateKey
    source: str

    @property
    def public(self) -> PublicKey:
        _, serialization, _ = _crypto()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(raw, self.source)

    def pem(self) -> bytes:
        _, serialization, _ = _crypto()
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def new_key() -> SigningKey:
    ed25519, _, _ = _crypto()
    return SigningKey(ed25519.Ed25519PrivateKey.generate(), "(new)")


def _read_file(path, what: str, limit: int = 64 * 1024) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise SigningError(f"{path}: not a {what} (larger than {limit} bytes)")
    return data


def load_private_key(path) -> SigningKey:
    """The ed25519 private key of a PEM file (unencrypted PKCS#8, as ``keys generate`` writes it)."""
    ed25519, serialization, _ = _crypto()
    data = _read_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # TypeError: an encrypted key
        raise SigningError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"{path}: not an {ALGORITHM} private key ({type(key).__name__})")
    return SigningKey(key, str(path))


def load_public_key(path) -> PublicKey:
    """The ed25519 public key of a file: PEM (SubjectPublicKeyInfo) or an OpenSSH ``ssh-ed25519`` line."""
    ed25519, serialization, _ = _crypto()
    data = _read_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise SigningError(f"{path}: a private key; give the public key (the .pub.pem file next to it)")
    try:
        key = (serialization.load_ssh_public_key(data.strip()) if data.lstrip().startswith(b"ssh-")
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError):  # (cryptography's message points to its FAQ, not to the fault)
        raise SigningError(f"{path}: not a PEM or OpenSSH public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningError(f"{path}: not an {ALGORITHM} public key ({type(key).__name__})")
    return PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw), str(path))


def signing_key(path=None) -> Optional[SigningKey]:
    """The key to sign with: ``path``, else the default key when it exists (None when it does not)."""
    if path is None:
        path = default_private_key()
        if not path.exists():
            return None
    return load_private_key(path)


def trusted_keys(extra: Sequence = ()) -> List[PublicKey]:
    """The public keys of the trusted-keys folder (``*.pem``, ``*.pub``) and the ``extra`` files."""
    folder = trusted_keys_dir()
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix in (".pem", ".pub")) if folder.is_dir() else []
    except OSError as exc:
        raise SigningError(f"{folder}: cannot list the trusted keys ({exc.strerror or exc})") from None
    return [load_public_key(path) for path in list(files) + list(extra)]


def write_private(path: Path, data: bytes, replace: bool = False) -> None:
    """Atomically, mode 0600 from the start; an existing file is kept unless ``replace``."""
    _write_atomic(path, data, 0o600, replace)


def write_public(path: Path, data: bytes, replace: bool = False) -> None:
    _write_atomic(path, data, 0o644, replace)


def _write_atomic(path: Path, data: bytes, mode: int, replace: bool) -> None:
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # fails when the file exists: never overwritten by accident
            except FileExistsError:
                raise SigningError(f"{path} exists (keep it, or replace it with --force)") from None
    except OSError as exc:
        raise SigningError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def trust(key: PublicKey, replace: bool = True) -> Path:
    """Copies ``key`` into the trusted-keys folder (named by its key id); the file written."""
    path = trusted_keys_dir() / f"{key.key_id[:16]}.pem"
    write_public(path, key.pem(), replace=replace)
    return path


def generate(directory=None, replace: bool = False) -> Tuple[Path, Path, PublicKey]:
    """A new key pair in ``directory`` (default: the configuration folder, where it is also trusted):
    (private key file, public key file, the public key)."""
    default = directory is None or Path(directory).resolve() == config_dir().resolve()
    directory = Path(directory) if directory is not None else config_dir()
    key = new_key()
    private, public = directory / PRIVATE_KEY, directory / PUBLIC_KEY
    if not replace:
        for path in (private, public):
            if path.exists():
                raise SigningError(f"{path} exists (keep it, or replace it with --force)")
    write_private(private, key.pem(), replace)
    write_public(public, key.public.pem(), replace=True)
    if default:
        trust(PublicKey(key.public.raw, str(public)))
    return private, public, PublicKey(key.public.raw, str(public))


# -- signatures ----------------------------------------------------------------------------------------------
def signed_message(manifest_sha256: str) -> bytes:
    return f"{BUNDLE_FORMAT} manifest sha256 {manifest_sha256}".encode("ascii")


def signature_member(key: SigningKey, manifest_sha256: str) -> bytes:
    """signature.json for the bundle whose manifest has this sha256."""
    public = key.public
    document = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": ALGORITHM,
                "key_id": public.key_id, "public_key": base64.b64encode(public.raw).decode(),
                "manifest_sha256": manifest_sha256,
                "signature": base64.b64encode(key.key.sign(signed_message(manifest_sha256))).decode()}
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def sign(members: Dict[str, bytes], key: SigningKey) -> None:
    """Adds the signature member to a bundle's members (the manifest is unchanged)."""
    members[SIGNATURE] = signature_member(key, manifest_sha256(members))


@dataclass(frozen=True)
class Signer:
    """Who signed a bundle whose signature checked out."""

    key: PublicKey  # the trusted key (its source: the trusted file)

    def text(self) -> str:
        return f"signed by {self.key.fingerprint} (trusted: {self.key.source})"


def _signature_fields(data: bytes) -> Tuple[str, bytes, str]:
    """(key id, signature bytes, manifest sha256) of a signature member, checked for form."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SigningError(f"{SIGNATURE} is not JSON ({shown(str(exc), 100)})") from None
    if not isinstance(document, dict) or document.get("format") != SIGNATURE_FORMAT:
        raise SigningError(f"{SIGNATURE} is not a bundle signature")
    if document.get("algorithm") != ALGORITHM:
        raise SigningError(f"{SIGNATURE}: algorithm {shown(repr(document.get('algorithm')), 40)} (only {ALGORITHM})")
    fields = [document.get(name) for name in ("key_id", "signature", "manifest_sha256", "public_key")]
    if not all(isinstance(value, str) for value in fields):
        raise SigningError(f"{SIGNATURE}: key_id, signature, manifest_sha256 and public_key must be strings")
    key_id, signature, manifest_sha256, public_key = fields
    try:
        signature_bytes = base64.b64decode(signature, validate=True)
        public_raw = base64.b64decode(public_key, validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"{SIGNATURE}: the signature or public key is not base64") from None
    if hashlib.sha256(public_raw).hexdigest() != key_id.lower():
        raise SigningError(f"{SIGNATURE}: its public key does not have its key id")
    return key_id.lower(), signature_bytes, manifest_sha256


def check(signature: Optional[bytes], manifest_sha256: str, trusted: Sequence[PublicKey]) -> Signer:
    """The trusted key that signed the manifest with this sha256; SigningError (one line) when the
    bundle is unsigned (``Unsigned``), its signature is malformed, names a key not trusted here, or
    does not verify under it.  The key is the trusted one: the bundle's copy of it is never used."""
    if signature is None:
        raise Unsigned(f"unsigned (no {SIGNATURE})")
    key_id, signature_bytes, signed_sha256 = _signature_fields(signature)
    if signed_sha256 != manifest_sha256:
        raise SigningError(f"{SIGNATURE} signs another manifest ({shown(signed_sha256, 70)}): the bundle was "
                           "changed after it was signed")
    known = [key for key in trusted if key.key_id == key_id]
    if not known:
        raise SigningError(f"signed by {ALGORITHM} sha256:{key_id}, a key not trusted here (trust its public key: "
                           f"{KEYS_COMMAND} trust FILE, or --trusted-key FILE)")
    ed25519, _, exceptions = _crypto()
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(known[0].raw).verify(signature_bytes, signed_message(manifest_sha256))
    except exceptions.InvalidSignature:
        raise SigningError(f"the signature does not verify under the trusted key sha256:{key_id} (the bundle "
                           "was changed after it was signed, or the signature is forged)") from None
    return Signer(known[0])
