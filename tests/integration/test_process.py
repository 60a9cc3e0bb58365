"""The emulator as a process: launch forms used by libqtest and QEMUMachine, chardevs, signals,
exit status, logs, reconnects, backpressure and QEMU-style command-line errors."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from wire import TIMEOUT, QmpClient, QtestClient, accept, connect_unix, listen_unix, wait_path

BIN = shutil.which("emu-system-x86_64")
REAL_QEMU = shutil.which("qemu-system-x86_64")

_SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_emulators():
    """A failing test must not leave its emulator running."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def spawn(args: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen([BIN, *args], stdin=kw.pop("stdin", subprocess.DEVNULL),
                            stdout=kw.pop("stdout", subprocess.PIPE), stderr=subprocess.PIPE, **kw)
    _SPAWNED.append(proc)
    return proc


def finish(proc: subprocess.Popen, sig: int | None = signal.SIGTERM) -> tuple[int, str]:
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail("emulator did not exit")
    return proc.returncode, err.decode()


def libqtest_launch(sockdir: Path, extra: list[str]) -> tuple[subprocess.Popen, QtestClient, QmpClient]:
    """What libqtest does: listen on two sockets, let the emulator connect to both."""
    qs, ms = listen_unix(sockdir / "q.sock"), listen_unix(sockdir / "q.qmp")
    with qs, ms:
        proc = spawn(["-qtest", f"unix:{sockdir}/q.sock", "-qtest-log", "/dev/null", "-chardev",
                      f"socket,path={sockdir}/q.qmp,id=char0", "-mon", "chardev=char0,mode=control", "-display",
                      "none", "-audio", "none", "-run-with", "exit-with-parent=on", *extra, "-accel", "qtest"])
        return proc, QtestClient(accept(qs, proc)), QmpClient(accept(ms, proc))


def test_libqtest_launch_sequence_and_sigterm_exit_0(tmp):
    proc, qt, qmp = libqtest_launch(tmp, ["-M", "pc", "-m", "64M", "-nodefaults"])
    assert qt.cmd("endianness") == [b"OK little"]
    greeting = qmp.recv()
    assert greeting["QMP"]["version"]["qemu"] == {"micro": 0, "minor": 1, "major": 9}
    qmp.send(b'{ "execute": "qmp_capabilities" }\n')
    assert qmp.recv() == {"return": {}}
    assert qt.cmd("writeq 0x1000 0x0123456789abcdef") == [b"OK"]
    assert qt.cmd("readl 0x1001") == [b"OK 0x000000006789abcd"]
    assert qt.cmd("clock_step 1000") == [b"OK 1000"]
    rc, err = finish(proc)
    assert rc == 0
    assert "terminating on signal 15" in err


def test_qemumachine_argv_with_inherited_socketpairs():
    """QEMUMachine >= 8.0 / QEMUQtestMachine >= 8.2: already-connected socketpair fds."""
    mon_ours, mon_theirs = socket.socketpair()
    qt_ours, qt_theirs = socket.socketpair()
    fds = [mon_theirs.fileno(), qt_theirs.fileno()]
    proc = subprocess.Popen(
        [BIN, "-display", "none", "-vga", "none", "-chardev", f"socket,id=mon,fd={fds[0]}", "-mon",
         "chardev=mon,mode=control", "-chardev", f"socket,id=qtest,fd={fds[1]}", "-qtest", "chardev:qtest",
         "-accel", "qtest", "-machine", "none", "-nodefaults"],
        pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    mon_theirs.close()
    qt_theirs.close()
    qmp, qt = QmpClient(mon_ours), QtestClient(qt_ours)
    qmp.greet()
    assert qt.cmd("endianness") == [b"OK little"]
    assert qt.cmd("inb 0x70") == [b"OK 0x00ff"]
    qmp.send(b'{"execute": "quit"}')
    event = qmp.recv()  # QEMU sends SHUTDOWN before the quit reply
    assert event["event"] == "SHUTDOWN" and event["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert qmp.recv() == {"return": {}}
    with pytest.raises(EOFError):
        qmp.recv()
    assert proc.wait(timeout=TIMEOUT) == 0


def test_qmp_and_qemu_qmp_library_over_a_server_socket(tmp):
    from qemu.qmp.legacy import QEMUMonitorProtocol

    path = tmp / "m.sock"
    proc = spawn(["-M", "none", "-display", "none", "-S", "-qmp", f"unix:{path},server=on,wait=off"])
    wait_path(path, proc)
    mon = QEMUMonitorProtocol(str(path))
    mon.connect()
    assert mon.cmd_raw("query-status") == {"return": {"status": "prelaunch", "running": False}}
    assert mon.cmd_raw("cont") == {"return": {}}
    assert mon.pull_event(wait=True)["event"] == "RESUME"
    assert mon.cmd_raw("stop") == {"return": {}}
    assert mon.pull_event(wait=True)["event"] == "STOP"
    assert mon.cmd_raw("quit") == {"return": {}}
    try:
        mon.close()
    except EOFError:
        pass  # the server closed first: QEMUMachine tolerates this after quit, and so do we
    assert proc.wait(timeout=TIMEOUT) == 0


def test_qtest_server_socket_reconnect_and_second_client_waits(tmp):
    path = tmp / "s.sock"
    proc = spawn(["-M", "pc", "-m", "16M", "-nodefaults", "-S", "-display", "none", "-qtest",
                  f"unix:{path},server=on,wait=off", "-qtest-log", str(tmp / "log")])
    c1 = QtestClient(connect_unix(path, proc))
    assert c1.cmd("irq_intercept_in ioapic") == [b"OK"]
    c2 = socket.socket(socket.AF_UNIX)
    c2.connect(str(path))  # sits in the backlog
    c2.sendall(b"endianness\n")
    c2.settimeout(0.2)
    with pytest.raises(TimeoutError):
        c2.recv(100)
    c1.close()
    l2 = QtestClient(c2)
    assert l2.reply() == [b"OK little"]  # answered once the first client left
    assert l2.cmd("irq_intercept_in /machine/i440fx") == [b"FAIL IRQ intercept already enabled"]
    l2.close()
    rc, _ = finish(proc)
    assert rc == 0
    log = (tmp / "log").read_text().splitlines()
    assert log[0] == "[I 0.000000] OPENED" and log.count("[I 0.000000] OPENED") == 2
    assert sum(1 for line in log if line.endswith("] CLOSED")) == 2  # once per client, none at exit


def test_qtest_stdio_keeps_running_after_eof():
    proc = spawn(["-M", "pc", "-m", "16M", "-nodefaults", "-S", "-display", "none", "-qtest", "stdio"],
                 stdin=subprocess.PIPE)
    proc.stdin.write(b"endianness\nreadb 0x0\nfoo\n")
    proc.stdin.close()
    proc.stdin = None  # so communicate() does not flush it
    lines = [proc.stdout.readline() for _ in range(3)]
    assert lines == [b"OK little\n", b"OK 0x0000000000000000\n", b"FAIL Unknown command 'foo'\n"]
    assert proc.poll() is None  # EOF never stops QEMU
    rc, err = finish(proc)
    assert rc == 0
    assert "[I 0.000000] OPENED" in err and "] CLOSED" in err  # default log goes to stderr


def test_object_qtest_form_and_file_chardev_input(tmp):
    script = tmp / "repro.qtest"
    script.write_bytes(b"writel 0x100 0xcafe\nreadl 0x100\n")
    out = tmp / "out"
    proc = spawn(["-M", "pc", "-m", "16M", "-nodefaults", "-S", "-display", "none", "-chardev",
                  f"file,id=repro,path={out},input-path={script}", "-object", "qtest,id=qt0,chardev=repro,log=none"])
    deadline = time.monotonic() + TIMEOUT
    while not out.exists() or out.read_bytes().count(b"\n") < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    rc, _ = finish(proc)
    assert rc == 0
    assert out.read_bytes() == b"OK\nOK 0x000000000000cafe\n"


def test_qtest_over_tcp_client():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        proc = spawn(["-M", "none", "-display", "none", "-qtest", f"tcp:127.0.0.1:{port}", "-qtest-log", "none"])
        conn = accept(srv, proc)
    assert QtestClient(conn).cmd("endianness") == [b"OK little"]
    rc, _ = finish(proc)
    assert rc == 0


def test_client_that_stops_reading_does_not_stall_qmp(tmp):
    """§13 row 17: QEMU's main loop blocks writing to a non-reading qtest client; ours does not."""
    proc, qt, qmp = libqtest_launch(tmp, ["-M", "pc", "-m", "16M", "-nodefaults", "-S"])
    qmp.greet()
    n = 400_000
    payload = b"readb 0x1000\n" * n
    sender = threading.Thread(target=qt.send, args=(payload,))
    sender.start()
    # the qtest client reads nothing; the monitor must still answer
    assert qmp.cmd("query-status")["return"]["status"] == "prelaunch"
    got = 0
    while got < n:
        qt.line()
        got += 1
    sender.join(TIMEOUT)
    assert qt.cmd("endianness") == [b"OK little"]
    rc, _ = finish(proc)
    assert rc == 0


def test_connect_failure_matches_qemu(tmp):
    proc = spawn(["-M", "none", "-display", "none", "-qtest", f"unix:{tmp}/nonexist.sock"])
    rc, err = finish(proc, None)
    assert rc == 1
    assert err == (f"emu-system-x86_64: Failed to connect to '{tmp}/nonexist.sock': No such file or directory\n"
                   f"emu-system-x86_64: Failed to initialize device for qtest: \"unix:{tmp}/nonexist.sock\"\n")


@pytest.mark.parametrize("args,message", [
    (["-foo"], "emu-system-x86_64: -foo: invalid option\n"),
    (["-m"], "emu-system-x86_64: -m: requires an argument\n"),
    (["-m", "foo"], "emu-system-x86_64: -m foo: Parameter 'size' expects a non-negative number below 2^64\n"
                    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                    "and exabytes, respectively.\n"),
    (["-M", "foo"], "emu-system-x86_64: unsupported machine type\nUse -machine help to list supported machines\n"),
    (["-M", "pc,foo=bar"], "emu-system-x86_64: Property 'pc-i440fx-9.1-machine.foo' not found\n"),
    (["-uuid", "xyz"], "emu-system-x86_64: -uuid xyz: failed to parse UUID string: wrong format\n"),
    (["-chardev", "foo,id=x"], "emu-system-x86_64: -chardev foo,id=x: 'foo' is not a valid char driver name\n"),
    (["-chardev", "socket"], "emu-system-x86_64: -chardev socket: chardev: no id specified\n"),
    (["-mon", "chardev=nope,mode=control"], "emu-system-x86_64: -mon chardev=nope,mode=control: chardev \"nope\" not found\n"),
    (["-accel", "foo"], "emu-system-x86_64: -accel foo: invalid accelerator foo\n"),
    (["-object", "foo,id=x"], "emu-system-x86_64: -object foo,id=x: Parameter 'qom-type' does not accept value 'foo'\n"),
    (["-add-fd", "fd=99,set=1"], "emu-system-x86_64: -add-fd fd=99,set=1: fd is not valid or already in use\n"),
    (["-add-fd", "fd=x,set=1"], "emu-system-x86_64: -add-fd fd=x,set=1: Parameter 'fd' expects a number\n"),
    (["-add-fd", "fd=-1,set=1"], "emu-system-x86_64: -add-fd fd=-1,set=1: fd option is required and must be non-negative\n"),
    (["-add-fd", "fd=1,set=1"], "emu-system-x86_64: -add-fd fd=1,set=1: fd cannot be a standard I/O stream\n"),
    (["-drive", "file=/nonexistent,format=raw"],
     "emu-system-x86_64: -drive file=/nonexistent,format=raw: Could not open '/nonexistent': No such file or directory\n"),
    (["-drive", "file=/etc/hostname,format=qcow3"],
     "emu-system-x86_64: -drive file=/etc/hostname,format=qcow3: Unknown driver 'qcow3'\n"),
    (["-drive", "file=/etc/hostname,format=raw,bogus=1"],
     "emu-system-x86_64: -drive file=/etc/hostname,format=raw,bogus=1: Block format 'raw' does not support the option 'bogus'\n"),
    (["-drive", "if=bogus,file=/etc/hostname"],
     "emu-system-x86_64: -drive if=bogus,file=/etc/hostname: unsupported bus type 'bogus'\n"),
    # what this emulator cannot do: the boot disk's ATA registers are not modelled
    (["-drive", "file=/etc/hostname,format=raw", "-drive", "file=/etc/hostname,format=raw"],
     "emu-system-x86_64: an IDE disk at index 1 is not supported by this emulator (only the boot disk, at index 0)\n"),
    (["-drive", "file=/etc/hostname,format=raw", "-drive", "if=ide,index=1,media=cdrom"],
     "emu-system-x86_64: a CD-ROM drive on the primary IDE bus beside the boot disk is not supported by this "
     "emulator\n"),
    (["-drive", "if=ide,index=1"], "emu-system-x86_64: Device needs media, but drive is empty\n"),
    (["-device", "ide-hd"], "emu-system-x86_64: -device ide-hd: No drive specified\n"),
    (["-device", "ide-hd,drive=d9"], "emu-system-x86_64: -device ide-hd,drive=d9: Property 'ide-hd.drive' can't find value 'd9'\n"),
    (["-drive", "if=none,id=d0,file=/etc/hostname,format=raw", "-device", "ide-hd,drive=d0,bogus=1"],
     "emu-system-x86_64: -device ide-hd,drive=d0,bogus=1: Property 'ide-hd.bogus' not found\n"),
    (["-device", "foo"], "emu-system-x86_64: -device foo: 'foo' is not a valid device model name\n"),
    (["-bios", "/nonexistent/bios.bin"], "qemu: could not load PC BIOS '/nonexistent/bios.bin'\n"),
    (["-serial", "foo"], "emu-system-x86_64: -serial foo: 'foo' is not a valid char driver name\n"),
])
def test_command_line_errors_use_qemu_wording(args, message):
    rc, err = finish(spawn(["-display", "none", *args]), None)
    assert (rc, err) == (1, message)


def test_serial_chardevs_are_opened_at_start(tmp):
    """libqtest's qtest_init_with_serial waits for the emulator to connect its -serial socket."""
    with listen_unix(tmp / "ser.sock") as listener:
        proc, qt, _ = libqtest_launch(tmp, ["-M", "none", "-chardev", f"socket,id=s0,path={tmp}/ser.sock",
                                            "-serial", "chardev:s0", "-serial", f"file:{tmp}/ser2.out"])
        accept(listener, proc).close()
    assert (tmp / "ser2.out").exists()
    assert qt.cmd("endianness") == [b"OK little"]
    rc, _ = finish(proc)
    assert rc == 0


def test_version_and_machine_help():
    out = subprocess.run([BIN, "-version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0 and out.stdout.startswith("QEMU emulator version 9.1.0")
    out = subprocess.run([BIN, "-M", "help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0
    assert "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-9.1)" in out.stdout
    assert "\nnone                 empty machine\n" in out.stdout


def test_exit_with_parent():
    """-run-with exit-with-parent=on: the emulator exits when the process that started it dies."""
    code = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([{BIN!r}, '-M', 'none', '-display', 'none', '-run-with', 'exit-with-parent=on'],"
        " stderr=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + TIMEOUT
    while True:  # nothing to wait on: the emulator is not our child
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # exited; its new parent has not reaped it yet
        except (FileNotFoundError, ProcessLookupError):
            break
        assert time.monotonic() < deadline, "emulator outlived its parent"
        time.sleep(0.02)


def test_bios_option_maps_the_image_below_4g(tmp):
    image = bytearray(64 * 1024)
    image[-16:-11] = b"\xea\x00\x01\x00\xf0"
    (tmp / "bios.bin").write_bytes(bytes(image))
    proc, qt, _ = libqtest_launch(tmp, ["-M", "pc", "-bios", str(tmp / "bios.bin")])
    assert qt.cmd("readl 0xfffffff0") == [b"OK 0x00000000000100ea"]
    assert qt.cmd("readl 0xffff0") == [b"OK 0x00000000000100ea"]  # the ISA BIOS alias shows the same bytes
    rc, _ = finish(proc)
    assert rc == 0


def test_bios_name_is_found_through_L_directories(tmp):
    """``-L DIR -bios NAME`` reads DIR/NAME, as qemu_find_file does; ``-L help`` lists the -L
    directories before the built-in firmware path."""
    image = bytearray(64 * 1024)
    image[-16:-11] = b"\xea\x00\x02\x00\xf0"
    (tmp / "fw").mkdir()
    (tmp / "fw" / "mine.bin").write_bytes(bytes(image))
    proc, qt, _ = libqtest_launch(tmp, ["-M", "pc", "-L", str(tmp / "empty"), "-L", str(tmp / "fw"),
                                        "-bios", "mine.bin"])
    assert qt.cmd("readl 0xfffffff0") == [b"OK 0x00000000000200ea"]
    rc, _ = finish(proc)
    assert rc == 0
    out = subprocess.run([BIN, "-L", str(tmp / "fw"), "-L", "help", "-L", str(tmp / "fw")],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert (out.returncode, out.stdout, out.stderr) == (
        0, f"{tmp}/fw\n/usr/share/qemu\n/usr/share/seabios\n/usr/lib/ipxe/qemu\n", "")


@pytest.mark.skipif(REAL_QEMU is None, reason="Debian's qemu-system-x86_64 is not installed")
def test_L_help_lists_the_directories_qemu_lists(tmp):
    """QEMU prints its built-in directories relative to its executable (/usr/bin/../share/qemu):
    the same directories, which we name by their absolute paths."""
    args = ["-L", str(tmp / "a"), "-L", str(tmp / "b"), "-L", str(tmp / "a"), "-L", "?"]
    theirs = subprocess.run([REAL_QEMU, *args], capture_output=True, text=True, timeout=TIMEOUT)
    ours = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert theirs.returncode == ours.returncode == 0
    assert ours.stdout.splitlines() == [os.path.normpath(line) for line in theirs.stdout.splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_other_termination_signals_also_exit_0(tmp, sig):
    proc, qt, _ = libqtest_launch(tmp, ["-M", "none"])
    assert qt.cmd("endianness") == [b"OK little"]
    rc, err = finish(proc, sig)
    assert rc == 0 and f"terminating on signal {int(sig)}" in err


def test_missing_vcpu_backend_is_a_one_line_error(tmp_path):
    """Without unicorn (a declared dependency) TCG is unavailable: one QEMU-style line, exit 1,
    no traceback. The import is blocked in the child only."""
    disk = tmp_path / "boot.img"
    disk.write_bytes(bytes(510) + b"\x55\xaa")
    code = ("import sys; sys.modules['unicorn'] = None; sys.argv[0] = 'emu-system-x86_64'; "
            "from emu.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "-M", "pc", "-display", "none",
                           "-drive", f"file={disk},format=raw"], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert proc.stderr == ("emu-system-x86_64: -accel tcg: invalid accelerator tcg "
                           "(the vCPU backend, Python package 'unicorn', is not installed)\n")


@pytest.mark.parametrize("args, warning", [
    (["-smp", "2"], "-smp 2: one vCPU is emulated"),
    (["-cpu", "max"], "-cpu max: CPU models are not modelled: the vCPU is Unicorn's x86-64"),
    (["-netdev", "user,id=n0"], "-netdev user,id=n0: there are no network devices"),
    (["-icount", "shift=auto"], "-icount shift=auto: instruction counting is not modelled: the clock follows host time"),
])
def test_options_accepted_but_not_modelled_warn(args, warning):
    proc = subprocess.run([BIN, "-M", "none", "-display", "none", *args, "-version"], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0  # -version answers after parsing: no warning yet
    proc = subprocess.Popen([BIN, "-M", "none", "-display", "none", "-qmp", "stdio", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _SPAWNED.append(proc)
    out, err = proc.communicate('{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n', timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert err == f"emu-system-x86_64: warning: {warning}\n"


@pytest.mark.parametrize("args", [["-smp", "1"], ["-smp", "cpus=1"], ["-no-hpet"], ["-nographic"], ["-snapshot"]])
def test_options_that_are_already_true_here_are_silent(args):
    proc = subprocess.Popen([BIN, "-M", "none", "-display", "none", "-qmp", "stdio", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _SPAWNED.append(proc)
    out, err = proc.communicate('{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n', timeout=TIMEOUT)
    assert (proc.returncode, err) == (0, "")


@pytest.mark.parametrize("option, value", [("-kernel", "/boot/vmlinuz"), ("-initrd", "/boot/initrd"),
                                           ("-append", "console=ttyS0"), ("-loadvm", "snap")])
def test_options_that_cannot_be_honoured_are_refused(option, value):
    proc = subprocess.run([BIN, "-M", "none", "-display", "none", option, value], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"emu-system-x86_64: {option} {value}: ")
    assert "not supported by this emulator" in proc.stderr


def test_no_reboot_turns_a_guest_reset_into_a_shutdown():
    """-no-reboot: the guest's reset (i8042 pulse) is QEMU's guest-reset shutdown; the process exits 0."""
    from qtest.machine import QTestMachine

    with QTestMachine(BIN, ["-M", "pc", "-no-reboot"]) as m:
        m.qtest.outb(0x64, 0xFE)
        assert m.qmp.wait_event("SHUTDOWN", timeout=TIMEOUT)["data"] == {"guest": True, "reason": "guest-reset"}
        assert m.wait(timeout=TIMEOUT) == 0


def test_no_shutdown_stops_the_vm_instead_of_exiting():
    """-no-reboot -no-shutdown: the guest-reset shutdown stops the VM in the shutdown state; quit
    still ends the process."""
    from qtest.machine import QTestMachine

    with QTestMachine(BIN, ["-M", "pc", "-no-reboot", "-no-shutdown"]) as m:
        m.qtest.outb(0x64, 0xFE)
        assert m.qmp.wait_event("SHUTDOWN", timeout=TIMEOUT)["data"] == {"guest": True, "reason": "guest-reset"}
        assert m.qmp.wait_event("STOP", timeout=TIMEOUT)["event"] == "STOP"
        assert m.qmp.cmd("query-status") == {"status": "shutdown", "running": False}


def test_without_no_reboot_a_guest_reset_resets():
    from qtest.machine import QTestMachine

    with QTestMachine(BIN, ["-M", "pc"]) as m:
        m.qtest.outb(0x64, 0xFE)
        assert m.qmp.wait_event("RESET", timeout=TIMEOUT)["data"] == {"guest": True, "reason": "guest-reset"}
        assert m.qmp.cmd("query-status")["status"] == "running"
