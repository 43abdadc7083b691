"""What real sources did when the return path carried a type they do not know.

``compat/data/behaviour.json`` is generated from the lab's committed runs
(``tools/extract_compat.py --behaviour-from fixtures/captures``); each observation names
the fixture it came from. Nothing here is predicted: a release with no run is reported as
"not yet observed".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from migcompat.protocol import Release

__all__ = ["Observation", "observations", "observed_rejection"]


def __dir__() -> list[str]:
    return list(__all__)


@dataclass(frozen=True, slots=True)
class Observation:
    """One lab run that injected a return-path frame into a real source."""

    fixture: str
    path: str
    type_id: int
    length: int
    source: Release
    source_version: str
    destination: Release
    machine: str
    trigger: str | None
    src_final: str | None
    dst_final: str | None
    src_error_desc: str | None
    src_stderr: tuple[str, ...]
    src_running: bool | None
    dst_running: bool | None
    split_brain: bool | None

    def summary(self) -> str:
        """One sentence of what the source (and destination) ended in."""
        version = self.source_version.split(" (")[0].removeprefix("QEMU emulator version ")
        parts = [f"source {version}"]
        if self.src_error_desc:
            parts.append(f"error-desc {self.src_error_desc!r}")
        else:
            rp = [ln.split(": ", 1)[-1] for ln in self.src_stderr if "message" in ln]
            if rp:
                parts.append(f"stderr {rp[0]!r} (error-desc empty)")
        parts.append(f"source ends {self.src_final}, destination {self.dst_final}")
        if self.split_brain:
            parts.append("guest running on both sides (split brain)")
        elif self.src_running is False:
            parts.append("guest paused on the source")
        return "; ".join(parts) + f" [fixture {self.path}]"


@cache
def _raw() -> Mapping[str, Any]:
    path = resources.files("migcompat.compat") / "data" / "behaviour.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"runs": []}


@cache
def observations() -> tuple[Observation, ...]:
    """Every injection run the lab committed."""
    out = []
    for r in _raw().get("runs", []):
        out.append(
            Observation(
                fixture=r["fixture"],
                path=r["path"],
                type_id=r["type_id"],
                length=r["length"],
                source=Release(r["src"]["release"]),
                source_version=r["src"]["version_text"],
                destination=Release(r["dst"]["release"]),
                machine=r.get("machine") or "",
                trigger=r.get("trigger"),
                src_final=r.get("src_final"),
                dst_final=r.get("dst_final"),
                src_error_desc=r.get("src_error_desc"),
                src_stderr=tuple(r.get("src_stderr", ())),
                src_running=r.get("src_running"),
                dst_running=r.get("dst_running"),
                split_brain=r.get("split_brain"),
            )
        )
    return tuple(out)


def observed_rejection(source: Release, type_id: int) -> tuple[Observation, ...]:
    """Runs where a source of ``source``'s line received an unknown ``type_id``."""
    return tuple(o for o in observations() if o.source.line == source.line and o.type_id == type_id)
