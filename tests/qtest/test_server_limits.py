"""The qtest server on over-long tokens and lines (issue 11, findings 1 and 2).

1. A token longer than 64 KiB (a number, a QOM path, a GPIO name) reached the parsers as a
   memoryview and ended the server with a traceback. Every command must answer QEMU's grammar
   (a FAIL line where real QEMU aborts, qtest-protocol.md §13) and keep serving.
2. A 16 MiB line of spaces took 5 s and 189 MiB before its FAIL: split into 16 million tokens.
   Lines now cost time linear in their length, and memory only for the part a reply can depend
   on (the first ``MAX_TOKENS`` tokens), while long valid lines (megabytes of hex) still work.
Memory is measured with tracemalloc around ``feed`` (the input chunks are built beforehand).
"""
from __future__ import annotations

import base64
import os
import tracemalloc
from collections.abc import Callable

import pytest
from test_server import Harness

from qtest.server import BIG_LINE, MAX_ECHO, MAX_TOKENS

MiB = 1 << 20
LONG = 70_000  # the finding's token length (> BIG_LINE)
ONES = b"1" * LONG
RANGE_FAIL = b"FAIL number out of range '" + b"1" * MAX_ECHO + b"'"


def feed_chunks(h: Harness, data: bytes, chunk: int = MiB) -> tuple[list[bytes], int]:
    """Feeds ``data`` in ``chunk``-sized pieces; returns (reply lines, peak traced bytes)."""
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    h.out.clear()
    tracemalloc.start()
    try:
        for piece in pieces:
            h.server.feed(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return bytes(h.out).split(b"\n")[:-1], peak


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---------------------------------------------------------------- finding 1: long tokens

NUMBER_COMMANDS = [
    b"readb %s", b"readq %s", b"writeb %s 0x1", b"writel 0x1000 %s", b"inb %s", b"outw 0x80 %s",
    b"read %s 4", b"read 0x1000 %s", b"b64read %s 4", b"write %s 1 0x00", b"b64write 0x1000 %s AAAA",
    b"memset 0x1000 4 %s", b"clock_step %s", b"clock_set %s", b"set_irq_in ioapic unnamed-gpio-in %s 1",
    b"set_irq_in ioapic unnamed-gpio-in 4 %s",
]


@pytest.mark.parametrize("template", NUMBER_COMMANDS, ids=lambda t: t.decode())
def test_a_70000_digit_number_fails_in_every_command_and_the_server_goes_on(h, template):
    assert h.send(template % ONES + b"\nendianness\n") == [RANGE_FAIL, b"OK little"]


@pytest.mark.parametrize("token,reply", [
    (ONES + b"g", b"FAIL invalid number '" + b"1" * MAX_ECHO + b"'"),
    (b"\t" * LONG + b"0x1000", b"OK 0x000000000000005a"),  # leading whitespace is allowed
    (b"0" * LONG + b"10000", b"OK 0x000000000000005a"),  # octal 010000 = 0x1000
    (b"-" + b"0" * LONG, b"OK 0x0000000000000000"),
], ids=["invalid", "leading-tabs", "leading-zeros", "minus-zero"])
def test_long_number_tokens_keep_c_strtoull_syntax(h, token, reply):
    h.cmd("writeb 0x1000 0x5a")
    assert h.send(b"readb " + token + b"\nendianness\n") == [reply, b"OK little"]


@pytest.mark.parametrize("line,reply", [
    (b"irq_intercept_in " + b"a" * LONG, b"FAIL Unknown device"),
    (b"irq_intercept_out " + b"a" * LONG, b"FAIL Unknown device"),
    (b"set_irq_in " + b"a" * LONG + b" unnamed-gpio-in 0 1", b"FAIL Unknown device"),
    (b"set_irq_in ioapic " + b"g" * LONG + b" 0 1", b"FAIL no such GPIO"),
    (b"irq_intercept_in " + b"a/" * (8 * MiB), b"FAIL Unknown device"),  # millions of components
    (b"irq_intercept_in " + b"/" * LONG + b"machine", b"FAIL Unknown device"),  # /machine: not a device
    (b"module_load " + b"m" * LONG + b" " + b"n" * LONG, b"OK"),
    (b"X" * LONG, b"FAIL Unknown command '" + b"X" * MAX_ECHO + b"'"),
], ids=["intercept-in", "intercept-out", "set-irq-path", "gpio-name", "8M-components", "slashes", "module",
        "command-word"])
def test_long_paths_and_names_fail_like_short_ones(h, line, reply):
    assert h.send(line + b"\nendianness\n") == [reply, b"OK little"]


def qom_path(obj) -> bytes:
    parts = []
    while obj.parent is not None:
        parts.append(obj.qom_name.encode())
        obj = obj.parent
    return b"/" + b"/".join(reversed(parts))


def test_a_long_path_that_resolves_is_still_found(h):
    """Empty components are skipped as QEMU skips them: with thousands of slashes between its
    components, the ioapic's absolute path still names it."""
    ioapic = next(o for o in h.machine.root.walk() if getattr(o, "qom_name", "") == "ioapic")
    path = qom_path(ioapic).replace(b"/", b"/" * LONG)
    assert len(path) > BIG_LINE
    assert h.send(b"irq_intercept_in " + path + b"\nset_irq_in ioapic unnamed-gpio-in 4 1\n") == [
        b"OK", b"IRQ raise 4", b"OK"]


def test_long_token_log_line_is_written_whole():
    h = Harness(log=True)
    line = b"readb " + ONES
    assert h.send(line + b"\n") == [RANGE_FAIL]
    assert line + b"\n" in h.logbuf.getvalue()


# ---------------------------------------------------------------- finding 2: long lines


def test_16_mib_of_spaces_costs_no_memory_and_the_server_goes_on(h):
    """Before: 16 million empty tokens, 189 MiB (tracemalloc saw ~140 MiB) and 5 s."""
    replies, peak = feed_chunks(h, b" " * (16 * MiB) + b"\nendianness\n")
    assert replies == [b"FAIL Unknown command ''", b"OK little"]
    assert peak < 2 * MiB  # one 1 MiB chunk, appended before its tail is dropped


def test_a_16_mib_command_word_keeps_only_its_echo(h):
    replies, peak = feed_chunks(h, b"X" * (16 * MiB) + b"\nendianness\n")
    assert replies == [b"FAIL Unknown command '" + b"X" * MAX_ECHO + b"'", b"OK little"]
    assert peak < 2 * MiB


def test_the_tail_after_the_last_token_that_matters_is_dropped_as_it_arrives(h):
    tail = b" junk" * (4 * MiB)
    replies, peak = feed_chunks(h, b"writeb 0x1000 0x5a a b c" + tail + b"\nreadb 0x1000\n", chunk=64 << 10)
    assert replies == [b"OK", b"OK 0x000000000000005a"]
    assert peak < BIG_LINE * 3  # a chunk or two, never the 20 MiB line


@pytest.mark.parametrize("chunk", [7, 4096, BIG_LINE + 1, MiB])
def test_dropping_gives_the_replies_of_the_whole_line_whatever_the_chunks(chunk):
    """Tokens before the cut, a newline right after it, pipelined lines behind it."""
    h = Harness()
    long_tail = b" " + b"t" * (2 * BIG_LINE)
    script = (b"writeb 0x1000 0x5a 3 4 5" + long_tail + b"\n"  # cut right after token 5
              + b"readb 0x1000 " + b" " * (3 * BIG_LINE) + b"\n"  # empty tokens, then dropped
              + b"b64write 0x2000 3 AQID x y z" + long_tail + b"\nread 0x2000 3\n"
              + b"X" * (2 * BIG_LINE) + b" readb\nendianness\n")
    replies, _ = feed_chunks(h, script, chunk=chunk)
    assert replies == [b"OK", b"OK 0x000000000000005a", b"OK", b"OK 0x010203",
                       b"FAIL Unknown command '" + b"X" * MAX_ECHO + b"'", b"OK little"]


def test_dropped_line_is_logged_with_a_note_instead_of_its_tail():
    h = Harness(log=True)
    tail = b"z" * (2 * BIG_LINE)
    replies, _ = feed_chunks(h, b"readb 0x0 a b c d " + tail + b"\n", chunk=BIG_LINE)
    assert replies == [b"OK 0x0000000000000000"]
    log = h.logbuf.getvalue()
    assert b"] readb 0x0 a b c d [... %d bytes dropped]\n" % (len(tail) + 1) in log
    assert tail not in log


def test_a_line_is_split_into_at_most_max_tokens(h):
    """Only a limit of the server: extra tokens were always ignored, as QEMU ignores them."""
    assert MAX_TOKENS >= 5  # set_irq_in reads words[1..4]
    assert h.send(b"irq_intercept_in ioapic\nset_irq_in ioapic unnamed-gpio-in 4 1" + b" x" * 100000
                  + b"\n") == [b"OK", b"IRQ raise 4", b"OK"]


@pytest.mark.parametrize("encode,cmd", [
    (lambda d: b"0x" + d.hex().encode(), b"write"),
    (base64.b64encode, b"b64write"),
], ids=["hex", "b64"])
def test_megabyte_bulk_writes_still_work_with_extra_tokens(encode: Callable[[bytes], bytes], cmd: bytes):
    h = Harness()
    data = os.urandom(4 * MiB)
    line = cmd + b" 0x100000 %#x " % len(data) + encode(data) + b" e1 e2 e3" + b" x" * BIG_LINE + b"\n"
    replies, peak = feed_chunks(h, line + b"endianness\n")
    assert replies == [b"OK", b"OK little"]
    assert h.machine.ram_blocks[0].read(0x100000, len(data)) == data
    assert peak < len(line) + 8 * MiB  # the line once, plus the decoded data


def test_log_of_a_big_valid_line_is_whole():
    h = Harness(log=True)
    data = os.urandom(BIG_LINE)
    line = b"write 0x1000 %#x 0x" % len(data) + data.hex().encode()
    assert h.send(line + b"\n") == [b"OK"]
    assert line + b"\n" in h.logbuf.getvalue()
