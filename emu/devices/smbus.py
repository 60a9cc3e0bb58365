"""PIIX4 PM's SMBus, as QEMU 7.2 has it: the host controller (``pm-smbus``, 64 byte-wide ports), the
I2C bus behind it, and the SPD EEPROMs the pc board puts on that bus at 0x50-0x57.

The host follows hw/i2c/pm_smbus.c register for register, quirks included:
- A transaction started without CTL_INTREN runs when the guest next reads the status register.
  QEMU does this to work around an AMIBIOS bug.
- Block transfers go byte by byte, or through the 32-byte buffer with AUX_BLK.
- An I2C block read keeps the bus open until the last byte.
- PIIX4's reset leaves the controller alone; only the EEPROMs reset.
The EEPROMs are QEMU's ``smbus-eeprom``: 256 bytes, all zero (the pc board gives no SPD data). A
write sets the offset and stores the bytes after it, and a read returns the byte at the offset and
advances it. The I2C bus and the SMBus slave state machine follow hw/i2c/core.c and
smbus_slave.c: address 0 is a broadcast to every device (a read then gives 0xff), a repeated start
goes to the devices already selected, and a device in a state it does not expect goes CONFUSED.
There is no IRQ: QEMU's PIIX4 connects none.

Migration: the host's state is the ``pmsmb`` struct inside ``piix4_pm`` (``PMSMBus.vmstate_fields``).
An EEPROM has an ``smbus-eeprom`` section (instances 0-7), sent only once it has been accessed
or is mid-transfer, as QEMU's ``needed`` test decides.
"""
from __future__ import annotations

from typing import Any

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription
from emu.qom import register_type

SMBUS_SIZE = 0x40
MAX_MSG = 32  # PM_SMBUS_MAX_MSG_SIZE
SMBUS_DATA_MAX_LEN = 34  # command + length + 32 data bytes
EEPROM_SIZE = 256
EEPROM_BASE, EEPROM_COUNT = 0x50, 8

HST_STS, HST_CNT, HST_CMD, HST_ADD = 0x00, 0x02, 0x03, 0x04
HST_DAT0, HST_DAT1, BLK_DAT, AUX_CTL = 0x05, 0x06, 0x07, 0x0D
STS_HOST_BUSY, STS_INTR, STS_DEV_ERR, STS_FAILED, STS_BYTE_DONE = 0x01, 0x02, 0x04, 0x10, 0x80
CTL_INTREN, CTL_KILL, CTL_LAST_BYTE, CTL_START, CTL_RETURN_MASK = 0x01, 0x02, 0x20, 0x40, 0x1F
PROT_QUICK, PROT_BYTE, PROT_BYTE_DATA, PROT_WORD_DATA, PROT_BLOCK_DATA, PROT_I2C_BLOCK_READ = 0, 1, 2, 3, 5, 6
AUX_BLK, AUX_MASK = 0x02, 0x03

START_SEND, START_RECV, FINISH, NACK = "start-send", "start-recv", "finish", "nack"
IDLE, WRITE_DATA, READ_DATA, DONE, CONFUSED = 0, 1, 2, 3, -1  # SMBusDevice modes

for _name, _parent in (("i2c-slave", "device"), ("smbus-device", "i2c-slave")):
    register_type(_name, _parent, abstract=True)


class SMBusDevice(Device):
    """An SMBus slave on the I2C bus: QEMU's smbus_slave.c state machine. Subclasses implement
    ``receive_byte`` and ``write_data`` (and ``quick_cmd``)."""

    type_name = "smbus-device"
    type_parent = "i2c-slave"
    type_abstract = True

    def __init__(self, address: int) -> None:
        super().__init__()
        self.address = address & 0xFF
        self.add_property("address", "uint8", self.address, writable=False)
        self.mode = IDLE
        self.data_buf = bytearray(SMBUS_DATA_MAX_LEN)
        self.data_len = 0

    def quick_cmd(self, read: bool) -> None:
        """A quick command (no data)."""

    def receive_byte(self) -> int:
        return 0xFF

    def write_data(self, buf: bytes) -> None:
        """The bytes of a write (command byte first); never empty."""

    def event(self, event: str) -> None:
        if event == START_SEND:
            self.mode = WRITE_DATA if self.mode == IDLE else CONFUSED
        elif event == START_RECV:
            if self.mode == IDLE:
                self.mode = READ_DATA
            elif self.mode == WRITE_DATA and self.data_len:
                self.write_data(bytes(self.data_buf[:self.data_len]))
                self.mode = READ_DATA
            else:  # a read after a write with no data, or a start out of place
                self.mode = CONFUSED
        elif event == FINISH:
            if self.data_len == 0 and self.mode in (WRITE_DATA, READ_DATA):
                self.quick_cmd(self.mode == READ_DATA)
            elif self.data_len and self.mode == WRITE_DATA:
                self.write_data(bytes(self.data_buf[:self.data_len]))
            self.mode, self.data_len = IDLE, 0
        elif event == NACK:
            if self.mode == READ_DATA:
                self.mode = DONE
            elif self.mode != DONE:
                self.mode = CONFUSED

    def recv(self) -> int:
        if self.mode != READ_DATA:
            self.mode = CONFUSED
            return 0xFF
        return self.receive_byte()

    def send(self, data: int) -> None:
        if self.mode == WRITE_DATA and self.data_len < SMBUS_DATA_MAX_LEN:
            self.data_buf[self.data_len] = data & 0xFF
            self.data_len += 1


#: hw/i2c/core.c's bus section: the selected device's address (0xff: none, 0: broadcast)
VMSTATE_I2C_BUS = VMStateDescription("i2c_bus", 1, 1, [Field("saved_address", "uint8")])


class I2CBus:
    """The bus: the devices a transfer selected stay selected until ``end_transfer``."""

    def __init__(self) -> None:
        self.devices: list[SMBusDevice] = []
        self.current: list[SMBusDevice] = []
        self.broadcast = False
        self.saved_address = 0xFF

    # ---- migration: "i2c_bus", then each slave's post_load re-selects it
    def save_vmstate(self) -> dict:
        """i2c_bus_pre_save: the first selected device's address, 0 when broadcasting."""
        if not self.current:
            self.saved_address = 0xFF
        else:
            self.saved_address = 0 if self.broadcast else self.current[0].address
        return {"saved_address": self.saved_address}

    def load_vmstate(self, state: dict) -> None:
        self.saved_address = int(state["saved_address"])

    def slave_loaded(self, dev: SMBusDevice) -> None:
        """i2c_slave_post_load: a loaded slave at the saved address (or any, after a broadcast)
        is selected again, at the head of the list (the broadcast flag itself is not migrated)."""
        if self.saved_address in (dev.address, 0):
            self.current.insert(0, dev)

    def start(self, address: int, recv: bool) -> bool:
        """A start condition; True when no device answers (QEMU's non-zero return)."""
        if address == 0:
            self.broadcast = True
        if not self.current:
            self.current = [d for d in self.devices if self.broadcast or d.address == address]
        if not self.current:
            return True
        for dev in self.current:
            dev.event(START_RECV if recv else START_SEND)
        return False

    def end_transfer(self) -> None:
        for dev in self.current:
            dev.event(FINISH)
        self.current, self.broadcast = [], False

    def send(self, data: int) -> None:
        for dev in self.current:
            dev.send(data)

    def recv(self) -> int:
        return self.current[0].recv() if self.current and not self.broadcast else 0xFF

    def nack(self) -> None:
        for dev in self.current:
            dev.event(NACK)

    # ---- smbus_master.c: each returns -1 when no device answers
    def transfer(self, addr: int, command: int, write: bytes, read: int) -> list[int] | None:
        """Send ``command`` and ``write``, then (``read`` > 0) a repeated start and ``read`` bytes."""
        if self.start(addr, False):
            return None
        self.send(command)
        for b in write:
            self.send(b)
        out: list[int] = []
        if read:
            if self.start(addr, True):
                self.end_transfer()
                return None
            out = [self.recv() for _ in range(read)]
            self.nack()
        self.end_transfer()
        return out

    def read_block(self, addr: int, command: int) -> list[int] | None:
        """smbus_read_block with the length byte first and the command sent (PIIX4's mode)."""
        if self.start(addr, False):
            return None
        self.send(command)
        if self.start(addr, True):
            self.end_transfer()
            return None
        length = self.recv()
        data = [self.recv() for _ in range(length if length <= MAX_MSG else 0)]
        self.nack()
        self.end_transfer()
        return data


class SMBusEEPROM(SMBusDevice):
    """``smbus-eeprom``: 256 bytes of SPD EEPROM (all zero on the pc board), reset on system reset."""

    type_name = "smbus-eeprom"
    type_parent = "smbus-device"

    def __init__(self, address: int, instance: int = 0, init_data: bytes = bytes(EEPROM_SIZE)) -> None:
        super().__init__(address)
        self.init_data = bytes(init_data).ljust(EEPROM_SIZE, b"\0")[:EEPROM_SIZE]
        self.data = bytearray(self.init_data)
        self.offset = 0
        self.accessed = False
        self.instance = instance
        self.bus: I2CBus | None = None  # set when plugged, for the post-load re-selection
        self.vmsd = VMStateDescription("smbus-eeprom", 1, 1, [
            Field("smbusdev.i2c.address", "uint8"), Field("smbusdev.mode", "int32"),
            Field("smbusdev.data_len", "int32"), Field("smbusdev.data_buf", "buffer", SMBUS_DATA_MAX_LEN),
            Field("data", "buffer", EEPROM_SIZE), Field("offset", "uint8"), Field("accessed", "bool")])

    def reset(self) -> None:
        self.data[:] = self.init_data
        self.offset = 0

    def receive_byte(self) -> int:
        value = self.data[self.offset]
        self.offset = (self.offset + 1) & 0xFF
        self.accessed = True
        return value

    def write_data(self, buf: bytes) -> None:
        self.accessed = True
        self.offset = buf[0]
        for b in buf[1:]:
            self.data[self.offset] = b
            self.offset = (self.offset + 1) % EEPROM_SIZE

    # ---- migration
    def vmstate_id(self) -> tuple[str, int]:
        return "smbus-eeprom", self.instance

    def vmstate_sections(self, saving: bool = True) -> list[tuple[str, int, VMStateDescription, dict]]:
        """QEMU's ``needed``: sent only once accessed or in the middle of a transfer."""
        if saving and not (self.accessed or self.mode != IDLE):
            return []
        return super().vmstate_sections(saving)

    def save_vmstate(self) -> dict:
        return {"smbusdev.i2c.address": self.address, "smbusdev.mode": self.mode, "smbusdev.data_len": self.data_len,
                "smbusdev.data_buf": bytes(self.data_buf), "data": bytes(self.data), "offset": self.offset,
                "accessed": int(self.accessed)}

    def load_vmstate(self, state: dict) -> None:
        if self.bus is not None:
            self.bus.slave_loaded(self)
        self.mode = int(state["smbusdev.mode"])
        self.data_len = int(state["smbusdev.data_len"])
        self.data_buf[:] = bytes(state["smbusdev.data_buf"])
        self.data[:] = bytes(state["data"])
        self.offset, self.accessed = int(state["offset"]), bool(state["accessed"])


#: the ``pmsmb`` struct's fields, in order (as they appear inside ``piix4_pm``)
_PMSMB_FIELDS = (("smb_stat", "uint8"), ("smb_ctl", "uint8"), ("smb_cmd", "uint8"), ("smb_addr", "uint8"),
                 ("smb_data0", "uint8"), ("smb_data1", "uint8"), ("smb_index", "uint32"), ("smb_data", "buffer"),
                 ("smb_auxctl", "uint8"), ("smb_blkdata", "uint8"), ("i2c_enable", "bool"), ("op_done", "bool"),
                 ("in_i2c_block_read", "bool"), ("start_transaction_on_status_read", "bool"))


class PMSMBus:
    """The SMBus host controller (``pm-smbus``); ``owner`` is the PCI function that maps ``io``."""

    def __init__(self, owner: Any = None) -> None:
        self.bus = I2CBus()
        self.smb_stat = self.smb_ctl = self.smb_cmd = self.smb_addr = self.smb_data0 = self.smb_data1 = 0
        self.smb_index = self.smb_blkdata = 0
        self.smb_data = bytearray(MAX_MSG)
        self.smb_auxctl = AUX_BLK  # PIIX4 forces block mode at realize
        self.i2c_enable = self.in_i2c_block_read = self.start_transaction_on_status_read = False
        self.op_done = True
        self.io = MemoryRegion.io("pm-smbus", SMBUS_SIZE, CallbackOps(
            self._read, self._write, AccessRules(valid_min=1, valid_max=1)), owner=owner)

    # ---- migration: the pmsmb struct inside piix4_pm
    @staticmethod
    def vmstate_fields(prefix: str = "smb.") -> list[Field]:
        return [Field(prefix + name, kind, MAX_MSG if kind == "buffer" else 0) for name, kind in _PMSMB_FIELDS]

    def save_state(self, prefix: str = "smb.") -> dict:
        return {prefix + name: (bytes(self.smb_data) if kind == "buffer" else int(getattr(self, name)))
                for name, kind in _PMSMB_FIELDS}

    def load_state(self, state: dict, prefix: str = "smb.") -> None:
        for name, kind in _PMSMB_FIELDS:
            value = state[prefix + name]
            if kind == "buffer":
                self.smb_data[:] = bytes(value)
            else:
                setattr(self, name, bool(value) if kind == "bool" else int(value))

    # ---- registers
    def _read(self, offset: int, size: int) -> int:
        if offset == HST_STS:
            value = self.smb_stat
            if self.start_transaction_on_status_read:  # the deferred transaction runs now
                self.start_transaction_on_status_read = False
                self.smb_stat &= ~STS_HOST_BUSY
                self._transaction()
            return value
        if offset == HST_CNT:
            return self.smb_ctl & CTL_RETURN_MASK
        if offset == BLK_DAT:
            return self._read_blkdat()
        return {HST_CMD: self.smb_cmd, HST_ADD: self.smb_addr, HST_DAT0: self.smb_data0, HST_DAT1: self.smb_data1,
                AUX_CTL: self.smb_auxctl}.get(offset, 0)

    def _read_blkdat(self) -> int:
        if not (self.smb_auxctl & AUX_BLK) or self.in_i2c_block_read:
            return self.smb_blkdata
        if self.smb_index >= MAX_MSG:
            self.smb_index = 0
        value = self.smb_data[self.smb_index]
        self.smb_index += 1
        if not self.op_done and self.smb_index == self.smb_data0:
            self.op_done, self.smb_index = True, 0
            self.smb_stat &= ~STS_HOST_BUSY
        return value

    def _write(self, offset: int, value: int, size: int) -> None:
        value &= 0xFF
        if offset == HST_STS:
            self._write_status(value)
        elif offset == HST_CNT:
            self._write_control(value)
        elif offset == HST_CMD:
            self.smb_cmd = value
        elif offset == HST_ADD:
            self.smb_addr = value
        elif offset == HST_DAT0:
            self.smb_data0 = value
        elif offset == HST_DAT1:
            self.smb_data1 = value
        elif offset == BLK_DAT:
            if self.smb_index >= MAX_MSG:
                self.smb_index = 0
            if self.smb_auxctl & AUX_BLK:
                self.smb_data[self.smb_index] = value
                self.smb_index += 1
            else:
                self.smb_blkdata = value
        elif offset == AUX_CTL:
            self.smb_auxctl = value & AUX_MASK

    def _write_control(self, value: int) -> None:
        self.smb_ctl = value & ~CTL_START  # CTL_START always reads 0
        if value & CTL_START:
            if not self.op_done:
                self.smb_index, self.op_done = 0, True
                if self.in_i2c_block_read:
                    self.in_i2c_block_read = False
                    self.bus.end_transfer()
            if self.smb_ctl & CTL_INTREN:
                self._transaction()
                self.start_transaction_on_status_read = False
            else:  # run when the status register is next read (an AMIBIOS workaround in QEMU)
                self.smb_stat |= STS_HOST_BUSY
                self.start_transaction_on_status_read = True
        if self.smb_ctl & CTL_KILL:
            self.op_done, self.smb_index = True, 0
            self.smb_stat = (self.smb_stat | STS_FAILED) & ~STS_HOST_BUSY

    def _byte_by_byte(self) -> bool:
        if self.op_done:
            return False
        return self.in_i2c_block_read or not (self.smb_auxctl & AUX_BLK)

    def _write_status(self, value: int) -> None:
        """Write 1 to clear; clearing BYTE_DONE moves a byte-by-byte block transfer on."""
        clear_byte_done = self.smb_stat & value & STS_BYTE_DONE
        self.smb_stat &= ~(value & ~STS_HOST_BUSY) & 0xFF
        if not (clear_byte_done and self._byte_by_byte()):
            return
        read = bool(self.smb_addr & 1) or self.in_i2c_block_read
        self.smb_index += 1
        if self.smb_index >= MAX_MSG:
            self.smb_index = 0
        if not read and self.smb_index == self.smb_data0:
            self._finish_block_write()
        elif not read:
            self.smb_data[self.smb_index] = self.smb_blkdata
            self.smb_stat |= STS_BYTE_DONE
        elif self.smb_ctl & CTL_LAST_BYTE:
            self.op_done = True
            if self.in_i2c_block_read:
                self.in_i2c_block_read = False
                self.smb_blkdata = self.bus.recv()
                self.bus.nack()
                self.bus.end_transfer()
            else:
                self.smb_blkdata = self.smb_data[self.smb_index]
            self.smb_index = 0
            self.smb_stat = (self.smb_stat | STS_INTR) & ~STS_HOST_BUSY
        else:
            self.smb_blkdata = self.bus.recv() if self.in_i2c_block_read else self.smb_data[self.smb_index]
            self.smb_stat |= STS_BYTE_DONE

    def _finish_block_write(self) -> None:
        if (self.smb_ctl >> 2) & 7 == PROT_I2C_BLOCK_READ:
            self.smb_stat |= STS_DEV_ERR
            return
        if self._write_block() is None:
            self.smb_stat |= STS_DEV_ERR
            return
        self.op_done = True
        self.smb_stat = (self.smb_stat | STS_INTR) & ~STS_HOST_BUSY

    def _write_block(self) -> list[int] | None:
        length = min(self.smb_data0, MAX_MSG)  # smbus_write_block, with the length byte sent
        return self.bus.transfer(self.smb_addr >> 1, self.smb_cmd, bytes((length,)) + self.smb_data[:length], 0)

    # ---- smb_transaction
    def _transaction(self) -> None:
        if self.smb_stat & STS_DEV_ERR:  # not run while DEV_ERR is set
            return
        prot = (self.smb_ctl >> 2) & 7
        if prot == PROT_I2C_BLOCK_READ:
            self._i2c_block_read()
        elif prot == PROT_BLOCK_DATA:
            self._block_data()
        elif prot in (PROT_QUICK, PROT_BYTE, PROT_BYTE_DATA, PROT_WORD_DATA):
            self._simple(prot)
        else:
            self.smb_stat |= STS_DEV_ERR

    def _simple(self, prot: int) -> None:
        read, addr, bus = self.smb_addr & 1, self.smb_addr >> 1, self.bus
        result: list[int] | None
        if prot == PROT_QUICK:
            result = None if bus.start(addr, bool(read)) else []
            if result is not None:
                bus.end_transfer()
        elif prot == PROT_BYTE and read:
            result = None if bus.start(addr, True) else [bus.recv()]
            if result is not None:
                bus.nack()
                bus.end_transfer()
        elif prot == PROT_BYTE:
            result = None if bus.start(addr, False) else []
            if result is not None:
                bus.send(self.smb_cmd)
                bus.end_transfer()
        elif read:
            result = bus.transfer(addr, self.smb_cmd, b"", 1 if prot == PROT_BYTE_DATA else 2)
        else:
            data = (self.smb_data0,) if prot == PROT_BYTE_DATA else (self.smb_data0, self.smb_data1)
            result = bus.transfer(addr, self.smb_cmd, bytes(data), 0)
        if result is None:
            self.smb_stat |= STS_DEV_ERR
            return
        if len(result) == 2:
            self.smb_data1 = result[1]
        if result:
            self.smb_data0 = result[0]
        self.smb_stat |= STS_INTR

    def _i2c_block_read(self) -> None:
        """The read bit is ignored (see QEMU's comment on the Linux i2c-i801 driver)."""
        addr, bus = self.smb_addr >> 1, self.bus
        if bus.start(addr, False):
            self.smb_stat |= STS_DEV_ERR
            return
        bus.send(self.smb_data1)
        if bus.start(addr, True):
            self.smb_stat |= STS_DEV_ERR
            return
        self.in_i2c_block_read = True
        self.smb_blkdata = bus.recv()
        self.op_done = False
        self.smb_stat |= STS_HOST_BUSY | STS_BYTE_DONE

    def _block_data(self) -> None:
        if self.smb_addr & 1:
            data = self.bus.read_block(self.smb_addr >> 1, self.smb_cmd)
            if data is None:
                self.smb_stat |= STS_DEV_ERR
                return
            self.smb_data[:len(data)] = bytes(data)
            self.smb_index, self.op_done = 0, False
            if self.smb_auxctl & AUX_BLK:
                self.smb_stat |= STS_INTR
            else:
                self.smb_blkdata = self.smb_data[0]
                self.smb_stat |= STS_HOST_BUSY | STS_BYTE_DONE
            self.smb_data0 = len(data)
        elif self.smb_auxctl & AUX_BLK:
            if self.smb_index != self.smb_data0:
                self.smb_index = 0
                self.smb_stat |= STS_DEV_ERR
                return
            self.smb_index = 0
            if self._write_block() is None:
                self.smb_stat |= STS_DEV_ERR
                return
            self.op_done = True
            self.smb_stat = (self.smb_stat | STS_INTR) & ~STS_HOST_BUSY
        else:
            self.op_done = False
            self.smb_stat |= STS_HOST_BUSY | STS_BYTE_DONE
            self.smb_data[0] = self.smb_blkdata
            self.smb_index = 0
