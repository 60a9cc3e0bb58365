"""Property tests for emu.migration.address (spec/migration-qapi.md §4.1, §5, §6).

1. Socket addresses: generated ``SocketAddress`` values (IPv4 dotted quads, IPv6 in compressed,
   exploded and scoped forms, DNS-like names, the empty listen-on-all host, free-form ports; unix
   paths with commas, colons and spaces; vsock cid/port; fd names) survive format -> parse, and
   canonical strings assembled here piece by piece survive parse -> format.
2. The ``uri``/``channels`` preamble: argument sets of every shape (no channels, an empty list,
   one or many channels of every transport, with or without a uri, valid or invalid uris) and
   random capabilities.  The expected outcome is computed here from the rules of §4.1 and §6,
   never by asking the code under test.
"""
from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.migration.address import (
    Exec,
    Fd,
    File,
    Inet,
    MigrationAddress,
    MigrationAddressError,
    Rdma,
    Socket,
    SocketAddress,
    Unix,
    Vsock,
    format_socket_address,
    parse_migration_uri,
    parse_socket_address,
    resolve_migrate_args,
)
from emu.migration.schema import SCHEMA
from emu.monitor.qapi import Schema
from emu.monitor.schema_core import SCHEMA as CORE

SCHEMA_ALL = Schema(CORE + SCHEMA)
PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NEED_EITHER = "need either 'uri' or 'channels' argument"
MORE_THAN_ONE = "Channel list has more than one entries"
SEEKABLE = "Migration requires seekable transport (e.g. file)"
MULTI = "Migration requires multi-channel URIs (e.g. tcp)"
EXTRA_FDS = "Migration requires a transport that allows for extra fds (e.g. file)"

# ---- generators --------------------------------------------------------------------------------

no_nul = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
_v6 = st.integers(0, (1 << 128) - 1).map(ipaddress.IPv6Address)
ipv6 = st.one_of(
    _v6.map(lambda a: a.compressed),
    _v6.map(lambda a: a.exploded),
    st.tuples(_v6, st.sampled_from(["eth0", "lo", "1", "enp0s31f6"])).map(lambda t: f"{t[0].compressed}%{t[1]}"),
    st.just("::"), st.just("::1"), st.just("::ffff:127.0.0.1"),
)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
dns = st.lists(label, min_size=1, max_size=5).map(".".join).filter(lambda h: len(h) <= 64)
host = st.one_of(ipv4, ipv6, dns, st.just(""))
port = st.one_of(st.integers(0, 65535).map(str), st.text(no_nul.filter(lambda c: c != ","), min_size=1, max_size=32))
opt_bool = st.one_of(st.none(), st.booleans())
inet = st.builds(Inet, host, port, st.none(), st.one_of(st.none(), st.integers(0, 65535)), opt_bool, opt_bool,
                 opt_bool, opt_bool)
unix = st.builds(Unix, st.one_of(st.text(no_nul, min_size=1, max_size=40),
                                 st.from_regex(r"/[a-z ,:]{1,20}(,[a-z=]{1,8})?", fullmatch=True)))
vsock = st.builds(Vsock, st.one_of(st.integers(0, 2**32 - 1).map(str),
                                   st.text(no_nul.filter(lambda c: c != ":"), min_size=1, max_size=32)),
                  st.one_of(st.integers(0, 2**32 - 1).map(str),
                            st.text(no_nul.filter(lambda c: c != ","), min_size=1, max_size=32)))
fd = st.builds(Fd, st.one_of(st.integers(0, 1023).map(str), st.text(no_nul, min_size=1, max_size=20)))
socket_address = st.one_of(inet, unix, vsock, fd)


# ---- 1. round trips ----------------------------------------------------------------------------

@PROFILE
@given(socket_address)
def test_format_then_parse(addr: SocketAddress) -> None:
    text = format_socket_address(addr)
    assert parse_socket_address(text) == addr
    assert format_socket_address(parse_socket_address(text)) == text
    assert parse_migration_uri(text) == Socket(addr)


@st.composite
def canonical_strings(draw: Any) -> tuple[str, SocketAddress]:
    """A canonical string built from its pieces, and the address it names (both computed here)."""
    kind = draw(st.sampled_from(["inet", "unix", "vsock", "fd"]))
    if kind == "inet":
        h, p = draw(host), draw(st.integers(0, 65535).map(str))
        shown = f"[{h}]" if ":" in h else h
        opts, kw = "", {}
        if draw(st.booleans()):
            to = draw(st.integers(0, 65535))
            opts, kw["to"] = opts + f",to={to}", to
        for name in ("ipv4", "ipv6", "keep-alive", "mptcp"):
            value = draw(opt_bool)
            if value is not None:
                opts += f",{name}={'on' if value else 'off'}"
                kw[name.replace("-", "_")] = value
        return f"tcp:{shown}:{p}{opts}", Inet(h, p, **kw)
    if kind == "unix":
        path = draw(unix).path
        return f"unix:{path}", Unix(path)
    if kind == "vsock":
        cid, p = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        return f"vsock:{cid}:{p}", Vsock(str(cid), str(p))
    name = draw(fd).str
    return f"fd:{name}", Fd(name)


@PROFILE
@given(canonical_strings())
def test_parse_then_format(case: tuple[str, SocketAddress]) -> None:
    text, expected = case
    assert parse_socket_address(text) == expected
    assert format_socket_address(parse_socket_address(text)) == text


@PROFILE
@given(st.one_of(ipv4, dns).filter(lambda h: h != ""), st.integers(0, 65535))
def test_unbracketed_ipv4_and_names_and_bracketed_ipv6_agree(h: str, p: int) -> None:
    # an IPv4/DNS host written in brackets parses to the same host
    assert parse_socket_address(f"tcp:[{h}]:{p}") == parse_socket_address(f"tcp:{h}:{p}") == Inet(h, str(p))


@PROFILE
@given(st.text(no_nul.filter(lambda c: c != ":"), min_size=65, max_size=80).filter(lambda h: not h.startswith("[")),
       st.integers(0, 65535))
def test_host_longer_than_64_is_rejected(h: str, p: int) -> None:
    rest = f"{h}:{p}"
    message = f"error parsing address '{rest}'"
    try:
        parse_socket_address("tcp:" + rest)
    except MigrationAddressError as e:
        assert e.message == message
    else:
        raise AssertionError("accepted a host of more than 64 characters")


# ---- 2. the uri/channels preamble ----------------------------------------------------------------

@st.composite
def channel_cases(draw: Any) -> tuple[dict[str, Any], MigrationAddress]:
    """A MigrationChannel dict and the typed address it names."""
    transport = draw(st.sampled_from(["socket", "exec", "rdma", "file"]))
    if transport == "socket":
        kind = draw(st.sampled_from(["inet", "unix", "vsock", "fd"]))
        if kind == "inet":
            h, p = draw(host), draw(port)
            return {"transport": "socket", "type": "inet", "host": h, "port": p}, Socket(Inet(h, p))
        if kind == "unix":
            path = draw(unix).path
            return {"transport": "socket", "type": "unix", "path": path}, Socket(Unix(path))
        if kind == "vsock":
            v = draw(vsock)
            return {"transport": "socket", "type": "vsock", "cid": v.cid, "port": v.port}, Socket(v)
        name = draw(fd).str
        return {"transport": "socket", "type": "fd", "str": name}, Socket(Fd(name))
    if transport == "exec":
        args = draw(st.lists(st.text(no_nul, max_size=10), max_size=4))
        return {"transport": "exec", "args": args}, Exec(args)
    if transport == "rdma":
        h, p = draw(host), draw(port)
        return {"transport": "rdma", "host": h, "port": p}, Rdma(Inet(h, p))
    name, offset = draw(st.text(no_nul, max_size=20)), draw(st.integers(0, 2**64 - 1))
    return {"transport": "file", "filename": name, "offset": offset}, File(name, offset)


@st.composite
def uri_cases(draw: Any) -> tuple[str, MigrationAddress | str]:
    """A uri and either the address it names or the error text it gives (computed here)."""
    kind = draw(st.sampled_from(["socket", "exec", "rdma", "file", "file-offset", "file-hex", "bad-offset",
                                 "unknown", "no-port"]))
    if kind == "socket":
        text, addr = draw(canonical_strings())
        return text, Socket(addr)
    if kind == "exec":
        cmd = draw(st.text(no_nul, max_size=20))
        return "exec:" + cmd, Exec(["/bin/sh", "-c", cmd])
    if kind == "rdma":
        h, p = draw(st.one_of(ipv4, dns)), draw(st.integers(0, 65535))
        return f"rdma:{h}:{p}", Rdma(Inet(h, str(p)))
    path = draw(st.text(no_nul, max_size=20).filter(lambda s: ",offset=" not in s))
    if kind == "file":
        return "file:" + path, File(path, 0)
    if kind == "file-offset":
        n = draw(st.integers(0, 2**64 - 1))
        return f"file:{path},offset={n}", File(path, n)
    if kind == "file-hex":
        n = draw(st.integers(0, 2**64 - 1))
        return f"file:{path},offset={n:#x}", File(path, n)
    if kind == "bad-offset":
        bad = draw(st.sampled_from(["0x20M", "", "x", "1.5", "0x1.8", "12q", "1e3"]))
        return f"file:{path},offset={bad}", f"file URI has bad offset {bad}: Invalid argument"
    if kind == "no-port":
        h = draw(st.one_of(ipv4, dns))
        return f"tcp:{h}", f"error parsing address '{h}'"
    scheme = draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(
        lambda s: s not in ("exec", "rdma", "tcp", "unix", "vsock", "fd", "file")))
    uri = f"{scheme}:{draw(st.text(no_nul, max_size=10))}"
    return uri, f"unknown migration protocol: {uri}"


caps_strategy = st.fixed_dictionaries({}, optional={
    name: st.booleans() for name in ("multifd", "mapped-ram", "postcopy-preempt", "postcopy-ram", "xbzrle")})


def expected_compat(addr: MigrationAddress, caps: dict[str, bool], direct_io: bool) -> str | None:
    """§6 written out as a table of transports."""
    mapped, multifd = caps.get("mapped-ram", False), caps.get("multifd", False)
    is_file = addr.transport == "file"
    if mapped and not is_file:
        return SEEKABLE
    if multifd or caps.get("postcopy-preempt", False):
        if addr.transport == "socket":
            ok = addr.socket.type in ("inet", "unix", "vsock")  # type: ignore[attr-defined]
        else:
            ok = is_file and mapped
        if not ok:
            return MULTI
    if multifd and direct_io and not is_file:
        return EXTRA_FDS
    return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), st.just([]), st.lists(channel_cases(), min_size=1, max_size=3)),
       st.one_of(st.none(), uri_cases()), caps_strategy, st.booleans(), st.booleans(),
       st.sampled_from(["migrate", "migrate-incoming"]))
def test_preamble_outcome(channels: Any, uri: Any, caps: dict[str, bool], direct_io: bool, extra: bool,
                          command: str) -> None:
    args: dict[str, Any] = {}
    if channels is not None:
        args["channels"] = [{"channel-type": "main", "addr": addr} for addr, _ in channels]
    if uri is not None:
        args["uri"] = uri[0]
    if extra:
        args["exit-on-error" if command == "migrate-incoming" else "resume"] = False
    args = SCHEMA_ALL.check_args(command, args)  # every generated channel is schema-valid

    # the expected outcome, from the rules
    has_uri, has_channels = uri is not None, bool(channels)
    expected: MigrationAddress | str
    if has_uri == has_channels:
        expected = NEED_EITHER
    elif has_channels and len(channels) > 1:
        expected = MORE_THAN_ONE
    else:
        expected = channels[0][1] if has_channels else uri[1]
        if not isinstance(expected, str):
            expected = expected_compat(expected, caps, direct_io) or expected

    try:
        got: MigrationAddress | str = resolve_migrate_args(args, command == "migrate-incoming", caps, direct_io)
    except MigrationAddressError as e:
        got = e.message
    assert got == expected
