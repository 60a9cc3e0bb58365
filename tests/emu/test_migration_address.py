"""emu.migration.address and emu.migration.schema against spec/migration-qapi.md §2, §3, §4.1, §5, §6.

Every error text of the spec's tables is checked verbatim; the worked examples of the spec and of
QEMU's own schema documentation are resolved both from ``uri`` and from ``channels`` and must give
the same typed address.
"""
from __future__ import annotations

from typing import Any

import pytest

from emu.errors import QapiError
from emu.migration.address import (
    Exec,
    Fd,
    File,
    Inet,
    MigrationAddressError,
    Rdma,
    Socket,
    Unix,
    Vsock,
    check_transport_compatible,
    format_socket_address,
    from_channel,
    parse_migration_uri,
    parse_size,
    parse_socket_address,
    resolve_migrate_args,
    socket_uri,
    to_channel,
    to_socket_address_info,
)
from emu.migration.schema import SCHEMA
from emu.monitor.qapi import Schema
from emu.monitor.schema_core import SCHEMA as CORE

NEED_EITHER = "need either 'uri' or 'channels' argument"
MORE_THAN_ONE = "Channel list has more than one entries"
SEEKABLE = "Migration requires seekable transport (e.g. file)"
MULTI = "Migration requires multi-channel URIs (e.g. tcp)"
EXTRA_FDS = "Migration requires a transport that allows for extra fds (e.g. file)"

SCHEMA_ALL = Schema(CORE + SCHEMA)


def inet_channel(host: str = "127.0.0.1", port: str = "0", **extra: Any) -> dict[str, Any]:
    return {"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": host, "port": port,
                                             **extra}}


def error_of(fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(MigrationAddressError) as info:
        fn(*args, **kw)
    assert info.value.desc == info.value.message == str(info.value)
    return info.value.message


# ---- §5 URI grammar errors (and the 9.1 column of §13) -----------------------------------------

URI_ERRORS = [
    ("foo:bar", "unknown migration protocol: foo:bar"),
    ("", "unknown migration protocol: "),
    ("TCP:1.2.3.4:5", "unknown migration protocol: TCP:1.2.3.4:5"),
    ("127.0.0.1:4444", "unknown migration protocol: 127.0.0.1:4444"),
    ("tcp:localhost", "error parsing address 'localhost'"),
    ("tcp:", "error parsing address ''"),
    ("tcp:127.0.0.1:", "error parsing address '127.0.0.1:'"),
    ("tcp:" + "h" * 65 + ":1", "error parsing address '" + "h" * 65 + ":1'"),
    ("tcp::", "error parsing port in address ':'"),
    ("tcp::,ipv4", "error parsing port in address ':,ipv4'"),
    ("tcp:[::1", "error parsing IPv6 address '[::1'"),
    ("tcp:[::1]", "error parsing IPv6 address '[::1]'"),
    ("tcp:[::1]:", "error parsing IPv6 address '[::1]:'"),
    ("tcp:[]:1", "error parsing IPv6 address '[]:1'"),
    ("tcp:1.2.3.4:5,to=x", "error parsing to= argument"),
    ("tcp:1.2.3.4:5,to=5x", "error parsing to= argument"),
    ("tcp:1.2.3.4:5,ipv4=foo", "error parsing 'ipv4' flag '=foo'"),
    ("tcp:1.2.3.4:5,ipv6=on,,x", "error parsing 'ipv6' flag '=on,,x'"),
    ("tcp:1.2.3.4:5,ipv4=foo,bar", "error parsing 'ipv4' flag '=foo,bar'"),
    ("tcp:1.2.3.4:5,keep-alive=yes", "error parsing 'keep-alive' flag '=yes'"),
    ("tcp:1.2.3.4:5,mptcp=1", "error parsing 'mptcp' flag '=1'"),
    ("unix:", "invalid Unix socket address"),
    ("fd:", "invalid file descriptor address"),
    ("vsock:", "error parsing address ''"),
    ("vsock:1", "error parsing address '1'"),
    ("vsock:1:", "error parsing address '1:'"),
    ("vsock:1:2,x", "trailing characters in address '1:2,x'"),
    ("vsock:1:" + "2" * 33, "trailing characters in address '1:" + "2" * 33 + "'"),
    ("rdma:localhost", "error parsing address 'localhost'"),
    ("rdma:[::1]", "error parsing IPv6 address '[::1]'"),
    ("file:/x,offset=0x20M", "file URI has bad offset 0x20M: Invalid argument"),
    ("file:/tmp/migfile,offset=", "file URI has bad offset : Invalid argument"),
    ("file:/x,offset=12q", "file URI has bad offset 12q: Invalid argument"),
    ("file:/x,offset=1.5", "file URI has bad offset 1.5: Invalid argument"),
    ("file:/x,offset=4096,offset=1", "file URI has bad offset 4096,offset=1: Invalid argument"),
    ("file:/x,offset=-1", "file URI has bad offset -1: Numerical result out of range"),
    ("file:/x,offset=18446744073709551616", "file URI has bad offset 18446744073709551616: Numerical result out of range"),
    ("file:/x,offset=16E", "file URI has bad offset 16E: Numerical result out of range"),
]


@pytest.mark.parametrize("uri,message", URI_ERRORS)
def test_uri_errors(uri: str, message: str) -> None:
    assert error_of(parse_migration_uri, uri) == message
    # the same text through the preamble, for both commands, before any compatibility check
    for incoming in (False, True):
        assert error_of(resolve_migrate_args, {"uri": uri}, incoming, {"mapped-ram": True}) == message


URI_OK = [
    ("tcp:127.0.0.1:0", Socket(Inet("127.0.0.1", "0"))),
    ("tcp:0:4446", Socket(Inet("0", "4446"))),
    ("tcp::0", Socket(Inet("", "0"))),
    ("tcp:[::1]:4444", Socket(Inet("::1", "4444"))),
    ("tcp:[fe80::1%eth0]:4444", Socket(Inet("fe80::1%eth0", "4444"))),
    ("tcp:127.0.0.1:1,foo", Socket(Inet("127.0.0.1", "1"))),  # unknown options are ignored
    ("tcp:h:1,ipv6,to=9,ipv4=off", Socket(Inet("h", "1", to=9, ipv4=False, ipv6=True))),
    ("tcp:h:1,keep-alive=on,mptcp", Socket(Inet("h", "1", keep_alive=True, mptcp=True))),
    ("tcp:h:1,to=70000", Socket(Inet("h", "1", to=70000 & 0xFFFF))),  # %d stored in a uint16
    ("tcp:127.0.0.1:" + "1" * 40, Socket(Inet("127.0.0.1", "1" * 32))),  # %32[^,] cuts the port
    ("tcp:h:1:2", Socket(Inet("h", "1:2"))),
    ("unix:/tmp/migsocket", Socket(Unix("/tmp/migsocket"))),
    ("unix:/tmp/mig.sock,foo", Socket(Unix("/tmp/mig.sock,foo"))),  # options stay in the path
    ("vsock:3:1234", Socket(Vsock("3", "1234"))),
    ("vsock:1:2:3", Socket(Vsock("1", "2:3"))),  # fails only at connect time
    ("fd:fd-mig", Socket(Fd("fd-mig"))),
    ("fd:42", Socket(Fd("42"))),
    ("exec:cat > /tmp/migfile", Exec(["/bin/sh", "-c", "cat > /tmp/migfile"])),
    ("exec:", Exec(["/bin/sh", "-c", ""])),
    ("rdma:10.12.34.9:1050", Rdma(Inet("10.12.34.9", "1050"))),
    ("rdma:[::1]:1050,ipv6", Rdma(Inet("::1", "1050", ipv6=True))),
    ("file:/tmp/migfile", File("/tmp/migfile", 0)),
    ("file:/tmp/migfile,offset=4096", File("/tmp/migfile", 4096)),
    ("file:/dev/fdset/1,offset=4096", File("/dev/fdset/1", 4096)),
    ("file:/x,offset=0x1000", File("/x", 0x1000)),
    ("file:/x,offset=0X1b", File("/x", 27)),
    ("file:/x,offset=1k", File("/x", 1024)),
    ("file:/x,offset=1.5M", File("/x", 1536 * 1024)),
    ("file:/x,offset=.5k", File("/x", 512)),
    ("file:/x,offset=1.k", File("/x", 1024)),
    ("file:/x,offset=2B", File("/x", 2)),
    ("file:/x,offset= 7", File("/x", 7)),
    ("file:/x,offset=15E", File("/x", 15 << 60)),
    ("file:a,b,offset=1", File("a,b", 1)),
    ("file:", File("", 0)),
]


@pytest.mark.parametrize("uri,expected", URI_OK)
def test_uri_parses(uri: str, expected: Any) -> None:
    assert parse_migration_uri(uri) == expected
    assert resolve_migrate_args({"uri": uri}) == expected


def test_parse_size_messages() -> None:
    assert parse_size("4096") == 4096
    for bad, text in (("0x20M", "Invalid argument"), ("-1", "Numerical result out of range")):
        with pytest.raises(ValueError, match=text):
            parse_size(bad)


# ---- §4.1 preamble -----------------------------------------------------------------------------

PREAMBLE = [
    ({}, NEED_EITHER),
    ({"channels": []}, NEED_EITHER),
    ({"detach": True, "resume": False}, NEED_EITHER),
    ({"uri": "tcp:127.0.0.1:0", "channels": [inet_channel()]}, NEED_EITHER),  # validate_uri/channels/both_set
    ({"uri": "", "channels": [inet_channel()]}, NEED_EITHER),  # an empty uri is still present
    ({"uri": "foo:", "channels": [inet_channel()] * 2}, NEED_EITHER),  # first check wins
    ({"channels": [inet_channel(), inet_channel()]}, MORE_THAN_ONE),
    ({"channels": [inet_channel(port="1"), inet_channel(port="2"), inet_channel(port="3")]}, MORE_THAN_ONE),
]


@pytest.mark.parametrize("args,message", PREAMBLE)
@pytest.mark.parametrize("incoming", [False, True])
def test_preamble_errors(args: dict[str, Any], message: str, incoming: bool) -> None:
    assert error_of(resolve_migrate_args, args, incoming, {"mapped-ram": True, "multifd": True}) == message


def test_uri_with_empty_channel_list_uses_the_uri() -> None:
    assert resolve_migrate_args({"uri": "unix:/s", "channels": []}) == Socket(Unix("/s"))


def test_more_than_one_before_any_channel_content() -> None:
    # the second entry's transport would fail the compatibility check; the count check is first
    channels = [inet_channel(), {"channel-type": "main", "addr": {"transport": "exec", "args": []}}]
    assert error_of(resolve_migrate_args, {"channels": channels}, False, {"multifd": True}) == MORE_THAN_ONE


# ---- §6 transport compatibility ----------------------------------------------------------------

COMPAT = [
    # (uri, caps, direct_io, expected message or None)
    ("tcp:h:1", {}, False, None),
    ("exec:cat", {"xbzrle": True, "postcopy-ram": True}, False, None),
    ("tcp:h:1", {"mapped-ram": True}, False, SEEKABLE),
    ("unix:/s", {"mapped-ram": True}, False, SEEKABLE),
    ("fd:x", {"mapped-ram": True}, False, SEEKABLE),
    ("exec:cat", {"mapped-ram": True}, False, SEEKABLE),
    ("rdma:h:1", {"mapped-ram": True}, False, SEEKABLE),
    ("file:/f", {"mapped-ram": True}, False, None),
    ("exec:cat", {"mapped-ram": True, "multifd": True}, False, SEEKABLE),  # seekable is checked first
    ("tcp:h:1", {"multifd": True}, False, None),
    ("unix:/s", {"multifd": True}, False, None),
    ("vsock:1:2", {"multifd": True}, False, None),
    ("fd:x", {"multifd": True}, False, MULTI),
    ("exec:cat", {"multifd": True}, False, MULTI),
    ("rdma:h:1", {"multifd": True}, False, MULTI),
    ("file:/f", {"multifd": True}, False, MULTI),
    ("file:/f", {"multifd": True, "mapped-ram": True}, False, None),
    ("tcp:h:1", {"postcopy-preempt": True, "postcopy-ram": True}, False, None),
    ("fd:x", {"postcopy-preempt": True}, False, MULTI),
    ("exec:cat", {"postcopy-preempt": True}, False, MULTI),
    ("file:/f", {"postcopy-preempt": True}, False, MULTI),
    ("file:/f", {"postcopy-preempt": True, "mapped-ram": True}, False, None),
    ("tcp:h:1", {"multifd": False, "mapped-ram": False}, True, None),
    ("tcp:h:1", {"multifd": True}, True, EXTRA_FDS),
    ("unix:/s", {"multifd": True}, True, EXTRA_FDS),
    ("file:/f", {"multifd": True, "mapped-ram": True}, True, None),
    ("file:/f", {"multifd": True}, True, MULTI),  # multi-channel is checked before extra fds
]


@pytest.mark.parametrize("uri,caps,direct_io,message", COMPAT)
def test_transport_compatibility(uri: str, caps: dict[str, bool], direct_io: bool, message: str | None) -> None:
    addr = parse_migration_uri(uri)
    channels = [to_channel(addr)]
    for args in ({"uri": uri}, {"channels": channels}):
        for incoming in (False, True):
            if message is None:
                assert resolve_migrate_args(args, incoming, caps, direct_io) == addr
            else:
                assert error_of(resolve_migrate_args, args, incoming, caps, direct_io) == message
    if message is None:
        check_transport_compatible(addr, caps, direct_io)
    else:
        assert error_of(check_transport_compatible, addr, caps, direct_io) == message


# ---- worked examples: the uri and the channels form name the same address ------------------------

EQUIVALENT = [
    # QEMU's own schema examples for migrate / migrate-incoming
    ("tcp:10.12.34.9:1050", {"transport": "socket", "type": "inet", "host": "10.12.34.9", "port": "1050"}),
    ("rdma:10.12.34.9:1050", {"transport": "rdma", "host": "10.12.34.9", "port": "1050"}),
    ("file:/tmp/migfile,offset=4096", {"transport": "file", "filename": "/tmp/migfile", "offset": 4096}),
    ("file:/tmp/migfile", {"transport": "file", "filename": "/tmp/migfile", "offset": 0}),
    ("exec:/bin/nc -p 6000 /some/sock", {"transport": "exec", "args": ["/bin/sh", "-c", "/bin/nc -p 6000 /some/sock"]}),
    # the upstream tests
    ("tcp:127.0.0.1:0", {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "0"}),
    ("unix:/tmp/migsocket", {"transport": "socket", "type": "unix", "path": "/tmp/migsocket"}),
    ("fd:fd-mig", {"transport": "socket", "type": "fd", "str": "fd-mig"}),
    ("vsock:2:4444", {"transport": "socket", "type": "vsock", "cid": "2", "port": "4444"}),
    ("tcp:[::1]:4444,ipv6=on,to=4450", {"transport": "socket", "type": "inet", "host": "::1", "port": "4444",
                                          "to": 4450, "ipv6": True}),
]


@pytest.mark.parametrize("uri,addr", EQUIVALENT)
@pytest.mark.parametrize("command", ["migrate", "migrate-incoming"])
def test_uri_and_channels_equivalent(uri: str, addr: dict[str, Any], command: str) -> None:
    args = SCHEMA_ALL.check_args(command, {"channels": [{"channel-type": "main", "addr": addr}]})
    from_channels = resolve_migrate_args(args, command == "migrate-incoming")
    from_uri = resolve_migrate_args(SCHEMA_ALL.check_args(command, {"uri": uri}), command == "migrate-incoming")
    assert from_channels == from_uri
    assert hash(from_channels) == hash(from_uri)
    assert from_channel(args["channels"][0]) == from_uri
    assert to_channel(from_uri) == {"channel-type": "main", "addr": addr}


def test_exec_channel_keeps_argv() -> None:
    args = ["/bin/nc", "-p", "6000", "/some/sock"]
    addr = from_channel({"channel-type": "main", "addr": {"transport": "exec", "args": args}})
    assert addr == Exec(args)
    assert isinstance(addr, Exec) and addr.args == tuple(args)
    assert addr != parse_migration_uri("exec:/bin/nc -p 6000 /some/sock")


def test_typed_values() -> None:
    assert Inet("h", "1") == Inet("h", "1") and Inet("h", "1") != Inet("h", "1", ipv4=True)
    assert Unix("/a") != Fd("/a") and Socket(Unix("/a")) != Unix("/a")
    assert repr(Inet("h", "1", ipv4=True)) == "Inet(host='h', port='1', ipv4=True)"
    assert repr(Socket(Fd("x"))) == "Socket(socket=Fd(str='x'))"
    assert {Socket(Vsock("1", "2")), Socket(Vsock("1", "2"))} == {Socket(Vsock("1", "2"))}
    assert not hasattr(Inet("h", "1"), "__dict__")


# ---- socket address strings and dicts -----------------------------------------------------------

def test_socket_address_strings() -> None:
    assert parse_socket_address("tcp:[::1]:4444") == Inet("::1", "4444")
    assert format_socket_address(Inet("::1", "4444")) == "tcp:[::1]:4444"
    assert format_socket_address(Inet("::", "38827", ipv6=True)) == "tcp:[::]:38827,ipv6=on"
    assert socket_uri(Inet("::", "38827", ipv6=True)) == "tcp::::38827"  # QEMU prints no brackets
    assert socket_uri(Inet("127.0.0.1", "41111", ipv4=True)) == "tcp:127.0.0.1:41111"
    assert socket_uri(Vsock("3", "9")) == "vsock:3:9"  # after fe3ba17b (was tcp:)
    assert socket_uri(Unix("/p")) == "unix:/p" and socket_uri(Fd("x")) == "fd:x"
    assert parse_socket_address("localhost:80") == Inet("localhost", "80")  # socket_parse's fallback
    for unwritable in (Inet("h", "1", numeric=True), Inet("h", ""), Inet("h", "1,2"), Inet("a]:b", "1"),
                       Inet("h" * 65, "1"), Unix("/p", abstract=True), Unix(""), Vsock("1:2", "3"), Fd("")):
        with pytest.raises(ValueError):
            format_socket_address(unwritable)


def test_socket_address_info() -> None:
    # the query-migrate transcripts of §14 (member order here is the schema's, not the wire's)
    assert to_socket_address_info(Inet("127.0.0.1", "45723", ipv4=True)) == {
        "type": "inet", "host": "127.0.0.1", "port": "45723", "ipv4": True}
    assert list(to_socket_address_info(Inet("::", "1", numeric=False, to=3, ipv4=False, ipv6=True, keep_alive=True,
                                            mptcp=False))) == [
        "type", "host", "port", "numeric", "to", "ipv4", "ipv6", "keep-alive", "mptcp"]
    assert to_socket_address_info(Unix("/d/mig.sock")) == {"type": "unix", "path": "/d/mig.sock"}
    assert to_socket_address_info(Vsock("3", "4")) == {"type": "vsock", "cid": "3", "port": "4"}
    assert to_socket_address_info(Fd("fd-mig")) == {"type": "fd", "str": "fd-mig"}
    for addr in (Inet("127.0.0.1", "1", ipv4=True), Unix("/x", abstract=True, tight=False), Vsock("1", "2"), Fd("3")):
        info = to_socket_address_info(addr)
        SCHEMA_ALL.visit("SocketAddress", info, "x")
        assert from_channel({"channel-type": "main", "addr": {"transport": "socket", **info}}) == Socket(addr)


# ---- §2 worked channels examples through the QAPI visitor ----------------------------------------

def _inet(**kw: Any) -> dict[str, Any]:
    return {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "0", **kw}


VISITOR = [
    ({"channels": {}}, "Invalid parameter type for 'channels', expected: array"),
    ({"channels": [1]}, "Invalid parameter type for 'channels[0]', expected: object"),
    ({"channels": [{}]}, "Parameter 'channels[0].channel-type' is missing"),
    ({"channels": [{"channel-type": "x", "addr": _inet()}]}, "Parameter 'channel-type' does not accept value 'x'"),
    ({"channels": [{"channel-type": "main"}]}, "Parameter 'channels[0].addr' is missing"),
    ({"channels": [{"channel-type": "main", "addr": {}}]}, "Parameter 'channels[0].addr.transport' is missing"),
    ({"channels": [{"channel-type": "main", "addr": {"transport": "foo"}}]},
     "Parameter 'transport' does not accept value 'foo'"),
    ({"channels": [{"channel-type": "main", "addr": {"transport": "socket", "host": "h", "port": "1"}}]},
     "Parameter 'channels[0].addr.type' is missing"),
    ({"channels": [{"channel-type": "main", "addr": _inet(port=1050)}]},
     "Invalid parameter type for 'channels[0].addr.port', expected: string"),
    ({"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "port": "1"}}]},
     "Parameter 'channels[0].addr.host' is missing"),
    ({"channels": [{"channel-type": "main", "addr": _inet(to=70000)}]}, "Parameter 'to' expects uint16_t"),
    ({"channels": [{"channel-type": "main", "addr": {"transport": "file", "filename": "/tmp/migfile"}}]},
     "Parameter 'channels[0].addr.offset' is missing"),
    ({"channels": [{"channel-type": "main",
                    "addr": {"transport": "file", "filename": "/tmp/migfile", "offset": "0x1000"}}]},
     "Parameter 'channels[0].addr.offset' expects uint64"),
    ({"channels": [{"channel-type": "main", "addr": {"transport": "exec", "args": "cat"}}]},
     "Invalid parameter type for 'channels[0].addr.args', expected: array"),
    ({"channels": [{"channel-type": "main", "addr": _inet(foo=1)}]}, "Parameter 'channels[0].addr.foo' is unexpected"),
    ({"uri": 1}, "Invalid parameter type for 'uri', expected: string"),
    ({"uri": None}, "Invalid parameter type for 'uri', expected: string"),
    ({"uri": "tcp:h:1", "blk": True}, "Parameter 'blk' is unexpected"),
    ({"uri": "tcp:h:1", "inc": True}, "Parameter 'inc' is unexpected"),
]


@pytest.mark.parametrize("args,message", VISITOR)
@pytest.mark.parametrize("command", ["migrate", "migrate-incoming"])
def test_visitor_on_channels(args: dict[str, Any], message: str, command: str) -> None:
    with pytest.raises(QapiError) as info:
        SCHEMA_ALL.check_args(command, args)
    assert info.value.desc == message


def test_visitor_accepts_the_upstream_arguments() -> None:
    postcopy = [{"channel-type": "main", "addr": _inet()}]
    assert SCHEMA_ALL.check_args("migrate-incoming", {"channels": postcopy, "exit-on-error": False})
    assert SCHEMA_ALL.check_args("migrate", {"uri": "tcp:127.0.0.1:0", "channels": postcopy})  # QAPI accepts both
    assert SCHEMA_ALL.check_args("migrate", {}) == {}
    assert SCHEMA_ALL.check_args("migrate", {"resume": True, "detach": True, "uri": "unix:/x"})
    with pytest.raises(QapiError, match="'exit-on-error' is unexpected"):
        SCHEMA_ALL.check_args("migrate", {"uri": "unix:/x", "exit-on-error": True})
    with pytest.raises(QapiError, match="'resume' is unexpected"):
        SCHEMA_ALL.check_args("migrate-incoming", {"uri": "unix:/x", "resume": True})
