"""The protocol subcommands end to end, in a subprocess-free way (``main(argv)``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from migcompat.cli import main
from migcompat.protocol import build_frame, catalog, known_releases


@pytest.fixture
def keepalive_stream(tmp_path: Path) -> Path:
    data = (
        build_frame("10.0", "PONG", value=1)
        + build_frame("10.0", "REQ_PAGES_ID", start=0x1000, len=4096, idstr="pc.ram")
        + build_frame("10.0", "REQ_PAGES", start=0x2000, len=4096)
        + bytes.fromhex("00080000")  # the keepalive proposal's frame
        + build_frame("10.0", "SHUT", sibling_error=0)
    )
    p = tmp_path / "rp.bin"
    p.write_bytes(data)
    return p


def test_decode_table_and_rejection(
    keepalive_stream: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", str(keepalive_stream), "--source", "7.2"]) == 1
    out = capsys.readouterr().out
    assert "MIG_RP_MSG_REQ_PAGES_ID" in out
    assert "RP: Received invalid message 0x0008 length 0x0000" in out
    assert "at offset 47" in out


def test_decode_json_keys(keepalive_stream: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", str(keepalive_stream), "--source", "11.1+keepalive", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == [
        "MIG_RP_MSG_PONG",
        "MIG_RP_MSG_REQ_PAGES_ID",
        "MIG_RP_MSG_REQ_PAGES",
        "MIG_RP_MSG_KEEPALIVE",
        "MIG_RP_MSG_SHUT",
    ]
    for r in rows:
        assert set(r) == {"offset", "type", "name", "length", "fields", "verdict", "error"}
        assert r["verdict"] == "accepted"
    assert rows[1]["fields"] == {"start": 4096, "len": 4096, "idstr": "pc.ram"}


def test_decode_json_rejection_row(
    keepalive_stream: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", str(keepalive_stream), "--source", "10.0", "--json"]) == 1
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["verdict"] == "rejected"
    assert last["offset"] == 47 and last["type"] == 8
    assert last["error"] == "Received invalid message 0x0008 length 0x0000"


def test_decode_summary(keepalive_stream: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", str(keepalive_stream), "--source", "11.1+keepalive", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "5 frames" in out and "MIG_RP_MSG_KEEPALIVE" in out


def test_check_exit_codes(keepalive_stream: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(keepalive_stream), "--against", "11.1+keepalive"]) == 0
    assert "accepted" in capsys.readouterr().out
    assert main(["check", str(keepalive_stream), "--against", "all", "--json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(known_releases())
    for r in rows:
        assert r["verdict"] == "rejected"
        assert r["error"] == catalog(r["source"]).format_error("invalid_type", 8, 0)


def test_check_stdin(keepalive_stream: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "migcompat", "check", "-", "--against", "7.2,10.0", "--json"],
        input=keepalive_stream.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1
    assert b"RP: Received invalid message 0x0008" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", "/nonexistent/rp.bin", "--source", "7.2"],
        ["decode", "{tmp}", "--source", "7.2"],
        ["decode", "{file}", "--source", "seven"],
        ["decode", "{file}", "--source", "12.4"],
        ["decode", "{file}", "--source", "7.2+keepalive"],
        ["check", "{file}", "--against", "7.2,banana"],
        ["catalog", "--release", "2.4"],
        ["catalog", "--diff", "7.2", "nope"],
    ],
)
def test_bad_input_exits_2_without_traceback(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x00\x02\x00\x04\x00\x00\x00\x01")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(f)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["decode"])
    assert exc.value.code == 2


def test_empty_and_garbage_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert main(["decode", str(empty), "--source", "10.0"]) == 0
    assert "accepted by 10.0: 0 frames" in capsys.readouterr().out
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"GET / HTTP/1.1\r\n\r\n")
    assert main(["decode", str(garbage), "--source", "10.0"]) == 1
    assert "Received invalid message 0x4745 length 0x5420" in capsys.readouterr().out


def test_truncated_frame_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.bin"
    p.write_bytes(build_frame("10.0", "REQ_PAGES", start=0, len=4096)[:-2])
    assert main(["decode", str(p), "--source", "10.0"]) == 0
    out = capsys.readouterr().out
    assert "stream ends inside a frame at offset 0" in out
    assert "Failed reading data for message 0x0004 read 10 expected 12" in out


def test_catalog_views(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "--release", "7.2", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["max"] == catalog("7.2").max
    assert [m["name"] for m in c["messages"]] == [m.name for m in catalog("7.2").messages]
    assert main(["catalog", "--diff", "7.2", "11.1+keepalive", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    added = {m["name"] for m in d["messages"] if m["change"] == "added"}
    assert added == {m.name for m in catalog("11.1+keepalive").messages} - {
        m.name for m in catalog("7.2").messages
    }
    assert main(["catalog", "--list"]) == 0
    assert "11.1" in capsys.readouterr().out


def test_release_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["release", "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["line"] == "7.2"


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("decode", "check", "catalog"):
        assert cmd in out


def test_catalog_forward_stream_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from migcompat.protocol import stream_catalog

    assert main(["catalog", "--commands", "--release", "10.0", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    sc = stream_catalog("10.0")
    assert c["magic"] == 0x5145564D == sc.magic
    assert [x["name"] for x in c["commands"]] == [x.name for x in sc.commands]
    assert c["max"] == len(sc.commands)


def test_shut_with_an_error_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "shut.bin"
    p.write_bytes(bytes.fromhex("0001000400000005"))
    assert main(["check", str(p), "--against", "7.2,10.0", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["error"] for r in rows] == [
        "RP: Sibling indicated error 5",
        "Sibling indicated error 5",
    ]
