"""emu.migration.transport: a loopback pair for every transport, QEMU's error texts.

Each transport moves 8 MiB of random data from ``open_outgoing`` to ``listen_incoming`` and the
bytes must match (spec/migration-qapi.md §4.2, §4.3, §12: tcp port 0 with the real port in
``socket-address``, unix, fd over a socket pair and over a file, exec ``cat``, file with
``offset=`` and ``/dev/fdset/N``).  Parallel-safe: private temp dirs, port 0, no sleeps.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from emu.migration.address import (
    Exec,
    Fd,
    File,
    Inet,
    Rdma,
    Socket,
    Unix,
    Vsock,
    parse_migration_uri,
)
from emu.migration.transport import (
    FD_FILE_DEPRECATED,
    AcceptCancelled,
    AcceptTimeout,
    Channel,
    ListenerClosed,
    TransportError,
    listen_incoming,
    open_outgoing,
)
from emu.monitor.fds import FdSets, NamedFds

SIZE = 8 << 20
PREFILL = 0x1000


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def tmp() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="mt-", dir="/tmp")  # short: unix socket paths are limited
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def read_all(chan: Channel, limit: int | None = None) -> bytes:
    out = bytearray()
    while limit is None or len(out) < limit:
        chunk = chan.read(1 << 16 if limit is None else min(1 << 16, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def write_in_thread(chan: Channel, data: bytes, close: bool = True) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            view = memoryview(data)
            for i in range(0, len(data), 1 << 20):  # several writes, as a stream would do
                chan.write_all(view[i:i + (1 << 20)])
        except BaseException as e:  # noqa: BLE001 - reported by the joiner
            errors.append(e)
        finally:
            if close:
                chan.close()

    t = threading.Thread(target=run, daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t


def transfer(src: Channel, dst: Channel, data: bytes) -> None:
    """Writer thread on the source, reader here; both ends closed afterwards."""
    t = write_in_thread(src, data)
    try:
        got = read_all(dst, len(data))
    finally:
        t.join(30)
        dst.close()
    assert not t.errors, t.errors  # type: ignore[attr-defined]
    assert len(got) == len(data)
    assert got == data


def errtext(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TransportError) as exc:
        fn(*args, **kwargs)
    return exc.value.message


# ---------------------------------------------------------------------------------------------
# tcp


def test_tcp_port0_reports_real_port_and_transfers(payload: bytes) -> None:
    with listen_incoming(parse_migration_uri("tcp:127.0.0.1:0")) as lst:
        addrs = lst.socket_address()
        assert len(addrs) == 1
        a = addrs[0]
        assert a["type"] == "inet" and a["host"] == "127.0.0.1" and a["ipv4"] is True
        assert isinstance(a["port"], str) and a["port"] != "0" and 0 < int(a["port"]) < 65536
        src = open_outgoing(parse_migration_uri(f"tcp:127.0.0.1:{a['port']}"))
        dst = lst.accept(timeout=10)
        assert src.kind == dst.kind == "socket" and not src.seekable
        # the return path: destination to source
        dst.write_all(b"ack")
        assert src.read(3) == b"ack"
        transfer(src, dst, payload)


def test_tcp_channels_form_and_ipv6(payload: bytes) -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    with listen_incoming(Socket(Inet("::1", "0", ipv6=True))) as lst:
        (a,) = lst.socket_address()
        assert a == {"type": "inet", "host": "::1", "port": a["port"], "ipv6": True}
        src = open_outgoing(Socket(Inet("::1", a["port"])))
        transfer(src, lst.accept(timeout=10), payload[: 1 << 20])


def test_tcp_to_range_skips_used_ports() -> None:
    with listen_incoming(Socket(Inet("127.0.0.1", "0"))) as used:
        port = int(used.socket_address()[0]["port"])
        if port > 65535 - 64:
            pytest.skip("ephemeral port too close to the top of the range")
        # only the used port: QEMU's inet_listen_saddr gives up
        msg = errtext(listen_incoming, Socket(Inet("127.0.0.1", str(port), to=port)))
        assert msg == "Failed to find an available port: Address already in use"
        with listen_incoming(Socket(Inet("127.0.0.1", str(port), to=port + 64))) as lst:
            got = int(lst.socket_address()[0]["port"])
            assert port < got <= port + 64
            src = open_outgoing(Socket(Inet("127.0.0.1", str(got))))
            dst = lst.accept(timeout=10)
            src.write_all(b"x")
            assert dst.read(1) == b"x"
            src.close()
            dst.close()


def test_tcp_numeric_and_errors() -> None:
    with listen_incoming(Socket(Inet("127.0.0.1", "0", numeric=True))) as lst:
        assert lst.socket_address()[0]["host"] == "127.0.0.1"
    # spec §4.2 (7.2-live texts, same code in 9.1)
    assert errtext(open_outgoing, parse_migration_uri("tcp:127.0.0.1:0")) == \
        "Failed to connect to '127.0.0.1:0': Connection refused"
    assert errtext(open_outgoing, parse_migration_uri("tcp::1")) == \
        "address resolution failed for :1: Name or service not known"
    assert errtext(open_outgoing, Socket(Inet("127.0.0.1", "1", ipv4=False, ipv6=False))) == \
        "Cannot disable IPv4 and IPv6 at same time"
    assert errtext(listen_incoming, Socket(Inet("no-such-host.invalid.", "0", numeric=True))).startswith(
        "address resolution failed for no-such-host.invalid.:0: ")


# ---------------------------------------------------------------------------------------------
# unix


def test_unix_unlinks_stale_path_and_transfers(tmp: str, payload: bytes) -> None:
    path = os.path.join(tmp, "migsocket")
    with open(path, "w") as f:  # a stale file where the socket goes
        f.write("stale")
    with listen_incoming(parse_migration_uri(f"unix:{path}")) as lst:
        assert lst.socket_address() == [{"type": "unix", "path": path}]
        src = open_outgoing(Socket(Unix(path)))
        transfer(src, lst.accept(timeout=10), payload)


def test_unix_errors(tmp: str) -> None:
    missing = os.path.join(tmp, "nothing")
    assert errtext(open_outgoing, Socket(Unix(missing))) == \
        f"Failed to connect to '{missing}': No such file or directory"
    long = "/tmp/" + "x" * 120
    assert errtext(open_outgoing, Socket(Unix(long))) == f"UNIX socket path '{long}' is too long"
    assert errtext(listen_incoming, Socket(Unix(os.path.join(tmp, "no", "dir")))).startswith(
        f"Failed to bind socket to {tmp}/no/dir: No such file or directory")


# ---------------------------------------------------------------------------------------------
# fd


def test_fd_socketpair(payload: bytes) -> None:
    a, b = socket.socketpair()
    src_fds, dst_fds = NamedFds(), NamedFds()
    src_fds.set("fd-mig", a.detach())
    dst_fds.set("fd-mig", b.detach())
    lst = listen_incoming(parse_migration_uri("fd:fd-mig"), named_fds=dst_fds)
    assert lst.socket_address() == []
    src = open_outgoing(Socket(Fd("fd-mig")), named_fds=src_fds)
    # the names are consumed, so a later closefd fails (spec §12.2 precopy/fd/tcp)
    assert src_fds.take("fd-mig") is None and dst_fds.take("fd-mig") is None
    assert src.warnings == []
    t = write_in_thread(src, payload)  # accept waits for the first bytes, as QEMU's G_IO_IN watch
    dst = lst.accept(timeout=10)
    got = read_all(dst, len(payload))
    t.join(30)
    dst.close()
    lst.close()
    assert not t.errors and got == payload  # type: ignore[attr-defined]


def test_fd_destination_is_taken_only_once_data_is_there() -> None:
    a, b = socket.socketpair()
    with listen_incoming(Socket(Fd(str(b.detach())))) as lst:
        with pytest.raises(AcceptTimeout):
            lst.accept(timeout=0.05)
        a.sendall(b"x")
        dst = lst.accept(timeout=10)
        assert dst.read(1) == b"x"
        dst.close()
    a.close()


def test_fd_regular_file(tmp: str, payload: bytes) -> None:
    path = os.path.join(tmp, "migfile")
    src_fds = NamedFds()
    src_fds.set("fd-mig", os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    warned: list[str] = []
    src = open_outgoing(Socket(Fd("fd-mig")), named_fds=src_fds, warn=warned.append)
    assert warned == [FD_FILE_DEPRECATED] == src.warnings
    assert FD_FILE_DEPRECATED == "fd: migration to a file is deprecated. Use file: instead."
    assert src.kind == "file" and src.seekable
    src.write_all(payload)
    src.close()
    dst_fds = NamedFds()
    dst_fds.set("fd-mig", os.open(path, os.O_RDONLY))
    with listen_incoming(Socket(Fd("fd-mig")), named_fds=dst_fds) as lst:
        dst = lst.accept(timeout=10)
        assert read_all(dst) == payload
        dst.close()


def test_fd_listening_socket_is_accepted(tmp: str) -> None:
    path = os.path.join(tmp, "s")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    fds = NamedFds()
    fds.set("lst", srv.detach())
    with listen_incoming(Socket(Fd("lst")), named_fds=fds) as lst:
        src = open_outgoing(Socket(Unix(path)))
        dst = lst.accept(timeout=10)
        src.write_all(b"hello")
        src.close()
        assert read_all(dst) == b"hello"
        dst.close()


def test_fd_errors() -> None:
    fds = NamedFds()
    # migration/fd.c -> monitor/fds.c monitor_get_fd / monitor_fd_param
    assert errtext(open_outgoing, Socket(Fd("x")), named_fds=fds) == \
        "File descriptor named 'x' has not been found"
    assert errtext(listen_incoming, Socket(Fd("x")), named_fds=fds) == \
        "File descriptor named 'x' has not been found"
    # the source side takes names only; the destination reads a leading digit as a number
    assert errtext(open_outgoing, Socket(Fd("5")), named_fds=fds) == \
        "File descriptor named '5' has not been found"
    assert errtext(listen_incoming, Socket(Fd("5x")), named_fds=fds) == \
        "Invalid file descriptor number '5x'"
    assert errtext(listen_incoming, Socket(Fd("x")), named_fds=None) == \
        "Invalid file descriptor number 'x'"


def test_fd_number_on_destination() -> None:
    a, b = socket.socketpair()
    with listen_incoming(Socket(Fd(str(b.detach())))) as lst:
        a.sendall(b"num")
        a.close()
        dst = lst.accept(timeout=10)
        assert read_all(dst) == b"num"
        dst.close()


# ---------------------------------------------------------------------------------------------
# exec


def test_exec_cat(tmp: str, payload: bytes) -> None:
    path = os.path.join(tmp, "migfile")
    src = open_outgoing(parse_migration_uri(f"exec:cat > {path}"))
    assert src.kind == "command"
    src.write_all(payload)
    src.close()  # closes the child's stdin and reaps it
    assert src.returncode == 0
    assert os.path.getsize(path) == SIZE
    with listen_incoming(Exec(["/bin/sh", "-c", f"cat {path}"])) as lst:
        dst = lst.accept(timeout=10)
        assert read_all(dst) == payload
        dst.close()
        assert dst.returncode == 0


def test_exec_errors(tmp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # GLib spawn text; argv[0] is not searched in PATH (no G_SPAWN_SEARCH_PATH)
    assert errtext(open_outgoing, Exec(["/nonexistent/prog"])) == \
        "Failed to execute child process \u201c/nonexistent/prog\u201d (No such file or directory)"
    monkeypatch.chdir(tmp)
    assert errtext(listen_incoming, Exec(["cat"])) == \
        "Failed to execute child process \u201ccat\u201d (No such file or directory)"


def test_exec_write_to_dead_command() -> None:
    src = open_outgoing(parse_migration_uri("exec:true"))
    with pytest.raises(TransportError) as exc:
        for _ in range(64):
            src.write_all(b"\0" * (1 << 20))
    assert exc.value.message == "Unable to write to command: Broken pipe"
    src.close()


# ---------------------------------------------------------------------------------------------
# file


def test_file_offset_keeps_prefix(tmp: str, payload: bytes) -> None:
    path = os.path.join(tmp, "migfile")
    with open(path, "wb") as f:
        f.write(b"X" * PREFILL + b"old tail that must go")
    src = open_outgoing(parse_migration_uri(f"file:{path},offset=0x1000"))
    assert src.kind == "file" and src.seekable and src.tell() == PREFILL
    src.write_all(payload)
    src.close()
    with open(path, "rb") as f:
        content = f.read()
    assert content[:PREFILL] == b"X" * PREFILL
    assert content[PREFILL:] == payload
    with listen_incoming(File(path, PREFILL)) as lst:
        assert lst.socket_address() == []
        dst = lst.accept(timeout=10)
        assert dst.seekable and dst.tell() == PREFILL
        assert read_all(dst) == payload
        dst.close()


def test_file_without_offset_truncates(tmp: str) -> None:
    path = os.path.join(tmp, "f")
    with open(path, "wb") as f:
        f.write(b"Y" * 100)
    src = open_outgoing(File(path, 0))
    src.write_all(b"abc")
    src.close()
    with open(path, "rb") as f:
        assert f.read() == b"abc"


def test_file_fdset(tmp: str, payload: bytes) -> None:
    path = os.path.join(tmp, "migfile")
    with open(path, "wb") as f:
        f.write(b"X" * PREFILL)
    src_sets, dst_sets = FdSets(), FdSets()
    src_sets.add(os.open(path, os.O_WRONLY), 1)
    dst_sets.add(os.open(path, os.O_RDONLY), 1)
    src = open_outgoing(parse_migration_uri("file:/dev/fdset/1,offset=4096"), fdsets=src_sets)
    src.write_all(payload)
    src.close()
    with open(path, "rb") as f:
        content = f.read()
    assert content[:PREFILL] == b"X" * PREFILL and content[PREFILL:] == payload
    with listen_incoming(File("/dev/fdset/1", PREFILL), fdsets=dst_sets) as lst:
        dst = lst.accept(timeout=10)
        assert read_all(dst) == payload
        dst.close()
    # the set keeps its member (a dup was used)
    assert src_sets.query()[0]["fdset-id"] == 1
    src_sets.close_all()
    dst_sets.close_all()


def test_file_errors(tmp: str) -> None:
    missing = os.path.join(tmp, "missing")
    assert errtext(listen_incoming, File(missing, 0)) == \
        f"Could not open '{missing}': No such file or directory"
    nodir = os.path.join(tmp, "no", "file")
    assert errtext(open_outgoing, File(nodir, 0)) == f"Could not create '{nodir}': No such file or directory"
    sets = FdSets()
    assert errtext(open_outgoing, File("/dev/fdset/x", 0), fdsets=sets) == "Could not parse fdset /dev/fdset/x"
    assert errtext(open_outgoing, File("/dev/fdset/7", 0), fdsets=sets) == "Failed to find fdset /dev/fdset/7"
    sets.add(os.open(os.devnull, os.O_RDONLY), 3)
    assert errtext(open_outgoing, File("/dev/fdset/3", 0), fdsets=sets) == \
        "Failed to find file descriptor with matching flags=0x41"
    sets.close_all()


# ---------------------------------------------------------------------------------------------
# vsock, rdma


def test_vsock_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(socket, "AF_VSOCK"):
        assert errtext(open_outgoing, Socket(Vsock("abc", "1"))) == "Failed to parse cid 'abc'"
        assert errtext(listen_incoming, Socket(Vsock("1", "2:3"))) == "Failed to parse port '2:3'"
        monkeypatch.delattr(socket, "AF_VSOCK")
    assert errtext(open_outgoing, parse_migration_uri("vsock:2:4444")) == "socket family AF_VSOCK unsupported"
    assert errtext(listen_incoming, Socket(Vsock("2", "4444"))) == "socket family AF_VSOCK unsupported"


def test_rdma_not_built_in() -> None:
    addr = parse_migration_uri("rdma:127.0.0.1:4444")
    assert isinstance(addr, Rdma)
    assert errtext(open_outgoing, addr) == "Parameter 'uri' expects a valid migration protocol"
    assert errtext(listen_incoming, addr, uri="rdma:127.0.0.1:4444") == \
        "unknown migration protocol: rdma:127.0.0.1:4444"
    assert errtext(listen_incoming, addr) == "unknown migration protocol: (null)"


# ---------------------------------------------------------------------------------------------
# cancellation


def _blocked_read(chan: Channel) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            result.append(chan.read(100))
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(5)
    return t, result


def test_shutdown_unblocks_socket_read_and_peer_sees_eof() -> None:
    with listen_incoming(Socket(Inet("127.0.0.1", "0"))) as lst:
        src = open_outgoing(Socket(Inet("127.0.0.1", lst.socket_address()[0]["port"])))
        dst = lst.accept(timeout=10)
        t, result = _blocked_read(dst)
        dst.shutdown()
        t.join(10)
        assert not t.is_alive() and result == [b""]
        assert dst.is_shut_down
        assert read_all(src) == b""  # the source sees the stream end
        with pytest.raises(TransportError) as exc:
            dst.write_all(b"late")
        assert exc.value.message == "Unable to write to socket: Broken pipe"
        dst.close()
        src.close()


def test_shutdown_unblocks_socket_write() -> None:
    a, b = socket.socketpair()
    fds = NamedFds()
    fds.set("w", a.detach())
    src = open_outgoing(Socket(Fd("w")), named_fds=fds)
    errors: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            src.write_all(b"\0" * (64 << 20))  # far more than the socket buffers: blocks
        except TransportError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(5)
    src.shutdown()
    t.join(10)
    assert not t.is_alive()
    assert [e.message for e in errors] == ["Unable to write to socket: Broken pipe"]  # type: ignore[attr-defined]
    src.close()
    b.close()


def test_shutdown_unblocks_exec_read() -> None:
    lst = listen_incoming(Exec(["/bin/sh", "-c", "echo go; exec cat"]))  # then waits for stdin forever
    dst = lst.accept(timeout=10)
    assert dst.read_exactly(3) == b"go\n"
    t, result = _blocked_read(dst)
    dst.shutdown()
    t.join(10)
    assert not t.is_alive() and result == [b""]
    dst.close()
    assert dst.returncode is not None


def test_accept_timeout_cancel_close() -> None:
    lst = listen_incoming(Socket(Inet("127.0.0.1", "0")))
    with pytest.raises(AcceptTimeout):
        lst.accept(timeout=0.05)
    ev = threading.Event()
    ev.set()
    with pytest.raises(AcceptCancelled):
        lst.accept(cancel=ev)
    result: list[object] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            lst.accept()
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(5)
    lst.close()
    t.join(10)
    assert not t.is_alive() and isinstance(result[0], ListenerClosed)
    with pytest.raises(ListenerClosed):
        lst.accept(timeout=1)


def test_one_shot_listener_hands_out_its_channel_once(tmp: str) -> None:
    path = os.path.join(tmp, "f")
    with open(path, "wb") as f:
        f.write(b"data")
    with listen_incoming(File(path, 0)) as lst:
        dst = lst.accept()
        with pytest.raises(AcceptTimeout):
            lst.accept(timeout=0.01)
        assert dst.read(10) == b"data" and dst.read(10) == b""
        assert dst.pread(2, 1) == b"at"
        dst.close()
    with pytest.raises(TransportError):
        dst.read(1)
