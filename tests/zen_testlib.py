"""Helpers shared by the image tests: open an image in-process with Volatility, compare with ground truth."""

import os
import shutil
import subprocess
import sys
from typing import Dict, List

from tools import campaign
from volatility3_zen.zenlib.representation.program import CodeObject, Program, encode_const

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISF_DIR = os.path.join(REPO, "tests", "data", "isf")


def construct(image_path: str, plugin_name: str = "linux.zen.codeobjects.CodeObjects", **config):
    """An in-process Volatility plugin instance for ``image_path`` (automagic run, like ``vol`` does)."""
    return campaign.construct(image_path, plugin_name, ISF_DIR, **config)


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
# Where a process's pages are in the image file: shared with the corruption campaign (tools/campaign.py).
PAGE = campaign.PAGE
core_page_offsets = campaign.core_page_offsets
layer_page_offsets = campaign.layer_page_offsets


# -- opening a process core in-process (tests that read objects directly) ----------------------------
def open_core(path):
    """(PythonProcess, ProcessMemory) of a process core, opened as ``vol -f`` opens one."""
    from volatility3.framework import contexts
    from volatility3.framework.layers import physical

    from volatility3_zen.zenlib.readers.cpython.recover import PythonProcess
    from volatility3_zen.zenlib.vol import targets
    from volatility3_zen.zenlib.vol.layers import elfcore

    from volatility3_zen.zenlib.readers.memory import ProcessMemory

    ctx = contexts.Context()
    ctx.config["FileLayer.location"] = "file://" + os.path.abspath(str(path))
    ctx.add_layer(physical.FileLayer(ctx, "FileLayer", "FileLayer"))
    layer = elfcore.ProcessCoreStacker.stack(ctx, "FileLayer")
    ctx.add_layer(layer)
    memory = ProcessMemory(layer.regions(), targets.layer_reader(ctx, layer.name), layer.pid, layer.process_name)
    return PythonProcess(memory), memory


def core_file_offset(elf, address: int) -> int:
    """The file offset of a virtual address in a process core (pyelftools ``ELFFile``), for tests that
    smear a copy of a core at a known object."""
    for segment in elf.iter_segments():
        if segment["p_type"] == "PT_LOAD" and segment["p_vaddr"] <= address < segment["p_vaddr"] + segment["p_filesz"]:
            return segment["p_offset"] + address - segment["p_vaddr"]
    raise AssertionError(f"0x{address:x} is not in the core's data")


def write_rehashed_bundle(members: Dict[str, bytes], changed, target, sign=None):
    """Writes ``members`` as a bundle at ``target``, the manifest first, with the manifest entries of
    the ``changed`` members re-hashed (a forger's consistent bundle) and ``sign(members)`` called on
    the result if given; checks that it verifies.  ``members`` is updated in place."""
    import hashlib
    import json
    import zipfile

    from volatility3_zen.zenlib.bundle import format as bundle_format

    manifest = json.loads(members["manifest.json"])
    for name in changed:
        manifest["members"][name] = {"sha256": hashlib.sha256(members[name]).hexdigest(), "size": len(members[name])}
    members["manifest.json"] = json.dumps(manifest).encode()
    if sign is not None:
        sign(members)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("manifest.json", members["manifest.json"])
        for name, data in members.items():
            if name != "manifest.json":
                archive.writestr(name, data)
    assert bundle_format.verify(bundle_format.read_members(target)) == []
    return target
