"""Multifd between processes: ports of QEMU's /migration/multifd/tcp/* cases (uri and channels,
zero-page modes, compression, cancel) on the live A-B guest, and both directions with Debian's
QEMU 7.2, whose per-section sync rule our side selects with
``-global migration.multifd-flush-after-each-section=on`` as a 9.1 QEMU would."""
from __future__ import annotations

import random

import pytest
from test_migration import BIN, QEMU, ab_args, events_on, guest_goes_on, migrate, statuses, wait_completed

from qtest.machine import QTestMachine
from qtest.migration import wait_for_serial

needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (CI installs it)")
NONE64 = ["-M", "none", "-m", "64M"]
FLUSH_EACH_SECTION = ["-global", "migration.multifd-flush-after-each-section=on"]


def multifd_on(m: QTestMachine, channels: int = 16, compression: str = "none") -> None:
    """QEMU's test_migrate_precopy_tcp_multifd_start_common: channels and compression, then the cap."""
    m.qmp.cmd("migrate-set-parameters", **{"multifd-channels": channels, "multifd-compression": compression})
    m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])


def incoming_tcp_port(dst: QTestMachine) -> int:
    dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
    (sa,) = dst.qmp.cmd("query-migrate")["socket-address"]
    return int(sa["port"])


def run_live(src: QTestMachine, **migrate_args: object) -> dict:
    """Starts non-converging, lets two passes go by, then converges (QEMU's precopy test shape)."""
    events_on(src)
    src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 4 << 30})
    src.qmp.cmd("migrate", **migrate_args)
    seen = 0
    while seen < 2:
        if src.qmp.wait_event("MIGRATION_PASS", timeout=120)["data"]["pass"]:
            seen += 1
    src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 30000})
    return wait_completed(src, timeout=120)


@pytest.mark.parametrize("case", ["uri/plain/none", "channels/plain/none", "plain/zero-page/legacy",
                                  "plain/zero-page/none", "plain/zlib", "plain/zstd"])
def test_multifd_tcp_live_ab_guest(tmp, case):
    """/migration/multifd/tcp/<case>: 16 channels on both sides, the destination on port 0, a live
    A-B guest; the guest goes on at the destination and the memory check passes there."""
    compression = case.rsplit("/", 1)[1] if case.startswith("plain/z") and "zero-page" not in case else "none"
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"]) as src, \
            QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst-serial", "-incoming", "defer"]) as dst:
        wait_for_serial(tmp / "src-serial", timeout=60)
        multifd_on(src, compression=compression)
        multifd_on(dst, compression=compression)
        if "zero-page" in case:
            src.qmp.cmd("migrate-set-parameters", **{"zero-page-detection": case.rsplit("/", 1)[1]})
        port = incoming_tcp_port(dst)
        if case.startswith("channels"):
            info = run_live(src, channels=[{"channel-type": "main", "addr": {
                "transport": "socket", "type": "inet", "host": "127.0.0.1", "port": str(port)}}])
        else:
            info = run_live(src, uri=f"tcp:127.0.0.1:{port}")
        ram = info["ram"]
        assert ram["normal-bytes"] > (100 << 20) and ram["transferred"] > ram["multifd-bytes"] > 0
        if compression == "none":
            assert ram["multifd-bytes"] > ram["normal-bytes"]
        else:  # the guest's pages (one byte value each) compress well
            assert ram["multifd-bytes"] < ram["normal-bytes"] // 10
        if case.endswith("zero-page/none"):
            assert ram["duplicate"] == 0
        else:
            assert ram["duplicate"] > 0
        wait_completed(dst)
        assert dst.qmp.cmd("query-status") == {"status": "running", "running": True}
        guest_goes_on(dst, tmp / "dst-serial")
        assert (tmp / "dst-serial").read_bytes().startswith(b"B")  # went on, did not reboot


def test_multifd_tcp_cancel_then_migrate_again(tmp):
    """/migration/multifd/tcp/plain/cancel: cancel mid-stream; the first destination exits 1; a new
    destination takes a second migration to completion."""
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"]) as src:
        wait_for_serial(tmp / "src-serial", timeout=60)
        multifd_on(src)
        events_on(src)
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 1 << 20})
        with QTestMachine(BIN, [*common, "-incoming", "defer"]) as dst1:
            dst1.set_expected_status(1)
            multifd_on(dst1)
            port = incoming_tcp_port(dst1)
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            assert statuses(src, until="active") == ["setup", "active"]
            src.qmp.cmd("migrate_cancel")
            assert statuses(src, until="cancelled") == ["cancelling", "cancelled"]
            assert dst1.wait(timeout=30, check=False) == 1
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}
        with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst2-serial", "-incoming", "defer"]) as dst2:
            multifd_on(dst2)
            port = incoming_tcp_port(dst2)
            src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 30000, "max-bandwidth": 4 << 30})
            src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            wait_completed(src, timeout=120)
            wait_completed(dst2)
            guest_goes_on(dst2, tmp / "dst2-serial")


def test_multifd_uuid_mismatch_fails_the_destination_with_qemus_text(tmp):
    """Every multifd channel announces the source's uuid; a destination with another -uuid refuses
    the first channel with QEMU's message and exits 1."""
    with QTestMachine(BIN, [*NONE64, "-S", "-uuid", "11111111-1111-1111-1111-111111111111"]) as src:
        with QTestMachine(BIN, [*NONE64, "-incoming", "defer", "-uuid", "22222222-2222-2222-2222-222222222222"]) as dst:
            dst.set_expected_status(1)
            multifd_on(src, 2)
            multifd_on(dst, 2)
            dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
            src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
            assert dst.wait(timeout=30, check=False) == 1
            assert ("failed to receive packet via multifd channel 0: multifd: received uuid "
                    "'11111111-1111-1111-1111-111111111111' and expected uuid "
                    "'22222222-2222-2222-2222-222222222222' for channel 0") in dst.stderr_text()


def fill_random(m: QTestMachine, seed: int) -> bytes:
    """Random runs and a filled range in 64 MiB; returns the whole RAM as written."""
    rng = random.Random(seed)
    for addr, n in ((0, 4096), (0x1234, 777), (0x100000, 3 << 20), (0x3FFF000, 4096)):
        m.qtest.bufwrite(addr, rng.randbytes(n))
    m.qtest.memset(0x800000, 0xAB, 5 * 4096)
    return m.qtest.bufread(0, 64 << 20)


@needs_qemu
@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_our_multifd_source_into_qemu_72(tmp, compression):
    """Ours → Debian's QEMU 7.2 with 4 channels: 7.2 wants zero pages on the main stream (legacy)
    and one SYNC per channel per RAM EOS; its RAM (pmemsave) equals ours byte for byte."""
    with QTestMachine(BIN, [*NONE64, "-S", *FLUSH_EACH_SECTION]) as src, \
            QTestMachine(QEMU, [*NONE64, "-nodefaults", "-S", "-incoming", "defer"], accel_qtest=False) as dst:
        expected = fill_random(src, 1)
        multifd_on(src, 4, compression)
        multifd_on(dst, 4, compression)
        src.qmp.cmd("migrate-set-parameters", **{"zero-page-detection": "legacy"})
        info = migrate(src, dst, uri=f"unix:{tmp}/m.sock")
        dst.qmp.cmd("pmemsave", val=0, size=64 << 20, filename=str(tmp / "dump"))
        assert (tmp / "dump").read_bytes() == expected
        if compression == "none":
            # 776 non-zero pages: 775 in the first 4096-page batch (7 packets), 1 in the last (1),
            # and 3 SYNC packets on each of the 4 channels
            assert info["ram"]["normal"] == 776
            assert info["ram"]["multifd-bytes"] == (8 + 12) * 1344 + 776 * 4096


@needs_qemu
@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_qemu_72_multifd_source_into_ours(tmp, compression):
    """Debian's QEMU 7.2 → ours with 4 channels (its RAM filled by loading our stream first, since it
    has no qtest accelerator); all 64 MiB compare equal."""
    stream = tmp / "stream"
    with QTestMachine(BIN, [*NONE64, "-S"]) as origin:
        expected = fill_random(origin, 2)
        origin.qmp.cmd("migrate", uri=f"exec:cat > {stream}")
        wait_completed(origin)
    with QTestMachine(QEMU, [*NONE64, "-nodefaults", "-S", "-incoming", f"exec:cat {stream}"],
                      accel_qtest=False) as src, \
            QTestMachine(BIN, [*NONE64, "-S", "-incoming", "defer", *FLUSH_EACH_SECTION]) as dst:
        wait_completed(src)
        multifd_on(src, 4, compression)
        multifd_on(dst, 4, compression)
        migrate(src, dst, uri=f"unix:{tmp}/m.sock")
        assert dst.qmp.cmd("query-status") == {"status": "prelaunch", "running": False}
        assert dst.qtest.bufread(0, 64 << 20) == expected


def test_multifd_flush_property_value_is_checked():
    import subprocess

    out = subprocess.run([BIN, *NONE64, "-global", "migration.multifd-flush-after-each-section=maybe"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr == ("emu-system-x86_64: can't apply global migration.multifd-flush-after-each-section=maybe: "
                          "Parameter 'multifd-flush-after-each-section' expects 'on' or 'off'\n")


def test_a_failing_multifd_channel_fails_both_sides_instead_of_hanging(tmp):
    """zlib on the source, none on the destination: the destination's channel refuses the packet
    flags with QEMU's text and shuts every channel down, so the source's writes fail too."""
    with QTestMachine(BIN, [*NONE64, "-S"]) as src, QTestMachine(BIN, [*NONE64, "-incoming", "defer"]) as dst:
        fill_random(src, 3)
        multifd_on(src, 2, "zlib")
        multifd_on(dst, 2, "none")
        events_on(dst)
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock", **{"exit-on-error": False})
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/m.sock")
        assert statuses(dst, until="failed")[-1] == "failed"
        desc = dst.qmp.cmd("query-migrate")["error-desc"]
        assert desc in ("multifd 0: flags received 2 flags expected 0", "multifd 1: flags received 2 flags expected 0")
        while (status := src.qmp.cmd("query-migrate")["status"]) not in ("failed", "completed"):
            pass
        assert status == "failed"
        assert src.qmp.cmd("query-status")["status"] == "prelaunch"  # as it was before the migration
