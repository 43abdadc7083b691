"""The committed partition measurements (fixtures/partition/*.json) and docs/partition.md.

Every prediction for a measured release must agree with its measurement, and the table in the
docs must be exactly the one made from the committed records (no hand-edited numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migcompat.compat import predict_partition
from migcompat.lab.partition import check_side, markdown_table

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "partition"
DOC = ROOT / "docs" / "partition.md"


def _records() -> list[dict]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        rec = json.loads(path.read_text())
        rec["name"] = path.stem
        out.append(rec)
    return out


RECORDS = _records()


def test_there_are_measurements():
    assert RECORDS, "no fixtures/partition/*.json"
    releases = {r["src"]["release"] for r in RECORDS}
    assert {"7.2", "10.0", "11.1"} <= releases
    strategies = {(r["src"]["release"], r["strategy"]) for r in RECORDS}
    for rel in ("7.2", "10.0", "11.1"):
        assert {(rel, "none"), (rel, "tcp:5,2,3")} <= strategies


@pytest.mark.parametrize("rec", RECORDS, ids=[r["name"] for r in RECORDS])
def test_prediction_agrees_with_measurement(rec: dict):
    inputs = rec["prediction"]["inputs"]
    for side, key in (("src", "source"), ("dst", "destination")):
        # Recompute from today's model (not the stored prediction): a model change that
        # contradicts a committed measurement fails here.
        # a `migcompat lab build` is predicted as its own source's release (protocol_release)
        pred = predict_partition(
            rec["src"].get("protocol_release") or rec["src"]["release"],
            rec["dst"].get("protocol_release") or rec["dst"]["release"], rec["strategy"],
            scenario=inputs["model_scenario"], settings=rec["sysctls"][side],
            source_sending=inputs["wrote_after_cut"]["src"],
        )  # fmt: skip
        chk = check_side(getattr(pred, key), rec["detected"][side], rec["window"])
        assert chk["verdict"] == "agrees", (rec["name"], side, chk["why"])


def test_no_reset_or_icmp_reached_a_qemu():
    for rec in RECORDS:
        # A side that gives up sends a RST (keep-alive) — it is dropped at the peer's ingress,
        # so the peer's socket never sees it; nothing else may carry a RST, FIN or ICMP.
        assert rec["after_cut"]["icmp"] == 0, rec["name"]
        assert rec["after_cut"]["src"]["fin"] == rec["after_cut"]["dst"]["fin"] == 0
        assert rec["dropped"]["dst"] > 0  # the source's retransmissions, dropped


def test_doc_table_is_generated_from_the_records():
    text = DOC.read_text()
    start = text.index("<!-- table:start -->\n") + len("<!-- table:start -->\n")
    end = text.index("<!-- table:end -->")
    assert text[start:end] == markdown_table(RECORDS), (
        "docs/partition.md is stale: regenerate the table (see fixtures/partition/measure.sh)"
    )
