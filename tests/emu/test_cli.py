"""Command-line parsing in-process: QEMU's option syntax, sizes, QemuOpts lists, chardev shorthands."""
from __future__ import annotations

import pytest

from emu.chardev import ChardevError, parse_legacy, parse_opts
from emu.cli import CliError, parse_args, parse_size


@pytest.mark.parametrize("text,value", [
    ("64M", 64 << 20), ("64", 64 << 20), ("1G", 1 << 30), ("1.5G", 3 << 29), ("512k", 512 << 10),
    ("4096B", 4096), ("2T", 2 << 40), (" 8M", 8 << 20),
])
def test_sizes_default_to_mebibytes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["foo", "", "1.5B", "-1", "1X", "18446744073709551616B", "16E"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_libqtest_command_line():
    cfg = parse_args("-qtest unix:/tmp/q.sock -qtest-log /dev/null -chardev socket,path=/tmp/q.qmp,id=char0 "
                     "-mon chardev=char0,mode=control -display none -audio none -run-with exit-with-parent=on "
                     "-M pc -m 64M -nodefaults -accel kvm -accel tcg -accel qtest".split())
    assert cfg.qtest == "unix:/tmp/q.sock" and cfg.qtest_log == "/dev/null"
    assert cfg.chardevs[0].backend == "socket" and cfg.chardevs[0].id == "char0"
    assert cfg.chardevs[0].opts == {"path": "/tmp/q.qmp"}
    assert cfg.monitors == [{"chardev": "char0", "mode": "control"}]
    assert cfg.machine == "pc" and cfg.ram_size == 64 << 20 and cfg.nodefaults
    assert cfg.accels == ["kvm", "tcg", "qtest"] and cfg.exit_with_parent


def test_machine_properties_and_accel_in_machine_options():
    cfg = parse_args(["-machine", "none,accel=qtest:tcg,usb=off", "--m", "size=16M"])
    assert cfg.machine == "none" and cfg.accels == ["qtest", "tcg"]
    assert cfg.machine_props == {"usb": "off"} and cfg.ram_size == 16 << 20


def test_chardev_flags_and_escaped_commas():
    cfg = parse_args(["-chardev", "socket,id=c,path=/tmp/a,,b,server,nowait"])
    assert cfg.chardevs[0].opts == {"path": "/tmp/a,b", "server": "on", "wait": "off"}


def test_flags_and_ignored_options():
    cfg = parse_args(["-S", "-no-user-config", "-vga", "none", "-name", "guest=vm1,debug-threads=on",
                      "-uuid", "12345678-ABCD-1234-abcd-1234567890ab", "-trace", "foo*", "-incoming", "defer"])
    assert cfg.start_paused and cfg.name == "vm1" and cfg.incoming == "defer"
    assert cfg.uuid == "12345678-abcd-1234-abcd-1234567890ab"


@pytest.mark.parametrize("argv,message", [
    (["-foo"], "-foo: invalid option"),
    (["--bar", "1"], "--bar: invalid option"),
    (["-m"], "-m: requires an argument"),
    (["-uuid", "1234"], "-uuid 1234: failed to parse UUID string: wrong format"),
    (["-display", "gtk"], "-display gtk: Display 'gtk' is not available"),
    (["-chardev", "socket,path=/x"], "-chardev socket,path=/x: chardev: no id specified"),
    (["-mon", "mode=control"], "-mon mode=control: Parameter 'chardev' is missing"),
    (["-object", "qtest"], "-object qtest: Parameter 'id' is missing"),
    (["-run-with", "bogus=on"], "-run-with bogus=on: Invalid parameter 'bogus'"),
    (["disk.img"], "disk.img: Could not open 'disk.img': No such file or directory"),
])
def test_errors(argv, message):
    with pytest.raises(CliError) as ei:
        parse_args(argv)
    assert str(ei.value) == message


def test_unknown_machine_property_names_the_canonical_type():
    with pytest.raises(CliError) as ei:
        parse_args(["-M", "pc,foo=bar"])
    assert str(ei.value) == "Property 'pc-i440fx-9.1-machine.foo' not found"


@pytest.mark.parametrize("spec,backend,opts", [
    ("stdio", "stdio", {}),
    ("null", "null", {}),
    ("file:/tmp/out", "file", {"path": "/tmp/out"}),
    ("unix:/tmp/s", "socket", {"path": "/tmp/s"}),
    ("unix:path=/tmp/s", "socket", {"path": "/tmp/s"}),
    ("unix:/tmp/s,server=on,wait=off", "socket", {"path": "/tmp/s", "server": "on", "wait": "off"}),
    ("unix:/tmp/s,server,nowait", "socket", {"path": "/tmp/s", "server": "on", "wait": "off"}),
    ("tcp:127.0.0.1:4444", "socket", {"host": "127.0.0.1", "port": "4444"}),
    ("tcp:[::1]:4444,server=on", "socket", {"host": "::1", "port": "4444", "server": "on"}),
])
def test_legacy_chardev_specs(spec, backend, opts):
    assert parse_legacy(spec) == (backend, opts)


@pytest.mark.parametrize("spec,message", [
    ("foo", "'foo' is not a valid char driver name"),
    ("pipe:/tmp/x", "'pipe' is not a valid char driver name"),
    ("unix:/tmp/s,bogus", "Invalid parameter 'bogus'"),
    ("tcp:nohostport", "chardev: invalid tcp address 'nohostport'"),
])
def test_bad_legacy_chardev_specs(spec, message):
    with pytest.raises(ChardevError) as ei:
        parse_legacy(spec)
    assert str(ei.value) == message


def test_qemuopts_splitting():
    assert parse_opts("a=1,b,c=x,,y", implied=None) == ([("a", "1"), ("c", "x,y")], ["b"])
    assert parse_opts("pc,accel=tcg", implied="type") == ([("type", "pc"), ("accel", "tcg")], [])


@pytest.mark.parametrize("option", ["-fda", "-fdb"])
def test_floppy_images_are_refused_not_ignored(option):
    """``-fda FILE`` would attach a floppy image; the FDC exists but floppy drives are not modelled,
    so the option is refused as ``-drive if=floppy`` is, instead of being dropped silently."""
    with pytest.raises(CliError) as ei:
        parse_args([option, "disk.img"])
    assert str(ei.value) == f"{option} disk.img: bus type 'floppy' is not supported by this emulator"


def test_smbios_fields_are_refused_not_ignored():
    """The pc board publishes QEMU's default SMBIOS tables; ``-smbios`` would change them, so it is
    refused rather than dropped."""
    with pytest.raises(CliError) as ei:
        parse_args(["-smbios", "type=1,serial=x"])
    assert str(ei.value) == ("-smbios type=1,serial=x: -smbios is not supported by this emulator: "
                             "the pc board publishes QEMU's default SMBIOS tables only")


def test_machine_properties_not_modelled_are_warned_about():
    """A -machine property takes effect, matches the board as it is, or is warned about."""
    cfg = parse_args(["-machine", "pc,usb=off,hpet=off,smm=on,vmport=off,smbus=off,pit=off,sata=on",
                      "-machine", "kernel-irqchip=split,max-ram-below-4g=1G"])
    assert cfg.warnings == [f"-machine {p}: not modelled by this emulator, ignored"
                            for p in ("smbus=off", "pit=off", "sata=on", "kernel-irqchip=split",
                                      "max-ram-below-4g=1G")]
    assert cfg.machine_props["hpet"] == "off"
