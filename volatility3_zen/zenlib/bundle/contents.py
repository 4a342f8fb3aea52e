"""What a patch bundle carries that was read from the process (``bundle.collect`` fills it in,
``bundle.write`` serialises it): plain data, so that the writer never needs a reader."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class BundleContents:
    """Everything of one model root's bundle that was read from the process (the JSON documents are
    the members' contents before serialisation)."""

    pid: int
    root: int
    python: str  # the image's CPython release ("3.11.7")
    torch_version: Optional[str]
    code: Dict[str, Any]  # code.json
    code_files: Dict[str, bytes]  # code/<n>.marshal and code/<n>.txt
    class_attributes: Dict[str, Dict[str, Any]]  # added class key -> simple attributes read from its namespace
    context: Dict[str, Any]  # context.json
    model: Optional[Dict[str, Any]] = None  # model.json
    weights: Optional[bytes] = None  # weights.safetensors
    objects: Optional[Dict[str, Any]] = None  # objects.json
    state: Optional[bytes] = None  # state.safetensors
    warnings: List[str] = field(default_factory=list)
