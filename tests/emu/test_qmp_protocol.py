"""Tests for emu.monitor.protocol / commands / registry: sessions with a fake machine, and
the real qemu.qmp client over a socketpair."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import re
import socket
import threading
from typing import Any

import pytest
from fake_machine import FakeMachine
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.monitor.protocol import (
    QEMU_PACKAGE,
    QEMU_VERSION,
    Arg,
    CommandRegistry,
    QmpServer,
    QmpSession,
)
from emu.monitor.registry import build_registry

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 1, "major": 9}, "package": "qtest-emu"}, '
    b'"capabilities": ["oob"]}}\r\n'
)
NEGOTIATION = "Expecting capabilities negotiation with 'qmp_capabilities'"
#: The emulator's command set, as the process serves it (handlers run against the FakeMachine).
REGISTRY = build_registry()
EVENT_RE = re.compile(rb'\{"timestamp": \{"seconds": \d+, "microseconds": \d+\}, "event": "([A-Z_]+)"(, "data": .*)?\}\r\n')


class Conn:
    """A session with in-memory transport callbacks."""

    def __init__(self, server: QmpServer) -> None:
        self.out: list[bytes] = []
        self.close_calls = 0
        self.session: QmpSession = server.new_session(self.out.append, self._close)
        self.session.opened()

    def _close(self) -> None:
        self.close_calls += 1

    def take(self) -> list[bytes]:
        out, self.out[:] = list(self.out), []
        return out

    def send(self, data: bytes | str) -> list[dict[str, Any]]:
        """Feed data; return the parsed output lines."""
        self.session.feed(data.encode() if isinstance(data, str) else data)
        lines = self.take()
        for line in lines:
            assert line.endswith(b"\r\n") and line.count(b"\n") == 1, line
        return [json.loads(line) for line in lines]

    def raw(self, data: bytes | str) -> bytes:
        self.session.feed(data.encode() if isinstance(data, str) else data)
        return b"".join(self.take())


def make(runstate: str = "prelaunch", negotiated: bool = False) -> tuple[QmpServer, FakeMachine, Conn]:
    machine = FakeMachine(runstate)
    server = QmpServer(machine, registry=REGISTRY)
    machine.server = server
    conn = Conn(server)
    conn.take()  # greeting
    if negotiated:
        assert conn.send('{"execute": "qmp_capabilities"}') == [{"return": {}}]
    return server, machine, conn


# ---------------------------------------------------------------------------
# Greeting and negotiation


def test_greeting_exact_bytes() -> None:
    server = QmpServer(FakeMachine(), registry=REGISTRY)
    conn = Conn(server)
    assert conn.take() == [GREETING]
    assert QEMU_VERSION == (9, 1, 0) and QEMU_PACKAGE == "qtest-emu"


def test_pre_negotiation_errors_with_and_without_id() -> None:
    _, _, conn = make()
    assert conn.raw('{"execute": "query-status", "id": "pre"}') == (
        b'{"id": "pre", "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation'
        b" with 'qmp_capabilities'\"}}\r\n"
    )
    assert conn.send('{"execute": "query-status"}') == [{"error": {"class": "CommandNotFound", "desc": NEGOTIATION}}]
    # Unknown commands get the same replacement text before negotiation.
    assert conn.send('{"execute": "no-such-cmd"}') == [{"error": {"class": "CommandNotFound", "desc": NEGOTIATION}}]
    # Envelope errors are not replaced.
    assert conn.send("{}") == [{"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}]


def test_negotiation_and_second_capabilities() -> None:
    _, _, conn = make()
    assert conn.raw('{"execute": "qmp_capabilities", "id": 7}') == b'{"return": {}, "id": 7}\r\n'
    assert conn.session.negotiated and not conn.session.oob_enabled
    assert conn.raw('{"execute": "qmp_capabilities"}') == (
        b'{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete,'
        b' command ignored"}}\r\n'
    )


def test_negotiation_enable_oob() -> None:
    _, _, conn = make()
    assert conn.send('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}') == [{"return": {}}]
    assert conn.session.oob_enabled


@pytest.mark.parametrize(
    ("arguments", "desc"),
    [
        ('{"enable": ["foo"]}', "Parameter 'null' does not accept value 'foo'"),
        ('{"enable": "oob"}', "Invalid parameter type for 'enable', expected: array"),
        ('{"enable": [1]}', "Invalid parameter type for 'enable[0]', expected: string"),
        ('{"enable": ["oob"], "x": 1}', "Parameter 'x' is unexpected"),
    ],
)
def test_negotiation_bad_arguments(arguments: str, desc: str) -> None:
    _, _, conn = make()
    got = conn.send('{"execute": "qmp_capabilities", "arguments": %s}' % arguments)
    assert got == [{"error": {"class": "GenericError", "desc": desc}}]
    assert not conn.session.negotiated


def test_oob_not_offered() -> None:
    server = QmpServer(FakeMachine(), registry=REGISTRY, offer_oob=False)
    conn = Conn(server)
    assert conn.take() == [GREETING.replace(b'["oob"]', b"[]")]
    got = conn.send('{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}')
    assert got == [{"error": {"class": "GenericError", "desc": "Capability oob not available"}}]


# ---------------------------------------------------------------------------
# Envelope, ids, errors


@pytest.mark.parametrize(
    ("request_text", "desc"),
    [
        ("[]", "QMP input must be a JSON object"),
        ("42 ", "QMP input must be a JSON object"),
        ('"x"', "QMP input must be a JSON object"),
        ("{}", "QMP input lacks member 'execute'"),
        ('{"execute": 1}', "QMP input member 'execute' must be a string"),
        ('{"foo": 1}', "QMP input member 'foo' is unexpected"),
        ('{"execute": "query-status", "foo": 1}', "QMP input member 'foo' is unexpected"),
        ('{"execute": "query-status", "arguments": []}', "QMP input member 'arguments' must be an object"),
        ('{"exec-oob": "query-status"}', "QMP input member 'exec-oob' is unexpected"),
        ("@", "JSON parse error, stray '@'"),
        ('{"execute": "x",}', "JSON parse error, expecting value"),
        ('{"execute": "stop", "arguments": {"a": 1}}', "Parameter 'a' is unexpected"),
    ],
)
def test_envelope_errors(request_text: str, desc: str) -> None:
    _, _, conn = make(negotiated=True)
    assert conn.send(request_text) == [{"error": {"class": "GenericError", "desc": desc}}]


def test_unclosed_object_then_closed() -> None:
    _, _, conn = make(negotiated=True)
    assert conn.send("{") == []
    assert conn.send("}") == [{"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}]


def test_junk_after_object() -> None:
    _, _, conn = make(negotiated=True)
    assert conn.send('{"execute": "query-status"} junk\n') == [
        {"return": {"status": "prelaunch", "running": False}},
        {"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'junk'"}},
    ]


def test_unknown_command() -> None:
    _, _, conn = make(negotiated=True)
    assert conn.raw('{"execute": "no-such-cmd"}') == (
        b'{"error": {"class": "CommandNotFound", "desc": "The command no-such-cmd has not been found"}}\r\n'
    )


def test_single_quoted_request() -> None:
    _, _, conn = make(negotiated=True)
    assert conn.send("{'execute': 'query-status', 'id': 'sq'}") == [
        {"return": {"status": "prelaunch", "running": False}, "id": "sq"}
    ]


@pytest.mark.parametrize(
    ("id_text", "id_out"),
    [
        ('"abc"', b'"abc"'),
        ("7", b"7"),
        ("-1.5", b"-1.5"),
        ('{"a": [1, "b"], "n": null}', b'{"n": null, "a": [1, "b"]}'),  # re-serialized in QDict order
        ("null", b"null"),
        ("[]", b"[]"),
        ('"\\u00e9"', b'"\\u00E9"'),
    ],
)
def test_id_echoed_verbatim(id_text: str, id_out: bytes) -> None:
    _, _, conn = make(negotiated=True)
    assert conn.raw('{"execute": "stop", "id": %s}' % id_text) == b'{"return": {}, "id": ' + id_out + b"}\r\n"
    assert conn.raw('{"execute": "nope", "id": %s}' % id_text) == (
        b'{"id": ' + id_out + b', "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}\r\n'
    )


def test_envelope_error_keeps_id() -> None:
    _, _, conn = make(negotiated=True)
    assert conn.raw('{"foo": 1, "id": 5}') == (
        b'{"id": 5, "error": {"class": "GenericError", "desc": "QMP input member \'foo\' is unexpected"}}\r\n'
    )


def test_parse_error_reply_has_no_id() -> None:
    _, _, conn = make(negotiated=True)
    assert conn.raw('{"execute": "stop", "id": 1, @}') == (
        b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'@\'"}}\r\n'
        b'{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}\r\n'
    )


def test_parse_errors_answered_before_negotiation() -> None:
    _, _, conn = make()
    assert conn.send("@") == [{"error": {"class": "GenericError", "desc": "JSON parse error, stray '@'"}}]


def test_several_requests_in_one_chunk_and_split() -> None:
    _, _, conn = make()
    data = b'{"execute":"qmp_capabilities","id":1}{"execute":"query-version","id":2}\n{"execute":"stop","id":3}'
    replies: list[bytes] = []
    for i in range(len(data)):
        conn.session.feed(data[i:i + 1])
    replies = conn.take()
    assert replies == [
        b'{"return": {}, "id": 1}\r\n',
        b'{"return": {"qemu": {"micro": 0, "minor": 1, "major": 9}, "package": "qtest-emu"}, "id": 2}\r\n',
        b'{"return": {}, "id": 3}\r\n',
    ]


# ---------------------------------------------------------------------------
# Commands


def test_query_status_and_version() -> None:
    _, machine, conn = make(negotiated=True)
    assert conn.raw('{"execute": "query-status"}') == (
        b'{"return": {"status": "prelaunch", "running": false}}\r\n'
    )
    machine.runstate = "running"
    assert conn.send('{"execute": "query-status"}') == [
        {"return": {"status": "running", "running": True}}
    ]
    assert conn.raw('{"execute": "query-version"}') == (
        b'{"return": {"qemu": {"micro": 0, "minor": 1, "major": 9}, "package": "qtest-emu"}}\r\n'
    )


def test_query_commands() -> None:
    _, _, conn = make(negotiated=True)
    (reply,) = conn.send('{"execute": "query-commands"}')
    names = {c["name"] for c in reply["return"]}
    assert {"qmp_capabilities", "query-version", "query-status", "stop", "cont", "quit", "query-commands"} <= names


def test_stop_and_cont_emit_events_before_reply() -> None:
    _, machine, conn = make("running", negotiated=True)
    conn.session.feed(b'{"execute": "stop", "id": "s"}')
    lines = conn.take()
    assert len(lines) == 2
    assert EVENT_RE.fullmatch(lines[0]) and b'"event": "STOP"}' in lines[0]
    assert lines[1] == b'{"return": {}, "id": "s"}\r\n'
    assert machine.runstate == "paused"
    conn.session.feed(b'{"execute": "cont"}')
    lines = conn.take()
    assert b'"event": "RESUME"' in lines[0] and lines[1] == b'{"return": {}}\r\n'


def test_machine_error_becomes_reply() -> None:
    _, machine, conn = make("shutdown", negotiated=True)
    assert conn.send('{"execute": "cont", "id": 1}') == [
        {"id": 1, "error": {"class": "GenericError", "desc": "Resetting the Virtual Machine is required"}}
    ]


def test_quit_flow() -> None:
    server, machine, conn = make("running", negotiated=True)
    other = Conn(server)
    other.take()
    assert other.send('{"execute": "qmp_capabilities"}') == [{"return": {}}]
    assert conn.raw('{"execute": "quit"}') == b'{"return": {}}\r\n'
    assert machine.shutdown_reason == "host-qmp-quit"
    assert conn.close_calls == 0
    assert machine.main_loop_iteration()
    (event,) = conn.take()
    m = EVENT_RE.fullmatch(event)
    assert m and m.group(1) == b"SHUTDOWN"
    assert m.group(2) == b', "data": {"guest": false, "reason": "host-qmp-quit"}'
    assert other.take() == [event]
    assert conn.close_calls == 1 and other.close_calls == 1
    assert conn.session.is_closed and server.sessions == ()
    # Nothing more is written to a closed session.
    assert conn.raw('{"execute": "query-status"}') == b""
    server.emit_event("STOP")
    assert conn.take() == []


def test_close_after_reply() -> None:
    registry = _test_registry()
    server = QmpServer(FakeMachine(), registry=registry)
    conn = Conn(server)
    conn.take()
    conn.send('{"execute": "qmp_capabilities"}')
    assert conn.send('{"execute": "bye", "id": 1}{"execute": "echo"}') == [{"return": {}, "id": 1}]
    assert conn.close_calls == 1 and conn.session.is_closed
    conn.session.close()
    assert conn.close_calls == 1


def test_handler_exception_becomes_generic_error() -> None:
    seen: list[BaseException] = []
    server = QmpServer(FakeMachine(), registry=_test_registry(), on_internal_error=seen.append)
    conn = Conn(server)
    conn.take()
    conn.send('{"execute": "qmp_capabilities"}')
    (reply,) = conn.send('{"execute": "boom", "id": "b"}')
    assert reply["id"] == "b"
    assert reply["error"]["class"] == "GenericError"
    assert "kaboom" in reply["error"]["desc"]
    assert isinstance(seen[0], ZeroDivisionError)
    (reply,) = conn.send('{"execute": "unserializable", "id": 2}')
    assert reply["error"]["class"] == "GenericError" and reply["id"] == 2
    # The session still works.
    assert conn.send('{"execute": "echo", "arguments": {"s": "x"}}') == [{"return": {"s": "x"}}]


def test_no_machine_is_an_error_not_a_crash() -> None:
    server = QmpServer(None, registry=REGISTRY, on_internal_error=None)
    conn = Conn(server)
    conn.take()
    conn.send('{"execute": "qmp_capabilities"}')
    (reply,) = conn.send('{"execute": "query-status"}')
    assert reply["error"]["class"] == "GenericError"


# ---------------------------------------------------------------------------
# Events


def test_events_only_after_negotiation_and_shape() -> None:
    server, _, conn = make()
    server.emit_event("STOP")
    assert conn.take() == []
    conn.session.feed(b'{"execute": "qmp_capabilities"}')
    assert conn.take() == [b'{"return": {}}\r\n']
    server.emit_event("STOP")
    server.emit_event("MIGRATION", {"status": "active"})
    stop, mig = conn.take()
    assert EVENT_RE.fullmatch(stop) and stop.endswith(b'"event": "STOP"}\r\n')
    assert EVENT_RE.fullmatch(mig) and mig.endswith(b'"event": "MIGRATION", "data": {"status": "active"}}\r\n')
    ts = json.loads(mig)["timestamp"]
    assert 0 <= ts["microseconds"] < 1_000_000 and ts["seconds"] > 1_600_000_000


def test_event_emitted_during_negotiation_follows_reply() -> None:
    server = QmpServer(FakeMachine(), registry=_test_registry())
    conn = Conn(server)
    conn.take()
    # An event emitted while qmp_capabilities runs must not precede its reply.
    reg = server.registry
    orig = reg.get("qmp_capabilities")
    assert orig is not None

    def caps(ctx: Any, args: dict[str, Any]) -> Any:
        ret = orig.handler(ctx, args)
        server.emit_event("EARLY")
        return ret

    reg.command("qmp_capabilities", allow_preneg=True)(caps)
    assert conn.send('{"execute": "qmp_capabilities"}') == [{"return": {}}]


def test_emit_event_from_other_thread() -> None:
    server, _, conn = make(negotiated=True)
    t = threading.Thread(target=server.emit_event, args=("RESUME",))
    t.start()
    t.join()
    (line,) = conn.take()
    assert b'"event": "RESUME"' in line


def test_broken_session_does_not_block_others() -> None:
    server, _, conn = make(negotiated=True)

    def broken(data: bytes) -> None:
        raise BrokenPipeError

    bad = server.new_session(broken)
    bad.negotiated = True
    server._attach(bad)
    server.emit_event("STOP")
    assert len(conn.take()) == 1


# ---------------------------------------------------------------------------
# fds


def test_fds_are_stashed_and_closed_on_disconnect() -> None:
    _, _, conn = make(negotiated=True)
    r, w = os.pipe()
    try:
        conn.session.feed(b" ", fds=[r])
        assert conn.take() == []
        assert conn.session.pending_fds == [r]
        assert conn.session.take_fd() == r
        assert conn.session.take_fd() is None
        conn.session.feed(b" ", fds=[w])
        conn.session.closed()
        with pytest.raises(OSError):
            os.fstat(w)
    finally:
        os.close(r)


# ---------------------------------------------------------------------------
# Argument validation


def test_build_registry_is_explicit_and_fresh() -> None:
    """Each call builds a new registry (core commands, then migration's); nothing is shared or global."""
    a, b = build_registry(), build_registry()
    assert a is not b and a.schema is not b.schema and a.names() == b.names()
    assert a.names()[0] == "qmp_capabilities" and {"migrate", "query-migrate-parameters"} <= set(a.names())
    assert a.names().index("human-monitor-command") < a.names().index("migrate")
    a.command("x-extra")(lambda ctx, args: None)
    assert "x-extra" in a.names() and "x-extra" not in b.names() and "x-extra" not in b.schema.commands


def _test_registry() -> CommandRegistry:
    reg = REGISTRY.copy()
    assert isinstance(reg, CommandRegistry) and reg.names() == REGISTRY.names()
    reg.define_enum("Color", ("red", "green"))

    @reg.command(
        "typed",
        args=[
            Arg("s", "str"),
            Arg("b", "bool", optional=True),
            Arg("i", "int", optional=True),
            Arg("u", "uint64", optional=True),
            Arg("u8", "uint8", optional=True),
            Arg("i16", "int16", optional=True),
            Arg("n", "number", optional=True),
            Arg("c", "Color", optional=True),
            Arg("cl", "[Color]", optional=True),
            Arg("a", "any", optional=True),
        ],
    )
    def typed(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        return args

    @reg.command("echo", args=[Arg("s", "str", optional=True)])
    def echo(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        return args

    @reg.command("boom")
    def boom(ctx: Any, args: dict[str, Any]) -> None:
        raise ZeroDivisionError("kaboom")

    @reg.command("unserializable")
    def unserializable(ctx: Any, args: dict[str, Any]) -> Any:
        return {"x": object()}

    @reg.command("bye")
    def bye(ctx: Any, args: dict[str, Any]) -> None:
        ctx.close_after_reply()

    @reg.command("oob-ok", allow_oob=True)
    def oob_ok(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        return {"oob": True}

    return reg


@pytest.mark.parametrize(
    ("arguments", "result"),
    [
        ('{"s": "x"}', {"s": "x"}),
        ('{"s": "x", "b": true, "i": -5, "u": -1, "u8": 255, "i16": -32768, "n": 1}',
         {"s": "x", "b": True, "i": -5, "u": 18446744073709551615, "u8": 255, "i16": -32768, "n": 1.0}),
        ('{"s": "x", "c": "red", "cl": ["green", "red"], "a": {"k": [1]}}',
         {"s": "x", "c": "red", "cl": ["green", "red"], "a": {"k": [1]}}),
        ("{}", "Parameter 's' is missing"),
        ('{"foo": 1}', "Parameter 's' is missing"),
        ('{"foo": 1, "s": 1}', "Invalid parameter type for 's', expected: string"),
        ('{"s": null}', "Invalid parameter type for 's', expected: string"),
        ('{"s": "x", "foo": 1}', "Parameter 'foo' is unexpected"),
        ('{"s": "x", "b": 1}', "Invalid parameter type for 'b', expected: boolean"),
        ('{"s": "x", "i": 1.5}', "Invalid parameter type for 'i', expected: integer"),
        ('{"s": "x", "i": 18446744073709551615}', "Invalid parameter type for 'i', expected: integer"),
        ('{"s": "x", "i": "1"}', "Invalid parameter type for 'i', expected: integer"),
        ('{"s": "x", "u": "x"}', "Parameter 'u' expects uint64"),
        ('{"s": "x", "u": 1.0}', "Parameter 'u' expects uint64"),
        ('{"s": "x", "u8": 256}', "Parameter 'u8' expects uint8_t"),
        ('{"s": "x", "u8": -1}', "Parameter 'u8' expects uint8_t"),
        ('{"s": "x", "i16": 32768}', "Parameter 'i16' expects int16_t"),
        ('{"s": "x", "n": "1"}', "Invalid parameter type for 'n', expected: number"),
        ('{"s": "x", "c": "blue"}', "Parameter 'c' does not accept value 'blue'"),
        ('{"s": "x", "c": 1}', "Invalid parameter type for 'c', expected: string"),
        ('{"s": "x", "cl": ["red", "blue"]}', "Parameter 'null' does not accept value 'blue'"),
        ('{"s": "x", "cl": [true]}', "Invalid parameter type for 'cl[0]', expected: string"),
        ('{"s": "x", "cl": {}}', "Invalid parameter type for 'cl', expected: array"),
    ],
)
def test_argument_validation(arguments: str, result: Any) -> None:
    server = QmpServer(FakeMachine(), registry=_test_registry())
    conn = Conn(server)
    conn.take()
    conn.send('{"execute": "qmp_capabilities"}')
    (reply,) = conn.send('{"execute": "typed", "arguments": %s}' % arguments)
    if isinstance(result, str):
        assert reply == {"error": {"class": "GenericError", "desc": result}}
    else:
        assert reply == {"return": result}


def test_exec_oob() -> None:
    server = QmpServer(FakeMachine(), registry=_test_registry())
    conn = Conn(server)
    conn.take()
    conn.send('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
    assert conn.send('{"exec-oob": "query-version", "id": "y"}') == [
        {"id": "y", "error": {"class": "GenericError", "desc": "The command query-version does not support OOB"}}
    ]
    assert conn.send('{"exec-oob": "oob-ok", "id": "z"}') == [{"return": {"oob": True}, "id": "z"}]
    assert conn.send('{"exec-oob": "oob-ok", "execute": "oob-ok"}') == [
        {"error": {"class": "GenericError", "desc": "QMP input member 'execute' clashes with 'exec-oob'"}}
    ]


# ---------------------------------------------------------------------------
# Garbage (hypothesis)


@settings(max_examples=200, deadline=None)
@given(
    garbage=st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from(list(b'{}[]:,"\'\\ \n@abc019-.eE\xff\x00')), max_size=200).map(bytes),
    ),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    negotiate_first=st.booleans(),
)
def test_garbage_never_raises_and_session_resyncs(garbage: bytes, cuts: list[int], negotiate_first: bool) -> None:
    _, _, conn = make("running", negotiated=negotiate_first)
    prev = 0
    for cut in sorted(c for c in cuts if c <= len(garbage)) + [len(garbage)]:
        conn.session.feed(garbage[prev:cut])
        prev = cut
    for line in conn.take():
        assert line.endswith(b"\r\n")
        json.loads(line)
    if conn.session.is_closed:
        return
    # A control character other than \t \r \n always resynchronises QEMU's parser.
    conn.session.feed(b'\x1b{"execute": "query-version", "id": "sync"}')
    replies = [json.loads(line) for line in conn.take()]
    assert replies and replies[-1].get("id") == "sync"
    assert "return" in replies[-1] or replies[-1]["error"]["class"] == "CommandNotFound"


# ---------------------------------------------------------------------------
# The real qemu.qmp client over a socketpair


class SocketPump:
    """Stand-in for the main loop: socket <-> QmpSession on a thread."""

    def __init__(self, server: QmpServer, machine: FakeMachine, sock: socket.socket) -> None:
        self.sock = sock
        self.machine = machine
        self._lock = threading.Lock()
        self.session = server.new_session(self._write, self._close)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _write(self, data: bytes) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        self.session.opened()
        fd_size = socket.CMSG_SPACE(16 * array.array("i").itemsize)
        try:
            while True:
                try:
                    data, ancdata, _flags, _addr = self.sock.recvmsg(65536, fd_size)
                except OSError:
                    break
                fds: list[int] = []
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        arr = array.array("i")
                        arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                        fds.extend(arr)
                if not data:
                    self.session.closed()
                    break
                self.session.feed(data, fds)
                if self.machine.main_loop_iteration():
                    break
        finally:
            self.sock.close()


def _pump_pair(runstate: str = "running") -> tuple[QmpServer, FakeMachine, SocketPump, socket.socket]:
    machine = FakeMachine(runstate)
    server = QmpServer(machine, registry=REGISTRY)
    machine.server = server
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pump = SocketPump(server, machine, ours)
    pump.start()
    return server, machine, pump, theirs


def test_qemu_qmp_client() -> None:
    from qemu.qmp import QMPClient

    server, machine, pump, sock = _pump_pair()

    async def main() -> None:
        qmp = QMPClient("emu-test")
        await asyncio.wait_for(qmp.connect(sock), 10)
        assert qmp.greeting is not None
        greeting: Any = qmp.greeting._asdict()
        assert greeting["QMP"]["version"]["qemu"] == {"major": 9, "minor": 1, "micro": 0}
        status = await asyncio.wait_for(qmp.execute("query-status"), 10)
        assert status == {"status": "running", "running": True}
        # Checked only now: the flag flips just after the capabilities reply is written.
        assert pump.session.negotiated and pump.session.oob_enabled
        version = await asyncio.wait_for(qmp.execute("query-version"), 10)
        assert version == {"qemu": {"micro": 0, "minor": 1, "major": 9}, "package": "qtest-emu"}

        with qmp.listener(("STOP", "SHUTDOWN")) as listener:
            assert await asyncio.wait_for(qmp.execute("stop"), 10) == {}
            event = await asyncio.wait_for(listener.get(), 10)
            timestamp: Any = event["timestamp"]
            assert event["event"] == "STOP" and set(timestamp) == {"seconds", "microseconds"}

            # An fd sent with SCM_RIGHTS lands in the session's stash.
            r, w = os.pipe()
            try:
                qmp.send_fd_scm(r)
                await asyncio.wait_for(qmp.execute("query-status"), 10)
                assert len(pump.session.pending_fds) == 1
                assert os.fstat(pump.session.pending_fds[0]).st_ino == os.fstat(r).st_ino
            finally:
                os.close(r)
                os.close(w)

            assert await asyncio.wait_for(qmp.execute("quit"), 10) == {}
            event = await asyncio.wait_for(listener.get(), 10)
            assert event["event"] == "SHUTDOWN"
            assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
        # The server closed the socket; qemu.qmp re-raises EOFError (QEMUMachine tolerates it).
        with contextlib.suppress(EOFError):
            await asyncio.wait_for(qmp.disconnect(), 10)

    try:
        asyncio.run(main())
    finally:
        sock.close()
        pump.thread.join(10)
    assert not pump.thread.is_alive()
    assert machine.shutdown_reason == "host-qmp-quit"
    assert server.sessions == ()


def test_qemu_qmp_legacy_client_without_ids() -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    _, machine, pump, sock = _pump_pair("paused")
    mon = QEMUMonitorProtocol(sock)
    try:
        greeting = mon.connect()
        assert greeting is not None and greeting["QMP"]["capabilities"] == ["oob"]
        # Legacy calls carry no id, so replies must carry none either.
        assert mon.cmd_obj({"execute": "query-status"}) == {
            "return": {"status": "paused", "running": False}
        }
        assert mon.cmd_obj({"execute": "no-such"}) == {
            "error": {"class": "CommandNotFound", "desc": "The command no-such has not been found"}
        }
        assert mon.cmd("cont") == {}
        event = mon.pull_event(wait=10)
        assert event is not None and event["event"] == "RESUME"
        assert mon.cmd_obj({"execute": "quit"}) == {"return": {}}
    finally:
        with contextlib.suppress(EOFError):
            mon.close()
        sock.close()
        pump.thread.join(10)
    assert machine.shutdown_reason == "host-qmp-quit"


def test_pretty_session() -> None:
    server = QmpServer(FakeMachine(), registry=REGISTRY)
    out: list[bytes] = []
    session = server.new_session(out.append, pretty=True)
    session.opened()
    session.feed(b'{"execute": "qmp_capabilities", "id": 1}')
    server.emit_event("STOP")
    greeting, reply, event = out
    assert greeting.startswith(b'{\r\n    "QMP": {\r\n        "version": {\r\n') and greeting.endswith(b"\r\n}\r\n")
    assert reply == b'{\r\n    "return": {\r\n    },\r\n    "id": 1\r\n}\r\n'
    assert event.startswith(b'{\r\n    "timestamp": {\r\n        "seconds": ')
    assert event.endswith(b'    },\r\n    "event": "STOP"\r\n}\r\n')
    assert b"\n" not in greeting.replace(b"\r\n", b"")
