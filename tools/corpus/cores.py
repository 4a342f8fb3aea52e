"""Kind ``core``: run the deployment on the host and capture each process with gdb's gcore.

gcore honours /proc/PID/coredump_filter.  The default (0x33) drops read-only file-backed pages:
libpython's .text/.rodata and the ELF headers that recovery reads to find symbols and tables.
0x7f keeps anonymous and file-backed, private and shared mappings, ELF headers and huge pages.
"""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List

from .catalog import Deployment
from .deployed import Planned
from .errors import BuildError, log_tail

COREDUMP_FILTER = "0x7f"
POLL_S = 0.2


def build(deployment: Deployment, planned: List[Planned], out: Path) -> List[dict]:
    """Writes <pid>.core per process into ``out`` and returns the build.json process records."""
    logs = out / "logs"
    with tempfile.TemporaryDirectory(prefix="zen-corpus-") as tmp:
        running = [_start(p, deployment, out, tmp, logs) for p in planned]
        try:
            _wait_ready(deployment, running, out, logs)
            for proc in running:
                _capture(proc.pid, out, logs)
        finally:
            _stop(running)
    return [p.record(proc.pid) for p, proc in zip(planned, running)]


def _start(p: Planned, deployment: Deployment, out: Path, tmp: str, logs: Path) -> subprocess.Popen:
    with open(logs / ("%d.log" % p.index), "wb") as log:
        return subprocess.Popen(
            p.command(),
            env=p.environment(deployment, str(out), tmp),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(deployment: Deployment, running: List[subprocess.Popen], out: Path, logs: Path) -> None:
    deadline = time.monotonic() + deployment.ready_timeout_s
    pending = list(enumerate(running))
    while pending:
        for index, proc in pending:
            if proc.poll() is not None:
                raise BuildError(
                    "process %d (pid %d) exited with %s before it was ready" % (index, proc.pid, proc.returncode),
                    log_tail(logs / ("%d.log" % index)),
                )
        pending = [(i, p) for i, p in pending if not (out / "groundtruth" / ("%d.ready" % p.pid)).exists()]
        if pending and time.monotonic() > deadline:
            late = [index for index, _ in pending]
            raise BuildError("not ready after %d s: processes %s" % (deployment.ready_timeout_s, late))
        time.sleep(POLL_S)


def _capture(pid: int, out: Path, logs: Path) -> None:
    Path("/proc/%d/coredump_filter" % pid).write_text(COREDUMP_FILTER)
    prefix = out / "core"
    with open(logs / "gcore.log", "ab") as log:
        result = subprocess.run(["gcore", "-o", str(prefix), str(pid)], stdout=log, stderr=subprocess.STDOUT)
    produced = Path("%s.%d" % (prefix, pid))
    if result.returncode != 0 or not produced.exists():
        raise BuildError("gcore of pid %d failed (exit %d)" % (pid, result.returncode), log_tail(logs / "gcore.log"))
    os.rename(produced, out / ("%d.core" % pid))


def _stop(running: List[subprocess.Popen]) -> None:
    for proc in running:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
