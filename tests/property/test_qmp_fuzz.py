"""Fuzzing the QMP session: garbage bytes, random JSON, random QMP-shaped requests, random chunking.

Invariants (spec/migration-qapi.md §1, the resynchronisation guarantee of emu/monitor/qjson.py):

* ``QmpSession.feed`` never raises, whatever the bytes and however they are split;
* every output line is one JSON object ending ``\\r\\n``, ASCII only, and is the greeting, a
  ``return`` (with an optional ``id``), an ``error`` with exactly ``class`` and ``desc`` (with an
  optional ``id``), or an event;
* every complete JSON document gets exactly one reply, echoing the request's ``id``;
* after any garbage, one resynchronisation byte (an ASCII control character other than TAB/CR/LF,
  or 0xFE/0xFF) followed by ``{"execute":"query-status","id":"probe"}`` is answered with id "probe".

The last test drives the real ``emu-system-x86_64`` with two QMP monitors: ~1 MB of random bytes
and an abrupt close on one must not disturb the other, and ``quit`` must exit with status 0.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Any

import pytest
from fake_machine import FakeMachine  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.monitor.protocol import QmpServer, QmpSession
from emu.monitor.registry import build_registry

#: The emulator's command set, as the process serves it.
REGISTRY = build_registry()

ERROR_CLASSES = {"GenericError", "CommandNotFound", "DeviceNotActive", "DeviceNotFound", "KVMMissingCap"}
PROBE = b'{"execute":"query-status","id":"probe"}'
RESYNC = [b"\x1b", b"\xff", b"\xfe", b"\x00", b"\x01", b"\x1f"]
INT64_MIN, UINT64_MAX = -(1 << 63), (1 << 64) - 1


class Conn:
    def __init__(self, negotiate: bool) -> None:
        self.machine = FakeMachine("running")
        self.internal_errors: list[BaseException] = []
        self.server = QmpServer(self.machine, registry=REGISTRY,  # type: ignore[arg-type]
                                on_internal_error=self.internal_errors.append)
        self.machine.server = self.server
        self.out: list[bytes] = []
        self.session: QmpSession = self.server.new_session(self.out.append)
        self.session.opened()
        (greeting,) = self.lines()
        assert "QMP" in greeting
        if negotiate:
            self.session.feed(b'{"execute": "qmp_capabilities"}')
            assert self.lines() == [{"return": {}}]

    def feed_chunks(self, data: bytes, cuts: list[int]) -> None:
        prev = 0
        for cut in sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]:
            self.session.feed(data[prev:cut])  # must never raise
            prev = cut

    def lines(self) -> list[dict[str, Any]]:
        """The output so far, each line checked for shape, parsed."""
        out, self.out[:] = list(self.out), []
        return [check_line(line) for line in out]


def check_line(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1, line
    line.decode("ascii")  # QEMU escapes every non-ASCII character
    msg = json.loads(line)
    assert isinstance(msg, dict), line
    keys = set(msg)
    if "QMP" in msg:
        assert keys == {"QMP"}, line
    elif "return" in msg:
        assert keys <= {"return", "id"}, line
    elif "error" in msg:
        assert keys <= {"error", "id"}, line
        err = msg["error"]
        assert set(err) == {"class", "desc"} and isinstance(err["desc"], str), line
        assert err["class"] in ERROR_CLASSES, line
        assert not err["desc"].startswith("JSON parse error, internal error"), line  # the parser's safety net
    else:
        assert "event" in msg and {"event", "timestamp"} <= keys <= {"event", "timestamp", "data"}, line
    return msg


def replies(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in lines if "event" not in m]


def resync_and_probe(conn: Conn, resync: bytes, cuts: list[int]) -> None:
    assert not conn.session.is_closed
    conn.lines()
    conn.feed_chunks(resync + PROBE, cuts)
    got = replies(conn.lines())
    assert got, "no reply to the probe"
    last = got[-1]
    assert last.get("id") == "probe", got
    if conn.session.negotiated:
        assert "return" in last and set(last["return"]) == {"running", "status"}, last
    else:
        assert last["error"]["class"] == "CommandNotFound", last
    # everything before the probe's reply is an error for the garbage the resync byte cut short
    assert all("error" in m and "id" not in m for m in got[:-1]), got


# ---------------------------------------------------------------------------------------------
# Strategies

FRAGMENTS = [
    b"{", b"}", b"[", b"]", b":", b",", b'"', b"'", b"\\", b"\\u", b"\\ud83d", b"\\u0000", b"\\x", b" ", b"\n",
    b"\r", b"\t", b"\x00", b"\x1b", b"\x7f", b"\xfe", b"\xff", b"\xc3", b"\xc3\xa9", b"\xe2\x82", b"\xf0\x9f\x98",
    b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"true", b"fals", b"null", b"nul", b"-", b"0", b"01",
    b"1e", b"1.", b".5", b"1e400", b"123456789012345678901234567890", b"-9223372036854775809", b"@", b"execute",
    b'"execute"', b'"exec-oob"', b'"arguments"', b'"id"', b'"qmp_capabilities"', b'"query-status"', b'"stop"',
    b'{"execute": "qmp_capabilities"}', b'{"execute": "query-status", "id": 1}', b'{"execute": "cont"}',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}', b"'quit'",
]
GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(b"".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=40).map(b"".join),
)
# QEMU's parser rejects "\u0000" (QString is NUL-terminated), surrogates and Unicode noncharacters
# (U+FDD0..U+FDEF, U+xFFFE/U+xFFFF: util/unicode.c is_valid_codepoint): keep them out of valid strings
def _valid_char(c: str) -> bool:
    return not (0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFE) == 0xFFFE)


TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00").filter(_valid_char),
               max_size=8)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(INT64_MIN, UINT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False), TEXT,
)
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4), max_leaves=25)
COMMAND_NAMES = st.one_of(st.sampled_from(sorted(REGISTRY.schema.commands)), TEXT)
QMP_REQUESTS = st.one_of(
    st.fixed_dictionaries(
        {"execute": COMMAND_NAMES},
        optional={"arguments": st.dictionaries(TEXT, JSON, max_size=4) | JSON, "id": JSON, "exec-oob": COMMAND_NAMES,
                  "extra": JSON},
    ),
    st.fixed_dictionaries({"exec-oob": COMMAND_NAMES}, optional={"id": JSON, "arguments": JSON}),
)
# human-monitor-command with random command lines would exercise the HMP parser against the fake
# machine: not this file's subject
QMP_REQUESTS = QMP_REQUESTS.filter(lambda r: r.get("execute") != "human-monitor-command")


def encode(doc: Any, ascii_only: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8")


CUTS = st.lists(st.integers(0, 2000), max_size=10)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------
# Session-level fuzzing


@FUZZ
@given(garbage=GARBAGE, cuts=CUTS, negotiate=st.booleans(), resync=st.sampled_from(RESYNC), cuts2=CUTS)
def test_random_bytes(garbage: bytes, cuts: list[int], negotiate: bool, resync: bytes, cuts2: list[int]) -> None:
    conn = Conn(negotiate)
    conn.feed_chunks(garbage, cuts)
    conn.lines()
    resync_and_probe(conn, resync, cuts2)


@FUZZ
@given(docs=st.lists(JSON, min_size=1, max_size=6), ascii_only=st.booleans(), cuts=CUTS,
       negotiate=st.booleans(), seps=st.lists(st.sampled_from([b"\n", b" ", b"\r\n", b"\t"]), min_size=6,
                                               max_size=6),
       resync=st.sampled_from(RESYNC))
def test_random_json_documents(docs: list[Any], ascii_only: bool, cuts: list[int], negotiate: bool,
                               seps: list[bytes], resync: bytes) -> None:
    conn = Conn(negotiate)
    stream = b"".join(encode(d, ascii_only) + seps[i] for i, d in enumerate(docs))
    conn.feed_chunks(stream, cuts)
    got = replies(conn.lines())
    assert len(got) == len(docs), (docs, got)  # one reply per document, none lost or doubled
    for doc, reply in zip(docs, got):
        if not isinstance(doc, dict):
            assert reply == {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}
        elif "id" in doc:
            assert reply["id"] == doc["id"], (doc, reply)
    resync_and_probe(conn, resync, cuts)


@FUZZ
@given(reqs=st.lists(QMP_REQUESTS, min_size=1, max_size=6), ascii_only=st.booleans(), cuts=CUTS,
       negotiate=st.booleans(), garbage=st.none() | GARBAGE, resync=st.sampled_from(RESYNC))
def test_random_qmp_requests(reqs: list[dict[str, Any]], ascii_only: bool, cuts: list[int], negotiate: bool,
                             garbage: bytes | None, resync: bytes) -> None:
    conn = Conn(negotiate)
    stream = b"".join(encode(r, ascii_only) for r in reqs)  # back to back, no separators
    conn.feed_chunks(stream, cuts)
    got = replies(conn.lines())
    assert len(got) == len(reqs), (reqs, got)
    for req, reply in zip(reqs, got):
        if "id" in req:
            assert reply.get("id") == req["id"], (req, reply)
        if "return" not in reply:
            continue
        # only a known command can succeed, and never before negotiation except qmp_capabilities
        name = req.get("execute", req.get("exec-oob"))
        assert name in REGISTRY.schema.commands, (req, reply)
    if garbage is not None:
        conn.feed_chunks(garbage, cuts)
        conn.lines()
    resync_and_probe(conn, resync, cuts)


@pytest.mark.parametrize("prefix", [
    b'{"execute": "query-status", "arguments": {"a": "unterminated',
    b"{'execute': 'stop', 'id': 'x\\",
    b'{"execute": [[[[[[[[[[',
    b'{"id": 12345678901234567890',
    b'{"execute": "qmp_capabilities", "id": tru',
    b'"\\u',
    b"\xf0\x9f",
    b"@@@ junk junk",
    b"{" * 2000,
    b"[" * 1100,  # beyond QEMU's nesting limit of 1024
])
@pytest.mark.parametrize("resync", RESYNC)
def test_resync_after_every_parser_state(prefix: bytes, resync: bytes) -> None:
    for negotiate in (False, True):
        conn = Conn(negotiate)
        conn.session.feed(prefix)
        conn.lines()
        resync_and_probe(conn, resync, [])


# ---------------------------------------------------------------------------------------------
# The real binary: a hostile client on one monitor, a well-behaved one on another


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    return s


class LineReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read_msg(self) -> dict[str, Any]:
        return check_line(self.readline())


@pytest.mark.subprocess
@pytest.mark.parametrize("hostile_reads", [True, False], ids=["hostile-reads", "hostile-never-reads"])
def test_real_binary_survives_hostile_client(hostile_reads: bool) -> None:
    binary = shutil.which("emu-system-x86_64")
    assert binary is not None, "emu-system-x86_64 is not installed (pip install -e .)"
    tmp = tempfile.mkdtemp(prefix="qmpfz", dir="/tmp")  # short: AF_UNIX paths are limited to 108 bytes
    p1, p2 = os.path.join(tmp, "a.sock"), os.path.join(tmp, "b.sock")
    proc = subprocess.Popen(
        [binary, "-M", "none", "-display", "none",
         "-qmp", f"unix:{p1},server=on,wait=off", "-qmp", f"unix:{p2},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (os.path.exists(p1) and os.path.exists(p2)):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "QMP sockets never appeared"
            time.sleep(0.02)

        hostile = _connect(p1)
        hostile_in = LineReader(hostile)
        assert "QMP" in hostile_in.read_msg()
        good = _connect(p2)
        good_in = LineReader(good)
        assert "QMP" in good_in.read_msg()
        good.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert good_in.read_msg() == {"return": {}}

        # QEMU buffers a monitor's output without bound: a client that never reads its error
        # replies must not block the main loop (nor, through it, the other monitor)
        drained = [0]
        bad_lines: list[tuple[bytes, str]] = []

        def drain() -> None:
            with contextlib.suppress(OSError, EOFError):
                while True:
                    line = hostile_in.readline()
                    drained[0] += 1
                    try:
                        check_line(line)
                    except (AssertionError, ValueError) as e:
                        bad_lines.append((line, repr(e)))

        reader = threading.Thread(target=drain, daemon=True)
        if hostile_reads:
            reader.start()
        rng = random.Random()
        seed = rng.randrange(1 << 32)
        rng.seed(seed)
        payload = rng.randbytes(1 << 20)
        sent = 0
        probes = 0
        for off in range(0, len(payload), 16384):
            hostile.sendall(payload[off:off + 16384])
            sent += 16384
            if off % (128 * 1024) == 0:
                probes += 1
                good.sendall(b'{"execute": "query-status", "id": %d}\n' % probes)
                msg = good_in.read_msg()
                while "event" in msg:
                    msg = good_in.read_msg()
                assert msg.get("id") == probes and "return" in msg, (seed, msg)
        # end mid-message, abruptly (RST rather than FIN)
        hostile.sendall(b'\x1b{"execute": "query-status", "arguments": {"x": "unterm')
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        hostile.close()
        if hostile_reads:
            reader.join(5)

        for i in range(3):
            good.sendall(b'{"execute": "query-status", "id": "after-%d"}\n' % i)
            msg = good_in.read_msg()
            while "event" in msg:
                msg = good_in.read_msg()
            assert msg == {"return": {"status": "running", "running": True}, "id": f"after-{i}"}, (seed, msg)

        good.sendall(b'{"execute": "quit", "id": "q"}\n')
        seen: list[dict[str, Any]] = []
        with contextlib.suppress(EOFError, ConnectionResetError):
            while True:
                seen.append(good_in.read_msg())
        assert {"return": {}, "id": "q"} in seen, seen
        assert any(m.get("event") == "SHUTDOWN" for m in seen), seen
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else b""
        assert sent >= 1 << 20 and (drained[0] > 0 or not hostile_reads)
        assert bad_lines == [], (seed, bad_lines[:3])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
