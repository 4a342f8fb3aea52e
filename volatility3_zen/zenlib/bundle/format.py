"""The patch bundle's container format: names, reading, and checking members against the manifest.

Standard library only: ``volatility3_zen.reuse`` imports this inside the base model's environment,
where neither Volatility nor the rest of the library is installed.  ``bundle.write`` writes bundles.

A bundle comes from an image the investigator does not control, so reading it never trusts it:
whatever is wrong inside the zip is a ``zipfile.BadZipFile`` with a one-line message naming the
member, and ``verify`` reports (never raises) what is wrong with the manifest.
"""

import hashlib
import json
import zipfile
import zlib
from typing import Any, Dict, List

BUNDLE_FORMAT = "zen-patch-bundle"
BUNDLE_SCHEMA_VERSION = 1
BUNDLE_SUFFIX = ".zenpatch.zip"
MANIFEST = "manifest.json"

# bundle.write stores or deflates members; other methods (bzip2, lzma, ...) are refused unread.
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
# Deflate expands at most 1032:1; a member claiming more than this is a decompression bomb.
_MAX_DEFLATE_RATIO = 1032
# What zipfile (and the decompressor under it) raises on a damaged archive besides BadZipFile:
# negative seeks (ValueError), names that are not UTF-8 (UnicodeDecodeError, a ValueError), a
# version or feature it does not implement, a truncated or invalid deflate stream (EOFError,
# zlib.error), an encrypted member (RuntimeError), a bad offset into a real file (OSError).
_ZIP_ERRORS = (zipfile.BadZipFile, ValueError, NotImplementedError, EOFError, zlib.error, RuntimeError, OSError)


def shown(text: str, limit: int = 120) -> str:
    """``text`` fit for a one-line message: non-printable characters (newlines included) escaped,
    at most ``limit`` characters.  Member names come from the bundle and may hold anything."""
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _problem(exc: BaseException) -> str:
    return shown(str(exc) or type(exc).__name__)


def verify(members: Dict[str, bytes]) -> List[str]:
    """Problems of a bundle's members against its manifest (empty when it is intact); one line each."""
    if MANIFEST not in members:
        return [f"no {MANIFEST}"]
    try:
        manifest: Any = json.loads(members[MANIFEST])
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the parser
        return [f"{MANIFEST} is not JSON ({_problem(exc)})"]
    if not isinstance(manifest, dict):
        return [f"{MANIFEST} is not a JSON object"]
    problems = []
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"not a patch bundle (format {shown(repr(manifest.get('format')), 60)})")
    listed = manifest.get("members", {})
    if not isinstance(listed, dict):
        return problems + [f"{MANIFEST}: its members are not a JSON object"]
    for name in sorted(set(members) - {MANIFEST} | set(listed)):
        entry = listed.get(name)
        if name not in members:
            problems.append(f"{shown(name)}: listed but missing")
        elif name not in listed:
            problems.append(f"{shown(name)}: not in the manifest")
        elif not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            problems.append(f"{shown(name)}: no sha256 in the manifest")
        elif hashlib.sha256(members[name]).hexdigest() != entry["sha256"]:
            problems.append(f"{shown(name)}: sha256 differs")
    return problems


def read_members(path_or_handle) -> Dict[str, bytes]:
    """name -> bytes of every member.

    Raises OSError when the file cannot be opened and zipfile.BadZipFile (one line, naming the
    member) for anything wrong inside: not a zip, a damaged directory or member, a name twice, an
    encrypted member, a compression method bundles do not use, members overlapping one another or
    claiming more bytes than their compressed data can hold (decompression bombs).
    """
    try:
        archive = zipfile.ZipFile(path_or_handle)
    except zipfile.BadZipFile as exc:
        raise zipfile.BadZipFile(_problem(exc)) from None
    except (ValueError, NotImplementedError, EOFError) as exc:
        raise zipfile.BadZipFile(f"damaged zip directory ({_problem(exc)})") from None
    with archive:
        infos = archive.infolist()
        _check_directory(infos, getattr(archive, "start_dir", None))
        members = {}
        for info in infos:
            try:
                members[info.filename] = archive.read(info)
            except _ZIP_ERRORS as exc:
                raise zipfile.BadZipFile(f"{shown(info.filename)}: damaged ({_problem(exc)})") from None
        return members


def _check_directory(infos: List[zipfile.ZipInfo], directory_offset) -> None:
    """Refuses, before anything is decompressed, what a bundle written by bundle.write never holds."""
    seen = set()
    for info in infos:
        name = shown(info.filename)
        if info.filename in seen:
            raise zipfile.BadZipFile(f"{name}: more than one member has this name")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise zipfile.BadZipFile(f"{name}: encrypted")
        if info.compress_type not in _METHODS:
            raise zipfile.BadZipFile(f"{name}: compression method {info.compress_type} (bundles are stored or deflated)")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 64:
            raise zipfile.BadZipFile(f"{name}: claims {info.file_size} bytes from {info.compress_size} compressed")
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
