"""File migrations and ``-dump-vmstate`` JSON from a lab build (the forward stream's layouts).

* :func:`dump_vmstate` runs ``qemu-system-x86_64 -machine M -dump-vmstate FILE``: the
  VMState descriptions of every qdev device the binary has, for that machine type
  (``protocol.parse_dump_vmstate`` reads them).
* :func:`record_file_migration` starts a ``-S`` guest (so precopy converges at once) and
  migrates it to a file with QMP ``migrate "exec:cat > FILE"``: the raw forward stream,
  ending in ``QEMU_VM_EOF`` and the vmdesc JSON, as ``scripts/analyze-migration.py`` reads it.

Both write only where the caller says; the file must be under the build's run dir
(:func:`migcompat.lab.builds.run_dir`), which a provisioned root sees at the same path.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from migcompat.lab._errors import LabError
from migcompat.lab.builds import QemuBuild, build_roots_dir, cache_dir, require_build, roots_dir
from migcompat.lab.qemu import QemuInstance, newest_common_machine, query_machines

__all__ = [
    "analyze_migration",
    "analyze_migration_script",
    "cached_analyze_migration_script",
    "dump_vmstate",
    "newest_q35",
    "record_file_migration",
    "source_cache_dir",
    "source_version_used",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Guest RAM of a recorded file migration (all zero pages with ``-S``: the file stays small).
FILE_MIGRATION_RAM = "128M"


def newest_q35(build: QemuBuild | str, workdir: Path) -> str:
    """The build's newest versioned ``pc-q35-X.Y`` machine type."""
    b = require_build(build)
    machines = asyncio.run(query_machines(b, workdir))
    return newest_common_machine(machines)


def dump_vmstate(build: QemuBuild | str, out: Path, *, machine: str) -> Path:
    """``-dump-vmstate out`` of ``build`` for ``machine`` (``out`` under the run dir)."""
    b = require_build(build)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = b.argv("-machine", machine, "-nodefaults", "-display", "none", "-dump-vmstate", str(out))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"{b.label}: -dump-vmstate did not run", exc=exc) from exc
    if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        raise LabError(
            f"{b.label}: -dump-vmstate failed (exit {proc.returncode})",
            qemu_error=proc.stderr.strip() or None,
        )
    return out


async def _record(build: QemuBuild, out: Path, machine: str, timeout: float) -> None:
    workdir = out.parent
    inst = QemuInstance(
        build, "filemig", workdir,
        ["-machine", machine, "-accel", "tcg", "-m", FILE_MIGRATION_RAM,
         "-nodefaults", "-display", "none", "-net", "none", "-S"],
    )  # fmt: skip
    await inst.start()
    try:
        uri = "exec:cat > " + shlex.quote(str(out))
        await inst.execute("migrate", {"uri": uri})
        deadline = time.monotonic() + timeout
        while True:
            info = await inst.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise LabError(
                    f"{build.label}: file migration {status}: {info.get('error-desc', '')}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"{build.label}: file migration still {status} after {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await inst.stop(grace=2)


def record_file_migration(
    build: QemuBuild | str, out: Path, *, machine: str | None = None, timeout: float = 60.0
) -> str:
    """Migrate a ``-S`` guest of ``build`` to the file ``out``; returns the machine type used."""
    b = require_build(build)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = machine or newest_q35(b, out.parent)
    asyncio.run(_record(b, out, machine, timeout))
    if not out.exists() or out.stat().st_size == 0:
        raise LabError(f"{b.label}: the file migration wrote nothing to {out}")
    return machine


# -- QEMU's own decoder, from the build's Debian source package ------------------------------
def source_cache_dir() -> Path:
    """``~/.cache/migcompat/src``: source packages fetched for their scripts (never committed)."""
    return cache_dir() / "src"


def _source_version(package_version: str) -> str:
    """The source version of a binary package version (a binNMU's ``+bN`` dropped).

    >>> _source_version("1:7.2+dfsg-7+deb12u18+b3")
    '1:7.2+dfsg-7+deb12u18'
    """
    return re.sub(r"\+b\d+$", "", package_version)


def _apt_lines(suite: str, mirror: str) -> str:
    lines = [f"deb-src {mirror} {suite} main"]
    if suite not in ("sid", "unstable"):
        lines.append(f"deb-src {mirror} {suite}-updates main")
        lines.append(f"deb-src http://security.debian.org/debian-security {suite}-security main")
    return "\n".join(lines) + "\n"


def _same_line(opts: list[str], version: str, cwd: Path) -> list[str]:
    """Other source versions of qemu the index has for ``version``'s release line, newest first."""
    line = re.match(r"(?:\d+:)?(\d+\.\d+)", version)
    proc = subprocess.run(
        ["apt-cache", *opts, "showsrc", "qemu"], cwd=cwd, capture_output=True, text=True
    )
    found = re.findall(r"^Version: (\S+)$", proc.stdout, re.M)
    same = [v for v in found if line and re.match(rf"(?:\d+:)?{re.escape(line.group(1))}\.", v)]
    same = [v for v in dict.fromkeys(same) if v != version]
    run = subprocess.run(
        ["dpkg", "--compare-versions", "0", "lt", "1"], capture_output=True
    )  # dpkg is there: sort with it
    if run.returncode == 0 and len(same) > 1:
        import functools

        def cmp(a: str, b: str) -> int:
            lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
            return 1 if lt else -1

        same.sort(key=functools.cmp_to_key(cmp))
    return same


def source_version_used(script: Path) -> str | None:
    """The source version a fetched ``analyze-migration.py`` came from (maybe a newer upload)."""
    try:
        return (script.parents[2] / "source-version").read_text().strip()
    except OSError:
        return None


def cached_analyze_migration_script(build: QemuBuild | str) -> Path | None:
    """The build's ``analyze-migration.py`` if already fetched (no network), else None."""
    b = require_build(build)
    if not b.suite or not b.package_version:
        return None
    version = _source_version(b.package_version).replace(":", "_")
    ours = source_cache_dir() / b.suite / version / "tree" / "scripts" / "analyze-migration.py"
    # The tree `lab build` / `.ci/qemu-src` extract into the suite's build root
    # (lab.build.source_tree: /var/cache/migcompat-src/<version>/tree inside it).
    theirs = build_roots_dir() / b.suite / "var/cache/migcompat-src" / version / "tree"
    for script in (ours, theirs / "scripts" / "analyze-migration.py"):
        if script.exists():
            return script
    return None


# Runs QEMU's script from its tree: its classes are loaded (everything before its argument
# parsing), each top-level section's version is recorded, and every section is printed as
# JSON: section id, name, instance id, version and the script's own getDict() of it.
_ANALYZE_WRAPPER = r"""
import json, sys
script, mig = sys.argv[1], sys.argv[2]
src = open(script).read()
cut = src.index("\nparser = argparse.ArgumentParser(")
ns = {"__name__": "analyze_migration", "__file__": script}
exec(compile(src[:cut], script, "exec"), ns)

def recording(cls):
    orig = cls.__init__
    def init(self, file, version_id, *rest):
        orig(self, file, version_id, *rest)
        self.version_id = version_id
    cls.__init__ = init

recording(ns["VMSDSection"])
recording(ns["RamSection"])
dump = ns["MigrationDump"](mig)
dump.read()
out = []
for sid, sec in dump.sections.items():
    name, inst = sec.section_key
    out.append({"section_id": sid, "name": name, "instance_id": inst,
                "version": getattr(sec, "version_id", None), "state": sec.getDict()})
print(ns["JSONEncoder"]().encode(out))
"""


def analyze_migration(script: Path, mig: Path, *, timeout: float = 300) -> list[dict[str, object]]:
    """QEMU's ``analyze-migration.py`` (from its source tree) on a migration file.

    :returns: one dict per section: ``section_id``, ``name``, ``instance_id``,
        ``version`` and ``state`` (the script's ``--dump state`` value of that section).
    :raises LabError: the script failed (its stderr is in the message).
    """
    import json
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _ANALYZE_WRAPPER, str(script), str(mig)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise LabError(f"analyze-migration.py failed on {mig}: {proc.stderr.strip()[-2000:]}")
    result: list[dict[str, object]] = json.loads(proc.stdout)
    return result


def analyze_migration_script(build: QemuBuild | str, *, timeout: float = 900) -> Path:
    """``scripts/analyze-migration.py`` of the build's own Debian source package.

    Where the suite has a build root (``migcompat lab build``), its
    :func:`migcompat.lab.build.source_tree` is used; else fetched once into
    :func:`source_cache_dir` with the host's ``apt-get source
    --download-only`` under a private apt configuration (the suite's ``deb-src`` lines,
    signed by the root's own keyring: no provisioned root is touched), then unpacked with
    ``dpkg-source -x`` (Debian's patches applied). QEMU's code stays in the cache and runs
    from there.

    :raises LabError: not a provisioned build, no apt-get/dpkg-source, or the fetch failed.
    """
    b = require_build(build)
    script = cached_analyze_migration_script(b)
    if script is not None:
        return script
    if not b.suite or not b.package_version or b.root is None:
        raise LabError(f"{b.label}: not a provisioned Debian build; no source package to fetch")
    if (build_roots_dir() / b.suite).is_dir():
        # The suite has a build root already (lab build): its source_tree fetches the tree.
        from migcompat.lab.build import source_tree

        script = source_tree(b.suite) / "scripts" / "analyze-migration.py"
        if script.exists():
            return script
    for tool in ("apt-get", "dpkg-source"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found (apt-get install dpkg-dev)")
    version = _source_version(b.package_version)
    base = source_cache_dir() / b.suite / version.replace(":", "_")
    script = base / "tree" / "scripts" / "analyze-migration.py"
    if script.exists():
        return script
    base.mkdir(parents=True, exist_ok=True)
    from migcompat.lab.provision import MIRROR

    keyring = roots_dir() / b.suite / "usr/share/keyrings/debian-archive-keyring.gpg"
    apt = base / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "etc/preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "etc/sources.list").write_text(_apt_lines(b.suite, MIRROR))
    opts = [
        "-o", f"Dir::Etc::SourceList={apt / 'etc/sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::Etc::PreferencesParts={apt / 'etc/preferences.d'}",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", f"Dir::Etc::Trusted={keyring}",
        "-o", "Dir::Etc::TrustedParts=/nonexistent",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip
    log = base / "fetch.log"
    with open(base / ".lock", "w") as lock, open(log, "a") as out:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if script.exists():
            return script
        dl = base / "download"
        dl.mkdir(exist_ok=True)
        argv = ["apt-get", *opts, "update"]
        rc = subprocess.run(argv, cwd=base, stdout=out, stderr=out, timeout=timeout).returncode
        if rc != 0:
            raise LabError(f"apt-get update (deb-src {b.suite}) failed (exit {rc}); log: {log}")
        # The exact version first; a mirror may have moved on, so then the newest source
        # of the same release line (analyze-migration.py changes with releases, not uploads).
        for candidate in [version, *_same_line(opts, version, base)]:
            argv = ["apt-get", *opts, "source", "--download-only", f"qemu={candidate}"]
            rc = subprocess.run(argv, cwd=dl, stdout=out, stderr=out, timeout=timeout).returncode
            if rc == 0:
                (base / "source-version").write_text(candidate + "\n")
                break
        else:
            raise LabError(f"apt-get source qemu={version} failed (exit {rc}); log: {log}")
        dsc = next(dl.glob("qemu_*.dsc"), None)
        if dsc is None:
            raise LabError(f"apt-get source qemu={version} left no .dsc; log: {log}")
        partial = base / f"tree.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = ["dpkg-source", "--no-check", "-x", str(dsc), str(partial)]
        rc = subprocess.run(argv, stdout=out, stderr=out, timeout=timeout).returncode
        if rc != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise LabError(f"dpkg-source -x {dsc.name} failed (exit {rc}); log: {log}")
        # Only scripts/ is kept (the rest of the tree is ~400 MB QEMU does not need here).
        (base / "tree").mkdir(exist_ok=True)
        (partial / "scripts").rename(base / "tree" / "scripts")
        shutil.rmtree(partial, ignore_errors=True)
        # The tarballs are not needed once unpacked (the tree is what runs).
        shutil.rmtree(dl, ignore_errors=True)
        for stray in base.glob("qemu_*"):
            stray.unlink()
    if not script.exists():
        raise LabError(f"{script} missing from the unpacked source of qemu {version}")
    return script


def _main(argv: list[str] | None = None) -> int:
    """``python -m migcompat.lab.vmstate fetch [REL …]``: fetch each build's analyze-migration.py.

    A release whose source the mirror does not carry is a warning (its oracle test skips).
    """
    import sys

    from migcompat.lab.builds import installed_builds

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "fetch":
        print("usage: python -m migcompat.lab.vmstate fetch [RELEASE ...]", file=sys.stderr)
        return 2
    wanted = set(args[1:])
    for b in installed_builds():
        if not b.suite or (wanted and b.release not in wanted):
            continue
        t0 = time.monotonic()
        try:
            script = analyze_migration_script(b)
        except LabError as exc:
            print(f"warning: {b.label}: {exc}", file=sys.stderr)
            continue
        print(f"{b.label}: {script} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
