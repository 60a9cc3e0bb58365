"""``-device`` PCI functions at ``addr=`` on the ``pc`` board, register for register against
Debian's QEMU 7.2: each function's configuration header, BAR sizing, BAR mapping through the
command register, the BAR's registers, the multifunction bit, and the errors of bad ``addr=``."""
from __future__ import annotations

import subprocess

import pytest
from test_qtest_compat import OURS, PC, QEMU, compare, needs_qemu

pytestmark = [needs_qemu, pytest.mark.qemu]

# Slot 4 single function; slot 5 functions 0 and 3 (function 0 says multifunction).
DEVICES = ["-action", "panic=none",
           "-device", "pvpanic-pci,addr=04.0",
           "-device", "pvpanic-pci,addr=05.0,multifunction=on,events=1",
           "-device", "pvpanic-pci,id=p3,addr=05.3",
           "-device", "pvpanic-pci"]  # first free slot: 2 (no VGA with -nodefaults)
FUNCTIONS = (0x10, 0x18, 0x20, 0x28, 0x29, 0x2B, 0x30)  # devfn; 0x18/0x29/0x30 are empty
BAR_BASE = 0xFEBF0000


def _cfg(devfn: int, off: int) -> int:
    return 0x80000000 | devfn << 8 | off


def _header_script() -> list[str]:
    script: list[str] = []
    for devfn in FUNCTIONS:
        for off in range(0, 0x40, 4):
            script += [f"outl 0xcf8 0x{_cfg(devfn, off):x}", "inl 0xcfc"]
        script += [f"outl 0xcf8 0x{_cfg(devfn, 0x3c):x}", "inb 0xcfd", "inw 0xcfe"]
    return script


def _bar_script(devfn: int, base: int) -> list[str]:
    bar0, cmd = _cfg(devfn, 0x10), _cfg(devfn, 0x04)
    return [
        # sizing: all ones in, the size mask (and the fixed type bits) out, then placed
        f"outl 0xcf8 0x{bar0:x}", "outl 0xcfc 0xffffffff", "inl 0xcfc",
        f"outl 0xcfc 0x{base:x}", "inl 0xcfc",
        f"readb 0x{base:x}",  # memory decoding still off
        f"outl 0xcf8 0x{cmd:x}", "outw 0xcfc 0x2", "inl 0xcfc",
        f"readb 0x{base:x}", f"readb 0x{base + 1:x}", f"readw 0x{base:x}", f"readl 0x{base:x}",
        f"readb 0x{base + 2:x}",
        f"writeb 0x{base:x} 0x0", f"writeb 0x{base:x} 0x2", f"writeb 0x{base + 1:x} 0x1",
        f"outl 0xcf8 0x{cmd:x}", "outw 0xcfc 0x0", f"readb 0x{base:x}",
    ]


def test_pci_function_headers_match_qemu() -> None:
    compare([*PC, *DEVICES], _header_script())


def test_bar_sizing_mapping_and_registers_match_qemu() -> None:
    script = _bar_script(0x20, BAR_BASE) + _bar_script(0x28, BAR_BASE + 0x1000) + _bar_script(0x2B, BAR_BASE + 0x10)
    compare([*PC, *DEVICES], script + ["readb 0x" + format(BAR_BASE + 0x10, "x")])


@pytest.mark.parametrize("devices", [
    ["pvpanic-pci,addr=0x20"], ["pvpanic-pci,addr=04.8"], ["pvpanic-pci,addr=4."], ["pvpanic-pci,addr=-1"],
    ["pvpanic-pci,addr=00.0"], ["pvpanic-pci,multifunction=maybe"], ["pvpanic-pci,events=300"],
    ["pvpanic-pci,addr=04.1", "pvpanic-pci,addr=04.0"], ["pvpanic-pci,addr=04.0", "pvpanic-pci,addr=04.1"],
    ["pvpanic-pci,addr=04.0", "pvpanic-pci,addr=4"], ["pvpanic-pci,bus=isa.0"],
])
def test_bad_placements_fail_as_qemus(devices: list[str]) -> None:
    argv = [*PC, *[a for d in devices for a in ("-device", d)], "-qtest", "null"]
    outcomes = []
    for binary in (OURS, QEMU):
        proc = subprocess.run([binary, *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        outcomes.append((proc.returncode, proc.stderr.replace(binary.rsplit("/", 1)[-1], "PROG")))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == 1
