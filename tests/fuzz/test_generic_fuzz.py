"""The ``qtest`` fuzz target (``qtest.fuzz.generic`` and the modules below it): QEMU's generic-fuzz encoding decoded into
qtest commands, the reply oracle, flat-view discovery, fresh-process replay and minimisation, and
a bounded hypothesis run against the emulator (every CI run)."""
from __future__ import annotations

import random
import shutil
import struct
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtest.fuzz import generic as g
from qtest.fuzz import generic_discovery as disc
from qtest.fuzz import generic_ops as enc
from qtest.fuzz import generic_target as tgt
from qtest.fuzz.generic_ops import (
    IN_FMT,
    OUT_FMT,
    PCI_READ_FMT,
    PCI_WRITE_FMT,
    READ_FMT,
    SEPARATOR,
    WRITE_FMT,
    Decoder,
    FlatRange,
    FuzzSpace,
    Pattern,
)

BIN = shutil.which("emu-system-x86_64") or "emu-system-x86_64"


def space(pio: list[tuple[int, int]] = (), mmio: list[tuple[int, int]] = (), devfns: list[int] = ()) -> FuzzSpace:
    return FuzzSpace([FlatRange(a, n, f"p{a:x}", "i/o") for a, n in pio],
                     [FlatRange(a, n, f"m{a:x}", "i/o") for a, n in mmio], list(devfns))


def ops(*pieces: bytes) -> bytes:
    return SEPARATOR.join(pieces)


def decode(sp: FuzzSpace, data: bytes) -> list[str]:
    return Decoder(sp).decode(data)[0]


# ------------------------------------------------------------------ encoding

def test_input_is_cut_at_every_separator_and_empty_pieces_are_skipped():
    assert enc.split_ops(b"FUZZ\x09FUZZFUZZ\x13abcFUZZ") == [b"\x09", b"\x13abc"]
    lines, count = Decoder(space(pio=[(0x70, 2)])).decode(b"FUZZ\x09FUZZFUZZ\x13")
    assert (lines, count) == (["clock_step", "clock_step"], 2)  # 0x13 % 10 == 9


def test_region_index_cycles_offset_wraps_and_width_is_capped_by_the_bytes_left():
    sp = space(pio=[(0x70, 2), (0x3f0, 8)])
    # index 3 -> range 1 (3 % 2); offset 13 -> 13 % 8 == 5, 3 bytes left: inl skipped, inw done
    assert decode(sp, ops(b"\x00" + IN_FMT.pack(2, 3, 13), b"\x00" + IN_FMT.pack(1, 3, 13))) == ["inw 0x3f5"]
    # index 4 -> range 0; offset 3 -> 1; size 0x10 % 3 == 1 (word) but 1 byte left
    assert decode(sp, b"\x00" + IN_FMT.pack(0x10, 4, 3)) == []
    assert decode(sp, b"\x00" + IN_FMT.pack(0x0f, 4, 3)) == ["inb 0x71"]


def test_port_addresses_above_ffff_are_skipped():
    sp = space(pio=[(0xfff0, 0x20)])
    assert decode(sp, b"\x00" + IN_FMT.pack(0, 0, 0x0f)) == ["inb 0xffff"]
    assert decode(sp, b"\x00" + IN_FMT.pack(0, 0, 0x10)) == []


def test_values_are_masked_to_the_access_width():
    sp = space(pio=[(0x70, 8)], mmio=[(0xfed00000, 0x400)])
    assert decode(sp, ops(b"\x01" + OUT_FMT.pack(0, 0, 0, 0x12345678), b"\x01" + OUT_FMT.pack(1, 0, 0, 0x12345678),
                          b"\x01" + OUT_FMT.pack(2, 0, 4, 0x12345678))) == [
        "outb 0x70 0x78", "outw 0x70 0x5678", "outl 0x74 0x12345678"]
    value = 0x1122334455667788
    assert decode(sp, ops(*(b"\x03" + WRITE_FMT.pack(s, 0, 8, value) for s in range(4)))) == [
        "writeb 0xfed00008 0x88", "writew 0xfed00008 0x7788", "writel 0xfed00008 0x55667788",
        "writeq 0xfed00008 0x1122334455667788"]


def test_payloads_use_the_c_struct_layout_with_padding():
    sp = space(mmio=[(0xfed00000, 0x400)])
    # READ: size, index, two padding bytes (ignored), u32 offset
    assert decode(sp, b"\x02" + b"\x02\x00\xaa\xbb" + struct.pack("<I", 0x10)) == ["readl 0xfed00010"]
    # a payload one byte short is ignored; extra bytes are ignored
    assert decode(sp, b"\x02" + READ_FMT.pack(0, 0, 0x10)[:-1]) == []
    assert decode(sp, b"\x02" + READ_FMT.pack(3, 0, 0x10) + b"extra") == ["readq 0xfed00010"]
    # PCI_WRITE: size, device index, offset, one padding byte, u32 value
    sp = space(devfns=[0x08])
    assert decode(sp, b"\x05" + b"\x00\x00\x3c\xff" + struct.pack("<I", 0x1ff)) == [
        "outl 0xcf8 0x8000083c", "outb 0xcfc 0xff"]


def test_pci_ops_pick_devices_by_index_and_disable_pci_lasts_for_the_input():
    sp = space(devfns=[0x08, 0x10])
    read = b"\x04" + PCI_READ_FMT.pack(2, 3, 0x04)
    write = b"\x05" + PCI_WRITE_FMT.pack(1, 2, 0x04, 0x10007)
    assert decode(sp, ops(read, write)) == ["outl 0xcf8 0x80001004", "inl 0xcfc",
                                            "outl 0xcf8 0x80000804", "outw 0xcfc 0x7"]
    decoder = Decoder(sp)
    assert decoder.decode(ops(read, b"\x06", read, write))[0] == ["outl 0xcf8 0x80001004", "inl 0xcfc"]
    assert decoder.decode(read)[0] == ["outl 0xcf8 0x80001004", "inl 0xcfc"]  # a new input enables them again
    assert decode(space(pio=[(0x70, 2)]), read) == []  # no PCI device matched


def test_dma_pattern_renders_as_upstream_documents():
    assert Pattern(1, 2, b"\x00\x01\x02").render(12) == bytes.fromhex("000102 000302 000502 000702")
    assert Pattern(0, 0xff, b"\x10").render(3) == bytes([0x10, 0x0f, 0x0e])  # the sum wraps at 8 bits


def test_dma_pattern_ops_keep_qemus_state():
    decoder = Decoder(space(pio=[(0x70, 2)]))
    decoder.decode(ops(b"\x07\x05\x03abc", b"\x07\x00\x01", b"\x07\x09\x02z"))  # the middle one has no data
    assert decoder.patterns == [Pattern(2, 3, b"abc"), Pattern(0, 2, b"z")]  # index 5 % 3, 9 % 1
    decoder.decode(ops(b"\x07\x00\x01ab", b"\x08", b"\x07\x01\x01cd"))
    assert decoder.patterns == [Pattern(1, 1, b"cd")] and decoder.pattern_index == 0


def test_crossover_joins_inputs_with_clear_and_disable_ops():
    assert enc.crossover(b"AB", b"CDEF", 100) == b"ABFUZZ\x08FUZZ\x06FUZZCDEF"
    assert enc.crossover(b"AB", b"CDEF", 18) == b"ABFUZZ\x08FUZZ\x06FUZZCD"
    assert enc.crossover(b"AB", b"CDEF", 16) == b""


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.randoms(use_true_random=False))
def test_every_decoded_access_stays_inside_a_fuzzable_range(data: bytes, rng: random.Random):
    sp = space(pio=[(0x60, 1), (0x70, 2), (0xfff8, 0x10)], mmio=[(0xfec00000, 0x1000), (0xfed00000, 0x3)],
               devfns=[0x08])
    sizes = {"b": 1, "w": 2, "l": 4, "q": 8}
    for line in decode(sp, data + SEPARATOR + enc.generate_input(rng, 8)):
        verb, *args = line.split()
        if verb == "clock_step" or args[0] in ("0xcf8", "0xcfc"):
            continue
        addr, n = int(args[0], 16), sizes[verb[-1]]
        ranges = sp.pio if verb[:-1] in ("in", "out") else sp.mmio
        assert any(r.start <= addr and addr + n <= r.start + r.size for r in ranges), line
        assert addr <= 0xffff or verb[:-1] not in ("in", "out")


# ------------------------------------------------------------------ oracle, discovery, minimisation

@pytest.mark.parametrize("command,reply,ok", [
    ("inb 0x71", "OK 0x0026", True), ("inb 0x71", "OK 0x26", False), ("inb 0x71", "OK 0x0100", False),
    ("inl 0xcfc", "OK 0x8086a201", True), ("inl 0xcfc", "OK 0x0000", True), ("inl 0xcfc", "OK 0x00012345", False),
    ("readl 0xfed00000", "OK 0x000000008086a201", True), ("readl 0xfed00000", "OK 0x8086a201", False),
    ("readb 0xfed00000", "OK 0x0000000000000100", False), ("readq 0xfed00000", "OK 0xffffffffffffffff", True),
    ("outb 0x70 0x0", "OK", True), ("writeq 0x0 0x1", "OK", True), ("outb 0x70 0x0", "FAIL x", False),
    ("clock_step", "OK 1000", True), ("clock_step", "OK", False), ("clock_step", "OK 0x10", False),
])
def test_reply_oracle_follows_qemus_formats(command: str, reply: str, ok: bool):
    assert (enc.check_reply(command, reply, []) is None) == ok


def test_reply_oracle_catches_a_clock_going_back():
    assert enc.check_replies(["clock_step", "clock_step"], ["OK 100", "OK 100"]) is None
    assert "went back" in (enc.check_replies(["clock_step", "clock_step"], ["OK 100", "OK 99"]) or "")


QEMU_MTREE = textwrap.dedent("""\
    FlatView #0
     AS "I/O", root: io
     Root memory region: io
      0000000000000060-0000000000000060 (prio 0, i/o): i8042-data owner:{dev path=/machine/unattached/device[17]}
      0000000000000070-0000000000000070 (prio 0, i/o): rtc-index owner:{dev path=/machine/unattached/device[10]}
      0000000000000071-0000000000000071 (prio 0, i/o): rtc @0000000000000001 owner:{dev path=/machine/unattached/device[10]}
      0000000000000072-000000000000007d (prio 0, i/o): io @0000000000000072 parent:{obj path=/machine/unattached}

    FlatView #1
     AS "i440FX", root: bus master container
     Root memory region: (none)
      No rendered FlatView

    FlatView #2
     AS "memory", root: system
     AS "cpu-memory-0", root: system
     Root memory region: system
      0000000000000000-00000000000bffff (prio 0, ram): pc.ram owner:{obj path=/objects/pc.ram}
      00000000e2000400-00000000e200041f (prio 0, i/o): vga ioports remapped owner:{dev id=v path=/machine/peripheral/v}
      00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi owner:{dev path=/machine/unattached/device[0]/lapic}
    """)


def test_flat_views_are_parsed_with_owners():
    views = disc.parse_flat_views(QEMU_MTREE)
    assert set(views) == {"I/O", "i440FX", "memory", "cpu-memory-0"} and views["i440FX"] == []
    assert views["I/O"][2] == FlatRange(0x71, 1, "rtc", "i/o", "/machine/unattached/device[10]")
    assert views["memory"][1] == FlatRange(0xe2000400, 0x20, "vga ioports remapped", "i/o", "/machine/peripheral/v")
    assert views["memory"][0].kind == "ram"


def test_objects_select_their_qom_descendants_and_names_select_regions_but_never_ram():
    views = disc.parse_flat_views(QEMU_MTREE)
    names = lambda rs: [r.name for r in rs]  # noqa: E731
    assert names(disc.select_ranges(views["I/O"], [], ["/machine/unattached/device[10]"])) == ["rtc-index", "rtc"]
    assert names(disc.select_ranges(views["memory"], [], ["/machine/unattached/device[0]"])) == ["apic-msi"]
    assert names(disc.select_ranges(views["I/O"], ["i8042*"], [])) == ["i8042-data"]
    assert names(disc.select_ranges(views["memory"], ["*"], [])) == ["vga ioports remapped", "apic-msi"]
    # /machine/unattached/device[1] is not an ancestor of device[10]
    assert names(disc.select_ranges(views["I/O"], [], ["/machine/unattached/device[1]"])) == []


def test_glob_has_only_star_and_question_mark():
    assert disc.glob_match("*rtc*", "mc146818rtc") and disc.glob_match("pi?", "pic") and not disc.glob_match("pi?", "pit0")
    assert disc.glob_match("a[0]", "a[0]") and not disc.glob_match("a[01]", "a0")


def test_reduce_lines_keeps_only_what_the_failure_needs():
    lines = [f"l{i}" for i in range(40)]
    small = tgt.reduce_lines(lines, lambda ls: "l7" in ls and "l31" in ls, deadline=float("inf"))
    assert small == ["l7", "l31"]


FAKE = """\
import sys
mode = sys.argv[1]
for line in sys.stdin:
    cmd = line.split()[0]
    if mode == "hang" and cmd == "inb":
        sys.stdin.read()
    if mode == "die" and cmd == "inb":
        sys.exit(3)
    reply = "OK little" if cmd == "endianness" else "OK 0xff" if (mode == "short" and cmd == "inb") else \\
        "OK 0x0001" if cmd == "inb" else "OK"
    print(reply, flush=True)
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("mode,kind", [("good", None), ("short", "invariant"), ("hang", "hang"), ("die", "crash")])
def test_fresh_process_replay_classifies_outcomes(tmp_path: Path, mode: str, kind: str | None):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    got = tgt.replay([sys.executable, str(fake), mode], ["outb 0x70 0x0", "inb 0x71"], timeout=2,
                   rss_limit_kib=1 << 30)
    assert (got[0] if got else None) == kind


# ------------------------------------------------------------------ against the emulator

@pytest.mark.subprocess
def test_rtc_ops_become_the_expected_trace_and_run_clean():
    target = g.make_target(g.default_args(binary=BIN, objects="rtc*"))
    try:
        # the index port is a region of its own (rtc-index), as in QEMU
        assert [(r.start, r.size) for r in target.space.pio] == [(0x70, 1), (0x71, 1)] and target.space.mmio == []
        data = ops(b"\x01" + OUT_FMT.pack(0, 2, 0, 0x10a), b"\x00" + IN_FMT.pack(0, 1, 3), b"\x09",
                   b"\x02" + READ_FMT.pack(0, 0, 0))  # no MMIO range: the READ is skipped
        assert target.trace(data) == ["outb 0x70 0xa", "inb 0x71", "clock_step"]
        assert target.run_one(data) is None
        assert (target.inputs, target.ops, target.commands) == (1, 4, 3)
    finally:
        target.close()


@pytest.mark.subprocess
def test_an_exiting_emulator_is_a_crash_with_a_minimised_replayable_trace():
    target = g.make_target(g.default_args(binary=BIN, args="-device isa-debug-exit", objects="isa-debug-exit"))
    try:
        data = ops(b"\x09", b"\x00" + IN_FMT.pack(0, 0, 0), b"\x01" + OUT_FMT.pack(0, 0, 1, 0x21))
        finding = target.run_one(data)
        assert finding is not None and finding.kind == "crash" and "status 67" in finding.message
        small = target.minimise(data, finding)
        assert small.reproducer == b"outb 0x502 0x21\n"
        assert tgt.replay(target.replay_argv(), ["outb 0x502 0x21"], 10, 1 << 30)[0] == "crash"
        assert target.run_one(b"\x09") is None  # restarted after the finding
    finally:
        target.close()


@pytest.mark.subprocess
def test_peak_rss_over_the_bound_is_a_memory_finding():
    target = g.make_target(g.default_args(binary=BIN, rss_limit_mib=1))
    try:
        finding = target.run_one(b"\x09")
        # the trace is the PCI set-up (libqos BAR mapping of the board's PCI functions), then the op
        assert finding is not None and finding.kind == "memory" and finding.reproducer.endswith(b"\nclock_step\n")
        assert all(line.split()[0] in (b"outl", b"inl", b"outw", b"inw", b"outb", b"inb", b"clock_step")
                   for line in finding.reproducer.splitlines())
    finally:
        target.close()


@pytest.fixture(scope="module")
def shared_emulator():
    yield
    g.close_shared()


_op = st.tuples(st.integers(0, 255), st.binary(max_size=20)).map(lambda t: bytes([t[0]]) + t[1])


@pytest.mark.subprocess
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(_op, max_size=24), rng=st.randoms(use_true_random=False))
def test_hypothesis_inputs_keep_the_emulator_healthy(shared_emulator, pieces: list[bytes], rng: random.Random):
    g.fuzz_one_input(SEPARATOR.join(pieces))
    g.fuzz_one_input(enc.generate_input(rng, 16))
