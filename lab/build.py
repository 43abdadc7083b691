"""Build ``qemu-system-x86_64`` from a Debian suite's QEMU source package, with patches.

Why: a proposal that was never merged (the return-path keepalive) can only be checked
against real QEMU by building it. The source is the one the suite's own binary came from,
so a patched build differs from its provisioned twin by the patches alone.

Steps (``migcompat lab build``):

1. the *build root* of the suite: a copy of the provisioned root (``lab provision``) with a
   ``deb-src`` line and the build dependencies, kept under ``build-roots/<suite>`` so the
   provisioned root others run stays untouched; made in ``<suite>.partial``, renamed when done;
2. ``apt-get source --download-only qemu=<version of the root's qemu-system-x86>`` (kept);
3. in a fresh work dir: ``dpkg-source -x`` (Debian's own patches), then each ``--patch`` in
   order with ``patch -p1 --forward --batch``; a hunk that fails names the file and hunk;
4. ``configure`` (:data:`CONFIGURE_FLAGS`: a minimal x86_64-softmmu with TCG, firmware from
   the root's seabios/ipxe packages) and ``ninja qemu-system-x86_64`` (niced);
5. the binary and the patched tree (for ``tools/extract_*``) move to
   ``/opt/migcompat/builds/<key>`` inside the build root, then the registry
   (``lab-builds.json``) is replaced atomically. Until that last step nothing is registered,
   so an interrupted or failed build leaves nothing half-registered.

A build is keyed by source version + the sha256 of each patch (in order) + the configure
flags: an unchanged build is not rebuilt.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from migcompat.lab._errors import LabError
from migcompat.lab.builds import (
    LAB_BUILD_PREFIX,
    QemuBuild,
    build_roots_dir,
    lab_builds,
    lab_builds_file,
    roots_dir,
)

__all__ = [
    "BUILD_DEPS",
    "CONFIGURE_FLAGS",
    "PatchError",
    "PatchFile",
    "apply_patches",
    "build_name",
    "build_qemu",
    "identify_model",
    "identify_protocol",
    "read_patch",
    "source_tree",
]


def __dir__() -> list[str]:
    return list(__all__)


#: What the minimal build needs inside the suite's root (plus dpkg-dev for dpkg-source).
BUILD_DEPS: tuple[str, ...] = (
    "build-essential", "ninja-build", "meson", "pkg-config", "python3", "python3-venv",
    "libglib2.0-dev", "libpixman-1-dev", "libfdt-dev", "flex", "bison", "zlib1g-dev",
    "dpkg-dev",
)  # fmt: skip

#: A minimal x86_64-softmmu with TCG. The ``+ds`` source has no firmware blobs: they come
#: from the root's qemu-system-x86 dependencies (seabios, ipxe-qemu, qemu-system-data).
CONFIGURE_FLAGS: tuple[str, ...] = (
    "--target-list=x86_64-softmmu", "--without-default-features", "--disable-docs",
    "--disable-werror", "--enable-tcg", "--disable-install-blobs",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
)  # fmt: skip

_MARKER = ".migcompat-build-root.json"
_APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]

Progress = Callable[[str], None]


class PatchError(LabError):
    """A ``--patch`` that is missing, not a patch, or does not apply (exit 2)."""


@dataclass(frozen=True)
class PatchFile:
    """One ``--patch``: where it is, its sha256 and the hunks it holds (for error messages)."""

    path: Path
    sha256: str
    files: tuple[tuple[str, tuple[str, ...]], ...]  #: (target file, hunk headers)

    @property
    def name(self) -> str:
        """``keepalive-v1`` for ``…/keepalive-v1.patch``."""
        stem = self.path.name
        for ext in (".patch", ".diff"):
            stem = stem.removesuffix(ext)
        return stem

    def hunk(self, target: str, number: int) -> str:
        """The ``@@ … @@`` header of hunk ``number`` (1-based) for ``target``, or ``""``."""
        for name, hunks in self.files:
            if name == target and 0 < number <= len(hunks):
                return hunks[number - 1]
        return ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256}


_DIFF_TARGET = re.compile(r"^\+\+\+ (?:b/)?(?P<file>\S+)")


def read_patch(path: str | Path) -> PatchFile:
    """Read and check one ``--patch`` (``git diff``/``diff -u`` format, ``-p1`` paths).

    :raises PatchError: missing or unreadable file, or no hunk in it.
    """
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PatchError(f"--patch {path}: cannot read it ({exc.strerror or exc})") from None
    files: list[tuple[str, list[str]]] = []
    for line in data.decode(errors="replace").splitlines():
        m = _DIFF_TARGET.match(line)
        if m:
            files.append((m["file"], []))
        elif line.startswith("@@ ") and files:
            files[-1][1].append(line)
    if not any(h for _f, h in files):
        raise PatchError(f"--patch {path}: not a unified diff (no '+++ file' with '@@' hunks)")
    return PatchFile(
        p.resolve(), hashlib.sha256(data).hexdigest(), tuple((f, tuple(h)) for f, h in files)
    )


_PATCHING = re.compile(r"^(?:patching|checking) file '?(?P<file>[^']+?)'?$")
_FAILED = re.compile(r"^Hunk #(?P<n>\d+) FAILED at (?P<line>\d+)")


def _patch_failure(patch: PatchFile, output: str, tree_label: str) -> PatchError:
    """What ``patch`` said, as "FILE: hunk #N (@@ … @@) FAILED at L" lines."""
    current = ""
    problems: list[str] = []
    for line in output.splitlines():
        m = _PATCHING.match(line.strip())
        if m:
            current = m["file"]
            continue
        m = _FAILED.match(line.strip())
        if m:
            header = patch.hunk(current, int(m["n"]))
            problems.append(
                f"{current}: hunk #{m['n']}"
                + (f" ({header})" if header else "")
                + f" FAILED at line {m['line']}"
            )
        elif "can't find file to patch" in line or "No file to patch" in line:
            problems.append(f"{current or '?'}: no such file in the tree")
        elif "Reversed (or previously applied) patch detected" in line:
            problems.append(f"{current}: already applied (or reversed)")
    lines = output.strip().splitlines()
    detail = "; ".join(problems) or (lines[-1] if lines else "patch failed")
    return PatchError(f"--patch {patch.path} does not apply to {tree_label}: {detail}")


def apply_patches(
    tree: Path,
    patches: Sequence[PatchFile],
    label: str = "the tree",
    progress: Progress | None = None,
) -> None:
    """Apply ``patches`` to ``tree`` in order (``patch -p1``); the first failure raises.

    Each patch is first tried with ``--dry-run`` so a failing one leaves no ``.rej`` files
    and no half-applied hunks behind.

    :raises PatchError: naming the patch, the file and the hunk that failed.
    """
    say = progress or (lambda _m: None)
    if shutil.which("patch") is None:
        raise LabError("patch not found (apt-get install patch)")
    for p in patches:
        for dry in (True, False):
            cmd = ["patch", "-p1", "--forward", "--batch", "-i", str(p.path), "-d", str(tree)]
            out = subprocess.run(
                cmd + (["--dry-run"] if dry else []), capture_output=True, text=True
            )
            if out.returncode != 0:
                raise _patch_failure(p, out.stdout + out.stderr, label)
        offsets = len(re.findall(r"succeeded at \d+ \(offset", out.stdout))
        fuzz = len(re.findall(r"with fuzz", out.stdout))
        say(
            f"applied {p.path.name}"
            + (f" ({offsets} hunks at an offset" if offsets else "")
            + (f", {fuzz} with fuzz" if fuzz else "")
            + (")" if offsets else "")
        )


def upstream_version(package_version: str) -> str:
    """``10.0.13`` for ``1:10.0.13+ds-0+deb13u1``.

    >>> upstream_version("1:7.2+dfsg-7+deb12u18")
    '7.2'
    """
    m = re.match(r"(?:\d+:)?(\d+(?:\.\d+)+)", package_version)
    if not m:
        raise LabError(f"cannot read an upstream version from {package_version!r}")
    return m.group(1)


def build_name(package_version: str, patches: Sequence[PatchFile]) -> str:
    """``10.0.13+keepalive-v1`` (+ each further patch's name); ``10.0.13+debian`` unpatched.

    >>> build_name("1:10.0.13+ds-0+deb13u1", [])
    '10.0.13+debian'
    """
    names = [p.name for p in patches] or ["debian"]
    return "+".join([upstream_version(package_version), *names])


def build_key(package_version: str, patches: Sequence[PatchFile]) -> str:
    """Cache key: source version, each patch's contents in order, the configure flags."""
    blob = json.dumps(
        {"source": package_version, "patches": [p.sha256 for p in patches],
         "configure": list(CONFIGURE_FLAGS)}, sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- running things -------------------------------------------------------------------


def _run(
    cmd: list[str],
    log: Path,
    progress: Progress,
    prefix: str,
    keep: Callable[[str], bool] = lambda _l: True,
) -> tuple[int, str]:
    """Run ``cmd`` (output appended to ``log``; lines ``keep`` accepts become progress)."""
    tail: list[str] = []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                errors="replace",
            )
        except OSError as exc:
            raise LabError(f"cannot run {cmd[0]}", exc=exc) from exc
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                fh.write(line)
                line = line.rstrip()
                if line:
                    tail.append(line)
                    del tail[:-40]
                    if keep(line):
                        progress(f"{prefix}: {line[:110]}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        rc = proc.wait()
    return rc, "\n".join(tail)


def _chroot(root: Path, *args: str) -> list[str]:
    return ["chroot", str(root), *args]


@contextlib.contextmanager
def _lock(path: Path, progress: Progress, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{what}: another build holds the lock; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _known_suite(suite: str) -> None:
    from migcompat.lab.provision import SUITES

    if suite not in SUITES:
        raise LabError(
            f"unknown suite {suite!r}; the lab provisions: "
            + ", ".join(f"{s} ({r})" for s, r in SUITES.items())
        )


def _runtime_marker(suite: str) -> dict[str, object]:
    try:
        marker = json.loads((roots_dir() / suite / ".migcompat-root.json").read_text())
    except (OSError, ValueError):
        raise LabError(
            f"{suite} is not provisioned: run `migcompat lab provision {suite}` first "
            "(the build uses the source of the suite's own qemu-system-x86)"
        ) from None
    if not isinstance(marker, dict) or not marker.get("package_version"):
        raise LabError(f"{suite}: its root's marker names no package version; re-provision it")
    return marker


def _source_version(marker: dict[str, object]) -> str:
    """The source package version of the root's qemu-system-x86 (a binNMU's binary version
    ``1:7.2+dfsg-7+deb12u18+b3`` comes from source ``1:7.2+dfsg-7+deb12u18``).

    >>> _source_version({"package_version": "1:7.2+dfsg-7+deb12u18+b3"})
    '1:7.2+dfsg-7+deb12u18'
    """
    return re.sub(r"\+b\d+$", "", str(marker["package_version"]))


def _mounted_under(path: Path) -> bool:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1].startswith(prefix) for line in fh)


def _build_root(suite: str, mirror: str, progress: Progress) -> Path:
    """The suite's build root (made once: copy of the provisioned root + build deps)."""
    base = build_roots_dir()
    root, partial, log = base / suite, base / f"{suite}.partial", base / f"{suite}.log"
    with _lock(base / f".{suite}.lock", progress, f"{suite} build root"):
        if (root / _MARKER).exists():
            return root
        if root.exists():
            raise LabError(f"{root} exists without a marker; remove it and retry")
        if partial.exists():
            if _mounted_under(partial):
                raise LabError(f"{partial} has mounts below it; unmount them first")
            shutil.rmtree(partial)
        progress(f"{suite}: copying the provisioned root into a build root")
        rc, tail = _run(["cp", "-a", str(roots_dir() / suite), str(partial)], log, progress, suite)
        if rc != 0:
            raise LabError(
                f"{suite}: copying the root failed; log: {log}", exc=RuntimeError(tail[-2000:])
            )
        (partial / ".migcompat-root.json").unlink(missing_ok=True)  # not a provisioned root
        (partial / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
        (partial / "etc/apt/sources.list.d/migcompat-src.list").write_text(
            f"deb-src {mirror} {suite} main\n"
        )
        progress(f"{suite}: apt-get update (deb-src)")
        rc, tail = _run(_chroot(partial, *_APT, "update"), log, progress, suite)
        if rc != 0:
            raise LabError(
                f"{suite}: apt-get update failed; log: {log}", exc=RuntimeError(tail[-2000:])
            )
        progress(f"{suite}: installing build dependencies")
        rc, tail = _run(
            _chroot(partial, *_APT, "install", "-y", "--no-install-recommends", *BUILD_DEPS),
            log,
            progress,
            suite,
        )
        if rc != 0:
            raise LabError(
                f"{suite}: installing the build dependencies failed; log: {log}",
                exc=RuntimeError(tail[-2000:]),
            )
        _run(_chroot(partial, "apt-get", "clean"), log, progress, suite)
        (partial / _MARKER).write_text(
            json.dumps(
                {
                    "suite": suite,
                    "deps": list(BUILD_DEPS),
                    "mirror": mirror,
                    "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        )
        partial.rename(root)
        return root


def _fetch_source(root: Path, package_version: str, log: Path, progress: Progress) -> Path:
    """The source package's ``.dsc`` inside the root (downloaded once), as a root path."""
    inside = Path("/var/cache/migcompat-src") / package_version.replace(":", "_")
    host = root / inside.relative_to("/")
    dscs = list(host.glob("qemu_*.dsc")) if host.is_dir() else []
    if dscs and (host / ".complete").exists():
        return inside / dscs[0].name
    tmp = host.with_name(host.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    progress(f"apt-get source qemu={package_version}")
    rc, tail = _run(
        _chroot(
            root,
            "sh",
            "-c",
            f"cd {inside.parent / tmp.name} && apt-get source --download-only "
            f"qemu={package_version}",
        ),
        log,
        progress,
        "source",
    )
    if rc != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabError(
            f"apt-get source qemu={package_version} failed; log: {log}",
            exc=RuntimeError(tail[-2000:]),
        )
    (tmp / ".complete").write_text(package_version + "\n")
    shutil.rmtree(host, ignore_errors=True)
    tmp.rename(host)
    dsc = next(host.glob("qemu_*.dsc"))
    return inside / dsc.name


def _extract_source(root: Path, dsc: Path, dest: Path, log: Path, progress: Progress) -> None:
    """``dpkg-source -x`` (applies Debian's own patches) into ``dest`` (root paths)."""
    progress(f"dpkg-source -x {dsc.name}")
    rc, tail = _run(
        _chroot(root, "dpkg-source", "-x", str(dsc), str(dest)), log, progress, "source"
    )
    if rc != 0:
        raise LabError(f"dpkg-source -x failed; log: {log}", exc=RuntimeError(tail[-2000:]))


def source_tree(suite: str, progress: Progress | None = None, mirror: str | None = None) -> Path:
    """Host path of the suite's unpatched QEMU source tree (Debian's patches applied).

    Extracted once into the build root (``/var/cache/migcompat-src/<version>/tree``); what
    ``migcompat keepalive --compat-patch`` and the extraction tools read.
    """
    from migcompat.lab.provision import MIRROR

    say = progress or (lambda _m: None)
    _known_suite(suite)
    pkgver = _source_version(_runtime_marker(suite))
    if os.geteuid() != 0:
        raise LabError("fetching the source needs root (chroot into the suite's root)")
    root = _build_root(suite, mirror or MIRROR, say)
    base = build_roots_dir()
    with _lock(base / f".src-{suite}.lock", say, f"{suite} source"):
        dsc = _fetch_source(root, pkgver, base / f"{suite}.log", say)
        inside = dsc.parent / "tree"
        host = root / inside.relative_to("/")
        if host.is_dir():
            return host
        partial_in = dsc.parent / f"tree.{os.getpid()}.partial"
        partial = root / partial_in.relative_to("/")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _extract_source(root, dsc, partial_in, base / f"{suite}.log", say)
            partial.rename(host)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return host


_RP_ENUM = re.compile(r"enum\s+mig_rp_message_type\s*\{(?P<body>.*?)\}", re.S)


def identify_protocol(tree: Path, version: str) -> tuple[str | None, str]:
    """Which catalog release a (patched) tree's return path is, read from its own source.

    The tree's ``enum mig_rp_message_type`` (``migration/migration.c``) is compared with the
    catalog's messages of ``version``'s line, and with each overlay applied to it: an exact
    match names the release (``10.0.13`` or ``10.0.13+keepalive``).

    :returns: the release (``None`` when nothing matches) and why.
    """
    from migcompat.protocol import catalog, overlays

    try:
        text = (tree / "migration/migration.c").read_text(errors="replace")
    except OSError as exc:
        return None, f"no migration/migration.c ({exc.strerror or exc})"
    m = _RP_ENUM.search(re.sub(r"/\*.*?\*/", "", text, flags=re.S))
    if m is None:
        return None, "no enum mig_rp_message_type in migration/migration.c"
    names = [n.split("=")[0].strip() for n in m["body"].split(",") if n.strip()]
    names = [n for n in names if n != "MIG_RP_MSG_MAX"]
    candidates = [version] + [f"{version}+{o}" for o in sorted(overlays())]
    for rel in candidates:
        try:
            cat = catalog(rel)
        except Exception:
            continue
        if [x.name for x in sorted(cat.messages, key=lambda x: x.id)] == names:
            return rel, (
                f"enum mig_rp_message_type of the tree = catalog {rel} "
                f"({len(names)} messages, MIG_RP_MSG_MAX {cat.max})"
            )
    return None, f"the tree's {len(names)} return-path messages match no catalog release: {names}"


def identify_model(tree: Path, protocol: str | None) -> tuple[str | None, str]:
    """Whether a tree is *fully* what its protocol release's overlay models.

    An overlay also adds compat entries (the keepalive's ``hw_compat`` entry that keeps the
    period 0 on older machine types); a tree whose return path matches but whose
    ``hw/core/machine.c`` lacks them (the posted v1) behaves differently on those machine
    types, so predictions made from the overlay do not hold for it.
    """
    from migcompat.compat import overlay_compat_entries

    if protocol is None:
        return None, "no catalog release matches its return path"
    if "+" not in protocol:
        return protocol, "no overlay: the release's own tables"
    try:
        text = (tree / "hw/core/machine.c").read_text(errors="replace")
    except OSError as exc:
        return None, f"no hw/core/machine.c ({exc.strerror or exc})"
    missing = []
    for e in overlay_compat_entries(protocol):
        m = re.search(
            rf"GlobalProperty\s+{re.escape(e.array)}\s*\[\]\s*=\s*\{{(.*?)\}};", text, re.S
        )
        pat = rf'"{re.escape(e.driver)}"\s*,\s*"{re.escape(e.property)}"\s*,\s*"{e.value}"'
        if m is None or not re.search(pat, m.group(1)):
            missing.append(f'{{ "{e.driver}", "{e.property}", "{e.value}" }} in {e.array}')
    if missing:
        return None, (
            f"return path = {protocol}, but hw/core/machine.c lacks the overlay's "
            f"compat entry {'; '.join(missing)}"
        )
    return protocol, f"return path and compat entries = {protocol}"


def _ninja_progress(line: str) -> bool:
    """Every 50th ``[N/M]`` step, the last one, and anything that is not a step."""
    m = re.match(r"\[(\d+)/(\d+)\]", line)
    return m is None or int(m[1]) % 50 == 0 or m[1] == m[2]


def _probe(root: Path, binary: str) -> str:
    try:
        out = subprocess.run(
            _chroot(root, binary, "--version"),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"the built {binary} does not run in {root}", exc=exc) from exc
    return out.stdout.strip().splitlines()[0]


def _register(entry: dict[str, object]) -> None:
    """Add/replace one entry in the registry: write a temp file, then ``os.replace``."""
    path = lab_builds_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data[str(entry["name"])] = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def build_qemu(
    suite: str,
    patches: Sequence[str | Path] = (),
    *,
    name: str | None = None,
    rebuild: bool = False,
    jobs: int = 2,
    mirror: str | None = None,
    progress: Progress | None = None,
) -> tuple[QemuBuild, bool]:
    """Build (or take from the cache) QEMU from ``suite``'s source with ``patches``.

    :returns: the registered build, and whether it was built now (``False``: cached).
    :raises LabError: an unknown or unprovisioned suite, a missing patch, a patch that does
        not apply (:class:`PatchError`), a failed build step (the log names the file).
    """
    from migcompat.lab.provision import MIRROR

    say = progress or (lambda _m: None)
    _known_suite(suite)
    files = [read_patch(p) for p in patches]
    marker = _runtime_marker(suite)
    pkgver = _source_version(marker)
    label = name or build_name(pkgver, files)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]*", label):
        raise LabError(f"--name {label!r}: use letters, digits and . + _ -")
    key = build_key(pkgver, files)
    if os.geteuid() != 0:
        raise LabError("building needs root (chroot into the suite's root)")
    for tool in ("chroot", "cp"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found")
    base = build_roots_dir()
    base.mkdir(parents=True, exist_ok=True)
    log = base / f"{label}.log"
    with _lock(base / f".build-{key}.lock", say, label):
        if not rebuild:
            for b in lab_builds():
                if b.key == key and Path(str(b.root) + b.binary).exists():
                    old = json.loads(lab_builds_file().read_text())[b.release]
                    tree = b.tree_path
                    stale = "model" not in old and tree is not None  # an older entry
                    if tree is not None and stale:
                        old["protocol"], old["protocol_basis"] = identify_protocol(
                            tree, upstream_version(pkgver)
                        )
                        old["model"], old["model_basis"] = identify_model(tree, old["protocol"])
                    if stale or b.release != label:
                        _register(dict(old, name=label))  # same build, maybe a new name
                    b = next(x for x in lab_builds() if x.release == label)
                    say(f"{label}: cached (key {key})")
                    return b, False
        t0 = time.monotonic()
        root = _build_root(suite, mirror or MIRROR, say)
        dsc = _fetch_source(root, pkgver, log, say)
        work_in = Path("/build") / f"{key}.{os.getpid()}.partial"
        work = root / work_in.relative_to("/")
        final_in = Path(LAB_BUILD_PREFIX) / key
        final = root / final_in.relative_to("/")
        try:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            _extract_source(root, dsc, work_in / "src", log, say)
            apply_patches(work / "src", files, f"qemu {pkgver} ({suite})", say)
            say("configure")
            t_conf = time.monotonic()
            rc, tail = _run(
                _chroot(
                    root,
                    "sh",
                    "-c",
                    f"mkdir -p {work_in}/src/b && cd {work_in}/src/b && "
                    f"../configure {' '.join(CONFIGURE_FLAGS)}",
                ),
                log,
                say,
                "configure",
                keep=lambda _l: True,
            )
            if rc != 0:
                raise LabError(f"configure failed; log: {log}", exc=RuntimeError(tail[-2000:]))
            t_ninja = time.monotonic()
            rc, tail = _run(
                _chroot(
                    root,
                    "nice",
                    "ninja",
                    "-C",
                    f"{work_in}/src/b",
                    f"-j{jobs}",
                    "qemu-system-x86_64",
                ),
                log,
                say,
                "ninja",
                keep=_ninja_progress,
            )
            if rc != 0:
                raise LabError(f"ninja failed; log: {log}", exc=RuntimeError(tail[-2000:]))
            t_done = time.monotonic()
            staged = work / "out"
            staged.mkdir()
            shutil.move(str(work / "src/b/qemu-system-x86_64"), staged / "qemu-system-x86_64")
            shutil.rmtree(work / "src/b")
            shutil.move(str(work / "src"), staged / "tree")
            binary_in = str(final_in / "qemu-system-x86_64")
            version = _probe(root, str(work_in / "out/qemu-system-x86_64"))
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            staged.rename(final)
            protocol, why = identify_protocol(final / "tree", upstream_version(pkgver))
            model, model_why = identify_model(final / "tree", protocol)
            say(f"protocol: {protocol or 'unknown'} ({why}); model: {model or 'none'}")
            entry: dict[str, object] = {
                "name": label,
                "key": key,
                "suite": suite,
                "source_version": pkgver,
                "patches": [p.to_json() for p in files],
                "binary": binary_in,
                "tree": str(final_in / "tree"),
                "root": str(root),
                "version_text": version,
                "configure": list(CONFIGURE_FLAGS),
                "protocol": protocol,
                "protocol_basis": why,
                "model": model,
                "model_basis": model_why,
                "seconds": {
                    "total": round(t_done - t0, 1),
                    "configure": round(t_ninja - t_conf, 1),
                    "ninja": round(t_done - t_ninja, 1),
                },
                "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
            (final / "build.json").write_text(json.dumps(entry, indent=2) + "\n")
            _register(entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        say(f"{label}: built in {t_done - t0:.0f} s (ninja {t_done - t_ninja:.0f} s)")
        return next(b for b in lab_builds() if b.release == label), True
