"""``--plot``: return-path frames over time by type, silences, page-request latencies.

matplotlib is optional (``pip install qemu-migcompat[plot]``); without it the
plot fails with a clear :class:`~migcompat.protocol.InputError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from migcompat.protocol import InputError

from ._session import CaptureReport, rp_silences

__all__ = ["plot_capture"]


def __dir__() -> list[str]:
    return list(__all__)


def plot_capture(
    report: CaptureReport,
    frames: Sequence[tuple[float, str, str]],
    path: str,
    keepalive_period: float,
) -> None:
    """Write a PNG: frames (relative time, connection, name), silences, latency histogram.

    :raises InputError: matplotlib is missing or the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "--plot needs matplotlib: pip install 'qemu-migcompat[plot]' (or matplotlib)"
        ) from None
    names = sorted({n.removeprefix("MIG_RP_MSG_") for _, _, n in frames})
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 2]})
    for i, name in enumerate(names):
        ts = [t for t, _, n in frames if n.removeprefix("MIG_RP_MSG_") == name]
        ax1.scatter(ts, [i] * len(ts), s=10, marker="|", label=f"{name} ({len(ts)})")
    ax1.set_yticks(range(len(names)), names)
    ax1.set_xlabel("seconds since the capture's first packet")
    ax1.set_title(f"return path by type — {report.path}")
    shaded = False
    for info in report.connections.values():
        if not info.role.startswith("main"):
            continue
        for start, length in rp_silences(info, report.end_ts):
            if length >= min(keepalive_period, max(report.duration / 20, 0.5)):
                ax1.axvspan(
                    start - report.start_ts,
                    start - report.start_ts + length,
                    color="red",
                    alpha=0.12,
                    label=None if shaded else "return path silent",
                )
                shaded = True
    if names or shaded:
        ax1.legend(loc="upper left", fontsize="small", ncol=2)
    lat = [x * 1e3 for m in report.migrations for x in m.page_latencies]
    if lat:
        ax2.hist(lat, bins=min(50, max(5, len(lat) // 4)))
        ax2.set_xlabel("page-request latency (ms): REQ_PAGES → page on the forward stream")
        ax2.set_ylabel("requests")
    else:
        asked = sum(m.request_count for m in report.migrations)
        ax2.text(
            0.5,
            0.5,
            f"no page request matched ({asked} requests)",
            ha="center",
            va="center",
            transform=ax2.transAxes,
        )
        ax2.set_axis_off()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
