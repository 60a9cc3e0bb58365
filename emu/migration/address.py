"""Migration addresses: one typed form for ``uri`` strings and ``channels`` lists (QEMU 9.1).

Both ways of naming a migration endpoint become one ``MigrationAddress``:

* ``parse_migration_uri("tcp:127.0.0.1:4444")`` follows ``migrate_uri_parse`` (``exec:``,
  ``rdma:``, ``tcp:``/``unix:``/``vsock:``/``fd:`` through ``socket_parse``, ``file:PATH[,offset=N]``);
* ``from_channel({"channel-type": "main", "addr": {...}})`` converts a ``MigrationChannel`` that
  the QAPI visitor has already validated;
* ``resolve_migrate_args(args, incoming, caps)`` is the shared preamble of ``migrate``,
  ``migrate-incoming`` and ``migrate-recover`` (spec/migration-qapi.md §4.1): exactly one of
  ``uri``/``channels``, at most one channel, URI parsing, then the transport compatibility check
  (§6).  Every failure is a ``MigrationAddressError`` whose message is QEMU's text.

``parse_socket_address`` / ``format_socket_address`` are exact inverses on the strings QEMU's
``socket_parse`` accepts (``tcp:HOST:PORT[,opts]`` with IPv6 hosts in brackets, ``unix:PATH``,
``vsock:CID:PORT``, ``fd:NAME``).  ``socket_uri`` is QEMU's own lossy ``socket_uri()`` /
``SocketAddress_to_str`` (no brackets, no options).  ``to_socket_address_info`` gives the QAPI
dict that ``query-migrate`` reports in ``socket-address``.

The parsers reproduce QEMU's C parsers (``inet_parse``'s ``sscanf`` field widths, ``strstr``
option search, ``qemu_strtosz``), including their quirks.  Everything here is pure: no socket,
file or process is touched.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from emu.migration.errors import QemuTextError

__all__ = [
    "MigrationAddressError",
    "SocketAddress", "Inet", "Unix", "Vsock", "Fd",
    "MigrationAddress", "Socket", "Exec", "Rdma", "File",
    "parse_socket_address", "format_socket_address", "socket_uri", "parse_inet",
    "parse_migration_uri", "from_channel", "to_channel", "resolve_migrate_args",
    "check_transport_compatible", "to_socket_address_info", "parse_size",
]

UINT64_MAX = (1 << 64) - 1
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale
_STRERROR = {"EINVAL": "Invalid argument", "ERANGE": "Numerical result out of range"}


class MigrationAddressError(QemuTextError, ValueError):
    """A ``uri``/``channels`` error; ``message`` (also ``desc``) is QEMU's exact text.

    QMP reports every one of them as ``GenericError`` with this text as ``desc``.
    """


# ---------------------------------------------------------------------------------------------
# typed values


class _Value:
    """Small immutable-by-convention value object: equality and hash over the slots."""

    __slots__ = ()

    def _key(self) -> tuple[Any, ...]:
        names: tuple[str, ...] = self.__slots__
        return tuple(getattr(self, name) for name in names)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        parts = [f"{name}={getattr(self, name)!r}" for name in names if getattr(self, name) is not None]
        return f"{type(self).__name__}({', '.join(parts)})"


class SocketAddress(_Value):
    """QAPI ``SocketAddress``: a flat union on ``type`` (``inet``, ``unix``, ``vsock``, ``fd``)."""

    __slots__ = ()
    type = ""


class Inet(SocketAddress):
    """``InetSocketAddress``: ``host`` and ``port`` (strings); ``None`` means an absent option."""

    __slots__ = ("host", "port", "numeric", "to", "ipv4", "ipv6", "keep_alive", "mptcp")
    type = "inet"

    def __init__(self, host: str, port: str, numeric: bool | None = None, to: int | None = None,
                 ipv4: bool | None = None, ipv6: bool | None = None, keep_alive: bool | None = None,
                 mptcp: bool | None = None) -> None:
        self.host, self.port = host, port
        self.numeric, self.to, self.ipv4, self.ipv6 = numeric, to, ipv4, ipv6
        self.keep_alive, self.mptcp = keep_alive, mptcp


class Unix(SocketAddress):
    """``UnixSocketAddress``: ``path``; ``abstract`` and ``tight`` are optional (``None``)."""

    __slots__ = ("path", "abstract", "tight")
    type = "unix"

    def __init__(self, path: str, abstract: bool | None = None, tight: bool | None = None) -> None:
        self.path, self.abstract, self.tight = path, abstract, tight


class Vsock(SocketAddress):
    """``VsockSocketAddress``: ``cid`` and ``port``, both strings as in QAPI."""

    __slots__ = ("cid", "port")
    type = "vsock"

    def __init__(self, cid: str, port: str) -> None:
        self.cid, self.port = cid, port


class Fd(SocketAddress):
    """``FdSocketAddress``: ``str`` is a monitor fd name (``getfd``) or a decimal fd number."""

    __slots__ = ("str",)
    type = "fd"

    def __init__(self, name: str) -> None:
        self.str = name


class MigrationAddress(_Value):
    """QAPI ``MigrationAddress``: a flat union on ``transport`` (socket, exec, rdma, file)."""

    __slots__ = ()
    transport = ""


class Socket(MigrationAddress):
    """``transport: socket``: any ``SocketAddress``."""

    __slots__ = ("socket",)
    transport = "socket"

    def __init__(self, socket: SocketAddress) -> None:
        self.socket = socket


class Exec(MigrationAddress):
    """``transport: exec``: ``args`` is the argv (program first), kept as a tuple."""

    __slots__ = ("args",)
    transport = "exec"

    def __init__(self, args: Iterable[str]) -> None:
        self.args = tuple(args)


class Rdma(MigrationAddress):
    """``transport: rdma``: an ``Inet`` address (no ``type`` member on the wire)."""

    __slots__ = ("inet",)
    transport = "rdma"

    def __init__(self, inet: Inet) -> None:
        self.inet = inet


class File(MigrationAddress):
    """``transport: file``: ``filename`` and the byte ``offset`` where the stream starts."""

    __slots__ = ("filename", "offset")
    transport = "file"

    def __init__(self, filename: str, offset: int = 0) -> None:
        self.filename, self.offset = filename, offset


# ---------------------------------------------------------------------------------------------
# QEMU's C parsers


def _scan_set(text: str, i: int, width: int, stop: str) -> tuple[str, int] | None:
    """``sscanf``'s ``%<width>[^<stop>]``: 1..width characters not in ``stop``; None if none."""
    j = i
    end = min(len(text), i + width)
    while j < end and text[j] not in stop:
        j += 1
    return (text[i:j], j) if j > i else None


def _inet_flag(name: str, rest: str) -> bool:
    """``inet_parse_flag``: ``rest`` follows ``,<name>``; empty or ``=on`` / ``=off``."""
    comma = rest.find(",")
    if comma >= 0:
        if rest[comma + 1:comma + 2] == ",":  # 'ipv6=on,,foo' is rejected
            raise MigrationAddressError(f"error parsing '{name}' flag '{rest}'")
        value = rest[:comma]
    else:
        value = rest
    if value in ("", "=on"):
        return True
    if value == "=off":
        return False
    raise MigrationAddressError(f"error parsing '{name}' flag '{rest}'")


_SCANF_INT = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def parse_inet(text: str) -> Inet:
    """QEMU's ``inet_parse``: ``HOST:PORT``, ``[V6HOST]:PORT`` or ``:PORT``, then options.

    The host is at most 64 and the port at most 32 characters (a longer port is cut and the rest
    ignored, as ``sscanf`` does).  Options are found by substring search after the port:
    ``,to=N``, ``,ipv4``, ``,ipv6``, ``,keep-alive``, ``,mptcp`` (each optionally ``=on``/``=off``);
    anything else is ignored.  Errors quote ``text`` as QEMU does.
    """
    if text.startswith(":"):
        scanned = _scan_set(text, 1, 32, ",")
        if scanned is None:
            raise MigrationAddressError(f"error parsing port in address '{text}'")
        host, (port, pos) = "", scanned
    elif text.startswith("["):
        scanned = _scan_set(text, 1, 64, "]")
        if scanned is None or text[scanned[1]:scanned[1] + 2] != "]:":
            raise MigrationAddressError(f"error parsing IPv6 address '{text}'")
        host = scanned[0]
        port_scan = _scan_set(text, scanned[1] + 2, 32, ",")
        if port_scan is None:
            raise MigrationAddressError(f"error parsing IPv6 address '{text}'")
        port, pos = port_scan
    else:
        scanned = _scan_set(text, 0, 64, ":")
        port_scan = None
        if scanned is not None and text[scanned[1]:scanned[1] + 1] == ":":
            port_scan = _scan_set(text, scanned[1] + 1, 32, ",")
        if scanned is None or port_scan is None:
            raise MigrationAddressError(f"error parsing address '{text}'")
        host, (port, pos) = scanned[0], port_scan
    addr = Inet(host, port)
    opts = text[pos:]
    at = opts.find(",to=")
    if at >= 0:
        m = _SCANF_INT.match(opts, at + 4)
        if m is None or opts[m.end():m.end() + 1] not in ("", ","):
            raise MigrationAddressError("error parsing to= argument")
        # %d into an int, stored in a uint16: the low 16 bits (strtol saturates first)
        value = max(-(1 << 63), min((1 << 63) - 1, int(m.group(1))))
        addr.to = value & 0xFFFF
    for name in ("ipv4", "ipv6", "keep-alive", "mptcp"):
        at = opts.find("," + name)
        if at >= 0:
            setattr(addr, name.replace("-", "_"), _inet_flag(name, opts[at + 1 + len(name):]))
    return addr


def _parse_vsock(text: str) -> Vsock:
    """QEMU's ``vsock_parse``: ``CID:PORT``, each at most 32 characters, nothing after."""
    cid = _scan_set(text, 0, 32, ":")
    port = None
    if cid is not None and text[cid[1]:cid[1] + 1] == ":":
        port = _scan_set(text, cid[1] + 1, 32, ",")
    if cid is None or port is None:
        raise MigrationAddressError(f"error parsing address '{text}'")
    if port[1] != len(text):
        raise MigrationAddressError(f"trailing characters in address '{text}'")
    return Vsock(cid[0], port[0])


def parse_socket_address(text: str) -> SocketAddress:
    """QEMU's ``socket_parse``: ``unix:PATH``, ``fd:NAME``, ``vsock:CID:PORT``, ``tcp:HOST:PORT``.

    A string without any of these prefixes is parsed as an inet address, as QEMU does (the
    migration URI parser never passes one).  ``unix:`` keeps everything after the prefix,
    commas included, as the path.
    """
    if text.startswith("unix:"):
        if len(text) == 5:
            raise MigrationAddressError("invalid Unix socket address")
        return Unix(text[5:])
    if text.startswith("fd:"):
        if len(text) == 3:
            raise MigrationAddressError("invalid file descriptor address")
        return Fd(text[3:])
    if text.startswith("vsock:"):
        return _parse_vsock(text[6:])
    if text.startswith("tcp:"):
        return parse_inet(text[4:])
    return parse_inet(text)


def _flag(value: bool) -> str:
    return "on" if value else "off"


def format_socket_address(addr: SocketAddress) -> str:
    """The string ``parse_socket_address`` turns back into exactly ``addr``.

    ``tcp:HOST:PORT`` (``tcp:[HOST]:PORT`` when the host has a ``:`` or starts with ``[``),
    followed by ``,to=N,ipv4=on,ipv6=off,keep-alive=on,mptcp=on`` for the options that are set;
    ``unix:PATH``; ``vsock:CID:PORT``; ``fd:NAME``.  ``ValueError`` if no string parses back to
    ``addr`` (``numeric``, ``abstract`` and ``tight`` have no string form; a field too long for
    QEMU's ``sscanf`` widths, an empty port, a ``]`` in a bracketed host, ...).  For the string
    QEMU itself prints (no brackets, no options), use ``socket_uri``.
    """
    if isinstance(addr, Inet):
        host, port = addr.host, addr.port
        if addr.numeric is not None:
            raise ValueError("'numeric' has no URI form")
        if not 1 <= len(port) <= 32 or "," in port:
            raise ValueError(f"port {port!r} cannot be written in a URI")
        if ":" in host or host.startswith("["):
            if not 1 <= len(host) <= 64 or "]" in host:
                raise ValueError(f"host {host!r} cannot be written in a URI")
            text = f"tcp:[{host}]:{port}"
        else:
            if len(host) > 64:
                raise ValueError(f"host {host!r} cannot be written in a URI")
            text = f"tcp:{host}:{port}"
        if addr.to is not None:
            if not 0 <= addr.to <= 0xFFFF:
                raise ValueError(f"to={addr.to} is not a uint16")
            text += f",to={addr.to}"
        for name, value in (("ipv4", addr.ipv4), ("ipv6", addr.ipv6), ("keep-alive", addr.keep_alive),
                            ("mptcp", addr.mptcp)):
            if value is not None:
                text += f",{name}={_flag(value)}"
        return text
    if isinstance(addr, Unix):
        if addr.abstract is not None or addr.tight is not None:
            raise ValueError("'abstract' and 'tight' have no URI form")
        if not addr.path:
            raise ValueError("empty unix path")
        return f"unix:{addr.path}"
    if isinstance(addr, Vsock):
        if not 1 <= len(addr.cid) <= 32 or ":" in addr.cid or not 1 <= len(addr.port) <= 32 or "," in addr.port:
            raise ValueError(f"vsock address {addr.cid!r}:{addr.port!r} cannot be written in a URI")
        return f"vsock:{addr.cid}:{addr.port}"
    if isinstance(addr, Fd):
        if not addr.str:
            raise ValueError("empty fd name")
        return f"fd:{addr.str}"
    raise TypeError(f"not a SocketAddress: {addr!r}")


def socket_uri(addr: SocketAddress) -> str:
    """QEMU's ``socket_uri()`` (and qtest's ``SocketAddress_to_str``): ``tcp:HOST:PORT`` with no
    brackets and no options, ``unix:PATH``, ``fd:STR``, ``vsock:CID:PORT``."""
    if isinstance(addr, Inet):
        return f"tcp:{addr.host}:{addr.port}"
    if isinstance(addr, Unix):
        return f"unix:{addr.path}"
    if isinstance(addr, Fd):
        return f"fd:{addr.str}"
    if isinstance(addr, Vsock):
        return f"vsock:{addr.cid}:{addr.port}"
    return "unknown address type"


_SUFFIX_SHIFT = {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_UINT = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_HEX = re.compile(r"[ \t\n\v\f\r]*\+?0[xX]([0-9a-fA-F]+)")
_STRTOD = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")


def _strtosz(text: str) -> int:
    """``qemu_strtosz(text, NULL, &v)``: decimal with an optional fraction and a binary suffix
    (B, K, M, G, T, P, E in either case), or hex without suffix or fraction.  Raises
    ``ValueError('EINVAL' | 'ERANGE')`` as the C function returns ``-EINVAL`` / ``-ERANGE``."""
    err: str | None = None
    val, valf = 0, 0
    m = _UINT.match(text)
    if m is None:
        err, end = "EINVAL", 0
    else:
        end = m.end()
        val = int(m.group(2))
        if m.group(1) == "-" or val > UINT64_MAX:
            err = "ERANGE"
    if err == "ERANGE":
        pass
    elif err is None and val == 0 and text[end:end + 1] in ("x", "X"):
        h = _HEX.match(text)
        if h is None:  # no "0x<hexdigit>" prefix: strtoull stops where the decimal parse did
            pass
        else:
            end, val = h.end(), int(h.group(1), 16)
            if val > UINT64_MAX:
                err = "ERANGE"
        nxt = text[end:end + 1]
        if err is None and nxt and (nxt == "." or nxt.upper() in _SUFFIX_SHIFT):
            err, end = "EINVAL", 0
    elif text[end:end + 1] == "." or (err == "EINVAL" and "." in text):
        if err is None and text[end:end + 1] == "." and not text[end + 1:end + 2].isdigit():
            end += 1
            fraction = 0.0
            err = None
        else:
            copy = text[end:]
            for e in "eE":
                if e in copy:
                    copy = copy[:copy.index(e)]
            f = _STRTOD.match(copy)
            if f is None:
                err = "EINVAL"
            else:
                err = None
                end += f.end()
                fraction = float(f.group(0).strip(_C_SPACE))
        if err is None:
            if "-" in text[:end]:
                err, end = "EINVAL", 0
            elif fraction == 1.0:
                if val == UINT64_MAX:
                    err = "ERANGE"
                val += 1
            elif fraction == 0.0 and any(c in "123456789" for c in text[:end].split(".", 1)[-1]):
                valf = 1  # strtod underflow: the smallest fraction
            else:
                valf = int(fraction * 2.0 ** 64)
    if err is None:
        c = text[end:end + 1].upper()
        if c and c in _SUFFIX_SHIFT:
            end += 1
            mul = 1 << _SUFFIX_SHIFT[c]
        else:
            mul = 1
        if mul == 1:
            if valf != 0:
                err, end = "EINVAL", 0
        else:
            prod = valf * mul
            val = val * mul + (prod >> 64) + ((prod >> 63) & 1)
            if val > UINT64_MAX:
                err = "ERANGE"
    if end < len(text):  # the whole string must be a size
        err = "EINVAL"
    if err is not None:
        raise ValueError(err)
    return val


def parse_size(text: str) -> int:
    """``qemu_strtosz`` on a whole string; ``ValueError`` with the strerror text on failure."""
    try:
        return _strtosz(text)
    except ValueError as e:
        raise ValueError(_STRERROR[str(e)]) from None


def parse_migration_uri(uri: str) -> MigrationAddress:
    """QEMU 9.1's ``migrate_uri_parse``: the typed address of a ``uri`` argument.

    ``exec:CMD`` runs ``/bin/sh -c CMD``; ``rdma:HOST:PORT`` is an inet address;
    ``tcp:``/``unix:``/``vsock:``/``fd:`` go whole to ``socket_parse``; ``file:PATH[,offset=N]``
    cuts the first ``,offset=`` off the path and reads N as a size.  Anything else is
    ``unknown migration protocol: <uri>``.
    """
    if uri.startswith("exec:"):
        return Exec(("/bin/sh", "-c", uri[5:]))
    if uri.startswith("rdma:"):
        return Rdma(parse_inet(uri[5:]))
    if uri.startswith(("tcp:", "unix:", "vsock:", "fd:")):
        return Socket(parse_socket_address(uri))
    if uri.startswith("file:"):
        filename = uri[5:]
        offset = 0
        at = filename.find(",offset=")
        if at >= 0:
            option = filename[at + 8:]
            filename = filename[:at]
            try:
                offset = _strtosz(option)
            except ValueError as e:
                raise MigrationAddressError(f"file URI has bad offset {option}: {_STRERROR[str(e)]}") from None
        return File(filename, offset)
    raise MigrationAddressError(f"unknown migration protocol: {uri}")


# ---------------------------------------------------------------------------------------------
# QAPI dicts


def _inet_from_dict(d: Mapping[str, Any]) -> Inet:
    return Inet(d["host"], d["port"], d.get("numeric"), d.get("to"), d.get("ipv4"), d.get("ipv6"),
                d.get("keep-alive"), d.get("mptcp"))


def _socket_from_dict(d: Mapping[str, Any]) -> SocketAddress:
    kind = d["type"]
    if kind == "inet":
        return _inet_from_dict(d)
    if kind == "unix":
        return Unix(d["path"], d.get("abstract"), d.get("tight"))
    if kind == "vsock":
        return Vsock(d["cid"], d["port"])
    if kind == "fd":
        return Fd(d["str"])
    raise ValueError(f"unknown SocketAddress type {kind!r}")


def from_channel(channel: Mapping[str, Any]) -> MigrationAddress:
    """The typed address of one schema-validated ``MigrationChannel`` dict.

    9.1 has a single channel type, ``main``, which the QAPI enum already enforces; anything else
    here is a programming error (``ValueError``).
    """
    if channel.get("channel-type") != "main":
        raise ValueError(f"unknown channel-type {channel.get('channel-type')!r}")
    addr = channel["addr"]
    transport = addr["transport"]
    if transport == "socket":
        return Socket(_socket_from_dict(addr))
    if transport == "exec":
        return Exec(addr["args"])
    if transport == "rdma":
        return Rdma(_inet_from_dict(addr))
    if transport == "file":
        return File(addr["filename"], addr["offset"])
    raise ValueError(f"unknown MigrationAddress transport {transport!r}")


def _inet_members(addr: Inet) -> dict[str, Any]:
    out: dict[str, Any] = {"host": addr.host, "port": addr.port}
    for name, value in (("numeric", addr.numeric), ("to", addr.to), ("ipv4", addr.ipv4), ("ipv6", addr.ipv6),
                        ("keep-alive", addr.keep_alive), ("mptcp", addr.mptcp)):
        if value is not None:
            out[name] = value
    return out


def to_socket_address_info(addr: SocketAddress) -> dict[str, Any]:
    """The QAPI ``SocketAddress`` dict (as in ``query-migrate``'s ``socket-address``): ``type``
    first, then the branch members in schema order; absent options are left out.  (The wire
    order of keys is the QDict hash order, which the JSON encoder applies.)"""
    out: dict[str, Any] = {"type": addr.type}
    if isinstance(addr, Inet):
        out.update(_inet_members(addr))
    elif isinstance(addr, Unix):
        out["path"] = addr.path
        if addr.abstract is not None:
            out["abstract"] = addr.abstract
        if addr.tight is not None:
            out["tight"] = addr.tight
    elif isinstance(addr, Vsock):
        out["cid"], out["port"] = addr.cid, addr.port
    elif isinstance(addr, Fd):
        out["str"] = addr.str
    else:
        raise TypeError(f"not a SocketAddress: {addr!r}")
    return out


def to_channel(addr: MigrationAddress) -> dict[str, Any]:
    """The ``MigrationChannel`` dict (``channel-type: main``) naming ``addr``; the inverse of
    ``from_channel``."""
    out: dict[str, Any] = {"transport": addr.transport}
    if isinstance(addr, Socket):
        out.update(to_socket_address_info(addr.socket))
    elif isinstance(addr, Exec):
        out["args"] = list(addr.args)
    elif isinstance(addr, Rdma):
        out.update(_inet_members(addr.inet))
    elif isinstance(addr, File):
        out["filename"], out["offset"] = addr.filename, addr.offset
    else:
        raise TypeError(f"not a MigrationAddress: {addr!r}")
    return {"channel-type": "main", "addr": out}


# ---------------------------------------------------------------------------------------------
# the uri/channels preamble


def check_transport_compatible(addr: MigrationAddress, caps: Mapping[str, bool] | None = None,
                               direct_io: bool = False) -> None:
    """``migration_channels_and_transport_compatible`` (9.1), in QEMU's order.

    1. ``mapped-ram`` needs a seekable transport (only ``file``).
    2. ``multifd`` or ``postcopy-preempt`` need several channels: socket inet/unix/vsock, or
       ``file`` with ``mapped-ram``; never socket fd, exec or rdma.
    3. ``multifd`` with the ``direct-io`` parameter needs extra fds (only ``file``).
    """
    caps = caps or {}
    if caps.get("mapped-ram") and not isinstance(addr, File):
        raise MigrationAddressError("Migration requires seekable transport (e.g. file)")
    if caps.get("multifd") or caps.get("postcopy-preempt"):
        if isinstance(addr, Socket):
            multi = not isinstance(addr.socket, Fd)
        elif isinstance(addr, File):
            multi = bool(caps.get("mapped-ram"))
        else:
            multi = False
        if not multi:
            raise MigrationAddressError("Migration requires multi-channel URIs (e.g. tcp)")
    if caps.get("multifd") and direct_io and not isinstance(addr, File):
        raise MigrationAddressError("Migration requires a transport that allows for extra fds (e.g. file)")


def resolve_migrate_args(args: Mapping[str, Any], incoming: bool = False,
                         caps: Mapping[str, bool] | None = None, direct_io: bool = False) -> MigrationAddress:
    """The ``uri``/``channels`` preamble of ``migrate`` / ``migrate-incoming`` (9.1 order).

    ``args`` are the command's arguments after QAPI validation (``Schema.check_args``).
    ``caps`` maps capability names to their state; ``direct_io`` is the ``direct-io`` parameter.
    ``incoming`` says which command runs; 9.1 gives both the same checks and texts.

    1. ``need either 'uri' or 'channels' argument`` unless exactly one is present; an empty
       ``channels`` list counts as absent (QAPI makes it NULL), so ``{"uri": X, "channels": []}``
       uses the uri.
    2. ``Channel list has more than one entries`` (sic) for two or more channels.  The channel
       type needs no check in 9.1: ``main`` is its only value and the schema enforces it.
    3. The uri is parsed (``parse_migration_uri``), its errors returned as they are.
    4. ``check_transport_compatible``.
    """
    del incoming  # same preamble for both commands in 9.1
    uri = args.get("uri")
    channels = args.get("channels") or None
    if (uri is None) == (channels is None):
        raise MigrationAddressError("need either 'uri' or 'channels' argument")
    if channels is not None:
        if len(channels) > 1:
            raise MigrationAddressError("Channel list has more than one entries")
        addr = from_channel(channels[0])
    else:
        addr = parse_migration_uri(uri)  # type: ignore[arg-type]
    check_transport_compatible(addr, caps, direct_io)
    return addr
