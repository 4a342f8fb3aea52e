"""The patch bundle's container format: names, reading, and checking members against the manifest.

Standard library only: ``volatility3_zen.reuse`` imports this inside the base model's environment,
where neither Volatility nor the rest of the library is installed.  ``bundle.write`` writes bundles.
"""

import hashlib
import json
import zipfile
from typing import Dict, List

BUNDLE_FORMAT = "zen-patch-bundle"
BUNDLE_SCHEMA_VERSION = 1
BUNDLE_SUFFIX = ".zenpatch.zip"
MANIFEST = "manifest.json"


def verify(members: Dict[str, bytes]) -> List[str]:
    """Problems of a bundle's members against its manifest (empty when it is intact)."""
    if MANIFEST not in members:
        return [f"no {MANIFEST}"]
    try:
        manifest = json.loads(members[MANIFEST])
    except ValueError as exc:
        return [f"{MANIFEST} is not JSON ({exc})"]
    problems = []
    if manifest.get("format") != BUNDLE_FORMAT:
        problems.append(f"not a patch bundle (format {manifest.get('format')!r})")
    listed = manifest.get("members", {})
    for name in sorted(set(members) - {MANIFEST} | set(listed)):
        if name not in members:
            problems.append(f"{name}: listed but missing")
        elif name not in listed:
            problems.append(f"{name}: not in the manifest")
        elif hashlib.sha256(members[name]).hexdigest() != listed[name]["sha256"]:
            problems.append(f"{name}: sha256 differs")
    return problems


def read_members(path_or_handle) -> Dict[str, bytes]:
    """name -> bytes of every member (raises zipfile.BadZipFile / OSError on a bad file)."""
    with zipfile.ZipFile(path_or_handle) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def manifest_sha256(members: Dict[str, bytes]) -> str:
    """The bundle's identity: the manifest names every other member's hash, so its own hash pins all."""
    return hashlib.sha256(members[MANIFEST]).hexdigest()
