"""The one error a build raises, carrying the tail of the log that explains it."""

from pathlib import Path

TAIL_LINES = 25


class BuildError(RuntimeError):
    def __init__(self, message: str, tail: str = ""):
        super().__init__(message)
        self.tail = tail


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log file ("" when it does not exist), for error reports."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
