"""emu.tls: credentials objects, GnuTLS sessions with QEMU's peer checks, and the plaintext tunnel.

Certificates are made per test (``cryptography``) the way QEMU's migration-test makes them
(tests/unit/crypto-tls-x509-helpers.h: CA ``qemu-CA``, client ``ACME QEMU Client``, server named
by host name or IP address, critical constraints, usages and purposes). Sessions run over
socketpairs; nothing sleeps.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from emu.qom import Container  # noqa: E402
from emu.tls import (  # noqa: E402
    ObjectRegistry,
    TlsError,
    create_object,
    get_tls_creds,
    gnutls,  # noqa: E402
    objects_registry,
    tls_wrap_fd,
)
from emu.tls.creds import TlsCredsX509  # noqa: E402
from emu.tls.session import Cancelled, TlsSession  # noqa: E402

CLIENT_NAME = "ACME QEMU Client"
HOSTILE_NAME = "ACME Hostile Client"
PSK_KEY = "009d5638c40fde0c"
PSK_KEY_ALT = "10ffa6a2c42f0388"
WAIT = 30  # generous bound for joins: a hang fails the test instead of the run


# ---------------------------------------------------------------------------
# credentials on disk


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(key: Any, cn: str, issuer: x509.Name, *, ca: bool, purpose: Any = None, san: list[Any] | None = None,
          days: int = 1, signer: Any = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=False,
                                      encipher_only=False, decipher_only=False), critical=True))
    if purpose is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([purpose]), critical=True)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(signer or key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_x509_dir(d: Path, *, hostname: str | None = None, ipaddr: str | None = None,
                  client_cn: str | None = CLIENT_NAME) -> Path:
    """A creds dir like migration-test's: one key for everything; ``client_cn=None``: no client
    certificate (an anonymous client)."""
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    ca = _cert(key, "qemu-CA", _name("qemu-CA"), ca=True)
    san: list[Any] = []
    if hostname:
        san.append(x509.DNSName(hostname))
    if ipaddr:
        san.append(x509.IPAddress(ipaddress.ip_address(ipaddr)))
    server = _cert(key, hostname or ipaddr or "server", ca.subject, ca=False,
                   purpose=ExtendedKeyUsageOID.SERVER_AUTH, san=san)
    (d / "ca-cert.pem").write_bytes(_pem(ca))
    (d / "server-cert.pem").write_bytes(_pem(server))
    (d / "server-key.pem").write_bytes(key_pem)
    if client_cn is not None:
        client = _cert(key, client_cn, ca.subject, ca=False, purpose=ExtendedKeyUsageOID.CLIENT_AUTH)
        (d / "client-cert.pem").write_bytes(_pem(client))
        (d / "client-key.pem").write_bytes(key_pem)
    return d


def make_psk_dir(d: Path, key: str = PSK_KEY, user: str = "qemu") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "keys.psk").write_text(f"{user}:{key}\n")
    return d


def x509_pair(d: Path, *, server_verify: bool = True) -> tuple[Any, Any]:
    client = create_object("tls-creds-x509", "c0", {"endpoint": "client", "dir": str(d), "sanity-check": True,
                                                    "verify-peer": True})
    server = create_object("tls-creds-x509", "s0", {"endpoint": "server", "dir": str(d), "sanity-check": True,
                                                    "verify-peer": server_verify})
    return client, server


def psk_pair(client_dir: Path, server_dir: Path) -> tuple[Any, Any]:
    client = create_object("tls-creds-psk", "c0", {"endpoint": "client", "dir": str(client_dir), "username": "qemu"})
    server = create_object("tls-creds-psk", "s0", {"endpoint": "server", "dir": str(server_dir)})
    return client, server


# ---------------------------------------------------------------------------
# sessions over a socketpair


class Side:
    """One end's outcome: a running tunnel, or QEMU's error text."""

    def __init__(self) -> None:
        self.tunnel: Any = None
        self.error: str | None = None

    def plain(self) -> socket.socket:
        s = socket.socket(fileno=self.tunnel.plain_fd)
        s.settimeout(WAIT)
        return s


def _wrap(side: Side, sock: socket.socket, creds: Any, **kw: Any) -> None:
    try:
        side.tunnel = tls_wrap_fd(sock.fileno(), creds, **kw)
        sock.detach()  # the tunnel owns the fd now
    except TlsError as e:
        side.error = str(e)
        sock.close()  # as QEMU closes the channel: the peer's handshake ends too


def connect(client_creds: Any, server_creds: Any, *, hostname: str | None = None, authz: Any = None,
            registry: Any = None) -> tuple[Side, Side]:
    a, b = socket.socketpair()
    client, server = Side(), Side()
    t = threading.Thread(target=_wrap, args=(server, b, server_creds), kwargs={"authz": authz, "registry": registry})
    t.start()
    _wrap(client, a, client_creds, hostname=hostname)
    t.join(WAIT)
    assert not t.is_alive()
    return client, server


def close_all(*sides: Side) -> None:
    for side in sides:
        if side.tunnel is not None:
            side.tunnel.close()


def recv_all(s: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


def echo_check(client: Side, server: Side) -> None:
    """Bytes cross both ways, then EOF travels client -> server and server -> client."""
    cp, sp = client.plain(), server.plain()
    try:
        cp.sendall(b"ping")
        assert sp.recv(4) == b"ping"
        sp.sendall(b"pong")
        assert cp.recv(4) == b"pong"
        cp.shutdown(socket.SHUT_WR)
        assert sp.recv(10) == b""  # close_notify reached the server's plaintext side
        sp.sendall(b"late")  # half-close: the other direction still works
        sp.shutdown(socket.SHUT_WR)
        assert recv_all(cp) == b"late"
    finally:
        cp.close()
        sp.close()
    assert client.tunnel.wait(WAIT) and server.tunnel.wait(WAIT)
    assert client.tunnel.error is None and server.tunnel.error is None


# ---------------------------------------------------------------------------
# x509


def test_x509_verify_peer_with_client_cert_hostname_ip(tmp_path: Path) -> None:
    c, s = x509_pair(make_x509_dir(tmp_path / "x", ipaddr="127.0.0.1"))
    client, server = connect(c, s, hostname="127.0.0.1")
    try:
        assert client.error is None and server.error is None
        assert server.tunnel.peername == f"CN={CLIENT_NAME}"  # gnutls_x509_crt_get_dn's format
        assert client.tunnel.peername == "CN=127.0.0.1"
        echo_check(client, server)
    finally:
        close_all(client, server)


def test_x509_hostname_by_name(tmp_path: Path) -> None:
    c, s = x509_pair(make_x509_dir(tmp_path / "x", hostname="qemu.org"))
    client, server = connect(c, s, hostname="qemu.org")
    try:
        assert client.error is None and server.error is None
        echo_check(client, server)
    finally:
        close_all(client, server)


def test_x509_hostname_mismatch(tmp_path: Path) -> None:
    c, s = x509_pair(make_x509_dir(tmp_path / "x", ipaddr="10.0.0.1"))
    client, server = connect(c, s, hostname="127.0.0.1")
    try:
        assert client.error == "Certificate does not match the hostname 127.0.0.1"
    finally:
        close_all(client, server)


def test_x509_client_without_hostname(tmp_path: Path) -> None:
    c, s = x509_pair(make_x509_dir(tmp_path / "x", ipaddr="127.0.0.1"))
    client, server = connect(c, s)
    try:
        assert client.error == "No hostname for certificate validation"
    finally:
        close_all(client, server)


def test_x509_authz_friendly_and_hostile_clients(tmp_path: Path) -> None:
    root = Container()
    reg = objects_registry(root)
    reg.create("authz-simple", "tlsauthz0", {"identity": f"CN={CLIENT_NAME}"})
    c, s = x509_pair(make_x509_dir(tmp_path / "friendly", ipaddr="127.0.0.1"))
    client, server = connect(c, s, hostname="127.0.0.1", authz="tlsauthz0", registry=reg)
    try:
        assert client.error is None and server.error is None
        echo_check(client, server)
    finally:
        close_all(client, server)

    c, s = x509_pair(make_x509_dir(tmp_path / "hostile", ipaddr="127.0.0.1", client_cn=HOSTILE_NAME))
    client, server = connect(c, s, hostname="127.0.0.1", authz="tlsauthz0", registry=reg)
    try:
        assert server.error == f"TLS x509 authz check for CN={HOSTILE_NAME} is denied"
        if client.tunnel is not None:  # TLS 1.3: the client finished first; then it sees the end
            cp = client.plain()
            assert recv_all(cp) == b""
            cp.close()
    finally:
        close_all(client, server)


def test_x509_authz_lookup_errors(tmp_path: Path) -> None:
    reg = objects_registry(Container())
    c, s = x509_pair(make_x509_dir(tmp_path / "x", ipaddr="127.0.0.1"))
    client, server = connect(c, s, hostname="127.0.0.1", authz="nosuch", registry=reg)
    close_all(client, server)
    assert server.error == "Cannot find QAuthZ object ID nosuch"
    reg.add("c0", c)
    client, server = connect(c, s, hostname="127.0.0.1", authz="c0", registry=reg)
    close_all(client, server)
    assert server.error == "Object 'c0' is not a QAuthZ subclass"


def test_x509_anonymous_client_allowed_or_rejected(tmp_path: Path) -> None:
    d = make_x509_dir(tmp_path / "x", ipaddr="127.0.0.1", client_cn=None)
    c, s = x509_pair(d, server_verify=False)
    client, server = connect(c, s, hostname="127.0.0.1")
    try:
        assert client.error is None and server.error is None
        assert server.tunnel.peername is None  # verify-peer off: no checks, no name
        echo_check(client, server)
    finally:
        close_all(client, server)

    c, s = x509_pair(d, server_verify=True)
    client, server = connect(c, s, hostname="127.0.0.1")
    try:
        assert server.error == "Verify failed: No certificate was found."
    finally:
        close_all(client, server)


def test_x509_untrusted_server(tmp_path: Path) -> None:
    """The client trusts another CA: GnuTLS's status, in QEMU's words."""
    good = make_x509_dir(tmp_path / "good", ipaddr="127.0.0.1")
    other = make_x509_dir(tmp_path / "other", ipaddr="127.0.0.1")
    (other / "server-cert.pem").write_bytes((good / "server-cert.pem").read_bytes())
    (other / "server-key.pem").write_bytes((good / "server-key.pem").read_bytes())
    client_creds = create_object("tls-creds-x509", "c", {"endpoint": "client", "dir": str(other)})
    server_creds = create_object("tls-creds-x509", "s", {"endpoint": "server", "dir": str(good),
                                                         "verify-peer": False})
    client, server = connect(client_creds, server_creds, hostname="127.0.0.1")
    close_all(client, server)
    assert client.error in ("The certificate hasn't got a known issuer", "The certificate is not trusted")


# ---------------------------------------------------------------------------
# PSK and anon


def test_psk_match(tmp_path: Path) -> None:
    d = make_psk_dir(tmp_path / "psk")
    client, server = connect(*psk_pair(d, d))
    try:
        assert client.error is None and server.error is None
        echo_check(client, server)
    finally:
        close_all(client, server)


def test_psk_mismatch(tmp_path: Path) -> None:
    c, s = psk_pair(make_psk_dir(tmp_path / "a"), make_psk_dir(tmp_path / "b", PSK_KEY_ALT))
    client, server = connect(c, s)
    close_all(client, server)
    assert server.error is not None and server.error.startswith("TLS handshake failed: ")
    assert client.error is not None and client.error.startswith("TLS handshake failed: ")


def test_psk_default_username_is_qemu(tmp_path: Path) -> None:
    d = make_psk_dir(tmp_path / "psk")
    c = create_object("tls-creds-psk", "c", {"endpoint": "client", "dir": str(d)})
    assert c.loaded and c.username is None


def test_anon(tmp_path: Path) -> None:
    c = create_object("tls-creds-anon", "c", {"endpoint": "client"})
    s = create_object("tls-creds-anon", "s", {"endpoint": "server", "dir": str(tmp_path)})
    client, server = connect(c, s)
    try:
        assert client.error is None and server.error is None
        echo_check(client, server)
    finally:
        close_all(client, server)


def test_priority_strings(tmp_path: Path) -> None:
    d = make_psk_dir(tmp_path / "psk")
    x = make_x509_dir(tmp_path / "x", ipaddr="127.0.0.1")
    assert create_object("tls-creds-psk", "p", {"dir": str(d)}).session_priority() == "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"
    assert create_object("tls-creds-anon", "a", {}).session_priority() == "NORMAL:+ANON-DH"
    assert create_object("tls-creds-x509", "x", {"dir": str(x)}).session_priority() == "NORMAL"
    p = create_object("tls-creds-psk", "p", {"dir": str(d), "priority": "@SYSTEM"})
    assert p.session_priority() == "@SYSTEM:+ECDHE-PSK:+DHE-PSK:+PSK"
    bad = create_object("tls-creds-psk", "p", {"dir": str(d), "priority": "NOPE"})
    a, b = socket.socketpair()
    with a, b, pytest.raises(TlsError) as e:
        TlsSession(bad, a.fileno(), "client")
    assert str(e.value) == "Unable to set TLS session priority NOPE:+ECDHE-PSK:+DHE-PSK:+PSK: The request is invalid."
    badx = create_object("tls-creds-x509", "x", {"dir": str(x), "priority": "NOPE"})
    a, b = socket.socketpair()
    with a, b, pytest.raises(TlsError) as e:
        TlsSession(badx, a.fileno(), "client")
    assert str(e.value) == "Cannot set default TLS session priority NOPE: The request is invalid."
    with a, b, pytest.raises(TlsError, match="^Credentials endpoint doesn't match session$"):
        TlsSession(badx, a.fileno(), "server")


# ---------------------------------------------------------------------------
# loading: QEMU's texts


def test_load_errors(tmp_path: Path) -> None:
    def err(qom_type: str, props: dict[str, Any]) -> str:
        with pytest.raises(TlsError) as e:
            create_object(qom_type, "o", props)
        return str(e.value)

    missing = tmp_path / "missing"
    assert err("tls-creds-x509", {"dir": str(missing)}) == \
        f"Unable to access credentials {missing}/ca-cert.pem: No such file or directory"
    assert err("tls-creds-x509", {}) == "Missing 'dir' property value"
    assert err("tls-creds-psk", {"dir": str(missing)}) == \
        f"Unable to access credentials {missing}/keys.psk: No such file or directory"
    assert err("tls-creds-psk", {"endpoint": "server"}) == "Missing 'dir' property value"
    psk = make_psk_dir(tmp_path / "psk")
    assert err("tls-creds-psk", {"dir": str(psk), "username": "bob"}) == \
        f"Username bob not found in PSK file {psk}/keys.psk"
    assert err("tls-creds-psk", {"dir": str(psk), "username": "bob", "endpoint": "server"}) == \
        "username should not be set when endpoint=server"
    x = make_x509_dir(tmp_path / "x", ipaddr="127.0.0.1")
    (x / "server-key.pem").unlink()
    assert err("tls-creds-x509", {"dir": str(x), "endpoint": "server"}) == \
        f"Unable to access credentials {x}/server-key.pem: No such file or directory"
    assert err("tls-creds-x509", {"dir": str(x), "passwordid": "sec0"}) == "No secret with id 'sec0'"
    # sanity-check: the client certificate offered as the server's
    (x / "server-cert.pem").write_bytes((x / "client-cert.pem").read_bytes())
    (x / "server-key.pem").write_bytes((x / "client-key.pem").read_bytes())
    assert err("tls-creds-x509", {"dir": str(x), "endpoint": "server"}) == \
        f"Certificate {x}/server-cert.pem purpose does not allow use with a TLS server"
    no_check = create_object("tls-creds-x509", "o", {"dir": str(x), "endpoint": "server", "sanity-check": False})
    assert no_check.loaded
    (x / "ca-cert.pem").write_bytes((x / "client-cert.pem").read_bytes())
    assert err("tls-creds-x509", {"dir": str(x)}) == \
        f"The certificate {x}/ca-cert.pem basic constraints do not show a CA"
    # a bad dh-params.pem
    anon = tmp_path / "anon"
    anon.mkdir()
    (anon / "dh-params.pem").write_text("junk\n")
    assert err("tls-creds-anon", {"dir": str(anon), "endpoint": "server"}).startswith(
        f"Unable to load DH parameters from {anon}/dh-params.pem: ")


def test_property_checks() -> None:
    def err(props: dict[str, Any]) -> str:
        with pytest.raises(TlsError) as e:
            create_object("tls-creds-anon", "o", props)
        return str(e.value)

    assert err({"verify-peer": "yes"}) == "Invalid parameter type for 'verify-peer', expected: boolean"
    assert err({"endpoint": "middle"}) == "Parameter 'endpoint' does not accept value 'middle'"
    assert err({"dir": 1}) == "Invalid parameter type for 'dir', expected: string"
    assert err({"loaded": True}) == "Property 'tls-creds-anon.loaded' is not writable"
    assert err({"nosuch": 1}) == "Property 'tls-creds-anon.nosuch' not found"
    with pytest.raises(TlsError, match="^Parameter 'id' expects an identifier$"):
        create_object("tls-creds-anon", "0bad", {})
    with pytest.raises(TlsError, match="^The 'identity' property must be set$"):
        create_object("authz-simple", "a", {})
    x = TlsCredsX509()
    assert x.verify_peer is True and x.sanity_check is True and x.endpoint == "client"


# ---------------------------------------------------------------------------
# registry and migration's lookup


def test_registry_and_get_tls_creds(tmp_path: Path) -> None:
    root = Container()
    reg = objects_registry(root)
    assert isinstance(reg, ObjectRegistry) and objects_registry(root).container is reg.container
    psk = make_psk_dir(tmp_path / "psk")
    creds = reg.create("tls-creds-psk", "tlscredspsk0", {"endpoint": "client", "dir": str(psk)})
    reg.create("authz-simple", "authz0", {"identity": "CN=x"})
    assert creds.path == "/objects/tlscredspsk0"
    with pytest.raises(TlsError, match=r"^attempt to add duplicate property 'authz0' to object \(type 'container'\)$"):
        reg.create("tls-creds-anon", "authz0", {})
    # a failed completion leaves nothing behind
    with pytest.raises(TlsError, match="^Missing 'dir' property value$"):
        reg.create("tls-creds-psk", "broken", {})
    assert reg.get("broken") is None

    assert get_tls_creds(reg, "tlscredspsk0", "client") is creds
    with pytest.raises(TlsError, match="^No TLS credentials with id 'nosuch'$"):
        get_tls_creds(reg, "nosuch", "client")
    with pytest.raises(TlsError, match="^Object with id 'authz0' is not TLS credentials$"):
        get_tls_creds(reg, "authz0", "client")
    with pytest.raises(TlsError, match="^Expected TLS credentials for a server endpoint$"):
        get_tls_creds(reg, "tlscredspsk0", "server")

    reg.delete("tlscredspsk0")
    assert not creds.loaded and reg.get("tlscredspsk0") is None
    with pytest.raises(TlsError, match="^object 'tlscredspsk0' not found$"):
        reg.delete("tlscredspsk0")


# ---------------------------------------------------------------------------
# the tunnel: bulk data, EOF, shutdown, cancel


@pytest.fixture
def psk_tunnels(tmp_path: Path):
    d = make_psk_dir(tmp_path / "psk")
    client, server = connect(*psk_pair(d, d))
    assert client.error is None and server.error is None
    yield client, server
    close_all(client, server)


def test_tunnel_bulk_both_ways(psk_tunnels: tuple[Side, Side]) -> None:
    client, server = psk_tunnels
    up = os.urandom(3 << 20)
    down = os.urandom(5 << 20) + b"end"
    cp, sp = client.plain(), server.plain()
    got: dict[str, bytes] = {}

    def pump(sock: socket.socket, data: bytes, key: str) -> None:
        sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        got[key] = recv_all(sock)
        sender.join(WAIT)

    t = threading.Thread(target=pump, args=(sp, down, "server"))
    t.start()
    pump(cp, up, "client")
    t.join(WAIT)
    assert got["server"] == up and got["client"] == down
    cp.close()
    sp.close()
    assert client.tunnel.wait(WAIT) and server.tunnel.wait(WAIT)
    assert client.tunnel.error is None and server.tunnel.error is None


def test_tunnel_plain_close_ends_peer(psk_tunnels: tuple[Side, Side]) -> None:
    client, server = psk_tunnels
    sp = server.plain()
    os.close(client.tunnel.plain_fd)  # the caller drops its end entirely
    assert recv_all(sp) == b""
    sp.close()
    assert client.tunnel.wait(WAIT) and server.tunnel.wait(WAIT)


def test_tunnel_shutdown_is_prompt_both_sides(psk_tunnels: tuple[Side, Side]) -> None:
    client, server = psk_tunnels
    cp, sp = client.plain(), server.plain()
    client.tunnel.shutdown()  # cancel: no close_notify, the TCP side just ends
    assert recv_all(cp) == b""  # our plaintext side
    assert recv_all(sp) == b""  # the peer's: premature termination reads as EOF
    assert client.tunnel.wait(WAIT)
    assert client.tunnel.error is None  # a requested shutdown is not an error
    assert not server.tunnel.finished  # half-closed: its caller may still write (and would fail)
    sp.close()
    assert server.tunnel.wait(WAIT)
    cp.close()


def test_tunnel_error_is_kept(psk_tunnels: tuple[Side, Side]) -> None:
    """Garbage on the TLS connection: the reader fails with GnuTLS's text, the plaintext side
    sees the end, and the error is there by then."""
    client, server = psk_tunnels
    cp = client.plain()
    os.write(server.tunnel.fd, b"\x17\x03\x03\x00\x10" + b"\x00" * 16)  # a bogus application-data record
    assert recv_all(cp) == b""
    assert client.tunnel.error is not None
    assert client.tunnel.error.startswith("Cannot read from TLS channel: ")
    cp.close()
    assert client.tunnel.wait(WAIT)


def test_handshake_cancel(tmp_path: Path) -> None:
    """A peer that never answers: the cancel fd stops the handshake."""
    d = make_psk_dir(tmp_path / "psk")
    creds = create_object("tls-creds-psk", "c", {"dir": str(d)})
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        os.write(w, b"x")  # level-triggered: caught whether the handshake waits already or not
        with pytest.raises(Cancelled, match="^TLS handshake cancelled$"):
            tls_wrap_fd(a.fileno(), creds, cancel_fd=r)
        assert os.get_blocking(a.fileno())  # the fd is back to the caller as it was
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_gnutls_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gnutls, "_lib", None)
    monkeypatch.setattr(gnutls, "LIBRARY", "libnosuch-gnutls.so.99")
    with pytest.raises(gnutls.GnuTLSUnavailable, match="^TLS support requires GnuTLS: cannot load libnosuch"):
        gnutls.lib()
