"""Helpers shared by the image tests: open an image in-process with Volatility, compare with ground truth."""

import functools
import os
import shutil
import subprocess
import sys
from typing import Dict, List

from volatility3_zen.zenlib.representation.program import CodeObject, Program, encode_const

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISF_DIR = os.path.join(REPO, "tests", "data", "isf")


@functools.lru_cache(maxsize=None)
def _plugins_loaded() -> bool:
    import volatility3.plugins
    from volatility3 import framework

    framework.require_interface_version(2, 0, 0)
    framework.import_files(volatility3.plugins, True)
    return True


def construct(image_path: str, plugin_name: str = "linux.zen.codeobjects.CodeObjects", **config):
    """An in-process Volatility plugin instance for ``image_path`` (automagic run, like ``vol`` does)."""
    import volatility3.symbols
    from volatility3 import framework
    from volatility3.framework import automagic, contexts, interfaces, plugins

    _plugins_loaded()
    if ISF_DIR not in volatility3.symbols.__path__:
        volatility3.symbols.__path__.insert(0, ISF_DIR)
    plugin_list = framework.list_plugins()
    plugin = plugin_list[plugin_name]
    ctx = contexts.Context()
    ctx.config["automagic.LayerStacker.single_location"] = "file://" + os.path.abspath(image_path)
    for key, value in config.items():
        ctx.config[interfaces.configuration.path_join("plugins", plugin.__name__, key)] = value
    automagics = automagic.choose_automagic(automagic.available(ctx), plugin)
    return plugins.construct_plugin(ctx, automagics, plugin, "plugins", None, None)


def vol_command() -> List[str]:
    exe = shutil.which("vol") or os.path.join(os.path.dirname(sys.executable), "vol")
    return [exe, "-q", "-s", ISF_DIR]


def run_vol(args: List[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(vol_command() + args, capture_output=True, text=True, timeout=timeout)


# -- ground truth comparison -----------------------------------------------------------------------

CODE_FIELDS = ("name", "qualname", "filename", "firstlineno", "argcount", "posonlyargcount", "kwonlyargcount",
               "nlocals", "stacksize", "flags", "names", "varnames", "cellvars", "freevars")


def code_mismatches(code: CodeObject, truth: Dict) -> List[str]:
    out = []
    for field in CODE_FIELDS:
        got = getattr(code, field)
        want = truth[field]
        if isinstance(got, tuple):
            got = list(got)
        if got != want:
            out.append(f"{field}: {got!r} != {want!r}")
    if code.code.hex() != truth["code"]:
        out.append("co_code differs")
    if code.linetable.hex() != truth["linetable"]:
        out.append("linetable differs")
    if code.exceptiontable.hex() != truth["exceptiontable"]:
        out.append("exceptiontable differs")
    consts = [encode_const(c) for c in code.consts]
    if consts != truth["consts"]:
        out.append(f"consts differ: {consts!r} != {truth['consts']!r}")
    return out


def compare_program(program: Program, truth: Dict) -> Dict[str, List[str]]:
    """Every ground-truth function, code object, class and module must be recovered exactly."""
    problems: Dict[str, List[str]] = {"functions": [], "code_objects": [], "classes": [], "modules": []}
    for f in truth["functions"]:
        got = program.functions.get(f["addr"])
        if got is None:
            problems["functions"].append(f"missing {f['module']}.{f['qualname']} at 0x{f['addr']:x}")
        elif (got.code, got.name, got.qualname, got.module) != (f["code"], f["name"], f["qualname"], f["module"]):
            problems["functions"].append(f"{f['qualname']}: {got} != {f}")
    for c in truth["code_objects"]:
        got = program.code_objects.get(c["addr"])
        if got is None:
            problems["code_objects"].append(f"missing code {c['qualname'] or c['name']} ({c['filename']}:{c['firstlineno']})")
            continue
        diff = code_mismatches(got, c)
        if diff:
            problems["code_objects"].append(f"{c['qualname'] or c['name']} ({c['filename']}:{c['firstlineno']}): {'; '.join(diff[:3])}")
    for k in truth["classes"]:
        got = program.classes.get(k["addr"])
        if got is None:
            problems["classes"].append(f"missing class {k['module']}.{k['qualname']}")
            continue
        want = (k["name"], k["qualname"], k["module"], k["bases"], k["mro"], k["methods"])
        have = (got.name, got.qualname, got.module, got.bases, got.mro, got.methods)
        if want != have:
            problems["classes"].append(f"{k['qualname']}: {have} != {want}")
    for m in truth["modules"]:
        got = program.modules.get(m["name"])
        if got is None or got.address != m["addr"] or got.file != m["file"]:
            problems["modules"].append(f"module {m['name']}: {got and (got.address, got.file)} != {(m['addr'], m['file'])}")
    return {k: v for k, v in problems.items() if v}


def summarize(problems: Dict[str, List[str]], limit: int = 8) -> str:
    lines = []
    for kind, items in problems.items():
        lines.append(f"{kind}: {len(items)} problems")
        lines += ["  " + i for i in items[:limit]]
    return "\n".join(lines)


# -- corrupted copies of an image (tests/test_corruption.py) ----------------------------------------

PAGE = 4096


def core_page_offsets(core_path: str) -> Dict[int, int]:
    """{virtual page address: file offset} of every whole page a process core holds, from its PT_LOAD
    headers (p_vaddr -> p_offset, p_filesz bytes; the rest of a segment is not in the file)."""
    import struct

    with open(core_path, "rb") as fh:
        ehdr = fh.read(64)
        phoff, = struct.unpack_from("<Q", ehdr, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    pages = {}
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 1:  # PT_LOAD
            for delta in range(0, p_filesz - p_filesz % PAGE, PAGE):
                pages[p_vaddr + delta] = p_offset + delta
    return pages


def layer_page_offsets(context, layer_name: str, regions) -> Dict[int, int]:
    """{virtual page address: file offset} of every present page of ``regions`` in a Volatility layer,
    translated down to the image file through each layer's ``mapping()`` (for a LiME image: the
    process layer gives physical addresses, the LiME layer gives file offsets)."""
    from volatility3.framework import interfaces

    def file_runs(name, offset, length):
        layer = context.layers[name]
        if not isinstance(layer, interfaces.layers.TranslationLayerInterface):
            yield offset, length
            return
        for _off, _len, mapped, mapped_len, sublayer in layer.mapping(offset, length, ignore_errors=True):
            yield from file_runs(sublayer, mapped, mapped_len)

    pages = {}
    for region in regions:
        for page in range(region.start, region.end, PAGE):
            runs = list(file_runs(layer_name, page, PAGE))
            if len(runs) == 1 and runs[0][1] == PAGE:
                pages[page] = runs[0][0]
    return pages
