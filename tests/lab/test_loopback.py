"""The lab binds and connects on loopback only, in every code path (proxy, URIs, QMP)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from migcompat.lab import LabError, QemuBuild, installed_builds
from migcompat.lab.proxy import Proxy
from migcompat.lab.runner import _free_port, _Run, run_scenario_async, tcp_uri
from migcompat.lab.scenarios import parse_scenario


def _is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr.strip("[]").split("%")[0]).is_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.231.0.2", "192.168.1.1", "localhost", ""])
def test_the_proxy_refuses_a_non_loopback_host(tmp_path, host):
    with pytest.raises(LabError, match="loopback addresses only"):
        Proxy(tmp_path, host=host)
    assert not (tmp_path / "chunks.jsonl").exists()


def test_the_proxy_listens_and_connects_on_loopback(tmp_path):
    async def main():
        peers = []

        async def on_dst(r, w):
            peers.append(w.get_extra_info("peername")[0])
            w.close()

        server = await asyncio.start_server(on_dst, "127.0.0.1", 0)
        proxy = Proxy(tmp_path)
        port = await proxy.listen(server.sockets[0].getsockname()[1])
        bound = [s.getsockname()[0] for s in proxy._servers[0].sockets]
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(200):
            if peers:
                break
            await asyncio.sleep(0.01)
        w.close()
        await proxy.close()
        server.close()
        return bound, peers

    bound, peers = asyncio.run(main())
    assert bound and all(_is_loopback(a) for a in bound)
    assert peers and all(_is_loopback(a) for a in peers)


def test_every_migration_uri_of_a_run_is_on_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
    build = QemuBuild(release="10.0", version_text="QEMU emulator version 10.0.0", binary="/x")
    run = _Run(build, build, parse_scenario("plain"), "pc-q35-10.0", tmp_path / "out", 60, 5, None)
    sent = []

    async def qmp(side, cmd, args=None):
        sent.append((side, cmd, args))
        return {}

    run.qmp = qmp
    run.dst_port, run.proxy_port = _free_port(), _free_port()
    asyncio.run(run.migrate())
    uris = [args["uri"] for _s, _c, args in sent if args and "uri" in args]
    assert [c for _s, c, a in sent if a and "uri" in a] == ["migrate-incoming", "migrate"]
    assert all(re.fullmatch(r"tcp:127\.0\.0\.1:\d+", u) for u in uris), uris
    assert tcp_uri(4444) == "tcp:127.0.0.1:4444"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = {pid}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _listeners(pids: set[int]) -> list[tuple[str, int]]:
    """(local address, pid) of every listening TCP socket that one of ``pids`` holds."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 6:
            continue
        addr = cols[3].rsplit(":", 1)[0]
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                found.append((addr, pid))
    return found


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")
def test_a_running_lab_pair_listens_on_loopback_only(tmp_path, monkeypatch):
    """``ss -ltnp`` sampled through a real run: every listener of ours or our QEMUs."""
    builds = installed_builds()
    if not builds:
        pytest.skip("no QEMU provisioned: run `migcompat lab provision` (see README)")
    build = builds[-1]
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
    import os

    seen: list[tuple[str, int]] = []

    async def main():
        task = asyncio.create_task(
            run_scenario_async(build, build, "recover", outdir=tmp_path / "out", timeout=40)
        )
        while not task.done():
            seen.extend(_listeners(_descendants(os.getpid())))
            await asyncio.sleep(0.2)
        return await task

    rec = asyncio.run(main())
    qemu_pids = {p for _a, p in seen if p != os.getpid()}
    assert rec.statuses, "the run did not get as far as migrating"
    assert any(p == os.getpid() for _a, p in seen), "the proxy's listener was never seen"
    assert qemu_pids, "no listener of the destination QEMU (migrate-incoming) was seen"
    assert all(_is_loopback(a) for a, _p in seen), sorted(set(seen))
