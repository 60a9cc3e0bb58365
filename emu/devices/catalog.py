"""The ``-device`` models of the ``pc`` board: the catalog, the option parser and the help texts.

Owns what QEMU 7.2 does with a ``-device`` option before a device exists (``util/qemu-option.c``,
``softmmu/qdev-monitor.c``, ``qapi/qobject-input-visitor.c``), for the models we implement:

1. QemuOpts parsing (:func:`parse_device_opts`): ``driver`` is implied for the first item;
   ``,,`` escapes a comma; a bare ``foo`` means ``foo=on`` and ``nofoo`` ``foo=off``, each with a
   deprecation warning (except ``help``/``?``); the first ``id=`` names the device and must be an
   identifier, unique among ``-device`` options; a repeated property keeps its last value.
2. Help (:func:`device_help`): ``-device help`` (or ``?``) lists the models; ``-device NAME,help``
   lists NAME's properties. QEMU prints these on stdout and exits 0, even when NAME is unknown
   (then ``Device 'NAME' not found`` goes to stderr).
3. Checking (:func:`parse_device`): driver, user-creatability, ``bus=``, then each property in
   QEMU's QDict iteration order (hash bucket order, see :func:`qdict_order`), with QEMU's errors.

``ide-hd`` and the test-only ``migration-fault`` are parsed elsewhere (``emu.drives``,
``emu.devices.migration_fault``); here they appear in help output only, and
:func:`parse_device` hands their options over unchecked (``DeviceSpec.checked`` is False).
The JSON form (``-device {...}``) is not supported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.devices import debug_exit, pvpanic
from emu.qemu_opts import HELP_ITEMS, parse_items

HELP_OPTIONS = HELP_ITEMS

#: QEMU's device categories, in the order ``-device help`` prints them.
CATEGORIES = ("Controller/Bridge/Hub", "USB", "Storage", "Network", "Input", "Display", "Sound", "Misc", "CPU",
              "Watchdog", "Uncategorized")

#: Unsigned integer property types: (QOM type, maximum, name in range errors).
UINT_TYPES = {"uint8": (0xFF, "uint8_t"), "uint16": (0xFFFF, "uint16_t"), "uint32": (0xFFFFFFFF, "uint32_t"),
              "uint64": ((1 << 64) - 1, "uint64_t")}

#: The buses of the pc board ``bus=`` may name: bus id -> QOM bus type name (as errors print it).
PC_BUSES = {"main-system-bus": "System", "pci.0": "PCI", "isa.0": "ISA", "ide.0": "IDE", "ide.1": "IDE"}

ID_HINT = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."


class DeviceSpecError(Exception):
    """A ``-device`` option QEMU refuses: ``str()`` is the message printed after
    ``PROG: -device SPEC: ``; ``hint`` (may be empty) is a further line printed as is."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class PropInfo:
    """One property as ``-device NAME,help`` shows it: QOM type, default (None: none shown) and
    description (None: none)."""

    name: str
    type: str
    default: int | str | bool | None = None
    description: str | None = None
    #: how the value is read when it is not the QOM type's usual text (``pci-devfn``: PCI ``addr``)
    kind: str | None = None

    def help_line(self) -> str:
        """QEMU's ``object_property_help`` line."""
        line = f"  {self.name}=<{self.type}>"
        if self.description is not None or self.default is not None:
            line = line.ljust(24) + " - " + (self.description or "")
        if self.default is not None:
            if isinstance(self.default, bool):
                shown = "true" if self.default else "false"
            else:
                shown = f'"{self.default}"' if isinstance(self.default, str) else str(self.default)
            line += f" (default: {shown})"
        return line

    @property
    def settable(self) -> bool:
        """False for QOM child/link entries, which help lists but ``-device`` cannot set here."""
        return not self.type.startswith(("child<", "link<"))


@dataclass(frozen=True)
class DeviceModel:
    """One ``-device`` model: QEMU name, bus type (None: no bus), category, description,
    properties, whether users may create it, and whether this module checks its options."""

    name: str
    bus: str | None
    category: str
    desc: str | None = None
    props: tuple[PropInfo, ...] = ()
    user_creatable: bool = True
    checked_here: bool = True

    def prop(self, name: str) -> PropInfo | None:
        return next((p for p in self.props if p.name == name and p.settable), None)

    def devinfo_line(self) -> str:
        """The model's line in ``-device help`` (QEMU's ``qdev_print_devinfo``)."""
        line = f'name "{self.name}"'
        if self.bus is not None:
            line += f", bus {self.bus}"
        if self.desc is not None:
            line += f', desc "{self.desc}"'
        if not self.user_creatable:
            line += ", no-user"
        return line


#: The properties of every PCI function this emulator models (QEMU's pci_props).
PCI_ADDR_PROP = PropInfo("addr", "int32", -1, "Slot and optional function number, example: 06.0 or 06",
                         kind="pci-devfn")
PCI_MULTIFUNCTION_PROP = PropInfo("multifunction", "bool", False, "on/off")

MODELS: dict[str, DeviceModel] = {m.name: m for m in (
    DeviceModel("isa-debug-exit", "ISA", "Misc", props=(
        PropInfo("iobase", "uint32", debug_exit.DEFAULT_IOBASE),
        PropInfo("iosize", "uint32", debug_exit.DEFAULT_IOSIZE))),
    DeviceModel("pc-testdev", "ISA", "Misc"),
    DeviceModel("pvpanic", "ISA", "Misc", props=(
        PropInfo("events", "uint8", pvpanic.DEFAULT_EVENTS), PropInfo("ioport", "uint16", pvpanic.DEFAULT_IOPORT),
        PropInfo("pvpanic[0]", "child<memory-region>"))),
    DeviceModel("ib700", "ISA", "Watchdog", desc="iBASE 700"),
    # PCI options QEMU has but this emulator does not model (acpi-index, romfile...) are refused.
    DeviceModel("pvpanic-pci", "PCI", "Misc", props=(
        PCI_ADDR_PROP, PCI_MULTIFUNCTION_PROP, PropInfo("events", "uint8", pvpanic.DEFAULT_EVENTS))),
    DeviceModel("port92", "ISA", "Uncategorized", user_creatable=False, props=(
        PropInfo("a20[0]", "link<irq>"), PropInfo("port92[0]", "child<memory-region>"))),
    # Parsed elsewhere; ide-hd lists only the property this emulator acts on.
    DeviceModel("ide-hd", "IDE", "Storage", desc="virtual IDE disk", checked_here=False, props=(
        PropInfo("drive", "str", description="Node name or ID of a block device to use as a backend"),)),
    DeviceModel("migration-fault", None, "Uncategorized", desc="test-only: makes a migration step fail",
                checked_here=False, props=(
                    PropInfo("stage", "str", "save-setup", "save-setup/load-setup/save-state/post-load"),)),
)}


@dataclass
class DeviceOpts:
    """A ``-device`` option after QemuOpts parsing: ``pairs`` in command-line order (``id``
    removed), ``id``, and the deprecation warnings printed while parsing, as (message, hint):
    QEMU prints ``PROG: -device SPEC: warning: MESSAGE`` then the hint line."""

    pairs: list[tuple[str, str]]
    id: str | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        """The last value given for ``key`` (QEMU's qemu_opt_get), or None."""
        values = [v for k, v in self.pairs if k == key]
        return values[-1] if values else None

    def wants_help(self) -> bool:
        """``qemu_opt_has_help_opt``: some option is named ``help`` or ``?`` (whatever its value)."""
        return any(k in HELP_OPTIONS for k, _ in self.pairs)


@dataclass
class DeviceSpec:
    """A checked ``-device``: the driver, the typed values of the properties given (int for
    integer types, str for strings), ``id`` and ``bus`` (None when not given), and the
    QemuOpts warnings to print. ``checked`` is False for models parsed elsewhere (their
    ``props`` are the raw strings)."""

    driver: str
    props: dict[str, int | str | bool]
    id: str | None = None
    bus: str | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)
    checked: bool = True

    def value(self, name: str) -> int | str | bool | None:
        """The property's value: given, else the model's default."""
        if name in self.props:
            return self.props[name]
        prop = MODELS[self.driver].prop(name)
        return prop.default if prop is not None else None

    def int_value(self, name: str) -> int:
        """The value of an integer (or boolean) property: given, else the model's default."""
        value = self.value(name)
        if value is None:
            raise TypeError(f"{self.driver}: property {name!r} has no value")
        return int(value)


# ---------------------------------------------------------------- QemuOpts

def _id_wellformed(ident: str) -> bool:
    return bool(ident) and ident[0].isascii() and ident[0].isalpha() and all(
        c.isascii() and (c.isalnum() or c in "-._") for c in ident)


def parse_device_opts(spec: str, seen_ids: set[str] | None = None) -> DeviceOpts:
    """QemuOpts parsing of one ``-device`` value. ``seen_ids`` (the ids of the earlier
    ``-device`` options) gets this one's id; DeviceSpecError for a bad or duplicate id."""
    items = parse_items(spec, implied="driver")
    ident = next((it.value for it in items if it.key == "id" and not it.bare), None)
    if ident is not None:
        if not _id_wellformed(ident):
            raise DeviceSpecError("Parameter 'id' expects an identifier", ID_HINT)
        if seen_ids is not None:
            if ident in seen_ids:
                raise DeviceSpecError(f"Duplicate ID '{ident}' for device")
            seen_ids.add(ident)
    opts = DeviceOpts([(it.key, it.value) for it in items if it.key != "id"], ident)
    opts.warnings.extend(w for w in (it.deprecation() for it in items) if w is not None)
    return opts


# ---------------------------------------------------------------- help

def devices_help() -> str:
    """``-device help``: the user-creatable models by category (QEMU's qdev_print_devinfos)."""
    out: list[str] = []
    for i, category in enumerate(CATEGORIES):
        models = sorted((m for m in MODELS.values() if m.category == category and m.user_creatable),
                        key=lambda m: m.name.lower())
        if models:
            out.append(("\n" if i else "") + f"{category} devices:\n")
            out.extend(m.devinfo_line() + "\n" for m in models)
    return "".join(out)


def device_props_help(driver: str) -> str:
    """``-device DRIVER,help``; DeviceSpecError (``Device 'X' not found``) for an unknown one."""
    model = MODELS.get(driver)
    if model is None:
        raise DeviceSpecError(f"Device '{driver}' not found")
    if not model.props:
        return f"There are no options for {driver}.\n"
    lines = sorted(p.help_line() for p in model.props)
    return f"{driver} options:\n" + "".join(line + "\n" for line in lines)


def device_help(opts: DeviceOpts) -> str | None:
    """The help text a ``-device`` option asks for, or None when it asks for none. QEMU prints
    it on stdout and exits 0; a DeviceSpecError is printed (with the option's location) and
    QEMU exits 0 as well."""
    driver = opts.get("driver")
    if driver in HELP_OPTIONS:
        return devices_help()
    if driver is None or not opts.wants_help():
        return None
    return device_props_help(driver)


# ---------------------------------------------------------------- checking

def _tdb_hash(key: str) -> int:
    """QEMU's QDict hash (``tdb_hash``) of a key."""
    data = key.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_order(keys: list[str]) -> list[str]:
    """The distinct ``keys`` in the order QEMU sets a device's properties: QDict bucket order
    (hash mod 512), first-given first within a bucket (after ``qdict_clone_shallow``)."""
    distinct = list(dict.fromkeys(keys))
    return sorted(distinct, key=lambda k: (_tdb_hash(k) % 512, distinct.index(k)))


_SPACES = " \t\n\v\f\r"


def strtou64(text: str) -> int | None:
    """QEMU's ``qemu_strtou64(text, NULL, 0)``: strtoull with base 0 that must consume the whole
    string (negative numbers wrap modulo 2^64); None where QEMU fails (no digits, junk, overflow)."""
    s = text.lstrip(_SPACES)
    negative = s[:1] == "-"
    if s[:1] in "+-" and s:
        s = s[1:]
    base, digits = 10, s
    if s[:2].lower() == "0x" and s[2:3] and s[2].lower() in "0123456789abcdef":
        base, digits = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    allowed = "0123456789abcdef"[:base]
    if not digits or any(c.lower() not in allowed for c in digits):
        return None
    value = int(digits, base)
    if value >= 1 << 64:
        return None  # ERANGE
    return (-value) % (1 << 64) if negative else value


def _strtoul16(text: str) -> tuple[int | None, str]:
    """C's ``strtoul(text, &end, 16)`` on what a devfn can hold: (value or None when no digit
    was read, the rest of the text). Leading blanks, a sign and ``0x`` are taken as C takes them."""
    s = text.lstrip(" \t\n\v\f\r")
    negative = s[:1] == "-"
    if s[:1] in ("+", "-"):
        s = s[1:]
    if s[:2].lower() == "0x" and s[2:3] and s[2].lower() in "0123456789abcdef":
        s = s[2:]
    n = 0
    while n < len(s) and s[n].lower() in "0123456789abcdef":
        n += 1
    if n == 0:
        return None, text
    value = int(s[:n], 16)
    return ((-value) % (1 << 64) if negative else value), s[n:]


def parse_pci_devfn(text: str) -> int | None:
    """QEMU's PCI ``addr`` text, ``SLOT[.FUNCTION]`` in hex (slot <= 0x1f, function <= 7), as
    devfn; None when QEMU refuses it."""
    slot, rest = _strtoul16(text)
    if slot is None or slot > 0x1F or rest[:1] not in (".", ""):
        return None
    func = 0
    if rest:
        func_, rest = _strtoul16(rest[1:])
        if func_ is None or func_ > 7:
            return None
        func = func_
    return None if rest else slot << 3 | func


BOOL_VALUES = {"on": True, "yes": True, "true": True, "y": True, "off": False, "no": False, "false": False, "n": False}


def _check_value(prop: PropInfo, value: str, driver: str) -> int | str | bool:
    if prop.kind == "pci-devfn":
        devfn = parse_pci_devfn(value)
        if devfn is None:
            raise DeviceSpecError(f"Property '{driver}.{prop.name}' doesn't take value '{value}'")
        return devfn
    if prop.type == "bool":
        if value not in BOOL_VALUES:
            raise DeviceSpecError(f"Parameter '{prop.name}' expects 'on' or 'off'")
        return BOOL_VALUES[value]
    if prop.type not in UINT_TYPES:
        return value
    number = strtou64(value)
    if number is None:
        raise DeviceSpecError(f"Parameter '{prop.name}' expects integer")
    maximum, c_type = UINT_TYPES[prop.type]
    if number > maximum:
        raise DeviceSpecError(f"Parameter '{prop.name}' expects {c_type}")
    return number


def _find_model(driver: str) -> DeviceModel:
    model = MODELS.get(driver)
    if model is None:
        raise DeviceSpecError(f"'{driver}' is not a valid device model name")
    if not model.user_creatable:
        raise DeviceSpecError("Parameter 'driver' expects a pluggable device type")
    return model


def _check_bus(model: DeviceModel, bus: str) -> None:
    bus_type = PC_BUSES.get(bus)
    if bus_type is None:
        raise DeviceSpecError(f"Bus '{bus}' not found")
    if bus_type != model.bus:
        raise DeviceSpecError(f"Device '{model.name}' can't go on {bus_type} bus")


def parse_device(spec: str | DeviceOpts, seen_ids: set[str] | None = None) -> DeviceSpec:
    """A ``-device`` value (or its :func:`parse_device_opts` result) checked as QEMU 7.2's
    qdev_device_add checks it before realizing; DeviceSpecError with QEMU's message.
    Help requests must have been handled first (:func:`device_help`)."""
    if isinstance(spec, str):
        if spec.startswith("{"):
            raise DeviceSpecError("the JSON form of -device is not supported by this emulator")
        spec = parse_device_opts(spec, seen_ids)
    opts = spec
    driver = opts.get("driver")
    if driver is None:
        raise DeviceSpecError("Parameter 'driver' is missing")
    model = _find_model(driver)
    bus = opts.get("bus")
    given: dict[str, str] = {}
    for key, value in opts.pairs:
        if key not in ("driver", "bus"):
            given[key] = value  # a repeated key keeps its last value
    if not model.checked_here:
        return DeviceSpec(driver, dict(given), opts.id, bus, opts.warnings, checked=False)
    if bus is not None:
        _check_bus(model, bus)
    props: dict[str, int | str | bool] = {}
    for key in qdict_order([k for k, _ in opts.pairs if k not in ("driver", "bus")]):
        prop = model.prop(key)
        if prop is None:
            raise DeviceSpecError(f"Property '{driver}.{key}' not found")
        props[key] = _check_value(prop, given[key], driver)
    return DeviceSpec(driver, props, opts.id, bus, opts.warnings)

