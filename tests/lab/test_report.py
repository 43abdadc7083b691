"""`migcompat lab report` and the committed findings (no QEMU needed here).

The live half — each committed repro.py run against the provisioned builds — is
tests/lab/test_findings_live.py.
"""

from __future__ import annotations

import ast
import json
import shutil
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

from migcompat.cli import main
from migcompat.lab import parse_scenario, repro_template
from migcompat.lab.report import (
    FINDINGS,
    MAX_BUNDLE_BYTES,
    choose_finding,
    outcome,
    qmp_text,
    render_repro,
)

ROOT = Path(__file__).resolve().parents[2]
FINDINGS_DIR = ROOT / "docs" / "findings"
BUNDLES = sorted(p.parent for p in FINDINGS_DIR.glob("*/repro.py"))
CAPTURES = ROOT / "fixtures" / "captures"

#: The four findings of issue 20; each must have a bundle.
EXPECTED = {
    "split-brain-rejected-frame": "split-brain",
    "keepalive-options-dropped": "keepalive-dropped",
    "recovery-hangs-after-bad-frame": "recovery-hangs",
    "switchover-ack-underflow": "source-fails",
}


def _params(repro: Path) -> dict:
    """The PARAMS literal of a rendered repro.py."""
    for node in ast.parse(repro.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PARAMS":
            assert node.value is not None
            return ast.literal_eval(node.value)
    raise AssertionError(f"{repro}: no PARAMS")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add((node.module or "").split(".")[0])
    return names


def test_the_four_bundles_exist() -> None:
    names = {b.name for b in BUNDLES}
    assert set(EXPECTED) <= names
    for b in BUNDLES:
        assert (b / "README.md").is_file() and (b / "evidence" / "runs.json").is_file()


@pytest.mark.parametrize(
    "path",
    [*(b / "repro.py" for b in BUNDLES), ROOT / "lab" / "repro_template.py"],
    ids=lambda p: p.parent.name,
)
def test_repro_imports_only_the_standard_library(path: Path) -> None:
    outside = {n for n in _imports(path) if n not in sys.stdlib_module_names | {"__future__"}}
    assert not outside, f"{path} imports {sorted(outside)} (must be mail-able: stdlib only)"


def test_the_import_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "repro.py"
    bad.write_text("import json\nfrom migcompat.lab import x\nimport qemu.qmp\n")
    assert _imports(bad) - sys.stdlib_module_names == {"migcompat", "qemu"}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_committed_repro_is_the_template_with_its_params(bundle: Path) -> None:
    """No hand edits, and not stale: re-rendering the template with the file's own PARAMS
    gives the file back byte for byte."""
    params = _params(bundle / "repro.py")
    assert render_repro(params) == (bundle / "repro.py").read_text()
    assert params["kind"] == EXPECTED.get(bundle.name, params["kind"])


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_states_versions_and_which_releases_show_it(bundle: Path) -> None:
    readme = (bundle / "README.md").read_text()
    runs = json.loads((bundle / "evidence" / "runs.json").read_text())["runs"]
    rec = json.loads((bundle / "evidence" / "record.json").read_text())
    assert rec["src"]["version_text"] in readme and rec["dst"]["version_text"] in readme
    assert rec["host"]["kernel"] in readme and f"`{rec['machine']}`" in readme
    assert {True, False} == {r["shows"] for r in runs}, "shows it, and does not, somewhere"
    assert runs[0]["shows"], "the run reported is one that shows it"
    for r in runs:
        assert f"| {r['src']} → {r['dst']} |" in readme
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size < MAX_BUNDLE_BYTES


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_recorded_outcome_gives_the_recorded_verdict(bundle: Path) -> None:
    rec = json.loads((bundle / "evidence" / "record.json").read_text())
    params = _params(bundle / "repro.py")
    hit, seen = repro_template.verdict(params["check"], outcome(rec))
    assert hit, seen
    assert choose_finding(rec) == params["kind"]


def _metadata(name: str) -> dict:
    return json.loads((CAPTURES / name / "metadata.json").read_text())


@pytest.mark.parametrize(
    ("capture", "kind", "shows"),
    [
        ("inject-8-10.0", "split-brain", True),
        ("inject-8-11.1", "split-brain", True),
        ("inject-8-7.2", "split-brain", False),
        ("inject-8-5.2", "split-brain", False),
        ("inject-7-7.2", "source-fails", False),
        ("recover-10.0", "recovery-hangs", False),
        ("plain-11.1", "split-brain", False),
    ],
)
def test_verdict_on_committed_lab_captures(capture: str, kind: str, shows: bool) -> None:
    """The verdicts judge real runs (fixtures/captures, recorded before this module)."""
    meta = _metadata(capture)
    check = {"kind": kind, "error_contains": "Switchover ack pending num underflowed"}
    hit, seen = repro_template.verdict(check, outcome(meta))
    assert hit is shows, seen


def test_outcome_check_is_the_recorded_statuses() -> None:
    meta = _metadata("inject-8-7.2")
    o = outcome(meta)
    check = {"kind": "outcome", "statuses": {"src": o["src"]["status"], "dst": o["dst"]["status"]}}
    assert repro_template.verdict(check, o)[0]
    other = outcome(_metadata("plain-7.2"))
    assert not repro_template.verdict(check, other)[0]


def test_recover_suffix_parses() -> None:
    sc = parse_scenario("inject:8+recover")
    assert sc.kind == "inject" and sc.then_recover and sc.frame == b"\x00\x08\x00\x00"
    assert not parse_scenario("inject:8").then_recover
    assert parse_scenario("inject:7@frames=3+recover-idle").idle
    assert sc.to_json()["then_recover"] is True


def test_qmp_text_folds_unchanged_polls() -> None:
    log = [
        {"t": 0.1, "dir": "send", "execute": "migrate"},
        {"t": 0.2, "dir": "recv", "execute": "migrate", "return": {}},
    ]
    for i in range(5):
        log += [
            {"t": 1 + i, "dir": "send", "execute": "query-migrate"},
            {
                "t": 1 + i,
                "dir": "recv",
                "execute": "query-migrate",
                "return": {"status": "active", "ram": {"transferred": i}},
            },
        ]
    log.append({"t": 9, "dir": "recv", "event": "MIGRATION", "data": {"status": "completed"}})
    text = qmp_text(log)
    assert text.count("query-migrate") == 3  # shown once (send + reply), then folded
    assert "4 more query-migrate polls" in text and "completed" in text


# -- the CLI, on a run folder rebuilt from a committed bundle's evidence -----------------


def _run_folder(bundle: Path, dest: Path) -> Path:
    rec = json.loads((bundle / "evidence" / "record.json").read_text())
    rec["qmp"] = {
        side: [json.loads(line) for line in (bundle / "evidence" / f"qmp-{side}.jsonl").open()]
        for side in ("src", "dst")
    }
    dest.mkdir()
    (dest / "record.json").write_text(json.dumps(rec))
    for fn in ("rp.bin", "rp.1.bin"):
        if (bundle / "evidence" / fn).exists():
            shutil.copyfile(bundle / "evidence" / fn, dest / fn)
    return dest


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_lab_report_cli(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("binutils (as, ld) missing: the guest kernel for repro.py cannot be built")
    run = _run_folder(bundle, tmp_path / "run")
    out = tmp_path / "bundle"
    assert main(["lab", "report", str(run), "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reproduces"] is True and summary["kind"] == EXPECTED.get(bundle.name)
    readme = (out / "README.md").read_text()
    rec = json.loads((run / "record.json").read_text())
    for text in (
        rec["src"]["version_text"],
        rec["dst"]["version_text"],
        rec["host"]["kernel"],
        "## Steps",
        "## Reproduce",
        "**Expected:**",
        "**Why it matters:**",
    ):
        assert text in readme
    ev = {p.name for p in (out / "evidence").iterdir()}
    assert {"qmp-src.jsonl", "qmp-dst.jsonl", "stderr-src.txt", "stderr-dst.txt"} <= ev
    if rec.get("proxy", {}).get("injections"):
        inj = json.loads((out / "evidence" / "injected.json").read_text())["injections"][0]
        rp = (out / "evidence" / "rp.bin").read_bytes()
        n = len(inj["hex"]) // 2
        assert rp[inj["src_offset"] : inj["src_offset"] + n].hex() == inj["hex"]
    new, old = _params(out / "repro.py"), _params(bundle / "repro.py")
    new.pop("guest_elf_zlib_b64"), old.pop("guest_elf_zlib_b64")
    assert new == old
    compile((out / "repro.py").read_text(), "repro.py", "exec")


def test_lab_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "report", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no lab run record" in err and "Traceback" not in err
    old = tmp_path / "old"
    old.mkdir()
    shutil.copyfile(CAPTURES / "inject-8-10.0" / "metadata.json", old / "record.json")
    assert main(["lab", "report", str(old), "-o", str(tmp_path / "o")]) == 2
    assert "no QMP transcript" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "nothing written on bad input"


def test_lab_report_unknown_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(BUNDLES[0], tmp_path / "run")
    assert main(["lab", "report", str(run), "-o", str(tmp_path / "o"), "--finding", "x"]) == 2
    assert "unknown finding" in capsys.readouterr().err
    assert set(FINDINGS) >= set(EXPECTED.values())


# -- repro.py's own machinery, against the real kernel's sockets ---------------------------


def test_tcp_timers_reads_the_keepalive_timer() -> None:
    """What repro.py reads from /proc/net/tcp is what Linux applied to the socket."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    plain, _ = srv.accept()
    ka, _ = srv.accept()
    try:
        ka.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        ka.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
        timers = repro_template.tcp_timers(port)
        assert len(timers) == 2
        assert sorted(t["timer"] for t in timers) == [0, 2]
        assert all(t["left_s"] <= 5 for t in timers if t["timer"] == 2)
    finally:
        for s in (*clients, plain, ka, srv):
            s.close()


def _frame(type_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HH", type_id, len(payload)) + payload


def test_relay_forwards_whole_frames_and_injects_between_them() -> None:
    """A fake destination sends frames in awkward pieces (a RECV_BITMAP with its bitmap
    blob split mid-way); the source end receives the same bytes with the injected frame at
    a frame boundary, and the forward direction byte-exact."""
    bitmap = (
        _frame(5, b"\x06pc.ram")
        + struct.pack(">Q", 16)
        + bytes(range(16))
        + struct.pack(">Q", 0x0123456789ABCDEF)
    )
    frames = [_frame(3, b"\x00" * 12 + b"\x06pc.ram"), bitmap, _frame(2, b"\x00\x00\x00\x01")]
    stream = b"".join(frames)
    dst_srv = socket.create_server(("127.0.0.1", 0))
    relay = repro_template.Relay(dst_srv.getsockname()[1])
    src = socket.create_connection(("127.0.0.1", relay.port))
    dst, _ = dst_srv.accept()
    got = bytearray()

    def read_src() -> None:
        src.settimeout(5)
        while data := src.recv(65536):
            got.extend(data)

    reader = threading.Thread(target=read_src)
    reader.start()
    src.sendall(b"QEVM forward")
    dst.settimeout(5)
    assert dst.recv(100) == b"QEVM forward"
    cut = len(frames[0]) + 9  # inside the RECV_BITMAP's blob
    dst.sendall(stream[:cut])
    time.sleep(0.2)
    inj: list[dict | None] = []
    t = threading.Thread(target=lambda: inj.append(relay.inject(_frame(8), timeout=5)))
    t.start()
    time.sleep(0.2)
    dst.sendall(stream[cut:])
    t.join()
    time.sleep(0.2)
    dst.close()
    reader.join()
    relay.close()
    src.close()
    dst_srv.close()
    assert inj and inj[0] is not None
    off = inj[0]["offset"]
    boundaries = {sum(len(f) for f in frames[:i]) for i in range(len(frames) + 1)}
    assert off in boundaries and off > len(frames[0])  # after the split frame, never inside
    assert bytes(got) == stream[:off] + _frame(8) + stream[off:]
    assert [f["type"] for f in relay.frames] == [3, 5, 2]
