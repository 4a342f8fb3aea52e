"""The patch bundle's container format: names, reading, and checking members against the manifest.

Standard library only: ``volatility3_zen.reuse`` imports this inside the base model's environment,
where neither Volatility nor the rest of the library is installed.  ``bundle.write`` writes bundles.

A bundle comes from an image the investigator does not control, so reading it never trusts it:
whatever is wrong inside the zip is a ``zipfile.BadZipFile`` with a one-line message naming the
member, and ``verify`` reports (never raises) what is wrong with the manifest.  What the zip's
central directory says is checked against ``Limits`` before anything is decompressed (member count,
each member's size, the total, the compression ratio), and members are read in chunks, hashed while
they are read (``read_verified``).
"""

import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

BUNDLE_FORMAT = "zen-patch-bundle"
BUNDLE_SCHEMA_VERSION = 1
BUNDLE_SUFFIX = ".zenpatch.zip"
MANIFEST = "manifest.json"
# The one member the manifest does not list: the signature of the manifest's sha256 (bundle/signing.py).
# Listing it would change the manifest, and so the hash it signs.
SIGNATURE = "signature.json"

# bundle.write stores or deflates members; other methods (bzip2, lzma, ...) are refused unread.
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
# What zipfile (and the decompressor under it) raises on a damaged archive besides BadZipFile:
# negative seeks (ValueError), names that are not UTF-8 (UnicodeDecodeError, a ValueError), a
# version or feature it does not implement, a truncated or invalid deflate stream (EOFError,
# zlib.error), an encrypted member (RuntimeError), a bad offset into a real file (OSError).
_ZIP_ERRORS = (zipfile.BadZipFile, ValueError, NotImplementedError, EOFError, zlib.error, RuntimeError, OSError)
_CHUNK = 1 << 20  # members are read, and hashed, a MiB at a time
_MiB, _GiB = 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """What a bundle may claim in its central directory; checked before anything is decompressed."""

    members: int = 10_000  # bundle.write writes two members per changed code object; the corpus' largest has 76
    member_bytes: int = 64 * _GiB  # any one member: weights are stored, so they are as large as the file itself
    total_bytes: int = 128 * _GiB  # all members together
    # A member that is deflated or parsed (JSON, code text): what a decompression bomb inflates and what
    # json.loads holds several times over.  The corpus' largest is 9 MB (a model.json).
    parsed_bytes: int = 256 * _MiB
    inflated_bytes: int = 512 * _MiB  # all deflated members together
    signature_bytes: int = 64 * 1024
    # Deflate expands at most 1032:1; a member claiming more than that is lying about its size.
    ratio: int = 1032


LIMITS = Limits()


def shown(text: str, limit: int = 120) -> str:
    """``text`` fit for a one-line message: non-printable characters (newlines included) escaped,
    at most ``limit`` characters.  Member names come from the bundle and may hold anything."""
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _problem(exc: BaseException) -> str:
    return shown(str(exc) or type(exc).__name__)


# -- the manifest ----------------------------------------------------------------------------------------
def _listed(manifest_data: bytes) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """(the manifest's member entries, problems); entries None when the manifest is unusable."""
    try:
        manifest: Any = json.loads(manifest_data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the parser
        return None, [f"{MANIFEST} is not JSON ({_problem(exc)})"]
    if not isinstance(manifest, dict):
        return None, [f"{MANIFEST} is not a JSON object"]
    problems = []
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"not a patch bundle (format {shown(repr(manifest.get('format')), 60)})")
    listed = manifest.get("members", {})
    if not isinstance(listed, dict):
        return None, problems + [f"{MANIFEST}: its members are not a JSON object"]
    return listed, problems


def _to_check(present, listed: Dict[str, Any]) -> List[str]:
    """Every name present or listed, but the manifest and (when the manifest does not list it) the signature."""
    names = set(present) - {MANIFEST} | set(listed)
    if SIGNATURE not in listed:
        names.discard(SIGNATURE)
    return sorted(names)


def _entry_problem(name: str, entry: Any, size: Optional[int]) -> Optional[str]:
    """What is wrong with a member before its bytes are read: ``size`` is its size, None when it is absent."""
    if size is None:
        return f"{shown(name)}: listed but missing"
    if entry is None:
        return f"{shown(name)}: not in the manifest"
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return f"{shown(name)}: no sha256 in the manifest"
    listed_size = entry.get("size")
    if isinstance(listed_size, int) and not isinstance(listed_size, bool) and listed_size != size:
        return f"{shown(name)}: {size} bytes, the manifest says {listed_size}"
    return None


def verify(members: Dict[str, bytes]) -> List[str]:
    """Problems of a bundle's members against its manifest (empty when it is intact); one line each.
    The signature member is not listed, and is not checked here (bundle/signing.py does)."""
    if MANIFEST not in members:
        return [f"no {MANIFEST}"]
    listed, problems = _listed(members[MANIFEST])
    if listed is None:
        return problems
    for name in _to_check(members, listed):
        problem = _entry_problem(name, listed.get(name), len(members[name]) if name in members else None)
        if problem is None and hashlib.sha256(members[name]).hexdigest() != listed[name]["sha256"]:
            problem = f"{shown(name)}: sha256 differs"
        if problem:
            problems.append(problem)
    return problems


# -- reading ------------------------------------------------------------------------------------------------
@dataclass
class Verified:
    """A bundle read by ``read_verified``: the members that match the manifest, and what does not."""

    members: Dict[str, bytes]  # the manifest, every member whose sha256 matched, and the signature (unchecked)
    problems: List[str]  # verify's problems; empty when the bundle is intact


def read_verified(source, limits: Limits = LIMITS) -> Verified:
    """The bundle, checked against its manifest while it is read: the directory against ``limits``
    first, then the manifest, then each member it lists, read in chunks and hashed as it is read.  A
    member the manifest does not list, or lists with another size, is a problem and is not read.

    Raises what ``read_members`` raises for a damaged container (one line, naming the member)."""
    with _open(source, limits) as archive:
        infos = {info.filename: info for info in _checked_directory(archive, limits)}
        if MANIFEST not in infos:
            return Verified({}, [f"no {MANIFEST}"])
        members = {MANIFEST: _read(archive, infos[MANIFEST])[0]}
        listed, problems = _listed(members[MANIFEST])
        if listed is None:
            return Verified(members, problems)
        if SIGNATURE in infos and SIGNATURE not in listed:
            members[SIGNATURE] = _read(archive, infos[SIGNATURE])[0]
        for name in _to_check(infos, listed):
            problem = _entry_problem(name, listed.get(name), infos[name].file_size if name in infos else None)
            if problem is None:
                data, digest = _read(archive, infos[name])
                if digest == listed[name]["sha256"]:
                    members[name] = data
                else:
                    problem = f"{shown(name)}: sha256 differs"
            if problem:
                problems.append(problem)
        return Verified(members, problems)


def read_members(source, limits: Limits = LIMITS) -> Dict[str, bytes]:
    """name -> bytes of every member, unverified (``verify`` checks them; ``read_verified`` does both).

    Raises OSError when the file cannot be opened and zipfile.BadZipFile (one line, naming the
    member) for anything wrong inside: not a zip, a damaged directory or member, a name twice, an
    encrypted member, a compression method bundles do not use, members overlapping one another or
    claiming more bytes than their compressed data can hold or ``limits`` allow (decompression bombs).
    """
    with _open(source, limits) as archive:
        return {info.filename: _read(archive, info)[0] for info in _checked_directory(archive, limits)}


class _open:
    """The zip of a path or a binary handle, its end record checked first (``with``)."""

    def __init__(self, source, limits: Limits):
        self.source = source
        self.limits = limits
        self.handle = None
        self.archive = None

    def __enter__(self) -> zipfile.ZipFile:
        handle = self.source
        if isinstance(handle, (str, bytes, os.PathLike)):
            handle = self.handle = open(handle, "rb")
        try:
            _check_end_record(handle, self.limits)
            self.archive = zipfile.ZipFile(handle)
        except zipfile.BadZipFile as exc:
            self.__exit__()
            raise zipfile.BadZipFile(_problem(exc)) from None
        except (ValueError, NotImplementedError, EOFError, OSError) as exc:
            self.__exit__()
            raise zipfile.BadZipFile(f"damaged zip directory ({_problem(exc)})") from None
        return self.archive

    def __exit__(self, *exc_info) -> None:
        if self.archive is not None:
            self.archive.close()
        if self.handle is not None:
            self.handle.close()


def _check_end_record(handle, limits: Limits) -> None:
    """The member count the end record gives, before zipfile builds an entry for every one."""
    end_record = getattr(zipfile, "_EndRecData", None)  # zipfile's own parser (private, there since 2.x)
    index = getattr(zipfile, "_ECD_ENTRIES_TOTAL", None)
    if end_record is None or index is None:
        return
    record = end_record(handle)
    handle.seek(0)
    if record is not None and record[index] > limits.members:
        raise zipfile.BadZipFile(f"{record[index]} members (bundles have at most {limits.members})")


def _checked_directory(archive: zipfile.ZipFile, limits: Limits) -> List[zipfile.ZipInfo]:
    infos = archive.infolist()
    _check_directory(infos, getattr(archive, "start_dir", None), limits)
    return infos


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Tuple[bytes, str]:
    """(the member's bytes, their sha256), read and hashed a chunk at a time.  zipfile stops at the
    directory's size (checked against the limits) and checks the CRC at the end."""
    digest, out = hashlib.sha256(), io.BytesIO()
    try:
        with archive.open(info) as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
    except _ZIP_ERRORS as exc:
        raise zipfile.BadZipFile(f"{shown(info.filename)}: damaged ({_problem(exc)})") from None
    if out.tell() != info.file_size:
        raise zipfile.BadZipFile(f"{shown(info.filename)}: damaged ({out.tell()} bytes, its directory entry says "
                                 f"{info.file_size})")
    return out.getvalue(), digest.hexdigest()


def _check_directory(infos: List[zipfile.ZipInfo], directory_offset, limits: Limits = LIMITS) -> None:
    """Refuses, before anything is decompressed, what a bundle written by bundle.write never holds."""
    if len(infos) > limits.members:
        raise zipfile.BadZipFile(f"{len(infos)} members (bundles have at most {limits.members})")
    seen = set()
    total = inflated = 0
    for info in infos:
        name = shown(info.filename)
        if info.filename in seen:
            raise zipfile.BadZipFile(f"{name}: more than one member has this name")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise zipfile.BadZipFile(f"{name}: encrypted")
        if info.compress_type not in _METHODS:
            raise zipfile.BadZipFile(f"{name}: compression method {info.compress_type} (bundles are stored or deflated)")
        deflated = info.compress_type == zipfile.ZIP_DEFLATED
        if deflated and info.file_size > limits.ratio * info.compress_size + 64:
            raise zipfile.BadZipFile(f"{name}: claims {info.file_size} bytes from {info.compress_size} compressed")
        if not deflated and info.file_size != info.compress_size:
            raise zipfile.BadZipFile(f"{name}: stored, yet claims {info.file_size} bytes from {info.compress_size}")
        if info.filename == SIGNATURE:
            limit, what = limits.signature_bytes, "a signature"
        elif deflated or info.filename.endswith(".json"):
            limit, what = limits.parsed_bytes, "a deflated or JSON member"
        else:
            limit, what = limits.member_bytes, "a member"
        if info.file_size > limit:
            raise zipfile.BadZipFile(f"{name}: {info.file_size} bytes, more than {what} may hold ({limit})")
        total += info.file_size
        inflated += info.file_size if deflated else 0
        if total > limits.total_bytes:
            raise zipfile.BadZipFile(f"{name}: the members up to this one hold {total} bytes, more than a bundle "
                                     f"may ({limits.total_bytes})")
        if inflated > limits.inflated_bytes:
            raise zipfile.BadZipFile(f"{name}: the deflated members up to this one hold {inflated} bytes, more "
                                     f"than a bundle may ({limits.inflated_bytes})")
    # Each member's data lies between its local header and the next member's: members sharing
    # data (the classic zip bomb: one stream, many names) or running into the directory are refused.
    ordered = sorted(infos, key=lambda info: info.header_offset)
    ends = [info.header_offset for info in ordered[1:]] + [directory_offset]
    for info, end in zip(ordered, ends):
        if end is not None and info.header_offset + 30 + info.compress_size > end:  # 30: a local header
            raise zipfile.BadZipFile(f"{shown(info.filename)}: overlaps the next member or the directory")


def manifest_sha256(members: Dict[str, bytes]) -> str:
    """The bundle's identity: the manifest names every other member's hash, so its own hash pins all."""
    return hashlib.sha256(members[MANIFEST]).hexdigest()
