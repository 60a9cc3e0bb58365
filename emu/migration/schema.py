"""QAPI schema expressions of QEMU 9.1's migration addressing, in QEMU's own schema language.

``SCHEMA`` is plain data (this module imports nothing of the monitor): the monitor compiles it
together with its core schema, ``Schema(CORE + SCHEMA)`` (``emu.monitor.schema_core`` and
``emu.monitor.qapi``; ``emu.monitor.migration_commands`` does it for the emulator).

It covers the socket address types (qapi/sockets.json), the migration address and channel types
and the ``migrate`` / ``migrate-incoming`` commands (qapi/migration.json).  Every type referenced
is defined here or in ``emu.monitor.schema_core``.

Sources (``qemu/qemu``; see spec/migration-qapi.md §0 and §3):

* qapi/sockets.json @ 00064705ed1f; the types used here have not changed since well before 9.1
  (only the keep-alive doc text did).  Not transcribed: ``NetworkAddressFamily``, the
  ``*Wrapper`` structs and ``SocketAddressLegacy`` (not used by migration).  The ``fd`` branch of
  ``SocketAddress`` is ``FdSocketAddress`` (the older ``String`` struct is no longer used there).
* qapi/migration.json @ 01bed0ff14bb (9.1): ``MigrationAddressType`` .. ``migrate-incoming``.

Rules applied while transcribing (the same as ``schema_core``):

* Members, enum values and union branches keep QEMU's order; optional members keep ``*``.
* ``'if'`` conditions are resolved for an x86_64 Linux build and dropped: ``mptcp``
  (``HAVE_IPPROTO_MPTCP``), ``abstract`` and ``tight`` (``CONFIG_LINUX``) are all present.
* Implicit union bases (``'base': {'type': 'SocketAddressType'}``) stay implicit, as in QEMU.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA"]

SCHEMA: list[dict[str, Any]] = [
    # ------------------------------------------------------------------
    # qapi/sockets.json
    # ------------------------------------------------------------------
    {'struct': 'InetSocketAddressBase',
     'data': {'host': 'str',
              'port': 'str'}},
    {'struct': 'InetSocketAddress',
     'base': 'InetSocketAddressBase',
     'data': {'*numeric': 'bool',
              '*to': 'uint16',
              '*ipv4': 'bool',
              '*ipv6': 'bool',
              '*keep-alive': 'bool',
              '*mptcp': 'bool'}},          # 'if': 'HAVE_IPPROTO_MPTCP' (true on Linux)
    {'struct': 'UnixSocketAddress',
     'data': {'path': 'str',
              '*abstract': 'bool',         # 'if': 'CONFIG_LINUX'
              '*tight': 'bool'}},          # 'if': 'CONFIG_LINUX'
    {'struct': 'VsockSocketAddress',
     'data': {'cid': 'str',
              'port': 'str'}},
    {'struct': 'FdSocketAddress',
     'data': {'str': 'str'}},
    {'enum': 'SocketAddressType',
     'data': ['inet', 'unix', 'vsock', 'fd']},
    {'union': 'SocketAddress',
     'base': {'type': 'SocketAddressType'},
     'discriminator': 'type',
     'data': {'inet': 'InetSocketAddress',
              'unix': 'UnixSocketAddress',
              'vsock': 'VsockSocketAddress',
              'fd': 'FdSocketAddress'}},
    # ------------------------------------------------------------------
    # qapi/migration.json
    # ------------------------------------------------------------------
    {'enum': 'MigrationAddressType',
     'data': ['socket', 'exec', 'rdma', 'file']},
    {'struct': 'FileMigrationArgs',
     'data': {'filename': 'str',
              'offset': 'uint64'}},
    {'struct': 'MigrationExecCommand',
     'data': {'args': ['str']}},
    {'union': 'MigrationAddress',
     'base': {'transport': 'MigrationAddressType'},
     'discriminator': 'transport',
     'data': {'socket': 'SocketAddress',
              'exec': 'MigrationExecCommand',
              'rdma': 'InetSocketAddress',
              'file': 'FileMigrationArgs'}},
    {'enum': 'MigrationChannelType',
     'data': ['main']},
    {'struct': 'MigrationChannel',
     'data': {'channel-type': 'MigrationChannelType',
              'addr': 'MigrationAddress'}},
    {'command': 'migrate',
     'data': {'*uri': 'str',
              '*channels': ['MigrationChannel'],
              '*detach': 'bool',
              '*resume': 'bool'}},
    {'command': 'migrate-incoming',
     'data': {'*uri': 'str',
              '*channels': ['MigrationChannel'],
              '*exit-on-error': 'bool'}},
    {'command': 'migrate-start-postcopy'},
    {'command': 'migrate-recover',
     'data': {'uri': 'str'},
     'allow-oob': True},
    {'command': 'migrate-pause', 'allow-oob': True},
]
