"""Opening a patch bundle in the base model's environment: integrity, signature, version and environment checks."""

import hashlib
import json
import marshal
import sys
import zipfile
from importlib import metadata
from typing import Any, Dict, List, Optional, Sequence

from ..zenlib.bundle import format as bundleformat
from ..zenlib.bundle import signing


class ReuseError(Exception):
    """A bundle that cannot be used here; the message is one line for the investigator (whatever the
    bundle put into it: member names, values from its manifest)."""

    def __init__(self, message: str):
        super().__init__(bundleformat.shown(message, limit=1000))


# The manifest fields reuse reads, with the JSON types a bundle.write manifest gives them.
_MANIFEST_FIELDS = (("python_version", (str,)), ("torch_version", (str, type(None))), ("base", (dict,)),
                    ("target", (dict,)))


class PatchBundle:
    """A verified bundle: its manifest and members, decoded on demand.  The constructor checks the
    container (limits before decompressing, every member hashed as it is read) and the manifest;
    ``check_signature`` who signed it (``open_bundle`` does both)."""

    def __init__(self, path: str, expect_sha256: Optional[str] = None):
        self.path = path
        self.signer: Optional[str] = None  # who signed it, once check_signature has run
        try:
            verified = bundleformat.read_verified(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ReuseError(f"{path}: not a readable patch bundle ({exc})") from None
        self.members: Dict[str, bytes] = verified.members
        problems = verified.problems
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ReuseError(f"{path}: refused, the bundle was altered or damaged: {problems[0]}{more}")
        self.sha256 = bundleformat.manifest_sha256(self.members)
        if expect_sha256 and expect_sha256.lower() != self.sha256:
            raise ReuseError(f"{path}: refused, its manifest sha256 is {self.sha256}, not the expected {expect_sha256}")
        self.manifest = self.json(bundleformat.MANIFEST)  # verify: a JSON object
        if self.manifest.get("schema") != bundleformat.BUNDLE_SCHEMA_VERSION:
            raise ReuseError(f"{path}: bundle schema {bundleformat.shown(repr(self.manifest.get('schema')), 60)} is not "
                             f"supported (this version reads {bundleformat.BUNDLE_SCHEMA_VERSION})")
        for field, types in _MANIFEST_FIELDS:
            if not isinstance(self.manifest.get(field), types):
                raise ReuseError(f"{path}: refused, {bundleformat.MANIFEST} has no valid {field!r}")
        if "name" not in self.manifest["base"] or not isinstance(self.manifest["base"].get("source"), (str, type(None))):
            raise ReuseError(f"{path}: refused, {bundleformat.MANIFEST} has no valid 'base'")

    def check_signature(self, trusted_keys: Sequence[str] = (), allow_unsigned: bool = False) -> str:
        """Who signed the bundle, checked against the trusted keys (the trusted-keys folder and the
        ``trusted_keys`` files); ReuseError when it is unsigned, signed by a key not trusted here or
        not verifiable.  ``allow_unsigned`` skips the check (and needs no cryptography package)."""
        if allow_unsigned:
            self.signer = "signature not checked (--allow-unsigned)"
            return self.signer
        how = "--allow-unsigned (allow_unsigned=True) skips the check"
        try:
            signature = self.members.get(bundleformat.SIGNATURE)
            if signature is None:
                raise signing.Unsigned(f"unsigned (no {bundleformat.SIGNATURE}; sign bundles with a key from "
                                       f"'{signing.KEYS_COMMAND} generate')")
            trusted = signing.trusted_keys(trusted_keys)
            self.signer = signing.check(signature, self.sha256, trusted).text()
        except signing.CryptographyMissing as exc:
            raise ReuseError(f"{self.path}: cannot check its signature: {exc}; {how}") from None
        except signing.SigningError as exc:
            raise ReuseError(f"{self.path}: refused, {exc}; {how}") from None
        return self.signer

    # -- members ---------------------------------------------------------------------------------------
    def json(self, name: str) -> Any:
        """A JSON member, decoded (ReuseError when it is not JSON)."""
        try:
            return json.loads(self.members[name])
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the parser
            raise ReuseError(f"{self.path}: {name} is not JSON ({exc})") from None

    def has(self, name: str) -> bool:
        return name in self.members

    @property
    def python_version(self) -> str:
        return self.manifest["python_version"]

    def check_interpreter(self) -> None:
        """Marshal data is only valid for the CPython minor version that wrote it."""
        here = "%d.%d" % sys.version_info[:2]
        if self.python_version != here:
            raise ReuseError(f"{self.path}: refused, the bundle's code is for CPython {self.python_version} "
                             f"(the image's), this is CPython {here}; run it under python{self.python_version}")
        if sys.implementation.name != "cpython":
            raise ReuseError(f"{self.path}: refused, the bundle's code is CPython bytecode, this is {sys.implementation.name}")

    def environment_notes(self) -> List[str]:
        """Differences between this environment and the image's that may change results (not refusals)."""
        notes = []
        wanted = self.manifest.get("torch_version")
        try:
            import torch
            if wanted and torch.__version__ != wanted:
                notes.append(f"torch {torch.__version__} here, {wanted} in the image: outputs may differ")
        except ImportError:
            if wanted:
                notes.append(f"torch is not installed here (the image has {wanted})")
        source = (self.manifest.get("base") or {}).get("source") or ""
        for requirement in source.split(";")[0].split(","):
            name, _, version = requirement.strip().partition("==")
            version = version.split()[0] if version.split() else ""
            if not name or not version:
                continue
            try:
                installed = metadata.version(name)
            except Exception:  # noqa: BLE001 -- PackageNotFoundError, or a broken install
                notes.append(f"the base package {name}=={version} is not installed here")
                continue
            if installed != version:
                notes.append(f"the base package {name} is {installed} here, {version} in the base fingerprint")
        return notes

    def context(self) -> Dict[str, Any]:
        """context.json (the execution context of the image), {} where the bundle has none."""
        context = self.json("context.json") if self.has("context.json") else {}
        return context if isinstance(context, dict) else {}

    # -- code --------------------------------------------------------------------------------------------
    def code_entries(self) -> Dict[str, Dict[str, Any]]:
        return {e["function_id"]: e for e in self.json("code.json")["code_objects"]} if self.has("code.json") else {}

    def load_code(self, entry: Dict[str, Any]):
        """The entry's code object, checked against the bytecode hash the image gave."""
        try:
            code = marshal.loads(self.members[entry["marshal"]])
        except (ValueError, EOFError, TypeError) as exc:
            raise ReuseError(f"{entry['marshal']}: not loadable marshal data for CPython {self.python_version} ({exc})") from None
        digest = hashlib.sha256(code.co_code).hexdigest()
        if digest != entry["attributes"]["co_code_sha256"]:
            raise ReuseError(f"{entry['marshal']}: its bytecode differs from the image's ({entry['function_id']})")
        return code

    # -- tensors -------------------------------------------------------------------------------------------
    def tensors(self, member: str) -> Dict[str, Any]:
        """name -> torch.Tensor of a safetensors member."""
        data = self.members[member]
        try:
            from safetensors.torch import load
        except ImportError:
            return read_safetensors(data)
        return load(data)


def read_safetensors(data: bytes) -> Dict[str, Any]:
    """A minimal reader for environments without the safetensors package (written by hand: a JSON
    header and raw little-endian bytes; the package is preferred where installed)."""
    import torch

    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "C64": "complex64",
             "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    start = 8 + length
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, names[spec["dtype"]])
        begin, end = spec["data_offsets"]
        raw = bytearray(data[start + begin:start + end])
        out[name] = (torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)).reshape(spec["shape"])
    return out
