"""``migcompat capture mig.bin``: a raw migration file in, the same records as a recording."""

from __future__ import annotations

import gzip
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from migcompat.capture import (
    CaptureOptions,
    DeviceRecord,
    Record,
    decode_capture,
    decode_migration_file,
    is_migration_file,
)
from migcompat.cli import main
from migcompat.protocol import parse_release
from tests.test_vmstate import precopy

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "forward" / "postcopy-packaged-10.0"


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_migration_file_records_equal_a_recordings(tmp_path: Path) -> None:
    data = precopy()
    mig = tmp_path / "mig.bin"
    mig.write_bytes(data)
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    (rec_dir / "fwd.bin").write_bytes(data)
    (rec_dir / "chunks.jsonl").write_text(
        json.dumps({"t": 0.0, "conn": 0, "dir": "fwd", "offset": 0, "len": len(data)}) + "\n"
    )
    assert is_migration_file(str(mig)) and not is_migration_file(str(rec_dir))
    ra: list[Record] = []
    rb: list[Record] = []
    opts = {"source": parse_release("10.0"), "decode_fields": True}
    decode_migration_file(str(mig), CaptureOptions(**opts), ra.append)  # type: ignore[arg-type]
    decode_capture(str(rec_dir), CaptureOptions(**opts), rb.append)  # type: ignore[arg-type]
    a, b = [r.to_json() for r in ra], [r.to_json() for r in rb]
    drop = ("connection",)  # how the connection closes differs ("end of file")
    assert [r for r in a if r["kind"] not in drop] == [r for r in b if r["kind"] not in drop]
    dev = [r for r in ra if isinstance(r, DeviceRecord)]
    assert dev[0].name == "timer" and dev[0].values is not None
    assert dev[0].values["regs"] == [1, 2, 65535]
    assert dev[0].to_json()["fields"]["fields"]["regs"] == [1, 2, 65535]


def test_cli_json_devices_and_release_from_machine(tmp_path: Path) -> None:
    mig = tmp_path / "mig.bin"
    mig.write_bytes(precopy())
    rc, out, _ = _run(["capture", str(mig), "--json"])
    objs = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and objs[-1]["kind"] == "summary"
    assert objs[-1]["fields"]["source"] == "10.0"  # pc-q35-10.0 in the stream
    dev = [o for o in objs if o["kind"] == "device"]
    assert len(dev) == 1 and "fields" not in dev[0]["fields"]  # fields only when asked
    rc, out, _ = _run(["capture", str(mig), "--json", "--devices"])
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["kind"] for o in objs] == ["device", "summary"]
    assert objs[0]["fields"]["fields"]["segs"] == [{"sel": 7, "base": -1}, {"sel": 8, "base": 9}]
    rc, out, _ = _run(["capture", str(mig), "--devices"])
    assert rc == 0 and "section 2 timer (instance 0, version 1)" in out
    assert "    regs = [1, 2, 65535] (3)" in out and "      base = -1" in out


def test_cli_bad_dump_is_exit_2(tmp_path: Path) -> None:
    mig = tmp_path / "mig.bin"
    mig.write_bytes(precopy())
    bad = tmp_path / "d.json"
    bad.write_text("[1]")
    rc, _, err = _run(["capture", str(mig), "--dump-vmstate", str(bad)])
    assert rc == 2 and "dump-vmstate" in err and "Traceback" not in err
    rc, _, err = _run(["capture", str(mig), "--dump-vmstate", str(tmp_path / "nope.json")])
    assert rc == 2 and "nope.json" in err


def test_cli_dump_names_packaged_devices(tmp_path: Path) -> None:
    # The real 10.0 package behind a QEVM header and the stream's configuration.
    from tests.capture.builders import header

    mig = tmp_path / "mig.bin"
    mig.write_bytes(header("pc-q35-10.0") + (FIX / "fwd-packaged.bin").read_bytes())
    dump = tmp_path / "dump.json"
    dump.write_bytes(gzip.decompress((FIX / "dump-vmstate.json.gz").read_bytes()))
    rc, out, _ = _run(["capture", str(mig), "--devices", "--dump-vmstate", str(dump)])
    assert rc == 0
    lines = [x for x in out.splitlines() if x.startswith("c0 @") and " section " in x]
    assert len(lines) == 30 and all("delimited by footer" in x for x in lines)
    assert "ich9_ahci (instance 0, version 1): 4168 bytes, delimited by footer, ich9-ahci" in out
