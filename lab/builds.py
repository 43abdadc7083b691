"""Which QEMU builds the lab can run, and how to run each one.

Two kinds of build:

* a *provisioned* one: a minimal Debian root (``migcompat lab provision``) holding Debian's
  ``qemu-system-x86``; it runs through ``unshare --mount`` + ``chroot`` so that the bind mounts
  it needs (``/proc``, ``/sys``, ``/dev`` — postcopy needs ``/dev/userfaultfd`` — and the shared
  run dir) die with the process, and the PID we hold is QEMU's own (``exec``);
* a *user* build: a ``qemu-system-x86_64`` on the host, registered with
  ``migcompat lab provision --qemu REL=/path`` or the ``MIGCOMPAT_QEMU`` environment variable;
* a *lab* build: ``migcompat lab build`` compiled it from the suite's Debian source package
  with zero or more patches (``10.0.13+keepalive-v1``); it runs like a provisioned one, in the
  suite's build root (registry: ``lab-builds.json``).

Both see the run dir (:func:`run_dir`) at the same path, so QMP sockets, serial logs and the
guest kernel can be named by one path on both sides.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from migcompat.lab._errors import LabError

__all__ = [
    "LAB_BUILD_PREFIX",
    "MARKER_NAME",
    "UNIX_PATH_MAX",
    "QemuBuild",
    "build_roots_dir",
    "cache_dir",
    "check_socket_path",
    "find_build",
    "installed_builds",
    "lab_builds",
    "lab_builds_file",
    "new_run_dir",
    "probe_version",
    "register_user_build",
    "release_from_version",
    "release_key",
    "require_build",
    "roots_dir",
    "run_dir",
    "user_builds_file",
]


def __dir__() -> list[str]:
    return list(__all__)


#: File written at the top of a finished root; its presence makes provisioning idempotent.
MARKER_NAME = ".migcompat-root.json"

#: Where Debian installs the binary inside a root.
_ROOT_BINARY = "/usr/bin/qemu-system-x86_64"

# Runs as `sh -c SCRIPT sh ROOT RUN_DIR BINARY ARGS...` inside a private mount namespace.
# `mount --rbind` brings /dev's submounts (pts, shm) along; /dev/userfaultfd is a plain node.
# `exec chroot` then chroot's own exec make the PID the caller holds QEMU's PID.
_ROOT_SCRIPT = r"""set -e
umask 077
r=$1; run=$2; shift 2
for d in proc sys dev; do mount --rbind "/$d" "$r/$d"; done
mkdir -p "$r$run"
mount --bind "$run" "$r$run"
exec chroot "$r" "$@"
"""


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/migcompat``: roots and the user-build registry live here."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "migcompat"


def roots_dir() -> Path:
    """Folder of the per-suite Debian roots."""
    return cache_dir() / "roots"


def build_roots_dir() -> Path:
    """Folder of the per-suite build roots of ``migcompat lab build`` (never run as roots
    of provisioned builds: they carry no provisioning marker)."""
    return cache_dir() / "build-roots"


def lab_builds_file() -> Path:
    """JSON registry of ``migcompat lab build`` builds: name -> entry."""
    return cache_dir() / "lab-builds.json"


#: Where a lab build's binary and patched tree live inside its build root.
LAB_BUILD_PREFIX = "/opt/migcompat/builds"


def user_builds_file() -> Path:
    """JSON file mapping a release label to a user's own ``qemu-system-x86_64``."""
    return cache_dir() / "user-builds.json"


#: Longest path ``bind(2)`` takes for a unix socket (``sun_path`` is 108 bytes, NUL included).
UNIX_PATH_MAX = 107

# The process's default base (a fresh mkdtemp), once made.
_default_base: Path | None = None


def _check_private(path: Path) -> None:
    """Refuse ``path`` unless it is a real directory owned by us that no one else can write.

    A root lab puts QMP sockets, ``-serial file:`` targets and the guest kernel there: a
    directory another user made (or can write) lets them plant symlinks that root's QEMU
    writes through, or a kernel that it boots.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LabError(f"run dir {path}: cannot stat it", exc=exc) from exc
    uid = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise LabError(f"run dir {path} is a symlink: refusing it (set MIGCOMPAT_LAB_RUN_DIR "
                       "to a directory of your own)")  # fmt: skip
    if not stat.S_ISDIR(st.st_mode):
        raise LabError(f"run dir {path} is not a directory: refusing it")
    if st.st_uid != uid:
        raise LabError(f"run dir {path} is owned by uid {st.st_uid}, not by this user "
                       f"(uid {uid}): refusing it (others could plant files there)")  # fmt: skip
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LabError(f"run dir {path} is writable by group or others (mode "
                       f"{stat.S_IMODE(st.st_mode):04o}): refusing it (chmod 700 it)")  # fmt: skip


def _tidy_default_base(base: Path) -> None:
    """At exit: drop the cached kernel and empty run dirs; keep records a run pointed at."""
    shutil.rmtree(base / "guest", ignore_errors=True)
    for sub in sorted(base.glob("*/**"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only empty ones go
    with contextlib.suppress(OSError):
        base.rmdir()


def run_dir() -> Path:
    """The lab's base directory, private to this user (checked on every call).

    ``MIGCOMPAT_LAB_RUN_DIR`` names it: created mode 0700 when missing; when it exists it must
    be a directory owned by this user and not writable by group or others, else
    :class:`LabError` says why. Unset: a fresh ``mkdtemp`` directory per process (0700), removed
    at exit. Runs work in their own fresh subdirectory (:func:`new_run_dir`). Paths stay short:
    unix socket paths are limited to 108 bytes.
    """
    global _default_base
    configured = os.environ.get("MIGCOMPAT_LAB_RUN_DIR")
    if not configured:
        if _default_base is None or not _default_base.is_dir():
            _default_base = Path(tempfile.mkdtemp(prefix="mc-"))
            atexit.register(_tidy_default_base, _default_base)
        path = _default_base
    else:
        path = Path(configured)
        if not path.is_absolute():
            raise LabError(f"MIGCOMPAT_LAB_RUN_DIR={configured!r}: give an absolute path")
        if not os.path.lexists(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            # mkdir never follows a planted symlink; if someone wins the race, the check refuses.
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
    _check_private(path)
    return path


def new_run_dir(prefix: str) -> Path:
    """A fresh private directory for one run (``mkdtemp`` in :func:`run_dir`: mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=run_dir()))
    _check_private(path)
    return path


def check_socket_path(path: Path) -> None:
    """:class:`LabError` when ``path`` is too long for a unix socket (``bind`` would fail)."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise LabError(f"unix socket path {path} is {len(os.fsencode(path))} bytes, over the "
                       f"{UNIX_PATH_MAX}-byte limit: set MIGCOMPAT_LAB_RUN_DIR to a shorter "
                       "directory")  # fmt: skip


_VERSION_RE = re.compile(r"version (\d+)\.(\d+)")


def release_from_version(version_text: str) -> str:
    """Release line from a ``--version`` first line.

    >>> release_from_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)")
    '7.2'
    """
    m = _VERSION_RE.search(version_text)
    if not m:
        raise LabError(f"cannot read a QEMU version from {version_text!r}")
    return f"{int(m.group(1))}.{int(m.group(2))}"


def release_key(release: str) -> tuple[int, ...]:
    """Sort key for a release label (``7.2`` < ``10.0`` < ``11.1+keepalive``).

    >>> sorted(["10.0", "7.2", "11.1"], key=release_key)
    ['7.2', '10.0', '11.1']
    """
    nums = re.findall(r"\d+", release.split("+", 1)[0])
    return tuple(int(n) for n in nums) or (0,)


@dataclass(frozen=True)
class QemuBuild:
    """One runnable ``qemu-system-x86_64``.

    :param release: release line (``"7.2"``, ``"10.0"``, ``"11.1"``), from ``version_text``
        for provisioned builds, the user's label for their own build.
    :param version_text: exact first line of ``qemu-system-x86_64 --version``.
    :param suite: Debian suite of a provisioned root, ``None`` for a user's build.
    :param binary: the binary's path (inside the root for a provisioned build).
    :param root: the Debian root, ``None`` for a user's build.
    :param package_version: Debian package version of ``qemu-system-x86``, if known (of the
        source package, for a lab build).
    :param patches: a lab build's patches in the order applied (name, path, sha256).
    :param key: a lab build's cache key (source version + patch contents + configure flags).
    :param tree: a lab build's patched source tree (a path inside ``root``).
    :param protocol: the protocol release its extracted catalog names (see
        :attr:`protocol_release`).
    :param model: the release whose tables (catalog *and* compat entries) it fully is, for
        predictions (``matrix``); ``None`` when no overlay models it (the posted v1 lacks the
        keepalive's compat entry).
    """

    release: str
    version_text: str
    suite: str | None = None
    binary: str = _ROOT_BINARY
    root: Path | None = field(default=None, compare=False)
    package_version: str | None = None
    patches: tuple[dict[str, str], ...] = field(default=(), compare=False)
    key: str | None = None
    tree: str | None = field(default=None, compare=False)
    protocol: str | None = field(default=None, compare=False)
    model: str | None = field(default=None, compare=False)

    @property
    def is_lab_build(self) -> bool:
        """Built by ``migcompat lab build`` (from source, maybe patched)."""
        return self.key is not None

    @property
    def protocol_release(self) -> str:
        """The release the protocol core reads this build's return path as.

        A lab build's own extracted catalog names it (``10.0.13+keepalive`` when its source
        adds exactly the keepalive overlay's messages); without one, its upstream version.
        """
        if not self.is_lab_build:
            return self.release
        return self.protocol or self.release.split("+", 1)[0]

    @property
    def tree_path(self) -> Path | None:
        """Host path of a lab build's patched source tree."""
        if self.tree is None or self.root is None:
            return None
        return Path(str(self.root) + self.tree)

    @property
    def run_dir(self) -> Path:
        """Host path that QEMU sees at the same path (sockets, kernel, serial logs)."""
        return run_dir()

    @property
    def label(self) -> str:
        """Short human name: ``7.2 (bookworm)`` or ``11.1 (/opt/qemu/bin/qemu-system-x86_64)``."""
        return f"{self.release} ({self.suite or self.binary})"

    def argv(self, *qemu_args: str) -> list[str]:
        """Full command line that runs this QEMU with ``qemu_args``.

        The process started from it *is* QEMU (after ``exec``), so its PID can be signalled.
        """
        if self.root is None:
            return [self.binary, *qemu_args]
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _ROOT_SCRIPT, "migcompat-lab",
            str(self.root), str(self.run_dir), self.binary, *qemu_args,
        ]  # fmt: skip

    def to_json(self) -> dict[str, object]:
        """JSON-able description (for ``lab list --json`` and run records)."""
        return {
            "release": self.release,
            "version_text": self.version_text,
            "suite": self.suite,
            "binary": self.binary,
            "root": str(self.root) if self.root else None,
            "package_version": self.package_version,
            "patches": [dict(p) for p in self.patches],
            "key": self.key,
            "tree": self.tree,
            "protocol_release": self.protocol_release,
            "model": self.model if self.is_lab_build else self.release,
        }


def probe_version(binary: str) -> str:
    """First line of ``BINARY --version`` (raises :class:`LabError` if it does not run)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"cannot run {binary} --version", exc=exc) from exc
    line = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    release_from_version(line)  # validates
    return line


def _read_marker(root: Path) -> dict[str, object] | None:
    """The marker of a finished root, or ``None`` when missing, unreadable or incomplete."""
    try:
        data = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data.get("version_text") or not data.get("suite"):
        return None
    if not (root / _ROOT_BINARY.lstrip("/")).exists():
        return None
    return data


def _provisioned_builds() -> list[QemuBuild]:
    builds: list[QemuBuild] = []
    base = roots_dir()
    if not base.is_dir():
        return builds
    for root in sorted(base.iterdir()):
        if not root.is_dir() or root.name.endswith(".partial"):
            continue
        marker = _read_marker(root)
        if marker is None:
            continue
        builds.append(
            QemuBuild(
                release=release_from_version(str(marker["version_text"])),
                version_text=str(marker["version_text"]),
                suite=str(marker["suite"]),
                root=root,
                package_version=str(marker.get("package_version") or "") or None,
            )
        )
    return builds


def _load_user_registry() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(user_builds_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register_user_build(release: str, binary: str) -> QemuBuild:
    """Remember a user's own build under ``release`` (checked by running ``--version``)."""
    path = shutil.which(binary) or binary
    path = str(Path(path).resolve())
    version = probe_version(path)
    registry = _load_user_registry()
    registry[release] = {"binary": path, "version_text": version}
    user_builds_file().parent.mkdir(parents=True, exist_ok=True)
    user_builds_file().write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
    return QemuBuild(release=release, version_text=version, suite=None, binary=path)


def _env_user_builds() -> dict[str, str]:
    """``MIGCOMPAT_QEMU="7.2=/a/qemu-system-x86_64:11.1=/b/qemu-system-x86_64"``."""
    out: dict[str, str] = {}
    for item in os.environ.get("MIGCOMPAT_QEMU", "").split(os.pathsep):
        if "=" in item:
            rel, _, path = item.partition("=")
            out[rel.strip()] = path.strip()
    return out


def _user_builds() -> list[QemuBuild]:
    builds = []
    for rel, entry in _load_user_registry().items():
        binary = entry.get("binary", "")
        if binary and Path(binary).exists():
            builds.append(
                QemuBuild(release=rel, version_text=entry.get("version_text", ""), binary=binary)
            )
    for rel, binary in _env_user_builds().items():
        builds.append(QemuBuild(release=rel, version_text=probe_version(binary), binary=binary))
    return builds


def provision_hint(release: str | None = None) -> str:
    """How to get a build of ``release`` (any, when ``None``): with root, or without it."""
    rel = release or "7.2"
    what = f"QEMU {release}" if release else "a QEMU"
    return (
        f"run `migcompat lab provision{' ' + release if release else ''}` as root "
        f"(Debian roots), or register {what} you already have, no root needed: "
        f"`migcompat lab provision --qemu {rel}=/usr/bin/qemu-system-x86_64` "
        "(the label is the release line of that binary)"
    )


def lab_builds() -> list[QemuBuild]:
    """The registered ``migcompat lab build`` builds whose binary still exists."""
    try:
        data = json.loads(lab_builds_file().read_text())
    except (OSError, ValueError):
        return []
    builds = []
    for name, e in sorted(data.items() if isinstance(data, dict) else ()):
        try:
            root = Path(e["root"])
            if not (root / str(e["binary"]).lstrip("/")).exists():
                continue
            builds.append(QemuBuild(
                release=name, version_text=str(e["version_text"]), suite=str(e["suite"]),
                binary=str(e["binary"]), root=root, package_version=str(e["source_version"]),
                patches=tuple({k: str(v) for k, v in p.items()} for p in e.get("patches", ())),
                key=str(e["key"]), tree=e.get("tree"), protocol=e.get("protocol"),
                model=e.get("model"),
            ))  # fmt: skip
        except (KeyError, TypeError, AttributeError):
            continue  # an entry this version cannot read is not runnable
    return builds


def installed_builds() -> list[QemuBuild]:
    """Every runnable build: user builds first (they win lookups), then provisioned roots,
    then lab builds (looked up by their name only)."""
    users = sorted(_user_builds(), key=lambda b: release_key(b.release))
    provisioned = sorted(_provisioned_builds(), key=lambda b: release_key(b.release))
    built = sorted(lab_builds(), key=lambda b: (release_key(b.release), b.release))
    return users + provisioned + built


def find_build(release: str) -> QemuBuild | None:
    """The build for ``release``: a release line, a Debian suite name, ``11`` for the newest
    11.x, or a lab build's name (``10.0.13+keepalive-v1``)."""
    builds = installed_builds()
    for b in builds:
        if release == b.release or (release == b.suite and not b.is_lab_build):
            return b
    # the release a lab build models (10.0.13+keepalive), when exactly one does
    modelled = [b for b in builds if b.is_lab_build and b.model == release]
    if len(modelled) == 1:
        return modelled[0]
    # "11" / "11.x" mean the newest build of that major line (not a patched lab build).
    major = release.removesuffix(".x")
    if major.isdigit():
        same = [b for b in builds if b.release.split(".")[0] == major and not b.is_lab_build]
        if same:
            return max(same, key=lambda b: release_key(b.release))
    return None


def require_build(release: str | QemuBuild) -> QemuBuild:
    """:func:`find_build`, or the build itself when given one.

    :raises LabError: no such build (the message says how to provision it).
    """
    if isinstance(release, QemuBuild):
        return release
    b = find_build(release)
    if b is None:
        raise LabError(f"no QEMU build for {release!r}: run `migcompat lab provision {release}`")
    return b
