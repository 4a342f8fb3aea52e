"""Where images live, how they are keyed, and how a finished build is published.

An image directory is ``<root>/<NAME>-<kind>-<hash16>/`` where the hash covers everything that
determines the image (see ``build.image_inputs``).  A build happens in a temporary sibling directory
and is renamed into place only when complete, under a per-image lock, so a directory that exists is
always a whole image and is never modified afterwards.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

ROOT_ENV = "ZEN_CORPUS_CACHE"
BUILD_RECORD = "build.json"


def root() -> Path:
    configured = os.environ.get(ROOT_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "volatility3-zen" / "corpus"


def digest(inputs) -> str:
    """sha256 hex of a JSON-able value, independent of dict order."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_dir(name: str, kind: str, inputs) -> Path:
    return root() / ("%s-%s-%s" % (name, kind, digest(inputs)[:16]))


def is_complete(directory: Path) -> bool:
    return (directory / BUILD_RECORD).is_file()


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialises work on one cache entry (an image, the torch venv) across processes, e.g. test sessions."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / (".%s.lock" % directory.name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def scratch_dir(directory: Path) -> Path:
    """An empty temporary directory beside ``directory``, on the same file system (atomic rename)."""
    tmp = directory.with_name(".tmp-%s-%d" % (directory.name, os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, directory: Path) -> None:
    """Moves a finished build into place; an older image of the same key (--force) is dropped whole."""
    if directory.exists():
        retired = directory.with_name(".old-%s-%d" % (directory.name, os.getpid()))
        os.rename(directory, retired)
        shutil.rmtree(retired)
    os.rename(tmp, directory)


def keep_failed(tmp: Path, directory: Path, bulky=("image.lime", "*.core")) -> Path:
    """Keeps a failed build's logs and ground truth for inspection, without its bulky image files."""
    for pattern in bulky:
        for path in tmp.glob(pattern):
            path.unlink()
    failed = root() / ".failed" / directory.name
    shutil.rmtree(failed, ignore_errors=True)
    failed.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, failed)
    return failed
