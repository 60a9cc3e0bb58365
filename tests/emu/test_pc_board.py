"""The pc board as a whole: QEMU's device order and QOM paths, the CMOS boot order, the HPET/PIT
wiring with and without the HPET, the empty-BIOS warning, and every device section surviving a
save/load round trip between two boards."""
from __future__ import annotations

import pytest
from vmstate_source import ByteSource

import emu.machine.pc as pc
from emu.machine.base import MachineError
from emu.machine.options import BoardOptions
from emu.machine.pc import PcMachine
from emu.migration.vmstate import LoadContext, load_state, save_state

# /machine/unattached of QEMU 7.2 `-M pc -nodefaults` (qom-list), for the devices we have
QEMU_UNATTACHED = {
    "device[0]": "qemu64-x86_64-cpu", "device[2]": "i440FX", "device[3]": "PIIX3", "device[4]": "i8257",
    "device[5]": "i8257", "device[6]": "isa-i8259", "device[7]": "isa-i8259", "device[8]": "hpet", "device[9]": "mc146818rtc",
    "device[10]": "isa-pit", "device[11]": "isa-pcspk", "device[12]": "isa-fdc", "device[13]": "i8042",
    "device[16]": "port92", "device[17]": "piix3-ide", "device[18]": "PIIX4_PM",
    **{f"device[{n}]": "smbus-eeprom" for n in range(19, 27)},
}


def _board(**options: object) -> PcMachine:
    return PcMachine(64 << 20, manual_clock=True, options=BoardOptions(**options))  # type: ignore[arg-type]


def test_devices_get_qemus_qom_paths() -> None:
    m = _board()
    got = {name: child.type_name for name, child in m.children["unattached"].children.items()}
    assert got == QEMU_UNATTACHED
    assert m.children["fw_cfg"].type_name == "fw_cfg_io"
    assert m.children["i440fx"].children["ioapic"].type_name == "ioapic"


@pytest.mark.parametrize("order, once, bootchk, first, after_reset", [
    ("cad", None, True, 0x1230, 0x1230),
    ("nda", None, True, 0x3410, 0x3410),
    ("c", "a", False, 0x0101, 0x0201),
])
def test_cmos_boot_order_and_boot_once(order: str, once: str | None, bootchk: bool, first: int,
                                       after_reset: int) -> None:
    m = _board(boot_order=order, boot_once=once, fd_bootchk=bootchk)

    def cmos_order() -> int:
        return m.rtc.cmos[0x38] | m.rtc.cmos[0x3D] << 8

    assert cmos_order() == first
    m.reset()
    assert cmos_order() == after_reset
    assert m.rtc.cmos[0x14] == 0x06  # equipment: FPU and PS/2 mouse


def test_too_many_boot_devices_is_qemus_error() -> None:
    with pytest.raises(pc.MachineError, match="^Too many boot devices for PC$"):
        _board(boot_order="cadn")


@pytest.mark.parametrize("hpet", [True, False])
def test_pit_irq0_reaches_gsi_0_with_or_without_hpet(hpet: bool) -> None:
    m = _board(hpet=hpet)
    levels: list[tuple[int, int]] = []
    m.ioapic.gpio_in[None][0].handler = lambda n, level: levels.append((n, level))
    m.clock.enable(True)
    m.clock.advance_to(60_000_000)  # mode 3 at 18.2 Hz: the output has toggled
    assert levels and {n for n, _ in levels} == {0}
    assert (m.hpet is not None) == hpet
    assert m.address_space_memory.read_uint(0xFED00000, 4) == (0x8086A201 if hpet else 0)


def test_missing_seabios_warns(tmp_path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the bare name is tried first, relative to the working directory
    image = pc.default_bios_image((str(tmp_path / "none"),))
    assert len(image) == pc.BIOS_SIZE and image[-16:-11] == bytes([0xEA, 0x5B, 0xE0, 0x00, 0xF0])
    assert "warning: no SeaBIOS image (bios-256k.bin) found" in capsys.readouterr().err


def test_bios_is_found_in_the_first_data_directory_that_has_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The default bios-256k.bin and ``-bios NAME`` are looked for in the -L directories in order."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "bios-256k.bin").write_bytes(b"\x11" * pc.BIOS_SIZE)
    (second / "mine.bin").write_bytes(b"\x22" * 65536)
    (first / "mine.bin").write_bytes(b"\x33" * 65536)
    dirs = (str(first), str(second))
    m = _board(data_dirs=dirs)
    assert m.address_space_memory.read_uint(0xFFFFFFF0, 4) == 0x11111111
    m = PcMachine(64 << 20, manual_clock=True, bios="mine.bin", options=BoardOptions(data_dirs=dirs))
    assert m.address_space_memory.read_uint(0xFFFFFFF0, 4) == 0x33333333
    assert m.address_space_memory.read_uint(0xFFFC0000, 4) == 0  # 64 KiB: the rest of the window is zero
    with pytest.raises(MachineError, match="could not load PC BIOS 'other.bin'"):
        PcMachine(64 << 20, manual_clock=True, bios="other.bin", options=BoardOptions(data_dirs=dirs))
    (first / "big.bin").write_bytes(bytes(2 * pc.BIOS_SIZE))
    with pytest.raises(MachineError, match="larger than 256 KiB are not supported"):
        PcMachine(64 << 20, manual_clock=True, bios="big.bin", options=BoardOptions(data_dirs=dirs))


def test_every_device_section_round_trips_between_two_boards() -> None:
    src = _board()
    q = src.address_space_io
    q.write_uint(0x70, 0x0E, 1)
    q.write_uint(0x71, 0x5A, 1)  # CMOS byte 0x0e
    q.write_uint(0x43, 0x34, 1)
    q.write_uint(0x40, 0x34, 1)
    q.write_uint(0x40, 0x12, 1)  # PIT channel 0 reload 0x1234
    q.write_uint(0xCF8, 0x80000059, 4)
    q.write_uint(0xCFD, 0x30, 1)  # PAM: 0xf0000 segment read/write RAM
    saved = src.migration_entries(saving=True)
    streams = {(e.idstr, e.instance_id): save_state(e.vmsd, e.state) for e in saved}
    assert {"mc146818rtc", "i8254", "hpet", "fw_cfg", "dma", "port92"} <= {idstr for idstr, _ in streams}

    dst = _board()
    entries = dst.migration_entries(saving=False)
    for e in entries:
        if (e.idstr, e.instance_id) in streams:
            ctx = LoadContext()
            assert load_state(ByteSource(streams[e.idstr, e.instance_id]), e.vmsd, e.state, e.vmsd.version_id,
                              ctx) == 0, (e.idstr, ctx.lines)
    dst.migration_loaded(entries)
    again = {(e.idstr, e.instance_id): save_state(e.vmsd, e.state) for e in dst.migration_entries(saving=True)}
    assert again == streams
    d = dst.address_space_io
    d.write_uint(0x70, 0x0E, 1)
    assert d.read_uint(0x71, 1) == 0x5A
    d.write_uint(0xCF8, 0x80000058, 4)
    assert d.read_uint(0xCFD, 1) == 0x30


def test_vapic_option_rom_is_published_from_the_rom_directory(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """genroms/kvmvapic.bin holds the file's bytes; without the file QEMU's message is printed and
    the board starts without it."""
    (tmp_path / "kvmvapic.bin").write_bytes(b"\x55\xaa" + bytes(range(200)))
    fw = _board(data_dirs=(str(tmp_path),)).fw_cfg
    assert fw.entry(fw.file_selector("genroms/kvmvapic.bin")) == b"\x55\xaa" + bytes(range(200))
    monkeypatch.chdir(tmp_path.parent)  # the bare name is tried first, relative to the working directory
    fw = _board(data_dirs=(str(tmp_path / "none"),)).fw_cfg
    assert "genroms/kvmvapic.bin" not in fw.file_names()
    # (the default BIOS is not in these directories either: its warning comes first)
    assert capsys.readouterr().err.endswith("Could not open option rom 'kvmvapic.bin': No such file or directory\n")
