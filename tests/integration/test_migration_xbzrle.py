"""XBZRLE on the wire: QEMU's /migration/precopy/unix/xbzrle on the live A-B guest between our
processes, and a multi-round XBZRLE stream from our saver loaded by ours and by Debian's QEMU 7.2
(which decodes XBZRLE without the capability)."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_migration import BIN, QEMU, ab_args, events_on, wait_completed

from qtest.machine import QTestMachine
from qtest.migration import check_guests_ram, wait_for_serial

NONE16 = ["-M", "none", "-m", "16M"]
CACHE = 33554432


def xbzrle_on(m: QTestMachine) -> None:
    """QEMU's test_migrate_xbzrle_start: a 32 MiB cache, then the capability."""
    m.qmp.cmd("migrate-set-parameters", **{"xbzrle-cache-size": CACHE})
    m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True}])


def test_precopy_unix_xbzrle_live_ab_guest(tmp):
    """/migration/precopy/unix/xbzrle: xbzrle on both sides, two passes before converging; the
    guest's one-byte-per-page increments travel as XBZRLE deltas and the memory check passes."""
    common = ab_args(tmp)
    with QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/src-serial"]) as src, \
            QTestMachine(BIN, [*common, "-serial", f"file:{tmp}/dst-serial", "-incoming", "defer"]) as dst:
        xbzrle_on(src)
        xbzrle_on(dst)
        events_on(src)
        wait_for_serial(tmp / "src-serial", timeout=60)
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 4 << 30})
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/migsocket")
        src.qmp.cmd("migrate", uri=f"unix:{tmp}/migsocket")
        passes = 0
        while passes < 4:  # the bulk round, a round of misses that fill the cache, then hits
            src.qmp.wait_event("MIGRATION_PASS", timeout=120)
            passes += 1
        info = src.qmp.cmd("query-migrate")
        assert info["xbzrle-cache"]["cache-size"] == CACHE
        # a new size while running: reported at once (the cache itself stays, as in QEMU 9.1)
        src.qmp.cmd("migrate-set-parameters", **{"xbzrle-cache-size": CACHE // 2})
        assert src.qmp.cmd("query-migrate")["xbzrle-cache"]["cache-size"] == CACHE // 2
        src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 30000})
        info = wait_completed(src, timeout=120)
        cache = info["xbzrle-cache"]
        assert cache["pages"] > 0 and cache["cache-miss"] > 0 and 0 < cache["bytes"] < cache["pages"] * 4096
        wait_completed(dst)
        wait_for_serial(tmp / "dst-serial", timeout=60)
        assert (tmp / "dst-serial").read_bytes().startswith(b"B")
        dst.qmp.cmd("stop")
        check_guests_ram(dst.qtest)


def xbzrle_stream(path: Path) -> bytes:
    """A -M none 16 MiB stream written by our precopy saver with XBZRLE, deterministically: pages
    change between the rounds (a guest would do that; -M none has no CPU, and qtest writes race
    the migration loop). Round 2 fills the cache, round 3 sends deltas. Returns the final RAM."""
    import random

    from emu.migration.precopy import PrecopySaver
    from emu.migration.stream import QEMU_VM_SECTION_PART, StreamWriter, machine_none_devices
    from emu.migration.xbzrle import XbzrleCache
    from emu.ram import RamBlock

    rng = random.Random(7)
    block = RamBlock("ram", 16 << 20)
    block.write(0x200000, rng.randbytes(64 * 4096))
    cache = XbzrleCache(CACHE)
    with open(path, "wb") as f:
        saver = PrecopySaver(StreamWriter(f), [block], "none", xbzrle=cache)
        saver.start()
        dirty = PrecopySaver.all_pages([block])
        for generation in range(1, 5):
            saver.generation = generation
            saver.send_pages(dirty, QEMU_VM_SECTION_PART, lambda n: None)
            saver.xbzrle_started = True
            for page in range(64):  # a few bytes of each page change, as a running guest does
                block.write(0x200000 + page * 4096 + rng.randrange(4000), rng.randbytes(3))
            block.write(0x200000 + 5 * 4096, bytes(4096))  # one page becomes zero...
            block.write(0x200000 + 6 * 4096, rng.randbytes(4096))  # ...and one changes entirely
            dirty = saver.sync()
        saver.generation = 5
        saver.finish(dirty, machine_none_devices(), "running")
    stats = cache.stats
    # round 2: 63 misses (the zero page is cached as zeros, not missed); rounds 3-4: deltas and
    # the fully changed page overflowing
    assert stats.cache_miss == 63 and stats.xbzrle >= 2 * 62 and stats.overflow >= 2
    return block.read(0, 16 << 20)


def test_our_xbzrle_stream_loads_into_ours(tmp):
    expected = xbzrle_stream(tmp / "stream")
    with QTestMachine(BIN, [*NONE16, "-incoming", f"exec:cat {tmp}/stream"]) as dst:
        wait_completed(dst)
        assert dst.qtest.bufread(0, 16 << 20) == expected


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (CI installs it)")
def test_our_xbzrle_stream_loads_into_qemu_72(tmp):
    """Debian's QEMU 7.2 applies our XBZRLE records (no capability needed on its side)."""
    expected = xbzrle_stream(tmp / "stream")
    with QTestMachine(QEMU, [*NONE16, "-nodefaults", "-S", "-incoming", f"exec:cat {tmp}/stream"],
                      accel_qtest=False) as dst:
        wait_completed(dst)
        dst.qmp.cmd("pmemsave", val=0, size=16 << 20, filename=str(tmp / "dump"))
        assert (tmp / "dump").read_bytes() == expected


def test_a_cache_that_cannot_be_allocated_fails_the_migration_and_the_vm_runs_on(tmp):
    with QTestMachine(BIN, NONE16) as src:
        src.qmp.cmd("migrate-set-parameters", **{"xbzrle-cache-size": 1 << 60})
        src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True}])
        events_on(src)
        src.qmp.cmd("migrate", uri=f"exec:cat > {tmp}/stream")
        seen = []
        while not seen or seen[-1] not in ("failed", "completed"):
            seen.append(src.qmp.wait_event("MIGRATION", timeout=30)["data"]["status"])
        assert seen == ["setup", "failed"]
        assert src.qmp.cmd("query-migrate")["error-desc"] == "Failed to allocate page cache"
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}
        src.qmp.cmd("migrate-set-parameters", **{"xbzrle-cache-size": CACHE})  # and it can go again
        src.qmp.cmd("migrate", uri=f"exec:cat > {tmp}/stream")
        wait_completed(src)
