"""Control values returned by readers (h11's ``Sentinel`` idea): they print their
name and ``type(x) is x``, so they can be compared by identity and shown in logs."""

from __future__ import annotations

from typing import Any

__all__ = ["NEED_DATA", "STOPPED", "Sentinel"]


def __dir__() -> list[str]:
    return list(__all__)


class Sentinel(type):
    def __new__(
        cls: type[Sentinel], name: str, bases: tuple[type, ...], namespace: dict[str, Any]
    ) -> Sentinel:
        assert bases == (Sentinel,)
        v = super().__new__(cls, name, bases, namespace)
        v.__class__ = v  # type: ignore[assignment]
        return v

    def __repr__(self) -> str:
        return self.__name__


class NEED_DATA(Sentinel, metaclass=Sentinel):
    """``next_event()`` needs more bytes before it can say anything."""


class STOPPED(Sentinel, metaclass=Sentinel):
    """The source's return-path thread has stopped reading (after SHUT, or at end of stream)."""
