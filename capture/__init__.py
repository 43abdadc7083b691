"""Wire captures of QEMU migrations: pcap/pcapng (and lab recordings) in, decoded timelines out.

The only I/O besides the CLI: files are read here, reassembled per TCP direction
and fed to the protocol core's sans-IO readers (``FastReader`` for the return path,
``ForwardReader`` for the forward stream).
"""

from ._migfile import decode_migration_file, is_migration_file
from ._packets import LINKTYPES, Packet, TcpSegment, decode_tcp, iter_packets, sniff_format
from ._plot import plot_capture
from ._session import (
    CaptureOptions,
    CaptureReport,
    ConnectionInfo,
    Migration,
    decode_capture,
    keepalives,
    percentile,
    rp_silences,
)
from ._summary import latency_stats, summarize
from ._tcp import MAX_OOO_BYTES, Data, HalfStream, Hole

# Everything in __all__ is the public API of migcompat.capture.
__all__ = (
    "LINKTYPES",
    "MAX_OOO_BYTES",
    "CaptureOptions",
    "CaptureReport",
    "ConnectionInfo",
    "Data",
    "HalfStream",
    "Hole",
    "Migration",
    "Packet",
    "TcpSegment",
    "decode_capture",
    "decode_migration_file",
    "decode_tcp",
    "is_migration_file",
    "iter_packets",
    "keepalives",
    "latency_stats",
    "percentile",
    "plot_capture",
    "rp_silences",
    "sniff_format",
    "summarize",
)


def __dir__() -> list[str]:
    return list(__all__)
