"""Tests for qtest.client: wire lines against a fake server, behaviour against real binaries.

The real-binary tests run against every binary in ``BINARIES``
(:func:`qtest.pytest_plugin.binaries_under_test`): Debian's QEMU if installed,
and this project's ``emu-system-x86_64`` once it is on PATH and usable.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from qtest.client import QTestClient, QTestEOF, QTestError, parse_reply_int
from qtest.machine import QTestMachine
from qtest.pytest_plugin import binaries_under_test

MACHINE_ARGS = ["-M", "pc", "-m", "64M", "-nodefaults", "-S"]


BINARIES = binaries_under_test()


@pytest.fixture(params=BINARIES)
def binary(request: pytest.FixtureRequest) -> tuple[str, bool]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def vm(binary: tuple[str, bool]) -> Iterator[QTestMachine]:
    path, accel = binary
    m = QTestMachine(path, MACHINE_ARGS, accel_qtest=accel)
    try:
        yield m
    finally:
        m.quit(check=False)
    assert m.exitcode == 0, m.stderr_text()


@pytest.fixture
def qt(vm: QTestMachine) -> QTestClient:
    return vm.qtest


# --------------------------------------------------------------------------- fake server


class FakeServer:
    """Answers each received line through ``handler(line) -> list of reply lines``; records lines."""

    def __init__(self, handler: Callable[[bytes], list[bytes]]) -> None:
        self.client_sock, self._server_sock = socket.socketpair()
        self.lines: list[bytes] = []
        self._handler = handler
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._server_sock as s:
            try:
                self._serve(s)
            except (ConnectionResetError, BrokenPipeError):
                pass  # the client went away

    def _serve(self, s: socket.socket) -> None:
        buf = b""
        while True:
            data = s.recv(1 << 16)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            out = []
            for line in lines:
                self.lines.append(line)
                replies = self._handler(line)
                if replies is None:  # hang up
                    s.sendall(b"".join(r + b"\n" for r in out))
                    return
                out.extend(replies)
            s.sendall(b"".join(r + b"\n" for r in out))

    def close(self) -> None:
        self.client_sock.close()
        self._thread.join()


@pytest.fixture
def fake() -> Generator[Callable[[Callable[[bytes], list[bytes]]], tuple[QTestClient, FakeServer]], None, None]:
    servers: list[FakeServer] = []

    def make(handler: Callable[[bytes], list[bytes]]) -> tuple[QTestClient, FakeServer]:
        srv = FakeServer(handler)
        servers.append(srv)
        return QTestClient(srv.client_sock, timeout=30), srv

    yield make
    for srv in servers:
        srv.close()


def ok_handler(line: bytes) -> list[bytes]:
    cmd = line.split(b" ")[0]
    if cmd in (b"readb", b"readw", b"readl", b"readq"):
        return [b"OK 0x0000000000000012"]
    if cmd in (b"inb", b"inw", b"inl"):
        return [b"OK 0x00ff"]
    if cmd in (b"clock_step", b"clock_set"):
        return [b"OK 1000"]
    if cmd == b"read":
        n = int(line.split(b" ")[2], 0)
        return [b"OK 0x" + b"ab" * n]
    if cmd == b"b64read":
        return [b"OK AQID"]
    if cmd == b"endianness":
        return [b"OK little"]
    return [b"OK"]


# Each call of the client beside what it returns against ok_handler and the lines it puts on the
# wire (libqtest's formatting; none for an empty transfer; get_irq first drains pending IRQ lines).
WIRE_CALLS: list[tuple[str, tuple[Any, ...], Any, list[str]]] = [
    ("endianness", (), "little", ["endianness"]),
    ("outb", (0x70, 0xE), None, ["outb 0x70 0xe"]),
    ("outw", (0x1F0, 0x1234), None, ["outw 0x1f0 0x1234"]),
    ("outl", (0xCF8, 0x80000000), None, ["outl 0xcf8 0x80000000"]),
    ("inb", (0x71,), 0xFF, ["inb 0x71"]),
    ("inw", (0x2,), 0xFF, ["inw 0x2"]),
    ("inl", (0x3,), 0xFF, ["inl 0x3"]),
    ("writeb", (0x1000, 0x5A), None, ["writeb 0x1000 0x5a"]),
    ("writew", (0x1000, 0x5A5A), None, ["writew 0x1000 0x5a5a"]),
    ("writel", (0x1000, 1), None, ["writel 0x1000 0x1"]),
    ("writeq", (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF), None, ["writeq 0xffffffffffffffff 0xffffffffffffffff"]),
    ("readb", (0x1000,), 0x12, ["readb 0x1000"]),
    ("readw", (0x1000,), 0x12, ["readw 0x1000"]),
    ("readl", (0x1000,), 0x12, ["readl 0x1000"]),
    ("readq", (0x1000,), 0x12, ["readq 0x1000"]),
    ("memread", (0x2000, 0), b"", []),
    ("memread", (0x2000, 2), b"\xab\xab", ["read 0x2000 0x2"]),
    ("memwrite", (0x2000, b""), None, []),
    ("memwrite", (0x2000, b"\x01\x02\xfe"), None, ["write 0x2000 0x3 0x0102fe"]),
    ("bufread", (0x3000, 3), b"\x01\x02\x03", ["b64read 0x3000 0x3"]),
    ("bufwrite", (0x3000, b""), None, []),
    ("bufwrite", (0x3000, b"\x01\x02\x03"), None, ["b64write 0x3000 0x3 AQID"]),
    ("memset", (0x4000, 0x1AB, 16), None, ["memset 0x4000 0x10 0xab"]),
    ("clock_step", (), 1000, ["clock_step"]),
    ("clock_step", (100,), 1000, ["clock_step 100"]),
    ("clock_set", (5000,), 1000, ["clock_set 5000"]),
    ("irq_intercept_in", ("ioapic",), None, ["irq_intercept_in ioapic"]),
    ("irq_intercept_out", ("/machine/x",), None, ["irq_intercept_out /machine/x"]),
    ("irq_intercept_out", ("/machine/x", "sysbus-irq"), None, ["irq_intercept_out /machine/x sysbus-irq"]),
    ("set_irq_in", ("ioapic", None, 4, 1), None, ["set_irq_in ioapic unnamed-gpio-in 4 1"]),
    ("set_irq_in", ("dev", "named", 2, 0), None, ["set_irq_in dev named 2 0"]),
    ("get_irq", (4,), False, ["inb 0x0"]),
    ("module_load", ("ui-", "curses"), None, ["module_load ui- curses"]),
]


def test_wire_lines_match_libqtest(fake) -> None:  # type: ignore[no-untyped-def]
    qt, srv = fake(ok_handler)
    returned = [getattr(qt, name)(*args) for name, args, _, _ in WIRE_CALLS]
    # with the types: False is not 0, b"" is not None
    assert [(type(r), r) for r in returned] == [(type(r), r) for _, _, r, _ in WIRE_CALLS]
    assert [ln.decode() for ln in srv.lines] == [line for *_, lines in WIRE_CALLS for line in lines]


def test_irq_lines_are_skipped_and_recorded(fake) -> None:  # type: ignore[no-untyped-def]
    def handler(line: bytes) -> list[bytes]:
        if line.startswith(b"set_irq_in"):
            n, level = line.split(b" ")[3:5]
            return [b"IRQ %s %s" % (b"raise" if level != b"0" else b"lower", n), b"OK"]
        if line == b"inb 0x0":
            return [b"IRQ raise 7", b"IRQ lower 3", b"OK 0x00ff"]
        return ok_handler(line)

    qt, _ = fake(handler)
    levels = qt.irq_levels
    qt.set_irq_in("ioapic", None, 3, 1)
    assert levels == {3: True}
    assert qt.readb(0) == 0x12
    assert qt.get_irq(7) is True
    assert qt.get_irq(3) is False
    assert dict(levels) == {3: False, 7: True}
    with pytest.raises(TypeError):
        levels[1] = True  # type: ignore[index]


def test_fail_and_err_raise(fake) -> None:  # type: ignore[no-untyped-def]
    def handler(line: bytes) -> list[bytes]:
        if line.startswith(b"write"):
            return [b"ERR invalid argument size"]
        if line.startswith(b"module_load"):
            return [b"FAIL"]
        return [b"FAIL Unknown command '%s'" % line.split(b" ")[0]]

    qt, _ = fake(handler)
    assert qt.raw("foo bar") == "FAIL Unknown command 'foo'"
    with pytest.raises(QTestError) as ei:
        qt.cmd("foo")
    assert str(ei.value) == ei.value.reply == "FAIL Unknown command 'foo'"
    assert ei.value.command == "foo"
    with pytest.raises(QTestError, match="^ERR invalid argument size$"):
        qt.memwrite(0, b"\x01")
    with pytest.raises(QTestError, match="^FAIL$"):
        qt.module_load("foo-", "bar")
    with pytest.raises(QTestError):
        qt.readb(0)


def test_eof_raises_qtest_eof(fake) -> None:  # type: ignore[no-untyped-def]
    qt, _ = fake(lambda line: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(QTestEOF):
        qt.readb(0)
    assert issubclass(QTestEOF, ConnectionError)


def test_non_utf8_reply_round_trips(fake) -> None:  # type: ignore[no-untyped-def]
    qt, srv = fake(lambda line: [b"FAIL Unknown command '" + line + b"'"])
    word = b"\xff\xfe\tx\r".decode("utf-8", "surrogateescape")
    reply = qt.raw(word)
    assert reply.encode("utf-8", "surrogateescape") == b"FAIL Unknown command '\xff\xfe\tx\r'"
    assert srv.lines == [b"\xff\xfe\tx\r"]


def test_reply_split_across_reads(fake) -> None:  # type: ignore[no-untyped-def]
    # One big reply (several recv() calls) followed by a small one.
    big = 3 * (1 << 20)
    qt, _ = fake(lambda line: [b"OK 0x" + b"00" * big] if line.startswith(b"read ") else [b"OK"])
    assert qt.memread(0, big) == bytes(big)
    assert qt.raw("whatever") == "OK"


def test_pipeline_fake_with_irqs(fake) -> None:  # type: ignore[no-untyped-def]
    def handler(line: bytes) -> list[bytes]:
        i = int(line.split(b" ")[1], 0)
        return [b"IRQ raise %d" % (i % 256), b"OK 0x%016x" % i]

    qt, _ = fake(handler)
    lines = [f"readq 0x{i:x}" for i in range(30000)]
    replies = qt.pipeline(lines)
    assert replies == [f"OK 0x{i:016x}" for i in range(30000)]
    assert len(qt.irq_levels) == 256
    assert qt.pipeline([]) == []


def test_file_pair_transport() -> None:
    # Drive the client over two pipes, as with "-qtest stdio".
    c2s_r, c2s_w = os.pipe()
    s2c_r, s2c_w = os.pipe()

    def serve() -> None:
        with os.fdopen(c2s_r, "rb") as rin, os.fdopen(s2c_w, "wb", buffering=0) as wout:
            for line in rin:
                wout.write(b"IRQ raise 1\n" if line.startswith(b"inb") else b"")
                wout.write(ok_handler(line.rstrip(b"\n"))[0] + b"\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    qt = QTestClient((os.fdopen(s2c_r, "rb"), os.fdopen(c2s_w, "wb")))
    assert qt.endianness() == "little"
    assert qt.big_endian is False
    assert qt.inb(0x70) == 0xFF
    assert qt.get_irq(1) is True
    assert qt.pipeline(["readb 0x0"] * 5000) == ["OK 0x0000000000000012"] * 5000
    qt.close()
    t.join()
    assert qt.closed


def test_parse_reply_int() -> None:
    assert parse_reply_int("OK 0x00ff") == 0xFF
    assert parse_reply_int("OK 27462700") == 27462700
    with pytest.raises(QTestError):
        parse_reply_int("FAIL 5")
    with pytest.raises(QTestError):
        parse_reply_int("OK")


# --------------------------------------------------------------------------- real binaries


def test_endianness(qt: QTestClient) -> None:
    assert qt.endianness() == "little"
    assert not qt.big_endian


def test_write_read_scalar(qt: QTestClient) -> None:
    qt.writeb(0x1000, 0x5A)
    assert qt.readb(0x1000) == 0x5A
    qt.writew(0x1000, 0x12345)  # truncated to 16 bits
    assert qt.readw(0x1000) == 0x2345
    qt.writel(0x1000, 0xDEADBEEF)
    assert qt.readl(0x1000) == 0xDEADBEEF
    qt.writeq(0x1000, 0x0123456789ABCDEF)
    assert qt.readq(0x1000) == 0x0123456789ABCDEF
    # Target (little-endian) byte order.
    assert qt.readw(0x1001) == 0xABCD
    assert qt.readl(0x1001) == 0x6789ABCD
    assert qt.memread(0x1000, 8) == bytes.fromhex("efcdab8967452301")
    # Unassigned memory beyond 64 MiB reads as zero.
    qt.writel(0x8000000, 0x11223344)
    assert qt.readl(0x8000000) == 0


def test_memwrite_memread_4k(qt: QTestClient) -> None:
    data = random.randbytes(4096)
    qt.memwrite(0x20000, data)
    assert qt.memread(0x20000, 4096) == data
    assert qt.memread(0x20000, 0) == b""
    assert qt.bufread(0x20000, 4096) == data


def test_bufwrite_bufread_1m(qt: QTestClient) -> None:
    data = random.randbytes(1 << 20)
    qt.bufwrite(0x100000, data)
    assert qt.bufread(0x100000, 1 << 20) == data
    assert qt.memread(0x100000 + 12345, 100) == data[12345:12445]
    assert qt.bufread(0x100000, 0) == b""


def test_memset(qt: QTestClient) -> None:
    qt.memset(0x3000, 0xAB, 64)
    qt.memset(0x3000 + 64, 0x1CD, 1)  # only the low byte is used
    qt.memset(0x3000, 0x00, 0)  # size 0 is a no-op
    assert qt.memread(0x2FFF, 66) == b"\x00" + b"\xab" * 64 + b"\xcd"


def test_port_io(qt: QTestClient) -> None:
    assert qt.inb(0x1234) == 0xFF
    assert qt.inw(0x1234) == 0xFFFF
    assert qt.inl(0x1234) == 0xFFFFFFFF
    # CMOS register 0x0e round trip.
    qt.outb(0x70, 0x0E)
    qt.outb(0x71, 0x5A)
    qt.outb(0x70, 0x0E)
    assert qt.inb(0x71) == 0x5A
    # i440FX host bridge identity in PCI config space.
    qt.outl(0xCF8, 0x80000000)
    assert qt.inl(0xCFC) == 0x12378086
    assert qt.inw(0xCFE) == 0x1237


def test_irq_intercept_and_set_irq_in(qt: QTestClient) -> None:
    qt.irq_intercept_in("ioapic")
    assert qt.get_irq(4) is False
    qt.set_irq_in("ioapic", None, 4, 1)
    assert qt.irq_levels.get(4) is True
    assert qt.get_irq(4) is True
    qt.set_irq_in("ioapic", "unnamed-gpio-in", 4, 0)
    assert qt.get_irq(4) is False
    qt.set_irq_in("ioapic", None, 0x17, 1)
    assert qt.get_irq(23) is True
    # i8042 raises IRQ 1 when its output buffer is written, lowers it when read.
    qt.outb(0x64, 0xD2)
    qt.outb(0x60, 0x55)
    assert qt.get_irq(1) is True
    assert qt.inb(0x60) == 0x55
    assert qt.get_irq(1) is False
    with pytest.raises(QTestError, match="^FAIL IRQ intercept already enabled$"):
        qt.irq_intercept_in("/machine/i440fx")
    with pytest.raises(QTestError, match="^FAIL Unknown device$"):
        qt.set_irq_in("nonexistent", "x", 0, 0)


def test_unknown_command(qt: QTestClient) -> None:
    assert qt.raw("foo") == "FAIL Unknown command 'foo'"
    with pytest.raises(QTestError) as ei:
        qt.raw("foo", check=True)
    assert ei.value.reply == str(ei.value) == "FAIL Unknown command 'foo'"
    assert qt.raw("write 0x2000 4 0x") == "ERR invalid argument size"
    assert qt.raw("readb 0x1000 ") == "OK 0x0000000000000000"
    assert qt.readb(0x1000) == 0  # still in sync


def test_pipeline_20000_readb(qt: QTestClient) -> None:
    qt.writeb(0x1000, 0x77)
    replies = qt.pipeline(["readb 0x1000"] * 20000)
    assert len(replies) == 20000
    assert set(replies) == {"OK 0x0000000000000077"}
    assert qt.readb(0x1000) == 0x77


def test_pipeline_mixed_with_irqs(qt: QTestClient) -> None:
    qt.irq_intercept_in("ioapic")
    lines = [f"set_irq_in ioapic unnamed-gpio-in 5 {i % 2}" for i in range(2001)]
    lines.append("foo")
    replies = qt.pipeline(lines)
    assert replies[:-1] == ["OK"] * 2001
    assert replies[-1] == "FAIL Unknown command 'foo'"
    assert qt.irq_levels[5] is False
    with pytest.raises(QTestError, match="Unknown command 'foo'"):
        qt.pipeline(["readb 0x0", "foo", "readb 0x0"], check=True)


def test_clock(qt: QTestClient, binary: tuple[str, bool]) -> None:
    _, accel = binary
    if not accel:
        with pytest.raises(QTestError, match="^FAIL Unknown command 'clock_step'$"):
            qt.clock_step(1000)
        return
    start = qt.clock_step(1000)
    assert start >= 1000
    assert qt.clock_set(start + 5000) == start + 5000


def test_module_load(qt: QTestClient, binary: tuple[str, bool]) -> None:
    # Debian's modular QEMU answers a bare FAIL for a missing module; a build
    # without module support answers OK to everything (spec §4.16).
    reply = qt.raw("module_load foo- bar")
    assert reply in ("OK", "FAIL")
    if reply == "FAIL":
        with pytest.raises(QTestError) as ei:
            qt.module_load("foo-", "bar")
        assert ei.value.reply == "FAIL"
    if not binary[1]:  # Debian QEMU
        assert reply == "FAIL"
