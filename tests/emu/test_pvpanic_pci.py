"""``pvpanic-pci`` on a bare PCI bus: header, BAR 0 mapping through the command register, the
notifier behind it, and its ``pvpanic-pci`` section (PCI config + INTx state) round trip."""
from __future__ import annotations

from vmstate_source import ByteSource

from emu.devices.pci import PCIBus, devfn
from emu.devices.pvpanic import PVPanicPCI
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import LoadContext, load_state, save_state

BAR = 0xFEBF0000


def _bus() -> tuple[PCIBus, AddressSpace]:
    mem_root, io_root = MemoryRegion.container("mem", 1 << 32), MemoryRegion.container("io", 0x10000)
    return PCIBus("pci.0", mem_root, io_root), AddressSpace("mem", mem_root)


def _placed(events: list[str]) -> tuple[PVPanicPCI, AddressSpace]:
    bus, mem = _bus()
    dev = bus.add(PVPanicPCI(events=3, panic_event=events.append), devfn(4, 0))
    return dev, mem


def test_header_bar_and_notifier() -> None:
    events: list[str] = []
    dev, mem = _placed(events)
    assert [dev.config_read(off, 4) for off in (0x00, 0x08, 0x2C, 0x3C)] == [0x00111B36, 0x08800001, 0x11001AF4, 0]
    dev.write_config(0x10, 0xFFFFFFFF, 4)
    assert dev.config_read(0x10, 4) == 0xFFFFFFFE  # 2-byte memory BAR
    dev.write_config(0x10, BAR, 4)
    assert mem.read(BAR, 2) == b"\0\0"  # memory decoding is off
    dev.write_config(0x04, 0x2, 2)
    assert mem.read(BAR, 4) == b"\x03\x03\x03\x03"  # whole access to the region of its first byte
    mem.write(BAR + 1, b"\x02")
    mem.write(BAR, b"\x03")  # panic wins over crash-loaded
    assert events == ["crash-loaded", "panicked"]
    dev.reset()
    assert dev.config_read(0x04, 2) == 0 and dev.config_read(0x10, 4) == 0
    assert mem.read(BAR, 1) == b"\0"


def test_section_round_trip_restores_config_and_mapping() -> None:
    dev, _ = _placed([])
    dev.write_config(0x10, BAR, 4)
    dev.write_config(0x04, 0x2, 2)
    dev.write_config(0x3C, 0x0B, 1)
    assert dev.vmsd is not None and dev.vmstate_id() == ("0000:00:04.0/pvpanic-pci", 0)
    blob = save_state(dev.vmsd, dev.save_vmstate())
    assert len(blob) == 4 + 256 + 16  # version_id, config, irq_state
    events: list[str] = []
    fresh, mem = _placed(events)
    src, state = ByteSource(blob), {}
    assert load_state(src, fresh.vmsd, state, 1, LoadContext()) == 0 and src.pos == len(blob)
    fresh.load_vmstate(state)
    assert fresh.config == dev.config
    mem.write(BAR, b"\x01")
    assert events == ["panicked"]
    assert save_state(fresh.vmsd, fresh.save_vmstate()) == blob
