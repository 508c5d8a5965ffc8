"""Where and on what the numbers were taken: the machine and the git revision."""
from __future__ import annotations

import os
import pathlib
import platform
import subprocess


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> dict:
    load = os.getloadavg()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg": [round(x, 2) for x in load],
            "kernel": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def git_revision(root: pathlib.Path) -> str:
    """HEAD's short hash, with `+dirty` when the work tree differs from it."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    head = git("rev-parse", "--short=12", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
