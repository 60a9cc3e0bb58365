"""QMP protocol core: sessions, envelope handling, the command registry type, events.

It owns ``QmpServer``/``QmpSession``, ``CommandRegistry`` and ``MachineControl`` (what commands may
ask of the system). It is the bottom of the monitor: it imports the QAPI schema engine (``qapi``),
the JSON codec (``qjson``), ``emu.errors`` and, for types only, the leaf ``fds``; never the command
modules, ``hmp``, ``registry`` or ``frontend``. A server is given its registry, which the assembler
builds with ``emu.monitor.registry.build_registry()``.

Socket-free and transport-agnostic. A transport (the main loop's chardev code)
creates a session with :meth:`QmpServer.new_session`, passing a ``write``
callback (bytes out) and a ``close`` callback (drop the connection), then calls
:meth:`QmpSession.opened` once connected, :meth:`QmpSession.feed` with every
chunk received (plus any SCM_RIGHTS fds), and :meth:`QmpSession.closed` on EOF.

Wire behaviour follows QEMU (spec/migration-qapi.md §1-§2): greeting, capability
negotiation, envelope errors, id echo, QDict key order, events only after
negotiation.

Threading: sessions are driven by the main loop thread. :meth:`QmpServer.emit_event`
may be called from any thread, but it simply calls each session's ``write``
callback from the calling thread, so the transport's ``write`` must be
thread-safe and write each call's bytes contiguously (the main loop marshals
writes to its own thread). Events emitted synchronously while a command runs
(e.g. ``STOP`` during ``stop``) go out before that command's reply, as in QEMU.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from emu.errors import QapiError
from emu.monitor.qapi import Schema
from emu.monitor.qjson import JsonStreamParser, dumps, qdict_order

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import TypeAlias

    from emu.machine.base import Machine
    from emu.migration.manager import MigrationManager
    from emu.monitor.fds import FdSets

    #: Handler signature: ``handler(ctx, args) -> return value`` (None means ``{}``).
    Handler: TypeAlias = Callable[["CommandContext", dict[str, Any]], Any]

__all__ = [
    "QEMU_VERSION",
    "QEMU_PACKAGE",
    "version_info",
    "MachineControl",
    "Arg",
    "CommandHandler",
    "CommandContext",
    "CommandRegistry",
    "QmpServer",
    "QmpSession",
]

#: The QEMU release whose QMP surface we follow (and claim in the greeting).
QEMU_VERSION: tuple[int, int, int] = (9, 1, 0)
#: The ``package`` string of ``query-version`` (QEMU's pkgversion).
QEMU_PACKAGE = "qtest-emu"


def version_info() -> dict[str, Any]:
    """Return a fresh ``VersionInfo`` dict (``query-version`` / greeting payload)."""
    major, minor, micro = QEMU_VERSION
    # Insertion in QAPI schema order; dumps() applies QDict order.
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": QEMU_PACKAGE}


class MachineControl(Protocol):
    """What the monitor needs from the machine (implemented by emu.control.SystemControl).

    The machine layer, not the command handlers, emits the ``STOP``, ``RESUME``
    and ``SHUTDOWN`` events through :meth:`QmpServer.emit_event`.
    """

    @property
    def runstate(self) -> str:
        """QEMU RunState name: ``prelaunch``, ``running``, ``paused``, ``shutdown``, ``inmigrate``, ..."""
        ...

    @property
    def running(self) -> bool:
        """True while the VM runs (``query-status`` ``running``)."""
        ...

    @property
    def qom_root(self) -> Any:
        """The QOM root object (``/``), an ``emu.qom.QObject``, for ``qom-*`` commands."""
        ...

    @property
    def name(self) -> str | None:
        """``-name``, or None."""
        ...

    @property
    def uuid(self) -> str | None:
        """``-uuid``, or None."""
        ...

    @property
    def accel(self) -> str:
        """The accelerator running the VM: ``qtest``, ``tcg`` or ``kvm``."""
        ...

    @property
    def fdsets(self) -> FdSets:
        """The process-wide fd sets (``add-fd``, ``remove-fd``, ``query-fdsets``)."""
        ...

    @property
    def memory(self) -> Machine:
        """The machine (address spaces, memory tree, devices) for HMP's dumps."""
        ...

    @property
    def migration(self) -> MigrationManager:
        """The VM's migration manager (the ``migrate*`` and ``query-migrate*`` commands)."""
        ...

    def reset(self) -> None:
        """``system_reset``; emits ``RESET`` synchronously."""
        ...

    def powerdown(self) -> None:
        """``system_powerdown``; emits ``POWERDOWN``."""
        ...

    def set_actions(self, values: dict[str, str]) -> None:
        """``set-action``/``watchdog-set-action`` with values the schema accepted
        (keys ``reboot``, ``shutdown``, ``panic``, ``watchdog``); QapiError for one not modelled."""
        ...

    def machine_types(self) -> list[dict[str, Any]]:
        """MachineInfo of every machine type."""
        ...

    def cpus(self) -> list[dict[str, Any]]:
        """CpuInfoFast of every CPU."""
        ...

    def chardevs(self) -> list[dict[str, Any]]:
        """ChardevInfo of every chardev."""
        ...

    def stop(self) -> None:
        """Pause the VM (``stop``); emits ``STOP`` synchronously. Raise QapiError on failure."""
        ...

    def cont(self) -> None:
        """Resume the VM (``cont``); emits ``RESUME`` synchronously. Raise QapiError on failure."""
        ...

    def request_shutdown(self, reason: str) -> None:
        """Request process shutdown (``quit`` passes ``"host-qmp-quit"``).

        Emits ``SHUTDOWN`` ``{"guest": false, "reason": reason}`` at once and
        wakes the main loop, which then closes the monitors and exits 0: the
        wire order is QEMU 7.2's observed one (SHUTDOWN event, reply, EOF).
        """
        ...


# ---------------------------------------------------------------------------
# Command registry: handlers for the commands the QAPI schema declares


class Arg:
    """One argument of a command declared in Python (``[T]`` is a list of T; the types are
    the QAPI schema's). Shorthand for a ``{'command': ..., 'data': {...}}`` schema entry."""

    __slots__ = ("name", "type", "optional")

    def __init__(self, name: str, type: str, optional: bool = False) -> None:
        self.name = name
        self.type = type
        self.optional = optional

    def __repr__(self) -> str:
        return f"Arg({self.name!r}, {self.type!r}, optional={self.optional})"


class CommandHandler:
    """A command's handler and dispatch flags (the schema's ``qapi.Command`` is its declaration).

    ``allow_oob``: may run with ``exec-oob``. ``allow_preneg``: available before capability
    negotiation (only ``qmp_capabilities``)."""

    __slots__ = ("name", "handler", "allow_oob", "allow_preneg")

    def __init__(self, name: str, handler: Handler, *, allow_oob: bool = False, allow_preneg: bool = False) -> None:
        self.name = name
        self.handler = handler
        self.allow_oob = allow_oob
        self.allow_preneg = allow_preneg


class CommandRegistry:
    """Handlers for the commands of a QAPI schema (``emu.monitor.qapi.Schema``).

    A command is declared in the schema (its arguments, return type, events) and implemented by a
    handler registered with :meth:`command` (a command module's ``register(registry)`` does it)::

        registry.command("query-status")(query_status)

    Arguments are validated by the schema's input visitor before the handler runs.
    """

    def __init__(self, schema: Schema | None = None) -> None:
        self.schema = schema if schema is not None else Schema()
        self._commands: dict[str, CommandHandler] = {}

    def define_enum(self, name: str, values: Iterable[str]) -> None:
        """Declare an enum type (shorthand for an ``{'enum': ...}`` schema entry)."""
        self.schema.extend([{"enum": name, "data": list(values)}])

    def register(self, cmd: CommandHandler) -> CommandHandler:
        """Add (or replace) a command's handler; the schema must declare the command."""
        if cmd.name not in self.schema.commands:
            raise ValueError(f"command '{cmd.name}' is not in the QAPI schema")
        self._commands[cmd.name] = cmd
        return cmd

    def command(
        self,
        name: str,
        args: Sequence[Arg] | None = None,
        *,
        allow_oob: bool = False,
        allow_preneg: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler(ctx, args)`` for command ``name``. With ``args`` the
        command is (re)declared in the schema from them; without, the schema's declaration is used
        (or, for a command the schema lacks, one without arguments)."""

        def deco(fn: Handler) -> Handler:
            if args is not None or name not in self.schema.commands:
                data = {("*" if a.optional else "") + a.name: _type_expr(a.type) for a in args or ()}
                self.schema.declare_command({"command": name, "data": data, "allow-oob": allow_oob})
            oob = allow_oob or self.schema.commands[name].allow_oob
            self.register(CommandHandler(name, fn, allow_oob=oob, allow_preneg=allow_preneg))
            return fn

        return deco

    def copy(self) -> CommandRegistry:
        """A new registry with the same schema and handlers (extend it freely)."""
        other = CommandRegistry(self.schema.copy())
        other._commands = dict(self._commands)
        return other

    def get(self, name: str) -> CommandHandler | None:
        """Look a command up by name."""
        return self._commands.get(name)

    def names(self) -> list[str]:
        """Commands that have a handler, in registration order."""
        return list(self._commands)

    def validate(self, cmd: CommandHandler, args: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the schema; return them converted (QapiError with QEMU's text)."""
        return self.schema.check_args(cmd.name, args)


def _type_expr(t: str) -> Any:
    """``[T]`` as the schema language's list form."""
    return [t[1:-1]] if t.startswith("[") else t


class CommandContext:
    """What a handler sees: the server, the calling session (None in-process)."""

    __slots__ = ("server", "session")

    def __init__(self, server: QmpServer, session: QmpSession | None) -> None:
        self.server = server
        self.session = session

    @property
    def machine(self) -> MachineControl:
        """The machine; QapiError if the server has none."""
        machine = self.server.machine
        if machine is None:
            raise QapiError("No machine is attached to this monitor")
        return machine

    def close_after_reply(self) -> None:
        """Close the calling session once this command's reply has been written."""
        if self.session is not None:
            self.session._close_after_reply = True


# ---------------------------------------------------------------------------
# Server and sessions


def _report_internal_error(exc: BaseException) -> None:
    import traceback  # only on the error path: keeps startup light

    sys.stderr.write("emu: internal error in QMP command handler\n")
    traceback.print_exception(exc, file=sys.stderr)


class QmpServer:
    """Shared monitor state: registry, version, machine and live sessions.

    ``registry`` is required: the commands are whatever the assembler registered
    (``emu.monitor.registry.build_registry()`` for the emulator's full set)."""

    def __init__(
        self,
        machine: MachineControl | None = None,
        *,
        registry: CommandRegistry,
        version: Mapping[str, Any] | None = None,
        offer_oob: bool = True,
        on_internal_error: Callable[[BaseException], None] | None = _report_internal_error,
    ) -> None:
        self.machine = machine
        self.registry = registry
        self.version: dict[str, Any] = dict(version) if version is not None else version_info()
        self.offer_oob = offer_oob
        self.on_internal_error = on_internal_error
        self._sessions: list[QmpSession] = []
        self._lock = threading.Lock()

    @property
    def sessions(self) -> tuple[QmpSession, ...]:
        """Snapshot of the open sessions."""
        with self._lock:
            return tuple(self._sessions)

    def new_session(
        self, write: Callable[[bytes], None], close: Callable[[], None] | None = None, *, pretty: bool = False
    ) -> QmpSession:
        """Create a session for a new connection (call ``opened()`` on it next).

        ``pretty`` selects QEMU's pretty-printed output (``-mon ...,pretty=on``).
        """
        return QmpSession(self, write, close, pretty=pretty)

    def greeting(self) -> dict[str, Any]:
        """The greeting object sent when a connection opens."""
        return {"QMP": {"version": self.version, "capabilities": ["oob"] if self.offer_oob else []}}

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Send event ``name`` to every session that completed negotiation.

        ``data`` is omitted from the message when None. Callable from any thread
        (see the module docstring for the transport's obligations).
        """
        now_us = time.time_ns() // 1000
        msg: dict[str, Any] = {
            "event": name,
            "timestamp": {"seconds": now_us // 1_000_000, "microseconds": now_us % 1_000_000},
        }
        if data is not None:
            msg["data"] = dict(data)
        lines: dict[bool, bytes] = {}
        with self._lock:
            targets = [s for s in self._sessions if s.negotiated]
        for session in targets:
            line = lines.get(session.pretty)
            if line is None:  # TypeError here is the caller's bug: let it surface
                line = lines[session.pretty] = _encode(msg, session.pretty)
            try:
                session._write_raw(line)
            except Exception:
                # One broken connection must not starve the others; the
                # transport notices the failure on its side.
                pass

    def close_all(self) -> None:
        """Close every session (the main loop calls this on shutdown)."""
        for session in self.sessions:
            session.close()

    def _attach(self, session: QmpSession) -> None:
        with self._lock:
            if session not in self._sessions:
                self._sessions.append(session)

    def _detach(self, session: QmpSession) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)


_NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"


class QmpSession:
    """One QMP connection: greeting, negotiation state, parser, stashed fds.

    Every output message is one line of QEMU-formatted JSON ending ``\\r\\n``.
    """

    def __init__(
        self,
        server: QmpServer,
        write: Callable[[bytes], None],
        close: Callable[[], None] | None = None,
        *,
        pretty: bool = False,
    ) -> None:
        self.server = server
        #: Pretty-print output as QEMU's ``pretty=on`` monitors do.
        self.pretty = pretty
        self._write = write
        self._close_cb = close
        self._parser = JsonStreamParser()
        #: True once ``qmp_capabilities`` succeeded and its reply was written.
        self.negotiated = False
        #: True when the client enabled the ``oob`` capability.
        self.oob_enabled = False
        #: fds received with SCM_RIGHTS, waiting for ``getfd`` / ``add-fd``.
        self.pending_fds: list[int] = []
        #: True after close() / closed(); input is then ignored.
        self.is_closed = False
        self._close_after_reply = False
        self._negotiation: bool | None = None  # oob flag of a pending qmp_capabilities

    # -- transport-facing API --------------------------------------------------

    def opened(self) -> None:
        """The connection is up: register with the server and send the greeting."""
        if self.is_closed:
            return
        self.server._attach(self)
        self._send(self.server.greeting())

    def feed(self, data: bytes, fds: Iterable[int] = ()) -> None:
        """Process received bytes; ``fds`` came with them via SCM_RIGHTS.

        Garbage never raises: parse errors are answered with id-less
        GenericError replies, as QEMU does.
        """
        if self.is_closed:
            _close_fds(fds)
            return
        fds = list(fds)
        if fds:
            # As QEMU's socket chardev: only the fds of the latest message that carried any are
            # kept; older unclaimed ones are closed.
            _close_fds(self.pending_fds)
            self.pending_fds = fds
        for value, error in self._parser.feed(data):
            if self.is_closed:
                break
            if error is not None:
                self._send({"error": {"class": "GenericError", "desc": error}})
            else:
                self._handle(value)

    def closed(self) -> None:
        """The peer went away: forget the session and close unclaimed fds."""
        self._teardown()

    def close(self) -> None:
        """Close the connection from our side (idempotent)."""
        if self.is_closed:
            return
        self._teardown()
        if self._close_cb is not None:
            self._close_cb()

    def take_fd(self) -> int | None:
        """The first fd of the latest message that carried fds (for ``getfd`` / ``add-fd``), or
        None; the others of that message are closed."""
        if not self.pending_fds:
            return None
        fd, rest = self.pending_fds[0], self.pending_fds[1:]
        self.pending_fds = []
        _close_fds(rest)  # a command takes one fd; QEMU closes the others that came with it
        return fd

    # -- internals -------------------------------------------------------------

    def _teardown(self) -> None:
        self.is_closed = True
        self.server._detach(self)
        fds, self.pending_fds = self.pending_fds, []
        _close_fds(fds)

    def _write_raw(self, line: bytes) -> None:
        if not self.is_closed:
            self._write(line)

    def _send(self, msg: Mapping[str, Any]) -> None:
        self._write_raw(_encode(msg, self.pretty))

    def _handle(self, request: Any) -> None:
        response = self._dispatch(request)
        try:
            line = _encode(response, self.pretty)
        except (TypeError, ValueError) as exc:
            # A handler returned something JSON cannot carry.
            self._internal_error(exc)
            bad: dict[str, Any] = {"error": {"class": "GenericError", "desc": f"internal error: {exc}"}}
            if isinstance(request, dict) and "id" in request:
                bad["id"] = request["id"]
            line = _encode(bad, self.pretty)
        self._write_raw(line)
        if self._negotiation is not None:
            # Flip only after the reply is out, so no event can precede it.
            self.oob_enabled = self._negotiation
            self._negotiation = None
            self.negotiated = True
        if self._close_after_reply:
            self._close_after_reply = False
            self.close()

    def _internal_error(self, exc: BaseException) -> None:
        hook = self.server.on_internal_error
        if hook is not None:
            try:
                hook(exc)
            except Exception:
                pass

    def _dispatch(self, request: Any) -> dict[str, Any]:
        """Run one request; return the response dict (QEMU's qmp_dispatch())."""
        if not isinstance(request, dict):
            return {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}
        response: dict[str, Any]
        try:
            name, oob = self._check_envelope(request)
            cmd = self.server.registry.get(name)
            if cmd is None or not (self.negotiated or cmd.allow_preneg):
                raise QapiError(f"The command {name} has not been found", "CommandNotFound")
            if oob and not cmd.allow_oob:
                raise QapiError(f"The command {name} does not support OOB")
            args = self.server.registry.validate(cmd, request.get("arguments", {}))
            ret = cmd.handler(CommandContext(self.server, self), args)
            response = {"return": {} if ret is None else ret}
        except QapiError as exc:
            desc = exc.desc
            if not self.negotiated and exc.cls == "CommandNotFound":
                desc = _NEGOTIATION_DESC
            response = {"error": {"class": exc.cls, "desc": desc}}
        except Exception as exc:
            self._internal_error(exc)
            response = {"error": {"class": "GenericError", "desc": f"internal error: {type(exc).__name__}: {exc}"}}
        if "id" in request:
            response["id"] = request["id"]
        return response

    def _check_envelope(self, request: dict[str, Any]) -> tuple[str, bool]:
        """QEMU's qmp_dispatch_check_obj(): members checked in QDict order."""
        exec_key: str | None = None
        for key in qdict_order(list(request)):
            value = request[key]
            if key == "execute" or (key == "exec-oob" and self.oob_enabled):
                if not isinstance(value, str):
                    raise QapiError(f"QMP input member '{key}' must be a string")
                if exec_key is not None:
                    raise QapiError(f"QMP input member '{key}' clashes with '{exec_key}'")
                exec_key = key
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QapiError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise QapiError(f"QMP input member '{key}' is unexpected")
        if exec_key is None:
            raise QapiError("QMP input lacks member 'execute'")
        return request[exec_key], exec_key == "exec-oob"

    def negotiate(self, oob: bool) -> None:
        """Used by ``qmp_capabilities``: leave negotiation mode once the reply is out."""
        self._negotiation = oob


def _encode(msg: Any, pretty: bool) -> bytes:
    """One output message: JSON plus newline, every ``\\n`` sent as ``\\r\\n``
    (QEMU's monitor_puts() does that, which matters for pretty output)."""
    text = dumps(msg, pretty)
    if pretty:
        text = text.replace("\n", "\r\n")
    return text.encode("ascii") + b"\r\n"


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
