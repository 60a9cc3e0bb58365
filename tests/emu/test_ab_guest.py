"""The A-B migration test guest (guests/ab-bootsect.S) on bare Unicorn, without any emulator code.

* The committed image must be what the committed source assembles to (when binutils are present).
* Run under Unicorn the way ../shared/spec/unicorn-notes.md describes (engine in UC_MODE_32, CR0 = 0x10, real-mode
  segments zero, EIP = 0x7c00), it prints ``A`` and then ``B`` on COM1, and guest RAM satisfies QEMU's
  ``check_guests_ram`` rule.
* Execution resumes correctly across ``emu_start`` slices in real mode and in protected mode.
* The parameter block at offset 0x1f0 (passes per ``B``, first and end address) is patchable.
* Unicorn 2.1.4's asynchronous stop is not instruction-precise (xfail test documenting it).
"""
from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_32, Uc  # noqa: E402
from unicorn.x86_const import (  # noqa: E402
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_REG_CR0,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EAX,
    UC_X86_REG_EDX,
    UC_X86_REG_EIP,
    UC_X86_REG_ES,
    UC_X86_REG_GS,
    UC_X86_REG_SS,
)

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
SOURCE = GUESTS / "ab-bootsect.S"
IMAGE = GUESTS / "ab-bootsect.bin"

LOAD_ADDR = 0x7C00
RAM_SIZE = 128 << 20
PAGE = 4096

# Parameter block (see guests/README.md): little-endian u32 values at fixed sector offsets.
OFF_PASSES_PER_B = 0x1F0
OFF_MEM_START = 0x1F4
OFF_MEM_END = 0x1F8
MEM_START = 0x0010_0000
MEM_END = 0x0640_0000
PAGES_PER_PASS = (MEM_END - MEM_START) // PAGE  # 25344

COM1 = 0x3F8
COM1_LSR = 0x3FD
PORT_A = 0x92
UNTIL = 0xFFFF_FFFF   # never reached: slices end by timeout or emu_stop()
SLICE_US = 20_000               # wall-clock budget of one slice, ended at the next pass start
SAFETY_TIMEOUT_US = 5_000_000   # emu_start(timeout=): only if a pass never starts
WALL_LIMIT = 60.0


# First instruction of the pass loop, `movl mem_start, %eax` (a1 f4 7d 00 00): a TB starts here
# on every pass after the first (the target of `jnz pass`).
_PASS_INSN = b"\xa1" + struct.pack("<I", LOAD_ADDR + OFF_MEM_START)
PASS_ADDR = LOAD_ADDR + IMAGE.read_bytes().index(_PASS_INSN)
INCB_ADDR = LOAD_ADDR + IMAGE.read_bytes().index(b"\xfe\x00", PASS_ADDR - LOAD_ADDR)  # incb (%eax)


def image(passes_per_b: int | None = None) -> bytes:
    data = bytearray(IMAGE.read_bytes())
    if passes_per_b is not None:
        struct.pack_into("<I", data, OFF_PASSES_PER_B, passes_per_b)
    return bytes(data)


class Guest:
    """A bare Unicorn x86 engine with the sector at 0x7c00 and COM1/port 0x92 hooks.

    Slicing: Unicorn 2.1.4 does not stop precisely on an asynchronous ``emu_stop()`` (the
    ``timeout=`` thread, or another thread) that lands while ``incb (%eax)`` is in its memory
    slow path: the store is committed but EIP/EAX are rewound to the ``incb``, so the resumed slice
    increments that page a second time and QEMU's check_guests_ram rule breaks (see
    test_async_timeout_stop_is_not_instruction_precise). So a slice here ends synchronously: a
    UC_HOOK_BLOCK bounded to the first instruction of the pass (one Python call per pass) calls
    ``emu_stop()`` once the slice's wall-clock budget is spent. ``timeout=`` stays as a safety net
    only; ``async_stops`` counts the slices that ended that way.
    """

    def __init__(self, sector: bytes, stop_on_b: bool = False, pass_boundary_slices: bool = True):
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, RAM_SIZE)
        uc.mem_write(LOAD_ADDR, sector)
        # Real mode inside a 32-bit engine: PE clear (ET set), segments 0.
        uc.reg_write(UC_X86_REG_CR0, 0x10)
        for reg in (UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_SS):
            uc.reg_write(reg, 0)
        uc.reg_write(UC_X86_REG_EIP, LOAD_ADDR)
        uc.reg_write(UC_X86_REG_EDX, 0x80)
        self.serial = bytearray()
        self.serial_times: list[float] = []
        self.port_log: list[tuple] = []
        self.stop_on_b = stop_on_b
        self.pc = LOAD_ADDR
        self.deadline = 0.0
        self.sync_stop = False
        self.async_stops = 0
        self.emu_time = 0.0     # seconds spent inside run_slice()'s emu_start
        uc.hook_add(UC_HOOK_INSN, self._in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._out, None, 1, 0, UC_X86_INS_OUT)
        if pass_boundary_slices:
            uc.hook_add(UC_HOOK_BLOCK, self._pass_start, None, PASS_ADDR, PASS_ADDR)

    def _in(self, uc, port, size, user_data):
        self.port_log.append(("in", port, size))
        if port == COM1_LSR:
            return 0x60  # THR empty, transmitter empty
        return 0

    def _out(self, uc, port, size, value, user_data):
        self.port_log.append(("out", port, size, value))
        if port == COM1:
            self.serial.append(value & 0xFF)
            self.serial_times.append(time.monotonic())
            if self.stop_on_b and value & 0xFF == ord("B"):
                self.sync_stop = True
                uc.emu_stop()

    def _pass_start(self, uc, address, size, user_data):
        if time.monotonic() >= self.deadline:
            self.sync_stop = True
            uc.emu_stop()

    def step(self, count: int = 1) -> None:
        self.uc.emu_start(self.pc, UNTIL, count=count)
        self.pc = self.uc.reg_read(UC_X86_REG_EIP)

    def run_slice(self, slice_us: int = SLICE_US, timeout_us: int = SAFETY_TIMEOUT_US) -> None:
        self.deadline = time.monotonic() + slice_us / 1e6
        self.sync_stop = False
        t = time.monotonic()
        self.uc.emu_start(self.pc, UNTIL, timeout=timeout_us)
        self.emu_time += time.monotonic() - t
        self.pc = self.uc.reg_read(UC_X86_REG_EIP)
        if not self.sync_stop:
            self.async_stops += 1

    def run_until(self, predicate, wall: float = WALL_LIMIT, **slice_args) -> int:
        """Run in slices until predicate() holds; fail after `wall` seconds. Returns the slice count."""
        deadline = time.monotonic() + wall
        slices = 0
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"guest did not get there in {wall:.0f}s; serial={bytes(self.serial)!r}, "
                            f"eip={self.pc:#x}")
            self.run_slice(**slice_args)
            slices += 1
        return slices

    def page_bytes(self, start: int = MEM_START, end: int = MEM_END) -> bytes:
        return bytes(self.uc.mem_read(start, end - start))[::PAGE]

    @property
    def protected(self) -> bool:
        return bool(self.uc.reg_read(UC_X86_REG_CR0) & 1)


def check_guests_ram(pages: bytes) -> list[str]:
    """QEMU's migration-test rule: each page equals its predecessor, except at most one place
    where it is exactly one less (mod 256). Returns the inconsistencies."""
    bad = []
    last = pages[0]
    hit_edge = False
    for i, b in enumerate(pages[1:], start=1):
        if b != last:
            if (b + 1) % 256 == last and not hit_edge:
                hit_edge = True
            else:
                bad.append(f"Memory content inconsistency at {MEM_START + i * PAGE:#x} "
                           f"first_byte = {pages[0]} last_byte = {last} current = {b} hit_edge = {hit_edge}")
            last = b
    return bad


# --------------------------------------------------------------------------------------------
# The image


def test_image_layout():
    data = IMAGE.read_bytes()
    assert len(data) == 512
    assert data[510:] == b"\x55\xaa"
    assert struct.unpack_from("<III", data, OFF_PASSES_PER_B) == (256, MEM_START, MEM_END)
    assert PAGES_PER_PASS == 99 * 256


def test_check_guests_ram_rule():
    assert check_guests_ram(bytes([5] * 10)) == []
    assert check_guests_ram(bytes([5] * 4 + [4] * 6)) == []
    assert check_guests_ram(bytes([0] * 4 + [255] * 6)) == []
    assert len(check_guests_ram(bytes([5] * 4 + [6] * 6))) == 1
    assert len(check_guests_ram(bytes([5, 4, 3]))) == 1
    assert len(check_guests_ram(bytes([5, 4, 4, 5]))) == 1


def test_reassembled_image_matches_committed(tmp_path):
    # GNU binutils are a declared test dependency (.ci/run installs them)
    obj, elf, out = tmp_path / "ab.o", tmp_path / "ab.elf", tmp_path / "ab.bin"
    subprocess.run(["as", "--32", "-o", str(obj), str(SOURCE)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "-e", "_start", "-o", str(elf), str(obj)],
                   check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(elf), str(out)], check=True)
    assert out.read_bytes() == IMAGE.read_bytes(), "guests/ab-bootsect.bin is stale: run make -C guests"


# --------------------------------------------------------------------------------------------
# Running it


def test_ab_guest_prints_a_then_b_and_ram_is_consistent():
    g = Guest(image())
    t0 = time.monotonic()
    g.run_until(lambda: b"A" in g.serial)
    t_a = g.serial_times[0]
    slices = g.run_until(lambda: g.serial.count(b"B") >= 1)
    t_b = g.serial_times[-1]
    assert bytes(g.serial) == b"AB"
    assert slices > 1 and g.async_stops == 0
    # Stopped at a pass start after 256 + k passes: every page holds k.
    pages = g.page_bytes()
    assert len(set(pages)) == 1 and check_guests_ram(pages) == []

    # Stop in the middle of a pass, precisely: a code hook on the `incb` only while we want it.
    # Hooks only instrument code translated after hook_add: drop the cached loop TB both times.
    target = MEM_START + 12_345 * PAGE
    def stop_at_target(uc, address, size, user_data):
        if uc.reg_read(UC_X86_REG_EAX) == target:
            uc.emu_stop()
    h = g.uc.hook_add(UC_HOOK_CODE, stop_at_target, None, INCB_ADDR, INCB_ADDR)
    g.uc.ctl_remove_cache(INCB_ADDR, INCB_ADDR + 1)
    g.deadline = float("inf")   # no pass-boundary stop in this run
    g.uc.emu_start(g.pc, UNTIL, timeout=SAFETY_TIMEOUT_US)
    g.uc.hook_del(h)
    g.uc.ctl_remove_cache(INCB_ADDR, INCB_ADDR + 1)
    g.pc = g.uc.reg_read(UC_X86_REG_EIP)
    assert g.pc == INCB_ADDR and g.uc.reg_read(UC_X86_REG_EAX) == target
    pages = g.page_bytes()
    k = pages[-1]
    assert pages[:12_345] == bytes([(k + 1) % 256]) * 12_345 and set(pages[12_345:]) == {k}
    assert check_guests_ram(pages) == []            # the one permitted edge
    assert any(pages)                               # the loop ran
    # Nothing outside [1 MiB, 100 MiB) was touched by the loop.
    assert g.uc.mem_read(MEM_START - PAGE, 1)[0] == 0
    assert g.uc.mem_read(MEM_END, 1)[0] == 0

    # Resume from the middle of the pass: more slices, still consistent.
    g.run_until(lambda: g.page_bytes(MEM_START, MEM_START + PAGE)[0] != pages[0])
    g.run_slice()
    assert check_guests_ram(g.page_bytes()) == []
    assert g.async_stops == 0

    # Ports: fast A20 read-modify-write of port 0x92, LSR polled before each COM1 write.
    assert g.port_log[0] == ("in", PORT_A, 1)
    assert g.port_log[1] == ("out", PORT_A, 1, 0x02)
    assert ("in", COM1_LSR, 1) in g.port_log
    assert g.protected and g.uc.reg_read(UC_X86_REG_CS) == 0x08

    rate = 256 / (t_b - t_a)
    print(f"\nA-B guest on Unicorn: first B {t_b - t0:.2f}s after start over {slices} slices; "
          f"{rate:.0f} passes/s = {rate / 256:.2f} B/s at 256 passes per B")


def test_patched_passes_per_b_and_resume_after_emu_stop():
    """Offset 0x1f0 patched to 1: one B per pass. Stopping from the OUT hook at each B and resuming
    in protected mode: after the n-th B every page holds exactly n."""
    g = Guest(image(passes_per_b=1), stop_on_b=True)
    g.run_until(lambda: b"A" in g.serial)
    emu_time = 0.0
    for n in range(1, 6):
        before = g.emu_time
        g.run_until(lambda n=n: g.serial.count(b"B") >= n)
        if n > 1:
            emu_time += g.emu_time - before
        assert g.protected
        pages = g.page_bytes()
        assert set(pages) == {n}, f"after B #{n}: {sorted(set(pages))}"
    print(f"\nA-B guest patched to 1 pass per B: {4 / emu_time:.0f} passes/s (time in emu_start)")
    assert bytes(g.serial) == b"ABBBBB"
    assert g.async_stops == 0


def test_parameter_block_is_read_at_run_time():
    """The pass range and passes-per-B are re-read from guest RAM, so they can be patched live."""
    sector = bytearray(image(passes_per_b=1))
    struct.pack_into("<II", sector, OFF_MEM_START, 0x200000, 0x300000)  # 256 pages only
    g = Guest(bytes(sector), stop_on_b=True)
    g.run_until(lambda: g.serial.count(b"B") >= 3)
    assert set(g.page_bytes(0x200000, 0x300000)) == {3}
    assert g.uc.mem_read(MEM_START, 1)[0] == 0 and g.uc.mem_read(0x300000, 1)[0] == 0
    # Live patch: 2 passes per B from the next B on.
    g.uc.mem_write(LOAD_ADDR + OFF_PASSES_PER_B, struct.pack("<I", 2))
    # We stopped inside putc('B'); the guest reloads the count right after it.
    g.run_until(lambda: g.serial.count(b"B") >= 4)
    assert set(g.page_bytes(0x200000, 0x300000)) == {5}
    g.run_until(lambda: g.serial.count(b"B") >= 5)
    assert set(g.page_bytes(0x200000, 0x300000)) == {7}


@pytest.mark.xfail(strict=False, reason="Unicorn 2.1.4: an async stop (timeout=) inside incb's memory "
                   "slow path commits the store but rewinds EIP, so the page is incremented twice")
def test_async_timeout_stop_is_not_instruction_precise():
    """Pure `timeout=` slicing (no pass-boundary hook): the memory contract should hold, but on
    Unicorn 2.1.4 each asynchronous stop usually leaves one page one ahead of its neighbours."""
    g = Guest(image(passes_per_b=1), stop_on_b=True, pass_boundary_slices=False)
    while g.serial.count(b"B") < 3:
        g.run_slice(timeout_us=3_000)
    bad = check_guests_ram(g.page_bytes())
    print(f"\n{g.async_stops} async timeout stops, {len(bad)} inconsistent pages")
    assert g.async_stops > 0
    assert bad == [], "\n".join(bad[:10])


def test_single_step_resume_through_real_to_protected_mode():
    """emu_start(count=1) slices: real-mode instructions decode as 16-bit, the far jump switches to
    32-bit decoding, and later slices (count and timeout) resume in protected mode."""
    g = Guest(image())
    trace = []
    for _ in range(20):
        trace.append((g.pc, g.protected, g.uc.reg_read(UC_X86_REG_CS)))
        g.step()
        if g.uc.reg_read(UC_X86_REG_CS) == 0x08:
            break
    # Real-mode instruction boundaries of the sector (16-bit encodings).
    real_pcs = [pc - LOAD_ADDR for pc, _, _ in trace]
    assert real_pcs == [0x00, 0x01, 0x03, 0x05, 0x07, 0x0A, 0x0C, 0x0E, 0x10, 0x12, 0x18, 0x1B, 0x1F, 0x22]
    assert all(cs == 0 for _, _, cs in trace)
    assert [p for _, p, _ in trace][-3:] == [False, False, True]   # PE set by mov %eax,%cr0
    assert g.pc == LOAD_ADDR + 0x2A and g.protected                # after the far jump

    # 32-bit decoding: `mov $0x10,%ax` is 66 b8 10 00 (4 bytes), then 2-byte segment loads.
    g.step()
    assert g.pc == LOAD_ADDR + 0x2E
    g.step()
    assert g.pc == LOAD_ADDR + 0x30 and g.uc.reg_read(UC_X86_REG_DS) == 0x10
    g.step(3)  # FS, GS, ESP
    assert g.pc == LOAD_ADDR + 0x39 and g.uc.reg_read(UC_X86_REG_GS) == 0x10
    assert g.uc.reg_read(UC_X86_REG_SS) == 0  # left as real mode loaded it, as in QEMU's guest

    # Timeout slices from here reach A and B.
    g.run_until(lambda: b"B" in g.serial)
    assert bytes(g.serial) == b"AB"


def test_slice_ending_in_real_mode_then_timeout_slices():
    """A slice that ends in real mode (count=3), then an ordinary slice (timeout=, no count) resumed
    from that real-mode EIP: it still decodes 16-bit code, reaches protected mode and prints A.
    Going from count=N back to count=0 also removes Unicorn's counting hook (and flushes the TBs)."""
    g = Guest(image())
    g.step(3)
    assert not g.protected and g.pc == LOAD_ADDR + 0x05
    g.run_until(lambda: b"A" in g.serial)
    assert g.protected
