"""Answers a user can trust (issue 14): verdicts that name their context, clear bad-input errors.

Each bad input has its message and exit code asserted here (``main(argv)``, in process).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from migcompat.cli import main
from migcompat.protocol import build_frame

ROOT = Path(__file__).resolve().parents[1]
INJECT_10 = ROOT / "fixtures" / "captures" / "inject-8-10.0"
UNDERFLOW = "Switchover ack pending num underflowed"
MAX_TEXT = "Received invalid message 0x0008 length 0x0000"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def lone_rp(tmp_path: Path) -> Path:
    """The README's example stream without the lab record beside it (no context)."""
    p = tmp_path / "rp.bin"
    shutil.copy(INJECT_10 / "rp.bin", p)
    return p


# -- verdicts that depend on context say so ---------------------------------------------


def test_without_context_the_assumption_and_the_other_verdict_are_named(
    lone_rp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check", str(lone_rp), "--against", "11.1+keepalive", "--json"], capsys)
    assert code == 1
    row = json.loads(out)
    assert (row["verdict"], row["offset"], row["error"]) == ("rejected", 0, UNDERFLOW)
    assert "a machine type 11.1 or newer" in row["assumed"]
    assert "no switchover-ack" in row["assumed"]
    alt = {a["flags"]: a for a in row["alternatives"]}
    on = alt["--machine pc-q35-11.0 --capabilities switchover-ack"]
    assert on["verdict"] == "accepted" and on["error"] is None
    code, out, _ = run(["check", str(lone_rp), "--against", "11.1+keepalive"], capsys)
    assert code == 1
    assert "rejected, assuming a machine type 11.1 or newer" in out
    assert "accepted with a machine type older than 11.1" in out


def test_with_the_context_the_frame_at_0_is_accepted(
    lone_rp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = ["--machine", "pc-q35-10.0", "--capabilities", "switchover-ack"]
    # 11.1 takes the legacy ACK at 0, then rejects the KEEPALIVE frame as every source does
    code, out, _ = run(["check", str(lone_rp), "--against", "11.1", *ctx, "--json"], capsys)
    row = json.loads(out)
    assert code == 1
    assert (row["verdict"], row["offset"], row["error"]) == ("rejected", 155, MAX_TEXT)
    assert row["assumed"] is None and row["alternatives"] == []
    assert row["context"]["machine"] == "pc-q35-10.0"
    assert row["context"]["from"] == {"machine": "--machine", "capabilities": "--capabilities"}
    code, out, _ = run(["check", str(lone_rp), "--against", "11.1+keepalive", *ctx], capsys)
    assert code == 0
    assert "assuming" not in out


def test_a_lab_record_beside_the_file_supplies_the_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["check", str(INJECT_10 / "rp.bin"), "--against", "11.1", "--json"], capsys)
    row = json.loads(out)
    assert code == 1 and row["offset"] == 155 and row["error"] == MAX_TEXT
    assert row["context"]["machine"] == "pc-q35-10.0"
    assert "switchover-ack" in row["context"]["capabilities"]
    assert row["context"]["ram_blocks"]["pc.ram"] == 128 << 20  # from fwd.bin
    assert row["context"]["from"]["machine"].endswith("metadata.json")
    assert row["context"]["from"]["ram_blocks"].endswith("fwd.bin")
    # --no-record: back to the assumption
    code, out, _ = run(
        ["check", str(INJECT_10 / "rp.bin"), "--against", "11.1", "--json", "--no-record"], capsys
    )
    assert json.loads(out)["offset"] == 0


def test_decode_names_the_assumption_too(lone_rp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["decode", str(lone_rp), "--source", "11.1+keepalive", "--summary"], capsys)
    assert code == 1
    assert "rejected, assuming a machine type 11.1 or newer" in out
    code, out, _ = run(["decode", str(lone_rp), "--source", "11.1", "--json"], capsys)
    last = json.loads(out.splitlines()[-1])
    assert last["verdict"] == "rejected" and last["assumed"] and last["reason"]


def test_a_lone_req_pages_is_rejected_without_ram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "lone.bin"
    p.write_bytes(build_frame("10.0", "REQ_PAGES", start=0x1000, len=4096))
    code, out, _ = run(["check", str(p), "--against", "10.0", "--json"], capsys)
    row = json.loads(out)
    assert code == 1
    assert row["error"] == "MIG_RP_MSG_REQ_PAGES has no previous block"
    assert "assuming the bytes are the whole return path" in row["reason"]


def test_every_rejection_carries_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "bitmap.bin"
    p.write_bytes(bytes.fromhex("0005000706") + b"pc.ram" + struct.pack(">Q", 2**63))
    code, out, _ = run(["check", str(p), "--against", "10.0", "--json"], capsys)
    row = json.loads(out)
    assert code == 1 and row["verdict"] == "rejected"
    assert row["error"] is None  # no text QEMU's is known to be, without its RAMBlocks
    assert "exceeds this reader's limit" in row["reason"]
    code, out, _ = run(["check", str(p), "--against", "10.0"], capsys)
    assert "(no QEMU text known for this rule; why: bitmap size 9223372036854775808" in out
    code, out, _ = run(
        ["check", str(p), "--against", "10.0", "--json", "--ram-blocks", "pc.ram:128M"], capsys
    )
    row = json.loads(out)
    assert row["error"] == "ramblock 'pc.ram' bitmap size mismatch (0x8000000000000000 != 0x1000)"


# -- bad input: message and exit code --------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "message"),
    [
        ("11.1+keepalive+keepalive", "overlay 'keepalive' given twice"),
        ("11.1+keepalive+foo", "more than one overlay (keepalive, foo)"),
        ("11.1+nosuch", "unknown overlay; known: keepalive"),
    ],
)
def test_repeated_unknown_or_conflicting_overlays(
    lone_rp: Path, capsys: pytest.CaptureFixture[str], release: str, message: str
) -> None:
    for argv in (
        ["check", str(lone_rp), "--against", release],
        ["decode", str(lone_rp), "--source", release],
    ):
        code, out, err = run(argv, capsys)
        assert code == 2 and out == ""
        assert message in err


def test_keepalive_and_partition_validate_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    msg = "keep-alive-idle must be an integer 1 … 4294967295"
    code, out, err = run(
        ["keepalive", "--source", "10.0", "--destination", "11.1", "--machine", "pc-q35-10.0",
         "--idle", "0", "--interval", "0", "--count", "0"],
        capsys,
    )  # fmt: skip
    assert code == 2 and out == "" and msg in err
    code, out, err = run(
        ["partition", "--source", "10.0", "--destination", "11.1", "--strategy", "tcp:0,0,0"],
        capsys,
    )
    assert code == 2 and out == "" and msg in err
    code, _, err = run(
        ["partition", "--source", "10.0", "--destination", "11.1", "--strategy", "tcp:5,2,0"],
        capsys,
    )
    assert code == 2 and "keep-alive-count must be an integer 1" in err


def test_machine_show_unknown_driver(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["machine", "show", "pc-q35-7.2", "--release", "10.0", "--driver", "nosuch"], capsys
    )
    assert code == 2 and out == ""
    assert "no compat property of QEMU 10.0.13 names driver 'nosuch'" in err
    code, out, err = run(
        ["machine", "show", "pc-q35-10.0", "--release", "10.0", "--driver", "migration"], capsys
    )
    assert code == 0 and "no compat property of driver migration is set on pc-q35-10.0" in out


@pytest.mark.parametrize(
    ("magic", "kind"),
    [
        (b"\xd4\xc3\xb2\xa1", "pcap"),
        (b"\xa1\xb2\xc3\xd4", "pcap"),
        (b"\x4d\x3c\xb2\xa1", "pcap"),
        (b"\x0a\x0d\x0d\x0a", "pcapng"),
    ],
)
def test_a_capture_given_to_check_or_decode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], magic: bytes, kind: str
) -> None:
    p = tmp_path / "run.pcap"
    p.write_bytes(magic + bytes(60))
    for argv in (["check", str(p), "--against", "10.0"], ["decode", str(p), "--source", "10.0"]):
        code, out, err = run(argv, capsys)
        assert code == 2 and out == ""
        assert f"is a {kind} capture, not raw return-path bytes" in err
        assert f"`migcompat capture {p}`" in err


def test_a_capture_on_stdin(tmp_path: Path) -> None:
    pcap = (ROOT / "fixtures" / "captures" / "plain-10.0" / "capture.pcap").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "migcompat", "decode", "-", "--source", "10.0"],
        input=pcap, capture_output=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == b""
    assert b"the input is a pcap capture" in proc.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--capabilities", "switchover_ack", "(QEMU writes it 'switchover-ack')"),
        ("--ram-blocks", "pc.ram", "is not IDSTR:SIZE"),
        ("--ram-blocks", "pc.ram:lots", "is not a size"),
        ("--ram-blocks", "pc.ram:1M,pc.ram:2M", "'pc.ram' given twice"),
        ("--machine", "pc q35", "is not a machine type name"),
    ],
)
def test_bad_context_values(
    lone_rp: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    code, out, err = run(["check", str(lone_rp), "--against", "10.0", flag, value], capsys)
    assert code == 2 and out == "" and message in err


def test_fuzz_repeated_overlay(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["fuzz", "--source", "11.1+keepalive", "--overlay", "keepalive"], capsys)
    assert code == 2 and out == ""
    assert "already has overlay 'keepalive'" in err


def test_matrix_run_with_nothing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lab build: every cell skipped. Exit 0 by default, 1 with --require-run or CI=true."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MIGCOMPAT_QEMU", raising=False)
    monkeypatch.delenv("CI", raising=False)
    argv = ["matrix", "run", "--cell", "7.2->7.2/pc-q35-7.2/plain", "--out", str(tmp_path / "r")]
    code, _, err = run(argv, capsys)
    assert code == 0 and "1 skipped" in err
    code, _, err = run([*argv, "--require-run"], capsys)
    assert code == 1
    assert "nothing ran (1 cell(s) skipped: no QEMU build for 7.2" in err
    monkeypatch.setenv("CI", "true")
    code, _, err = run(argv, capsys)
    assert code == 1 and "failing because CI=true" in err
    code, _, err = run([*argv, "--allow-nothing-run"], capsys)
    assert code == 0


def test_lab_run_without_an_unknown_capability(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["lab", "run", "--src", "11.1", "--dst", "11.1", "--scenario", "plain",
         "--without-capability", "switchover_ack"],
        capsys,
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "--without-capability switchover_ack: the lab turns on only" in err
