"""The SMBus of PIIX4 PM (``emu.devices.smbus``) on the pc board: the EEPROMs answer at 0x50-0x57
and nowhere else, reset restores their contents but not the controller, and migration carries the
controller inside ``piix4_pm`` and an EEPROM only once it has been used (QEMU's ``needed``). The
register-level behaviour is compared with QEMU 7.2 in tests/compat/test_smbus_qemu.py."""
from __future__ import annotations

from vmstate_source import ByteSource

from emu.devices.smbus import CONFUSED, IDLE, I2CBus, PMSMBus, SMBusEEPROM
from emu.machine.options import BoardOptions
from emu.machine.pc import PcMachine
from emu.migration.vmstate import LoadContext, load_state, save_state

BASE = 0xB100


def board() -> PcMachine:
    return PcMachine(64 << 20, manual_clock=True, options=BoardOptions())


def outb(m: PcMachine, port: int, value: int) -> None:
    m.address_space_io.write(port, bytes((value,)))


def inb(m: PcMachine, port: int) -> int:
    return m.address_space_io.read(port, 1)[0]


def txn(m: PcMachine, addr: int, cmd: int, prot: int, data0: int = 0) -> tuple[int, int]:
    """One transaction with INTREN (runs at once); returns (status, data0)."""
    outb(m, BASE, 0xFF)
    outb(m, BASE + 4, addr)
    outb(m, BASE + 3, cmd)
    outb(m, BASE + 5, data0)
    outb(m, BASE + 2, 0x41 | prot << 2)
    return inb(m, BASE), inb(m, BASE + 5)


def test_eeproms_answer_at_0x50_to_0x57_only() -> None:
    m = board()
    assert [e.address for e in m.pm.smb.bus.devices] == list(range(0x50, 0x58))
    assert [e.path for e in m.pm.smb.bus.devices] == [f"/machine/unattached/device[{n}]" for n in range(19, 27)]
    for addr in range(0x48, 0x60):
        status, _ = txn(m, addr << 1, 0, 0)  # quick write
        assert status == (0x02 if 0x50 <= addr < 0x58 else 0x04), hex(addr)


def test_write_read_back_and_reset() -> None:
    m = board()
    assert txn(m, 0x52 << 1, 0x10, 2, 0xA5)[0] == 0x02  # byte data write
    assert txn(m, (0x52 << 1) | 1, 0x10, 2) == (0x02, 0xA5)
    assert txn(m, (0x51 << 1) | 1, 0x10, 2) == (0x02, 0x00)  # another EEPROM is untouched
    outb(m, BASE + 0xD, 0)  # the controller's own state survives a reset (PIIX4 never resets it)
    m.reset()
    assert inb(m, BASE + 0xD) == 0 and inb(m, BASE + 5) == 0x00
    assert txn(m, (0x52 << 1) | 1, 0x10, 2) == (0x02, 0x00)  # the EEPROM's contents are back to zero


def test_slave_state_machine_goes_confused_out_of_order() -> None:
    bus = I2CBus()
    eeprom = SMBusEEPROM(0x50)
    bus.devices.append(eeprom)
    assert not bus.start(0x50, True)
    assert bus.start(0x50, False) is False and eeprom.mode == CONFUSED  # a send start while reading
    bus.end_transfer()
    assert eeprom.mode == IDLE
    assert bus.start(0x51, False)  # nobody there


def test_migration_sections() -> None:
    m = board()
    ids = [(idstr, inst) for dev in m.devices for idstr, inst, _, _ in dev.vmstate_sections(saving=True)]
    assert not any(idstr == "smbus-eeprom" for idstr, _ in ids)  # not needed until accessed
    txn(m, 0x55 << 1, 0x07, 2, 0x3C)
    sections = [(i, n, vmsd, st) for dev in m.devices for i, n, vmsd, st in dev.vmstate_sections(saving=True)
                if i == "smbus-eeprom"]
    assert [(i, n) for i, n, _, _ in sections] == [("smbus-eeprom", 5)]
    _, _, vmsd, state = sections[0]
    blob = save_state(vmsd, state)
    assert len(blob) == 1 + 4 + 4 + 34 + 256 + 1 + 1 and blob[0] == 0x55 and blob[9 + 34 + 7] == 0x3C
    other = board()
    loaded: dict = {}
    assert load_state(ByteSource(blob), vmsd, loaded, 1, LoadContext()) == 0
    other.devices[other.devices.index(other.pm.smb.bus.devices[5])].load_vmstate(loaded)
    assert txn(other, (0x55 << 1) | 1, 0x07, 2) == (0x02, 0x3C)


def test_controller_state_travels_in_piix4_pm() -> None:
    m = board()
    txn(m, (0x50 << 1) | 1, 0x01, 2)
    outb(m, BASE + 0xD, 1)
    state = m.pm.save_vmstate()
    assert state["smb.smb_stat"] == 0x02 and state["smb.smb_auxctl"] == 1 and state["smb.op_done"] == 1
    blob = save_state(m.pm.vmsd, state)
    fresh = PMSMBus()
    assert fresh.save_state() != m.pm.smb.save_state()
    other = board()
    loaded: dict = {}
    assert load_state(ByteSource(blob), other.pm.vmsd, loaded, 3, LoadContext()) == 0
    other.pm.load_vmstate(loaded)
    assert other.pm.smb.save_state() == m.pm.smb.save_state() and inb(other, BASE + 0xD) == 1
