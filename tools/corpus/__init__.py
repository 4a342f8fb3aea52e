"""The memory-image corpus: real images of known deployments, each with the ground truth it holds.

``python -m tools.corpus build|list|path`` on the command line, ``ensure_image(name, kind)`` from tests.
How it works, the ground-truth schema and the measured costs: docs/corpus.md.
"""

import json
from pathlib import Path
from typing import Union

from .build import Image, ensure_image

__all__ = ["Image", "ensure_image", "load_ground_truth"]


def load_ground_truth(path: Union[str, Path]) -> dict:
    """The ground-truth document a deployed process wrote (schema: docs/corpus.md)."""
    with open(path) as handle:
        return json.load(handle)
