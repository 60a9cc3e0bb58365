"""QAPI schema expressions of QEMU 9.1's migration capabilities and parameters.

Plain data (this module imports nothing of the monitor), compiled by the monitor together with the
core and migration-address schemas: ``Schema(CORE + MIG + PARAMS)`` (``emu.monitor.schema_core``,
``emu.migration.schema``, this module; ``emu.monitor.migration_commands`` does it for the emulator).

Source: ``qemu/qemu`` qapi/migration.json @ 01bed0ff14bb (9.1), from ``MigrationCapability`` to
``query-migrate-parameters``, in file order; ``StrOrNull`` is qapi/common.json's alternate.

Rules applied while transcribing (the same as ``schema_core`` and ``emu.migration.schema``):

* Members, enum values and features keep QEMU's order and spelling; optional members keep ``*``.
* ``'if'`` conditions are resolved for an x86_64 Linux build like Debian's: ``MultiFDCompression``
  keeps ``zstd`` (``CONFIG_ZSTD``) and drops ``qpl`` (``CONFIG_QPL``) and ``uadk``
  (``CONFIG_UADK``), whose libraries such builds do not link.
* ``StrOrNull`` is defined here: neither ``schema_core`` nor ``emu.migration.schema`` defines it,
  so the three lists compile together (the monitor skips it where its schema already has it).
* ``MigrationParameter`` (the enum) is kept although no 9.1 QMP command uses it; introspection
  only lists types that commands reference, so it does not show in ``query-qmp-schema``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "STR_OR_NULL"]

STR_OR_NULL: dict[str, Any] = {'alternate': 'StrOrNull', 'data': {'s': 'str', 'n': 'null'}}


_PARAMETER_MEMBERS_HEAD: dict[str, Any] = {
    '*announce-initial': 'size',
    '*announce-max': 'size',
    '*announce-rounds': 'size',
    '*announce-step': 'size',
    '*throttle-trigger-threshold': 'uint8',
    '*cpu-throttle-initial': 'uint8',
    '*cpu-throttle-increment': 'uint8',
    '*cpu-throttle-tailslow': 'bool',
}
_PARAMETER_MEMBERS_TAIL: dict[str, Any] = {
    '*max-bandwidth': 'size',
    '*avail-switchover-bandwidth': 'size',
    '*downtime-limit': 'uint64',
    '*x-checkpoint-delay': {'type': 'uint32', 'features': ['unstable']},
    '*multifd-channels': 'uint8',
    '*xbzrle-cache-size': 'size',
    '*max-postcopy-bandwidth': 'size',
    '*max-cpu-throttle': 'uint8',
    '*multifd-compression': 'MultiFDCompression',
    '*multifd-zlib-level': 'uint8',
    '*multifd-zstd-level': 'uint8',
    '*block-bitmap-mapping': ['BitmapMigrationNodeAlias'],
    '*x-vcpu-dirty-limit-period': {'type': 'uint64', 'features': ['unstable']},
    '*vcpu-dirty-limit': 'uint64',
    '*mode': 'MigMode',
    '*zero-page-detection': 'ZeroPageDetection',
    '*direct-io': 'bool',
}


def _parameter_members(tls_type: str) -> dict[str, Any]:
    return {**_PARAMETER_MEMBERS_HEAD,
            '*tls-creds': tls_type, '*tls-hostname': tls_type, '*tls-authz': tls_type,
            **_PARAMETER_MEMBERS_TAIL}


SCHEMA: list[dict[str, Any]] = [
    STR_OR_NULL,
    {'enum': 'MigrationCapability',
     'data': ['xbzrle', 'rdma-pin-all', 'auto-converge', 'zero-blocks',
              'events', 'postcopy-ram',
              {'name': 'x-colo', 'features': ['unstable']},
              'release-ram',
              'return-path', 'pause-before-switchover', 'multifd',
              'dirty-bitmaps', 'postcopy-blocktime', 'late-block-activate',
              {'name': 'x-ignore-shared', 'features': ['unstable']},
              'validate-uuid', 'background-snapshot',
              'zero-copy-send', 'postcopy-preempt', 'switchover-ack',
              'dirty-limit', 'mapped-ram']},
    {'struct': 'MigrationCapabilityStatus',
     'data': {'capability': 'MigrationCapability', 'state': 'bool'}},
    {'command': 'migrate-set-capabilities',
     'data': {'capabilities': ['MigrationCapabilityStatus']}},
    {'command': 'query-migrate-capabilities', 'returns': ['MigrationCapabilityStatus']},
    # 'if' resolved: zstd kept (CONFIG_ZSTD), qpl (CONFIG_QPL) and uadk (CONFIG_UADK) dropped
    {'enum': 'MultiFDCompression',
     'data': ['none', 'zlib', 'zstd']},
    {'enum': 'MigMode',
     'data': ['normal', 'cpr-reboot']},
    {'enum': 'ZeroPageDetection',
     'data': ['none', 'legacy', 'multifd']},
    {'struct': 'BitmapMigrationBitmapAliasTransform',
     'data': {'*persistent': 'bool'}},
    {'struct': 'BitmapMigrationBitmapAlias',
     'data': {'name': 'str',
              'alias': 'str',
              '*transform': 'BitmapMigrationBitmapAliasTransform'}},
    {'struct': 'BitmapMigrationNodeAlias',
     'data': {'node-name': 'str',
              'alias': 'str',
              'bitmaps': ['BitmapMigrationBitmapAlias']}},
    {'enum': 'MigrationParameter',
     'data': ['announce-initial', 'announce-max',
              'announce-rounds', 'announce-step',
              'throttle-trigger-threshold',
              'cpu-throttle-initial', 'cpu-throttle-increment',
              'cpu-throttle-tailslow',
              'tls-creds', 'tls-hostname', 'tls-authz', 'max-bandwidth',
              'avail-switchover-bandwidth', 'downtime-limit',
              {'name': 'x-checkpoint-delay', 'features': ['unstable']},
              'multifd-channels',
              'xbzrle-cache-size', 'max-postcopy-bandwidth',
              'max-cpu-throttle', 'multifd-compression',
              'multifd-zlib-level', 'multifd-zstd-level',
              'block-bitmap-mapping',
              {'name': 'x-vcpu-dirty-limit-period', 'features': ['unstable']},
              'vcpu-dirty-limit',
              'mode',
              'zero-page-detection',
              'direct-io']},
    {'struct': 'MigrateSetParameters',
     'data': _parameter_members('StrOrNull')},
    {'command': 'migrate-set-parameters', 'boxed': True,
     'data': 'MigrateSetParameters'},
    {'struct': 'MigrationParameters',
     'data': _parameter_members('str')},
    {'command': 'query-migrate-parameters',
     'returns': 'MigrationParameters'},
]
