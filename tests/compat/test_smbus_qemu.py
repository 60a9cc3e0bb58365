"""PIIX4 PM's SMBus host and the pc board's SPD EEPROMs, reply for reply against Debian's QEMU 7.2:
a script of every transaction type (quick, byte, byte data, word, block read/write through the
buffer and byte by byte, I2C block read, kill, broadcast, a missing device, a transaction started
without INTREN), moving and disabling the controller through PCI config, and random walks over
the controller's registers with values chosen to reach its states."""
from __future__ import annotations

import random

import pytest
from test_qtest_compat import PC, Emu, both, needs_qemu

BASE = 0xB100
PM_CONFIG = 0x80000000 | (((1 << 3) | 3) << 8)  # 00:01.3, configuration mechanism #1


def _cfg(reg: int, value: int, size: str = "l") -> list[str]:
    port = 0xCFC + (reg & 3)
    return [f"outl 0xcf8 0x{PM_CONFIG | (reg & 0xFC):x}", f"out{size} 0x{port:x} 0x{value:x}"]


def _txn(addr: int, cmd: int, ctl: int, *, data0: int | None = None, data1: int | None = None,
         reads: tuple[int, ...] = (0x00, 0x05, 0x06)) -> list[str]:
    """One transaction: address, command, data, control (START set), then status and data reads,
    then every status bit cleared."""
    lines = [f"outb 0x{BASE + 4:x} 0x{addr:x}", f"outb 0x{BASE + 3:x} 0x{cmd:x}"]
    if data0 is not None:
        lines.append(f"outb 0x{BASE + 5:x} 0x{data0:x}")
    if data1 is not None:
        lines.append(f"outb 0x{BASE + 6:x} 0x{data1:x}")
    lines.append(f"outb 0x{BASE + 2:x} 0x{ctl:x}")
    lines += [f"inb 0x{BASE + r:x}" for r in reads]
    return lines + [f"outb 0x{BASE:x} 0xff"]


def script() -> list[str]:
    w = 0x50 << 1
    s = [f"inb 0x{BASE + r:x}" for r in range(16)]
    s += _txn(w | 1, 0, 0x48)  # quick read, no INTREN: runs at the status read
    s += ["inb 0xb100"]
    s += _txn(0x60 << 1, 0, 0x41)  # quick to an absent device: DEV_ERR
    s += _txn(w, 0x10, 0x49, data0=0x5A)  # byte data write, then read back
    s += _txn(w | 1, 0x10, 0x49)
    s += _txn(w, 0x20, 0x4D, data0=0x34, data1=0x12)  # word write and read
    s += _txn(w | 1, 0x20, 0x4D)
    s += _txn(w, 0x1F, 0x45)  # byte write (sets the offset), byte reads
    s += _txn(w | 1, 0, 0x45) + _txn(w | 1, 0, 0x45)
    s += _txn(0x00, 0x30, 0x49, data0=0x77)  # broadcast: every EEPROM stores it
    s += _txn((0x53 << 1) | 1, 0x30, 0x49)
    # block write through the buffer (AUX_BLK), then read back as a block
    s += [f"outb 0x{BASE + 0xD:x} 0x2", "outb 0xb100 0xff"] + [f"outb 0x{BASE + 7:x} 0x{v:x}" for v in (3, 1, 2, 3)]
    s += _txn(w, 0x40, 0x55, data0=4)
    s += _txn(w | 1, 0x40, 0x55, reads=(0x00, 0x05, 0x07, 0x07, 0x07, 0x07, 0x07, 0x00))
    # the same byte by byte (AUX_BLK off): BYTE_DONE handshakes, LAST_BYTE
    s += [f"outb 0x{BASE + 0xD:x} 0x0"]
    s += _txn(w | 1, 0x40, 0x55, reads=(0x00, 0x05, 0x07))
    for last in (False, False, True):
        s += [f"outb 0x{BASE + 2:x} 0x{0x34 if last else 0x14:x}", "outb 0xb100 0x80", "inb 0xb100", "inb 0xb107"]
    s += _txn(w, 0x48, 0x55, data0=2, reads=(0x00,))
    s += ["outb 0xb107 0xaa", "outb 0xb100 0x80", "inb 0xb100", "outb 0xb107 0xbb", "outb 0xb100 0x80",
          "inb 0xb100", "outb 0xb100 0xff"]
    s += _txn(w | 1, 0x48, 0x49) + _txn(w | 1, 0x49, 0x49)
    # I2C block read (byte by byte, the bus held open), then killed
    s += _txn(w | 1, 0x40, 0x59, data1=0x40, reads=(0x00, 0x07))
    s += ["outb 0xb100 0x80", "inb 0xb100", "inb 0xb107", "outb 0xb102 0x02", "inb 0xb100", "outb 0xb102 0x00"]
    s += ["outb 0xb100 0xff", "inb 0xb100"]
    s += _txn(w, 0, 0x51)  # process call: not supported (DEV_ERR)
    s += _txn(w | 1, 0, 0x41)  # not run while DEV_ERR is still set... it was cleared: runs
    # the controller follows its PCI config: moved to 0xc000, then disabled
    s += _cfg(0x90, 0xC001) + ["inb 0xc000", "inb 0xc00d", "inb 0xb10d"]
    s += _cfg(0xD0, 0x08 << 16) + ["inb 0xc00d"]
    s += _cfg(0xD0, 0x09 << 16) + ["inb 0xc00d"]
    return s


def random_walk(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    regs = (0, 0, 0, 2, 2, 3, 4, 5, 6, 7, 7, 7, 0xD)
    values = {0: (0xFF, 0x80, 0x02, 0x04, 0x10, 0x01), 2: tuple(0x40 | p << 2 | f for p in range(8) for f in (0, 1, 0x20))
              + (0x02, 0x00, 0x20), 4: (0xA0, 0xA1, 0xA2, 0xA3, 0xAE, 0xAF, 0x00, 0x01, 0xC0, 0xC1),
              0xD: (0, 1, 2, 3)}
    out = []
    for _ in range(count):
        reg = rng.choice(regs)
        if rng.random() < 0.45:
            out.append(f"inb 0x{BASE + reg:x}")
        else:
            value = rng.choice(values.get(reg, (0, 1, 2, 0x10, 0x20, 0x32, 0xFF, rng.randrange(256))))
            out.append(f"outb 0x{BASE + reg:x} 0x{value:x}")
    return out


def replies(binary: str, cmds: list[str]) -> list[bytes | None]:
    with Emu(binary, PC) as emu:
        emu.conn.send(("\n".join(cmds) + "\n").encode())
        return [emu.conn.readline() for _ in cmds]


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("name", ["script", "walk-1", "walk-2", "walk-3"])
def test_smbus_replies_match_qemu(name: str) -> None:
    cmds = script() if name == "script" else random_walk(int(name[-1]), 3000)
    ours, qemu = both(replies, cmds)
    assert all(r is not None and r.startswith(b"OK") for r in qemu)
    diffs = [f"{i}: {c}: ours {o!r}, qemu {q!r}" for i, (c, o, q) in enumerate(zip(cmds, ours, qemu)) if o != q]
    assert not diffs, f"{len(diffs)} of {len(cmds)} differ:\n" + "\n".join(diffs[:40])
    if name == "script":  # the script reaches what it is about: data came back from the EEPROMs
        got = dict(zip(cmds, qemu))
        assert b"OK 0x005a" in qemu and b"OK 0x0012" in qemu and got["inb 0xc00d"] != b"OK 0x00ff\n"
