"""The floppy controller of ``-M pc`` without drives (emu.devices.fdc) against QEMU 7.2's fdc.c.

QEMU 7.2 creates the isa-fdc on i440FX even with ``-nodefaults``: the probe values below and the
transcripts (``qemu`` marker, replayed on /root/qemu72/build, skipped when absent) show it.
"""
from __future__ import annotations

import pytest
from test_serial import IsaBench, qemu_transcript

from emu.devices.fdc import IsaFdc, get_command
from emu.devices.i8257 import create_dma_pair

FDC_IRQ = 6


def fdc_bench() -> tuple[IsaBench, IsaFdc]:
    bench = IsaBench()
    dma1, dma2 = create_dma_pair()
    for port, region in dma1.io_regions + dma2.io_regions:
        bench.map(port, region)
    fdc = IsaFdc(dma=dma1, clock=bench.clock)
    fdc.irq.connect(bench.irq(FDC_IRQ))
    for port, region in fdc.io_regions:
        bench.map(port, region)
    return bench, fdc


def command(bench: IsaBench, *data: int) -> None:
    for byte in data:
        bench.outb(0x3F5, byte)


def results(bench: IsaBench, n: int) -> list[int]:
    return [bench.inb(0x3F5) for _ in range(n)]


# inb 0x3f1..0x3f5, 0x3f7 on QEMU 7.2 `-M pc -nodefaults` (qtest probe): SRB c0, DOR 0c, TDR 00,
# MSR 80, FIFO 00, DIR 80. 0x3f0 reads ff (not decoded: SRA is not mapped on ISA) and 0x3f6 is
# IDE's, so neither is the controller's.
QEMU_RESET_VALUES = {0x3F1: 0xC0, 0x3F2: 0x0C, 0x3F3: 0x00, 0x3F4: 0x80, 0x3F5: 0x00, 0x3F7: 0x80}


def test_reset_values_match_qemu_probe() -> None:
    bench, fdc = fdc_bench()
    assert {p: bench.inb(p) for p in QEMU_RESET_VALUES} == QEMU_RESET_VALUES
    assert [(p, r.size) for p, r in fdc.io_regions] == [(0x3F1, 5), (0x3F7, 1)]


def test_dor_reset_raises_irq_and_four_sense_interrupts() -> None:
    bench, _ = fdc_bench()
    bench.run(["irq_intercept_in ioapic"])
    assert bench.run(["outb 0x3f2 0x08"]) == ["OK"]  # into reset: nothing yet
    assert bench.run(["outb 0x3f2 0x0c"]) == ["IRQ raise 6", "OK"]
    for drive in range(4):
        command(bench, 0x08)
        assert results(bench, 2) == [0xC0 + drive, 0]
        assert bench.levels[FDC_IRQ] == 0
    command(bench, 0x08)
    assert results(bench, 1) == [0x80]  # nothing pending: invalid command


def test_identification_commands() -> None:
    bench, _ = fdc_bench()
    command(bench, 0x10)
    assert bench.inb(0x3F4) == 0xD0  # RQM | DIO | busy: a result byte waits
    assert results(bench, 1) == [0x90]
    assert bench.inb(0x3F4) == 0x80
    command(bench, 0x18)
    assert results(bench, 1) == [0x41]
    command(bench, 0x94)
    assert results(bench, 1) == [0x10]
    command(bench, 0x03, 0xAF, 0x03)  # SPECIFY: non-DMA
    command(bench, 0x13, 0x00, 0x57, 0x05)  # CONFIGURE
    command(bench, 0x0E)
    assert results(bench, 10) == [0, 0, 0, 0, 0x0A, 0x02, 0, 0x80, 0x57, 0x05]
    assert bench.inb(0x3F2) == 0x04  # SPECIFY cleared DMAEN


def test_data_commands_fail_without_media() -> None:
    bench, _ = fdc_bench()
    bench.run(["irq_intercept_in ioapic"])
    assert bench.run(["outb 0x3f5 0xe6", "outb 0x3f5 0x00", "outb 0x3f5 0x00", "outb 0x3f5 0x00",
                      "outb 0x3f5 0x01", "outb 0x3f5 0x02", "outb 0x3f5 0x12", "outb 0x3f5 0x1b",
                      "outb 0x3f5 0xff"])[-2:] == ["IRQ raise 6", "OK"]
    # sector 1 > last sector 0 of an empty drive: abnormal termination, end of cylinder
    assert results(bench, 7) == [0x40, 0x80, 0x00, 0, 0, 1, 2]
    assert bench.levels[FDC_IRQ] == 0


def test_read_id_answers_after_20ms() -> None:
    bench, _ = fdc_bench()
    bench.run(["irq_intercept_in ioapic"])
    command(bench, 0x4A, 0x04)
    assert bench.inb(0x3F4) == 0x10  # busy, no RQM
    bench.run(["clock_step 19999999"])
    assert bench.levels.get(FDC_IRQ, 0) == 0
    assert bench.run(["clock_step 1"]) == ["IRQ raise 6", "OK 20000000"]
    assert results(bench, 7) == [0x04, 0, 0, 0, 1, 0, 2]  # the rate matches an empty drive's


def test_command_table_first_match() -> None:
    assert get_command(0x06) == (8, "transfer") and get_command(0xE6) == (8, "transfer")
    assert get_command(0x45) == (8, "transfer")  # WRITE (BeOS) entry
    assert get_command(0x94) == (0, "lock") and get_command(0x14) == (0, "lock")
    assert get_command(0x00) == (0, "unimplemented") and get_command(0xCD) == (10, "unimplemented")


ORACLE_SCRIPTS = {
    "reset": ["inb 0x3f1", "inb 0x3f2", "inb 0x3f3", "inb 0x3f4", "inb 0x3f5", "inb 0x3f7"],
    "dor_reset": ["irq_intercept_in ioapic", "outb 0x3f2 0x08", "inb 0x3f4", "inb 0x3f2", "outb 0x3f2 0x08",
                  "outb 0x3f2 0x3d", "inb 0x3f1", "inb 0x3f2"]
                 + ["outb 0x3f5 0x08", "inb 0x3f4", "inb 0x3f5", "inb 0x3f5"] * 5 + ["inb 0x3f5", "inb 0x3f4"],
    "ident": ["outb 0x3f5 0x10", "inb 0x3f4", "inb 0x3f5", "outb 0x3f5 0x18", "inb 0x3f5", "outb 0x3f5 0x94",
              "inb 0x3f5", "outb 0x3f5 0x14", "inb 0x3f5", "outb 0x3f5 0x03", "outb 0x3f5 0xaf", "outb 0x3f5 0x03",
              "outb 0x3f5 0x13", "outb 0x3f5 0x00", "outb 0x3f5 0x57", "outb 0x3f5 0x05", "outb 0x3f5 0x0e"]
             + ["inb 0x3f5"] * 11 + ["inb 0x3f4", "inb 0x3f2", "outb 0x3f5 0x17", "outb 0x3f5 0x01",
                                     "outb 0x3f5 0x22", "inb 0x3f5", "outb 0x3f5 0x33", "outb 0x3f5 0x01",
                                     "outb 0x3f5 0x00", "inb 0x3f5", "inb 0x3f4"],
    "seek_sense": ["irq_intercept_in ioapic", "outb 0x3f5 0x04", "outb 0x3f5 0x05", "inb 0x3f5",
                   "outb 0x3f5 0x0f", "outb 0x3f5 0x01", "outb 0x3f5 0x05", "inb 0x3f2", "outb 0x3f5 0x08",
                   "inb 0x3f5", "inb 0x3f5", "outb 0x3f5 0x07", "outb 0x3f5 0x00", "outb 0x3f5 0x08",
                   "inb 0x3f5", "inb 0x3f5", "outb 0x3f5 0x8f", "outb 0x3f5 0x00", "outb 0x3f5 0x03",
                   "outb 0x3f5 0x08", "inb 0x3f5", "inb 0x3f5", "outb 0x3f5 0xcf", "outb 0x3f5 0x01",
                   "outb 0x3f5 0x03", "outb 0x3f5 0x08", "inb 0x3f5", "inb 0x3f5", "outb 0x3f5 0x12",
                   "outb 0x3f5 0x83", "outb 0x3f5 0x0e"] + ["inb 0x3f5"] * 10,
    "data_cmds": ["irq_intercept_in ioapic"]
                 + [f"outb 0x3f5 {b}" for b in (0xE6, 0x00, 0x00, 0x00, 0x01, 0x02, 0x12, 0x1B, 0xFF)]
                 + ["inb 0x3f4"] + ["inb 0x3f5"] * 7
                 + [f"outb 0x3f5 {b}" for b in (0x45, 0x01, 0x03, 0x00, 0x00, 0x02, 0x12, 0x1B, 0xFF)]
                 + ["inb 0x3f5"] * 7
                 + [f"outb 0x3f5 {b}" for b in (0x0C, 0x00, 0x00, 0x00, 0x01, 0x02, 0x12, 0x1B, 0xFF)]
                 + ["inb 0x3f5"] * 7 + ["outb 0x3f5 0x08", "inb 0x3f5", "inb 0x3f5"],
    "format_restore": [f"outb 0x3f5 {b}" for b in (0x4D, 0x00, 0x02, 0x12, 0x1B, 0xF6)] + ["inb 0x3f5"] * 7
                      + [f"outb 0x3f5 {b}" for b in (0x4E, 0, 0, 5, 9, 0, 0, 0x21, 0x44, 0x12, 0x8C, 0x48, 7, 3,
                                                     0, 0, 0, 0)]
                      + ["outb 0x3f5 0x2e"] + ["inb 0x3f5"] * 15
                      + ["outb 0x3f5 0x07", "outb 0x3f5 0x00", "outb 0x3f5 0x08", "inb 0x3f5", "inb 0x3f5",
                         "outb 0x3f5 0x0e"] + ["inb 0x3f5"] * 10 + ["outb 0x3f3 0x07", "inb 0x3f3",
                                                                     "outb 0x3f5 0x0e"] + ["inb 0x3f5"] * 10,
    "read_id_misc": ["irq_intercept_in ioapic", "outb 0x3f5 0x4a", "outb 0x3f5 0x04", "inb 0x3f4",
                     "clock_step 19999999", "clock_step 1", "inb 0x3f4"] + ["inb 0x3f5"] * 7
                    + ["outb 0x3f7 0x02", "outb 0x3f5 0x0a", "outb 0x3f5 0x00", "clock_step 20000000"]
                    + ["inb 0x3f5"] * 7 + ["outb 0x3f5 0x00", "inb 0x3f5", "outb 0x3f5 0xcd", "inb 0x3f4"]
                    + [f"outb 0x3f5 {i}" for i in range(10)] + ["inb 0x3f5", "outb 0x3f5 0x8e"]
                    + [f"outb 0x3f5 {b}" for b in (1, 2, 3, 4, 0xC0)] + ["inb 0x3f5"] * 4
                    + ["outb 0x3f5 0x8e"] + [f"outb 0x3f5 {b}" for b in (1, 2, 3, 4, 5)]
                    + ["inb 0x3f4", "outb 0x3f4 0x80", "inb 0x3f4", "outb 0x3f5 0x08", "inb 0x3f5", "inb 0x3f5",
                       "outb 0x3f2 0x00", "outb 0x3f5 0x10", "inb 0x3f4", "inb 0x3f2", "outb 0x3f5 0x10",
                       "inb 0x3f5", "outb 0x3f4 0x40", "inb 0x3f4", "inb 0x3f2", "inb 0x3f7"],
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(ORACLE_SCRIPTS))
def test_transcript_matches_qemu(name: str) -> None:
    script = ORACLE_SCRIPTS[name]
    bench, _ = fdc_bench()
    assert bench.run(script) == qemu_transcript(script, irqs=(FDC_IRQ,))
