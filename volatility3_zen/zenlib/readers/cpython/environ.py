"""A process's environment variables, read from memory: Python's ``os.environ`` and the C environment.

``os.environ`` is an ``os._Environ`` whose ``_data`` dict maps the encoded names to the encoded values
(bytes on POSIX).  Setting or deleting an item calls ``putenv`` / ``unsetenv``, so the C environment
(libc's ``environ``: a NULL-terminated array of ``NAME=VALUE`` strings, which ``getenv`` in native
libraries reads) normally says the same; code that calls ``os.putenv`` or ``setenv`` directly changes
only the C side.  Both are what the process holds at capture time, not at the moment a library read them.

An environment often holds secrets: callers keep only the variables they need (the numerics reader
keeps the ones that steer kernels and threads).
"""

import struct
from typing import Dict, Optional

from ...errors import CorruptObjectError, MemoryReadError
from ..elfimage import loaded_images
from ..memory import ProcessMemory
from .objects import DECODE_ERRORS

# A real environment has a few hundred entries; an array longer than this is garbage.
MAX_ENTRIES = 16384
MAX_VALUE = 1 << 16


def python_environ(python) -> Dict[str, str]:
    """``os.environ`` of a ``PythonProcess`` as {name: value}.  Raises ``CorruptObjectError`` (or a
    decoding error) when the os module, its ``environ`` or that mapping's ``_data`` cannot be read."""
    o = python.objects
    modules = python.heap.modules()
    if "os" not in modules:
        raise CorruptObjectError("the os module is not in sys.modules")
    environ = o.module_namespace(modules["os"]).get("environ")
    if not environ:
        raise CorruptObjectError("os.environ is not in the os module's namespace")
    data = python.heap.instance_dict(environ).get("_data")
    if not data or o.base_kind(data) != "dict":
        raise CorruptObjectError(f"os.environ at 0x{environ:x} has no _data dict")
    out: Dict[str, str] = {}
    for key, value in o.dict_items(data):
        try:
            name, text = _text(o, key), _text(o, value)
        except DECODE_ERRORS + (UnicodeDecodeError,):
            continue
        if name is not None and text is not None:
            out[name] = text
    return out


def _text(o, obj: int) -> Optional[str]:
    kind = o.base_kind(obj)
    if kind == "bytes":
        return o.read_bytes(obj).decode("utf-8", "surrogateescape")
    if kind == "str":
        return o.read_str(obj)
    return None


def c_environ(memory: ProcessMemory) -> Dict[str, str]:
    """The C environment (``environ``) as {name: value}, from the first loaded ELF image that defines
    ``environ`` or ``__environ`` and holds a readable array there.  An executable that references
    ``environ`` gets a copy relocation, and then its copy is the live one: such definitions (any image
    but libc) are tried first.  Raises ``CorruptObjectError`` when none is readable."""
    candidates = []
    for image in loaded_images(memory):
        for name in ("environ", "__environ"):
            found = image.lookup(name)
            if found and found[1] == 8:
                libc = "/libc.so" in image.path or "/libc-" in image.path
                candidates.append((libc, found[0]))
                break
    problems = []
    for _libc, address in sorted(candidates):
        try:
            return _read_environ_array(memory, memory.read_u64(address))
        except (MemoryReadError, CorruptObjectError, struct.error) as exc:
            problems.append(str(exc))
    raise CorruptObjectError("no readable C environ" + (f" ({problems[0]})" if problems else ""))


def _read_environ_array(memory: ProcessMemory, array: int) -> Dict[str, str]:
    if not array or array % 8:
        raise CorruptObjectError(f"environ points to 0x{array:x}")
    out: Dict[str, str] = {}
    for index in range(MAX_ENTRIES):
        pointer = memory.read_u64(array + 8 * index)
        if not pointer:
            return out
        entry = memory.read_cstring(pointer, MAX_VALUE)
        name, eq, value = entry.partition(b"=")
        if not eq or not name:
            raise CorruptObjectError(f"environ entry {index} at 0x{pointer:x} is not NAME=VALUE")
        out.setdefault(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
    raise CorruptObjectError(f"environ at 0x{array:x} has no end within {MAX_ENTRIES} entries")

