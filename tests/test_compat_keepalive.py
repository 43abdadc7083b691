"""The keepalive decision and the TCP keep-alive advice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migcompat.compat import (
    PeriodRefused,
    decide_keepalive,
    observations,
    tcp_keepalive,
)
from migcompat.protocol import (
    InputError,
    InvalidRelease,
    MigcompatError,
    Release,
    catalog,
    known_releases,
)

INT_MAX = 2**31 - 1
LINES = known_releases()
FAMILIES = ("pc-q35", "pc-i440fx", "virt", "pseries", "s390-ccw-virtio")

sources = st.one_of(
    st.none(),
    st.sampled_from(LINES).map(str),
    st.sampled_from(LINES).map(lambda r: f"{r}+keepalive"),
)
machines = st.builds(lambda f, r: f"{f}-{r}", st.sampled_from(FAMILIES), st.sampled_from(LINES))
periods = st.one_of(st.none(), st.integers(0, 2**33), st.sampled_from([0, 1, INT_MAX, INT_MAX + 1]))


def _decide(*args: object, **kw: object) -> object:
    try:
        return decide_keepalive(*args, **kw)  # type: ignore[arg-type]
    except MigcompatError as exc:
        assert isinstance(exc, InputError | InvalidRelease), exc
        assert exc.exit_code == 2
        return exc


@pytest.mark.property
@settings(max_examples=400, deadline=None)
@given(sources, st.sampled_from(LINES), machines, periods, st.sampled_from([None, "keepalive"]))
def test_decision_properties(
    source: str | None, dest: Release, machine: str, period: int | None, proposal: str | None
) -> None:
    d = _decide(source, str(dest), machine, period, proposal, tcp=False)
    if isinstance(d, Exception):
        if isinstance(d, PeriodRefused):
            assert period is not None and period > INT_MAX
        return
    # never "safe" when the destination would send KEEPALIVE to a source that lacks it
    if d.sends_keepalive and d.source is not None and not catalog(d.source).knows(d.keepalive_type):
        assert d.verdict == "unsafe" and d.exit_code == 1
        assert d.source_error == catalog(d.source).format_error("invalid_type", d.keepalive_type, 0)
    if not d.sends_keepalive:
        assert d.verdict == "safe" and d.exit_code == 0
    if proposal is None:
        assert not d.sends_keepalive and d.period is None
        assert period is None
    else:
        assert period is None or period <= INT_MAX
        m = Release(machine.rsplit("-", 1)[1])
        if period is None:
            # effective default 0 for every machine type up to the last release before
            # the feature; the default for the feature release's own machine types
            if m.line < dest.line:
                assert (d.period, d.period_origin) == (0, "machine-compat")
                assert d.period_array == f"hw_compat_{_prev(dest).major}_{_prev(dest).minor}"
                assert not d.sends_keepalive
            else:
                assert (d.period, d.period_origin) == (60000, "default")
        else:
            assert (d.period, d.period_origin) == (period, "explicit")
            assert d.sends_keepalive == (period > 0)
    if d.source is None and d.sends_keepalive:
        assert d.source_bound == Release(machine.rsplit("-", 1)[1]).line
        assert d.verdict == ("safe" if d.source_bound >= dest.line else "unsafe")
    assert d.facts[-1].text == f"verdict: {d.verdict}"


def _prev(line: Release) -> Release:
    return [x for x in LINES if x < line][-1]


@pytest.mark.property
@given(st.integers(INT_MAX + 1, 2**40))
def test_period_above_int_max_refused(period: int) -> None:
    with pytest.raises(PeriodRefused) as exc:
        decide_keepalive("11.1", "11.1", "pc-q35-11.1", period, "keepalive")
    assert exc.value.exit_code == 2


def test_period_without_proposal_is_bad_input() -> None:
    with pytest.raises(InputError, match="never merged"):
        decide_keepalive("10.2", "10.2", "q35", 1000)


def test_old_machine_gets_compat_zero() -> None:
    d = decide_keepalive("7.2.22", "11.1", "pc-q35-7.2", proposal="keepalive")
    assert d.safe and d.period == 0 and d.period_array == "hw_compat_11_0"
    assert not d.sends_keepalive


def test_explicit_period_to_old_source_is_unsafe_with_observation() -> None:
    d = decide_keepalive("7.2.22", "11.1", "pc-q35-7.2", 1000, "keepalive")
    assert not d.safe and d.exit_code == 1
    assert d.source_error == "RP: Received invalid message 0x0008 length 0x0000"
    runs = {o.fixture for o in d.observed}
    if any(o.fixture == "inject-8-7.2" for o in observations()):
        assert "inject-8-7.2" in runs
        o = next(o for o in d.observed if o.fixture == "inject-8-7.2")
        assert o.src_final == "postcopy-paused" and o.src_error_desc is None
    else:
        assert d.not_observed


def test_destination_in_extracted_release_uses_its_arrays() -> None:
    d = decide_keepalive("10.2", "10.2", "pc-q35-10.1", proposal="keepalive")
    assert d.period == 0 and d.period_array == "hw_compat_10_1"
    assert any("present in the extracted tree" in f.text for f in d.facts)
    d = decide_keepalive("10.2", "10.2", "q35", proposal="keepalive")
    assert d.machine == "pc-q35-10.2" and d.period == 60000
    assert not d.safe  # a plain 10.2 source lacks type 8
    d = decide_keepalive("10.2+keepalive", "10.2", "q35", proposal="keepalive")
    assert d.safe and d.source_knows


def test_unknown_source_bounded_by_machine() -> None:
    d = decide_keepalive(None, "11.1", "q35", proposal="keepalive")
    assert d.safe and d.source_bound == Release("11.1")
    assert any("at least 11.1" in f.text for f in d.facts)
    d = decide_keepalive(None, "11.1", "pc-q35-9.2", 5000, "keepalive")
    assert not d.safe and d.source_bound == Release("9.2")


def test_machine_errors() -> None:
    with pytest.raises(InputError, match=r"oldest is 5\.0"):
        decide_keepalive("10.2", "10.2", "pc-q35-4.2", proposal="keepalive")
    with pytest.raises(InputError, match="newer than itself"):
        decide_keepalive("7.2", "11.1", "pc-q35-10.0", proposal="keepalive")


def test_tcp_keepalive_sides() -> None:
    a = tcp_keepalive("7.2", "10.0")
    assert a.source.keep_alive and not a.source.knobs
    assert a.source.uri == "tcp:DEST_HOST:4444,keep-alive=on"
    assert not a.destination.keep_alive and a.destination.uri is None
    assert any("not supported for passive sockets" in f.text for f in a.destination.facts)
    b = tcp_keepalive("11.1", "10.2", idle=5, interval=2, count=3)
    assert b.destination.knobs and b.destination.detection_bound_s == 11
    assert b.destination.uri == (
        "tcp:0.0.0.0:4444,keep-alive=on,keep-alive-idle=5,keep-alive-interval=2,keep-alive-count=3"
    )
    assert b.destination.channel is not None
    assert b.destination.channel["addr"]["keep-alive-idle"] == 5
    c = tcp_keepalive("4.1", "4.1")
    assert not c.source.keep_alive
    with pytest.raises(InputError):
        tcp_keepalive("10.2", "10.2", idle=-1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migcompat", "keepalive", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_exit_codes() -> None:
    r = _cli(
        "--source",
        "7.2",
        "--destination",
        "11.1",
        "--machine",
        "pc-q35-7.2",
        "--proposal",
        "keepalive",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"] == "safe" and out["period_ms"] == 0
    r = _cli(
        "--source",
        "10.0",
        "--destination",
        "11.1",
        "--machine",
        "pc-q35-10.0",
        "--period",
        "5000",
        "--proposal",
        "keepalive",
    )
    assert r.returncode == 1 and "UNSAFE" in r.stdout
    r = _cli(
        "--source",
        "10.0",
        "--destination",
        "11.1",
        "--machine",
        "pc-q35-10.0",
        "--period",
        str(INT_MAX + 1),
        "--proposal",
        "keepalive",
    )
    assert r.returncode == 2 and "INT_MAX" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--destination", "99.1", "--machine", "q35")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = _cli("--destination", "10.2", "--machine", "q35")
    assert r.returncode == 0


def test_unextracted_destination_uses_lifecycle_prediction() -> None:
    """11.1 has no table; the 10.2 lifecycle rule (checked on the 11.1.3 binary) decides."""
    with pytest.raises(InputError, match=r"not registered by 11\.1: predicted"):
        decide_keepalive("11.1", "11.1", "pc-q35-5.0", proposal="keepalive")
    d = decide_keepalive("11.1", "11.1", "pc-q35-8.0", proposal="keepalive")
    assert "deprecated, predicted" in d.facts[0].text


def test_backport_is_not_covered_by_its_compat_entry() -> None:
    # 10.0.13+keepalive: the proposal applied to a released 10.0 build (a backport). Its
    # compat entry sits in hw_compat_9_2, so pc-q35-10.0 keeps the default period, and an
    # unpatched 10.0 source can run pc-q35-10.0: the verdict must not call that safe.
    d = decide_keepalive(None, "10.0.13+keepalive", "pc-q35-10.0")
    assert not d.safe and d.sends_keepalive and d.period == 60000
    assert d.source_bound == Release("10.0") and d.source_knows is False
    assert any("backport" in f.text and "hw_compat_9_2" in f.text for f in d.facts)
    d = decide_keepalive("10.0.13", "10.0.13+keepalive", "pc-q35-10.0")
    assert not d.safe and any("backport" in f.text for f in d.facts)
    # older machine types are covered by the entry: period 0, safe whatever the source
    d = decide_keepalive(None, "10.0.13+keepalive", "pc-q35-9.2")
    assert d.safe and d.period == 0 and d.period_array == "hw_compat_9_2"
    # the same proposal modelled as merged in 10.0 itself (no micro) stays as before
    assert decide_keepalive(None, "10.0+keepalive", "pc-q35-10.0").safe
