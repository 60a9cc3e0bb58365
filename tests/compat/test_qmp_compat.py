"""QMP wire compatibility: the same requests to ``emu-system-x86_64`` and to Debian's QEMU 7.2.

Each test starts both binaries with the same command line (``-M pc -m 64M`` or ``-M none -m 16M``,
``-nodefaults -S -display none``), runs the same script against each through a raw QMP socket and
requires identical transcripts: replies compared as parsed JSON (so key order is ignored), events by
name and data (never timestamps), in arrival order relative to the replies.

Only behaviour whose schema and semantics are the same in 7.2 and 9.1 is compared
(``docs/qmp-facts.md``, ``/work/shared/spec/migration-qapi.md`` §1-§2). Not compared as equal:
query-status (9.1 dropped ``singlestep``; only ``status``/``running`` are compared),
query-version, query-commands, query-qmp-schema (checked structurally on ours only, plus the expanded
signatures of the commands that did not change), query-machines (our ``none`` entry shape only),
remove-fd while the VM is not running, and qom-list/qom-get of paths whose content differs.

The QMP client below reads transcripts over the tests' raw line client (``tests/wire.py``: raw
sockets, SCM_RIGHTS through ``sendmsg``). The test listens on a socket in a short private directory
under /tmp and the emulator connects to it (``-chardev socket,id=mon,path=P -mon
chardev=mon,mode=control``), so no fixed ports, no sleeps.
After each request a sentinel command with a unique id is sent; everything that arrives up to the
sentinel's reply belongs to the request, so the number of replies (0, 1 or 2) is observed, not assumed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket

import pytest
from wire import Emulator, LineClient, qmp_request

QEMU = "/usr/bin/qemu-system-x86_64"
OURS = shutil.which("emu-system-x86_64")

PC = ["-M", "pc", "-m", "64M", "-nodefaults", "-S", "-display", "none"]
NONE = ["-M", "none", "-m", "16M", "-nodefaults", "-S", "-display", "none"]
MACHINES = {"pc": PC, "none": NONE}

IO_TIMEOUT = 30.0

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.qemu,
    pytest.mark.skipif(not os.path.exists(QEMU), reason="real QEMU 7.2 (%s) is not installed" % QEMU),
]

EOF = "<EOF>"


# --------------------------------------------------------------------------------------
# Raw QMP client
# --------------------------------------------------------------------------------------

class QMP(LineClient):
    """One QMP connection observed as a transcript: raw bytes out (optionally with fds), parsed messages
    in (event timestamps checked and stripped), ``EOF`` once the peer closed or reset the connection."""

    def __init__(self, sock: socket.socket):
        super().__init__(sock, IO_TIMEOUT, reset_is_eof=True)
        self.nsync = 0

    def recv(self):
        """Next message, timestamps stripped from events; ``EOF`` when the peer closed."""
        line = self.readline()
        if line is None:
            return EOF
        msg = json.loads(line)
        if isinstance(msg, dict) and "event" in msg:
            ts = msg.pop("timestamp")
            assert set(ts) == {"seconds", "microseconds"}, ts
        return msg

    def until_reply(self):
        """Messages up to and including the next reply (``return`` or ``error``) or EOF."""
        out = []
        while True:
            msg = self.recv()
            out.append(msg)
            if msg == EOF or "event" not in msg:
                return out

    def exchange(self, data: bytes | str, fds=(), sync: bool = True):
        """Send ``data``; return everything that arrives before the sentinel's reply."""
        self.send(data, fds)
        if not sync:
            return []
        self.nsync += 1
        sid = "sync-%d" % self.nsync
        self.send('\n{"execute": "query-name", "id": "%s"}\n' % sid)
        out = []
        while True:
            msg = self.recv()
            if msg == EOF:
                out.append(msg)
                return out
            if isinstance(msg, dict) and msg.get("id") == sid:
                return out
            out.append(msg)

    def cmd(self, name: str, args=None, fds=(), **extra):
        self.send(json.dumps(qmp_request(name, args, **extra)) + "\n", fds)
        return self.until_reply()


class VM(Emulator):
    """One emulator process whose QMP monitor connects to a socket the test listens on."""

    def __init__(self, binary: str, argv: list[str], negotiate: bool = True, second_qmp: bool = False):
        super().__init__(binary, prefix="qmc")
        self.path = str(self.dir / "m.sock")
        self.qmp_path = str(self.dir / "s.sock")
        self.qmp: QMP | None = None
        self.extra: list[QMP] = []
        self.greeting = None
        cmdline = [*argv, "-chardev", "socket,id=mon,path=" + self.path, "-mon", "chardev=mon,mode=control"]
        if second_qmp:
            cmdline += ["-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        self.qmp = QMP(self.start(cmdline, listen=self.path))
        try:
            self.greeting = self.qmp.recv()
            if negotiate:
                assert self.qmp.cmd("qmp_capabilities") == [{"return": {}}]
        except BaseException:
            self.close()
            raise

    def connect_second(self) -> QMP:
        """Connect to the ``-qmp unix:...,server=on`` monitor. It exists: the first monitor
        already greeted us, and every chardev is created before the main loop runs."""
        q = QMP(self.connect_unix(self.qmp_path))
        self.extra.append(q)
        return q

    def wait(self, timeout: float = IO_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def close(self, sig: int = signal.SIGKILL) -> int | None:
        for q in [self.qmp, *self.extra]:
            if q is not None:
                q.close()
        return super().close(sig)


@pytest.fixture
def start():
    """``start(argv, **kw)`` -> (ours, qemu); both killed at teardown."""
    vms: list[VM] = []

    def _start(argv, **kw):
        pair = []
        for binary in (OURS, QEMU):
            vm = VM(binary, argv, **kw)
            vms.append(vm)
            pair.append(vm)
        return pair

    yield _start
    for vm in vms:
        vm.close()


def both(start, argv, script, **kw):
    """Run ``script(vm)`` on both binaries; return (ours, qemu)."""
    ours, qemu = start(argv, **kw)
    return script(ours), script(qemu)


def assert_same(ours, qemu):
    assert ours == qemu, "\nours: %s\nqemu: %s" % (json.dumps(ours), json.dumps(qemu))


def run_lines(lines, argv=PC):
    """Script: each entry is raw text (followed by a sentinel) or (text, sync)."""
    def script(vm):
        out = []
        for item in lines:
            text, sync = (item, True) if isinstance(item, str) else item
            out.append([text, vm.qmp.exchange(text + "\n", sync=sync)])
        return out
    return script


def check_lines(start, lines, argv=PC, negotiate=True):
    ours, qemu = both(start, argv, run_lines(lines), negotiate=negotiate)
    assert_same(ours, qemu)


def err(desc, cls="GenericError"):
    return {"class": cls, "desc": desc}


# --------------------------------------------------------------------------------------
# Greeting, negotiation, envelope and JSON errors
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("machine", ["pc", "none"])
def test_greeting_shape(start, machine):
    ours, qemu = start(MACHINES[machine], negotiate=False)

    def shape(g):
        v = g["QMP"]["version"]
        assert set(v) == {"qemu", "package"}
        assert isinstance(v["package"], str)
        assert set(v["qemu"]) == {"micro", "minor", "major"}
        assert all(type(x) is int for x in v["qemu"].values())
        return {"QMP": {**g["QMP"], "version": "<version>"}}

    assert shape(ours.greeting) == shape(qemu.greeting) == {
        "QMP": {"version": "<version>", "capabilities": ["oob"]}}
    assert ours.greeting["QMP"]["version"]["qemu"] == {"major": 9, "minor": 1, "micro": 0}


NEG = "Expecting capabilities negotiation with 'qmp_capabilities'"


def test_negotiation(start):
    lines = [
        '{"execute": "query-name"}',
        '{"execute": "query-name", "id": "pre"}',
        '{"execute": "query-status", "id": 1}',
        '{"execute": "quit"}',
        '{"execute": "no-such-cmd", "id": [1]}',
        '{"execute": "query-name", "arguments": {"x": 1}}',
        # envelope errors are reported before the negotiation check
        '[]', '{}', '{"execute": 1, "id": 2}', '{"execute": "query-name", "foo": 1}',
        '{"execute": "query-name", "arguments": []}',
        '{"exec-oob": "query-name"}',
        '@',
        # argument validation of qmp_capabilities itself
        '{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}',
        '{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}',
        '{"execute": "qmp_capabilities", "arguments": {"enable": [1]}}',
        '{"execute": "qmp_capabilities", "arguments": {"enable": null}}',
        '{"execute": "qmp_capabilities", "arguments": {"x": 1}}',
        '{"execute": "qmp_capabilities", "arguments": {"enable": [], "x": 1, "y": 2}}',
        '{"execute": "qmp_capabilities", "id": {"a": "b"}}',
        '{"execute": "qmp_capabilities", "id": 5}',
        '{"execute": "qmp_capabilities"}',
        '{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}',
        '{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
        '{"execute": "query-name", "id": "post"}',
    ]
    ours, qemu = both(start, PC, run_lines(lines), negotiate=False)
    assert qemu[0][1] == [{"error": err(NEG, "CommandNotFound")}]
    assert_same(ours, qemu)


def test_negotiation_with_oob(start):
    lines = [
        '{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
        '{"exec-oob": "query-status"}',
        '{"exec-oob": "query-name", "id": 1}',
        '{"exec-oob": "no-such-cmd", "id": 2}',
        '{"exec-oob": 1}',
        '{"execute": "query-name", "exec-oob": "query-name"}',
        '{"execute": "query-name", "id": 3}',
    ]
    ours, qemu = both(start, PC, run_lines(lines), negotiate=False)
    assert_same(ours, qemu)


ENVELOPE = [
    '[]', '42', '"x"', 'null', 'true', '1.5', '[{"execute": "query-name"}]',
    '{}', '{"id": 3}', '{"arguments": {}}',
    '{"execute": 1}', '{"execute": 1, "id": 4}', '{"execute": null}', '{"execute": ["query-name"]}',
    '{"execute": {}}',
    '{"foo": 1}', '{"execute": "query-name", "foo": 1}', '{"execute": "query-name", "foo": 1, "id": "f"}',
    '{"execute": "query-name", "arguments": []}', '{"execute": "query-name", "arguments": 1}',
    '{"execute": "query-name", "arguments": null}', '{"execute": "query-name", "arguments": "x"}',
    '{"execute": "query-name", "arguments": [], "id": 9}',
    '{"exec-oob": "query-name"}', '{"exec-oob": "query-status", "id": "o"}',
    '{"execute": "query-name", "exec-oob": "query-name"}',
    '{"execute": "no-such-cmd"}', '{"execute": "no-such-cmd", "id": "n"}', '{"execute": ""}',
    '{"execute": "Query-Name"}', '{"execute": "query_name"}',
]

IDS = ['7', '-1', '0', '"s"', '""', '1.5', '-0.25', '1e3', 'null', 'true', 'false', '[]', '[1, "a", null]',
       '{}', '{"a": [1, {"b": null}]}', '18446744073709551615', '9223372036854775807',
       '"a\\u00e9b\\ud83d\\ude00"']


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_envelope_errors(start, machine):
    check_lines(start, ENVELOPE, MACHINES[machine])


def test_ids_of_every_json_type(start):
    lines = []
    for i in IDS:
        lines.append('{"execute": "query-name", "id": %s}' % i)
        lines.append('{"execute": "no-such-cmd", "id": %s}' % i)
        lines.append('{"execute": "query-name", "arguments": {"x": 1}, "id": %s}' % i)
        lines.append('{"id": %s, "execute": 1}' % i)
        lines.append('{"execute": "query-name", "arguments": [], "id": %s}' % i)
    check_lines(start, lines)


JSON_ERRORS = [
    '@', '{"execute": "query-name"} junk', '{"execute": "query-name"} {"execute": "query-uuid"}',
    '{"execute": "query-name",}', '{"execute": "query-name" "id": 1}', '{"execute" "query-name"}',
    "{'execute': 'query-name'}", "{'execute': 'query-name', 'id': 'single'}",
    "{\"execute\": 'query-name', 'id': \"mixed\"}",
    '{"execute": "query-name", "execute": "query-uuid"}', '{"execute": "query-name", "id": 1, "id": 2}',
    '}', ']', ',', ':', '{,}', '[1,]', '{"a"}', '{"a":}', '{1: 2}',
    '{"execute": "query-name", "id": tru}', '{"execute": "query-name", "id": nul}',
    '{"execute": "query-name", "id": 01}', '{"execute": "query-name", "id": -}',
    '{"execute": "query-name", "id": 1.}', '{"execute": "query-name", "id": .5}',
    '{"execute": "query-name", "id": "\\x41"}', '{"execute": "query-name", "id": "\\u00"}',
    '{"execute": "query-name", "id": "\\u0000"}', '{"execute": "query-name", "id": "\\ud800"}',
    '{"execute": "query-name", "id": "\\/\\b\\f\\n\\r\\t\\"\\\\"}',
    '{"execute": "query-name", "id": \'it\\\'s\'}',
    '{"execute": "query-name", "id": "tab\tin"}',
    '{"execute": "query-name", "id": "\u00e9\u4e2d"}',
    '{"execute": "query-name", "id": Infinity}', '{"execute": "query-name", "id": NaN}',
    '{"execute": "query-name", "id": %}', '{"execute": "query-name", "id": %d}',
    'query-name', 'junk', '  \t ',
]


def test_json_parse_errors(start):
    check_lines(start, JSON_ERRORS)


def test_json_invalid_utf8(start):
    bad = [b'{"execute": "query-name", "id": "a\xffb"}', b'{"execute": "query-name", "id": "\xc3("}',
           b'{"execute": "query-name", "id": "\xe2\x82"}', b'\xfe', b'{"execute": "query-name"\xff}',
           b'{"execute": "query-name", "id": "\xc0\x80"}', b'{"execute": "query-name", "id": "\xed\xa0\x80"}']

    def script(vm):
        return [vm.qmp.exchange(b + b"\n") for b in bad]
    ours, qemu = both(start, PC, script)
    assert_same(ours, qemu)


def test_split_and_batched_objects(start):
    lines = [
        ('{"execute":', False), ('"query-name", "id": "split"', False), ('}', True),
        ('{', False), ('}', True),
        ('{"execute": "query-name", "id": 1}{"execute": "query-uuid", "id": 2}'
         '{"execute": "no-such", "id": 3}', True),
        ('[1, [2, {"a": [3]}]] {"execute": "query-name", "id": 4}', True),
    ]
    check_lines(start, lines)


def test_json_nesting_limit(start):
    lines = ['[' * 1024 + ']' * 1024, '[' * 1025 + ']' * 1025,
             '{"execute": "query-name", "arguments": {"a": %s}}' % ('[' * 1000 + ']' * 1000)]
    check_lines(start, lines)


def test_command_not_found(start):
    check_lines(start, ['{"execute": "nosuch"}', '{"execute": "nosuch", "id": 1}',
                        '{"execute": "nosuch", "arguments": {"x": 1}}',
                        '{"execute": "nosuch", "arguments": []}',
                        '{"execute": "query-status ", "id": 2}'])


def test_second_negotiation(start):
    check_lines(start, ['{"execute": "qmp_capabilities"}', '{"execute": "qmp_capabilities", "id": 1}',
                        '{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
                        '{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}',
                        '{"execute": "qmp_capabilities", "arguments": {"x": 1}}'])


# --------------------------------------------------------------------------------------
# Argument validation (commands that exist in 7.2 with the same arguments)
# --------------------------------------------------------------------------------------

NOARG = ["query-status", "query-version", "query-commands", "query-qmp-schema", "query-chardev",
         "query-cpus-fast", "query-uuid", "query-kvm", "query-name", "system_reset", "system_powerdown", "stop",
         "cont", "query-fdsets", "quit"]

BAD_STR = ['1', '1.5', 'true', 'null', '[]', '{}', '["a"]']
BAD_INT = ['"x"', '"1"', '1.5', '1.0', '1e3', 'true', 'null', '[]', '{}',
           '9223372036854775808', '18446744073709551615', '-9223372036854775809']
BAD_BOOL = ['"yes"', '0', '1', 'null', '"true"', '[]']


def validation_lines():
    L = []
    for c in NOARG:
        L.append('{"execute": "%s", "arguments": {"x": 1}}' % c)
        L.append('{"execute": "%s", "arguments": {"x": 1}, "id": "v"}' % c)
    L.append('{"execute": "query-cpus-fast", "arguments": {"x": 1}}')
    for a in ['{}', '{"path": 1}', '{"path": null}', '{"x": 1}', '{"path": "/", "x": 1}', '{"x": 1, "path": 2}']:
        L.append('{"execute": "qom-list", "arguments": %s}' % a)
    for v in BAD_STR:
        L.append('{"execute": "qom-list", "arguments": {"path": %s}}' % v)
    for a in ['{}', '{"path": "/machine"}', '{"property": "type"}', '{"path": 1, "property": "type"}',
              '{"path": "/machine", "property": 1}', '{"path": 1}', '{"path": "/machine", "property": "type", "x": 1}',
              '{"x": 1, "property": 1}']:
        L.append('{"execute": "qom-get", "arguments": %s}' % a)
    for a in ['{}', '{"path": "/machine"}', '{"path": "/machine", "property": "type"}',
              '{"path": "/machine", "value": 1}', '{"property": "x", "value": 1}',
              '{"path": 1, "property": "x", "value": 1}', '{"path": "/machine", "property": null, "value": 1}',
              '{"path": "/machine", "property": "type", "value": 1, "x": 1}']:
        L.append('{"execute": "qom-set", "arguments": %s}' % a)
    for a in ['{"implements": 1}', '{"abstract": "yes"}', '{"abstract": 1}', '{"implements": null}',
              '{"x": 1}', '{"implements": "x", "abstract": true, "y": 1}']:
        L.append('{"execute": "qom-list-types", "arguments": %s}' % a)
    for a in ['{"enable": ["bogus"]}', '{"enable": ["oob", "bogus"]}', '{"enable": "oob"}', '{"enable": [1]}',
              '{"enable": [null]}', '{"enable": {}}']:
        L.append('{"execute": "qmp_capabilities", "arguments": %s}' % a)
    for a in ['{}', '{"command-line": 1}', '{"command-line": null}', '{"cpu-index": 0}',
              '{"command-line": "info status", "cpu-index": "0"}',
              '{"command-line": "info status", "cpu-index": 1.5}',
              '{"command-line": "info status", "cpu-index": 9223372036854775808}',
              '{"command-line": "info status", "cpu-index": 5}',
              '{"command-line": "info status", "cpu-index": -1}',
              '{"command-line": "info status", "x": 1}', '{"x": 1, "command-line": 2}']:
        L.append('{"execute": "human-monitor-command", "arguments": %s}' % a)
    for c in ("getfd", "closefd"):
        L.append('{"execute": "%s"}' % c)
        L.append('{"execute": "%s", "arguments": {}}' % c)
        for v in BAD_STR:
            L.append('{"execute": "%s", "arguments": {"fdname": %s}}' % (c, v))
        L.append('{"execute": "%s", "arguments": {"fdname": "a", "x": 1}}' % c)
        L.append('{"execute": "%s", "arguments": {"x": 1}}' % c)
    for v in BAD_INT:
        L.append('{"execute": "add-fd", "arguments": {"fdset-id": %s}}' % v)
    for v in BAD_STR:
        L.append('{"execute": "add-fd", "arguments": {"opaque": %s}}' % v)
    L.append('{"execute": "add-fd", "arguments": {"fdset-id": "x", "opaque": 1}}')
    L.append('{"execute": "add-fd", "arguments": {"x": 1}}')
    L.append('{"execute": "remove-fd"}')
    L.append('{"execute": "remove-fd", "arguments": {}}')
    L.append('{"execute": "remove-fd", "arguments": {"fd": 1}}')
    L.append('{"execute": "remove-fd", "arguments": {"fd": "x"}}')
    for v in BAD_INT:
        L.append('{"execute": "remove-fd", "arguments": {"fdset-id": %s}}' % v)
        L.append('{"execute": "remove-fd", "arguments": {"fdset-id": 1, "fd": %s}}' % v)
    L.append('{"execute": "remove-fd", "arguments": {"fdset-id": 1, "x": 1}}')
    return L


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_argument_validation(start, machine):
    check_lines(start, validation_lines(), MACHINES[machine])


def test_unexpected_member_order_examples(start):
    lines = []
    for perm in ["xyz", "xzy", "yxz", "yzx", "zxy", "zyx"]:
        lines.append('{"execute": "query-status", "arguments": {%s}}' % ", ".join('"%s": 1' % k for k in perm))
    lines += [
        '{"execute": "query-status", "arguments": {"a": 1, "b": 1}}',
        '{"execute": "query-status", "arguments": {"b": 1, "a": 1}}',
        '{"execute": "query-status", "arguments": {"foo": 1, "bar": 1}}',
        '{"execute": "query-status", "arguments": {"bar": 1, "foo": 1}}',
        '{"execute": "qom-list", "arguments": {"path": "/", "a": 1, "b": 1, "c": 1}}',
        '{"execute": "qom-list", "arguments": {"path": "/", "c": 1, "b": 1, "a": 1}}',
        '{"execute": "qom-list", "arguments": {"path": "/", "foo": 1, "bar": 1, "baz": 1}}',
    ]
    ours, qemu = both(start, PC, run_lines(lines))
    assert qemu[0][1] == [{"error": err("Parameter 'z' is unexpected")}]
    assert_same(ours, qemu)


def test_unexpected_member_order_random(start):
    rng = random.Random(20240903)
    alphabet = "abcdefghijklmnopqrstuvwxyz-_0123456789"
    targets = [("query-name", ""), ("query-uuid", ""), ("qom-list", '"path": "/"'),
               ("qom-get", '"path": "/machine", "property": "type"'),
               ("add-fd", '"fdset-id": 1, "opaque": "o"'), ("remove-fd", '"fdset-id": 1'),
               ("human-monitor-command", '"command-line": "info status"')]
    lines = []
    for _ in range(120):
        cmd, known = rng.choice(targets)
        keys = set()
        n = rng.randint(2, 14)
        while len(keys) < n:
            keys.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
        keys = sorted(keys - {"path", "property", "fdset-id", "opaque", "fd", "command-line",
                              "cpu-index", "value"})
        rng.shuffle(keys)
        members = ['"%s": %d' % (k, i) for i, k in enumerate(keys)]
        if known:
            members.insert(rng.randint(0, len(members)), known)
        lines.append('{"execute": "%s", "arguments": {%s}}' % (cmd, ", ".join(members)))
    check_lines(start, lines)


# --------------------------------------------------------------------------------------
# Run state: stop / cont / system_reset / system_powerdown / quit
# --------------------------------------------------------------------------------------

def is_guest_reset(msg):
    # SeaBIOS resets the machine itself shortly after it starts on pc; our emulator need
    # not, so firmware-initiated resets are not compared.
    return isinstance(msg, dict) and msg.get("event") == "RESET" and msg.get("data", {}).get("guest") is True


def status(vm):
    msgs = [m for m in vm.qmp.cmd("query-status") if not is_guest_reset(m)]
    assert len(msgs) == 1 and "return" in msgs[0], msgs
    return {"status": {k: msgs[0]["return"][k] for k in ("status", "running")}}


def runstate_script(vm):
    out = [status(vm)]
    for c in ["stop", "system_reset", "system_powerdown", "cont", "cont", "system_powerdown", "stop",
              "stop", "system_reset", "cont", "system_reset", "stop", "system_powerdown", "cont"]:
        msgs = [m for m in vm.qmp.cmd(c) if not is_guest_reset(m)]
        out.append([c, msgs])
        out.append(status(vm))
        out.append(["hmp", [m for m in vm.qmp.cmd("human-monitor-command", {"command-line": "info status"})
                            if not is_guest_reset(m)]])
    # no event is pending once the state settled: the next reply comes first
    out.append(["stop", [m for m in vm.qmp.cmd("stop") if not is_guest_reset(m)]])
    out.append(["query-name", [m for m in vm.qmp.cmd("query-name", id=1) if not is_guest_reset(m)]])
    return out


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_runstate_commands_and_events(start, machine):
    ours, qemu = both(start, MACHINES[machine], runstate_script)
    assert qemu[1] == ["stop", [{"return": {}}]]
    assert qemu[4][1][0] == {"event": "RESET", "data": {"guest": False, "reason": "host-qmp-system-reset"}}
    assert_same(ours, qemu)


def test_runstate_with_ids(start):
    def script(vm):
        return [[c, [m for m in vm.qmp.cmd(c, id=c) if not is_guest_reset(m)]]
                for c in ["stop", "system_reset", "system_powerdown", "cont", "stop"]]
    ours, qemu = both(start, NONE, script)
    assert_same(ours, qemu)


def test_none_without_S_starts_running(start):
    argv = [a for a in NONE if a != "-S"]
    ours, qemu = both(start, argv, lambda vm: [status(vm), vm.qmp.cmd("cont"), vm.qmp.cmd("stop"), status(vm)])
    assert_same(ours, qemu)


def quit_script(before):
    def script(vm):
        out = []
        for c in before:
            out.append([m for m in vm.qmp.cmd(c) if not is_guest_reset(m)])
        msgs = [m for m in vm.qmp.cmd("quit", id="q") if not is_guest_reset(m)]
        out.append(msgs)
        rest = []
        while True:
            m = vm.qmp.recv()
            if not is_guest_reset(m):
                rest.append(m)
            if m == EOF:
                break
        out.append(rest)
        out.append(["exit", vm.wait()])
        return out
    return script


@pytest.mark.parametrize("machine", ["pc", "none"])
@pytest.mark.parametrize("before", [[], ["cont"], ["cont", "stop"]], ids=["prelaunch", "running", "paused"])
def test_quit(start, machine, before):
    ours, qemu = both(start, MACHINES[machine], quit_script(before))
    assert qemu[-3:] == [[{"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}},
                          {"return": {}, "id": "q"}], [EOF], ["exit", 0]]
    assert_same(ours, qemu)


def test_quit_with_bad_arguments_does_not_quit(start):
    check_lines(start, ['{"execute": "quit", "arguments": {"x": 1}}', '{"execute": "quit", "arguments": []}',
                        '{"execute": "query-name"}'])


# --------------------------------------------------------------------------------------
# query-name / query-uuid / query-cpus-fast / query-chardev / query-machines
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    [], ["-name", "myvm"], ["-name", "guest=g1,debug-threads=on"], ["-name", "a b\u00e9"],
    ["-uuid", "550e8400-e29b-41d4-a716-446655440000"], ["-uuid", "550E8400-E29B-41D4-A716-446655440000"],
    ["-name", "n", "-uuid", "00000000-0000-0000-0000-000000000001"],
], ids=["default", "name", "name-guest", "name-utf8", "uuid", "uuid-upper", "both"])
@pytest.mark.parametrize("machine", ["pc", "none"])
def test_query_name_uuid(start, machine, extra):
    def script(vm):
        return [vm.qmp.cmd("query-name"), vm.qmp.cmd("query-uuid"),
                vm.qmp.cmd("human-monitor-command", {"command-line": "info name"}),
                vm.qmp.cmd("human-monitor-command", {"command-line": "info uuid"})]
    ours, qemu = both(start, MACHINES[machine] + extra, script)
    assert_same(ours, qemu)


def test_query_cpus_fast(start):
    def script(vm):
        r = vm.qmp.cmd("query-cpus-fast")
        assert len(r) == 1
        for cpu in r[0]["return"]:
            assert type(cpu["thread-id"]) is int and cpu["thread-id"] > 0
            cpu["thread-id"] = "<tid>"
        return r
    ours, qemu = both(start, PC, script)
    assert qemu == [{"return": [{"thread-id": "<tid>", "props": {"core-id": 0, "thread-id": 0, "socket-id": 0},
                                 "qom-path": "/machine/unattached/device[0]", "cpu-index": 0,
                                 "target": "x86_64"}]}]
    assert_same(ours, qemu)


def test_query_cpus_fast_none(start):
    ours, qemu = both(start, NONE, lambda vm: vm.qmp.cmd("query-cpus-fast"))
    assert qemu == [{"return": []}]
    assert_same(ours, qemu)


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_query_chardev_client_monitor(start, machine):
    def script(vm):
        return [vm.qmp.cmd("query-chardev"),
                vm.qmp.cmd("human-monitor-command", {"command-line": "info chardev"})]
    ours, qemu = both(start, MACHINES[machine], script)
    assert qemu[0] == [{"return": [{"frontend-open": True, "filename": "unix:", "label": "mon"}]}]
    assert_same(ours, qemu)


def test_query_chardev_qmp_server(start):
    def norm(vm, msgs):
        return json.loads(json.dumps(msgs).replace(vm.qmp_path, "<PATH>"))

    def chardevs(vm, q):
        r = q.cmd("query-chardev")
        assert len(r) == 1
        out = norm(vm, sorted(r[0]["return"], key=lambda c: c["label"]))
        for c in out:  # compared separately: test_query_chardev_unconnected_server_frontend_open
            if c["filename"].startswith("disconnected:"):
                c["frontend-open"] = "<compared separately>"
        return out

    def script(vm):
        out = [chardevs(vm, vm.qmp)]
        q = vm.connect_second()
        out.append(norm(vm, q.recv()["QMP"]["capabilities"]))
        out.append(q.cmd("query-name"))
        out.append(q.cmd("qmp_capabilities"))
        out.append(chardevs(vm, q))
        out.append(chardevs(vm, vm.qmp))
        # events go to every negotiated monitor
        out.append(vm.qmp.cmd("system_powerdown"))
        out.append(q.recv())
        out.append(q.cmd("query-name", id="second"))
        return out
    ours, qemu = both(start, NONE, script, second_qmp=True)
    assert qemu[0] == [{"frontend-open": "<compared separately>",
                        "filename": "disconnected:unix:<PATH>,server=on", "label": "compat_monitor0"},
                       {"frontend-open": True, "filename": "unix:", "label": "mon"}]
    assert_same(ours, qemu)


def test_query_chardev_unconnected_server_frontend_open(start):
    def script(vm):
        r = vm.qmp.cmd("query-chardev")
        return sorted(json.loads(json.dumps(r[0]["return"]).replace(vm.qmp_path, "<PATH>")),
                      key=lambda c: c["label"])
    ours, qemu = both(start, NONE, script, second_qmp=True)
    assert_same(ours, qemu)


def test_query_machines_none_entry_shape(start):
    ours, qemu = start(NONE)

    def entry(vm):
        r = vm.qmp.cmd("query-machines")
        assert len(r) == 1
        (e,) = [m for m in r[0]["return"] if m["name"] == "none"]
        return e
    o, q = entry(ours), entry(qemu)
    assert q == {"hotpluggable-cpus": False, "name": "none", "numa-mem-supported": False, "cpu-max": 1,
                 "deprecated": False, "default-ram-id": "ram"}
    # 9.1 adds the mandatory 'acpi' member (false for none); nothing else differs
    assert o == {**q, "acpi": False}


# --------------------------------------------------------------------------------------
# QOM
# --------------------------------------------------------------------------------------

def machine_type(vm):
    r = vm.qmp.cmd("qom-get", {"path": "/machine", "property": "type"})
    assert len(r) == 1 and isinstance(r[0].get("return"), str), r
    return r[0]["return"]


def test_qom_machine_type_shape(start):
    ours, qemu = start(PC)
    o, q = machine_type(ours), machine_type(qemu)
    assert q == "pc-i440fx-7.2-machine"
    assert o == "pc-i440fx-9.1-machine"
    assert re.fullmatch(r"pc-i440fx-\d+\.\d+-machine", o)
    ours_none, qemu_none = start(NONE)
    assert machine_type(ours_none) == machine_type(qemu_none) == "none-machine"


QOM_LINES = [
    '{"execute": "qom-get", "arguments": {"path": "/machine", "property": "nosuch"}}',
    '{"execute": "qom-get", "arguments": {"path": "/machine", "property": ""}}',
    '{"execute": "qom-get", "arguments": {"path": "", "property": "type"}}',
    '{"execute": "qom-get", "arguments": {"path": "/nosuch", "property": "type"}}',
    '{"execute": "qom-get", "arguments": {"path": "/nosuch/deeper", "property": "type"}}',
    '{"execute": "qom-get", "arguments": {"path": "/", "property": "type"}}',
    '{"execute": "qom-get", "arguments": {"path": "/", "property": "nosuch"}}',
    '{"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}}',
    '{"execute": "qom-list", "arguments": {"path": "/nosuch"}}',
    '{"execute": "qom-list", "arguments": {"path": "nosuch"}}',
    '{"execute": "qom-list", "arguments": {"path": ""}}',
    '{"execute": "qom-list", "arguments": {"path": "/nosuch/"}}',
    '{"execute": "qom-list", "arguments": {"path": "/machine/nosuch"}}',
    '{"execute": "qom-set", "arguments": {"path": "/nosuch", "property": "type", "value": 1}}',
    '{"execute": "qom-set", "arguments": {"path": "", "property": "type", "value": 1}}',
    '{"execute": "qom-set", "arguments": {"path": "/machine", "property": "nosuch", "value": 1}}',
    '{"execute": "qom-set", "arguments": {"path": "/machine", "property": "type", "value": "x"}}',
    '{"execute": "qom-list-types", "arguments": {"implements": "nosuch-type"}}',
    '{"execute": "qom-list-types", "arguments": {"implements": "nosuch-type", "abstract": true}}',
    '{"execute": "qom-list-types", "arguments": {"implements": "", "abstract": false}}',
]


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_qom_errors(start, machine):
    def script(vm):
        mtype = machine_type(vm)
        out = run_lines(QOM_LINES)(vm)
        return json.loads(json.dumps(out).replace(mtype, "<MACHINE-TYPE>"))
    ours, qemu = both(start, MACHINES[machine], script)
    assert qemu[0][1] == [{"error": err("Property '<MACHINE-TYPE>.nosuch' not found")}]
    assert qemu[10][1] == [{"error": err("Path '' is ambiguous")}]
    assert_same(ours, qemu)


def test_qom_list_types_samples(start):
    """Entries both versions have with identical content (the full list differs)."""
    # chardevs are not QOM objects in ours (no /chardevs container): chardev types are not compared
    samples = {"none-machine", "container", "object", "machine", "x86_64-cpu", "qemu64-x86_64-cpu"}

    def script(vm):
        out = []
        for args in [{}, {"abstract": True}, {"implements": "machine"}, {"implements": "cpu", "abstract": True}]:
            r = vm.qmp.cmd("qom-list-types", args)
            assert len(r) == 1
            out.append(sorted((e for e in r[0]["return"] if e["name"] in samples), key=lambda e: e["name"]))
        return out
    ours, qemu = both(start, NONE, script)
    assert_same(ours, qemu)


# --------------------------------------------------------------------------------------
# HMP through human-monitor-command
# --------------------------------------------------------------------------------------

def hmp(vm, line, **kw):
    return vm.qmp.cmd("human-monitor-command", {"command-line": line, **kw})


HMP_PC = ["xp /8xb 0xffff0", "xp /2xw 0xffff0", "xp /16xb 0xffff0", "xp /2xg 0xfffffff0", "xp /4xh 0xffff0",
          "xp /4xb 0x10000000", "xp /4xb 0x1000", "xp /2dw 0x1000", "xp 0x1000", "xp /x 0x1000",
          "nosuchcmd", "nosuchcmd arg1", "info nosuch", "", "   ", "xp", "xp /4xb", "info status", "info uuid"]
HMP_NONE = ["xp /4xb 0x1000000", "xp /2xg 0xfffff8", "xp /4xb 0xfff", "xp /1xg 0xfffff8", "nosuchcmd", "",
            "xp", "info status", "info name", "info chardev"]


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_hmp_prelaunch(start, machine):
    lines = HMP_PC if machine == "pc" else HMP_NONE
    ours, qemu = both(start, MACHINES[machine], lambda vm: [[line, hmp(vm, line)] for line in lines])
    if machine == "pc":
        assert qemu[0][1] == [{"return": "00000000000ffff0: 0xea 0x5b 0xe0 0x00 0xf0 0x30 0x36 0x2f\r\n"}]
    assert_same(ours, qemu)


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_hmp_info_status_states(start, machine):
    def script(vm):
        out = [hmp(vm, "info status")]
        for c in ["cont", "stop", "cont", "system_reset"]:
            vm.qmp.cmd(c)
            out.append([c, [m for m in hmp(vm, "info status") if not is_guest_reset(m)]])
        vm.qmp.cmd("stop")
        vm.qmp.cmd("system_reset")
        out.append(["reset-while-paused", [m for m in hmp(vm, "info status") if not is_guest_reset(m)]])
        return out
    ours, qemu = both(start, MACHINES[machine], script)
    assert qemu[0] == [{"return": "VM status: paused (prelaunch)\r\n"}]
    assert_same(ours, qemu)


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_hmp_cpu_index(start, machine):
    def script(vm):
        return [hmp(vm, "info status", **{"cpu-index": i}) for i in (0, 1, 5, -1)]
    ours, qemu = both(start, MACHINES[machine], script)
    assert_same(ours, qemu)


# --------------------------------------------------------------------------------------
# fd passing: getfd / closefd / add-fd / query-fdsets / remove-fd
# --------------------------------------------------------------------------------------

def devnull(n=1):
    return [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]


class FdScript:
    """Sends fd commands with SCM_RIGHTS; fd numbers in replies are replaced by labels
    naming which add-fd returned them (``add1``, ``add2``...)."""

    def __init__(self, vm):
        self.vm = vm
        self.labels: dict[int, str] = {}
        self.nadd = 0

    def send(self, name, args=None, nfds=0):
        fds = devnull(nfds)
        try:
            msgs = self.vm.qmp.cmd(name, args, fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        return self.norm(name, msgs)

    def norm(self, name, msgs):
        msgs = json.loads(json.dumps(msgs))
        for m in msgs:
            if not isinstance(m, dict):
                continue
            if name == "add-fd" and "return" in m:
                self.nadd += 1
                fd = m["return"]["fd"]
                assert type(fd) is int and fd >= 0
                self.labels[fd] = "add%d" % self.nadd
            if name == "query-fdsets" and "return" in m:
                for s in m["return"]:
                    for f in s["fds"]:
                        f["fd"] = self.labels.get(f["fd"], "unknown")
            if "return" in m and name == "add-fd":
                m["return"]["fd"] = self.labels[m["return"]["fd"]]
            if "error" in m:
                m["error"]["desc"] = re.sub(r"fd:(\d+)'", lambda g: "fd:%s'" % self.labels.get(int(g.group(1)), g.group(1)),
                                            m["error"]["desc"])
        return msgs

    def real(self, label):
        return next(fd for fd, lab in self.labels.items() if lab == label)


def fd_common(s: FdScript):
    out = []
    for name, args, n in [
        ("getfd", {"fdname": "a"}, 0),
        ("getfd", {"fdname": "1abc"}, 1),
        ("getfd", {"fdname": "1abc"}, 0),
        ("getfd", {"fdname": "9"}, 1),
        ("getfd", {}, 0),
        ("getfd", {"fdname": 1}, 0),
        ("getfd", {"fdname": "a"}, 1),
        ("getfd", {"fdname": "a"}, 1),
        ("getfd", {"fdname": ""}, 1),
        ("getfd", {"fdname": "-x"}, 1),
        ("getfd", {"fdname": "x y"}, 1),
        ("getfd", {"fdname": "a1"}, 1),
        ("closefd", {"fdname": "a"}, 0),
        ("closefd", {"fdname": "a"}, 0),
        ("closefd", {"fdname": "nosuch"}, 0),
        ("closefd", {"fdname": ""}, 0),
        ("closefd", {"fdname": "x y"}, 0),
        ("closefd", {"fdname": "1abc"}, 0),
        ("closefd", {}, 0),
        ("query-fdsets", None, 0),
        ("add-fd", None, 0),
        ("add-fd", {"fdset-id": 3}, 0),
        ("add-fd", None, 1),
        ("add-fd", None, 1),
        ("add-fd", {"fdset-id": 1}, 1),
        ("add-fd", {"fdset-id": 1, "opaque": "hello"}, 1),
        ("add-fd", {"fdset-id": 7, "opaque": "x"}, 1),
        ("add-fd", {"fdset-id": -1}, 1),
        ("add-fd", {"fdset-id": "x"}, 0),
        ("add-fd", {"fdset-id": 1.5}, 0),
        ("add-fd", None, 1),
        ("add-fd", {"opaque": ""}, 1),
        ("add-fd", {"opaque": "caf\u00e9"}, 1),
        ("add-fd", {"fdset-id": 0, "opaque": "z"}, 1),
        ("add-fd", {"fdset-id": 9223372036854775807}, 1),
        ("query-fdsets", None, 0),
        ("remove-fd", {"fdset-id": 99}, 0),
        ("remove-fd", {"fdset-id": 99, "fd": 3}, 0),
        ("remove-fd", {"fdset-id": -1}, 0),
        ("remove-fd", {"fdset-id": -1, "fd": -1}, 0),
        ("remove-fd", {"fdset-id": 1, "fd": 999}, 0),
        ("remove-fd", {"fdset-id": 1, "fd": -5}, 0),
        ("remove-fd", {"fdset-id": 1.5}, 0),
        ("remove-fd", {"fdset-id": 1, "fd": "x"}, 0),
        ("query-fdsets", None, 0),
    ]:
        out.append([name, args, n, s.send(name, args, n)])
    return out


@pytest.mark.parametrize("machine", ["pc", "none"])
def test_fd_commands_prelaunch(start, machine):
    def script(vm):
        return fd_common(FdScript(vm))
    ours, qemu = both(start, MACHINES[machine], script)
    assert_same(ours, qemu)


def test_add_fd_negative_id_without_fd(start):
    def script(vm):
        s = FdScript(vm)
        return [s.send("add-fd", {"fdset-id": -1}, 0), s.send("add-fd", {"fdset-id": -1, "opaque": "y"}, 0)]
    ours, qemu = both(start, NONE, script)
    assert_same(ours, qemu)


def test_fd_unconsumed_fd_stays_pending(start):
    """An fd that came with a command that did not take it (validation error, closefd) waits
    for the next command that takes one."""
    def script(vm):
        s = FdScript(vm)
        return [s.send("getfd", {}, 1), s.send("add-fd", None, 0), s.send("add-fd", None, 0),
                s.send("closefd", {"fdname": "nosuch"}, 1), s.send("getfd", {"fdname": "g"}, 0),
                s.send("closefd", {"fdname": "g"}, 0), s.send("add-fd", {"fdset-id": "x"}, 1),
                s.send("add-fd", {"fdset-id": 4}, 0), s.send("query-fdsets")]
    ours, qemu = both(start, NONE, script)
    assert_same(ours, qemu)


def test_fd_extra_and_stale_fds_are_closed(start):
    def script(vm):
        s = FdScript(vm)
        out = [s.send("getfd", {"fdname": "two"}, 2), s.send("add-fd", None, 0)]
        # two unclaimed fds in two messages: only the latest one is kept
        out += [s.send("getfd", {}, 1), s.send("closefd", {"fdname": "nosuch"}, 1),
                s.send("add-fd", None, 0), s.send("add-fd", None, 0), s.send("query-fdsets")]
        return out
    ours, qemu = both(start, NONE, script)
    assert_same(ours, qemu)


def test_fd_remove_while_running(start):
    """remove-fd semantics agree between 7.2 and 9.1 only while the VM runs."""
    def script(vm):
        s = FdScript(vm)
        out = fd_common(s)
        out.append(["cont", vm.qmp.cmd("cont")])
        steps = [
            ("query-fdsets", None),
            ("remove-fd", {"fdset-id": 1, "fd": s.real("add3")}),
            ("query-fdsets", None),
            ("remove-fd", {"fdset-id": 1, "fd": s.real("add3")}),
            ("remove-fd", {"fdset-id": 7}),
            ("query-fdsets", None),
            ("remove-fd", {"fdset-id": 7}),
            ("remove-fd", {"fdset-id": 1, "fd": s.real("add2")}),
            ("remove-fd", {"fdset-id": 1, "fd": s.real("add3")}),
            ("remove-fd", {"fdset-id": 0, "fd": s.real("add3")}),
            ("query-fdsets", None),
            ("remove-fd", {"fdset-id": 1}),
            ("add-fd", None),
            ("query-fdsets", None),
        ]
        for name, args in steps:
            label_args = json.loads(json.dumps(args))
            if args and "fd" in args:
                label_args["fd"] = s.labels[args["fd"]]
            out.append([name, label_args, s.send(name, args, 1 if name == "add-fd" else 0)])
        return out
    ours, qemu = both(start, NONE, script)
    assert_same(ours, qemu)


# --------------------------------------------------------------------------------------
# query-qmp-schema: structural checks on ours, plus the commands that did not change
# --------------------------------------------------------------------------------------

BUILTINS = {"str": "string", "number": "number", "int": "int", "bool": "boolean", "null": "null", "any": "value"}
UNCHANGED = ["qmp_capabilities", "quit", "query-chardev", "qom-list", "qom-get", "qom-set", "qom-list-types",
             "query-uuid", "system_reset", "system_powerdown", "query-name", "stop", "cont",
             "human-monitor-command", "getfd", "closefd", "add-fd", "remove-fd", "query-fdsets",
             "query-qmp-schema", "SHUTDOWN", "POWERDOWN", "RESET", "STOP", "RESUME"]


def schema(vm):
    r = vm.qmp.cmd("query-qmp-schema")
    assert len(r) == 1 and "return" in r[0]
    return r[0]["return"]


def refs(e):
    mt = e["meta-type"]
    if mt == "command":
        return [e["arg-type"], e["ret-type"]]
    if mt == "event":
        return [e["arg-type"]]
    if mt == "object":
        return [m["type"] for m in e["members"]] + [v["type"] for v in e.get("variants", [])]
    if mt == "alternate":
        return [m["type"] for m in e["members"]]
    if mt == "array":
        return [e["element-type"]]
    return []


def expand(by_name, name, stack=()):
    """A type reference with masked names resolved: a comparable, name-free tree."""
    if name in stack:
        return ["<recursive>"]
    e = by_name[name]
    mt = e["meta-type"]
    sub = lambda n: expand(by_name, n, stack + (name,))  # noqa: E731
    if mt == "builtin":
        return ["builtin", e["name"], e["json-type"]]
    if mt == "enum":
        return ["enum", e["members"], e["values"], e.get("features", [])]
    if mt == "array":
        return ["array", sub(e["element-type"])]
    if mt == "alternate":
        return ["alternate", [sub(m["type"]) for m in e["members"]]]
    if mt == "object":
        return ["object", [{**m, "type": sub(m["type"])} for m in e["members"]], e.get("tag"),
                [{"case": v["case"], "type": sub(v["type"])} for v in e.get("variants", [])],
                e.get("features", [])]
    if mt == "command":
        return ["command", sub(e["arg-type"]), sub(e["ret-type"]), e.get("allow-oob", False),
                e.get("features", [])]
    if mt == "event":
        return ["event", sub(e["arg-type"]), e.get("features", [])]
    raise AssertionError(e)


def test_schema_structure_ours():
    (vm,) = [VM(OURS, PC)]
    try:
        s = schema(vm)
        assert s[0:6] == [
            {"name": "query-status", "ret-type": "1", "meta-type": "command", "arg-type": "0"},
            {"name": "SHUTDOWN", "meta-type": "event", "arg-type": "2"},
            {"name": "POWERDOWN", "meta-type": "event", "arg-type": "0"},
            {"name": "RESET", "meta-type": "event", "arg-type": "3"},
            {"name": "STOP", "meta-type": "event", "arg-type": "0"},
            {"name": "RESUME", "meta-type": "event", "arg-type": "0"},
        ]
        names = [e["name"] for e in s]
        assert len(names) == len(set(names)), "an entity is described twice"
        by_name = {e["name"]: e for e in s}
        assert by_name["0"] == {"name": "0", "members": [], "meta-type": "object"}
        assert by_name["1"]["meta-type"] == "object"
        assert [m["name"] for m in by_name["1"]["members"]] == ["running", "status"]
        # commands and events first, then the types
        kinds = [e["meta-type"] in ("command", "event") for e in s]
        nce = kinds.index(False)
        assert not any(kinds[nce:])
        # every reference is described, and every type is referenced
        referenced = set()
        for e in s:
            for r in refs(e):
                assert r in by_name, "%s references undescribed %s" % (e["name"], r)
                referenced.add(r)
        assert {e["name"] for e in s[nce:]} == referenced
        # masking: masked names are "0".."N-1" in increasing order, arrays are [elem] and precede elem
        masked = [e["name"] for e in s[nce:] if e["meta-type"] in ("object", "enum", "alternate")]
        assert masked == [str(i) for i in range(len(masked))]
        for i, e in enumerate(s[nce:], nce):
            mt = e["meta-type"]
            if mt == "array":
                assert e["name"] == "[%s]" % e["element-type"]
                assert names.index(e["element-type"]) > i or e["element-type"] in BUILTINS
            elif mt == "builtin":
                assert BUILTINS[e["name"]] == e["json-type"]
            else:
                assert re.fullmatch(r"0|[1-9]\d*", e["name"]), e
        # numbering follows first reference order (BFS of _use_type)
        order = []

        def use(r):
            if r not in order:
                order.append(r)
                if r.startswith("["):  # _use_type(array) names the element right away
                    use(r[1:-1])
        for e in s:
            for r in refs(e):
                use(r)
        assert order == [e["name"] for e in s[nce:]]
        # per-meta-type key sets
        keys = {"command": {"name", "meta-type", "arg-type", "ret-type"}, "event": {"name", "meta-type", "arg-type"},
                "enum": {"name", "meta-type", "members", "values"}, "array": {"name", "meta-type", "element-type"},
                "builtin": {"name", "meta-type", "json-type"}, "alternate": {"name", "meta-type", "members"},
                "object": {"name", "meta-type", "members"}}
        for e in s:
            extra = set(e) - keys[e["meta-type"]]
            allowed = {"features"} | ({"tag", "variants"} if e["meta-type"] == "object" else set()) | \
                ({"allow-oob"} if e["meta-type"] == "command" else set())
            assert extra <= allowed, e
            if "features" in e:
                assert e["features"]
            if e["meta-type"] == "object":
                for m in e["members"]:
                    assert set(m) <= {"name", "type", "default", "features"}, m
                    assert m.get("default", None) is None
            if e["meta-type"] == "enum":
                assert [m["name"] for m in e["members"]] == e["values"]
        # no integer builtins other than int; no unused builtins
        assert {e["name"] for e in s if e["meta-type"] == "builtin"} <= set(BUILTINS)
        assert by_name["human-monitor-command"]["features"] == ["savevm-monitor-nodes"]
        assert "allow-oob" not in by_name["query-status"]
    finally:
        vm.close()


def test_schema_unchanged_commands_match_72(start):
    ours, qemu = start(PC)
    so, sq = schema(ours), schema(qemu)
    bo, bq = {e["name"]: e for e in so}, {e["name"]: e for e in sq}
    for name in UNCHANGED:
        assert name in bo, name
        assert_same(expand(bo, name), expand(bq, name))
