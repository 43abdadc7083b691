"""The compat tables against real QEMU binaries (marker ``qemu``).

For each provisioned build and several machine types, start QEMU paused with a few cheap
devices the compat arrays touch, and compare what QMP can observe with the table:

* every effective compat property whose driver is in a created object's QOM type
  ancestry (devices, their virtio backends, the CPU) via ``qom-get``;
* ``query-migrate-parameters`` / ``query-migrate-capabilities`` against the extracted
  ``migration`` object defaults with the machine's ``migration`` compat entries applied;
* the versioned machine types, aliases and deprecation marks against ``-machine help``.

A build whose release has no extracted table (11.1: Debian's source 404s) is checked
only for what the newest table implies for it: machine types <= the newest extracted
release keep the values of arrays up to that release (newer arrays are applied first and
lose, "older wins").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from migcompat.compat import compat_releases, compat_table, effective_properties
from migcompat.compat._properties import versioned_array
from migcompat.lab import provision_hint
from migcompat.protocol import Release

NO_QEMU = f"no QEMU provisioned: {provision_hint()}"

pytestmark = pytest.mark.qemu

#: Cheap devices whose drivers appear in the compat arrays (virtio-pci proxies and their
#: backends, virtio-balloon, virtio-rng); -nodefaults keeps everything else out.
DEVICES = ("virtio-net-pci,id=cnet", "virtio-balloon-pci,id=cballoon", "virtio-rng-pci,id=crng")
OBJECTS = ("/machine/peripheral/cnet", "/machine/peripheral/cballoon", "/machine/peripheral/crng")
FAMILIES = ("pc-q35", "pc-i440fx")

#: Observed differences between the newest extracted table and a newer, unextracted build.
#: 11.1.3 (sid): the x86 CPU has no "x-migrate-error-code" property, so 11.1's
#: pc_compat_10_1 cannot still carry 10.2.2's (x86_64-cpu, x-migrate-error-code, false)
#: (QEMU refuses to start on a non-optional global whose property is missing).
KNOWN_DRIFT: dict[str, tuple[str, ...]] = {
    "11.1": (
        "x-migrate-error-code: qom-get failed: Property 'qemu64-x86_64-cpu.x-migrate-"
        "error-code' not found",
    ),
}


def _builds() -> list[Any]:
    try:
        from migcompat.lab import installed_builds
    except ImportError:
        return []
    try:
        return list(installed_builds())
    except Exception:  # a broken lab is reported by the lab's own tests
        return []


BUILDS = _builds()


def _table_for(build: Any) -> tuple[Any, bool]:
    """(table, exact): the build's own release table, else the newest older one."""
    rel = Release(build.release).line
    have = compat_releases()
    if rel in have:
        return compat_table(rel), True
    older = [r for r in have if r < rel]
    if not older:
        pytest.skip(f"no compat table at or below {rel}")
    return compat_table(older[-1]), False


def _machines(table: Any, exact: bool, build_release: str) -> list[str]:
    """At least five machine types per build, spread over both x86 families."""
    out: list[str] = []
    for fam in FAMILIES:
        regs = [m.name for m in table.registered(fam)]
        if not exact:
            # the newest table's types that the lifecycle rule keeps in the newer build,
            # minus the table's own newest (whose arrays a newer QEMU extends)
            qemu = Release(build_release)
            regs = [
                n
                for n in regs[:-1]
                if table.lifecycle_state(table.machines[n].version, qemu) != "deleted"
            ]
        picks = {regs[0], regs[len(regs) // 3], regs[(2 * len(regs)) // 3], regs[-1]}
        out.extend(sorted(picks, key=lambda n: Release(n.rsplit("-", 1)[1])))
    return out


def _cases() -> list[Any]:
    cases = []
    for b in BUILDS:
        try:
            table, exact = _table_for(b)
        except pytest.skip.Exception:
            continue
        for m in _machines(table, exact, _version(b)):
            cases.append(pytest.param(b, m, id=f"{b.release}-{m}"))
    return cases


def _version(build: Any) -> str:
    """``7.2.22`` from the build's ``--version`` line."""
    m = re.search(r"version (\d+\.\d+\.\d+)", build.version_text)
    return m.group(1) if m else build.release


def _norm(expected: str, observed: Any) -> tuple[Any, Any]:
    """Compare a compat string with what qom-get returned, in the observed value's type."""
    if isinstance(observed, bool):
        return expected.lower() in ("on", "true", "yes", "1"), observed
    if isinstance(observed, int):
        return int(expected, 0), observed
    return expected, observed


class Qemu:
    """One paused QEMU with a QMP socket, driven by qemu.qmp."""

    def __init__(self, build: Any, machine: str, extra: tuple[str, ...] = ()) -> None:
        self.build = build
        self.sock = Path(build.run_dir) / f"compat-{uuid.uuid4().hex[:10]}.qmp"
        self.argv = build.argv(
            "-machine",
            machine,
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
            f"unix:{self.sock},server=on,wait=off",
            *extra,
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: Any = None

    async def __aenter__(self) -> Qemu:
        from qemu.qmp import ConnectError, QMPClient

        Path(self.build.run_dir).mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(300):
            if self.sock.exists():
                break
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if not self.sock.exists():
            err = b""
            if self.proc.stderr is not None:
                with contextlib.suppress(Exception):
                    err = await asyncio.wait_for(self.proc.stderr.read(), 5)
            await self._kill()
            raise AssertionError(f"QEMU did not start: {' '.join(self.argv)}\n{err.decode()}")
        # the socket file appears at bind(), a moment before QEMU listens: retry
        for attempt in range(200):
            self.qmp = QMPClient("compat-live")
            try:
                await self.qmp.connect(str(self.sock))
                return self
            except ConnectError:
                if attempt == 199 or self.proc.returncode is not None:
                    await self._kill()
                    raise
                await asyncio.sleep(0.05)
        return self

    async def cmd(self, name: str, **args: Any) -> Any:
        return await self.qmp.execute(name, args or None)

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.qmp.execute("quit")
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                await self._kill()
        with contextlib.suppress(OSError):
            os.unlink(self.sock)


async def _ancestry(q: Qemu) -> dict[str, str | None]:
    types = await q.cmd("qom-list-types", abstract=True)
    return {t["name"]: t.get("parent") for t in types}


def _chain(parents: dict[str, str | None], name: str) -> list[str]:
    out = []
    while name and name not in out:
        out.append(name)
        name = parents.get(name) or ""
    return out


@pytest.mark.skipif(not BUILDS, reason=NO_QEMU)
@pytest.mark.parametrize(("build", "machine"), _cases())
def test_effective_properties_match_qemu(build: Any, machine: str) -> None:
    table, exact = _table_for(build)
    _info, props = effective_properties(machine, table.release)

    async def run() -> tuple[list[str], int]:
        extra: list[str] = []
        for d in DEVICES:
            extra += ["-device", d]
        mismatches: list[str] = []
        checked = 0
        async with Qemu(build, machine, tuple(extra)) as q:
            parents = await _ancestry(q)
            objects: dict[str, list[str]] = {}
            for path in OBJECTS:
                for p in (path, path + "/virtio-backend"):
                    with contextlib.suppress(Exception):
                        objects[p] = _chain(
                            parents, await q.cmd("qom-get", path=p, property="type")
                        )
            cpu = (await q.cmd("query-cpus-fast"))[0]["qom-path"]
            objects[cpu] = _chain(parents, await q.cmd("qom-get", path=cpu, property="type"))
            assert len(objects) >= 4, objects
            for prop in props:
                if not exact:
                    parsed = versioned_array(prop.array)
                    if parsed is None or parsed[1] >= table.release:
                        continue  # a newer QEMU may extend these arrays
                for path, chain in objects.items():
                    if prop.driver not in chain:
                        continue
                    try:
                        got = await q.cmd("qom-get", path=path, property=prop.property)
                    except Exception as exc:
                        if prop.optional:
                            continue
                        mismatches.append(f"{path}.{prop.property}: qom-get failed: {exc}")
                        continue
                    want, have = _norm(prop.value, got)
                    checked += 1
                    if want != have:
                        mismatches.append(
                            f"{path} ({chain[0]}).{prop.property}: table says "
                            f"{prop.value} ({prop.array} {prop.provenance}), "
                            f"QEMU has {got!r}"
                        )
            # migration: parameters and capabilities, defaults with compat applied
            params = await q.cmd("query-migrate-parameters")
            caps = {c["capability"]: c["state"] for c in await q.cmd("query-migrate-capabilities")}
            mig = {p.property: p for p in props if p.driver == "migration"}
            for name, spec in table.migration_properties.items():
                qmp = spec.get("qmp")
                if not qmp:
                    continue
                if name in mig:
                    expected: Any = mig[name].value
                elif exact and spec.get("default") is not None:
                    expected = spec["default"]
                else:
                    continue
                got = caps.get(qmp) if spec["kind"] == "capability" else params.get(qmp)
                if got is None:
                    continue  # not reported by this build (e.g. conditional on CONFIG_*)
                want, have = _norm(
                    str(expected).lower() if isinstance(expected, bool) else str(expected), got
                )
                checked += 1
                if want != have:
                    mismatches.append(
                        f"migration {qmp}: table says {expected!r} "
                        f"({spec['file']}:{spec['line']}"
                        f"{', ' + mig[name].array if name in mig else ''}), "
                        f"QEMU has {got!r}"
                    )
        return mismatches, checked

    mismatches, checked = asyncio.run(run())
    print(f"{build.release} {machine}: {checked} values compared")
    assert checked >= (5 if exact else 3), f"only {checked} values compared for {machine}"
    if not exact:
        drift = KNOWN_DRIFT.get(build.release, ())
        mismatches = [m for m in mismatches if not any(d in m for d in drift)]
    assert not mismatches, "\n".join(mismatches)


_HELP_RE = re.compile(r"^(?P<name>\S+)\s+(?P<desc>.*)$")


@pytest.mark.skipif(not BUILDS, reason=NO_QEMU)
@pytest.mark.parametrize("build", [pytest.param(b, id=b.release) for b in BUILDS])
def test_machine_list_matches_machine_help(build: Any) -> None:
    table, exact = _table_for(build)
    if not exact:
        pytest.skip(
            f"no compat table for {build.release} (its sources were not extracted); "
            f"newest is {table.qemu_version}"
        )
    out = subprocess.run(
        build.argv("-machine", "help"), capture_output=True, text=True, timeout=120, check=True
    ).stdout
    listed: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        m = _HELP_RE.match(line)
        if m:
            listed[m.group("name")] = m.group("desc")
    # every versioned x86 type QEMU lists (pc-q35-*, pc-i440fx-*, and 5.2-era pc-X.Y)
    versioned = {n for n in listed if re.fullmatch(r"pc(-q35|-i440fx)?-\d+\.\d+(\.\d+)?", n)}
    ours = {
        m.name
        for m in table.machines.values()
        if m.registered and m.version is not None and m.board in FAMILIES
    }
    assert versioned == ours, (sorted(versioned - ours), sorted(ours - versioned))
    deprecated = {n for n in versioned if "(deprecated)" in listed[n]}
    assert deprecated == {n for n in ours if table.machines[n].deprecated}
    for alias in ("q35", "pc"):
        m = re.search(r"\(alias of (\S+)\)", listed[alias])
        assert m and m.group(1) == table.aliases[alias]


@pytest.mark.skipif(not BUILDS, reason=NO_QEMU)
@pytest.mark.parametrize("build", [pytest.param(b, id=b.release) for b in BUILDS])
def test_lifecycle_prediction_for_unextracted_build(build: Any) -> None:
    """A build newer than every extracted tree: predict its list from the newest table."""
    table, exact = _table_for(build)
    if exact:
        pytest.skip(f"{build.release} has its own table (checked exactly above)")
    qemu = Release(_version(build))
    out = subprocess.run(
        build.argv("-machine", "help"), capture_output=True, text=True, timeout=120, check=True
    ).stdout
    listed = {
        m.group("name"): m.group("desc")
        for line in out.splitlines()[1:]
        if (m := _HELP_RE.match(line))
    }
    versioned = {
        n
        for n in listed
        if re.fullmatch(r"pc(-q35|-i440fx)-\d+\.\d+(\.\d+)?", n)
        and Release(n.rsplit("-", 1)[1]) <= table.release
    }
    predicted = {
        m.name: table.lifecycle_state(m.version, qemu)
        for m in table.machines.values()
        if m.version is not None and m.board in FAMILIES
    }
    kept = {n for n, st in predicted.items() if st != "deleted"}
    assert versioned == kept, (sorted(versioned - kept), sorted(kept - versioned))
    deprecated = {n for n in versioned if "(deprecated)" in listed[n]}
    assert deprecated == {n for n in kept if predicted[n] == "deprecated"}
