"""Provision Debian roots holding real QEMU builds, one per suite, side by side.

Strategy: ``debootstrap --variant=minbase`` into ``<suite>.partial``, then ``apt-get install
--no-install-recommends qemu-system-x86`` inside it (chroot), then write the marker and rename
the folder to ``<suite>``. A folder without a valid marker is never used, so an interrupted run
just resumes (a finished debootstrap is kept) — that is what makes provisioning idempotent.

``qemu-system-x86`` without recommends still pulls ``seabios``, ``ipxe-qemu`` and
``qemu-system-data`` (its ``multiboot_dma.bin`` option ROM loads our ``-kernel``) as hard
dependencies (checked on bookworm, trixie and sid), which is all ``-nodefaults`` needs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from migcompat.lab._errors import LabError
from migcompat.lab.builds import (
    MARKER_NAME,
    QemuBuild,
    release_from_version,
    roots_dir,
)

__all__ = [
    "DEFAULT_SUITES",
    "MIRROR",
    "SUITES",
    "provision",
    "root_status",
    "suite_for",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Debian suite → the QEMU release line it ships (checked against the marker after install).
SUITES: dict[str, str] = {"bullseye": "5.2", "bookworm": "7.2", "trixie": "10.0", "sid": "11"}

#: What ``migcompat lab provision`` makes with no argument (7.2, 10.0 and 11.x).
DEFAULT_SUITES: tuple[str, ...] = ("bookworm", "trixie", "sid")

MIRROR = os.environ.get("MIGCOMPAT_DEBIAN_MIRROR", "http://deb.debian.org/debian")

# sid's (and sometimes testing's) Release file can be past Valid-Until when the mirror lags;
# the index debootstrap fetched is still the one whose pool we read, so accept it.
_APT_CONF = 'Acquire::Check-Valid-Until "false";\nAPT::Install-Recommends "false";\n'

Progress = Callable[[str], None]


def suite_for(name: str) -> str:
    """Debian suite for a release line or suite name (``7.2`` → bookworm, ``11.x`` → sid)."""
    if name in SUITES:
        return name
    wanted = name.removesuffix(".x")
    for suite, rel in SUITES.items():
        if wanted in (rel, rel.split(".")[0]) or wanted.split(".")[0] == rel:
            return suite
    raise LabError(
        f"no Debian suite ships QEMU {name!r}; known: "
        + ", ".join(f"{r} ({s})" for s, r in SUITES.items())
        + "; use --qemu REL=/path for your own build"
    )


def root_status(suite: str) -> dict[str, object] | None:
    """The marker of a finished root for ``suite``, or ``None``."""
    try:
        data = json.loads((roots_dir() / suite / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _suite_lock(suite: str, progress: Progress) -> Iterator[None]:
    """One provisioning per suite at a time (a second one waits, saying so)."""
    roots_dir().mkdir(parents=True, exist_ok=True)
    with open(roots_dir() / f".{suite}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{suite}: another provisioning holds the lock; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_logged(cmd: list[str], log: Path, progress: Progress, prefix: str) -> tuple[int, str]:
    """Run ``cmd``, appending its output to ``log`` and reporting each line as progress."""
    tail: list[str] = []
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        except OSError as exc:
            raise LabError(f"cannot run {cmd[0]}", exc=exc) from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            line = line.rstrip()
            if line:
                tail.append(line)
                del tail[:-40]
                progress(f"{prefix}: {line[:100]}")
        rc = proc.wait()
    return rc, "\n".join(tail)


def _mounted_under(path: Path) -> list[str]:
    """Mount points below ``path`` (we must never rmtree through a bind mount)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    return [p for p in points if p.startswith(prefix)]


def _debootstrap_done(partial: Path) -> bool:
    """debootstrap removes its ``/debootstrap`` work dir only when it succeeded."""
    return (partial / "usr/bin/apt-get").exists() and not (partial / "debootstrap").exists()


def _chroot(root: Path, *args: str) -> list[str]:
    return ["chroot", str(root), *args]


def _apt_failure(suite: str, tail: str) -> LabError:
    if re.search(r"\b404\b", tail):
        return LabError(
            f"{suite}: the Debian pool answered 404 Not Found for a package its index names "
            "(the suite moved on since the index was fetched); run `migcompat lab provision "
            f"{suite} --refresh` later",
            qemu_error=None,
            exc=RuntimeError(tail[-2000:]),
        )
    return LabError(f"{suite}: apt-get failed inside the root", exc=RuntimeError(tail[-2000:]))


def provision(
    suite: str,
    *,
    mirror: str = MIRROR,
    refresh: bool = False,
    progress: Progress | None = None,
) -> QemuBuild:
    """Make (or reuse) the root for ``suite`` and return its build.

    :param suite: Debian suite (``bookworm``…) — see :func:`suite_for` for release lines.
    :param refresh: throw away an unfinished root (``.partial``) and start again.
    :raises LabError: debootstrap or apt failed (the log under the roots dir has it all).
    """
    say = progress or (lambda _msg: None)
    if os.geteuid() != 0:
        raise LabError("provisioning needs root (debootstrap, chroot and mount namespaces)")
    for tool in ("debootstrap", "chroot", "unshare"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found (apt-get install debootstrap util-linux)")
    root = roots_dir() / suite
    partial = roots_dir() / f"{suite}.partial"
    log = roots_dir() / f"{suite}.log"
    with _suite_lock(suite, say):
        marker = root_status(suite)
        if marker is not None and (root / "usr/bin/qemu-system-x86_64").exists():
            say(f"{suite}: already provisioned ({marker['version_text']})")
            return _build_from_marker(root, marker)
        if root.exists():
            raise LabError(f"{root} exists without a valid marker; remove it and retry")
        if partial.exists() and (refresh or not _debootstrap_done(partial)):
            if _mounted_under(partial):
                raise LabError(f"{partial} has mounts below it; unmount them first")
            say(f"{suite}: removing unfinished root")
            shutil.rmtree(partial)
        if not partial.exists():
            say(f"{suite}: debootstrap --variant=minbase {suite}")
            rc, tail = _run_logged(
                ["debootstrap", "--variant=minbase", suite, str(partial), mirror],
                log, say, suite,
            )  # fmt: skip
            if rc != 0:
                raise LabError(
                    f"{suite}: debootstrap failed (exit {rc}); log: {log}",
                    exc=RuntimeError(tail[-2000:]),
                )
        (partial / "etc/apt/apt.conf.d/99migcompat").write_text(_APT_CONF)
        lock_wait = ["-o", "DPkg::Lock::Timeout=600"]
        # `update` may complain about an expired Release and still keep the old index: fine.
        _run_logged(_chroot(partial, "apt-get", *lock_wait, "update"), log, say, suite)
        rc, tail = _run_logged(
            _chroot(partial, "apt-get", *lock_wait, "install", "-y",
                    "--no-install-recommends", "qemu-system-x86"),
            log, say, suite,
        )  # fmt: skip
        if rc != 0:
            raise _apt_failure(suite, tail)
        _run_logged(_chroot(partial, "apt-get", "clean"), log, say, suite)
        marker = _write_marker(partial, suite)
        partial.rename(root)
        say(f"{suite}: ready ({marker['version_text']})")
        return _build_from_marker(root, marker)


def _write_marker(root: Path, suite: str) -> dict[str, object]:
    try:
        ver = subprocess.run(
            _chroot(root, "/usr/bin/qemu-system-x86_64", "--version"),
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.splitlines()[0].strip()  # fmt: skip
        pkg = subprocess.run(
            _chroot(root, "dpkg-query", "-W", "-f=${Version}", "qemu-system-x86"),
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        raise LabError(f"{suite}: installed QEMU does not run", exc=exc) from exc
    marker: dict[str, object] = {
        "suite": suite,
        "version_text": ver,
        "release": release_from_version(ver),
        "package": "qemu-system-x86",
        "package_version": pkg,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mirror": MIRROR,
    }
    (root / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def _build_from_marker(root: Path, marker: dict[str, object]) -> QemuBuild:
    ver = str(marker["version_text"])
    return QemuBuild(
        release=release_from_version(ver),
        version_text=ver,
        suite=str(marker["suite"]),
        root=root,
        package_version=str(marker.get("package_version") or "") or None,
    )
