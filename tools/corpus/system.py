"""Host prerequisites: pinned Debian packages, the guest kernel, and LiME built for it.

CI starts from a bare Debian bookworm machine, so the harness installs what it needs itself, at the
versions the measurements in docs/corpus.md were taken with.  The guest kernel must match the ISF
committed under tests/data/isf exactly; it is unpacked from its .deb into the cache, never installed.
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable

from . import cache
from .errors import BuildError

KERNEL_RELEASE = "6.1.0-56-cloud-amd64"
KERNEL_PACKAGE = "linux-image-" + KERNEL_RELEASE
KERNEL_VERSION = "6.1.192-2"

# package -> version.  Which kind needs which is in PACKAGES_FOR_KIND.
APT_PINS: Dict[str, str] = {
    "qemu-system-x86": "1:7.2+dfsg-7+deb12u18+b3",
    "busybox-static": "1:1.35.0-4+deb12u1+b1",
    "cpio": "2.13+dfsg-7.1",
    "dkms": "3.0.10-8+deb12u1",
    "lime-forensics-dkms": "1.9.1-5",
    "linux-headers-" + KERNEL_RELEASE: KERNEL_VERSION,
    "gdb": "13.1-3",
}
PACKAGES_FOR_KIND = {
    "lime": (
        "qemu-system-x86", "busybox-static", "cpio", "dkms", "lime-forensics-dkms", "linux-headers-" + KERNEL_RELEASE,
    ),
    "core": ("gdb",),
}

QEMU = Path("/usr/bin/qemu-system-x86_64")
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
BUSYBOX = Path("/bin/busybox")
LIME_MODULE = Path("/lib/modules") / KERNEL_RELEASE / "updates" / "dkms" / "lime.ko"


class PrerequisiteError(BuildError):
    pass


def installed_version(package: str) -> str:
    """The installed version of a Debian package, or "" when it is not installed."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}|${Version}", package], capture_output=True, text=True
    )
    status, _, version = result.stdout.partition("|")
    return version if result.returncode == 0 and status.endswith(" installed") else ""


def ensure_packages(packages: Iterable[str]) -> None:
    """apt-get installs every package not installed at its pinned version (one transaction)."""
    wanted = ["%s=%s" % (p, APT_PINS[p]) for p in packages if installed_version(p) != APT_PINS[p]]
    if not wanted:
        return
    if os.geteuid() != 0:
        raise PrerequisiteError("need root to install %s" % " ".join(wanted))
    print("corpus: apt-get install %s" % " ".join(wanted), flush=True)
    _apt(["install", "-y", "-q", "--no-install-recommends", "--allow-downgrades"] + wanted)


def _apt(args, cwd=None) -> None:
    """Runs apt-get; on failure updates the package lists once (a bare machine may have none) and retries."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get"] + args, cwd=cwd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(["apt-get"] + args, cwd=cwd, env=env, check=True)


def ensure_lime_module() -> Path:
    """lime.ko for the guest kernel; DKMS builds it when the headers arrive, rebuild if it did not."""
    if not LIME_MODULE.exists():
        subprocess.run(["dkms", "autoinstall", "-k", KERNEL_RELEASE], check=True)
    if not LIME_MODULE.exists():
        raise PrerequisiteError("DKMS did not produce %s" % LIME_MODULE)
    return LIME_MODULE


def guest_kernel_dir() -> Path:
    """The unpacked guest kernel package (boot/vmlinuz-*, lib/modules/*) in the cache."""
    target = cache.root() / "kernel" / ("%s_%s" % (KERNEL_PACKAGE, KERNEL_VERSION))
    if target.is_dir():
        return target
    tmp = target.with_name(target.name + ".tmp-%d" % os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # As root, apt-get download would try to drop privileges to _apt, who cannot write here.
    _apt(["-o", "APT::Sandbox::User=root", "download", "-q", "%s=%s" % (KERNEL_PACKAGE, KERNEL_VERSION)], cwd=tmp)
    (deb,) = tmp.glob("*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True)
    deb.unlink()
    os.rename(tmp / "root", target)
    shutil.rmtree(tmp)
    return target


def vmlinuz(kernel_dir: Path) -> Path:
    return kernel_dir / "boot" / ("vmlinuz-" + KERNEL_RELEASE)


def kernel_module(kernel_dir: Path, name: str) -> Path:
    matches = list((kernel_dir / "lib" / "modules" / KERNEL_RELEASE / "kernel").rglob(name + ".ko"))
    if len(matches) != 1:
        raise PrerequisiteError("expected one %s.ko in %s, found %d" % (name, kernel_dir, len(matches)))
    return matches[0]


def ensure_for_kind(kind: str) -> None:
    """Everything a build of ``kind`` needs on this host, prepared once (not counted as build time)."""
    ensure_packages(PACKAGES_FOR_KIND[kind])
    if kind == "lime":
        ensure_lime_module()
        guest_kernel_dir()
