"""What a patch bundle carries that was read from the process (``bundle.collect`` fills it in,
``bundle.write`` serialises it): plain data, so that the writer never needs a reader.  And the chain
of custody of the run (``vol/provenance.py`` fills it in), which the manifest and the report record."""

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


@dataclass
class RunProvenance:
    """Chain of custody of one analysis: which image (by content, not only by name), when, with which
    tools and which command.  The manifest's ``provenance`` and the report's "Chain of custody"
    section; the only part of a bundle or a report that differs between two runs on the same image."""

    image_name: str  # the file name, without its folder
    image_size: Optional[int]  # bytes; None when the image is not a local file
    image_sha256: Optional[str]  # of the whole file as it lies on disk; None when it could not be read
    started: str  # UTC, ISO 8601: when the plugin began (after Volatility opened the image)
    finished: str  # UTC, ISO 8601: when this bundle or report was written
    tool_version: str  # volatility3_zen
    volatility_version: str
    python_version: str  # of the analysing interpreter, not of the image
    command_line: List[str]  # sys.argv as given
    notes: List[str] = field(default_factory=list)  # why a field is missing, or that the image changed while hashed

    def to_json(self) -> Dict[str, Any]:
        return {"image": {"name": self.image_name, "size": self.image_size, "sha256": self.image_sha256},
                "analysis": {"started": self.started, "finished": self.finished},
                "versions": {"volatility3_zen": self.tool_version, "volatility3": self.volatility_version,
                             "python": self.python_version},
                "command_line": list(self.command_line), "notes": list(self.notes)}
