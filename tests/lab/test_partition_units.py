"""lab/partition.py pieces that need no QEMU: URIs, checks, tcpdump summary, CLI refusals."""

from __future__ import annotations

import pytest

from migcompat.cli import main
from migcompat.compat import Strategy, predict_partition
from migcompat.lab.netns import VethPair
from migcompat.lab.partition import _summarise_tcpdump, check_side, keepalive_uri_options


def test_uri_options():
    assert keepalive_uri_options(Strategy.parse("none")) == ""
    assert keepalive_uri_options(Strategy.parse("tcp:1,2,3")) == (
        ",keep-alive=on,keep-alive-idle=1,keep-alive-interval=2,keep-alive-count=3"
    )


def test_check_side_ranges():
    p = predict_partition("7.2", "7.2", "none", settings={"tcp_retries2": 7})
    assert p.source.range_s == (51.0, 76.6)
    assert check_side(p.source, 54.0, 120)["verdict"] == "agrees"
    assert check_side(p.source, 40.0, 120)["verdict"] == "disagrees"  # too early
    assert check_side(p.source, None, 120)["verdict"] == "disagrees"  # should have been seen
    assert check_side(p.source, None, 50)["verdict"] == "agrees"  # window too short
    assert check_side(p.destination, None, 120)["verdict"] == "agrees"  # never
    assert check_side(p.destination, 3.0, 120)["verdict"] == "disagrees"


def test_tcpdump_summary():
    pair = VethPair(tag="mcgunit")
    lines = [
        "99.900000 IP 10.231.0.1.5 > 10.231.0.2.4444: Flags [P.], seq 1:9, ack 1, length 8",
        "100.200000 IP 10.231.0.1.5 > 10.231.0.2.4444: Flags [.], seq 1:1449, ack 1, length 1448",
        "105.000000 IP 10.231.0.2.4444 > 10.231.0.1.5: Flags [.], ack 1, win 5, length 0",
        "111.000000 IP 10.231.0.2.4444 > 10.231.0.1.5: Flags [R.], seq 1, ack 1, length 0",
        "112.000000 IP 10.231.0.2 > 10.231.0.1: ICMP host unreachable, length 36",
    ]
    out = _summarise_tcpdump(lines, pair, cut_wall=100.0)
    assert out["src"]["data"] == 1 and out["src"]["data_times"] == [0.2]  # 99.9 is pre-cut
    assert out["dst"]["empty"] == 2 and out["dst"]["rst"] == 1
    assert out["icmp"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keepalive", "tcp:5"], "expected none, tcp:IDLE,INTVL,CNT"),
        (["--keepalive", "rp-keepalive:1000"], "no QEMU release can set it"),
        (["--window", "0"], "--window 0"),
        (["--sysctl", "tcp_retries2=x"], "--sysctl"),
    ],
)
def test_lab_run_refuses_bad_partition_input(argv: list[str], message: str, capsys):
    from migcompat.lab import installed_builds

    builds = installed_builds()
    if not builds:
        pytest.skip("lab run looks the builds up first: no QEMU provisioned")
    rel = builds[0].release
    code = main(["lab", "run", "--src", rel, "--dst", rel, "--scenario", "partition-idle", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
