"""Wire captures of QEMU migrations: pcap/pcapng (and lab recordings) in, typed timelines out.

The only I/O besides the CLI: files (or stdin) are read here, reassembled per TCP
direction and fed to the protocol core's sans-IO readers (``FastReader`` for the
return path, ``ForwardReader`` for the forward stream), in one pass.
"""

from ._correlate import Migration
from ._decode import ConnectionInfo
from ._migfile import is_migration_file
from ._packets import LINKTYPES, Packet, TcpSegment, decode_tcp
from ._plot import plot_capture
from ._readers import iter_packets, sniff_format
from ._records import (
    ConnectionClosed,
    ConnectionOpened,
    ConnectionRole,
    DeviceRecord,
    ForwardCommandRecord,
    ForwardEndRecord,
    ForwardStopRecord,
    ForwardViolation,
    HeaderRecord,
    HoleRecord,
    NoteRecord,
    PageRecord,
    PageServed,
    PostcopyDevice,
    RamBlocksRecord,
    Record,
    ReleaseBoundRecord,
    ResyncRecord,
    RpEnd,
    RpFrame,
    RpUnread,
    RpViolation,
    SectionRecord,
    SplitBrain,
)
from ._release import POSTCOPY_DEVICE_PING, POSTCOPY_DEVICE_SINCE, Evidence, ReleaseBound
from ._session import (
    CaptureOptions,
    CaptureReport,
    decode_capture,
    decode_migration_file,
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
    "POSTCOPY_DEVICE_PING",
    "POSTCOPY_DEVICE_SINCE",
    "CaptureOptions",
    "CaptureReport",
    "ConnectionClosed",
    "ConnectionInfo",
    "ConnectionOpened",
    "ConnectionRole",
    "Data",
    "DeviceRecord",
    "Evidence",
    "ForwardCommandRecord",
    "ForwardEndRecord",
    "ForwardStopRecord",
    "ForwardViolation",
    "HalfStream",
    "HeaderRecord",
    "Hole",
    "HoleRecord",
    "Migration",
    "NoteRecord",
    "Packet",
    "PageRecord",
    "PageServed",
    "PostcopyDevice",
    "RamBlocksRecord",
    "Record",
    "ReleaseBound",
    "ReleaseBoundRecord",
    "ResyncRecord",
    "RpEnd",
    "RpFrame",
    "RpUnread",
    "RpViolation",
    "SectionRecord",
    "SplitBrain",
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
