"""Kind ``lime``: boot Debian's cloud kernel under QEMU (TCG), run the deployment, acquire with LiME.

The guest has no disk: a busybox initramfs (guest_init.sh as /init), the host root shared read-only
through virtiofs and the build's output folder shared writable through a second virtiofsd
(cache=none, so LiME's writes land on the host as they happen).  The deployed processes run in a
chroot of the host root, so they use the host's interpreters and venvs unchanged.  Pitfalls that
shaped this (all measured, see docs/corpus.md): no KVM here, so TCG with ``la57=off``; no 9p in the
cloud kernel; virtiofsd needs sandbox=chroot for source=/ and QEMU a shared memfd backend.
"""

import contextlib
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List

from . import system
from .catalog import Deployment
from .deployed import Planned
from .errors import BuildError, log_tail

INIT_SCRIPT = Path(__file__).resolve().parent / "guest_init.sh"
# In dependency order: busybox insmod resolves none.  guest_init.sh reads the order from /modules/order.
GUEST_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "fuse", "virtiofs",
)
GUEST_ROOT = "/mnt/root"  # where guest_init.sh mounts the host root
GUEST_OUT = "/run/zen-out"  # where the processes see the output folder (inside the chroot)
GUEST_TMP = "/run/tmp"
BOOT_AND_ACQUIRE_S = 600  # QEMU's allowance beyond the ready timeout: boot, LiME write, poweroff
KERNEL_ARGS = "console=ttyS0 loglevel=4 panic=-1"


def build(deployment: Deployment, planned: List[Planned], out: Path) -> List[dict]:
    """Writes image.lime into ``out`` and returns the build.json process records."""
    kernel_dir = system.guest_kernel_dir()
    lime = system.ensure_lime_module()
    (out / "plan.sh").write_text(plan_script(deployment, planned))
    with tempfile.TemporaryDirectory(prefix="zen-corpus-") as work:
        work_dir = Path(work)
        initrd = build_initramfs(kernel_dir, lime, work_dir)
        _run_guest(deployment, kernel_dir, initrd, work_dir, out)
    pids = _read_pids(out)
    return [p.record(pids[p.index]) for p in planned]


def plan_script(deployment: Deployment, planned: List[Planned]) -> str:
    """plan.sh, sourced by guest_init.sh: how many processes, how long to wait, how to start them."""
    host_out = GUEST_ROOT + GUEST_OUT
    lines = [
        "PROCESS_COUNT=%d" % len(planned),
        "READY_TIMEOUT=%d" % deployment.ready_timeout_s,
        "start_processes() {",
    ]
    for p in planned:
        env = ["%s=%s" % kv for kv in sorted(p.environment(deployment, GUEST_OUT, GUEST_TMP).items())]
        argv = ["chroot", GUEST_ROOT, "/usr/bin/env", "-i", *env, *p.command()]
        log = "%s/logs/%d.log" % (host_out, p.index)
        lines.append("\t%s </dev/null >%s 2>&1 &" % (" ".join(shlex.quote(a) for a in argv), log))
        lines.append('\techo "%d $!" >>%s/pids' % (p.index, host_out))
    lines.append("}")
    return "\n".join(lines) + "\n"


def build_initramfs(kernel_dir: Path, lime: Path, work: Path) -> Path:
    """A newc cpio with busybox, /init and the modules guest_init.sh loads."""
    tree = work / "initramfs"
    for d in ("bin", "modules", "proc", "sys", "dev", "mnt/root"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(system.BUSYBOX, tree / "bin" / "busybox")
    shutil.copy2(INIT_SCRIPT, tree / "init")
    (tree / "init").chmod(0o755)
    for name in GUEST_MODULES:
        shutil.copy2(system.kernel_module(kernel_dir, name), tree / "modules" / (name + ".ko"))
    (tree / "modules" / "order").write_text("\n".join(GUEST_MODULES) + "\n")
    shutil.copy2(lime, tree / "modules" / "lime.ko")
    initrd = work / "initrd.cpio"
    files = subprocess.run(["find", "."], cwd=tree, check=True, capture_output=True).stdout
    cpio = ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"]
    with open(initrd, "wb") as archive:
        subprocess.run(cpio, cwd=tree, input=files, stdout=archive, check=True)
    return initrd


@contextlib.contextmanager
def _virtiofsd(socket: Path, source: Path, cache_mode: str, log: Path) -> Iterator[None]:
    """A virtiofsd serving ``source`` on ``socket`` for as long as the context lasts."""
    command = [
        str(system.VIRTIOFSD),
        "--socket-path=%s" % socket,
        "-o", "source=%s" % source,
        "-o", "sandbox=chroot",  # the default namespace sandbox cannot pivot_root into source=/
        "-o", "cache=%s" % cache_mode,
    ]
    with open(log, "wb") as out:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 5
        while not socket.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise BuildError("virtiofsd for %s did not start" % source, log_tail(log))
            time.sleep(0.05)
        yield
    finally:
        daemon.terminate()
        daemon.wait()


def qemu_command(
    deployment: Deployment, kernel_dir: Path, initrd: Path, sockets: Dict[str, Path], console: Path
) -> List[str]:
    memory = "%dM" % deployment.guest_memory_mib
    command = [
        str(system.QEMU),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-accel", "tcg,thread=multi",
        "-cpu", "max,la57=off",  # QEMU 7.2's max CPU offers 5-level paging; the kernel would use it
        "-smp", str(deployment.guest_cpus),
        "-m", memory,
        "-object", "memory-backend-memfd,id=mem,size=%s,share=on" % memory,  # vhost-user needs shared memory
        "-machine", "q35,memory-backend=mem",
        "-kernel", str(system.vmlinuz(kernel_dir)),
        "-initrd", str(initrd),
        "-append", KERNEL_ARGS,
        "-serial", "file:%s" % console,
    ]
    for index, (tag, socket) in enumerate(sorted(sockets.items())):
        command += ["-chardev", "socket,id=vfs%d,path=%s" % (index, socket)]
        command += ["-device", "vhost-user-fs-pci,chardev=vfs%d,tag=%s" % (index, tag)]
    return command


def _run_guest(deployment: Deployment, kernel_dir: Path, initrd: Path, work: Path, out: Path) -> None:
    logs = out / "logs"
    sockets = {"hostroot": work / "root.sock", "zenout": work / "out.sock"}
    command = qemu_command(deployment, kernel_dir, initrd, sockets, out / "console.log")
    with contextlib.ExitStack() as daemons:
        daemons.enter_context(_virtiofsd(sockets["hostroot"], Path("/"), "auto", logs / "virtiofsd-root.log"))
        daemons.enter_context(_virtiofsd(sockets["zenout"], out, "none", logs / "virtiofsd-out.log"))
        returncode = _run_qemu(command, deployment.ready_timeout_s + BOOT_AND_ACQUIRE_S, out)
    status_file = out / "guest-status"
    status = status_file.read_text().strip() if status_file.exists() else "no status (QEMU exit %d)" % returncode
    if status != "ok":
        raise BuildError("guest failed: %s" % status, _failure_logs(out))


def _run_qemu(command: List[str], timeout: float, out: Path) -> int:
    with open(out / "logs" / "qemu.log", "wb") as log:
        try:
            return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise BuildError("QEMU did not finish within %d s" % timeout, _failure_logs(out)) from None


def _failure_logs(out: Path) -> str:
    """The console's tail, then QEMU's and every deployed process's non-empty log tail."""
    parts = [log_tail(out / "console.log")]
    for log in [out / "logs" / "qemu.log"] + sorted((out / "logs").glob("[0-9]*.log")):
        tail = log_tail(log, 10)
        if tail:
            parts.append("--- %s\n%s" % (log.name, tail))
    return "\n".join(parts)


def _read_pids(out: Path) -> Dict[int, int]:
    """index -> guest pid, as guest_init.sh's plan recorded them."""
    pairs = (line.split() for line in (out / "pids").read_text().splitlines() if line.strip())
    return {int(index): int(pid) for index, pid in pairs}
