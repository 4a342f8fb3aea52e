"""Chain of custody for what a plugin writes (``bundle.contents.RunProvenance``): the image's name,
size and sha256, when the analysis ran, the versions of the tools, and the command line.

The image is hashed once per plugin run, and only by a plugin that writes a bundle or a report
(``RunRecorder.provenance`` on its first call), so a plain listing never reads the whole file.  The
hash covers the file as it lies on disk (a compressed image is hashed compressed), which is what an
investigator hashes with ``sha256sum`` to show that the image is the one analysed.
"""

import hashlib
import logging
import os
import platform
import sys
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Callable, List, Optional, Tuple

from volatility3.framework import constants
from volatility3.framework.layers import physical

from ... import __version__
from ..bundle.contents import RunProvenance

vollog = logging.getLogger(__name__)

HASH_CHUNK = 16 << 20  # large reads: hashlib runs at disk speed, Python overhead is negligible
# Hashing a larger image takes seconds: say so at WARNING level (shown by default), not only at INFO.
ANNOUNCE_SIZE = 256 << 20
_SINGLE_LOCATION = "automagic.LayerStacker.single_location"


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second ("2024-05-01T13:02:11Z")."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_location(context) -> Optional[str]:
    """The URL of the file the image was opened from: what ``vol -f`` gave the layer stacker, else the
    location of the first file layer the context holds (a plugin configured by hand)."""
    location = context.config.get(_SINGLE_LOCATION)
    if location:
        return str(location)
    for name in sorted(context.layers):
        layer = context.layers[name]
        if isinstance(layer, physical.FileLayer):
            return str(layer.location)
    return None


def local_path(location: str) -> Optional[str]:
    """The file system path of a ``file:`` URL (None for other schemes: http, ...)."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme not in ("file", ""):
        return None
    return urllib.request.url2pathname(parsed.path) if parsed.scheme else location


def hash_file(path: str, progress: Optional[Callable[[float, str], None]] = None) -> Tuple[int, str, bool]:
    """(size, sha256 hex, whether the file changed while it was read), streaming in large chunks.
    Raises OSError when the file cannot be read."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    done = 0
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
            done += count
            if progress is not None and before.st_size:
                progress(min(100.0, 100.0 * done / before.st_size), "Hashing the image (sha256)")
        after = os.fstat(handle.fileno())
    changed = (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or done != after.st_size
    return done, digest.hexdigest(), changed


class RunRecorder:
    """The provenance of one plugin run: created when the plugin starts, asked once per bundle or
    report written; the image is hashed on the first ask only."""

    def __init__(self, context, progress: Optional[Callable[[float, str], None]] = None,
                 argv: Optional[List[str]] = None):
        self.started = utc_now()
        self._context = context
        self._progress = progress
        self._argv = list(sys.argv if argv is None else argv)
        self._image: Optional[Tuple[str, Optional[int], Optional[str], List[str]]] = None

    def provenance(self) -> RunProvenance:
        """The run's provenance, finished now (call it right before writing)."""
        if self._image is None:
            self._image = self._identify_image()
        name, size, sha256, notes = self._image
        return RunProvenance(image_name=name, image_size=size, image_sha256=sha256, started=self.started,
                             finished=utc_now(), tool_version=__version__,
                             volatility_version=constants.PACKAGE_VERSION, python_version=platform.python_version(),
                             command_line=list(self._argv), notes=list(notes))

    def _identify_image(self) -> Tuple[str, Optional[int], Optional[str], List[str]]:
        location = image_location(self._context)
        if location is None:
            return "", None, None, ["the image is not known: Volatility opened no single file"]
        path = local_path(location)
        if path is None:
            name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(location).path))
            vollog.warning("image %s is not a local file: the report and bundle record no sha256 of it", location)
            return name, None, None, [f"not hashed: {location} is not a local file"]
        name = os.path.basename(path)
        try:
            size = os.path.getsize(path)
            vollog.log(logging.WARNING if size >= ANNOUNCE_SIZE else logging.INFO,
                       "hashing the image %s (%.1f MiB, sha256) for the chain of custody of the report and bundle",
                       name, size / (1 << 20))
            size, sha256, changed = hash_file(path, self._progress)
        except OSError as exc:
            vollog.warning("image %s: cannot be hashed (%s); the report and bundle record no sha256", path,
                           exc.strerror or exc)
            return name, None, None, [f"not hashed: {exc.strerror or exc}"]
        vollog.info("image %s: %d bytes, sha256 %s", name, size, sha256)
        notes = []
        if changed:
            notes.append("the image file changed while it was hashed: the sha256 may not be of what was analysed")
            vollog.warning("image %s: %s", name, notes[-1])
        return name, size, sha256, notes
