"""The fuzz targets: one function per untrusted container, shared by the atheris scripts and the
regression test (tests/test_fuzz_regressions.py), which runs without atheris.

Each target feeds bytes to the library as an investigator's input would reach it, accepts the
documented clean outcomes (a refusal, a one-line ZenError / ReuseError, an absent read) and lets
anything else escape: for the fuzzer an escaping exception is a crash, for the test a failure.
Nothing here executes what a bundle carries (no marshal.loads, no injection, no rebuild).
"""

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
import zipfile
from typing import Callable, List, Tuple

from volatility3.framework import contexts
from volatility3.framework.layers import physical

from volatility3_zen.reuse import bundle as reuse_bundle
from volatility3_zen.zenlib.bundle import format as bundleformat
from volatility3_zen.zenlib.errors import MemoryReadError
from volatility3_zen.zenlib.readers import elfimage
from volatility3_zen.zenlib.readers.memory import MemoryRegion, ProcessMemory
from volatility3_zen.zenlib.vol import targets as vol_targets
from volatility3_zen.zenlib.vol.layers import elfcore

# The targets log on garbage input (dropped notes, truncated files); the fuzzer does not need to see it.
logging.getLogger("volatility3").setLevel(logging.CRITICAL)
logging.getLogger("volatility3_zen").setLevel(logging.CRITICAL)

# At most this many regions and bytes per region are read back through a stacked core, and at most
# this many symbols looked up per ELF image: enough to reach every code path, cheap per input.
MAX_REGIONS = 64
READ_SIZE = 512
# (The last three are defined by the seed libraries, so that a lookup that succeeds is covered too.)
SYMBOLS = ("_PyRuntime", "Py_Version", "", "io_submit", "utempter_add_record", "XGetXCBConnection")
# Where elfimage() maps its input: a typical shared-library address.
IMAGE_BASE = 0x7F3A1C000000
IMAGE_PATH = "/nonexistent/zen-fuzz/libfuzz.so.1"  # section_from_file finds no such file


def one_line(message: str) -> None:
    """Errors shown to the investigator are one line (docs: errors.py, reuse.ReuseError)."""
    if len(message.splitlines()) > 1:
        raise AssertionError(f"a multi-line error message: {message!r}")


# -- ELF process cores (zenlib/vol/layers/elfcore.py) -------------------------------------------------
def _buffer_layer(data: bytes) -> Tuple[contexts.Context, str]:
    context = contexts.Context()
    context.add_layer(physical.BufferDataLayer(context, "FuzzBase", "FuzzBase", data))
    return context, "FuzzBase"


def file_layer(path: str) -> Callable[[bytes], Tuple[contexts.Context, str]]:
    """A layer factory as ``vol -f`` opens a file: the core is written to ``path`` first."""

    def make(data: bytes) -> Tuple[contexts.Context, str]:
        with open(path, "wb") as handle:
            handle.write(data)
        context = contexts.Context()
        context.config["FileLayer.location"] = "file://" + os.path.abspath(path)
        context.add_layer(physical.FileLayer(context, "FileLayer", "FileLayer"))
        return context, "FileLayer"

    return make


def elfcore_target(data: bytes, make_layer=_buffer_layer) -> None:
    """An ELF file as ``vol -f`` meets it: the parse, the stacker's decision, then (when it stacks)
    everything the zen readers ask of a ProcessCoreLayer: pid, name, regions, reads, ELF images.

    Clean outcomes: read_elf_core raises ElfCoreFormatException (not an ELF core); the stacker
    returns None (not a process core) or a layer; reads of absent memory raise MemoryReadError.
    """
    context, base = make_layer(data)
    try:
        elfcore.read_elf_core(context.layers[base])
    except elfcore.ElfCoreFormatException as exc:
        one_line(str(exc))
    layer = elfcore.ProcessCoreStacker.stack(context, base)
    if layer is None:
        return
    context.add_layer(layer)
    assert isinstance(layer.pid, int)
    assert isinstance(layer.process_name, str) and isinstance(layer.command_line, str)
    assert all(isinstance(key, int) for key in layer.auxv)
    assert all(isinstance(mapping.path, str) for mapping in layer.file_mappings)
    regions = layer.regions()
    memory = ProcessMemory(regions, vol_targets.layer_reader(context, layer.name), layer.pid, layer.process_name)
    for region in regions[:MAX_REGIONS]:
        size = max(0, min(region.size, READ_SIZE))
        memory.read_padded(region.start, size)
        try:
            memory.read(region.start, size)
        except MemoryReadError as exc:
            one_line(str(exc))
    _images(memory)


# -- ELF images in process memory (zenlib/readers/elfimage.py) ----------------------------------------
def _buffer_reader(base: int, data: bytes):
    """A ReadRunFn serving ``data`` at ``base``; every other byte is absent."""

    def read_run(address: int, size: int):
        out = bytearray(size)
        start, end = max(address, base), min(address + size, base + len(data))
        if start >= end:
            return bytes(out), []
        out[start - address : end - address] = data[start - base : end - base]
        return bytes(out), [(start, end)]

    return read_run


def elfimage_target(data: bytes) -> None:
    """A library as it lies in memory: one file-backed mapping at IMAGE_BASE holding ``data`` (its
    last page partly absent when ``data`` does not fill it), parsed by loaded_images, then the
    symbol lookups the CPython runtime finder makes.

    Clean outcomes: loaded_images skips what is not an ELF image; lookup returns None.
    """
    end = IMAGE_BASE + max(4096, (len(data) + 4095) & ~4095)
    regions = [MemoryRegion(IMAGE_BASE, end, "r-xp", IMAGE_PATH, 0),
               MemoryRegion(end, end + 4096, "rw-p", "", 0)]  # an anonymous mapping after it, all absent
    memory = ProcessMemory(regions, _buffer_reader(IMAGE_BASE, data), 4242, "fuzz")
    _images(memory)


def _images(memory: ProcessMemory) -> List[elfimage.ElfImage]:
    images = list(elfimage.loaded_images(memory))
    for image in images:
        assert image.soname is None or isinstance(image.soname, str)
        for name in SYMBOLS:
            found = image.lookup(name)
            assert found is None or (isinstance(found, tuple) and len(found) == 2)
    return images


# -- patch bundles (zenlib/bundle/format.py, reuse/bundle.py) ------------------------------------------
# A fuzzer cannot forge a CRC-32 or a sha256, so mutated zips rarely get past the member checks.  An
# input that does not start with "PK" is therefore read as members to zip (with correct CRCs):
#   MARKER ( NAME "\n" CONTENT ) joined by "\n@@"     MARKER "S": stored, anything else: deflated
# and a manifest.json whose content is a JSON object with "members": "auto" gets the true hashes.
RECORD_SEPARATOR = b"\n@@"
AUTO = "auto"


def structured_bundle(data: bytes) -> bytes:
    """The zip that a structured input (not starting with "PK") describes."""
    method = zipfile.ZIP_STORED if data[:1] == b"S" else zipfile.ZIP_DEFLATED
    members = {}
    for record in data[1:].split(RECORD_SEPARATOR) if data[1:] else []:
        name, _, content = record.partition(b"\n")
        members[name.decode("utf-8", "replace")] = content
    manifest = _json_object(members.get(bundleformat.MANIFEST, b""))
    if manifest is not None and manifest.get("members") == AUTO:
        manifest["members"] = {name: {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
                               for name, content in members.items() if name != bundleformat.MANIFEST}
        members[bundleformat.MANIFEST] = json.dumps(manifest).encode()
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as archive:
        warnings.simplefilter("ignore")  # duplicate names are allowed here: the reader must cope
        for name, content in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, content)
    return out.getvalue()


def _json_object(raw: bytes):
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def bundle_target(data: bytes) -> None:
    """A patch bundle as the reader meets it, up to its acceptance or refusal: ``data`` is the zip
    when it starts with "PK", else members to zip (structured_bundle).

    format level: read_members raises zipfile.BadZipFile (or OSError) for a damaged container,
    verify returns one-line problems, manifest_sha256 of a verified bundle is a hex digest.
    reuse level: PatchBundle and check_interpreter (what ``open_bundle`` does) accept the bundle or
    raise a one-line ReuseError; an accepted bundle's environment notes are strings.
    """
    if data[:2] != b"PK":
        data = structured_bundle(data)
    try:
        members = bundleformat.read_members(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        one_line(str(exc))
        members = None
    if members is not None:
        assert all(isinstance(name, str) and isinstance(value, bytes) for name, value in members.items())
        problems = bundleformat.verify(members)
        assert isinstance(problems, list)
        for problem in problems:
            assert isinstance(problem, str)
            one_line(problem)
        if not problems:
            assert len(bundleformat.manifest_sha256(members)) == 64
    _open_bundle(data)


def _open_bundle(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=bundleformat.BUNDLE_SUFFIX) as handle:
        handle.write(data)
        handle.flush()
        try:
            opened = reuse_bundle.PatchBundle(handle.name)
            opened.check_interpreter()
        except reuse_bundle.ReuseError as exc:
            one_line(str(exc))
            return
        assert len(opened.sha256) == 64 and isinstance(opened.manifest, dict)
        assert isinstance(opened.python_version, str)
        assert all(isinstance(note, str) for note in opened.environment_notes())


TARGETS = {"elfcore": elfcore_target, "elfimage": elfimage_target, "bundle": bundle_target}
