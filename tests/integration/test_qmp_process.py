"""The QMP monitor of the real process, driven by QEMU's own client library (``qemu.qmp``) and by
raw sockets: several monitors at once, fd passing, events, HMP, misbehaving clients."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess

import pytest
from wire import TIMEOUT, QmpClient, accept, listen_unix, wait_path

BIN = shutil.which("emu-system-x86_64")


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def spawn(args: list[str], procs: list, **kw) -> subprocess.Popen:
    p = subprocess.Popen([BIN, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         **kw)
    procs.append(p)
    return p


def test_qemu_qmp_async_client_events_fd_passing_and_quit(tmp, procs):
    from qemu.qmp import QMPClient

    path = tmp / "m.sock"
    proc = spawn(["-M", "pc", "-m", "16M", "-nodefaults", "-S", "-display", "none", "-qmp",
                  f"unix:{path},server=on,wait=off"], procs)
    wait_path(path, proc)

    async def scenario() -> None:
        qmp = QMPClient("test")
        await qmp.connect(str(path))
        assert (await qmp.execute("query-status")) == {"status": "prelaunch", "running": False}
        with qmp.listener(("RESUME", "STOP", "RESET", "POWERDOWN")) as listener:
            await qmp.execute("cont")
            assert (await listener.get())["event"] == "RESUME"
            await qmp.execute("system_reset")
            ev = await listener.get()
            assert ev["event"] == "RESET" and ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            await qmp.execute("system_powerdown")
            assert (await listener.get())["event"] == "POWERDOWN"
            await qmp.execute("stop")
            assert (await listener.get())["event"] == "STOP"
        r, w = os.pipe()
        try:
            qmp.send_fd_scm(r)
            await qmp.execute("getfd", {"fdname": "mypipe"})
            await qmp.execute("closefd", {"fdname": "mypipe"})
            from qemu.qmp import ExecuteError

            with pytest.raises(ExecuteError) as ei:
                await qmp.execute("closefd", {"fdname": "mypipe"})
            assert ei.value.error.error.desc == "File descriptor named 'mypipe' not found"
            qmp.send_fd_scm(w)
            info = await qmp.execute("add-fd", {"opaque": "write end"})
            assert info["fdset-id"] == 0 and isinstance(info["fd"], int)
            sets = await qmp.execute("query-fdsets")
            assert sets == [{"fdset-id": 0, "fds": [{"fd": info["fd"], "opaque": "write end"}]}]
            await qmp.execute("remove-fd", {"fdset-id": 0})
            assert await qmp.execute("query-fdsets") == []
        finally:
            os.close(r)
            os.close(w)
        with qmp.listener("SHUTDOWN") as listener:
            await qmp.execute("quit")
            ev = await listener.get()
            assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
        try:
            await qmp.disconnect()
        except EOFError:
            pass  # the server closed first, as after QEMU's quit

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert proc.wait(TIMEOUT) == 0


def test_several_monitors_at_once_see_every_event(tmp, procs):
    """-qmp server, -chardev client (the test listens) and an inherited fd, in one process."""
    ours, theirs = socket.socketpair()
    with listen_unix(tmp / "client.sock") as listener:
        proc = spawn(["-M", "none", "-display", "none", "-S",
                      "-qmp", f"unix:{tmp}/srv.sock,server=on,wait=off",
                      "-chardev", f"socket,id=c1,path={tmp}/client.sock", "-mon", "chardev=c1,mode=control",
                      "-chardev", f"socket,id=c2,fd={theirs.fileno()}", "-mon", "chardev=c2,mode=control"],
                     procs, pass_fds=[theirs.fileno()])
        theirs.close()
        conn = accept(listener, proc)
    wait_path(tmp / "srv.sock", proc)
    mons = [QmpClient.connect(tmp / "srv.sock"), QmpClient(conn), QmpClient(ours)]
    for m in mons[1:]:
        m.greet()
    assert mons[2].cmd("cont") == {"return": {}}
    for m in mons:
        assert (m.events or [m.recv()])[0]["event"] == "RESUME"
    labels = {c["label"]: c for c in mons[0].cmd("query-chardev")["return"]}
    assert labels["compat_monitor0"]["filename"] == f"unix:{tmp}/srv.sock,server=on"
    assert labels["c1"]["filename"] == "unix:" and labels["c1"]["frontend-open"] is True
    assert mons[1].cmd("quit") == {"return": {}}
    assert proc.wait(TIMEOUT) == 0


def test_monitor_that_stops_reading_or_hangs_up_mid_message_stalls_nobody(tmp, procs):
    proc = spawn(["-M", "none", "-display", "none", "-qmp", f"unix:{tmp}/a.sock,server=on,wait=off",
                  "-qmp", f"unix:{tmp}/b.sock,server=on,wait=off"], procs)
    wait_path(tmp / "a.sock", proc)
    wait_path(tmp / "b.sock", proc)
    greedy = QmpClient.connect(tmp / "a.sock")
    good = QmpClient.connect(tmp / "b.sock")
    # 200 000 requests never read back: about 12 MB of replies pile up for `greedy`
    greedy.send(b'{"execute": "query-status"}' * 200_000)
    for _ in range(20):
        assert good.cmd("query-status")["return"]["status"] == "running"
    greedy.sock.close()
    # a client that hangs up in the middle of a message; the server socket takes the next one
    half = socket.socket(socket.AF_UNIX)
    half.connect(str(tmp / "a.sock"))
    half.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-sta')
    half.close()
    again = QmpClient.connect(tmp / "a.sock")
    assert again.cmd("query-status")["return"]["status"] == "running"
    assert good.cmd("quit") == {"return": {}}
    assert proc.wait(TIMEOUT) == 0


def test_add_fd_on_the_command_line_and_hmp(tmp, procs):
    r, w = os.pipe()
    try:
        proc = spawn(["-M", "none", "-m", "16M", "-display", "none", "-S", "-name", "vm1",
                      "-uuid", "550e8400-e29b-41d4-a716-446655440000",
                      "-add-fd", f"fd={r},set=3,opaque=ro", "-qmp", f"unix:{tmp}/m.sock,server=on,wait=off"],
                     procs, pass_fds=[r])
    finally:
        os.close(r)
    wait_path(tmp / "m.sock", proc)
    m = QmpClient.connect(tmp / "m.sock")
    assert m.cmd("query-fdsets") == {"return": [{"fdset-id": 3, "fds": [{"fd": r, "opaque": "ro"}]}]}
    assert m.cmd("query-name") == {"return": {"name": "vm1"}}
    assert m.cmd("query-uuid") == {"return": {"UUID": "550e8400-e29b-41d4-a716-446655440000"}}
    assert m.cmd("query-cpus-fast") == {"return": []}
    hmp = lambda line: m.cmd("human-monitor-command", {"command-line": line})["return"]  # noqa: E731
    assert hmp("info status") == "VM status: paused (prelaunch)\r\n"
    assert hmp("info mtree") == ("address-space: memory\r\n  0000000000000000-ffffffffffffffff (prio 0, i/o): system\r\n"
                                 "    0000000000000000-0000000000ffffff (prio 0, ram): ram\r\n\r\n"
                                 "address-space: I/O\r\n  0000000000000000-000000000000ffff (prio 0, i/o): io\r\n\r\n")
    assert hmp("xp /4xb 0x1000") == "0000000000001000: 0x00 0x00 0x00 0x00\r\n"
    assert hmp("xp /2xg 0xfffff8") == "0000000000fffff8: Cannot access memory\r\n"
    assert hmp("nosuch arg") == "unknown command: 'nosuch'\r\n"
    assert hmp("info nosuch") == "unknown command: 'info nosuch'\r\n"
    assert hmp("") == ""
    assert hmp("cont") == ""
    assert hmp("info status") == "VM status: running\r\n"
    proc.send_signal(signal.SIGTERM)
    ev = m.recv()
    assert ev["event"] == "SHUTDOWN" and ev["data"] == {"guest": False, "reason": "host-signal"}
    assert proc.wait(TIMEOUT) == 0


def test_qom_commands_on_pc(tmp, procs):
    proc = spawn(["-M", "pc", "-m", "16M", "-nodefaults", "-S", "-display", "none",
                  "-qmp", f"unix:{tmp}/m.sock,server=on,wait=off"], procs)
    wait_path(tmp / "m.sock", proc)
    m = QmpClient.connect(tmp / "m.sock")
    assert m.cmd("qom-get", {"path": "/machine", "property": "type"}) == {"return": "pc-i440fx-9.1-machine"}
    assert m.cmd("qom-get", {"path": "/machine", "property": "peripheral"}) == {"return": "/machine/peripheral"}
    assert m.cmd("qom-get", {"path": "/machine", "property": "nosuch"})["error"]["desc"] == \
        "Property 'pc-i440fx-9.1-machine.nosuch' not found"
    assert m.cmd("qom-set", {"path": "/machine", "property": "usb", "value": "yes"})["error"]["desc"] == \
        "Invalid parameter type for 'usb', expected: boolean"
    assert m.cmd("qom-set", {"path": "/machine", "property": "usb", "value": True}) == {"return": {}}
    assert m.cmd("qom-get", {"path": "/machine", "property": "usb"}) == {"return": True}
    assert m.cmd("qom-set", {"path": "/machine", "property": "type", "value": "x"})["error"]["desc"] == \
        "Property 'pc-i440fx-9.1-machine.type' is not writable"
    assert m.cmd("qom-set", {"path": "/machine/unattached/device[0]", "property": "socket-id", "value": 1})[
        "error"]["desc"] == ("Attempt to set property 'socket-id' on anonymous device (type 'qemu64-x86_64-cpu') "
                             "after it was realized")
    assert m.cmd("qom-list", {"path": "/nosuch"})["error"] == {"class": "DeviceNotFound",
                                                                "desc": "Device '/nosuch' not found"}
    assert m.cmd("qom-list", {"path": ""})["error"]["desc"] == "Path '' is ambiguous"
    names = {p["name"]: p["type"] for p in m.cmd("qom-list", {"path": "ioapic"})["return"]}
    assert names["type"] == "string" and names["realized"] == "bool"
    types = {t["name"]: t for t in m.cmd("qom-list-types", {"implements": "device"})["return"]}
    assert types["ioapic"] == {"name": "ioapic", "parent": "ioapic-common"} and "device" not in types
    cpus = m.cmd("query-cpus-fast")["return"]
    assert cpus[0]["qom-path"] == "/machine/unattached/device[0]" and cpus[0]["target"] == "x86_64"
    assert cpus[0]["props"] == {"core-id": 0, "thread-id": 0, "socket-id": 0}
    machines = {mi["name"]: mi for mi in m.cmd("query-machines")["return"]}
    assert machines["none"] == {"name": "none", "cpu-max": 1, "hotpluggable-cpus": False, "numa-mem-supported": False,
                                "deprecated": False, "default-ram-id": "ram", "acpi": False}
    assert machines["pc-i440fx-9.1"]["alias"] == "pc" and machines["pc-i440fx-9.1"]["is-default"] is True
    assert m.cmd("quit") == {"return": {}}
    assert proc.wait(TIMEOUT) == 0
