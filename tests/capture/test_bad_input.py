"""Bad input to ``migcompat capture``: documented exit codes, problems on stderr (issue 14)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from migcompat.__main__ import main

from .builders import packets, write_pcap
from .test_capture import REL, migration


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["capture", *argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return Path(write_pcap(str(tmp_path / "plain.pcap"), packets(migration())))


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    rc, out, err = run([str(p)])
    assert rc == 2 and out == "" and "not a pcap or pcapng file (starts with nothing)" in err


def test_header_only_pcap(tmp_path: Path) -> None:
    p = write_pcap(str(tmp_path / "h.pcap"), [])
    rc, out, err = run([p, "--summary"])
    assert rc == 2 and "problem: the capture holds no packets" in err
    assert "problem:" not in out  # problems go to stderr


def test_pcap_header_cut(tmp_path: Path, plain: Path) -> None:
    p = tmp_path / "cut.pcap"
    p.write_bytes(plain.read_bytes()[:20])
    rc, out, err = run([str(p)])
    assert rc == 2 and out == "" and "cannot read the pcap header: 20 of 24 bytes" in err


@pytest.mark.parametrize("keep", [100, 0.7])
def test_truncated_pcap(tmp_path: Path, plain: Path, keep: float) -> None:
    data = plain.read_bytes()
    n = int(keep) if keep >= 1 else int(len(data) * keep)
    p = tmp_path / "t.pcap"
    p.write_bytes(data[:n])
    rc, out, err = run([str(p), "--summary", "--source", REL])
    assert rc == 2
    assert "problem: record " in err and "cut short" in err
    assert out.startswith(f"capture {p} (pcap)")  # what could be read is decoded


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--connection", "c9"], "no connection matches --connection c9 (the capture's "
                                 "connections: c0)"),
        (["--port", "1"], "no connection matches --port 1 (the capture's connections: c0)"),
    ],
)  # fmt: skip
def test_filter_matching_nothing(plain: Path, flag: list[str], message: str) -> None:
    rc, out, err = run([str(plain), *flag])
    assert rc == 2 and message in err
    assert "summary" not in out and "migration #" not in out


def test_check_against_unknown_release_before_any_output(plain: Path) -> None:
    rc, out, err = run([str(plain), "--check-against", "99.9"])
    assert rc == 2 and out == "" and "99.9" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_stdin(tmp_path: Path, fmt: str) -> None:
    path = write_pcap(str(tmp_path / f"m.{fmt}"), packets(migration()), 1, fmt)
    data = Path(path).read_bytes()
    got = subprocess.run(
        [sys.executable, "-m", "migcompat", "capture", "-", "--json", "--source", REL],
        input=data, capture_output=True, check=False,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    want = subprocess.run(
        [sys.executable, "-m", "migcompat", "capture", path, "--json", "--source", REL],
        capture_output=True, check=False,
    )  # fmt: skip
    a = [json.loads(x) for x in got.stdout.splitlines()]
    b = [json.loads(x) for x in want.stdout.splitlines()]
    assert a[:-1] == b[:-1] and len(a) > 20
    assert a[-1]["fields"]["input"] == "stdin"
    assert a[-1]["fields"]["connections"] == b[-1]["fields"]["connections"]


def test_stdin_not_a_capture() -> None:
    got = subprocess.run(
        [sys.executable, "-m", "migcompat", "capture", "-"],
        input=b"hello", capture_output=True, check=False,
    )  # fmt: skip
    assert got.returncode == 2 and b"stdin: not a pcap or pcapng stream" in got.stderr
    assert b"Traceback" not in got.stderr
