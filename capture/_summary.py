"""The summary of a decoded capture, as one JSON-ready dict (text and ``--json`` share it)."""

from __future__ import annotations

from typing import Any

from ._correlate import Migration
from ._decode import ConnectionInfo
from ._session import CaptureReport, keepalives, percentile, rp_silences

__all__ = ["latency_stats", "summarize"]


def __dir__() -> list[str]:
    return list(__all__)


def latency_stats(values: list[float]) -> dict[str, Any]:
    """count, p50, p99, max in milliseconds (``None`` when there is nothing)."""
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50) * 1e3, 3),
        "p99_ms": round(percentile(values, 99) * 1e3, 3),
        "max_ms": round(max(values) * 1e3, 3),
    }


def _conn(info: ConnectionInfo, report: CaptureReport, period: float) -> dict[str, Any]:
    rel = lambda t: None if t is None else round(t - report.start_ts, 6)  # noqa: E731
    out: dict[str, Any] = {
        "id": info.id,
        "client": info.client,
        "server": info.server,
        "role": info.role,
        "migration": info.migration,
        "opened": rel(info.first_ts),
        "closed": rel(info.closed_ts),
        "closed_how": info.closed_how,
        "mid_stream": info.mid_stream,
        "bytes": dict(info.bytes),
        "retransmitted": info.retransmitted,
        "out_of_order": info.out_of_order,
        "overlaps": info.overlaps,
        "holes": info.holes,
    }
    if info.role.startswith("main") or info.role == "postcopy-preempt":
        out["forward"] = {
            "counts": dict(info.fwd_counts),
            "pages_walked": info.pages,
            "decoded_to": info.fwd_decoded,
            "resyncs": info.resyncs_fwd,
            "end": info.fwd_end,
        }
    if info.role.startswith("main"):
        gaps = rp_silences(info, report.end_ts)
        out["return_path"] = {
            "frames": sum(info.rp_counts.values()),
            "counts": dict(info.rp_counts),
            "verdict": info.rp_verdict,
            "error": info.rp_error,
            "resyncs": info.resyncs,
            "longest_silences": [{"start": rel(a), "seconds": round(b, 6)} for a, b in gaps[:5]],
            "keepalive": {
                "period_s": period,
                "would_send": keepalives(gaps, period),
                "longest_silence_s": round(gaps[0][1], 6) if gaps else None,
                "first_detection": _detection(gaps, period, report.start_ts),
            },
            "checks": info.checks,
        }
    return out


def _detection(gaps: list[tuple[float, float]], period: float, start: float) -> float | None:
    """When a peer expecting a frame every ``period`` would first have noticed silence."""
    late = [a for a, b in gaps if b > period]
    return round(min(late) + period - start, 6) if late else None


def _migration(m: Migration, report: CaptureReport) -> dict[str, Any]:
    unmatched = sum(len(q) for q in m.requests.values())
    in_flight = sum(1 for q in m.requests.values() for _, sent in q if sent)
    blind = None if m.fwd_blind_from is None else round(m.fwd_blind_from - report.start_ts, 6)
    page = latency_stats(m.page_latencies)
    page["requests"] = m.request_count
    page["unmatched"] = unmatched
    page["unmatched_already_sent"] = in_flight
    if m.request_count and not m.page_latencies:
        page["why_unmatched"] = (
            f"the forward stream could not be walked after t={blind}"
            if blind is not None
            else "no requested page was seen on the forward stream"
        )
    if unmatched and m.fwd_holes:
        page["note"] = (
            f"{m.fwd_holes} hole(s) in the forward stream: pages sent inside them are not seen"
        )
    states = sorted(m.states, key=lambda st: st[0])
    rel = lambda t: None if t is None else round(t - report.start_ts, 6)  # noqa: E731
    notes = list(m.wire_notes)
    lab = report.lab_statuses
    if lab:
        wire_last = states[-1][1] if states else None
        said = ", ".join(f"{'source' if k == 'src' else 'destination'} {v}" for k, v in lab.items())
        notes.append(
            f"the lab recorded {said} (QMP); the wire's last inferred state is {wire_last}"
        )
    return {
        "index": m.index,
        "machine_type": m.machine_type,
        "connections": m.connections,
        "states": [{"t": round(t - report.start_ts, 6), "state": s} for t, s in states],
        "commands": dict(m.commands),
        "ping_pong": {
            **latency_stats(m.ping_rtts),
            "unanswered": m.unanswered_pings,
            "pong_without_ping": m.orphan_pongs,
        },
        "recv_bitmap": [{"block": b, "ms": round(lat * 1e3, 3)} for b, lat in m.bitmap_pairs],
        "resume_ack": [round(x * 1e3, 3) for x in m.resume_pairs],
        "page_requests": page,
        "pages_walked": m.pages_walked,
        "forward_blind_from": blind,
        "postcopy_device": {
            "ping_t": rel(m.device_ping_ts),
            "pong_t": rel(m.device_pong_ts),
            "pong_read_by_source": m.device_pong_read if m.device_pong_ts is not None else None,
        },
        "rejected": (
            None
            if m.rejected is None
            else {"t": rel(m.rejected[0]), "offset": m.rejected[1], "error": m.rejected[2]}
        ),
        "split_brain": m.split_brain,
        "wire_notes": notes,
    }


def _bound(report: CaptureReport) -> dict[str, Any] | None:
    b = report.bound
    if b is None:
        return None
    pinned = report.pinned
    return {
        "low": str(b.low),
        "high": str(b.high),
        "text": b.text(),
        "evidence": [
            {"t": round(e.t - report.start_ts, 6), "what": e.what, "low": e.low, "high": e.high}
            for e in b.evidence
        ],
        "contradiction": b.contradiction,
        "read_as": str(pinned or b.high),
        "given": None
        if pinned is None
        else {
            "release": str(pinned),
            "basis": report.source_basis,
            "inside_bound": b.contains(pinned),
        },
        "ambiguous": report.ambiguous,
    }


def summarize(report: CaptureReport, keepalive_period: float) -> dict[str, Any]:
    """Everything the summary shows, with stable keys."""
    return {
        "path": report.path,
        "input": report.kind,
        "source": str(report.source) if report.source else None,
        "source_basis": report.source_basis,
        "metadata_source": report.metadata_source,
        "release_bound": _bound(report),
        "packets": report.packets,
        "duration_s": round(report.duration, 6),
        "connections": [_conn(c, report, keepalive_period) for c in report.connections.values()],
        "migrations": [_migration(m, report) for m in report.migrations],
        "problems": report.problems,
        "damaged": report.damaged,
        "rejected": report.rejected,
    }
