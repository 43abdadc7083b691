"""One QEMU process driven through ``qemu.qmp``, in qemu.qmp's manner: a :class:`LabState`
enum, state guards, failures rolled back with the cause wrapped, QEMU's error text verbatim.

The instance owns exactly one process, started from :meth:`QemuBuild.argv`, whose PID is QEMU's
own; it is the only thing we ever signal. Everything QEMU says is kept verbatim and timestamped
on the run's clock: stderr lines, QMP events, ``query-migrate`` statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from migcompat.compat import MachineType
from migcompat.lab._errors import LabError
from migcompat.lab.builds import QemuBuild, check_socket_path
from migcompat.protocol import InputError, Release

__all__ = ["LabState", "QemuInstance", "StateError", "newest_common_machine", "query_machines"]


def __dir__() -> list[str]:
    return list(__all__)


_log = logging.getLogger("migcompat.lab.qemu")

P = ParamSpec("P")
T = TypeVar("T")


class LabState(enum.Enum):
    """Life of a :class:`QemuInstance`."""

    #: Created; no process yet.
    IDLE = "idle"
    #: Process spawned; waiting for its QMP socket.
    STARTING = "starting"
    #: QMP connected: commands can be sent.
    RUNNING = "running"
    #: ``quit`` sent or kill pending.
    STOPPING = "stopping"
    #: Process gone (exit status in :attr:`QemuInstance.returncode`).
    STOPPED = "stopped"


class StateError(LabError):
    """A method was called in the wrong :class:`LabState`."""

    def __init__(self, message: str, state: LabState, required: LabState) -> None:
        super().__init__(message)
        self.args = (message, state, required)
        self.state = state
        self.required = required


def require(
    required: LabState,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Guard a coroutine method: :class:`StateError` unless the instance is in ``required``."""

    def deco(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            self = args[0]
            state = self.state  # type: ignore[attr-defined]
            if state is not required:
                raise StateError(
                    f"{fn.__name__}() needs state {required.value}, instance is {state.value}",
                    state,
                    required,
                )
            return await fn(*args, **kwargs)

        return wrapper

    return deco


@dataclass
class QemuInstance:
    """A QEMU process plus its QMP connection.

    :param build: which QEMU.
    :param name: ``src`` / ``dst`` — names the socket, the serial log and the logger.
    :param workdir: per-run folder inside the build's run dir.
    :param args: QEMU arguments besides the QMP socket (the runner composes them).
    :param clock: time origin of the run (``time.monotonic()`` at its start).
    """

    build: QemuBuild
    name: str
    workdir: Path
    args: list[str]
    clock: float = field(default_factory=time.monotonic)
    state: LabState = LabState.IDLE
    stderr_lines: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: The QMP exchange in order: greeting, every command we sent and QEMU's reply (or error),
    #: every event, each stamped ``t`` on the run's clock (``dir``: ``recv``/``send``).
    qmp_log: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    killed: bool = False

    def __post_init__(self) -> None:
        self.log = _log.getChild(self.name)
        self.qmp_path = self.workdir / f"{self.name}.qmp"
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QMPClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.qemu_args: list[str] = []
        self.argv: list[str] = []

    # ------------------------------------------------------------------
    # Section: Public interface

    def now(self) -> float:
        """Seconds since the run's clock origin (the unit of every timestamp we record)."""
        return round(time.monotonic() - self.clock, 4)

    def fault(self) -> str | None:
        """What went wrong with a RUNNING instance behind our back, or ``None``.

        Killed by a signal we did not send, or its QMP connection gone. (An exit with a status
        is QEMU's own outcome, e.g. a destination whose incoming migration failed.)
        """
        if self.state is not LabState.RUNNING or self._proc is None:
            return None
        rc = self._proc.returncode
        # killed from outside (SIGABRT or SIGSEGV would be QEMU's own crash: an outcome)
        if rc is not None and -rc in _EXTERNAL_KILLS and not self.killed:
            sig = signal.Signals(-rc).name
            pid = self._proc.pid
            return f"{self.name}: QEMU {self.build.label} (pid {pid}) was killed by {sig}"
        qmp = self._qmp
        if rc is None and qmp is not None and qmp.runstate.name not in ("RUNNING", "CONNECTING"):
            return (f"{self.name}: the QMP connection to QEMU {self.build.label} "
                    f"(pid {self._proc.pid}, {self.qmp_path}) was lost")  # fmt: skip
        return None

    async def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to end; its return code, or ``None``."""
        if self._proc is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._proc.wait()
        return self._proc.returncode

    @property
    def pid(self) -> int | None:
        """QEMU's PID (the only process this instance ever signals)."""
        return self._proc.pid if self._proc else None

    @require(LabState.IDLE)
    async def start(self, timeout: float = 30.0) -> None:
        """Spawn QEMU and connect QMP; on failure kill what was started and raise.

        :raises LabError: QEMU exited or QMP did not come up; carries QEMU's stderr verbatim.
        """
        self.state = LabState.STARTING
        check_socket_path(self.qmp_path)
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()
        #: QEMU's own arguments (what a bug report quotes) and the full command run.
        self.qemu_args = [*self.args, "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        argv = self.build.argv(*self.qemu_args)
        self.argv = argv
        self.log.debug("argv: %s", argv)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                umask=0o077,  # QMP socket and serial files 0600, whoever can reach the dir
            )
            self._tasks.append(asyncio.create_task(self._read_lines(self._proc.stderr, "stderr")))
            self._tasks.append(asyncio.create_task(self._read_lines(self._proc.stdout, "stdout")))
            async with asyncio.timeout(timeout):
                await self._connect()
        except (OSError, QMPError, TimeoutError, LabError) as exc:
            await self._rollback()
            text = self.stderr_text()
            raise LabError(
                f"{self.name}: QEMU {self.build.label} did not start", exc=exc,
                qemu_error=text or None,
            ) from exc  # fmt: skip
        self.state = LabState.RUNNING

    @require(LabState.RUNNING)
    async def execute(self, cmd: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one QMP command.

        :raises LabError: with ``qemu_error`` = QEMU's ``desc`` verbatim when QEMU refused.
        """
        assert self._qmp is not None
        sent: dict[str, Any] = {"t": self.now(), "dir": "send", "execute": cmd}
        if arguments is not None:
            sent["arguments"] = dict(arguments)
        self.qmp_log.append(sent)
        try:
            reply = await self._qmp.execute(cmd, arguments)
        except ExecuteError as exc:
            self.qmp_log.append(
                {"t": self.now(), "dir": "recv", "execute": cmd, "error": _plain(exc.error.error)}
            )
            raise LabError(f"{self.name}: {cmd} failed", exc=exc, qemu_error=str(exc)) from exc
        except (QMPError, OSError) as exc:
            self.qmp_log.append(
                {"t": self.now(), "dir": "recv", "execute": cmd, "lost": f"{type(exc).__name__}"}
            )
            raise LabError(f"{self.name}: {cmd}: QMP connection failed", exc=exc) from exc
        except asyncio.CancelledError:
            self.qmp_log.append({"t": self.now(), "dir": "recv", "execute": cmd, "lost": "timeout"})
            raise
        self.qmp_log.append({"t": self.now(), "dir": "recv", "execute": cmd, "return": reply})
        return reply

    async def try_execute(self, cmd: str, arguments: Mapping[str, object] | None = None) -> Any:
        """:meth:`execute`, but ``None`` instead of raising (for best-effort queries at the end)."""
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancel that lands as the
            # reply arrives (cpython gh-86296), which once left the status poller running.
            async with asyncio.timeout(5):
                return await self.execute(cmd, arguments)
        except (LabError, TimeoutError):
            return None

    async def stop(self, grace: float = 3.0) -> None:
        """``quit``, then SIGKILL to our own PID after ``grace`` seconds.

        A destination in ``postcopy-paused`` ignores ``quit`` (its main thread waits for
        recovery), hence the kill. Safe to call in any state, more than once.
        """
        if self.state in (LabState.STOPPED, LabState.IDLE):
            return
        if self.state is LabState.RUNNING:
            self.state = LabState.STOPPING
            assert self._qmp is not None
            self.qmp_log.append({"t": self.now(), "dir": "send", "execute": "quit"})
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    reply = await self._qmp.execute("quit")
                self.qmp_log.append(
                    {"t": self.now(), "dir": "recv", "execute": "quit", "return": reply}
                )
        self.state = LabState.STOPPING
        await self._rollback(grace)

    def stderr_text(self) -> str:
        """QEMU's stderr so far, verbatim."""
        return "\n".join(line["line"] for line in self.stderr_lines if line["stream"] == "stderr")

    # ------------------------------------------------------------------
    # Section: Machinery

    async def _connect(self) -> None:
        while not self.qmp_path.exists():
            if self._proc is not None and self._proc.returncode is not None:
                raise LabError(f"{self.name}: QEMU exited with status {self._proc.returncode}")
            await asyncio.sleep(0.02)
        with contextlib.suppress(OSError):
            os.chmod(self.qmp_path, 0o600)  # in case QEMU ignored the umask
        qmp = QMPClient(self.name)
        # QEMU creates the socket file before listen(); retry briefly.
        for attempt in range(100):
            try:
                await qmp.connect(str(self.qmp_path))
                break
            except QMPError:
                if attempt == 99 or (self._proc and self._proc.returncode is not None):
                    raise
                await asyncio.sleep(0.05)
        self._qmp = qmp
        greeting = getattr(qmp, "greeting", None)
        if greeting is not None:
            self.qmp_log.append({"t": self.now(), "dir": "recv", "greeting": _plain(greeting)})
        listener = EventListener()
        qmp.register_listener(listener)
        self._tasks.append(asyncio.create_task(self._record_events(listener)))

    async def _record_events(self, listener: EventListener) -> None:
        async for event in listener:
            ts: Any = event.get("timestamp", {})  # qemu.qmp types a Message's values as object
            data: Any = event.get("data", {})
            record = {
                "t": self.now(),
                "event": event["event"],
                "data": dict(data),
                "qemu_time": ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6,
            }
            self.events.append(record)
            self.qmp_log.append({"t": record["t"], "dir": "recv", "event": record["event"],
                                 "data": record["data"], "timestamp": dict(ts)})  # fmt: skip
            self.log.debug("event %s %s", record["event"], record["data"])

    async def _read_lines(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr_lines.append({"t": self.now(), "stream": name, "line": line})
            self.log.debug("%s: %s", name, line)

    async def _rollback(self, grace: float = 0.0) -> None:
        """Leave nothing behind: disconnect QMP, reap (or kill) our own process."""
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._qmp.disconnect()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                self.log.info("pid %d still alive after %.1fs: SIGKILL", proc.pid, grace)
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        live = [t for t in self._tasks if not t.done()]
        if live:  # the readers end at EOF; give them a second, then cancel
            await asyncio.wait(live, timeout=1)
            for task in live:
                task.cancel()
        self.returncode = proc.returncode if proc else None
        self.state = LabState.STOPPED
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()


#: Signals that end a QEMU from outside (someone or something killed it).
_EXTERNAL_KILLS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _plain(value: Any) -> Any:
    """A qemu.qmp model object (it keeps the wire JSON in ``_raw``) as plain JSON-able data."""
    raw = getattr(value, "_raw", None)
    if raw is not None:
        return _plain(raw)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_probe_ids = itertools.count()


# A binary's machine list never changes: ask once per process (saves a QEMU start per run).
_machines_cache: dict[tuple[str, str, str], list[dict[str, Any]]] = {}


async def query_machines(build: QemuBuild, workdir: Path) -> list[dict[str, Any]]:
    """``query-machines`` of ``build`` (a throwaway ``-machine none`` instance, cached)."""
    key = (build.binary, str(build.root), build.version_text)
    if key in _machines_cache:
        return list(_machines_cache[key])
    inst = QemuInstance(
        build, f"probe-{os.getpid()}-{next(_probe_ids)}", workdir,
        ["-machine", "none", "-nodefaults", "-display", "none", "-S"],
    )  # fmt: skip
    await inst.start()
    try:
        machines = list(await inst.execute("query-machines"))
    finally:
        await inst.stop(grace=2)
    _machines_cache[key] = machines
    return list(machines)


def _machine_version(name: str) -> Release | None:
    """``pc-q35-4.0.1`` → 4.0.1 (compat's machine-type parser); None for ``q35``, ``none``."""
    try:
        return MachineType(name).version
    except InputError:
        return None


def newest_common_machine(*machine_lists: list[dict[str, Any]], family: str = "pc-q35-") -> str:
    """Newest versioned machine type of ``family`` that every list has.

    >>> newest_common_machine([{"name": "pc-q35-7.2"}, {"name": "pc-q35-8.0"}],
    ...                       [{"name": "pc-q35-7.1"}, {"name": "pc-q35-7.2"}])
    'pc-q35-7.2'
    """
    sets = [
        {m["name"] for m in ml if m["name"].startswith(family) and _machine_version(m["name"])}
        for ml in machine_lists
    ]
    common = set.intersection(*sets) if sets else set()
    if not common:
        if family == "pc-q35-":
            return newest_common_machine(*machine_lists, family="pc-i440fx-")
        raise LabError("the builds share no versioned pc machine type")
    return max(common, key=lambda n: _machine_version(n) or Release("0.0"))
