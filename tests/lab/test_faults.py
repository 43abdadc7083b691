"""Faults leave nothing behind: a clear LabError, no QEMU of the run alive (by the PIDs it
started), no mount left in our mount namespace, every record complete or absent.

The QEMU faults run real QEMU (marker ``qemu``); the fault is set off from the scenario step
(``_Run.scenario_action`` replaced), when both QEMUs are migrating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migcompat.lab import LabError, LabInterrupted, Proxy, installed_builds, runner
from migcompat.lab.builds import roots_dir
from migcompat.lab.runner import write_json_atomic

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _mounts() -> list[str]:
    """Mounts of ours that a lab run could leave: on a root or under a temp dir.

    (Other mounts come and go on a shared machine: other people's network namespaces.)
    """
    roots = str(roots_dir())
    return [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
            if roots in ln or " /tmp/" in ln]  # fmt: skip


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "48k"):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _record_complete_or_absent(outdir: Path) -> None:
    rec = outdir / "record.json"
    if rec.exists():
        json.loads(rec.read_text())  # whole, or this raises
    assert not list(outdir.glob(".*.tmp")), "a temp file of an atomic write was left"


# -- no QEMU needed -------------------------------------------------------------


@needs_root
def test_an_atomic_record_on_a_full_disk_is_absent_not_half_written(tmp_path):
    with tiny_tmpfs(tmp_path / "full", "16k") as d:
        with pytest.raises(OSError):
            write_json_atomic(d / "record.json", {"x": "y" * 100_000})
        assert list(d.iterdir()) == []
        write_json_atomic(d / "small.json", {"ok": True})
        assert json.loads((d / "small.json").read_text()) == {"ok": True}


@needs_root
def test_a_full_disk_stops_recording_never_the_relay(tmp_path):
    """The relay goes on byte for byte; the incomplete streams are removed and it says why."""

    async def main(outdir: Path):
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_dst(r, w):
            data = await r.readexactly(1 << 20)
            w.close()
            got.set_result(data)

        server = await asyncio.start_server(on_dst, "127.0.0.1", 0)
        proxy = Proxy(outdir, fwd_cap=None)
        port = await proxy.listen(server.sockets[0].getsockname()[1])
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        payload = os.urandom(1 << 20)
        w.write(payload)
        await w.drain()
        data = await asyncio.wait_for(got, 20)
        w.close()
        summary = await proxy.close()
        server.close()
        return payload, data, summary

    with tiny_tmpfs(tmp_path / "full", "64k") as d:
        payload, data, summary = asyncio.run(main(d))
        left = sorted(p.name for p in d.iterdir())
    assert data == payload
    assert "No space left on device" in summary["disk_error"]
    assert left == []


# -- real QEMU --------------------------------------------------------------------

_SKIP = "no QEMU provisioned: run `migcompat lab provision` (see README)"


def _build():
    builds = installed_builds()
    if not builds:
        pytest.skip(_SKIP)
    return builds[-1]


def _run_with_fault(tmp_path, monkeypatch, fault, scenario="plain", outdir=None):
    """Run ``scenario`` with ``fault(run)`` as its action; return (error, pids, outdir)."""
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
    pids: list[int] = []

    async def action(self):
        pids.extend(p for p in (self.src.pid, self.dst.pid) if p)
        await self.wait_status("src", {"active", "postcopy-active"}, 30)
        await fault(self)
        await asyncio.sleep(30)  # the fault must end the run, not this

    monkeypatch.setattr(runner._Run, "scenario_action", action)
    mounts = _mounts()
    outdir = outdir or tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(LabError) as info:
        runner.run_scenario(_build(), _build(), scenario, outdir=outdir, timeout=30)
    assert time.monotonic() - t0 < 60
    assert pids and not [p for p in pids if _alive(p)], "a QEMU of the run is still alive"
    assert _mounts() == mounts
    assert not list((tmp_path / "run").glob("r*")), "the run's work dir was left"
    return info.value, pids, outdir


@pytest.mark.qemu
@pytest.mark.parametrize("side", ["src", "dst"])
def test_a_qemu_killed_mid_run(tmp_path, monkeypatch, side):
    async def kill(run):
        os.kill(getattr(run, side).pid, signal.SIGKILL)

    err, _pids, outdir = _run_with_fault(tmp_path, monkeypatch, kill)
    assert f"{side}: QEMU" in str(err) and "was killed by SIGKILL during the run" in str(err)
    _record_complete_or_absent(outdir)
    rec = json.loads((outdir / "record.json").read_text())
    assert any(s["step"] == "fault" for s in rec["steps"])


@pytest.mark.qemu
def test_a_qmp_socket_that_vanishes(tmp_path, monkeypatch):
    async def vanish(run):
        run.dst.qmp_path.unlink()
        run.dst._qmp._writer.transport.abort()  # the connection goes with it

    err, _pids, outdir = _run_with_fault(tmp_path, monkeypatch, vanish)
    assert "dst: the QMP connection to QEMU" in str(err) and "was lost" in str(err)
    _record_complete_or_absent(outdir)


@pytest.mark.qemu
def test_a_peer_reset_is_recorded_and_leaves_nothing(tmp_path, monkeypatch):
    """A reset of the migration connection is an outcome (recorded), not a lab error."""
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
    mounts = _mounts()
    pids: list[int] = []
    real_action = runner._Run.scenario_action

    async def action(self):
        pids.extend((self.src.pid, self.dst.pid))
        await real_action(self)

    monkeypatch.setattr(runner._Run, "scenario_action", action)
    rec = runner.run_scenario(_build(), _build(), "cut", outdir=tmp_path / "out", timeout=30)
    assert [n for n in rec.proxy["notes"] if n["what"] == "cut" and n["reset"]]
    assert not [p for p in pids if _alive(p)]
    assert _mounts() == mounts
    _record_complete_or_absent(tmp_path / "out")


@pytest.mark.qemu
@needs_root
def test_a_full_disk_for_the_records(tmp_path, monkeypatch):
    with tiny_tmpfs(tmp_path / "full", "96k") as d:
        monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
        mounts = _mounts()
        with pytest.raises(LabError) as info:
            runner.run_scenario(_build(), _build(), "plain", outdir=d, timeout=30)
        assert _mounts() == mounts
        _record_complete_or_absent(d)
        left = sorted(p.name for p in d.iterdir())
    text = str(info.value)
    assert "No space left on device" in text, text
    assert not [n for n in left if n.endswith(".bin")], left  # incomplete streams removed


_CHILD = """
import sys
from migcompat.lab import runner
try:
    runner.run_scenario(sys.argv[1], sys.argv[1], "plain", outdir=sys.argv[2], timeout=40)
except KeyboardInterrupt as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(130)
"""


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


@pytest.mark.qemu
def test_sigint_during_a_run(tmp_path):
    build = _build()
    env = dict(os.environ, MIGCOMPAT_LAB_RUN_DIR=str(tmp_path / "run"))
    mounts = _mounts()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, build.release, str(tmp_path / "out")],
                             env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        end = time.monotonic() + 60
        qemus: list[int] = []
        while time.monotonic() < end and len(qemus) < 2:
            qemus = [
                p
                for p in _children(child.pid)
                if "qemu" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            ]
            time.sleep(0.1)
        assert len(qemus) == 2, "the run never started two QEMUs"
        time.sleep(4)  # mid-migration
        child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert "LabInterrupted" in err and "interrupted (SIGINT); both QEMUs were stopped" in err
    assert not [p for p in qemus if _alive(p)]
    assert _mounts() == mounts
    _record_complete_or_absent(tmp_path / "out")
    assert not list((tmp_path / "run").glob("r*"))


def test_lab_interrupted_is_both_a_lab_error_and_a_keyboard_interrupt():
    exc = LabInterrupted("x")
    assert isinstance(exc, LabError) and isinstance(exc, KeyboardInterrupt)
    assert exc.exit_code == 130


@pytest.mark.qemu
def test_sigint_during_a_matrix_run(tmp_path):
    """^C after the first cell: it is kept and reported, the rest named, no QEMU left."""
    build = _build()
    out, report = tmp_path / "runs", tmp_path / "report.json"
    env = dict(os.environ, MIGCOMPAT_LAB_RUN_DIR=str(tmp_path / "run"))
    mounts = _mounts()
    child = subprocess.Popen(
        [sys.executable, "-m", "migcompat", "matrix", "run", "--releases", build.release,
         "--scenarios", "plain,cut,recover", "--jobs", "1", "--out", str(out),
         "--json", str(report), "--timeout", "40"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: set[int] = set()
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end and not list(out.glob("*/matrix-cell.json")):
            seen.update(_descendants(child.pid))
            time.sleep(0.2)
        assert list(out.glob("*/matrix-cell.json")), "no cell finished"
        time.sleep(5)  # the second cell is running
        seen.update(_descendants(child.pid))
        child.send_signal(signal.SIGINT)
        _o, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "did not run:" in err, err
    doc = json.loads(report.read_text())
    assert json.dumps(doc).count("pass") + json.dumps(doc).count("mismatch") >= 1
    assert len(list(out.glob("*/matrix-cell.json"))) == 1  # none for the stopped cell
    cmd = {p: _cmdline(p) for p in seen}
    end = time.monotonic() + 5  # a helper (multiprocessing's resource tracker) may exit late
    while time.monotonic() < end and [p for p in cmd if _alive(p)]:
        time.sleep(0.1)
    left = {p: c for p, c in cmd.items() if c and _alive(p) and _cmdline(p) == c}
    assert not left, f"processes of the matrix run still alive: {left}"
    assert _mounts() == mounts


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for c in _children(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
