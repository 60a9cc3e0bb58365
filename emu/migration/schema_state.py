"""QAPI schema of migration state: query-migrate, migrate_cancel and the MIGRATION events
(QEMU 9.1 qapi/migration.json, per spec/migration-qapi.md §4.6, §4.9 and §7).

Plain data: it imports nothing (``emu.monitor.migration_commands`` compiles it into the monitor's schema)."""
from __future__ import annotations

from typing import Any

SCHEMA: list[dict[str, Any]] = [
    {'struct': 'MigrationStats',
     'data': {'transferred': 'int', 'remaining': 'int', 'total': 'int', 'duplicate': 'int', 'normal': 'int',
              'normal-bytes': 'int', 'dirty-pages-rate': 'int', 'mbps': 'number', 'dirty-sync-count': 'int',
              'postcopy-requests': 'int', 'page-size': 'int', 'multifd-bytes': 'uint64',
              'pages-per-second': 'uint64', 'precopy-bytes': 'uint64', 'downtime-bytes': 'uint64',
              'postcopy-bytes': 'uint64', 'dirty-sync-missed-zero-copy': 'uint64'}},
    {'struct': 'XBZRLECacheStats',
     'data': {'cache-size': 'size', 'bytes': 'int', 'pages': 'int', 'cache-miss': 'int', 'cache-miss-rate': 'number',
              'encoding-rate': 'number', 'overflow': 'int'}},
    {'struct': 'VfioStats', 'data': {'transferred': 'int'}},
    {'enum': 'MigrationStatus',
     'data': ['none', 'setup', 'cancelling', 'cancelled', 'active', 'postcopy-active', 'postcopy-paused',
              'postcopy-recover-setup', 'postcopy-recover', 'completed', 'failed', 'colo', 'pre-switchover',
              'device', 'wait-unplug']},
    {'struct': 'MigrationInfo',
     'data': {'*status': 'MigrationStatus', '*ram': 'MigrationStats', '*vfio': 'VfioStats',
              '*xbzrle-cache': 'XBZRLECacheStats', '*total-time': 'int', '*expected-downtime': 'int',
              '*downtime': 'int', '*setup-time': 'int', '*cpu-throttle-percentage': 'int', '*error-desc': 'str',
              '*blocked-reasons': ['str'], '*postcopy-blocktime': 'uint32', '*postcopy-vcpu-blocktime': ['uint32'],
              '*socket-address': ['SocketAddress'], '*dirty-limit-throttle-time-per-round': 'uint64',
              '*dirty-limit-ring-full-time': 'uint64'}},
    {'command': 'query-migrate', 'returns': 'MigrationInfo'},
    {'command': 'migrate_cancel'},
    {'command': 'migrate-continue', 'data': {'state': 'MigrationStatus'}},
    {'event': 'MIGRATION', 'data': {'status': 'MigrationStatus'}},
    {'event': 'MIGRATION_PASS', 'data': {'pass': 'int'}},
]
