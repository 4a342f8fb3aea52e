"""Errors with one-line messages meant for the investigator (what happened, what to try next)."""


class ZenError(Exception):
    """Base class: the CLI prints ``str(error)`` on one line and exits non-zero."""


class MemoryReadError(ZenError):
    """An address is not mapped (or its page is not in the image)."""

    def __init__(self, address: int, size: int = 0, reason: str = "not mapped"):
        self.address = address
        self.size = size
        super().__init__(f"cannot read {size} bytes at 0x{address:x}: {reason}")


class NoPythonError(ZenError):
    """The process does not host a CPython interpreter we can find."""


class UnsupportedVersionError(ZenError):
    """An interpreter / library version we have no layout table for."""


class CorruptObjectError(ZenError):
    """An object's bytes do not look like what its type says (smeared or corrupted memory)."""
