"""Writes the seed corpora of the fuzzers into tests/fuzz/seeds/<target>/ (they are committed; rerun
this only to refresh them).

    .venv/bin/python tests/fuzz/make_seeds.py

elfcore   a live ``python3 -c 'import time; time.sleep(60)'`` captured with volatility3_zen.capture
          (needs ptrace access: root), rewritten small: every program header and note is kept, but
          only the data of the executable's own mappings (public file contents: no heap, no stack,
          so no environment variables) stays in the file; plus hand-made cores (no notes, a
          physical-memory dump, PN_XNUM, a truncated file).
elfimage  in-memory images of ELF objects: the executable's pages as the core holds them (relocated
          dynamic section) and small system libraries laid out at their link-time addresses.
bundle    patch bundles built with bundle.write from tests/test_attribution's small URs (as
          tests/test_bundle_write.py does) and hand-made minimal ones (valid, stored/deflated, for
          another CPython, without a manifest).
"""

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from volatility3.framework import contexts  # noqa: E402
from volatility3.framework.layers import physical  # noqa: E402

from volatility3_zen import capture  # noqa: E402
from volatility3_zen.zenlib.vol.layers import elfcore as ec  # noqa: E402

SEEDS = HERE / "seeds"
MAX_SEED = 64 << 10
SMALL_LIBRARIES = ("libxshmfence.so.1", "libaio.so.1", "libutempter.so.0", "libX11-xcb.so.1")


# -- ELF cores ---------------------------------------------------------------------------------------------
def note(owner: bytes, note_type: int, desc: bytes) -> bytes:
    name = owner + b"\0"
    pad = lambda data: data + bytes(-len(data) % 4)  # noqa: E731
    return ec.ELF64_NHDR.pack(n_namesz=len(name), n_descsz=len(desc), n_type=note_type) + pad(name) + pad(desc)


def core_file(notes: bytes, loads, datas, phys=0, xnum=False) -> bytes:
    """An ET_CORE: header, notes, program headers, then each load's data (``datas[i]`` or nothing)."""
    phnum = 1 + len(loads)
    notes_at = ec.ELF64_EHDR.size
    phoff = notes_at + len(notes) + (-len(notes) % 8)
    data_at = phoff + phnum * ec.ELF64_PHDR.size
    shoff = 0
    if xnum:
        shoff = data_at
        data_at += ec.ELF64_SHDR.size
    headers = [ec.ELF64_PHDR.pack(p_type=ec.PT_NOTE, p_flags=0, p_offset=notes_at, p_vaddr=0, p_paddr=0,
                                  p_filesz=len(notes), p_memsz=0, p_align=4)]
    body = b""
    for (address, size, flags), data in zip(loads, datas):
        headers.append(ec.ELF64_PHDR.pack(p_type=ec.PT_LOAD, p_flags=flags, p_offset=data_at + len(body),
                                          p_vaddr=address, p_paddr=phys and address, p_filesz=len(data),
                                          p_memsz=size, p_align=4096))
        body += data
    ident = ec.ELF_MAGIC + bytes([ec.ELFCLASS64, ec.ELFDATA2LSB, ec.EV_CURRENT]) + bytes(9)
    ehdr = ec.ELF64_EHDR.pack(e_ident=ident, e_type=ec.ET_CORE, e_machine=62, e_version=1, e_entry=0,
                              e_phoff=phoff, e_shoff=shoff, e_flags=0, e_ehsize=ec.ELF64_EHDR.size,
                              e_phentsize=ec.ELF64_PHDR.size, e_phnum=ec.PN_XNUM if xnum else phnum,
                              e_shentsize=ec.ELF64_SHDR.size if xnum else 0, e_shnum=1 if xnum else 0, e_shstrndx=0)
    out = ehdr + notes + bytes(-len(notes) % 8) + b"".join(headers)
    if xnum:
        out += ec.ELF64_SHDR.pack(sh_name=0, sh_type=0, sh_flags=0, sh_addr=0, sh_offset=0, sh_size=0, sh_link=0,
                                  sh_info=phnum, sh_addralign=0, sh_entsize=0)
    return out + body


def captured_python(work: Path) -> Path:
    sleeper = subprocess.Popen(["python3", "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1.0)  # past the interpreter's start-up
        out = work / "python.core"
        capture.capture(sleeper.pid, str(out))
        return out
    finally:
        sleeper.kill()
        sleeper.wait()


def compact(core_path: Path):
    """(the small core, the executable's in-memory pages) from a captured core."""
    context = contexts.Context()
    context.config["FileLayer.location"] = core_path.resolve().as_uri()
    layer = physical.FileLayer(context, "FileLayer", "FileLayer")
    context.add_layer(layer)
    core = ec.read_elf_core(layer)
    mappings = [m for desc in core.core_notes(ec.NT_FILE) for m in ec.parse_nt_file(desc)]
    executable = min(mappings, key=lambda m: m.start).path  # the first file mapping: the executable
    keep = {m.start for m in mappings if m.path == executable}
    datas, loads = [], []
    image = bytearray()
    first = min(keep)
    for segment in core.segments:
        loads.append((segment.address, segment.size, segment.flags))
        data = layer.read(segment.offset, segment.present) if segment.address in keep else b""
        datas.append(data)
        if data and segment.address - first < MAX_SEED:
            at = segment.address - first
            image.extend(bytes(max(0, at + len(data) - len(image))))
            image[at : at + len(data)] = data
    notes = b"".join(note(n.owner.encode(), n.type, n.desc) for n in core.notes)
    small = core_file(notes, loads, datas)
    return small, unrelocate(bytes(image[:MAX_SEED]), first)


def unrelocate(image: bytes, base: int) -> bytes:
    """The image with its dynamic section's pointers back at link-time values (glibc relocated them
    to ``base``), so that it can be mapped anywhere, as the vDSO's is."""
    out = bytearray(image)
    phoff, phnum = struct.unpack_from("<Q", image, 32)[0], struct.unpack_from("<H", image, 56)[0]
    for i in range(phnum):
        p_type, _flags, _offset, vaddr, _paddr, _filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", image, phoff + i * 56)
        if p_type != 2:  # PT_DYNAMIC
            continue
        for at in range(vaddr, min(vaddr + memsz, len(image)) - 15, 16):
            tag, value = struct.unpack_from("<qQ", image, at)
            if base <= value < base + (1 << 32):
                struct.pack_into("<qQ", out, at, tag, value - base)
    return bytes(out)


def library_image(path: str) -> bytes:
    """A library's PT_LOADs copied to their link-time addresses (as the loader maps them)."""
    data = Path(path).read_bytes()
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    image = bytearray()
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type != 1:
            continue
        if len(image) < vaddr + memsz:
            image.extend(bytes(vaddr + memsz - len(image)))
        image[vaddr : vaddr + filesz] = data[offset : offset + filesz]
    return bytes(image)


def elf_seeds(work: Path):
    captured = captured_python(work)
    small, executable_pages = compact(captured)
    yield "elfcore", "python-sleep.core", small
    ehdr = ec.ELF64_EHDR.unpack(small)
    yield "elfcore", "python-sleep-headers-only.core", small[: ehdr.e_phoff + ehdr.e_phnum * ec.ELF64_PHDR.size]
    yield "elfimage", "python-executable.mem", executable_pages
    for name in SMALL_LIBRARIES:
        for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"):
            if os.path.exists(f"{folder}/{name}"):
                image = library_image(f"{folder}/{name}")
                if len(image) <= MAX_SEED:
                    yield "elfimage", f"{name}.mem", image
                break
    # Hand-made cores: a gcore without notes, a QEMU physical dump, PN_XNUM, a NT_FILE and auxv only.
    two = [(0x400000, 0x1000, ec.PF_R | ec.PF_X), (0x7FFF0000, 0x2000, ec.PF_R | ec.PF_W)]
    yield "elfcore", "no-notes.core", core_file(b"", two, [b"\x7fELF" + bytes(60), b"A" * 0x1000])
    yield "elfcore", "qemu-physical.core", core_file(note(b"QEMU", 0, bytes(16)), [(0, 0x1000, 7)], [bytes(0x1000)], phys=1)
    yield "elfcore", "xnum.core", core_file(b"", two, [b"x" * 64, b"y" * 64], xnum=True)
    nt_file = (ec.NT_FILE_HEADER.pack(count=1, page_size=4096) + ec.NT_FILE_ENTRY.pack(start=0x400000, end=0x401000, page_offset=0)
               + b"/usr/bin/true\0")
    auxv = b"".join(ec.AUXV_ENTRY.pack(a_type=t, a_val=v) for t, v in ((33, 0x7FFF0000), (31, 0x7FFF1000), (0, 0)))
    notes = note(b"CORE", ec.NT_FILE, nt_file) + note(b"CORE", ec.NT_AUXV, auxv)
    yield "elfcore", "file-auxv.core", core_file(notes, two, [b"\x7fELF\x02" + bytes(59), bytes(0x2000)])
    yield "elfcore", "truncated.core", core_file(notes, two, [bytes(0x1000), bytes(0x2000)])[:300]


# -- bundles -----------------------------------------------------------------------------------------------
def zip_bytes(members, compression=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            archive.writestr(info, data)
    return out.getvalue()


def manifest_for(listed, **fields) -> bytes:
    manifest = {"format": "zen-patch-bundle", "schema": 1, "python_version": "3.11", "torch_version": "2.3.0",
                "base": {"name": "base", "source": "base-pkg==1.0"}, "target": {"pid": 1, "root_class": "m.M"},
                "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                            for name, data in sorted(listed.items())}}
    manifest.update(fields)
    return json.dumps(manifest, sort_keys=True).encode()


def bundle_seeds():
    members = {"code.json": b'{"code_objects": []}', "code/0.marshal": b"\xe3\x00"}
    minimal = {"manifest.json": manifest_for(members), **members}
    yield "bundle", "minimal-deflated.zip", zip_bytes(minimal)
    yield "bundle", "minimal-stored.zip", zip_bytes(minimal, zipfile.ZIP_STORED)
    yield "bundle", "other-python.zip", zip_bytes({"manifest.json": manifest_for(members, python_version="3.12"), **members})
    yield "bundle", "no-manifest.zip", zip_bytes(members)
    yield "bundle", "altered.zip", zip_bytes({**minimal, "code/0.marshal": b"\xe3\x01"})
    yield "bundle", "manifest-only.zip", zip_bytes({"manifest.json": manifest_for({})}, zipfile.ZIP_STORED)
    # Structured inputs (tests/fuzz/targets.py: structured_bundle): members zipped with true CRCs and
    # a manifest whose hashes are filled in, so that mutations reach the manifest checks.
    auto = manifest_for({}, members="auto")
    records = [b"manifest.json\n" + auto] + [name.encode() + b"\n" + data for name, data in members.items()]
    yield "bundle", "structured-deflated.txt", b"D" + b"\n@@".join(records)
    yield "bundle", "structured-stored.txt", b"S" + b"\n@@".join(records[:1])
    yield "bundle", "structured-other-python.txt", b"D" + b"manifest.json\n" + manifest_for({}, members="auto", python_version="3.12")

    import test_bundle_write as tbw
    from test_attribution import RESNET, make_ur, resnet_se_source, resnet_spec
    from volatility3_zen.zenlib.analysis import attribution, diff

    base = make_ur("resnet", RESNET, "resnet", resnet_spec())
    target = make_ur(None, resnet_se_source(), "resnet", resnet_spec(se=True, classes=10))
    target.provenance.update(pid=tbw.PID, process="python3", root=tbw.ROOT)
    result = attribution.attribute(target, [base])
    model_diff = diff.diff_models(target, base, (result.omega, result.delta, result.removed))
    analysed = (target, base, result, model_diff)
    written = tbw._build(analysed, tbw._contents(model_diff)).to_bytes()
    yield "bundle", "written.zip", written
    lean = tbw._build(analysed, tbw._contents(model_diff, model=None, weights=None, objects=None, state=b"state"))
    yield "bundle", "written-lean.zip", lean.to_bytes()


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        seeds = list(bundle_seeds()) + list(elf_seeds(Path(work)))
    for target, name, data in seeds:
        folder = SEEDS / target
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        print(f"{target}/{name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
