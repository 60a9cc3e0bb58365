"""Migration transports between two emulator processes: ``file:/dev/fdset/N`` with ``add-fd``
(QEMU's /migration/precopy/file/offset/fdset), ``channels`` against the equivalent ``uri`` on
every transport (tcp, unix, exec, file, file with offset, fd), and the ``detach`` / ``resume``
arguments of ``migrate``.

The machines are ``-M none -m 16M`` with the qtest accelerator (no vCPU): the source's RAM is
written over qtest, so a migration takes a fraction of a second. Every test works in its own
temporary directory; tcp listeners use port 0 and the port the destination reports.
"""
from __future__ import annotations

import hashlib
import os
import random
import shlex
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtest.machine import QTestMachine, short_tempdir

BIN = shutil.which("emu-system-x86_64")

RAM = 16 << 20
PAGE = 4096
NONE16 = ["-M", "none", "-m", "16M"]
QEVM = b"QEVM\x00\x00\x00\x03"  # QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION (big-endian u32 each)
O_CREAT_WRONLY = os.O_CREAT | os.O_WRONLY  # what file_start_outgoing_migration opens with (9.1)
# query-migrate "ram" members that do not depend on timing (mbps, pages-per-second do)
STABLE_RAM = ("total", "duplicate", "normal", "normal-bytes", "page-size", "transferred",
              "remaining", "precopy-bytes", "downtime-bytes", "postcopy-bytes", "multifd-bytes",
              "dirty-sync-count", "postcopy-requests", "dirty-pages-rate", "dirty-sync-missed-zero-copy")


def events_on(m: QTestMachine) -> None:
    m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])


def statuses(m: QTestMachine, until: str = "completed") -> list[str]:
    """MIGRATION statuses until ``until`` (or failed/cancelled): waits on events, no polling."""
    seen: list[str] = []
    while not seen or seen[-1] not in (until, "failed", "cancelled"):
        seen.append(m.qmp.wait_event("MIGRATION", timeout=30)["data"]["status"])
    return seen


def events_until_done(m: QTestMachine) -> list[tuple[str, Any]]:
    """Every event (without its timestamp) up to the MIGRATION event that ends the migration:
    MIGRATION statuses, MIGRATION_PASS, STOP, RESUME... in arrival order."""
    seen: list[tuple[str, Any]] = []
    while not seen or seen[-1] not in [("MIGRATION", {"status": s}) for s in ("completed", "failed", "cancelled")]:
        ev = m.qmp.wait_event(None, timeout=30)
        seen.append((ev["event"], ev.get("data")))
    return seen


def error_desc(m: QTestMachine, name: str, args: dict[str, Any] | None = None) -> str:
    """Runs a command that must fail; returns the error's desc (compared whole by the tests)."""
    reply = m.qmp.cmd_raw(name, args or {})
    assert "error" in reply and "return" not in reply, reply
    return reply["error"]["desc"]


def main_channel(addr: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"channel-type": "main", "addr": addr}]


def fill_source(m: QTestMachine, seed: int) -> bytes:
    """Deterministic RAM contents for ``seed``: text, a memset run, random blocks (some crossing
    page boundaries) and the last page. Returns the source's whole RAM as read back."""
    rng = random.Random(seed)
    m.qtest.memwrite(0x1000, b"uri equals channels %d" % seed)
    m.qtest.memset(0x200000, 0xAB, 3 * PAGE)
    for _ in range(6):
        n = rng.randrange(1, 3 * PAGE)
        m.qtest.memwrite(rng.randrange(0, RAM - n), rng.randbytes(n))
    m.qtest.memwrite(RAM - PAGE, rng.randbytes(PAGE))
    return m.qtest.bufread(0, RAM)


def wait_for_stream(path: Path, size: int, timeout: float = 30) -> None:
    """Waits until ``path`` holds ``size`` bytes. ``completed`` does not mean that the child of an
    ``exec:`` migration has written everything out: as in QEMU, the source reaches completed when
    the stream is in the pipe, and reaps the child only in the cleanup that follows. (QEMU's
    analyze-script test reads such a file right after completed and relies on luck.)"""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= size):
        assert time.monotonic() < deadline, f"{path} did not reach {size} bytes"
        time.sleep(0.001)  # polls a condition, as QEMU's wait_for_serial does


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fdset_add(m: QTestMachine, path: Path, flags: int, fdset_id: int = 1) -> int:
    """``add-fd`` with a fresh descriptor for ``path`` (passed with SCM_RIGHTS, then closed here,
    as QEMU's fdset_add_fds does); returns the descriptor number inside the emulator."""
    fd = os.open(path, flags, 0o600)
    try:
        info = m.qmp.cmd_fds("add-fd", [fd], **{"fdset-id": fdset_id})
    finally:
        os.close(fd)
    assert info["fdset-id"] == fdset_id and isinstance(info["fd"], int)
    return info["fd"]


# ------------------------------------------------------------------------------------------
# /migration/precopy/file/offset/fdset


def test_precopy_file_offset_fdset(tmp):
    """QEMU's /migration/precopy/file/offset/fdset: the file is pre-filled with 4 KiB of 'X'
    (file_dirty_offset_region), an O_WRONLY descriptor goes into fd set 1 on the source and an
    O_RDONLY one on the destination (file_offset_fdset_start_hook); the stopped source saves to
    ``file:/dev/fdset/1,offset=4096`` and, once it completed, the destination loads from the same
    URI. The X region is intact, the stream starts with QEVM at the offset, the destination's RAM
    is the source's, the fd sets are still there (the migration used a dup) until ``remove-fd``."""
    path = tmp / "migfile"
    path.write_bytes(b"X" * 4096)
    uri = "file:/dev/fdset/1,offset=4096"
    with QTestMachine(BIN, [*NONE16, "-S"]) as src, \
            QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        expected = fill_source(src, 1)
        src_fd = fdset_add(src, path, os.O_WRONLY)
        dst_fd = fdset_add(dst, path, os.O_RDONLY)
        assert src.qmp.cmd("query-fdsets") == [{"fdset-id": 1, "fds": [{"fd": src_fd}]}]
        assert dst.qmp.cmd("query-fdsets") == [{"fdset-id": 1, "fds": [{"fd": dst_fd}]}]
        events_on(src)
        events_on(dst)

        src.qmp.cmd("migrate", uri=uri)
        assert statuses(src) == ["setup", "active", "completed"]
        info = src.qmp.cmd("query-migrate")
        assert info["status"] == "completed" and info["ram"]["total"] == RAM
        assert info["ram"]["normal"] + info["ram"]["duplicate"] == RAM // PAGE
        data = path.read_bytes()
        assert data[:4096] == b"X" * 4096  # file_check_offset_region
        assert data[4096:4104] == QEVM
        assert len(data) - 4096 == info["ram"]["transferred"]  # the whole stream, after the offset

        dst.qmp.cmd("migrate-incoming", uri=uri)
        assert statuses(dst) == ["setup", "active", "completed"]
        assert dst.qmp.cmd("query-migrate") == {"status": "completed"}
        assert dst.qmp.cmd("query-status") == {"status": "prelaunch", "running": False}
        dst.qmp.cmd("cont")
        assert dst.qmp.wait_event("RESUME", timeout=30)["event"] == "RESUME"
        assert dst.qmp.cmd("query-status") == {"status": "running", "running": True}
        assert path.read_bytes() == data  # loading does not write
        assert dst.qtest.memread(0x1000, 21) == b"uri equals channels 1"
        assert dst.qtest.memread(0x200000, 3 * PAGE) == b"\xab" * 3 * PAGE
        assert sha(dst.qtest.bufread(0, RAM)) == sha(expected)

        # the members belong to the client until remove-fd (QEMU 9.1, "monitor: Stop removing
        # non-duplicated fds"); then no set is left (multifd_mapped_ram_fdset_end's check)
        for m, fd in ((src, src_fd), (dst, dst_fd)):
            assert m.qmp.cmd("query-fdsets") == [{"fdset-id": 1, "fds": [{"fd": fd}]}]
            m.qmp.cmd("remove-fd", **{"fdset-id": 1})
            assert m.qmp.cmd("query-fdsets") == []
            assert error_desc(m, "remove-fd", {"fdset-id": 1}) == "File descriptor named 'fdset-id:1' not found"


def test_file_fdset_that_does_not_exist_fails_the_migration(tmp):
    """``/dev/fdset/2`` with only set 1 present: qemu_open's error is migrate's reply and the
    source's error-desc (setup → failed), and the VM keeps running."""
    with QTestMachine(BIN, NONE16) as src:
        fdset_add(src, tmp / "migfile", os.O_CREAT | os.O_WRONLY)
        events_on(src)
        assert error_desc(src, "migrate", {"uri": "file:/dev/fdset/2,offset=4096"}) == \
            "Failed to find fdset /dev/fdset/2"
        assert statuses(src, until="failed") == ["setup", "failed"]
        assert src.qmp.cmd("query-migrate") == {"status": "failed",
                                                "error-desc": "Failed to find fdset /dev/fdset/2"}
        assert src.qmp.cmd("query-status") == {"status": "running", "running": True}


def test_file_fdset_member_needs_the_same_access_mode(tmp):
    """QEMU picks an fd-set member whose access mode equals the open's (O_RDWR does not match
    O_WRONLY; QEMU 7.2 refuses the same way for a chardev ``file`` on /dev/fdset/1). The source
    opens O_CREAT|O_WRONLY (0x41), so a set holding only an O_RDWR descriptor fails the
    migration with monitor_fdset_dup_fd_add's message, and the file stays untouched."""
    path = tmp / "migfile"
    path.write_bytes(b"X" * 4096)
    with QTestMachine(BIN, [*NONE16, "-S"]) as src:
        fdset_add(src, path, os.O_RDWR)
        message = f"Failed to find file descriptor with matching flags=0x{O_CREAT_WRONLY:x}"
        assert error_desc(src, "migrate", {"uri": "file:/dev/fdset/1,offset=4096"}) == message
        assert src.qmp.cmd("query-migrate") == {"status": "failed", "error-desc": message}
    assert path.read_bytes() == b"X" * 4096


# ------------------------------------------------------------------------------------------
# channels == uri, for every transport


@dataclass(frozen=True)
class Route:
    """One transport and the spelling of its address.

    ``kind``: tcp, unix, exec, file, file-offset or fd. ``host`` (tcp), ``name`` (the unix
    socket's file name) and ``offset`` / ``offset_text`` (file-offset: the channel's integer and
    the uri's ``offset=`` text) vary the spelling; both forms must mean the same address."""

    kind: str
    host: str = "127.0.0.1"
    name: str = "m.sock"
    offset: int = 4096
    offset_text: str = "4096"

    @property
    def sequential(self) -> bool:
        """exec and file: the source saves first, then the destination loads (test_file_common)."""
        return self.kind in ("exec", "file", "file-offset")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def incoming_args(route: Route, how: str, d: Path) -> dict[str, Any]:
    """``migrate-incoming`` arguments on the destination, ``how`` = uri or channels."""
    uri, addr = _forms(route, d, incoming=True)
    return {"uri": uri} if how == "uri" else {"channels": main_channel(addr)}


def outgoing_args(route: Route, how: str, d: Path, dst: QTestMachine) -> dict[str, Any]:
    """``migrate`` arguments on the source; tcp connects to the port the destination reports."""
    port = None
    if route.kind == "tcp":
        (first, *rest) = dst.qmp.cmd("query-migrate")["socket-address"]
        assert first["type"] == "inet" and int(first["port"]) > 0
        port = first["port"]
        host = route.host if not rest else first["host"]  # as migrate_get_connect_uri: the first
        route = Route("tcp", host=host)
    uri, addr = _forms(route, d, incoming=False, port=port)
    return {"uri": uri} if how == "uri" else {"channels": main_channel(addr)}


def _forms(route: Route, d: Path, *, incoming: bool, port: str | None = None) -> tuple[str, dict[str, Any]]:
    """The same address as a uri and as a MigrationAddress."""
    if route.kind == "tcp":
        p = "0" if incoming else port
        return (f"tcp:{_url_host(route.host)}:{p}",
                {"transport": "socket", "type": "inet", "host": route.host, "port": p})
    if route.kind == "unix":
        path = str(d / route.name)
        return f"unix:{path}", {"transport": "socket", "type": "unix", "path": path}
    if route.kind == "exec":
        stream = shlex.quote(str(d / "stream"))
        cmd = f"cat {stream}" if incoming else f"cat > {stream}"
        return f"exec:{cmd}", {"transport": "exec", "args": ["/bin/sh", "-c", cmd]}
    if route.kind == "file":
        path = str(d / "migfile")
        return f"file:{path}", {"transport": "file", "filename": path, "offset": 0}
    if route.kind == "file-offset":
        path = str(d / "migfile")
        return (f"file:{path},offset={route.offset_text}",
                {"transport": "file", "filename": path, "offset": route.offset})
    if route.kind == "fd":
        return "fd:fd-mig", {"transport": "socket", "type": "fd", "str": "fd-mig"}
    raise AssertionError(route.kind)


@dataclass
class Outcome:
    ram_sha: str
    src_events: list[tuple[str, Any]]
    dst_events: list[tuple[str, Any]]
    src_info: dict[str, Any]  # status and the stable ram counters
    dst_info: dict[str, Any]
    dst_listening: dict[str, Any] | None  # query-migrate right after migrate-incoming (port masked)
    src_status: dict[str, Any]
    dst_status: dict[str, Any]
    artifact: bytes | None  # the stream file (exec, file, file-offset)


def _mask_ports(info: dict[str, Any]) -> dict[str, Any]:
    out = dict(info)
    if "socket-address" in out:
        out["socket-address"] = [{**a, "port": "PORT"} if a.get("type") == "inet" else a
                                 for a in out["socket-address"]]
    return out


def migrate_once(d: Path, route: Route, how: str, *, seed: int, stopped: bool) -> Outcome:
    """One migration of the ``seed`` memory from a fresh source (``-S`` when ``stopped``) to a
    fresh ``-incoming defer`` destination, addressed by ``how`` (uri or channels) on both sides."""
    d.mkdir()
    marker = b""
    if route.kind == "file-offset":
        marker = bytes(i & 0xFF for i in range(route.offset))  # bytes the source must not touch
        (d / "migfile").write_bytes(marker)
    with QTestMachine(BIN, [*NONE16, *(["-S"] if stopped else [])]) as src, \
            QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        expected = fill_source(src, seed)
        events_on(src)
        events_on(dst)
        if route.kind == "fd":  # one end of a socket pair on each side (migrate_precopy_fd)
            pair = socket.socketpair()
            try:
                src.qmp.cmd_fds("getfd", [pair[0].fileno()], fdname="fd-mig")
                dst.qmp.cmd_fds("getfd", [pair[1].fileno()], fdname="fd-mig")
            finally:
                for s in pair:
                    s.close()
        listening = None
        if route.sequential:
            src.qmp.cmd("migrate", **outgoing_args(route, how, d, dst))
            src_events = events_until_done(src)
            if route.kind == "exec":
                wait_for_stream(d / "stream", src.qmp.cmd("query-migrate")["ram"]["transferred"])
            dst.qmp.cmd("migrate-incoming", **incoming_args(route, how, d))
        else:
            dst.qmp.cmd("migrate-incoming", **incoming_args(route, how, d))
            if route.kind != "fd":  # (fd: see test_fd_destination_waits_for_the_stream)
                listening = _mask_ports(dst.qmp.cmd("query-migrate"))
            src.qmp.cmd("migrate", **outgoing_args(route, how, d, dst))
            src_events = events_until_done(src)
        dst_events = events_until_done(dst)
        for m, evs in ((src, src_events), (dst, dst_events)):
            assert evs[-1] == ("MIGRATION", {"status": "completed"}), (m.qmp.cmd("query-migrate"), m.stderr_text())
        src_info = src.qmp.cmd("query-migrate")
        artifact = None
        if route.kind in ("file", "file-offset"):
            artifact = (d / "migfile").read_bytes()
            assert artifact[:len(marker)] == marker
            assert artifact[len(marker):len(marker) + 8] == QEVM
        elif route.kind == "exec":
            artifact = (d / "stream").read_bytes()
            assert artifact[:8] == QEVM
        ram = dst.qtest.bufread(0, RAM)
        assert sha(ram) == sha(expected), "the destination's RAM differs from the source's"
        if route.kind == "fd":
            for m in (src, dst):  # the migration consumed the named fd
                assert error_desc(m, "closefd", {"fdname": "fd-mig"}) == "File descriptor named 'fd-mig' not found"
        return Outcome(
            ram_sha=sha(ram),
            src_events=src_events,
            dst_events=dst_events,
            src_info={"status": src_info["status"], **{k: src_info["ram"][k] for k in STABLE_RAM}},
            dst_info=dst.qmp.cmd("query-migrate"),
            dst_listening=listening,
            src_status=src.qmp.cmd("query-status"),
            dst_status=dst.qmp.cmd("query-status"),
            artifact=artifact,
        )


def check_uri_equals_channels(base: Path, route: Route, *, seed: int, stopped: bool) -> Outcome:
    by_uri = migrate_once(base / "uri", route, "uri", seed=seed, stopped=stopped)
    by_channels = migrate_once(base / "channels", route, "channels", seed=seed, stopped=stopped)
    if route.kind == "unix":  # each run listens in its own directory
        for out, how in ((by_uri, "uri"), (by_channels, "channels")):
            assert out.dst_listening == {"status": "setup", "socket-address": [
                {"type": "unix", "path": str(base / how / route.name)}]}
            out.dst_listening = None
    assert by_uri == by_channels
    out = by_uri
    # and what both are: a completed stop-and-copy of the whole RAM
    assert out.src_info["status"] == "completed" and out.dst_info == {"status": "completed"}
    assert out.src_info["total"] == RAM and out.src_info["remaining"] == 0
    assert out.src_info["normal"] + out.src_info["duplicate"] == RAM // PAGE
    assert out.src_info["normal-bytes"] == out.src_info["normal"] * PAGE
    assert [s["status"] for e, s in out.src_events if e == "MIGRATION"] == ["setup", "active", "completed"]
    assert [(e, s) for e, s in out.src_events if e == "MIGRATION_PASS"][:2] == \
        [("MIGRATION_PASS", {"pass": 1}), ("MIGRATION_PASS", {"pass": 2})]
    assert (("STOP", None) in out.src_events) == (not stopped)  # a running source stops to finish
    assert [ev for ev in out.dst_events if ev[0] != "RESUME"] == [
        ("MIGRATION", {"status": s}) for s in ("setup", "active", "completed")]
    assert (("RESUME", None) in out.dst_events) == (not stopped)  # the destination runs if the source did
    assert out.src_status == {"status": "postmigrate", "running": False}
    assert out.dst_status == ({"status": "prelaunch", "running": False} if stopped else
                              {"status": "running", "running": True})
    if out.artifact is not None:
        offset = route.offset if route.kind == "file-offset" else 0
        assert len(out.artifact) - offset == out.src_info["transferred"]
    return out


ROUTES = [Route("tcp"), Route("unix"), Route("exec"), Route("file"), Route("file-offset"), Route("fd")]


@pytest.mark.parametrize("route", ROUTES, ids=[r.kind for r in ROUTES])
def test_channels_migration_equals_uri_migration(tmp, route):
    """The same source memory migrated once with ``uri`` and once with the equivalent
    ``channels`` (on both sides) ends identically: RAM, events and statuses, run states, the
    stable query-migrate counters, the listening address (tcp port masked) and, for exec and
    file transports, the stream file byte for byte."""
    out = check_uri_equals_channels(tmp, route, seed=7, stopped=True)
    if route.kind == "tcp":
        assert out.dst_listening == {"status": "setup", "socket-address": [
            {"port": "PORT", "ipv4": True, "host": "127.0.0.1", "type": "inet"}]}


ROUTE_SPELLINGS = st.one_of(
    st.builds(Route, kind=st.just("tcp"), host=st.sampled_from(["127.0.0.1", "localhost"])),
    st.builds(Route, kind=st.just("unix"),
              name=st.sampled_from(["m.sock", "mig,sock", "with space.sock", "ü.sock"])),
    st.just(Route("exec")),
    st.just(Route("file")),
    st.sampled_from([Route("file-offset", offset=o, offset_text=t) for o, t in [
        (0, "0"), (4096, "4096"), (4096, "4k"), (4096, "4K"), (4096, "0x1000"), (8192, "8K"),
        (512, "512"), (1 << 20, "1M"), (4097, "4097")]]),
    st.just(Route("fd")),
)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(route=ROUTE_SPELLINGS, seed=st.integers(0, 2**16), stopped=st.booleans())
def test_channels_equal_uri_for_generated_spellings(route, seed, stopped):
    """Hypothesis picks the transport, the address spelling (tcp host name, unix path with a
    comma, a space or non-ASCII, file offset as decimal, k/K/M suffix or hex, unaligned), the
    memory contents and whether the source runs; uri and channels must agree every time."""
    base = Path(short_tempdir("mh"))
    try:
        check_uri_equals_channels(base, route, seed=seed, stopped=stopped)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_fd_destination_waits_for_the_stream(tmp):
    """A destination on an fd (one end of a socket pair, the test holding the other) is in
    ``setup`` until bytes arrive; the test then writes a saved stream itself and the destination
    goes active → completed with the source's RAM."""
    stream = tmp / "stream"
    with QTestMachine(BIN, [*NONE16, "-S"]) as src:
        expected = fill_source(src, 5)
        events_on(src)
        src.qmp.cmd("migrate", uri=f"file:{stream}")
        assert statuses(src) == ["setup", "active", "completed"]
    data = stream.read_bytes()
    assert data[:8] == QEVM
    ours, theirs = socket.socketpair()
    with ours, QTestMachine(BIN, [*NONE16, "-S", "-incoming", "defer"]) as dst:
        events_on(dst)
        try:
            dst.qmp.cmd_fds("getfd", [theirs.fileno()], fdname="fd-mig")
        finally:
            theirs.close()
        dst.qmp.cmd("migrate-incoming", uri="fd:fd-mig")
        assert dst.qmp.wait_event("MIGRATION", timeout=30)["data"] == {"status": "setup"}
        with pytest.raises(TimeoutError):  # nothing was written: no 'active' (a bounded negative check)
            dst.qmp.wait_event("MIGRATION", timeout=1)
        assert dst.qmp.cmd("query-migrate") == {"status": "setup"}
        ours.sendall(data)
        assert statuses(dst) == ["active", "completed"]
        assert sha(dst.qtest.bufread(0, RAM)) == sha(expected)


# ------------------------------------------------------------------------------------------
# migrate's detach and resume arguments


def test_migrate_detach_is_accepted_and_ignored(tmp):
    """``detach: true`` (documented as ignored, kept for compatibility) changes nothing: the migration runs to completion
    as it would without it, and the destination gets the memory."""
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        expected = fill_source(src, 3)
        events_on(src)
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
        assert src.qmp.cmd_raw("migrate", {"uri": f"unix:{tmp}/m.sock", "detach": True}) == {"return": {}}
        assert statuses(src) == ["setup", "active", "completed"]
        info = src.qmp.cmd("query-migrate")
        assert info["status"] == "completed" and info["ram"]["total"] == RAM
        dst.qmp.wait_event("RESUME", timeout=30)
        assert dst.qmp.cmd("query-status") == {"status": "running", "running": True}
        assert sha(dst.qtest.bufread(0, RAM)) == sha(expected)


RESUME_ERROR = "Cannot resume if there is no paused migration"


def test_migrate_resume_without_a_paused_migration(tmp):
    """``resume: true`` needs a postcopy-paused migration: with none (idle, and after a completed
    migration) the reply is exactly QEMU's error, with any transport and with ``channels``, and
    neither query-migrate nor the events change."""
    with QTestMachine(BIN, NONE16) as m:
        events_on(m)
        for args in ({"uri": f"unix:{tmp}/x.sock"}, {"uri": f"file:{tmp}/f"}, {"uri": "tcp:127.0.0.1:1"},
                     {"channels": main_channel({"transport": "file", "filename": f"{tmp}/f", "offset": 0})},
                     {"uri": f"exec:cat > {tmp}/f", "detach": True}):
            reply = m.qmp.cmd_raw("migrate", {**args, "resume": True})
            assert reply == {"error": {"class": "GenericError", "desc": RESUME_ERROR}}
            assert m.qmp.cmd("query-migrate") == {}
        assert not m.qmp.get_events()
        assert not (tmp / "f").exists()
        assert m.qmp.cmd("query-status") == {"status": "running", "running": True}
        # resume: false is an ordinary migration
        m.qmp.cmd("migrate", uri=f"file:{tmp}/f", resume=False)
        assert statuses(m) == ["setup", "active", "completed"]
        before = m.qmp.cmd("query-migrate")
        m.qmp.get_events()
        # completed is not paused either
        assert error_desc(m, "migrate", {"uri": f"file:{tmp}/g", "resume": True}) == RESUME_ERROR
        after = m.qmp.cmd("query-migrate")
        assert after == before
        assert not m.qmp.get_events()
        assert not (tmp / "g").exists()


@pytest.mark.parametrize("args, message", [
    ({}, "need either 'uri' or 'channels' argument"),
    ({"uri": "foo:bar"}, "unknown migration protocol: foo:bar"),
    ({"uri": "file:/x,offset=0x20M"}, "file URI has bad offset 0x20M: Invalid argument"),
], ids=["none_set", "unknown_protocol", "bad_offset"])
def test_migrate_resume_argument_errors_come_first(args, message):
    """qmp_migrate (9.1) checks uri/channels, parses the uri and checks the transport before
    migrate_prepare looks at ``resume``: a bad address is reported as such."""
    with QTestMachine(BIN, NONE16) as m:
        assert error_desc(m, "migrate", {**args, "resume": True}) == message
        assert m.qmp.cmd("query-migrate") == {}
