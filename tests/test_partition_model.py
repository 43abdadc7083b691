"""The silent-partition model (``compat/_partition.py``) and ``migcompat partition``.

Kernel numbers are checked against Linux's own formulas (``tcp_model_timeout``,
``tcp_keepalive_timer``); the release facts against what the lab measured
(docs/partition.md): 11.1 applies keep-alive on both sides, 7.2/10.0 not on the listening side.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migcompat.cli import main
from migcompat.compat import (
    Strategy,
    StrategyError,
    TcpSettings,
    keepalive_timeout_s,
    predict_partition,
    retransmission_schedule_s,
    retransmission_timeout_s,
)
from migcompat.lab import read_tcp_sysctls

DEFAULTS = TcpSettings()  # Linux defaults, independent of the host running the tests


# -- kernel arithmetic -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries", "seconds"),
    [(0, 0.2), (3, 3.0), (8, 102.2), (9, 204.6), (10, 324.6), (15, 924.6)],
)
def test_retransmission_timeout_matches_tcp_model_timeout(retries: int, seconds: float):
    # 924.6 s is the "15-20 minutes" of the maintainers' thread; 8 is RFC 1122's 100 s minimum.
    assert retransmission_timeout_s(retries) == seconds


@given(retries=st.integers(0, 40), rto_min=st.sampled_from([1, 10, 50, 200, 1000]))
def test_schedule_gives_up_at_first_tick_past_the_model_timeout(retries: int, rto_min: int):
    limit = retransmission_timeout_s(retries, rto_min)
    ticks = retransmission_schedule_s(retries, rto_min, rto_min_ms=rto_min)
    assert ticks == sorted(ticks)
    assert ticks[-1] >= limit - 1e-6
    assert len(ticks) == 1 or ticks[-2] < limit
    gaps = [b - a for a, b in zip([0.0, *ticks], ticks, strict=False)]
    assert max(gaps) <= 120.0 + 1e-6  # TCP_RTO_MAX


@given(idle=st.integers(1, 10_000), intvl=st.integers(1, 1000), cnt=st.integers(1, 50))
def test_keepalive_timeout(idle: int, intvl: int, cnt: int):
    t = keepalive_timeout_s(idle, intvl, cnt)
    assert t == idle + cnt * intvl
    assert keepalive_timeout_s(idle, intvl, cnt + 1) > t


@given(idle=st.integers(1, 100), intvl=st.integers(1, 100), ut=st.integers(1, 1_000_000))
def test_keepalive_with_user_timeout_waits_for_a_probe(idle: int, intvl: int, ut: int):
    t = keepalive_timeout_s(idle, intvl, 3, user_timeout_ms=ut)
    assert t >= idle + intvl  # at least one probe must be out
    assert t >= ut / 1000 or t == idle + intvl
    assert t < max(ut / 1000, idle) + intvl + 1e-9  # the first tick at or after it


# -- strategies --------------------------------------------------------------------------

strategies = st.builds(
    Strategy,
    tcp=st.none() | st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1),
                              st.integers(1, 2**32 - 1)),
    rp_keepalive_ms=st.none() | st.integers(1, 2**31 - 1),
    user_timeout_ms=st.none() | st.integers(1, 2**31 - 1),
)  # fmt: skip


@given(strategies)
def test_strategy_round_trip(s: Strategy):
    assert Strategy.parse(str(s)) == s


@pytest.mark.parametrize(
    "text",
    ["", "tcp", "tcp:5,2", "tcp:0,2,3", "tcp:5,2,3+tcp:1,1,1", "rp-keepalive:0",
     "rp-keepalive:2147483648", "user-timeout:-1", "none+tcp:5,2,3", "keepalive", "tcp:a,b,c"],
)  # fmt: skip
def test_bad_strategies_are_input_errors(text: str):
    with pytest.raises(StrategyError) as info:
        Strategy.parse(text)
    assert info.value.exit_code == 2


def test_settings_validate_and_read_proc(tmp_path):
    with pytest.raises(StrategyError):
        TcpSettings(retries2=-1)
    (tmp_path / "tcp_keepalive_time").write_text("60\n")
    (tmp_path / "tcp_retries2").write_text("garbage\n")
    s = TcpSettings.from_sysctls(read_tcp_sysctls(tmp_path))
    assert (s.keepalive_time, s.keepalive_intvl, s.retries2) == (60, 75, 15)


# -- predictions -------------------------------------------------------------------------


def _p(src: str, dst: str, strategy: str, **kw):
    return predict_partition(src, dst, strategy, settings=DEFAULTS, **kw)


@pytest.mark.parametrize("rel", ["7.2", "10.0", "11.1"])
def test_idle_destination_without_keepalive_never_notices(rel: str):
    p = _p(rel, rel, "none")
    assert p.destination.detect_s is None and p.destination.mechanism == "never"
    # The source still pushes pages: it notices only when TCP gives up retransmitting.
    assert p.source.detect_s == 924.6 and p.source.mechanism == "retransmission"


def test_tcp_keepalive_helps_only_an_idle_10_1_plus_destination():
    assert _p("11.1", "11.1", "tcp:5,2,3").destination.detect_s == 11.0
    assert _p("10.0", "11.1", "tcp:5,2,3").destination.detect_s == 11.0
    for rel in ("7.2", "10.0"):  # listening side: the options are not applied
        p = _p(rel, rel, "tcp:5,2,3")
        assert p.destination.detect_s is None and p.destination.keepalive is None
    # A destination with page requests in flight is governed by retransmission instead.
    assert _p("11.1", "11.1", "tcp:5,2,3", scenario="active").destination.detect_s == 924.6
    # A source with pages to send never probes; one that is done would.
    assert _p("11.1", "11.1", "tcp:5,2,3").source.detect_s == 924.6
    assert _p("11.1", "11.1", "tcp:5,2,3", source_sending=False).source.detect_s == 11.0
    # 7.2 connects with SO_KEEPALIVE but ignores the knobs: the system's 7200/75/9 apply.
    assert _p("7.2", "7.2", "tcp:5,2,3", source_sending=False).source.detect_s == 7875.0


def test_rp_keepalive_fails_only_when_tcp_gives_up():
    p = _p("11.1+keepalive", "11.1+keepalive", "rp-keepalive:1000")
    assert p.destination.mechanism == "retransmission"
    assert p.destination.detect_s == pytest.approx(1.0 + 924.6)
    q = _p("11.1", "11.1", "rp-keepalive:1000+user-timeout:10000")
    assert q.destination.detect_s == pytest.approx(11.0)
    assert q.source.detect_s == pytest.approx(10.0)


def test_user_timeout_alone_needs_something_in_flight():
    p = _p("11.1", "11.1", "user-timeout:5000")
    assert p.destination.detect_s is None
    assert p.source.detect_s == 5.0
    assert _p("11.1", "11.1", "user-timeout:5000", scenario="active").destination.detect_s == 5.0


@given(strategies, st.sampled_from(["7.2", "10.0", "11.1"]), st.sampled_from(["7.2", "10.0",
       "11.1"]), st.sampled_from(["idle", "active"]), st.booleans())  # fmt: skip
def test_every_prediction_is_consistent(s: Strategy, src: str, dst: str, scen: str, sending: bool):
    p = predict_partition(src, dst, s, scenario=scen, settings=DEFAULTS, source_sending=sending)
    for side in (p.source, p.destination):
        assert (side.detect_s is None) == (side.mechanism == "never")
        assert side.detect_s is None or side.detect_s > 0
        assert side.facts
    # Something to send is always eventually noticed; nothing to send needs keep-alive.
    writes = scen == "active" or bool(s.rp_keepalive_ms)
    assert (p.destination.detect_s is not None) == (writes or p.destination.keepalive is not None)
    json.dumps(p.to_json())


# -- CLI ---------------------------------------------------------------------------------


def test_cli_json(capsys):
    assert main(["partition", "--source", "10.0", "--destination", "11.1", "--strategy",
                 "tcp:5,2,3", "--sysctl", "tcp_retries2=8", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["destination"]["detect_s"] == 11.0
    assert out["source"]["detect_s"] == 102.2 and out["settings"]["retries2"] == 8


def test_cli_text(capsys):
    assert main(["partition", "--source", "7.2", "--destination", "7.2"]) == 0
    out = capsys.readouterr().out
    assert "destination 7.2: postcopy-paused never" in out


@pytest.mark.parametrize(
    "argv",
    [["--strategy", "tcp:5,2"], ["--sysctl", "tcp_retries2"], ["--sysctl", "nope=1"],
     ["--sysctl", "tcp_retries2=x"]],
)  # fmt: skip
def test_cli_bad_input_exits_2(argv: list[str], capsys):
    assert main(["partition", "--source", "11.1", "--destination", "11.1", *argv]) == 2
    assert "error:" in capsys.readouterr().err
