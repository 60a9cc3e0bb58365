"""object-add / object-del for the TLS credentials and authz objects, through the QMP layer (the
default registry and schema, a fake machine with a QOM root) and through the real process."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_tls import CLIENT_NAME, make_psk_dir, make_x509_dir
from wire import Loopback, QmpClient

from emu.monitor.protocol import QmpServer
from emu.monitor.registry import build_registry
from emu.qom import Container
from emu.tls import get_tls_creds, objects_registry

BIN = shutil.which("emu-system-x86_64")


class Machine:
    """Just what the object and qom commands use."""

    def __init__(self) -> None:
        self.qom_root = Container()
        self.qom_root.add_child("machine", Container())


class Client:
    """A QMP session of the real protocol layer, driven in process through :class:`wire.Loopback`."""

    def __init__(self) -> None:
        self.machine = Machine()
        self.server = QmpServer(self.machine, registry=build_registry())
        self.loop = Loopback()
        session = self.server.new_session(self.loop.write, self.loop.hang_up)
        self.loop.feed = session.feed
        session.opened()
        self.wire = QmpClient(self.loop)
        self.wire.greet()

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The reply, which must be the one message the command wrote (no event, nothing after it)."""
        reply = self.wire.cmd(name, args)
        assert not self.wire.events and self.wire.readline() is None and not self.wire.buf, reply
        return reply

    def error(self, name: str, args: dict[str, Any]) -> str:
        reply = self.cmd(name, args)
        assert reply["error"]["class"] == "GenericError", reply
        return reply["error"]["desc"]


@pytest.fixture
def qmp() -> Client:
    return Client()


def test_object_add_psk_and_migration_lookup(qmp: Client, tmp_path: Path) -> None:
    d = make_psk_dir(tmp_path / "tlscredspsk0")
    assert qmp.cmd("object-add", {"qom-type": "tls-creds-psk", "id": "tlscredspsk0", "endpoint": "client",
                                  "dir": str(d), "username": "qemu"}) == {"return": {}}
    assert qmp.cmd("qom-get", {"path": "/objects/tlscredspsk0", "property": "loaded"}) == {"return": True}
    assert qmp.cmd("qom-get", {"path": "/objects/tlscredspsk0", "property": "endpoint"}) == {"return": "client"}
    assert qmp.cmd("qom-get", {"path": "/objects/tlscredspsk0", "property": "priority"}) == {"return": ""}
    assert qmp.cmd("qom-list", {"path": "/objects/tlscredspsk0"})["return"] == [
        {"name": "type", "type": "string"}, {"name": "endpoint", "type": "QCryptoTLSCredsEndpoint"},
        {"name": "dir", "type": "string"}, {"name": "verify-peer", "type": "bool"},
        {"name": "priority", "type": "string"}, {"name": "username", "type": "string"},
        {"name": "loaded", "type": "bool"}]
    assert {"name": "tlscredspsk0", "type": "child<tls-creds-psk>"} in qmp.cmd(
        "qom-list", {"path": "/objects"})["return"]
    # what the migration manager does with its tls-creds parameter
    registry = objects_registry(qmp.machine.qom_root)
    creds = get_tls_creds(registry, "tlscredspsk0", "client")
    assert creds.loaded
    assert qmp.cmd("object-del", {"id": "tlscredspsk0"}) == {"return": {}}
    assert qmp.error("object-del", {"id": "tlscredspsk0"}) == "object 'tlscredspsk0' not found"
    assert not creds.loaded


def test_object_add_x509_and_authz(qmp: Client, tmp_path: Path) -> None:
    d = make_x509_dir(tmp_path / "x", ipaddr="127.0.0.1")
    assert qmp.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "tlscredsx509server0", "endpoint": "server",
                                  "dir": str(d), "sanity-check": True, "verify-peer": False}) == {"return": {}}
    assert qmp.cmd("qom-get", {"path": "/objects/tlscredsx509server0", "property": "verify-peer"}) == \
        {"return": False}
    assert qmp.cmd("object-add", {"qom-type": "authz-simple", "id": "tlsauthz0",
                                  "identity": f"CN={CLIENT_NAME}"}) == {"return": {}}
    assert qmp.cmd("qom-get", {"path": "/objects/tlsauthz0", "property": "identity"}) == \
        {"return": f"CN={CLIENT_NAME}"}
    assert qmp.cmd("qom-set", {"path": "/objects/tlsauthz0", "property": "identity", "value": "CN=x"}) == \
        {"return": {}}
    assert qmp.error("qom-set", {"path": "/objects/tlscredsx509server0", "property": "loaded", "value": False}) == \
        "Property 'tls-creds-x509.loaded' is not writable"


def test_object_add_errors(qmp: Client, tmp_path: Path) -> None:
    psk = make_psk_dir(tmp_path / "psk")
    missing = tmp_path / "missing"
    err = qmp.error
    assert err("object-add", {"qom-type": "nosuch", "id": "a"}) == "Parameter 'qom-type' does not accept value 'nosuch'"
    assert err("object-add", {"qom-type": "tls-creds-psk"}) == "Parameter 'id' is missing"
    assert err("object-add", {"id": "a"}) == "Parameter 'qom-type' is missing"
    assert err("object-add", {"qom-type": "tls-creds-psk", "id": "a", "verify-peer": "yes"}) == \
        "Invalid parameter type for 'verify-peer', expected: boolean"
    assert err("object-add", {"qom-type": "tls-creds-psk", "id": "a", "endpoint": "middle"}) == \
        "Parameter 'endpoint' does not accept value 'middle'"
    assert err("object-add", {"qom-type": "tls-creds-psk", "id": "a", "nosuch": 1}) == \
        "Parameter 'nosuch' is unexpected"
    assert err("object-add", {"qom-type": "authz-simple", "id": "a"}) == "Parameter 'identity' is missing"
    assert err("object-add", {"qom-type": "tls-creds-psk", "id": "1a", "dir": str(psk)}) == \
        "Parameter 'id' expects an identifier"
    assert err("object-add", {"qom-type": "tls-creds-psk", "id": "a", "loaded": True, "dir": str(psk)}) == \
        "Property 'tls-creds-psk.loaded' is not writable"
    assert err("object-add", {"qom-type": "tls-creds-x509", "id": "a", "dir": str(missing)}) == \
        f"Unable to access credentials {missing}/ca-cert.pem: No such file or directory"
    assert err("object-add", {"qom-type": "iothread", "id": "a"}) == \
        "object type 'iothread' is not supported by this emulator"
    # a failed object-add leaves no object behind; a good one blocks its id
    assert qmp.cmd("object-add", {"qom-type": "tls-creds-psk", "id": "a", "dir": str(psk)}) == {"return": {}}
    assert err("object-add", {"qom-type": "tls-creds-anon", "id": "a"}) == \
        "attempt to add duplicate property 'a' to object (type 'container')"
    assert err("object-del", {}) == "Parameter 'id' is missing"


def test_schema_declares_object_commands(qmp: Client) -> None:
    schema = qmp.cmd("query-qmp-schema")["return"]
    by_name = {e["name"]: e for e in schema}
    add = by_name["object-add"]
    assert add["meta-type"] == "command" and by_name["object-del"]["meta-type"] == "command"
    options = by_name[add["arg-type"]]
    assert options["tag"] == "qom-type"
    cases = {v["case"] for v in options["variants"]}
    assert {"tls-creds-psk", "tls-creds-x509", "tls-creds-anon", "authz-simple", "memory-backend-ram"} <= cases
    names = {c["name"] for c in qmp.cmd("query-commands")["return"]}
    assert {"object-add", "object-del"} <= names


def test_qom_list_types_has_tls_types(qmp: Client) -> None:
    types = {t["name"]: t for t in qmp.cmd("qom-list-types", {"abstract": True})["return"]}
    assert types["tls-creds-psk"] == {"name": "tls-creds-psk", "parent": "tls-creds"}
    assert types["tls-creds"] == {"name": "tls-creds", "abstract": True, "parent": "object"}
    assert types["authz-simple"]["parent"] == "authz"


@pytest.mark.subprocess
@pytest.mark.skipif(BIN is None, reason="emu-system-x86_64 is not installed")
def test_object_add_in_process(tmp_path: Path) -> None:
    """The real binary, QMP over stdio: the objects land under /objects of its QOM tree."""
    d = make_psk_dir(tmp_path / "psk")
    lines = [
        {"execute": "qmp_capabilities"},
        {"execute": "object-add", "arguments": {"qom-type": "tls-creds-psk", "id": "tlscredspsk0",
                                                "endpoint": "server", "dir": str(d)}},
        {"execute": "qom-get", "arguments": {"path": "/objects/tlscredspsk0", "property": "loaded"}},
        {"execute": "object-del", "arguments": {"id": "tlscredspsk0"}},
        {"execute": "qom-get", "arguments": {"path": "/objects/tlscredspsk0", "property": "loaded"}},
        {"execute": "quit"},
    ]
    stdin = "".join(json.dumps(m) + "\n" for m in lines)
    assert BIN is not None
    proc = subprocess.run([BIN, "-M", "none", "-nodefaults", "-display", "none", "-accel", "qtest", "-qmp", "stdio"],
                          input=stdin, capture_output=True, text=True, timeout=60)
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    replies = [r for r in replies if "event" not in r and "QMP" not in r]
    assert replies == [
        {"return": {}}, {"return": {}}, {"return": True}, {"return": {}},
        {"error": {"class": "DeviceNotFound", "desc": "Device '/objects/tlscredspsk0' not found"}},
        {"return": {}},
    ]
    assert proc.returncode == 0
