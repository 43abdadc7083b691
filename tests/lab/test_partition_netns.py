"""The partition method itself: a veth pair between two namespaces, cut by nftables.

Before any QEMU number is trusted, a plain TCP pair shows that the cut is *silent* (nothing
arrives, no RST/FIN/ICMP leaves either side, the sender retransmits) and *lossless for state*
(after healing, the same connection delivers what was sent during the cut: no reset happened).
Marker ``netns``: needs root, iproute2, nftables; skips with the reason otherwise.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from migcompat.lab import LabError
from migcompat.lab.netns import NETNS_DIR, NetnsState, VethPair, netns_unavailable, parse_ss


def _need_netns() -> None:
    why = netns_unavailable()
    if why:
        pytest.skip(f"cannot make network namespaces here: {why}")


def test_parse_ss_timers():
    text = (
        "ESTAB 0      3565818 10.231.0.1:56396 10.231.0.2:4444 timer:(on,12sec,6)\n"
        "ESTAB 0      0       10.231.0.2:4444 10.231.0.1:56396 timer:(keepalive,1min59sec,0)\n"
        "ESTAB 0      0       10.231.0.2:4444 10.231.0.1:5 \n"
    )
    a, b, c = parse_ss(text)
    assert (a.timer, a.timer_left_s, a.retrans, a.send_q) == ("on", 12.0, 6, 3565818)
    assert (b.timer, b.timer_left_s) == ("keepalive", 119.0)
    assert c.timer == "" and c.timer_left_s is None


def test_state_guard_without_namespaces():
    pair = VethPair(tag="mcgguard")
    assert pair.state is NetnsState.IDLE
    with pytest.raises(LabError, match="cut\\(\\) needs state up"):
        pair.cut()


@pytest.mark.netns
def test_namespaces_removed_on_failure():
    _need_netns()
    with pytest.raises(RuntimeError), VethPair() as pair:
        names = list(pair.ns.values())
        assert all((NETNS_DIR / n).exists() for n in names)
        raise RuntimeError("boom")
    assert not any((NETNS_DIR / n).exists() for n in names)
    assert pair.state is NetnsState.CLOSED


def _tcpdump(pair: VethPair, side: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*pair.exec_prefix(side), "tcpdump", "-i", pair.dev[side], "-n", "-l", "-tt",
         "tcp or icmp"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    proc.stderr.readline()  # "listening on …": capturing from here on
    return proc


def _stop(proc: subprocess.Popen[str]) -> list[str]:
    proc.terminate()  # our own child, by its PID
    out, _ = proc.communicate(timeout=10)
    return out.splitlines()


@pytest.mark.netns
def test_cut_is_silent_and_heals():
    _need_netns()
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump not installed (Debian package tcpdump)")
    with VethPair() as pair:
        server = pair.socket("dst")
        client = pair.socket("src")
        with server, client:
            server.bind((pair.addr("dst"), 5555))
            server.listen(1)
            client.connect((pair.addr("dst"), 5555))
            conn, _ = server.accept()
            with conn:
                client.sendall(b"before")
                assert conn.recv(100) == b"before"
                dumps = {side: _tcpdump(pair, side) for side in ("src", "dst")}
                t_cut = pair.cut()
                client.sendall(b"x" * 1000)
                conn.sendall(b"y")
                conn.settimeout(2.0)
                with pytest.raises(socket.timeout):
                    conn.recv(100)  # nothing arrives
                (sock,) = [s for s in pair.sockets("src", 5555) if s.state == "ESTAB"]
                assert sock.timer == "on" and sock.retrans >= 1  # the sender retransmits
                assert sock.send_q == 1000
                dropped = {side: pair.dropped(side) for side in ("src", "dst")}
                lines = {side: _stop(p) for side, p in dumps.items()}
                pair.heal()
                # The next retransmission (RTO back-off: 3.0, 6.2 s after the cut) gets through
                # on the very same connection.
                conn.settimeout(max(1.0, 10.0 - (time.monotonic() - t_cut)))
                got = b""
                while len(got) < 1000:
                    got += conn.recv(2000)
                assert got == b"x" * 1000
    for side, out in lines.items():
        packets = [line for line in out if " IP " in line]
        assert packets, f"tcpdump on {side} saw nothing"
        assert not [p for p in packets if " ICMP " in p], out
        flags = [m.group(1) for p in packets if (m := re.search(r"Flags \[([^\]]*)\]", p))]
        assert flags and not [f for f in flags if "R" in f or "F" in f], out
    assert dropped["dst"] >= 1 and dropped["src"] >= 1
    assert not Path(NETNS_DIR / pair.ns["src"]).exists()
