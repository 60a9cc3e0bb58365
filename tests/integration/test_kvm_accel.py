"""``-accel kvm``: the A-B guest on this host's /dev/kvm, stops, query-kvm, and live migration
KVM→KVM, KVM→TCG and TCG→KVM with QEMU's memory check on the destination.

The guest prints a ``B`` after every pass (``passes_per_b=1``): hosts whose KVM is nested or
software-assisted run its page-per-store loop far slower than bare metal, and the tests wait for
output, never for time.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from guest_asm import ENTER_FLAT_PM, FLAT_CODE32, FLAT_DATA32, gdt

from emu.kvm_core import kvm_available
from qtest.machine import QTestMachine
from qtest.migration import ab_bootsect, check_guests_ram, guest_page_bytes, wait_for_serial

BIN = shutil.which("emu-system-x86_64")
QEMU = shutil.which("qemu-system-x86_64")
NO_KVM = kvm_available()
needs_kvm = pytest.mark.skipif(NO_KVM is not None, reason=f"no usable /dev/kvm here: {NO_KVM}")


def ab_args(tmp: Path, accel: str, name: str) -> list[str]:
    """The A-B guest (one B per pass) on ``accel``, its serial output in ``tmp/name-serial``."""
    image = ab_bootsect(tmp / f"{name}-bootsect", passes_per_b=1)
    return ["-accel", accel, "-M", "pc", "-m", "150M", "-drive", f"file={image},format=raw",
            "-serial", f"file:{tmp}/{name}-serial"]


def wait_completed(m: QTestMachine) -> dict:
    while True:
        info = m.qmp.cmd("query-migrate")
        assert info.get("status") not in ("failed", "cancelled"), (info, m.stderr_text())
        if info.get("status") == "completed":
            return info


@needs_kvm
def test_ab_guest_runs_under_kvm_and_stops_exactly(tmp):
    """The guest prints A then B under KVM; query-kvm says so; a stopped guest changes no byte
    (two reads of its 99 MiB agree) and passes QEMU's memory check; cont runs it on."""
    with QTestMachine(BIN, ab_args(tmp, "kvm", "g")) as m:
        assert m.qmp.cmd("query-kvm") == {"enabled": True, "present": True}
        pos = wait_for_serial(tmp / "g-serial", timeout=60)
        assert (tmp / "g-serial").read_bytes().startswith(b"AB")
        m.qmp.cmd("stop")
        before = guest_page_bytes(m.qtest, 1 << 20, 100 << 20)
        check_guests_ram(m.qtest)
        assert guest_page_bytes(m.qtest, 1 << 20, 100 << 20) == before
        m.qmp.cmd("cont")
        wait_for_serial(tmp / "g-serial", timeout=60, start=pos)
        m.qmp.cmd("stop")
        assert guest_page_bytes(m.qtest, 1 << 20, 100 << 20) != before
        check_guests_ram(m.qtest)


@needs_kvm
def test_system_reset_restarts_the_guest_under_kvm(tmp):
    with QTestMachine(BIN, ab_args(tmp, "kvm", "g")) as m:
        pos = wait_for_serial(tmp / "g-serial", timeout=60)
        m.qmp.cmd("system_reset")
        assert m.qmp.wait_event("RESET", timeout=30)["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        while b"A" not in (tmp / "g-serial").read_bytes()[pos:]:  # the boot sector starts over
            pass
        wait_for_serial(tmp / "g-serial", timeout=60, start=pos)


def test_query_kvm_without_kvm_reports_present_not_enabled():
    """As QEMU built with KVM and run with TCG: present (the accelerator exists), not enabled."""
    with QTestMachine(BIN, ["-M", "none"]) as m:
        assert m.qmp.cmd("query-kvm") == {"enabled": False, "present": True}


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (CI installs it)")
@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_query_kvm_answers_as_qemu_72(accel):
    if accel == "kvm" and NO_KVM is not None:
        pytest.skip(f"no usable /dev/kvm here: {NO_KVM}")
    args = ["-accel", accel, "-M", "none", "-S"]
    with QTestMachine(QEMU, args, accel_qtest=False) as qemu, QTestMachine(BIN, args, accel_qtest=False) as ours:
        assert ours.qmp.cmd("query-kvm") == qemu.qmp.cmd("query-kvm")


@pytest.mark.parametrize("args,message", [
    (["-accel", "kvm,foo=1"], "-accel kvm,foo=1: Property 'kvm-accel.foo' not found"),
    (["-accel", "tcg,foo=1"], "-accel tcg,foo=1: Property 'tcg-accel.foo' not found"),
    (["-accel", "kvm,dirty-ring-size=3"], "-accel kvm,dirty-ring-size=3: dirty-ring-size must be a power of two."),
    (["-accel", "kvm,dirty-ring-size=abc"],
     "-accel kvm,dirty-ring-size=abc: Parameter 'dirty-ring-size' expects uint64"),
    (["-accel", "kvm,kernel-irqchip=foo"],
     "-accel kvm,kernel-irqchip=foo: Parameter 'kernel-irqchip' does not accept value 'foo'"),
    # accepted by QEMU, not implemented here: refused, never ignored
    (["-accel", "kvm,kernel-irqchip=on"], "-accel kvm,kernel-irqchip=on: kernel-irqchip=on is not supported"),
    (["-accel", "tcg,tb-size=64"], "-accel tcg,tb-size=64: property tb-size of the tcg accelerator is not supported"),
])
def test_accel_property_errors(args, message):
    import subprocess

    proc = subprocess.run([BIN, *args, "-M", "none", "-display", "none"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"emu-system-x86_64: {message}"), proc.stderr


@needs_kvm
@pytest.mark.parametrize("src_accel,dst_accel", [("kvm", "kvm"), ("kvm", "tcg"), ("tcg", "kvm")])
def test_live_migration_between_accelerators(tmp, src_accel, dst_accel):
    """The A-B guest migrates live (dirtying RAM all along, so dirty tracking decides what is
    re-sent) and carries on at the destination without starting over; QEMU's memory check
    passes there. The CPU state crosses between KVM and Unicorn in the ``cpu`` section."""
    with QTestMachine(BIN, ab_args(tmp, src_accel, "src")) as src, \
            QTestMachine(BIN, [*ab_args(tmp, dst_accel, "dst"), "-incoming", "defer"]) as dst:
        wait_for_serial(tmp / "src-serial", timeout=60)
        src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 4 << 30})
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        passes = []
        while len(passes) < 2:  # a 1 ms downtime cannot be met: at least one dirty round is sent
            passes.append(src.qmp.wait_event("MIGRATION_PASS", timeout=120)["data"]["pass"])
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 30000})
        info = wait_completed(src)
        assert info["ram"]["dirty-sync-count"] >= 3
        wait_completed(dst)
        assert dst.qmp.cmd("query-kvm")["enabled"] == (dst_accel == "kvm")
        assert dst.qmp.cmd("query-status") == {"status": "running", "running": True}
        wait_for_serial(tmp / "dst-serial", timeout=60)
        dst.qmp.cmd("stop")
        check_guests_ram(dst.qtest)
        assert (tmp / "dst-serial").read_bytes().startswith(b"B")  # no reboot: no 'A'


def wait_measured(m: QTestMachine) -> dict:
    """Polls query-dirty-rate until the measurement ends (as QEMU's migration-test does)."""
    while True:
        info = m.qmp.cmd("query-dirty-rate")
        if info["status"] == "measured":
            return info
        assert info["status"] == "measuring", info


@pytest.mark.parametrize("args,message", [
    ({"calc-time": 0}, "Calculation time is out of range [50ms, 60000ms]."),
    ({"calc-time": 61}, "Calculation time is out of range [50ms, 60000ms]."),
    ({"calc-time": 49, "calc-time-unit": "millisecond"}, "Calculation time is out of range [50ms, 60000ms]."),
    ({"calc-time": 1, "sample-pages": 127}, "sample-pages is out of range[128, 16384]."),
    ({"calc-time": 1, "sample-pages": 512, "mode": "dirty-ring"}, "sample-pages is used only in page-sampling mode"),
    ({"calc-time": 1, "mode": "dirty-ring"}, "mode dirty-ring is not enabled, use other method instead."),
    ({"calc-time": 1, "mode": "dirty-bitmap"}, "mode dirty-bitmap needs the KVM accelerator here"),
])
def test_calc_dirty_rate_refusals_under_tcg(args, message):
    with QTestMachine(BIN, ["-M", "none"]) as m:
        with pytest.raises(Exception, match=message.replace("[", r"\[").replace(".", r"\.")):
            m.qmp.cmd("calc-dirty-rate", **args)
        assert m.qmp.cmd("query-dirty-rate") == {"status": "unstarted", "start-time": 0, "calc-time": 0,
                                                 "calc-time-unit": "second", "sample-pages": 0,
                                                 "mode": "page-sampling"}


def test_dirty_limit_needs_the_dirty_ring():
    with QTestMachine(BIN, ["-M", "none"]) as m:
        with pytest.raises(Exception, match="dirty page limit feature requires KVM with accelerator "
                                            "property 'dirty-ring-size' set'"):
            m.qmp.cmd("set-vcpu-dirty-limit", **{"dirty-rate": 10})
        assert m.qmp.cmd("cancel-vcpu-dirty-limit") == {}
        assert m.qmp.cmd("query-vcpu-dirty-limit") == []


def test_page_sampling_measures_a_running_guest(tmp):
    """The A-B guest (TCG) rewrites every page of 99 MiB per pass: sampled pages change."""
    with QTestMachine(BIN, ab_args(tmp, "tcg", "g")) as m:
        wait_for_serial(tmp / "g-serial", timeout=60)
        m.qmp.cmd("calc-dirty-rate", **{"calc-time": 200, "calc-time-unit": "millisecond"})
        info = wait_measured(m)
        assert info["mode"] == "page-sampling" and info["sample-pages"] == 512
        assert info["dirty-rate"] > 0 and info["calc-time"] == 0  # 200 ms, in seconds
        assert m.qmp.cmd("query-dirty-rate", **{"calc-time-unit": "millisecond"})["calc-time"] >= 200
        m.qmp.cmd("stop")
        m.qmp.cmd("calc-dirty-rate", **{"calc-time": 100, "calc-time-unit": "millisecond", "sample-pages": 1024})
        assert wait_measured(m)["dirty-rate"] == 0  # a stopped guest writes nothing


@needs_kvm
def test_dirty_bitmap_rate_under_kvm_and_the_ring_refusals(tmp):
    """Without a ring: dirty-bitmap measures the running guest from KVM's dirty logs; the ring
    mode and the limit are QEMU's refusals. With a ring, dirty-bitmap is refused."""
    with QTestMachine(BIN, ab_args(tmp, "kvm", "g")) as m:
        wait_for_serial(tmp / "g-serial", timeout=60)
        m.qmp.cmd("calc-dirty-rate", **{"calc-time": 500, "calc-time-unit": "millisecond", "mode": "dirty-bitmap"})
        info = wait_measured(m)
        assert info["mode"] == "dirty-bitmap" and info["sample-pages"] == 0 and "vcpu-dirty-rate" not in info
        assert info["dirty-rate"] > 0
        with pytest.raises(Exception, match="mode dirty-ring is not enabled"):
            m.qmp.cmd("calc-dirty-rate", **{"calc-time": 1, "mode": "dirty-ring"})
        with pytest.raises(Exception, match="dirty page limit feature requires KVM"):
            m.qmp.cmd("set-vcpu-dirty-limit", **{"dirty-rate": 100})
    with QTestMachine(BIN, ab_args(tmp, "kvm,dirty-ring-size=4096", "r")) as m:
        with pytest.raises(Exception, match="mode dirty-bitmap is not enabled, use other method instead."):
            m.qmp.cmd("calc-dirty-rate", **{"calc-time": 1, "mode": "dirty-bitmap"})


@needs_kvm
def test_dirty_ring_rate_and_vcpu_dirty_limit(tmp):
    """QEMU's vcpu_dirty_limit shape: the ring measures the guest's rate, a limit of half of it
    brings it under (within QEMU's 25 MB/s tolerance), cancelling lets it go back up."""
    args = ab_args(tmp, "kvm,dirty-ring-size=4096", "g")
    with QTestMachine(BIN, args) as m:
        wait_for_serial(tmp / "g-serial", timeout=60)
        m.qmp.cmd("calc-dirty-rate", **{"calc-time": 1, "mode": "dirty-ring"})
        info = wait_measured(m)
        assert info["sample-pages"] == 0 and info["mode"] == "dirty-ring"
        [vcpu] = info["vcpu-dirty-rate"]
        origin = vcpu["dirty-rate"]
        assert vcpu["id"] == 0 and origin == info["dirty-rate"] > 0
        with pytest.raises(Exception, match="incorrect cpu index specified"):
            m.qmp.cmd("set-vcpu-dirty-limit", **{"cpu-index": 1, "dirty-rate": origin // 2})
        m.qmp.cmd("set-vcpu-dirty-limit", **{"dirty-rate": origin // 2})
        assert [e["limit-rate"] for e in m.qmp.cmd("query-vcpu-dirty-limit")] == [origin // 2]
        for _ in range(10):
            m.qmp.cmd("calc-dirty-rate", **{"calc-time": 1, "mode": "dirty-ring"})
            if wait_measured(m)["dirty-rate"] < origin // 2 + 25:
                break
        else:
            pytest.fail("the limit never took effect")
        m.qmp.cmd("cancel-vcpu-dirty-limit")
        assert m.qmp.cmd("query-vcpu-dirty-limit") == []
        for _ in range(10):
            m.qmp.cmd("calc-dirty-rate", **{"calc-time": 1, "mode": "dirty-ring"})
            if wait_measured(m)["dirty-rate"] > origin // 2 + 25:
                break
        else:
            pytest.fail("the rate never went back up")


JUMP_TO_MMIO_GUEST = ENTER_FLAT_PM + r"""
    mov %ax, %ss
    mov $'J', %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $0xd0000000, %eax              # nothing is mapped there: KVM cannot fetch the code
    jmp *%eax
"""


def internal_error_report(binary: str, tmp: Path, image: Path, timeout: float) -> list[str]:
    """Runs the jump-to-MMIO guest under ``binary -accel kvm`` until the VM stops; checks the
    internal-error state and returns the report lines (from 'KVM internal error' to
    'emulation failure')."""
    serial = tmp / f"serial-{Path(binary).name}"
    args = ["-accel", "kvm", "-m", "64M", "-drive", f"file={image},format=raw", "-serial", f"file:{serial}", "-S"]
    with QTestMachine(binary, args, accel_qtest=binary == BIN, timeout=timeout) as m:
        m.qmp.cmd("cont")  # (-S: the guest fails in a moment, before QMP would see a STOP event)
        m.qmp.wait_event("STOP", timeout=timeout)
        status = m.qmp.cmd("query-status")  # (7.2 adds "singlestep")
        assert (status["status"], status["running"]) == ("internal-error", False)
        with pytest.raises(Exception, match="Resetting the Virtual Machine is required"):
            m.qmp.cmd("cont")
    assert serial.read_bytes() == b"J"
    lines = m.stderr_text().splitlines()
    first = lines.index("KVM internal error. Suberror: 1")
    end = lines.index("emulation failure", first)
    assert all(line.startswith("extra data[") for line in lines[first + 1:end])
    return lines[first:end + 1]


def mmio_guest(tmp: Path, assemble) -> Path:

    image = tmp / "disk.img"
    image.write_bytes(assemble(JUMP_TO_MMIO_GUEST + gdt(FLAT_CODE32, FLAT_DATA32) + ".org 510\n.byte 0x55, 0xaa\n")
                      .ljust(1 << 20, b"\0"))
    return image


@needs_kvm
def test_code_fetched_from_mmio_is_a_kvm_internal_error(tmp, assemble):
    """KVM cannot run code outside memory slots: 'KVM internal error. Suberror: 1', the kernel's
    extra data, 'emulation failure', and the VM stops in internal-error, as QEMU does."""
    internal_error_report(BIN, tmp, mmio_guest(tmp, assemble), 60)


@needs_kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (CI installs it)")
def test_kvm_internal_error_report_matches_qemu_72(tmp, assemble):
    """The same lines as QEMU 7.2 prints for the same guest on this host (QEMU then dumps the
    registers, which we do not). QEMU boots through SeaBIOS, which a software-assisted KVM runs
    slowly: it gets a long time."""
    image = mmio_guest(tmp, assemble)
    assert internal_error_report(BIN, tmp, image, 60) == internal_error_report(QEMU, tmp, image, 900)
