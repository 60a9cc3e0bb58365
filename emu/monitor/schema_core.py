"""Core QAPI schema for the QMP monitor, transcribed from QEMU 9.1.

``SCHEMA`` holds QAPI schema expressions written in QEMU's own schema
language (the syntax of ``qapi/*.json``) as Python literals.  It covers
exactly what these commands and events need, with every type they reference
transitively:

  commands: qmp_capabilities, query-version, query-commands,
            query-qmp-schema, query-status, stop, cont, system_reset,
            system_powerdown, quit, query-name, query-uuid, query-machines, query-kvm,
            query-cpus-fast, query-chardev, qom-list, qom-get, qom-set,
            qom-list-types, object-add, object-del, getfd, closefd, add-fd,
            remove-fd, query-fdsets, human-monitor-command, set-action,
            watchdog-set-action
  events:   STOP, RESUME, RESET, SHUTDOWN, POWERDOWN, WATCHDOG,
            GUEST_PANICKED, GUEST_CRASHLOADED

Rules applied while transcribing:

* Members, enum values and union branches keep QEMU's order.  Optional
  members keep the ``*`` prefix.  ``'features'`` are kept where 9.1 has them.
  ``'prefix'`` (an enum's C-name prefix) is kept because it is part of the
  schema language, although it has no effect on the wire.
* ``'if'`` conditions are resolved for an x86_64 Linux system-emulator build.
  The only one in this subset is ``getfd``'s ``'if': 'CONFIG_POSIX'``.  It is
  true, so the condition is dropped and the command kept.
* Blocks follow QEMU's module order, which is the order in which
  ``qapi/qapi-schema.json`` first includes each file: run-state, char,
  control, introspect, qom, machine-common, machine, misc.  Inside a block,
  entries keep their order in the file.  That module order is also the order
  of commands and events in ``query-qmp-schema`` output; observed on 7.2,
  ``query-status`` comes first.

Where each block comes from (``qemu/qemu`` repository; commits are 9.1
development commits; see docs/qmp-facts.md §0):

* qapi/run-state.json   @ 01bed0ff14bb (9.1 dev).  StatusInfo no longer has
  ``singlestep``: it is ``{running, status}`` only.  (7.2 still had it.)
* qapi/char.json        @ 01bed0ff14bb
* qapi/control.json     @ 14b48aaab92d ("qapi: convert "Example" sections
  without titles", July 2024)
* qapi/introspect.json  Content as in @68c0156de258.  Its definitions have
  not changed since 6.2, and 7.2's live ``query-qmp-schema`` confirms the
  SchemaInfo family.  NOTE: since QEMU 5.0 (Markus Armbruster, "qapi:
  Implement deprecated-output=hide for QMP introspection") query-qmp-schema
  has **no** ``'gen': false``.  It is an ordinary generated command with
  ``'allow-preconfig': true``.  QEMU builds its answer by running the
  generated QLIT table through the SchemaInfoList visitor.
* qapi/crypto.json, qapi/authz.json: only the TLS credentials and
  authz-simple property types, which object-add's ObjectOptions uses; their
  content is unchanged from 7.2 (``loaded`` kept with its 'deprecated'
  feature).
* qapi/qom.json         @ 3becc9390810 (July 2024).  ObjectOptions has only
  the branches of the object types implemented here (see the entry).
* qapi/machine-common.json  9.1 content: ``CpuS390Entitlement`` with
  ``'prefix': 'S390_CPU_ENTITLEMENT'``.  machine.json @01bed0ff refers to it
  by that name.  It was renamed S390CpuEntitlement later, in 9.2/10.x.
* qapi/machine.json     @ 01bed0ff14bb.  SysEmuTarget has no nios2 (removed in
  9.1).  MachineInfo has acpi (8.0) and compat-props (9.1, unstable).
  CpuInstanceProperties has drawer-id/book-id (8.2) and module-id (9.1).
* qapi/misc.json        @ d461c2797374 ("qapi: convert "Note" sections to
  plain rST", July 2024)

Plain data, a leaf of the monitor: it imports nothing from ``emu``. ``emu.monitor.registry``
compiles it (with ``emu.monitor.qapi.Schema``) and adds the migration schema after it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA"]

SCHEMA: list[dict[str, Any]] = [
    # ------------------------------------------------------------------
    # qapi/run-state.json
    # ------------------------------------------------------------------
    {'enum': 'RunState',
     'data': ['debug', 'inmigrate', 'internal-error', 'io-error', 'paused',
              'postmigrate', 'prelaunch', 'finish-migrate', 'restore-vm',
              'running', 'save-vm', 'shutdown', 'suspended', 'watchdog',
              'guest-panicked', 'colo']},
    # Beware, shutdown_caused_by_guest() depends on enumeration order
    {'enum': 'ShutdownCause',
     'data': ['none', 'host-error', 'host-qmp-quit', 'host-qmp-system-reset',
              'host-signal', 'host-ui', 'guest-shutdown', 'guest-reset',
              'guest-panic', 'subsystem-reset', 'snapshot-load']},
    {'struct': 'StatusInfo',
     'data': {'running': 'bool',
              'status': 'RunState'}},
    {'command': 'query-status', 'returns': 'StatusInfo',
     'allow-preconfig': True},
    {'event': 'SHUTDOWN', 'data': {'guest': 'bool', 'reason': 'ShutdownCause'}},
    {'event': 'POWERDOWN'},
    {'event': 'RESET', 'data': {'guest': 'bool', 'reason': 'ShutdownCause'}},
    {'event': 'STOP'},
    {'event': 'RESUME'},
    {'event': 'WATCHDOG',
     'data': {'action': 'WatchdogAction'}},
    {'enum': 'WatchdogAction',
     'data': ['reset', 'shutdown', 'poweroff', 'pause', 'debug', 'none',
              'inject-nmi']},
    {'enum': 'RebootAction',
     'data': ['reset', 'shutdown']},
    {'enum': 'ShutdownAction',
     'data': ['poweroff', 'pause']},
    {'enum': 'PanicAction',
     'data': ['pause', 'shutdown', 'exit-failure', 'none']},
    {'command': 'watchdog-set-action', 'data': {'action': 'WatchdogAction'}},
    {'command': 'set-action',
     'data': {'*reboot': 'RebootAction',
              '*shutdown': 'ShutdownAction',
              '*panic': 'PanicAction',
              '*watchdog': 'WatchdogAction'},
     'allow-preconfig': True},
    {'event': 'GUEST_PANICKED',
     'data': {'action': 'GuestPanicAction', '*info': 'GuestPanicInformation'}},
    {'event': 'GUEST_CRASHLOADED',
     'data': {'action': 'GuestPanicAction', '*info': 'GuestPanicInformation'}},
    {'enum': 'GuestPanicAction',
     'data': ['pause', 'poweroff', 'run']},
    {'enum': 'GuestPanicInformationType',
     'data': ['hyper-v', 's390']},
    {'union': 'GuestPanicInformation',
     'base': {'type': 'GuestPanicInformationType'},
     'discriminator': 'type',
     'data': {'hyper-v': 'GuestPanicInformationHyperV',
              's390': 'GuestPanicInformationS390'}},
    {'struct': 'GuestPanicInformationHyperV',
     'data': {'arg1': 'uint64',
              'arg2': 'uint64',
              'arg3': 'uint64',
              'arg4': 'uint64',
              'arg5': 'uint64'}},
    {'enum': 'S390CrashReason',
     'data': ['unknown',
              'disabled-wait',
              'extint-loop',
              'pgmint-loop',
              'opint-loop']},
    {'struct': 'GuestPanicInformationS390',
     'data': {'core': 'uint32',
              'psw-mask': 'uint64',
              'psw-addr': 'uint64',
              'reason': 'S390CrashReason'}},

    # ------------------------------------------------------------------
    # qapi/char.json
    # ------------------------------------------------------------------
    {'struct': 'ChardevInfo',
     'data': {'label': 'str',
              'filename': 'str',
              'frontend-open': 'bool'}},
    {'command': 'query-chardev', 'returns': ['ChardevInfo'],
     'allow-preconfig': True},

    # ------------------------------------------------------------------
    # qapi/control.json
    # ------------------------------------------------------------------
    {'command': 'qmp_capabilities',
     'data': {'*enable': ['QMPCapability']},
     'allow-preconfig': True},
    {'enum': 'QMPCapability',
     'data': ['oob']},
    {'struct': 'VersionTriple',
     'data': {'major': 'int', 'minor': 'int', 'micro': 'int'}},
    {'struct': 'VersionInfo',
     'data': {'qemu': 'VersionTriple', 'package': 'str'}},
    {'command': 'query-version', 'returns': 'VersionInfo',
     'allow-preconfig': True},
    {'struct': 'CommandInfo', 'data': {'name': 'str'}},
    {'command': 'query-commands', 'returns': ['CommandInfo'],
     'allow-preconfig': True},
    {'command': 'quit',
     'allow-preconfig': True},

    # ------------------------------------------------------------------
    # qapi/introspect.json
    # ------------------------------------------------------------------
    # No 'gen': False since QEMU 5.0 (see the module docstring).
    {'command': 'query-qmp-schema',
     'returns': ['SchemaInfo'],
     'allow-preconfig': True},
    {'enum': 'SchemaMetaType',
     'data': ['builtin', 'enum', 'array', 'object', 'alternate',
              'command', 'event']},
    {'union': 'SchemaInfo',
     'base': {'name': 'str', 'meta-type': 'SchemaMetaType',
              '*features': ['str']},
     'discriminator': 'meta-type',
     'data': {
         'builtin': 'SchemaInfoBuiltin',
         'enum': 'SchemaInfoEnum',
         'array': 'SchemaInfoArray',
         'object': 'SchemaInfoObject',
         'alternate': 'SchemaInfoAlternate',
         'command': 'SchemaInfoCommand',
         'event': 'SchemaInfoEvent'}},
    {'struct': 'SchemaInfoBuiltin',
     'data': {'json-type': 'JSONType'}},
    {'enum': 'JSONType',
     'data': ['string', 'number', 'int', 'boolean', 'null',
              'object', 'array', 'value']},
    {'struct': 'SchemaInfoEnum',
     'data': {'members': ['SchemaInfoEnumMember'],
              'values': {'type': ['str'],
                         'features': ['deprecated']}}},
    {'struct': 'SchemaInfoEnumMember',
     'data': {'name': 'str', '*features': ['str']}},
    {'struct': 'SchemaInfoArray',
     'data': {'element-type': 'str'}},
    {'struct': 'SchemaInfoObject',
     'data': {'members': ['SchemaInfoObjectMember'],
              '*tag': 'str',
              '*variants': ['SchemaInfoObjectVariant']}},
    {'struct': 'SchemaInfoObjectMember',
     'data': {'name': 'str', 'type': 'str', '*default': 'any',
              # @default's type must be null or match @type
              '*features': ['str']}},
    {'struct': 'SchemaInfoObjectVariant',
     'data': {'case': 'str', 'type': 'str'}},
    {'struct': 'SchemaInfoAlternate',
     'data': {'members': ['SchemaInfoAlternateMember']}},
    {'struct': 'SchemaInfoAlternateMember',
     'data': {'type': 'str'}},
    {'struct': 'SchemaInfoCommand',
     'data': {'arg-type': 'str', 'ret-type': 'str',
              '*allow-oob': 'bool'}},
    {'struct': 'SchemaInfoEvent',
     'data': {'arg-type': 'str'}},

    # ------------------------------------------------------------------
    # qapi/crypto.json (the TLS credentials types)
    # ------------------------------------------------------------------
    {'enum': 'QCryptoTLSCredsEndpoint',
     'prefix': 'QCRYPTO_TLS_CREDS_ENDPOINT',
     'data': ['client', 'server']},
    {'struct': 'TlsCredsProperties',
     'data': {'*verify-peer': 'bool',
              '*dir': 'str',
              '*endpoint': 'QCryptoTLSCredsEndpoint',
              '*priority': 'str'}},
    {'struct': 'TlsCredsAnonProperties',
     'base': 'TlsCredsProperties',
     'data': {'*loaded': {'type': 'bool', 'features': ['deprecated']}}},
    {'struct': 'TlsCredsPskProperties',
     'base': 'TlsCredsProperties',
     'data': {'*loaded': {'type': 'bool', 'features': ['deprecated']},
              '*username': 'str'}},
    {'struct': 'TlsCredsX509Properties',
     'base': 'TlsCredsProperties',
     'data': {'*loaded': {'type': 'bool', 'features': ['deprecated']},
              '*sanity-check': 'bool',
              '*passwordid': 'str'}},

    # ------------------------------------------------------------------
    # qapi/authz.json (authz-simple)
    # ------------------------------------------------------------------
    {'struct': 'AuthZSimpleProperties',
     'data': {'identity': 'str'}},

    # ------------------------------------------------------------------
    # qapi/qom.json
    # ------------------------------------------------------------------
    {'struct': 'ObjectPropertyInfo',
     'data': {'name': 'str',
              'type': 'str',
              '*description': 'str',
              '*default-value': 'any'}},
    {'command': 'qom-list',
     'data': {'path': 'str'},
     'returns': ['ObjectPropertyInfo'],
     'allow-preconfig': True},
    # 'returns': 'any' is allowed by qapi/pragma.json
    # 'command-returns-exceptions'.
    {'command': 'qom-get',
     'data': {'path': 'str', 'property': 'str'},
     'returns': 'any',
     'allow-preconfig': True},
    {'command': 'qom-set',
     'data': {'path': 'str', 'property': 'str', 'value': 'any'},
     'allow-preconfig': True},
    {'struct': 'ObjectTypeInfo',
     'data': {'name': 'str', '*abstract': 'bool', '*parent': 'str'}},
    {'command': 'qom-list-types',
     'data': {'*implements': 'str', '*abstract': 'bool'},
     'returns': ['ObjectTypeInfo'],
     'allow-preconfig': True},
    # ObjectType as in 9.1, 'if' conditions resolved for x86_64 Linux (all
    # true: CONFIG_LINUX, CONFIG_POSIX, CONFIG_VHOST_CRYPTO,
    # CONFIG_SECRET_KEYRING); member features ('unstable') are not kept.
    {'enum': 'ObjectType',
     'data': ['acpi-generic-initiator', 'authz-list', 'authz-listfile',
              'authz-pam', 'authz-simple', 'can-bus', 'can-host-socketcan',
              'colo-compare', 'cryptodev-backend',
              'cryptodev-backend-builtin', 'cryptodev-backend-lkcf',
              'cryptodev-vhost-user', 'dbus-vmstate', 'filter-buffer',
              'filter-dump', 'filter-mirror', 'filter-redirector',
              'filter-replay', 'filter-rewriter', 'input-barrier',
              'input-linux', 'iommufd', 'iothread', 'main-loop',
              'memory-backend-epc', 'memory-backend-file',
              'memory-backend-memfd', 'memory-backend-ram',
              'memory-backend-shm', 'pef-guest', 'pr-manager-helper',
              'qtest', 'rng-builtin', 'rng-egd', 'rng-random', 'secret',
              'secret_keyring', 'sev-guest', 'sev-snp-guest',
              'thread-context', 's390-pv-guest', 'throttle-group',
              'tls-creds-anon', 'tls-creds-psk', 'tls-creds-x509',
              'tls-cipher-suites', 'x-remote-object', 'x-vfio-user-server']},
    # Only the branches of the types this emulator implements (emu.tls) and
    # qtest are transcribed; the others have no branch here, so their
    # properties are reported unexpected (object-add refuses them anyway).
    {'struct': 'QtestProperties',
     'data': {'chardev': 'str',
              '*log': 'str'}},
    {'union': 'ObjectOptions',
     'base': {'qom-type': 'ObjectType',
              'id': 'str'},
     'discriminator': 'qom-type',
     'data': {
         'authz-simple': 'AuthZSimpleProperties',
         'qtest': 'QtestProperties',
         'tls-creds-anon': 'TlsCredsAnonProperties',
         'tls-creds-psk': 'TlsCredsPskProperties',
         'tls-creds-x509': 'TlsCredsX509Properties',
         'tls-cipher-suites': 'TlsCredsProperties'}},
    {'command': 'object-add', 'data': 'ObjectOptions', 'boxed': True,
     'allow-preconfig': True},
    {'command': 'object-del', 'data': {'id': 'str'},
     'allow-preconfig': True},

    # ------------------------------------------------------------------
    # qapi/machine-common.json
    # ------------------------------------------------------------------
    {'enum': 'CpuS390Entitlement',
     'prefix': 'S390_CPU_ENTITLEMENT',
     'data': ['auto', 'low', 'medium', 'high']},

    # ------------------------------------------------------------------
    # qapi/machine.json
    # ------------------------------------------------------------------
    {'enum': 'SysEmuTarget',
     'data': ['aarch64', 'alpha', 'arm', 'avr', 'cris', 'hppa', 'i386',
              'loongarch64', 'm68k', 'microblaze', 'microblazeel', 'mips',
              'mips64', 'mips64el', 'mipsel', 'or1k', 'ppc',
              'ppc64', 'riscv32', 'riscv64', 'rx', 's390x', 'sh4',
              'sh4eb', 'sparc', 'sparc64', 'tricore',
              'x86_64', 'xtensa', 'xtensaeb']},
    {'enum': 'CpuS390State',
     'prefix': 'S390_CPU_STATE',
     'data': ['uninitialized', 'stopped', 'check-stop', 'operating', 'load']},
    {'struct': 'CpuInfoS390',
     'data': {'cpu-state': 'CpuS390State',
              '*dedicated': 'bool',
              '*entitlement': 'CpuS390Entitlement'}},
    {'union': 'CpuInfoFast',
     'base': {'cpu-index': 'int',
              'qom-path': 'str',
              'thread-id': 'int',
              '*props': 'CpuInstanceProperties',
              'target': 'SysEmuTarget'},
     'discriminator': 'target',
     'data': {'s390x': 'CpuInfoS390'}},
    {'command': 'query-cpus-fast', 'returns': ['CpuInfoFast']},
    {'struct': 'CompatProperty',
     'data': {'qom-type': 'str',
              'property': 'str',
              'value': 'str'}},
    {'struct': 'MachineInfo',
     'data': {'name': 'str', '*alias': 'str',
              '*is-default': 'bool', 'cpu-max': 'int',
              'hotpluggable-cpus': 'bool', 'numa-mem-supported': 'bool',
              'deprecated': 'bool', '*default-cpu-type': 'str',
              '*default-ram-id': 'str', 'acpi': 'bool',
              '*compat-props': {'type': ['CompatProperty'],
                                'features': ['unstable']}}},
    {'command': 'query-machines',
     'data': {'*compat-props': {'type': 'bool',
                                'features': ['unstable']}},
     'returns': ['MachineInfo']},
    {'struct': 'UuidInfo', 'data': {'UUID': 'str'}},
    {'command': 'query-uuid', 'returns': 'UuidInfo', 'allow-preconfig': True},
    {'command': 'system_reset'},
    {'command': 'system_powerdown'},
    {'struct': 'CpuInstanceProperties',
     # Keep these in sync with the properties device_add accepts
     'data': {'*node-id': 'int',
              '*drawer-id': 'int',
              '*book-id': 'int',
              '*socket-id': 'int',
              '*die-id': 'int',
              '*cluster-id': 'int',
              '*module-id': 'int',
              '*core-id': 'int',
              '*thread-id': 'int'}},

    # ------------------------------------------------------------------
    # qapi/accelerator.json
    # ------------------------------------------------------------------
    {'struct': 'KvmInfo', 'data': {'enabled': 'bool', 'present': 'bool'}},
    {'command': 'query-kvm', 'returns': 'KvmInfo'},

    # ------------------------------------------------------------------
    # qapi/misc.json
    # ------------------------------------------------------------------
    {'struct': 'NameInfo', 'data': {'*name': 'str'}},
    {'command': 'query-name', 'returns': 'NameInfo', 'allow-preconfig': True},
    {'command': 'stop'},
    {'command': 'cont'},
    # 'returns': 'str' is allowed by qapi/pragma.json
    # 'command-returns-exceptions'.
    {'command': 'human-monitor-command',
     'data': {'command-line': 'str', '*cpu-index': 'int'},
     'returns': 'str',
     'features': ['savevm-monitor-nodes']},
    # 9.1 has 'if': 'CONFIG_POSIX'.  It is true on Linux, so it is dropped.
    {'command': 'getfd', 'data': {'fdname': 'str'}},
    {'command': 'closefd', 'data': {'fdname': 'str'}},
    {'struct': 'AddfdInfo', 'data': {'fdset-id': 'int', 'fd': 'int'}},
    {'command': 'add-fd',
     'data': {'*fdset-id': 'int',
              '*opaque': 'str'},
     'returns': 'AddfdInfo'},
    {'command': 'remove-fd', 'data': {'fdset-id': 'int', '*fd': 'int'}},
    {'struct': 'FdsetFdInfo',
     'data': {'fd': 'int', '*opaque': 'str'}},
    {'struct': 'FdsetInfo',
     'data': {'fdset-id': 'int', 'fds': ['FdsetFdInfo']}},
    {'command': 'query-fdsets', 'returns': ['FdsetInfo']},
]
