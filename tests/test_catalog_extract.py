"""The catalog is reproducible from QEMU sources and internally consistent.

* Every QEMU tree named by ``$MIGCOMPAT_QEMU_SRC`` (os.pathsep-separated trees, or
  directories holding ``qemu-*`` trees) is re-extracted and must equal its committed
  ``protocol/data/extracted/qemu-<VERSION>.json`` exactly, provenance included.
* ``build`` is rerun and must reproduce ``protocol/data/catalog.json`` exactly.
* The committed catalog is checked for contiguous ids, MAX, every release line,
  ``since`` matching presence, and error formats whose conversions match the
  arguments QEMU passes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools import extract_catalog as ec  # noqa: E402

CATALOG = json.loads(ec.CATALOG.read_text())
HISTORY = json.loads(ec.HISTORY.read_text())
RELEASE_LINES = [
    "2.5",
    "2.6",
    "2.7",
    "2.8",
    "2.9",
    "2.10",
    "2.11",
    "2.12",
    "3.0",
    "3.1",
    "4.0",
    "4.1",
    "4.2",
    "5.0",
    "5.1",
    "5.2",
    "6.0",
    "6.1",
    "6.2",
    "7.0",
    "7.1",
    "7.2",
    "8.0",
    "8.1",
    "8.2",
    "9.0",
    "9.1",
    "9.2",
    "10.0",
    "10.1",
    "10.2",
    "11.0",
    "11.1",
]


def qemu_trees() -> list[Path]:
    """QEMU source trees present on this machine (directories with a VERSION file)."""
    roots: list[Path] = []
    env = os.environ.get("MIGCOMPAT_QEMU_SRC", "")
    for part in env.split(os.pathsep):
        if part:
            p = Path(part)
            roots += [p] if (p / "VERSION").is_file() else sorted(p.glob("qemu-*"))
    seen: dict[Path, None] = {}
    for r in roots:
        if (r / "VERSION").is_file():
            seen.setdefault(r.resolve(), None)
    return list(seen)


TREES = qemu_trees()


NO_TREE = (
    "no QEMU source tree: set MIGCOMPAT_QEMU_SRC to a tree, or to a directory of qemu-X.Y.Z "
    "trees (`apt-get source qemu`, or `dpkg-source -x` of the Debian .dsc named in "
    "protocol/data/extracted/qemu-*.json)"
)


@pytest.mark.parametrize("root", TREES or [None], ids=lambda p: p.name if p else "none")
def test_reextract_matches_committed(root: Path | None) -> None:
    if root is None:
        pytest.skip(NO_TREE)
    version = (root / "VERSION").read_text().strip()
    committed_path = ec.EXTRACTED / f"qemu-{version}.json"
    if not committed_path.is_file():
        pytest.skip(f"{root}: QEMU {version} has no committed extraction")
    committed = json.loads(committed_path.read_text())
    fresh = json.loads(ec.dump(ec.extract(root, committed["label"], None)))
    if fresh["source"] is None:
        # The tree is here but not the Debian download it came from: everything
        # read from the tree must still match; the tarball digest cannot be checked.
        warnings.warn(
            f"{root}: no sibling dl-* with the .dsc/.orig; source block unchecked", stacklevel=1
        )
        fresh["source"] = committed["source"]
    assert fresh == committed


def test_build_reproduces_catalog(tmp_path: Path) -> None:
    out = tmp_path / "catalog.json"
    assert ec.main(["build", "-o", str(out)]) == 0
    assert out.read_text() == ec.CATALOG.read_text()


def test_build_reports_every_disagreement(tmp_path: Path) -> None:
    bad = json.loads(ec.HISTORY.read_text())
    bad["rp"]["messages"]["MIG_RP_MSG_SWITCHOVER_ACK"]["since"] = "10.1"
    bad["mig_cmds"]["messages"]["MIG_CMD_SWITCHOVER_START"]["since"] = "7.0"
    bad["rp"]["errors"]["invalid_type"][0]["to"] = "7.1"
    path = tmp_path / "history.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ec.HistoryError) as info:
        ec.build(ec.EXTRACTED, path)
    text = str(info.value)
    assert "MIG_RP_MSG_SWITCHOVER_ACK is in the tree" in text
    assert "MIG_CMD_SWITCHOVER_START is absent from the tree" in text
    assert "7.2.0: has invalid_type" in text


def test_every_release_line_present() -> None:
    assert list(CATALOG["releases"]) == RELEASE_LINES
    assert HISTORY["release_lines"] == RELEASE_LINES


def test_extracted_lines_are_marked_and_sourced() -> None:
    for line, src in CATALOG["sources"].items():
        assert CATALOG["releases"][line]["basis"] == "extracted"
        assert re.fullmatch(r"[0-9a-f]{64}", src["sha256"] or "")
    for line, entry in CATALOG["releases"].items():
        assert entry["basis"] == ("extracted" if line in CATALOG["sources"] else "history")
        assert entry["provenance"]


@pytest.mark.parametrize("line", RELEASE_LINES)
@pytest.mark.parametrize("table", ["rp", "mig_cmds"])
def test_ids_contiguous_and_max(line: str, table: str) -> None:
    t = CATALOG["releases"][line][table]
    ids = [m["id"] for m in t["messages"]]
    assert ids == list(range(len(ids)))
    assert t["max"] == ids[-1] + 1
    assert t["messages"][0]["name"].endswith("_INVALID")
    assert not any(m["name"].endswith("_MAX") for m in t["messages"])


@pytest.mark.parametrize("table", ["rp", "mig_cmds"])
def test_since_monotone_with_presence(table: str) -> None:
    """An id first appears in its ``since`` line and stays, with the same since."""
    first_seen: dict[int, str] = {}
    for line in RELEASE_LINES:
        msgs = {m["id"]: m for m in CATALOG["releases"][line][table]["messages"]}
        for seen in first_seen:
            assert seen in msgs, f"{table} id {seen} disappears in {line}"
        for mid, m in msgs.items():
            first_seen.setdefault(mid, line)
            assert m["since"] == first_seen[mid], f"{line}: {m['name']}"


def _kinds(fmt: str) -> list[str]:
    """Argument kinds a printf format consumes (what the parser model must supply)."""
    kinds = []
    for conv in ec.conversions(fmt):
        length = re.search(r"(hh|h|ll|l|z|j|t|L)?[diouxXsc]$", conv)
        assert length is not None
        mod, c = length.group(1), conv[-1]
        if c == "s":
            kinds.append("str")
        elif mod == "z":
            kinds.append("size")
        elif mod in ("l", "ll"):
            kinds.append("u64")
        else:
            kinds.append("int" if c in "di" else "u32")
    return kinds


#: What QEMU passes to each error (per error_call style where it changed).
EXPECTED_KINDS: dict[str, Any] = {
    "invalid_type": ["u32", "u32"],
    "bad_length": ["str", "u32", "int", "size"],
    "short_read": ["u32", "int", "int"],
    "shut_error": ["int"],
    "req_pages_id_length": ["int", "size"],
    "recv_bitmap_no_name": [],
    "recv_bitmap_bad_block": ["str"],
    "recv_bitmap_state": ["str"],
    "recv_bitmap_size_mismatch": ["str", "u64", "u64"],
    "recv_bitmap_read_failed": {
        "error_report": ["str", "int", "u64", "u64"],
        "error_setg": ["str", "u64", "u64"],
    },
    "recv_bitmap_end_mark": ["str", "u64"],
    "resume_ack_value": ["u32"],
    "req_pages_misaligned": ["u64", "size"],
    "req_pages_no_previous_block": [],
    "req_pages_no_block": ["str"],
    "req_pages_overrun": ["u64", "u64", "u64"],
    "switchover_ack_underflow": [],
}


@pytest.mark.parametrize("line", RELEASE_LINES)
def test_error_formats_take_the_parser_arguments(line: str) -> None:
    rp = CATALOG["releases"][line]["rp"]
    names = {m["name"] for m in rp["messages"]}
    assert {"invalid_type", "bad_length", "short_read", "shut_error"} <= set(rp["errors"])
    assert ("recv_bitmap_no_name" in rp["errors"]) == ("MIG_RP_MSG_RECV_BITMAP" in names)
    assert ("resume_ack_value" in rp["errors"]) == ("MIG_RP_MSG_RESUME_ACK" in names)
    for key, fmt in rp["errors"].items():
        want = EXPECTED_KINDS[key]
        if isinstance(want, dict):
            want = want[rp["error_call"]]
        assert _kinds(fmt) == want, f"{line} {key}: {fmt!r}"
        # error_report lines up to 8.1 carry QEMU's "RP: " prefix on the thread's own texts.
        if key in ("invalid_type", "bad_length", "short_read", "shut_error"):
            assert fmt.startswith("RP: ") == (rp["error_call"] == "error_report")
    assert "withincorrect" in rp["errors"]["bad_length"]


def test_overlay_keepalive_continues_newest_release() -> None:
    ka = CATALOG["overlays"]["keepalive"]
    newest = CATALOG["releases"][RELEASE_LINES[-1]]["rp"]
    assert ka["base_rp_max"] == newest["max"]
    assert [m["id"] for m in ka["rp_add"]] == [newest["max"]]
    assert ka["rp_add"][0]["length"] == 0
    assert ka["parameter"]["name"] == "postcopy-rp-keepalive-period"
    assert ka["message_id"] == "<20250130161139.548078-1-jmarcin@redhat.com>"


def test_format_resolution_normalises_macros() -> None:
    """String literal concatenation, PRI* macros and __func__ as documented."""
    text = (
        '#define RAM_ADDR_FMT "%" PRIx64\n'
        "static void handler(void)\n{\n"
        '    error_report("%s: start " RAM_ADDR_FMT " with"\n'
        '                 "out %" PRIu32, __func__, a, b);\n}\n'
    )
    src = ec.Source("x.c", text, ec.strip_comments(text))

    class FakeTree:
        def source(self, rel: str) -> ec.Source | None:
            return src if rel == "x.c" else None

        def all_sources(self) -> Iterator[ec.Source]:
            yield src

    resolver = ec.FormatResolver(FakeTree())  # type: ignore[arg-type]
    fn = ec.find_function(FakeTree(), "handler", ["x.c"])  # type: ignore[arg-type]
    assert fn is not None
    [(call, fmt, where)] = ec.error_calls(resolver, fn)
    assert (call, fmt, where) == ("error_report", "handler: start %lx without %u", "x.c:4")
