"""Where a result came from: the code, the packages, the machine and the command.

`collect` gathers it once per process as flat string tags (MLflow tags, and the commit in the
leaderboard and final.json). Anything that cannot be found is "unknown": provenance never fails
a study (outside a git checkout, without a GPU, on a CPU that hides its model name).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.util.redact import redact

UNKNOWN = "unknown"
PREFIX = "harness.prov."  # every provenance tag's key starts with this
PACKAGES = ("harness", "torch", "optuna", "mlflow", "numpy")
_command: list[str] = []  # the harness command as the CLI received it (else sys.argv)


def set_command(argv: Sequence[str]) -> None:
    """Record the command line the CLI runs (`harness` and its arguments)."""
    _command[:] = ["harness", *argv]
    collect.cache_clear()


@functools.cache
def collect() -> dict[str, str]:
    """Provenance tags of this process: code, packages, machine, command line (masked)."""
    import torch  # collected by processes that train, which have it loaded already

    tags = {**_git(), **{f"{p}_version": _version(p) for p in PACKAGES}}
    tags["python"] = platform.python_version()
    tags["torch_build"] = f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu"
    tags["cpu"] = _cpu_model()
    tags["cpu_count"] = str(os.cpu_count() or UNKNOWN)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    tags["gpu_count"] = str(gpus)
    tags["gpu"] = torch.cuda.get_device_name(0) if gpus else "none"
    tags["host"] = socket.gethostname()
    tags["command"] = redact(shlex.join(_command or sys.argv))[:5000]
    return {PREFIX + k: v for k, v in tags.items()}


def commit() -> str:
    """The git commit of the harness's code, with "+dirty" when the tree has changes."""
    git = _git()
    suffix = "+dirty" if git["git_dirty"] == "true" else ""
    return git["git_commit"] + suffix if git["git_commit"] != UNKNOWN else UNKNOWN


def differences(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Provenance keys whose values differ (the command line and host left out), as
    key -> (a's value, b's value)."""
    skip = {PREFIX + "command", PREFIX + "host"}
    keys = (set(a) | set(b)) - skip
    return {k.removeprefix(PREFIX): (a.get(k, UNKNOWN), b.get(k, UNKNOWN))
            for k in sorted(keys) if a.get(k) != b.get(k)}


def _git() -> dict[str, str]:
    """The checkout the harness package lives in."""
    return git_info(Path(__file__).resolve().parent.parent)


@functools.cache
def git_info(root: Path) -> dict[str, str]:
    """The git checkout at `root`: commit, dirty, and a hash of the diff ("unknown" when
    `root` is not in a checkout or git is missing)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return {"git_commit": UNKNOWN, "git_dirty": UNKNOWN, "git_diff_sha256": UNKNOWN}
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    diff = git("diff", "HEAD") or ""
    return {"git_commit": head.strip(), "git_dirty": "true" if status.strip() else "false",
            "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else "none"}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN
