"""``-device`` on the pc board, through the process: isa-debug-exit ends the emulator with the
guest's status, pvpanic and ib700 report their QMP events and take their run-state actions,
pc-testdev answers at its ports, and bad ``-device`` options fail as QEMU's do."""
from __future__ import annotations

import subprocess

import pytest

from qtest.client import QTestEOF

pytestmark = [pytest.mark.subprocess]

PC = ["-M", "pc", "-m", "64M", "-nodefaults"]
TIMEOUT = 30


@pytest.mark.parametrize("value", [0x00, 0x10, 0x7F])
def test_isa_debug_exit_ends_the_process_with_the_guest_status(qtest_factory, value: int) -> None:
    m = qtest_factory([*PC, "-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    m.set_expected_status(((value << 1) | 1) & 0xFF)
    with pytest.raises(QTestEOF):  # no reply: the process is gone
        m.qtest.outb(0xF4, value)
    assert m.wait(timeout=TIMEOUT) == ((value << 1) | 1) & 0xFF


def test_pvpanic_reports_a_guest_panic_and_powers_off(qtest_factory) -> None:
    m = qtest_factory([*PC, "-device", "pvpanic"])
    assert m.qtest.inb(0x505) == 3  # PANICKED | CRASH_LOADED supported
    m.qtest.outb(0x505, 2)
    assert m.qmp.wait_event("GUEST_CRASHLOADED", timeout=TIMEOUT)["data"] == {"action": "run"}
    assert m.qmp.cmd("query-status")["status"] == "running"
    m.qtest.outb(0x505, 1)
    assert m.qmp.wait_event("GUEST_PANICKED", timeout=TIMEOUT)["data"] == {"action": "poweroff"}
    shutdown = m.qmp.wait_event("SHUTDOWN", timeout=TIMEOUT)
    assert shutdown["data"] == {"guest": True, "reason": "guest-panic"}
    assert m.wait(timeout=TIMEOUT) == 0


def test_pvpanic_with_no_shutdown_pauses_in_guest_panicked(qtest_factory) -> None:
    m = qtest_factory([*PC, "-no-shutdown", "-device", "pvpanic,ioport=0x600"])
    m.qtest.outb(0x600, 1)
    assert m.qmp.wait_event("GUEST_PANICKED", timeout=TIMEOUT)["data"] == {"action": "pause"}
    m.qmp.wait_event("STOP", timeout=TIMEOUT)
    assert m.qmp.cmd("query-status")["status"] == "guest-panicked"


@pytest.mark.parametrize("panic, event, status", [
    ("none", "run", "running"), ("pause", "pause", "guest-panicked"),
])
def test_action_panic_chooses_what_a_panic_does(qtest_factory, panic: str, event: str, status: str) -> None:
    m = qtest_factory([*PC, "-device", "pvpanic", "-action", f"panic={panic}"])
    m.qtest.outb(0x505, 1)
    assert m.qmp.wait_event("GUEST_PANICKED", timeout=TIMEOUT)["data"] == {"action": event}
    if status != "running":
        m.qmp.wait_event("STOP", timeout=TIMEOUT)
    assert m.qmp.cmd("query-status")["status"] == status


def test_set_action_over_qmp_changes_the_panic_and_watchdog_actions(qtest_factory) -> None:
    m = qtest_factory([*PC, "-device", "pvpanic", "-device", "ib700"])
    assert m.qmp.cmd("set-action", panic="none", watchdog="pause") == {}
    m.qtest.outb(0x505, 1)
    assert m.qmp.wait_event("GUEST_PANICKED", timeout=TIMEOUT)["data"] == {"action": "run"}
    assert m.qmp.cmd("watchdog-set-action", action="debug") == {}
    m.qtest.outb(0x443, 14)  # 2 s
    m.qtest.clock_step(2_000_000_000)
    assert m.qmp.wait_event("WATCHDOG", timeout=TIMEOUT)["data"] == {"action": "debug"}
    assert m.qmp.cmd("query-status")["status"] == "running"
    bad = m.qmp.cmd_raw("set-action", {"panic": "none", "reboot": "maybe"})
    assert bad["error"] == {"class": "GenericError", "desc": "Parameter 'reboot' does not accept value 'maybe'"}


def test_ib700_expiry_under_clock_step_pauses_the_vm(qtest_factory) -> None:
    m = qtest_factory([*PC, "-device", "ib700", "-watchdog-action", "pause"])
    m.qtest.outb(0x443, 14)  # arm: table entry 14 is 2 s
    m.qtest.clock_step(1_999_999_999)
    assert m.qmp.cmd("query-status")["status"] == "running"
    m.qtest.clock_step(1)
    assert m.qmp.wait_event("WATCHDOG", timeout=TIMEOUT)["data"] == {"action": "pause"}
    m.qmp.wait_event("STOP", timeout=TIMEOUT)
    assert m.qmp.cmd("query-status")["status"] == "watchdog"


def test_ib700_disabled_never_fires(qtest_factory) -> None:
    m = qtest_factory([*PC, "-device", "ib700,id=wd", "-watchdog-action", "pause"])
    m.qtest.outb(0x443, 15)  # 0 s... then stopped before the clock moves
    m.qtest.outb(0x441, 0)
    m.qtest.clock_step(60_000_000_000)
    assert m.qmp.cmd("query-status")["status"] == "running"
    assert not [e for e in m.qmp.get_events() if e["event"] == "WATCHDOG"]
    assert m.qmp.cmd("qom-get", path="/machine/peripheral/wd", property="type") == "ib700"


def test_pc_testdev_latches_and_irq_lines(qtest_factory) -> None:
    m = qtest_factory([*PC, "-device", "pc-testdev"])
    q = m.qtest
    q.outl(0xE0, 0x87654321)
    assert q.inl(0xE0) == 0x87654321
    assert q.inw(0xE2) == 0x8765
    q.writel(0xFF000000, 0xDEADBEEF)
    assert q.readl(0xFF000000) == 0xDEADBEEF
    q.irq_intercept_in("ioapic")
    q.outb(0x2000 + 5, 1)
    assert q.get_irq(5)
    q.outb(0x2000 + 5, 0)
    assert not q.get_irq(5)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["emu-system-x86_64", *args], capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)


def test_device_errors_and_help_as_qemu() -> None:
    r = _run("-M", "pc", "-display", "none", "-device", "isa-debug-exit,foo=1")
    assert (r.returncode, r.stderr) == (
        1, "emu-system-x86_64: -device isa-debug-exit,foo=1: Property 'isa-debug-exit.foo' not found\n")
    r = _run("-M", "none", "-display", "none", "-device", "isa-debug-exit")
    assert (r.returncode, r.stderr) == (
        1, "emu-system-x86_64: -device isa-debug-exit: No 'ISA' bus found for device 'isa-debug-exit'\n")
    r = _run("-device", "pvpanic,help")
    assert r.returncode == 0 and r.stdout.startswith("pvpanic options:\n") and "ioport=<uint16>" in r.stdout
    r = _run("-watchdog-action", "inject-nmi")
    assert r.returncode == 1 and "inject-nmi is not supported" in r.stderr
    # each ISA pvpanic publishes etc/pvpanic-port: QEMU's fw_cfg refuses the second one
    r = _run("-M", "pc", "-display", "none", "-S", "-device", "pvpanic", "-device", "pvpanic,ioport=0x506")
    assert (r.returncode, r.stderr) == (
        1, "emu-system-x86_64: -device pvpanic,ioport=0x506: duplicate fw_cfg file name: etc/pvpanic-port\n")
    r = _run("-M", "pc,x-oem-id=ABCDEFG", "-display", "none", "-S")
    assert (r.returncode, r.stderr) == (
        1, "emu-system-x86_64: User specified x-oem-id value is bigger than 6 bytes in size\n")
