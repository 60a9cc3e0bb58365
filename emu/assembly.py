"""Builds a ``System`` from a ``Config``: machine, VM, chardevs, monitors, qtest server, vCPU.

This is the wiring layer under ``emu.cli``: it knows every part, while the parts know only what
is below them. ``run_system`` builds and runs one, and returns the process exit status. Nothing
imports this module but the command line (and the in-process fuzzer, which builds machines).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from emu.chardev import Chardev, ChardevError, create_chardev, parse_legacy
from emu.config import Config
from emu.firmware_path import data_dirs
from emu.machine import MACHINE_TYPES, MachineError, find_machine
from emu.machine.options import BoardOptions
from emu.main_loop import MainLoop
from emu.system import System
from emu.vm import VM


class StartupError(Exception):
    """A start-up failure: each line of the message is printed as ``<prog>: <line>``, then the
    hint lines as they are (QEMU's error_append_hint); the exit status is 1."""

    def __init__(self, message: str, hint: str = "", prefixed: bool = True) -> None:
        super().__init__(message)
        self.hint = hint
        self.prefixed = prefixed


class EarlyExit(Exception):
    """Stops start-up with exit status 0 after printing the text (``-M help``)."""


class _Frontend:
    """Adapts a chardev to a transport-free server (qtest or QMP session)."""

    def __init__(self, on_open: Callable[[], None], on_read: Callable[[bytes, list[int]], None],
                 on_close: Callable[[], None], spin_ns: int = 0) -> None:
        self.chr_open, self.chr_read, self.chr_close = on_open, on_read, on_close
        self.spin_ns = spin_ns  # poll this long for the next command after answering one


def _serial_frontend(uart: Any) -> _Frontend:
    """A 16550's receive side as a chardev front-end (fds passed along a serial line are dropped)."""
    return _Frontend(lambda: None, lambda data, fds: uart.receive(data), lambda: None)


QTEST_SPIN_NS = 50_000
#: the properties QEMU 7.2's accelerators have (``-accel NAME,prop=...``)
ACCEL_PROPS = {"kvm": ("kernel-irqchip", "kvm-shadow-mem", "dirty-ring-size", "notify-vmexit", "notify-window"),
               "tcg": ("thread", "tb-size", "split-wx"), "qtest": ()}


class Assembler:
    """Builds the parts of one process from its ``Config``, in QEMU's order, into a ``System``."""

    def __init__(self, cfg: Config, prog: str) -> None:
        self.cfg = cfg
        self.prog = prog
        self.late_warnings: list[str] = []
        self._counters: dict[str, int] = {}  # chardev labels per owner: serial0, serial1...
        self.accel = ""  # the accelerator chosen: qtest, tcg or kvm
        self.kvm_dirty_ring_size = 0  # -accel kvm,dirty-ring-size=N (0: dirty bitmaps)
        loop = MainLoop()
        self.system = System(loop, self._build_vm(loop), prog)
        vm = self.system.vm
        vm.machine.clock.abort_check = (
            lambda: vm.shutdown_requested is not None or self.system.signal_received is not None)

    # ---- the machine and its VM
    def _build_vm(self, loop: MainLoop) -> VM:
        cfg = self.cfg
        if cfg.machine in ("help", "?"):
            raise EarlyExit(_machine_help())
        mcls = find_machine(cfg.machine)
        if mcls is None:
            raise StartupError("unsupported machine type", hint="Use -machine help to list supported machines")
        qtest_accel = self._choose_accel()
        try:
            machine = mcls(cfg.ram_size or None, manual_clock=qtest_accel, bios=cfg.bios,
                           options=board_options(cfg))
        except MachineError as e:
            raise StartupError(str(e), prefixed=e.prefixed) from None
        for key, value in cfg.machine_props.items():
            _set_machine_prop(machine, key, value)
        self._warn_missing_defaults(machine)
        vm = VM(machine, start_paused=cfg.start_paused, qtest_accel=qtest_accel, name=cfg.name, uuid=cfg.uuid)
        vm.accel = self.accel
        vm.actions = cfg.actions
        if cfg.incoming is not None:
            vm.runstate = "inmigrate"  # waits for the stream; autostart stays as -S says
            machine.clock.enable(False)
        vm.defer = loop.call_soon_threadsafe
        vm.on_shutdown_request(loop.stop)
        self._attach_boot_disk(machine)
        self._add_devices(machine)
        machine.boot()
        return vm

    def _warn_missing_defaults(self, machine: Any) -> None:
        """QEMU's default devices that this board does not create are said to be missing (the
        serial and parallel ports and the CD-ROM drive are created)."""
        cfg = self.cfg
        if cfg.nodefaults or not machine.has_default_devices:
            return
        missing = [what for what, wanted in (("VGA (-vga std)", cfg.default_vga),
                                             ("e1000 network card (-nic)", cfg.default_net),
                                             ("floppy drive fd0", True))
                   if wanted]
        # said once start-up succeeded: a start-up error stays the only line, as in QEMU
        one = len(missing) == 1
        self.late_warnings.append(f"QEMU's default {', '.join(missing)} {'is' if one else 'are'} not created by "
                                  f"this emulator; -nodefaults leaves {'it' if one else 'them'} out")

    def _attach_boot_disk(self, machine: Any) -> None:
        """The boot disk, then the empty CD-ROM drives of ``-drive if=ide,media=cdrom`` and the
        default one (IDE index 2, as QEMU adds it without ``-nodefaults``)."""
        from emu.drives import DriveError, boot_disk, default_cdrom_wanted, ide_drives

        cfg = self.cfg
        default_cdrom = (not cfg.nodefaults and machine.has_default_devices
                         and default_cdrom_wanted(cfg.devices))
        try:
            disk = boot_disk(cfg.drives, cfg.devices, machine.migration_faults)
            ide = ide_drives(cfg.drives, machine.ide_buses, default_cdrom)
        except DriveError as e:
            raise StartupError(str(e)) from None
        # the boot disk sits at the primary master, whose ATA registers are not modelled (its
        # channel's ports are unmapped): another drive on that bus could not be reached
        for drive in ide:
            if drive.media == "disk" and drive.index != 0:
                raise StartupError(f"an IDE disk at index {drive.index} is not supported by this emulator "
                                   "(only the boot disk, at index 0)")
            if drive.media == "cdrom" and disk is not None and drive.index < 2:
                raise StartupError("a CD-ROM drive on the primary IDE bus beside the boot disk is not supported "
                                   "by this emulator")
        if disk is not None and hasattr(machine, "attach_boot_disk"):
            with open(disk, "rb") as f:
                machine.attach_boot_disk(f.read(512).ljust(512, b"\0"))
        for drive in ide:
            if drive.media == "cdrom":
                machine.attach_cdrom(drive.index)

    def _add_devices(self, machine: Any) -> None:
        """Each ``-device`` of the catalog, in command-line order (``ide-hd`` and the test-only
        ``migration-fault`` were taken by the drive set-up)."""
        from emu.devices.catalog import DeviceSpecError, parse_device

        for text, opts in zip(self.cfg.devices, self.cfg.device_opts):
            try:
                spec = parse_device(opts)
                if spec.checked:
                    machine.add_user_device(spec)
            except DeviceSpecError as e:
                raise StartupError(f"-device {text}: {e}", hint=e.hint) from None
            except MachineError as e:
                raise StartupError(f"-device {text}: {e}") from None

    def _choose_accel(self) -> bool:
        """Tries ``-accel`` choices in order, as QEMU does; True when the qtest accelerator won.
        ``self.accel`` names the winner; a KVM that cannot start reports why (QEMU's texts) and
        the next one is tried."""
        accels = self.cfg.accels or ["tcg"]
        props = self.cfg.accel_props or [({}, "")] * len(accels)
        for acc, (opts, text) in zip(accels, props):
            if acc not in ("qtest", "tcg", "kvm"):
                raise StartupError(f"-accel {acc}: invalid accelerator {acc}")
            self._check_accel_props(acc, opts, text)
            if acc == "qtest":
                self.accel = "qtest"
                return True
            if acc == "tcg":
                if importlib.util.find_spec("unicorn") is not None:
                    self.accel = "tcg"
                    return False
                # the vCPU backend is a declared dependency; without it TCG is not available
                sys.stderr.write(f"{self.prog}: -accel tcg: invalid accelerator tcg "
                                 "(the vCPU backend, Python package 'unicorn', is not installed)\n")
                continue
            if self._kvm_usable(text):
                self.accel = "kvm"
                return False
        # each one that failed said why; QEMU adds "no accelerator found" only when none did
        raise StartupError("")

    def _check_accel_props(self, acc: str, opts: dict[str, str], text: str) -> None:
        """QEMU's property errors for ``-accel NAME,...``; the properties this emulator does not
        implement are refused rather than ignored."""
        for key, value in opts.items():
            known = ACCEL_PROPS.get(acc, ())
            if key not in known:
                raise StartupError(f"{text}: Property '{acc}-accel.{key}' not found")
            if acc == "kvm" and key == "dirty-ring-size":
                if not value.isdigit() and not value.lower().startswith("0x"):
                    raise StartupError(f"{text}: Parameter 'dirty-ring-size' expects uint64")
                size = int(value, 0)
                if size & (size - 1):
                    raise StartupError(f"{text}: dirty-ring-size must be a power of two.")
                self.kvm_dirty_ring_size = size
            elif acc == "kvm" and key == "kernel-irqchip":
                if value not in ("on", "off", "split"):
                    raise StartupError(f"{text}: Parameter 'kernel-irqchip' does not accept value '{value}'")
                if value != "off":
                    raise StartupError(f"{text}: kernel-irqchip={value} is not supported: the interrupt "
                                       "controllers run in user space (kernel-irqchip=off)")
            elif acc == "tcg" and key == "thread":
                if value not in ("single", "multi"):
                    raise StartupError(f"{text}: Parameter 'thread' does not accept value '{value}'")
                # one vCPU: single- and multi-threaded TCG run it the same way
            elif acc == "tcg" and key == "split-wx" and value == "off":
                pass  # what Unicorn does
            else:
                raise StartupError(f"{text}: property {key} of the {acc} accelerator is not supported "
                                   "by this emulator")

    def _kvm_usable(self, text: str) -> bool:
        """Whether KVM can run this VM (QEMU's kvm_init); says why not on stderr, as QEMU does.
        A dirty ring too big for the kernel ends start-up, as in QEMU."""
        from emu.kvm_core import kvm_available, kvm_dirty_ring_limit

        why = kvm_available()
        if why is None and self.kvm_dirty_ring_size:
            limit = kvm_dirty_ring_limit()
            if limit == 0:
                sys.stderr.write(f"{self.prog}: {text}: warning: KVM dirty ring not available, "
                                 "using bitmap method\n")
                self.kvm_dirty_ring_size = 0
            elif self.kvm_dirty_ring_size > limit:
                sys.stderr.write(f"{self.prog}: {text}: KVM dirty ring size {self.kvm_dirty_ring_size} too big "
                                 f"(maximum is {limit}).  Please use a smaller value.\n")
                raise StartupError(f"{text}: failed to initialize kvm: Invalid argument")
        if why is None:
            return True
        if why.startswith("Could not access KVM kernel module: No such file"):
            sys.stderr.write(why + "\n")
            if self.cfg.qtest is None:  # QEMU keeps quiet about ENOENT under qtest
                sys.stderr.write(f"{self.prog}: failed to initialize kvm: No such file or directory\n")
        else:
            sys.stderr.write(why + "\n")
            reason = why.rsplit(": ", 1)[-1].lstrip("0123456789 ")  # "ioctl(...) failed: 16 Device..."
            sys.stderr.write(f"{self.prog}: failed to initialize kvm: {reason}\n")
        return False

    def _chardev(self, spec: str, owner: str) -> Chardev:
        """A chardev from a legacy spec (created and started) or ``chardev:ID`` (an existing one)."""
        if spec.startswith("chardev:"):
            chr_id = spec[len("chardev:"):]
            if chr_id not in self.system.chardevs:
                raise StartupError(f"chardev \"{chr_id}\" not found")
            return self.system.chardevs[chr_id]
        backend, opts = parse_legacy(spec)
        if owner == "qtest":
            chr_id = "qtest"  # QEMU's labels: qtest, compat_monitor0, serial0...
        else:
            n = self._counters.get(owner, 0)
            self._counters[owner] = n + 1
            chr_id = f"{owner}{n}"
        chardev = create_chardev(self.system.loop, backend, chr_id, opts)
        self.system.chardevs[chr_id] = chardev
        chardev.start()  # a -chardev's was started with the others; a legacy spec's starts here
        return chardev

    def setup(self) -> None:
        """Everything after the machine, in QEMU's order: chardevs, fds, objects, migration,
        monitors, serials, machine-done, qtest, vCPU, then ``-incoming``."""
        cfg = self.cfg
        self._create_chardevs()
        for opts in cfg.add_fds:
            self.system.fdsets.add(int(opts["fd"]), int(opts["set"]), opts.get("opaque"))
        self._create_objects()
        self._setup_migration()
        self._setup_monitors()
        self._setup_serials()
        self._setup_parallels()
        self.system.vm.machine.machine_done()
        self._setup_qtest()
        self._setup_vcpu()
        if cfg.incoming is not None and cfg.incoming != "defer":
            self._start_incoming(cfg.incoming)
        for line in self.late_warnings:
            sys.stderr.write(f"{self.prog}: warning: {line}\n")

    def _create_chardevs(self) -> None:
        """Each ``-chardev``, checked against the ``-mon``s, then started."""
        cfg, chardevs = self.cfg, self.system.chardevs
        for spec in cfg.chardevs:
            if spec.id in chardevs:
                raise StartupError(f"-chardev {spec.backend},id={spec.id}: attempt to add duplicate property "
                                   f"'{spec.id}' to object (type 'container')")
            try:
                chardevs[spec.id] = create_chardev(self.system.loop, spec.backend, spec.id, spec.opts)
            except ChardevError as e:
                raise StartupError(f"-chardev {spec.backend},id={spec.id}: {e}") from None
        for mon in cfg.monitors:
            if mon.get("mode", "readline") != "control":
                raise StartupError(f"-mon {_fmt(mon)}: the human monitor (mode=readline) is not supported")
            if mon["chardev"] not in chardevs:
                raise StartupError(f"-mon {_fmt(mon)}: chardev \"{mon['chardev']}\" not found")
        if cfg.hmp:
            raise StartupError(f"-monitor {cfg.hmp[0]}: the human monitor is not supported")
        # Start the named chardevs first (they may be servers the others connect to).
        for chr_id, chardev in list(chardevs.items()):
            try:
                chardev.start()
            except ChardevError as e:
                raise StartupError(f"-chardev {chardev.backend},id={chr_id}: {e}") from None

    def _create_objects(self) -> None:
        """The ``-object``s other than qtest (TLS credentials, authz), once the machine exists."""
        if not self.cfg.user_objects:
            return
        from emu.tls import TlsError, objects_registry
        from emu.tls.registry import create_from_keyval

        registry = objects_registry(self.system.vm.machine.root)
        for text, opts in self.cfg.user_objects:
            try:
                create_from_keyval(registry, opts)
            except TlsError as e:
                raise StartupError(f"-object {text}: {e}") from None

    def _setup_monitors(self) -> None:
        cfg = self.cfg
        targets: list[tuple[Chardev, bool]] = []
        for spec, pretty in cfg.qmp:
            try:
                chardev = self._chardev(spec, "compat_monitor")
            except (ChardevError, StartupError) as e:
                raise StartupError(f"-qmp {spec}: {e}") from None
            targets.append((chardev, pretty))
        for mon in cfg.monitors:
            targets.append((self.system.chardevs[mon["chardev"]], mon.get("pretty", "off") == "on"))
        if not targets:
            return
        from emu.control import SystemControl
        from emu.monitor.frontend import attach_monitor, make_qmp_server

        system = self.system
        assert system.migration is not None  # set up before the monitors
        control = SystemControl(system.vm, system.chardevs, system.fdsets, system.migration)
        system.qmp_server = make_qmp_server(control, system.vm)
        for chardev, pretty in targets:
            attach_monitor(system.qmp_server, chardev, pretty)

    def _setup_migration(self) -> None:
        from emu.migration.manager import MigrationManager

        system = self.system

        def named_fds() -> Any:
            # QEMU looks names up in the current monitor; -incoming fd:N has none
            session = next(iter(system.qmp_server.sessions), None) if system.qmp_server else None
            return getattr(session, "named_fds", None)

        def fatal(status: int) -> None:
            # QEMU's exit(EXIT_FAILURE) from the failed incoming migration: at once, not through an
            # orderly shutdown, which a SIGTERM arriving meanwhile would turn into status 0 (QEMU's
            # tests kill the destination right after the source reports the failure)
            system.vm.exit_code = status
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

        system.migration = MigrationManager(system.vm, named_fds=named_fds, fdsets=system.fdsets, fatal=fatal,
                                            prog=self.prog)
        # the machine type's compat properties first, then the command line's -global
        for (driver, prop), value in {**system.vm.machine.compat_globals, **self.cfg.globals}.items():
            if driver == "migration" and prop == "multifd-flush-after-each-section":
                flag = {"on": True, "yes": True, "true": True, "y": True,
                        "off": False, "no": False, "false": False, "n": False}.get(value)
                if flag is None:
                    raise StartupError(f"can't apply global migration.{prop}={value}: "
                                       f"Parameter '{prop}' expects 'on' or 'off'")
                system.migration.flush_after_each_section = flag
            elif driver == "migration" and prop == "zero-page-detection":
                if value not in ("none", "legacy", "multifd"):
                    raise StartupError(f"can't apply global migration.{prop}={value}: "
                                       f"Parameter '{prop}' does not accept value '{value}'")
                system.migration.config.parameters[prop] = value

    def _start_incoming(self, uri: str) -> None:
        from emu.migration.address import MigrationAddressError, parse_migration_uri
        from emu.migration.manager import MigrationError

        assert self.system.migration is not None  # set up before -incoming is started
        try:
            self.system.migration.incoming(parse_migration_uri(uri))
        except (MigrationAddressError, MigrationError) as e:
            raise StartupError(str(e)) from None

    def _default_chardev(self) -> str | None:
        """QEMU's backend for a default serial or parallel port: stdio under -nographic (the
        serial port muxed with the monitor there; the parallel port gets null), else
        ``vc:80Cx24C``, a text console that nothing displays here: null. None: -nodefaults, or a
        machine without default devices."""
        cfg = self.cfg
        if cfg.nodefaults or not self.system.vm.machine.has_default_devices:
            return None
        return "stdio" if cfg.nographic else "null"

    def _setup_serials(self) -> None:
        """Opens each ``-serial`` chardev now (a test may be waiting for us to connect); the 16550
        UARTs that drive them come with the vCPU work."""
        serials = self.system.serial_chardevs
        specs = list(self.cfg.serials)
        default = self._default_chardev()
        if self.cfg.default_serial and default is not None:
            specs.append(default)
        for spec in specs:
            if spec == "none":
                serials.append(None)
                continue
            try:
                chardev = self._chardev(spec, "serial")
            except (ChardevError, StartupError) as e:
                raise StartupError(f"-serial {spec}: {e}") from None
            serials.append(chardev)
            add_serial = getattr(self.system.vm.machine, "add_serial", None)
            if add_serial is not None and len(serials) <= 4:
                uart = add_serial(len(serials) - 1, chardev.write)
                chardev.attach(_serial_frontend(uart))

    def _setup_parallels(self) -> None:
        """Each ``-parallel`` chardev (or QEMU's default one) and its LPT port, as many as the
        board has (QEMU's MAX_PARALLEL_PORTS is 3)."""
        specs = list(self.cfg.parallels)
        if self.cfg.default_parallel and self._default_chardev() is not None:
            specs.append("null")  # -nographic gives the default parallel port null too
        add_parallel = getattr(self.system.vm.machine, "add_parallel", None)
        index = 0
        for spec in specs:
            if spec == "none":  # takes no index, as in QEMU's parallel_parse
                continue
            if index == 3:
                raise StartupError("too many parallel ports")
            try:
                chardev = self._chardev(spec, "parallel")
            except (ChardevError, StartupError) as e:
                raise StartupError(f"-parallel {spec}: {e}") from None
            if add_parallel is not None:
                add_parallel(index, chardev.write)
            index += 1

    def _setup_vcpu(self) -> None:
        """With TCG or KVM, a machine that has a CPU and a boot disk runs the guest on a vCPU
        (Unicorn or KVM). Without a boot disk there is no firmware to run: the CPU stays idle."""
        machine = self.system.vm.machine
        if self.system.vm.qtest_accel or not machine.cpus or getattr(machine, "boot_image", None) is None:
            return
        from emu.vcpu_control import VCPUError

        try:
            if self.accel == "kvm":
                from emu.kvm_vcpu import KvmVCPU

                vcpu: Any = KvmVCPU(self.system.vm, dirty_ring_size=self.kvm_dirty_ring_size)
            else:
                from emu.cpu import VCPU

                vcpu = VCPU(self.system.vm)
        except VCPUError as e:
            raise StartupError(f"cannot start the vCPU: {e}") from None
        self.system.vm.attach_vcpu(vcpu)

    def _setup_qtest(self) -> None:
        from qtest.server import QTestServer

        cfg = self.cfg
        if cfg.qtest is not None and cfg.qtest_objects:
            raise StartupError("Only one instance of qtest can be created")
        if len(cfg.qtest_objects) > 1:
            second = cfg.qtest_objects[1].get("id")
            raise StartupError(f"-object qtest,id={second}: Only one instance of qtest can be created")
        if cfg.qtest is not None:
            try:
                chardev = self._chardev(cfg.qtest, "qtest")
            except (ChardevError, StartupError) as e:
                raise StartupError(f"{e}\nFailed to initialize device for qtest: \"{cfg.qtest}\"") from None
            log = self._open_log(cfg.qtest_log)
        elif cfg.qtest_objects:
            obj = cfg.qtest_objects[0]
            if "chardev" not in obj:
                raise StartupError(f"-object {_fmt(obj)}: No backend specified")
            if obj["chardev"] not in self.system.chardevs:
                raise StartupError(f"-object {_fmt(obj)}: Cannot find character device '{obj['chardev']}'")
            chardev = self.system.chardevs[obj["chardev"]]
            log = self._open_log(obj.get("log", "none"))
        else:
            return
        server = QTestServer(self.system.vm, log=log, write=chardev.write)
        self.system.qtest_servers.append(server)
        chardev.attach(_Frontend(server.opened, lambda data, fds: _feed_qtest(server, data, fds), server.closed,
                                 spin_ns=QTEST_SPIN_NS))

    def _open_log(self, path: str | None) -> Any:
        from qtest.server import QTestLog

        if path == "none":
            return None
        if path is None:
            return QTestLog(sys.stderr.buffer)
        try:
            return QTestLog(open(path, "wb"))  # noqa: SIM115 - lives as long as the process
        except OSError as e:
            raise StartupError(f"-qtest-log {path}: {e.strerror}") from None


def _feed_qtest(server: Any, data: bytes, fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)  # qtest takes no fds
    server.feed(data)


def board_options(cfg: Config) -> BoardOptions:
    """What the board needs from the command line beyond RAM size and firmware."""
    opts = BoardOptions(fd_bootchk=cfg.fd_bootchk, rtc=cfg.rtc, nodefaults=cfg.nodefaults,
                        uuid=bytes.fromhex(cfg.uuid.replace("-", "")) if cfg.uuid else None,
                        nographic=cfg.nographic or _off(cfg.machine_props.get("graphics")),
                        hpet=not (cfg.no_hpet or _off(cfg.machine_props.get("hpet"))),
                        acpi=not (cfg.no_acpi or _off(cfg.machine_props.get("acpi"))),
                        data_dirs=data_dirs(cfg.data_dirs))
    from emu.drives import pflash_drives

    opts.pflash = pflash_drives(cfg.drives)
    boot: Any = cfg.boot
    if boot is not None:
        opts.boot_order = boot.order if boot.order is not None else "cad"
        opts.boot_once = boot.once
        opts.boot_menu = bool(boot.menu)
        opts.boot_splash = boot.splash
        opts.boot_strict = bool(boot.strict)
        opts.splash_time = boot.splash_time
        opts.reboot_timeout = boot.reboot_timeout
    return opts


def _off(value: str | None) -> bool:
    return value in ("off", "false", "no")


def _set_machine_prop(machine: Any, key: str, value: str) -> None:
    """``-machine key=value`` for the properties the machine models (others are accepted as-is)."""
    from emu.qom import QomError

    try:
        prop = machine.qom_property(key)
    except QomError:
        return
    if prop.type == "bool":
        if value not in ("on", "off", "yes", "no", "true", "false"):
            raise StartupError(f"Parameter '{key}' expects 'on' or 'off'")
        prop.setter(value in ("on", "yes", "true"))
    elif prop.setter is not None:
        try:
            prop.setter(value)
        except QomError as e:
            raise StartupError(str(e)) from None


def _fmt(opts: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in opts.items())


def assemble(cfg: Config, prog: str) -> System:
    """The whole process described by ``cfg``, wired and ready to run."""
    assembler = Assembler(cfg, prog)
    assembler.setup()
    return assembler.system


def _machine_help() -> str:
    """``-M help``."""
    lines = ["Supported machines are:"]
    for cls in MACHINE_TYPES:
        for alias in cls.aliases:
            lines.append(f"{alias:<20} {cls.description} (alias of {cls.name})")
        lines.append(f"{cls.name:<20} {cls.description}{' (default)' if cls.aliases else ''}")
    return "\n".join(lines) + "\n"


def run_system(cfg: Config, prog: str) -> int:
    """Builds and runs the system; the process exit status (1 with QEMU's message when start-up fails)."""
    for line in cfg.warnings:  # options accepted, but configuring nothing that exists here
        sys.stderr.write(f"{prog}: warning: {line}\n")
    try:
        system = assemble(cfg, prog)
    except EarlyExit as e:
        sys.stdout.write(str(e))
        return 0
    except (StartupError, ChardevError) as e:
        prefix = f"{prog}: " if getattr(e, "prefixed", True) else ""
        text = "".join(f"{prefix}{line}\n" for line in str(e).split("\n")) if str(e) else ""
        hint = getattr(e, "hint", "")
        sys.stderr.write(text + (hint + "\n" if hint else ""))
        return 1
    return system.run(pidfile=cfg.pidfile, exit_with_parent=cfg.exit_with_parent)
