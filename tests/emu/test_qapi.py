"""The QAPI engine: QEMU's input-visitor messages (migration-qapi.md §2) on a schema written in
QEMU's schema language, and the introspection format."""
from __future__ import annotations

import pytest

from emu.errors import QapiError
from emu.monitor.qapi import Schema, SchemaError

# A slice of qapi/sockets.json and qapi/migration.json (9.1), enough for §2's worked examples.
SCHEMA = [
    {"enum": "SocketAddressType", "data": ["inet", "unix", "vsock", "fd"]},
    {"struct": "InetSocketAddressBase", "data": {"host": "str", "port": "str"}},
    {"struct": "InetSocketAddress", "base": "InetSocketAddressBase",
     "data": {"*numeric": "bool", "*to": "uint16", "*ipv4": "bool", "*ipv6": "bool", "*keep-alive": "bool"}},
    {"struct": "UnixSocketAddress", "data": {"path": "str", "*abstract": "bool", "*tight": "bool"}},
    {"struct": "VsockSocketAddress", "data": {"cid": "str", "port": "str"}},
    {"struct": "FdSocketAddress", "data": {"str": "str"}},
    {"union": "SocketAddress", "base": {"type": "SocketAddressType"}, "discriminator": "type",
     "data": {"inet": "InetSocketAddress", "unix": "UnixSocketAddress", "vsock": "VsockSocketAddress",
              "fd": "FdSocketAddress"}},
    {"enum": "MigrationAddressType", "data": ["socket", "exec", "rdma", "file"]},
    {"struct": "FileMigrationArgs", "data": {"filename": "str", "offset": "uint64"}},
    {"struct": "MigrationExecCommand", "data": {"args": ["str"]}},
    {"union": "MigrationAddress", "base": {"transport": "MigrationAddressType"}, "discriminator": "transport",
     "data": {"socket": "SocketAddress", "exec": "MigrationExecCommand", "rdma": "InetSocketAddress",
              "file": "FileMigrationArgs"}},
    {"enum": "MigrationChannelType", "data": ["main"]},
    {"struct": "MigrationChannel", "data": {"channel-type": "MigrationChannelType", "addr": "MigrationAddress"}},
    {"command": "migrate", "data": {"*uri": "str", "*channels": ["MigrationChannel"], "*detach": "bool",
                                    "*resume": "bool"}},
    {"enum": "MigrationCapability", "data": ["xbzrle", "events"]},
    {"struct": "MigrationCapabilityStatus", "data": {"capability": "MigrationCapability", "state": "bool"}},
    {"command": "migrate-set-capabilities", "data": {"capabilities": ["MigrationCapabilityStatus"]}},
    {"command": "set-params", "data": {"*multifd-channels": "uint8", "*x-checkpoint-delay": "uint32",
                                       "*max-bandwidth": "size", "*calc-time": "int", "*small": "int8",
                                       "*ratio": "number", "*tls-creds": "StrOrNull"}},
    {"alternate": "StrOrNull", "data": {"s": "str", "n": "null"}},
    {"command": "query-status", "returns": "StatusInfo"},
    {"struct": "StatusInfo", "data": {"running": "bool", "status": "str"}},
    {"event": "STOP"},
    {"event": "RESET", "data": {"guest": "bool", "reason": "str"}},
]


@pytest.fixture(scope="module")
def schema() -> Schema:
    return Schema(SCHEMA)


def error(schema: Schema, command: str, args: dict) -> str:
    with pytest.raises(QapiError) as ei:
        schema.check_args(command, args)
    assert ei.value.cls == "GenericError"
    return ei.value.desc


def chan(addr: dict, **extra) -> dict:
    return {"channels": [{"channel-type": "main", "addr": addr, **extra}]}


@pytest.mark.parametrize("args,message", [
    ({"channels": {}}, "Invalid parameter type for 'channels', expected: array"),
    ({"channels": [1]}, "Invalid parameter type for 'channels[0]', expected: object"),
    ({"channels": [{}]}, "Parameter 'channels[0].channel-type' is missing"),
    ({"channels": [{"channel-type": "x"}]}, "Parameter 'channel-type' does not accept value 'x'"),
    ({"channels": [{"channel-type": "main"}]}, "Parameter 'channels[0].addr' is missing"),
    (chan({}), "Parameter 'channels[0].addr.transport' is missing"),
    (chan({"transport": "foo"}), "Parameter 'transport' does not accept value 'foo'"),
    (chan({"transport": "socket"}), "Parameter 'channels[0].addr.type' is missing"),
    (chan({"transport": "socket", "type": "bogus"}), "Parameter 'type' does not accept value 'bogus'"),
    (chan({"transport": "socket", "type": "inet", "host": "h", "port": 1050}),
     "Invalid parameter type for 'channels[0].addr.port', expected: string"),
    (chan({"transport": "socket", "type": "inet", "port": "1"}), "Parameter 'channels[0].addr.host' is missing"),
    (chan({"transport": "socket", "type": "inet", "host": "h", "port": "1", "to": 70000}),
     "Parameter 'to' expects uint16_t"),
    (chan({"transport": "socket", "type": "inet", "host": "h", "port": "1", "to": "x"}),
     "Parameter 'channels[0].addr.to' expects uint64"),
    (chan({"transport": "file", "filename": "/f"}), "Parameter 'channels[0].addr.offset' is missing"),
    (chan({"transport": "file", "filename": "/f", "offset": "0x1000"}),
     "Parameter 'channels[0].addr.offset' expects uint64"),
    (chan({"transport": "exec", "args": "ls"}), "Invalid parameter type for 'channels[0].addr.args', expected: array"),
    (chan({"transport": "exec", "args": ["ls", 1]}),
     "Invalid parameter type for 'channels[0].addr.args[1]', expected: string"),
    (chan({"transport": "exec", "args": [], "foo": 1}), "Parameter 'channels[0].addr.foo' is unexpected"),
    (chan({"transport": "exec", "args": []}, foo=1), "Parameter 'channels[0].foo' is unexpected"),
    ({"uri": None}, "Invalid parameter type for 'uri', expected: string"),
    ({"foo": 1, "uri": 1}, "Invalid parameter type for 'uri', expected: string"),  # known members first
    ({"detach": "yes"}, "Invalid parameter type for 'detach', expected: boolean"),
    ({"bogus": True}, "Parameter 'bogus' is unexpected"),
])
def test_visitor_messages_for_migrate(schema, args, message):
    assert error(schema, "migrate", args) == message


@pytest.mark.parametrize("args,message", [
    ({}, "Parameter 'capabilities' is missing"),
    ({"capabilities": [{"capability": "foo", "state": True}]}, "Parameter 'capability' does not accept value 'foo'"),
    ({"capabilities": [{"capability": "xbzrle"}]}, "Parameter 'capabilities[0].state' is missing"),
    ({"capabilities": [{"capability": "xbzrle", "state": True, "zz": 1}, {"capability": "bad", "state": True}]},
     "Parameter 'capabilities[0].zz' is unexpected"),  # element 0 finishes (with its check) before element 1
    ({"capabilities": [{"capability": "xbzrle", "state": True, "x": 1}]}, "Parameter 'capabilities[0].x' is unexpected"),
])
def test_visitor_messages_for_capabilities(schema, args, message):
    assert error(schema, "migrate-set-capabilities", args) == message


@pytest.mark.parametrize("args,message", [
    ({"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
    ({"multifd-channels": -1}, "Parameter 'multifd-channels' expects uint8_t"),
    ({"x-checkpoint-delay": 1 << 32}, "Parameter 'x-checkpoint-delay' expects uint32_t"),
    ({"max-bandwidth": 1.5}, "Parameter 'max-bandwidth' expects uint64"),
    ({"max-bandwidth": 1 << 64}, "Parameter 'max-bandwidth' expects uint64"),
    ({"calc-time": "x"}, "Invalid parameter type for 'calc-time', expected: integer"),
    ({"calc-time": 1.5}, "Invalid parameter type for 'calc-time', expected: integer"),
    ({"calc-time": (1 << 64) - 1}, "Invalid parameter type for 'calc-time', expected: integer"),
    ({"small": 128}, "Parameter 'small' expects int8_t"),
    ({"ratio": "1"}, "Invalid parameter type for 'ratio', expected: number"),
    ({"ratio": True}, "Invalid parameter type for 'ratio', expected: number"),
    ({"tls-creds": 5}, "Invalid parameter type for 'tls-creds', expected: StrOrNull"),
])
def test_integer_number_and_alternate_messages(schema, args, message):
    assert error(schema, "set-params", args) == message


def test_accepted_values_are_converted(schema):
    assert schema.check_args("set-params", {"max-bandwidth": -1, "ratio": 2, "tls-creds": None}) == {
        "max-bandwidth": (1 << 64) - 1, "ratio": 2.0, "tls-creds": None}
    got = schema.check_args("migrate", chan({"transport": "socket", "type": "unix", "path": "/s"}))
    assert got["channels"][0]["addr"] == {"transport": "socket", "type": "unix", "path": "/s"}
    assert schema.check_args("query-status", {}) == {}
    assert error(schema, "query-status", {"x": 1}) == "Parameter 'x' is unexpected"


def test_schema_errors_are_caught_when_declared():
    with pytest.raises(SchemaError):
        Schema([{"struct": "A", "data": {"x": "Nope"}}])
    with pytest.raises(SchemaError):
        Schema([{"enum": "E", "data": ["a"]}, {"enum": "E", "data": ["b"]}])
    with pytest.raises(SchemaError):
        Schema([{"struct": "B", "data": {"k": "str"}},
                {"union": "U", "base": "B", "discriminator": "k", "data": {}}])  # discriminator must be an enum


def test_introspection_shape(schema):
    infos = schema.introspect()
    by_name = {i["name"]: i for i in infos}
    status = by_name["query-status"]
    assert status["meta-type"] == "command"
    ret = by_name[status["ret-type"]]
    assert ret["meta-type"] == "object"
    assert [m["name"] for m in ret["members"]] == ["running", "status"]
    assert by_name["bool"] == {"name": "bool", "meta-type": "builtin", "json-type": "boolean"}
    assert by_name["STOP"]["meta-type"] == "event"
    # every referenced type is described, and names other than builtins are masked
    for info in infos:
        for key in ("arg-type", "ret-type", "element-type"):
            if key in info:
                assert info[key] in by_name
        if info["meta-type"] not in ("command", "event", "builtin"):
            assert info["name"].isdigit() or (info["meta-type"] == "array" and info["name"].startswith("["))
