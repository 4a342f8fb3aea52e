"""The base model library: a directory of base-model fingerprints, one ``<name>.json`` UR each.

A fingerprint is the UR of a deployed base model (``representation.unified``) with its library name
and provenance: the image it was taken from, the process, the model packages and their versions.
The repository ships one (``bml/`` at its top level); ``--bml DIR`` on the plugins selects another.
Writes are atomic (a temporary file renamed into place), and nothing but ``<name>.json`` is read.
"""

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ZenError
from ..representation.unified import UnifiedRepresentation

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ENVIRONMENT_VARIABLE = "ZEN_BML"


class LibraryError(ZenError):
    pass


def default_directory() -> Path:
    """$ZEN_BML, else the checkout's bml/, else the copy a wheel installs under <prefix>/share."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(os.environ[ENVIRONMENT_VARIABLE])
    checkout = Path(__file__).resolve().parents[3] / "bml"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "volatility3-zen" / "bml"


class BaseModelLibrary:
    def __init__(self, directory: Optional[os.PathLike] = None):
        self.directory = Path(directory) if directory else default_directory()
        self._cache: Dict[str, UnifiedRepresentation] = {}

    def names(self) -> List[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json") if NAME_PATTERN.match(p.stem))

    def load(self, name: str) -> UnifiedRepresentation:
        if name not in self._cache:
            path = self.directory / f"{name}.json"
            try:
                ur = UnifiedRepresentation.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LibraryError(f"base model library: {path} is not a readable fingerprint ({exc})") from exc
            ur.name = ur.name or name
            self._cache[name] = ur
        return self._cache[name]

    def all(self) -> List[UnifiedRepresentation]:
        names = self.names()
        if not names:
            raise LibraryError(f"base model library {self.directory} holds no fingerprints")
        return [self.load(n) for n in names]

    def add(self, name: str, ur: UnifiedRepresentation, replace: bool = False) -> Path:
        if not NAME_PATTERN.match(name):
            raise LibraryError(f"base model name {name!r}: use letters, digits, '.', '_' and '-'")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.json"
        if path.exists() and not replace:
            raise LibraryError(f"{path} exists; remove it first to replace the fingerprint")
        ur.name = name
        write_atomically(path, ur.dumps())
        self._cache[name] = ur
        return path


def write_atomically(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a library is shared like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
