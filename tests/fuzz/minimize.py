#!/usr/bin/env python3
"""Shrinks a crashing input of a fuzz target, in process, without atheris.

    .venv/bin/python tests/fuzz/minimize.py TARGET CRASH_FILE OUT_FILE

Run it against the code that still crashes (before the fix).  The input keeps crashing the same
way (same exception type raised from the same function) while it is cut at its end, while chunks
are erased and while chunks are zeroed: zeroing keeps every file offset in place, which libFuzzer's
-minimize_crash (it only erases bytes) cannot do for ELF files, whose headers point at offsets.
"""

import os
import sys
import traceback
from typing import Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]

import targets  # noqa: E402


def signature(target, data: bytes) -> Optional[Tuple[str, str, str]]:
    """(exception type, file, function) where the input's crash was raised; None when it passes."""
    try:
        target(data)
    except Exception as exc:  # noqa: BLE001 -- any escaping exception is the crash
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return type(exc).__name__, frame.filename, frame.name
    return None


def minimize(target, data: bytes) -> bytes:
    wanted = signature(target, data)
    if wanted is None:
        raise SystemExit("the input does not crash the target")
    crashes = lambda candidate: signature(target, candidate) == wanted  # noqa: E731
    # Cut the end: the shortest prefix (tried from short to long) that still crashes.
    step = 1 << (len(data).bit_length())
    while step:
        while len(data) > step and crashes(data[: len(data) - step]):
            data = data[: len(data) - step]
        step //= 2
    # Erase chunks, large to small (what shrinks a zip, whose directory is found from its end).
    size = 1 << max(0, (len(data) - 1).bit_length())
    while size:
        at = 0
        while at < len(data):
            candidate = data[:at] + data[at + size :]
            if crashes(candidate):
                data = candidate
            else:
                at += size
        size //= 2
    # Zero chunks, large to small.
    size = 1 << max(0, (len(data) - 1).bit_length())
    while size:
        for at in range(0, len(data), size):
            chunk = data[at : at + size]
            if any(chunk):
                candidate = data[:at] + bytes(len(chunk)) + data[at + size :]
                if crashes(candidate):
                    data = candidate
        size //= 2
    while data and not data[-1] and crashes(data[:-1]):
        data = data[:-1]
    return data


def main(argv) -> int:
    if len(argv) != 4 or argv[1] not in targets.TARGETS:
        print(__doc__, file=sys.stderr)
        return 2
    data = open(argv[2], "rb").read()
    small = minimize(targets.TARGETS[argv[1]], data)
    with open(argv[3], "wb") as handle:
        handle.write(small)
    print(f"{len(data)} -> {len(small)} bytes: {signature(targets.TARGETS[argv[1]], small)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
