"""Migration over TLS between two emulator processes, as QEMU's migration-test sets it up: creds
objects made with object-add, tls-creds (and tls-hostname, tls-authz) set on both sides; and the
failures: unknown creds, wrong key, a hostname that does not match, a transport that is not a
socket. Nothing is ever migrated in plaintext when TLS was asked for."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_migration import BIN, NONE16, events_on, statuses, wait_completed
from test_tls import CLIENT_NAME, make_psk_dir, make_x509_dir

from qtest.machine import QTestMachine


def psk(src: QTestMachine, dst: QTestMachine, tmp: Path, dst_key: str | None = None) -> None:
    make_psk_dir(tmp / "psk")
    server_dir = make_psk_dir(tmp / "psk-alt", key=dst_key) if dst_key else tmp / "psk"
    src.qmp.cmd("object-add", **{"qom-type": "tls-creds-psk", "id": "c0", "endpoint": "client",
                                 "dir": str(tmp / "psk"), "username": "qemu"})
    dst.qmp.cmd("object-add", **{"qom-type": "tls-creds-psk", "id": "c0", "endpoint": "server",
                                 "dir": str(server_dir)})
    for m in (src, dst):
        m.qmp.cmd("migrate-set-parameters", **{"tls-creds": "c0"})


def x509(src: QTestMachine, dst: QTestMachine, tmp: Path, **names: str) -> None:
    d = make_x509_dir(tmp / "x509", **names)
    src.qmp.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "c0", "endpoint": "client", "dir": str(d),
                                 "verify-peer": True})
    dst.qmp.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "c0", "endpoint": "server", "dir": str(d),
                                 "verify-peer": True})
    dst.qmp.cmd("object-add", **{"qom-type": "authz-simple", "id": "az0", "identity": f"CN={CLIENT_NAME}"})
    for m in (src, dst):
        m.qmp.cmd("migrate-set-parameters", **{"tls-creds": "c0"})
    dst.qmp.cmd("migrate-set-parameters", **{"tls-authz": "az0"})


def incoming(dst: QTestMachine, tmp: Path, transport: str) -> str:
    if transport == "unix":
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{tmp}/m.sock")
        return f"unix:{tmp}/m.sock"
    dst.qmp.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
    (sa,) = dst.qmp.cmd("query-migrate")["socket-address"]
    return f"tcp:127.0.0.1:{sa['port']}"


def migrate_and_check(src: QTestMachine, dst: QTestMachine, uri: str, data: bytes) -> None:
    """Writes ``data`` at 0x1000 on the source, migrates, and finds it at the destination."""
    src.qtest.memwrite(0x1000, data)
    src.qmp.cmd("migrate", uri=uri)
    wait_completed(src)
    wait_completed(dst)
    assert dst.qtest.memread(0x1000, len(data)) == data


def wait_failed(m: QTestMachine) -> dict:
    """Polls query-migrate until failed (as QEMU's wait_for_migration_fail); the last answer."""
    while (info := m.qmp.cmd("query-migrate"))["status"] != "failed":
        pass
    return info


@pytest.mark.parametrize("kind, transport, multifd", [
    ("psk", "unix", False), ("psk", "tcp", True), ("x509", "tcp", False), ("x509", "tcp", True),
])
def test_tls_migration_moves_ram(tmp, kind, transport, multifd):
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        if kind == "psk":
            psk(src, dst, tmp)
        else:
            x509(src, dst, tmp, ipaddr="127.0.0.1")  # checked against the URI's host
        if multifd:
            for m in (src, dst):
                m.qmp.cmd("migrate-set-parameters", **{"multifd-channels": 4})
                m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
        src.qtest.memset(0x300000, 0x5A, 0x20000)
        migrate_and_check(src, dst, incoming(dst, tmp, transport), b"over TLS")
        assert dst.qtest.memread(0x300000, 0x20000) == b"\x5a" * 0x20000


def test_unknown_creds_fail_the_source_with_qemus_text(tmp):
    """The source fails before sending a byte and closes the connection; the destination (without
    TLS here) sees the stream end and exits 1, as QEMU's does."""
    with QTestMachine(BIN, NONE16) as src, \
            QTestMachine(BIN, [*NONE16, "-incoming", "defer"], expected_status=1) as dst:
        events_on(src)
        src.qmp.cmd("migrate-set-parameters", **{"tls-creds": "nope"})
        uri = incoming(dst, tmp, "unix")
        src.qmp.cmd("migrate", uri=uri)
        assert statuses(src, until="failed") == ["setup", "failed"]
        assert src.qmp.cmd("query-migrate")["error-desc"] == "No TLS credentials with id 'nope'"
        assert src.qmp.cmd("query-status")["status"] == "running"
        assert dst.wait(timeout=30) == 1


def test_psk_mismatch_fails_the_source_and_the_destination_keeps_listening(tmp):
    """QEMU's tcp/tls/psk/mismatch: the handshake fails; the destination reports it and waits for
    another connection (it stays in setup, alive), as QEMU does."""
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        psk(src, dst, tmp, dst_key="cd" * 32)
        uri = incoming(dst, tmp, "tcp")
        src.qmp.cmd("migrate", uri=uri)
        info = wait_failed(src)
        assert info["error-desc"].startswith("TLS handshake failed: ")
        assert dst.qmp.cmd("query-migrate")["status"] == "setup"
        # the destination reports from its accept thread, not ordered with the source's failure:
        # poll with QMP round trips (bounded) until the line is out
        deadline = time.monotonic() + 30
        while "TLS handshake failed: " not in dst.stderr_text() and time.monotonic() < deadline:
            dst.qmp.cmd("query-status")
        assert "TLS handshake failed: " in dst.stderr_text()


def test_x509_over_unix_needs_a_hostname(tmp):
    """QEMU's unix/tls/x509/default-host: a unix socket gives no hostname to check the server
    certificate against; the source fails, the destination's load fails and it exits 1."""
    with QTestMachine(BIN, NONE16) as src, \
            QTestMachine(BIN, [*NONE16, "-incoming", "defer"], expected_status=1) as dst:
        x509(src, dst, tmp, ipaddr="127.0.0.1")
        src.qmp.cmd("migrate", uri=incoming(dst, tmp, "unix"))
        info = wait_failed(src)
        assert info["error-desc"] == "No hostname for certificate validation"
        assert dst.wait(timeout=30) == 1


def test_tls_hostname_overrides_the_uri_host(tmp):
    with QTestMachine(BIN, NONE16) as src, QTestMachine(BIN, [*NONE16, "-incoming", "defer"]) as dst:
        x509(src, dst, tmp, hostname="qemu.org")
        src.qmp.cmd("migrate-set-parameters", **{"tls-hostname": "qemu.org"})
        migrate_and_check(src, dst, incoming(dst, tmp, "unix"), b"hostname")


def test_tls_over_a_non_socket_transport_is_refused(tmp):
    with QTestMachine(BIN, NONE16) as src:
        make_psk_dir(tmp / "psk")
        src.qmp.cmd("object-add", **{"qom-type": "tls-creds-psk", "id": "c0", "endpoint": "client",
                                     "dir": str(tmp / "psk"), "username": "qemu"})
        src.qmp.cmd("migrate-set-parameters", **{"tls-creds": "c0"})
        src.qmp.cmd("migrate", uri=f"exec:cat > {tmp}/stream")
        info = wait_failed(src)
        assert info["error-desc"] == "TLS migration is only supported over sockets by this emulator"
        assert (tmp / "stream").read_bytes() == b""  # nothing went out in plaintext


def test_creds_from_the_command_line(tmp):
    """-object tls-creds-psk,... on both command lines, as QEMU takes them."""
    d = make_psk_dir(tmp / "psk")
    with QTestMachine(BIN, [*NONE16, "-object", f"tls-creds-psk,id=c0,endpoint=client,dir={d},username=qemu"]) as src, \
            QTestMachine(BIN, [*NONE16, "-incoming", "defer",
                               "-object", f"tls-creds-psk,id=c0,endpoint=server,dir={d}"]) as dst:
        for m in (src, dst):
            m.qmp.cmd("migrate-set-parameters", **{"tls-creds": "c0"})
        migrate_and_check(src, dst, incoming(dst, tmp, "unix"), b"cmdline")


@pytest.mark.parametrize("spec, message", [
    ("tls-creds-x509,id=c0,endpoint=client,dir=/nonexistent",
     "Unable to access credentials /nonexistent/ca-cert.pem: No such file or directory"),
    ("tls-creds-x509,id=c0,endpoint=client,dir=/tmp,verify-peer=maybe", "Parameter 'verify-peer' expects 'on' or 'off'"),
    ("authz-simple,id=a0", "The 'identity' property must be set"),
])
def test_bad_objects_on_the_command_line(spec, message):
    import subprocess

    out = subprocess.run([BIN, *NONE16, "-object", spec], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stderr) == (1, f"emu-system-x86_64: -object {spec}: {message}\n")
