"""The ``-device`` catalog: QemuOpts parsing, property checking and help texts against QEMU 7.2.

The expected texts were obtained from ``/root/qemu72/build/qemu-system-x86_64 -M pc -nodefaults
-display none -accel qtest -qtest null -S -device SPEC`` (stderr lines after the
``qemu-system-x86_64: -device SPEC: `` prefix; stdout for help). The ``oracle`` tests re-run
them against that binary when it is present and compare stdout, stderr and exit status.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from emu.devices.catalog import (
    MODELS,
    DeviceSpecError,
    device_help,
    device_props_help,
    devices_help,
    parse_device,
    parse_device_opts,
    parse_pci_devfn,
    qdict_order,
    strtou64,
)

ORACLE = "/root/qemu72/build/qemu-system-x86_64"
PROG = "qemu-system-x86_64"
needs_oracle = pytest.mark.skipif(not os.access(ORACLE, os.X_OK), reason="QEMU 7.2 oracle not built")

# -device SPEC -> the error QEMU 7.2 prints (probed as described in the module docstring)
ERRORS = {
    "foo": "'foo' is not a valid device model name",
    "foo,bus=x": "'foo' is not a valid device model name",
    "": "Parameter 'driver' is missing",
    "iobase=5": "Parameter 'driver' is missing",
    ",": "'' is not a valid device model name",
    "isa-debug-exit,,": "'isa-debug-exit,' is not a valid device model name",
    "port92": "Parameter 'driver' expects a pluggable device type",
    "isa-debug-exit,foo=1": "Property 'isa-debug-exit.foo' not found",
    "pc-testdev,iobase=1": "Property 'pc-testdev.iobase' not found",
    "ib700,x=1": "Property 'ib700.x' not found",
    "isa-debug-exit,iobase=foo": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iobase=": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iobase=08": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iobase=0x": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iobase=1a": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iobase=99999999999999999999": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iobase=-18446744073709551616": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iobase=0x100000000": "Parameter 'iobase' expects uint32_t",
    "isa-debug-exit,iobase=-1": "Parameter 'iobase' expects uint32_t",
    "pvpanic,ioport=0x10000": "Parameter 'ioport' expects uint16_t",
    "pvpanic,events=256": "Parameter 'events' expects uint8_t",
    "pvpanic,events=0x1ff": "Parameter 'events' expects uint8_t",
    # property order is QEMU's QDict order, not the command line's
    "isa-debug-exit,foo=1,iobase=x": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iosize=x,iobase=x": "Parameter 'iosize' expects integer",
    "isa-debug-exit,iobase=x,iosize=y": "Parameter 'iobase' expects integer",
    "isa-debug-exit,iosize=1,iobase=x,iosize=y": "Parameter 'iosize' expects integer",
    "pvpanic,events=x,ioport=y": "Parameter 'ioport' expects integer",
    "pvpanic,x=1,ioport=y": "Property 'pvpanic.x' not found",
    "isa-debug-exit,bus=pci.0": "Device 'isa-debug-exit' can't go on PCI bus",
    "isa-debug-exit,bus=ide.0": "Device 'isa-debug-exit' can't go on IDE bus",
    "isa-debug-exit,bus=main-system-bus": "Device 'isa-debug-exit' can't go on System bus",
    "isa-debug-exit,bus=foo": "Bus 'foo' not found",
    "isa-debug-exit,bus=pci.0,foo=1": "Device 'isa-debug-exit' can't go on PCI bus",
    "isa-debug-exit,bus=isa.0,foo=1": "Property 'isa-debug-exit.foo' not found",
}

ISA_DEBUG_EXIT_HELP = """\
isa-debug-exit options:
  iobase=<uint32>        -  (default: 1281)
  iosize=<uint32>        -  (default: 2)
"""
PVPANIC_HELP = """\
pvpanic options:
  events=<uint8>         -  (default: 3)
  ioport=<uint16>        -  (default: 1285)
  pvpanic[0]=<child<memory-region>>
"""
# QEMU's lines for the properties modelled (QEMU also lists acpi-index, romfile, x-pcie-*...)
PVPANIC_PCI_HELP = """\
pvpanic-pci options:
  addr=<int32>           - Slot and optional function number, example: 06.0 or 06 (default: -1)
  events=<uint8>         -  (default: 3)
  multifunction=<bool>   - on/off (default: false)
"""
PORT92_HELP = """\
port92 options:
  a20[0]=<link<irq>>
  port92[0]=<child<memory-region>>
"""
#: help texts that are a subset of QEMU's (the properties this emulator does not model are left out)
PARTIAL_HELP = ("pvpanic-pci,help",)
HELP = {  # -device SPEC -> QEMU's stdout (exit status 0)
    "isa-debug-exit,help": ISA_DEBUG_EXIT_HELP,
    "isa-debug-exit,?": ISA_DEBUG_EXIT_HELP,
    "isa-debug-exit,help=off": ISA_DEBUG_EXIT_HELP,  # any option named help asks for help
    "isa-debug-exit,iobase=foo,help": ISA_DEBUG_EXIT_HELP,  # help comes before property checks
    "pvpanic,help": PVPANIC_HELP,
    "pvpanic,help=x,ioport=y": PVPANIC_HELP,
    "pvpanic-pci,help": PVPANIC_PCI_HELP,
    "port92,help": PORT92_HELP,  # not user-creatable, but its options are listed
    "pc-testdev,help": "There are no options for pc-testdev.\n",
    "pc-testdev,help,foo=1": "There are no options for pc-testdev.\n",
    "ib700,help": "There are no options for ib700.\n",
}
# Lines of QEMU 7.2's `-device help` for the models both have, by category
QEMU_DEVINFO = {
    "Storage": ['name "ide-hd", bus IDE, desc "virtual IDE disk"'],
    "Misc": ['name "isa-debug-exit", bus ISA', 'name "pc-testdev", bus ISA', 'name "pvpanic", bus ISA'],
    "Watchdog": ['name "ib700", bus ISA, desc "iBASE 700"'],
}


def run_oracle(spec: str) -> tuple[int | None, str, str]:
    """QEMU's (exit status, stdout, stderr); status None when it started the machine."""
    try:
        proc = subprocess.run([ORACLE, "-M", "pc", "-nodefaults", "-display", "none", "-accel", "qtest", "-qtest",
                               "null", "-S", "-device", spec], capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired:
        return None, "", ""
    return proc.returncode, proc.stdout, proc.stderr


def run_local(spec: str) -> tuple[int | None, str, str]:
    """What the emulator must print and its exit status, from this module's API."""
    opts = None
    err = ""
    try:
        opts = parse_device_opts(spec)
        for message, hint in opts.warnings:
            err += f"{PROG}: -device {spec}: warning: {message}\n{hint}\n"
        text = device_help(opts)
        if text is not None:
            return 0, text, err
        parse_device(opts)
        return None, "", err
    except DeviceSpecError as e:
        err += f"{PROG}: -device {spec}: {e}\n" + (f"{e.hint}\n" if e.hint else "")
        asked_help = opts is not None and (opts.wants_help() or opts.get("driver") in ("help", "?"))
        return (0 if asked_help else 1), "", err


@pytest.mark.parametrize("spec", list(ERRORS))
def test_errors(spec):
    with pytest.raises(DeviceSpecError) as e:
        parse_device(spec)
    assert str(e.value) == ERRORS[spec]


@pytest.mark.parametrize("spec", list(HELP))
def test_props_help(spec):
    assert device_help(parse_device_opts(spec)) == HELP[spec]


def test_help_unknown_device_and_no_help():
    with pytest.raises(DeviceSpecError, match=r"^Device 'foo' not found$"):
        device_help(parse_device_opts("foo,help"))
    assert device_help(parse_device_opts("isa-debug-exit,iobase=1")) is None
    assert device_help(parse_device_opts("iobase=1,help")) is None  # no driver: QEMU's help check fails


def test_devices_help_text():
    text = devices_help()
    assert text == (
        "\nStorage devices:\n"  # QEMU prefixes a blank line to every category after the first one
        'name "ide-hd", bus IDE, desc "virtual IDE disk"\n'
        "\nMisc devices:\n"
        'name "isa-debug-exit", bus ISA\n'
        'name "pc-testdev", bus ISA\n'
        'name "pvpanic", bus ISA\n'
        'name "pvpanic-pci", bus PCI\n'
        "\nWatchdog devices:\n"
        'name "ib700", bus ISA, desc "iBASE 700"\n'
        "\nUncategorized devices:\n"
        'name "migration-fault", desc "test-only: makes a migration step fail"\n')
    assert device_help(parse_device_opts("help")) == text == device_help(parse_device_opts("?"))
    assert "port92" not in text  # not user-creatable


def test_values_defaults_and_last_wins():
    spec = parse_device("isa-debug-exit,iobase=0x600,iobase=0x700,id=dbg")
    assert (spec.driver, spec.props, spec.id, spec.value("iobase"), spec.value("iosize")) == (
        "isa-debug-exit", {"iobase": 0x700}, "dbg", 0x700, 2)
    spec = parse_device("driver=pvpanic,events=1,bus=isa.0")
    assert (spec.props, spec.bus, spec.value("ioport")) == ({"events": 1}, "isa.0", 0x505)
    assert parse_device("pc-testdev").props == {} and parse_device("ib700").checked


@pytest.mark.parametrize("text, value", [
    ("0x10", 16), (" 0x10", 16), ("+5", 5), ("010", 8), ("0", 0), ("0X1f", 31), ("-1", (1 << 64) - 1),
    ("-0xfffffffffffffffe", 2), ("18446744073709551615", (1 << 64) - 1),
    ("", None), ("0x", None), ("08", None), ("1a", None), ("5 ", None), ("-", None), ("18446744073709551616", None),
])
def test_strtou64(text, value):
    assert strtou64(text) == value


def test_qdict_order():
    assert qdict_order(["foo", "iobase"]) == ["iobase", "foo"]
    assert qdict_order(["iosize", "iobase"]) == ["iosize", "iobase"]  # same bucket: first given first
    assert qdict_order(["iobase", "iosize", "iobase"]) == ["iobase", "iosize"]
    assert qdict_order(["events", "ioport", "x"]) == ["x", "ioport", "events"]


def test_opts_warnings_and_ids():
    opts = parse_device_opts("isa-debug-exit,foo,nobar,help,id=a")
    assert opts.warnings == [("short-form boolean option 'foo' deprecated", "Please use foo=on instead"),
                             ("short-form boolean option 'nobar' deprecated", "Please use bar=off instead")]
    assert opts.id == "a" and opts.get("bar") == "off" and opts.wants_help()
    seen: set[str] = set()
    parse_device("isa-debug-exit,id=a", seen)
    with pytest.raises(DeviceSpecError, match=r"^Duplicate ID 'a' for device$"):
        parse_device("ib700,id=a", seen)
    with pytest.raises(DeviceSpecError) as e:
        parse_device("ib700,id=1bad")
    assert (str(e.value), e.value.hint) == (
        "Parameter 'id' expects an identifier",
        "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.")
    assert parse_device("ib700,id=x,id=1bad").id == "x"  # the first id counts


def test_models_parsed_elsewhere_pass_through():
    spec = parse_device("ide-hd,drive=d0,bogus=1")
    assert (spec.checked, spec.props) == (False, {"drive": "d0", "bogus": "1"})
    assert not parse_device("migration-fault,stage=load-setup").checked
    assert device_props_help("migration-fault") == (
        "migration-fault options:\n"
        '  stage=<str>            - save-setup/load-setup/save-state/post-load (default: "save-setup")\n')
    assert {"isa-debug-exit", "pc-testdev", "pvpanic", "ib700", "ide-hd", "migration-fault"} <= set(MODELS)


@needs_oracle
@pytest.mark.parametrize("spec", list(ERRORS) + [h for h in HELP if h not in PARTIAL_HELP] + [
    "foo,help", "isa-debug-exit,foo", "isa-debug-exit,nohelp", "ib700,bus=isa.0,nofoo", "isa-debug-exit,id=1bad",
    "isa-debug-exit,iobase= 0x10", "isa-debug-exit,iobase=-0xfffffffffffffffe", "isa-debug-exit,id=a.b-c_d",
    "isa-debug-exit,driver=ib700,iobase=1", "pc-testdev,iosize=1,help"])
def test_against_oracle(spec):
    assert run_local(spec) == run_oracle(spec)


@needs_oracle
@pytest.mark.parametrize("spec", PARTIAL_HELP)
def test_partial_help_lines_are_qemus(spec):
    """Models whose help lists only the properties modelled: every line is one of QEMU's."""
    status, out, err = run_oracle(spec)
    ours = HELP[spec].splitlines()
    assert (status, err) == (0, "")
    assert ours[0] == out.splitlines()[0] and set(ours[1:]) < set(out.splitlines()[1:])


@needs_oracle
def test_devinfo_lines_against_oracle():
    rc, out, _ = run_oracle("help")
    assert rc == 0
    sections = {block.split(" devices:\n")[0]: block.split("\n")[1:] for block in out.strip("\n").split("\n\n")}
    for category, lines in QEMU_DEVINFO.items():
        for line in lines:
            assert line in sections[category]
            assert line in devices_help()


@pytest.mark.parametrize("text, devfn", [
    ("04.0", 0x20), ("4", 0x20), ("04", 0x20), ("1f.7", 0xFF), ("0.0", 0), ("+4", 0x20), ("04.0x1", 0x21),
    ("0x4", 0x20), ("1F.1", 0xF9), (" 4", 0x20),
    ("0x20", None), ("04.8", None), ("zz", None), ("-1", None), ("256", None), ("31", None), ("4.", None),
    ("4.1x", None), ("", None), (".1", None), ("4..1", None),
])
def test_pci_addr_is_slot_dot_function_in_hex(text, devfn):
    assert parse_pci_devfn(text) == devfn


def test_pci_device_properties():
    spec = parse_device("pvpanic-pci,addr=05.3,multifunction=yes,events=1")
    assert spec.props == {"addr": 0x2B, "multifunction": True, "events": 1}
    assert parse_device("pvpanic-pci").value("addr") == -1  # first free slot
    assert parse_device("pvpanic-pci").value("multifunction") is False
    for spec, message in (("pvpanic-pci,addr=04.8", "Property 'pvpanic-pci.addr' doesn't take value '04.8'"),
                          ("pvpanic-pci,multifunction=2", "Parameter 'multifunction' expects 'on' or 'off'"),
                          ("pvpanic-pci,romfile=x", "Property 'pvpanic-pci.romfile' not found"),
                          ("pvpanic-pci,bus=isa.0", "Device 'pvpanic-pci' can't go on ISA bus")):
        with pytest.raises(DeviceSpecError) as e:
            parse_device(spec)
        assert str(e.value) == message
