"""The return-path protocol core: bytes in, typed events out, per QEMU release.

Sans-IO (like h11): nothing here opens a socket or a file, sleeps or reads a
clock. Everything is derived from the catalog data in ``protocol/data/``.
"""

from ._catalog import (
    MessageSpec,
    Overlay,
    RpCatalog,
    StreamCatalog,
    catalog,
    known_releases,
    overlays,
    resolve_line,
    stream_catalog,
)
from ._cformat import c_format
from ._construct_engine import ConstructReader
from ._context import SourceContext, parse_capabilities, parse_ram_blocks
from ._errors import (
    CatalogError,
    InputError,
    InvalidRelease,
    LocalViolation,
    MigcompatError,
    ProtocolViolation,
    RemoteViolation,
)
from ._events import (
    EndOfStream,
    Event,
    Keepalive,
    Message,
    Pong,
    RawMessage,
    RecvBitmap,
    ReqPages,
    ReqPagesId,
    ResumeAck,
    Shut,
    SwitchoverAck,
)
from ._fast import FastReader
from ._forward import (
    MAX_VMDESC_BUFFER,
    DeviceState,
    ForwardCommand,
    ForwardEnd,
    ForwardReader,
    ForwardResync,
    ForwardStop,
    RamBlocks,
    RamPage,
    SectionHeader,
    StreamHeader,
    VmDescription,
    VmEof,
)
from ._grammar import build_frame, frame_grammar, parse_frame
from ._reader import (
    RamBlock,
    Reader,
    legacy_switchover_ack,
    machine_version,
    switchover_acks_expected,
)
from ._releases import Release, parse_release
from ._scenario import MOMENTS, SCENARIO_KINDS, Scenario, Step, make_frame, parse_scenario
from ._sentinels import NEED_DATA, STOPPED
from ._stream import ENGINES, StreamVerdict, check_in_context, check_stream
from ._vmstate import (
    DumpLayout,
    VmDescLayout,
    VmstateError,
    decoded_value,
    fields_dict,
    find_vmdesc,
    parse_dump_vmstate,
    parse_vmdesc,
    walk_fields,
)

# Everything in __all__ is the public API of migcompat.protocol.
__all__ = (
    "ENGINES",
    "MAX_VMDESC_BUFFER",
    "MOMENTS",
    "NEED_DATA",
    "SCENARIO_KINDS",
    "STOPPED",
    "CatalogError",
    "ConstructReader",
    "DeviceState",
    "DumpLayout",
    "EndOfStream",
    "Event",
    "FastReader",
    "ForwardCommand",
    "ForwardEnd",
    "ForwardReader",
    "ForwardResync",
    "ForwardStop",
    "InputError",
    "InvalidRelease",
    "Keepalive",
    "LocalViolation",
    "Message",
    "MessageSpec",
    "MigcompatError",
    "Overlay",
    "Pong",
    "ProtocolViolation",
    "RamBlock",
    "RamBlocks",
    "RamPage",
    "RawMessage",
    "Reader",
    "RecvBitmap",
    "Release",
    "RemoteViolation",
    "ReqPages",
    "ReqPagesId",
    "ResumeAck",
    "RpCatalog",
    "Scenario",
    "SectionHeader",
    "Shut",
    "SourceContext",
    "Step",
    "StreamCatalog",
    "StreamHeader",
    "StreamVerdict",
    "SwitchoverAck",
    "VmDescLayout",
    "VmDescription",
    "VmEof",
    "VmstateError",
    "build_frame",
    "c_format",
    "catalog",
    "check_in_context",
    "check_stream",
    "decoded_value",
    "fields_dict",
    "find_vmdesc",
    "frame_grammar",
    "known_releases",
    "legacy_switchover_ack",
    "machine_version",
    "make_frame",
    "overlays",
    "parse_capabilities",
    "parse_dump_vmstate",
    "parse_frame",
    "parse_ram_blocks",
    "parse_release",
    "parse_scenario",
    "parse_vmdesc",
    "resolve_line",
    "stream_catalog",
    "switchover_acks_expected",
    "walk_fields",
)


def __dir__() -> list[str]:
    return list(__all__)
