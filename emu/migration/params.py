"""Migration capabilities and parameters with QEMU 9.1's defaults, checks and messages.

``MigrationConfig`` holds what ``migrate-set-capabilities`` / ``migrate-set-parameters`` change and
``query-migrate-capabilities`` / ``query-migrate-parameters`` report (spec/migration-qapi.md §9,
§10). Its setters take arguments the QAPI visitor has already checked and converted
(``Schema.check_args`` with ``emu.migration.schema_params.SCHEMA``): types, enum values and the
uint8/uint32 ranges are the visitor's job; this module does QEMU's semantic checks
(``migrate_caps_check``, ``migrate_params_check``) in QEMU's order with QEMU's texts, and applies a
change only when every check passed.

Capabilities and this emulator (a TCG x86_64 "build" on a Linux host). All are stored and reported;
"accepted" means ``migrate-set-capabilities`` sets them exactly when QEMU 9.1 on such a build does:

- xbzrle, auto-converge, events, release-ram, return-path, pause-before-switchover, multifd,
  dirty-bitmaps, postcopy-blocktime, late-block-activate, validate-uuid, switchover-ack, mapped-ram:
  accepted, under QEMU's compatibility rules only (§9).
- rdma-pin-all: accepted (store only); QEMU accepts it without RDMA support, it only matters for ``rdma:``.
- zero-blocks: accepted (no effect); block migration was removed in 9.1, the capability still exists.
- postcopy-ram: accepted under the rules of §9; the destination host probe succeeds unless
  ``postcopy_unsupported_reason`` is set, or (a callable: the host probe) returns one (then
  ``Postcopy is not supported: <reason>``).
- postcopy-preempt, x-ignore-shared: accepted under the rules of §9.
- background-snapshot: accepted under the rules of §9; write tracking is reported available and
  compatible unless ``write_tracking`` says otherwise.
- zero-copy-send: accepted (store only) under the Linux rule of §9 (multifd, no xbzrle, no compression,
  no TLS).
- x-colo: **refused**; no COLO/replication here: behaves as a QEMU built without CONFIG_REPLICATION,
  ``QEMU compiled without replication module can't enable COLO`` (``replication=True`` lifts it).
- dirty-limit: **refused**; needs KVM's dirty ring. Under TCG QEMU says ``dirty-limit requires KVM with
  accelerator property 'dirty-ring-size' set`` (after the auto-converge conflict check;
  ``kvm_dirty_ring=True`` lifts it).

Parameters: ``direct-io`` is accepted (Linux has O_DIRECT; ``direct_io_supported=False`` gives
``No build-time support for direct-io``). ``max-bandwidth`` / ``avail-switchover-bandwidth`` are
checked against SIZE_MAX, which never fails with 64-bit sizes, as in QEMU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from emu.errors import QapiError

__all__ = [
    "BACKGROUND_SNAPSHOT_INCOMPATIBLE",
    "CAPABILITIES",
    "DEFAULT_PARAMETERS",
    "PARAMETERS",
    "RUNNING_STATES",
    "TARGET_PAGE_SIZE",
    "MigrationConfig",
    "check_bitmap_alias_map",
]

# MigrationCapability, enum order (= query-migrate-capabilities order)
CAPABILITIES: tuple[str, ...] = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram", "x-colo",
    "release-ram", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
    "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid",
    "background-snapshot", "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit",
    "mapped-ram",
)

# MigrationParameters members, schema order, with 9.1 defaults (block-bitmap-mapping: unset)
DEFAULT_PARAMETERS: dict[str, Any] = {
    "announce-initial": 50,
    "announce-max": 550,
    "announce-rounds": 5,
    "announce-step": 100,
    "throttle-trigger-threshold": 50,
    "cpu-throttle-initial": 20,
    "cpu-throttle-increment": 10,
    "cpu-throttle-tailslow": False,
    "tls-creds": "",
    "tls-hostname": "",
    "tls-authz": "",
    "max-bandwidth": 128 << 20,
    "avail-switchover-bandwidth": 0,
    "downtime-limit": 300,
    "x-checkpoint-delay": 20000,
    "multifd-channels": 2,
    "xbzrle-cache-size": 64 << 20,
    "max-postcopy-bandwidth": 0,
    "max-cpu-throttle": 99,
    "multifd-compression": "none",
    "multifd-zlib-level": 1,
    "multifd-zstd-level": 1,
    # "block-bitmap-mapping" goes here once set
    "x-vcpu-dirty-limit-period": 1000,
    "vcpu-dirty-limit": 1,
    "mode": "normal",
    "zero-page-detection": "multifd",
    "direct-io": False,
}
PARAMETERS: tuple[str, ...] = tuple(
    list(DEFAULT_PARAMETERS)[:22] + ["block-bitmap-mapping"] + list(DEFAULT_PARAMETERS)[22:])

# migration_is_running(): the outgoing states in which capabilities cannot change (plus colo)
RUNNING_STATES = frozenset({
    "active", "postcopy-active", "postcopy-paused", "postcopy-recover-setup", "postcopy-recover",
    "setup", "pre-switchover", "device", "wait-unplug", "cancelling",
})

# check_caps_background_snapshot, in QEMU's order
BACKGROUND_SNAPSHOT_INCOMPATIBLE: tuple[str, ...] = (
    "postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "return-path", "multifd",
    "pause-before-switchover", "auto-converge", "release-ram", "rdma-pin-all", "xbzrle", "x-colo",
    "validate-uuid", "zero-copy-send",
)

TARGET_PAGE_SIZE = 4096  # x86
SIZE_MAX = (1 << 64) - 1
MAX_MIGRATE_DOWNTIME = 2000 * 1000
NODE_NAME_MAX = 31  # sizeof(BlockDriverState.node_name) - 1
BITMAP_NAME_MAX = 1023  # BDRV_BITMAP_MAX_NAME_SIZE
WRITE_TRACKING_LEVELS = ("unavailable", "available", "compatible")


def _expects(c_name: str, text: str) -> QapiError:
    return QapiError(f"Parameter '{c_name}' expects {text}")


def _blen(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def _id_wellformed(s: str) -> bool:
    """util/id.c: an ASCII letter, then ASCII letters, digits, '-', '.' or '_'."""
    def alpha(c: str) -> bool:
        return ("a" <= c <= "z") or ("A" <= c <= "Z")
    return bool(s) and alpha(s[0]) and all(alpha(c) or "0" <= c <= "9" or c in "-._" for c in s[1:])


def check_bitmap_alias_map(mapping: Iterable[Mapping[str, Any]]) -> str | None:
    """``check_dirty_bitmap_mig_alias_map``: the detail text of the first problem, or None.

    The map is built twice, name→alias then alias→name; each pass checks every node in order."""
    mapping = list(mapping)
    for name_to_alias in (True, False):
        nodes: set[str] = set()
        for node in mapping:
            alias, node_name = node["alias"], node["node-name"]
            if not _id_wellformed(alias):
                return f"The node alias '{alias}' is not well-formed"
            if _blen(alias) > 255:
                return f"The node alias '{alias}' is longer than 255 bytes"
            if _blen(node_name) > NODE_NAME_MAX:
                return f"The node name '{node_name}' is longer than {NODE_NAME_MAX} bytes"
            key = node_name if name_to_alias else alias
            if key in nodes:
                return (f"The node name '{node_name}' is mapped twice" if name_to_alias
                        else f"The node alias '{alias}' is used twice")
            nodes.add(key)
            bitmaps: set[str] = set()
            for bm in node["bitmaps"]:
                if _blen(bm["alias"]) > 255:
                    return f"The bitmap alias '{bm['alias']}' is longer than 255 bytes"
                if _blen(bm["name"]) > BITMAP_NAME_MAX:
                    return f"The bitmap name '{bm['name']}' is longer than {BITMAP_NAME_MAX} bytes"
                bkey = bm["name"] if name_to_alias else bm["alias"]
                if bkey in bitmaps:
                    return (f"The bitmap '{node_name}'/'{bm['name']}' is mapped twice" if name_to_alias
                            else f"The bitmap alias '{alias}'/'{bm['alias']}' is used twice")
                bitmaps.add(bkey)
    return None


def _normalize_mapping(mapping: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A deep copy with members in schema order and only the optional members that were given."""
    out = []
    for node in mapping:
        bitmaps = []
        for bm in node["bitmaps"]:
            b: dict[str, Any] = {"name": bm["name"], "alias": bm["alias"]}
            if "transform" in bm:
                b["transform"] = {k: bm["transform"][k] for k in ("persistent",) if k in bm["transform"]}
            bitmaps.append(b)
        out.append({"node-name": node["node-name"], "alias": node["alias"], "bitmaps": bitmaps})
    return out


class MigrationConfig:
    """Capabilities and parameters of one VM's migration state (9.1 defaults).

    Host/build facts the checks depend on are constructor options; the defaults describe this
    emulator (see the module docstring's table)."""

    def __init__(self, *, replication: bool = False, kvm_dirty_ring: bool = False,
                 postcopy_unsupported_reason: str | Callable[[], str | None] | None = None,
                 write_tracking: str = "compatible",
                 direct_io_supported: bool = True, target_page_size: int = TARGET_PAGE_SIZE,
                 implemented: frozenset[str] | None = None) -> None:
        """``implemented``: the capabilities the emulator really has; once QEMU's own checks pass,
        switching on any other one is refused (None: every one, the pure QEMU model)."""
        if write_tracking not in WRITE_TRACKING_LEVELS:
            raise ValueError(f"write_tracking must be one of {WRITE_TRACKING_LEVELS}")
        self.replication = replication
        self.kvm_dirty_ring = kvm_dirty_ring
        self.postcopy_unsupported_reason = postcopy_unsupported_reason
        self.write_tracking = write_tracking
        self.direct_io_supported = direct_io_supported
        self.target_page_size = target_page_size
        self.implemented = implemented
        self.capabilities: dict[str, bool] = dict.fromkeys(CAPABILITIES, False)
        self.parameters: dict[str, Any] = dict(DEFAULT_PARAMETERS)  # + block-bitmap-mapping once set

    # ---- accessors for the rest of the emulator
    def capability(self, name: str) -> bool:
        return self.capabilities[name]

    def parameter(self, name: str) -> Any:
        return copy.deepcopy(self.parameters.get(name))

    @property
    def tls_enabled(self) -> bool:
        """``migrate_tls()``: tls-creds is non-empty."""
        return bool(self.parameters["tls-creds"])

    # ---- capabilities
    def set_capabilities(self, caps: Iterable[Mapping[str, Any]], state: str = "none", *,
                         incoming_started: bool = False, inmigrate: bool = False,
                         preempt_locked: bool | None = None) -> None:
        """``migrate-set-capabilities`` with visited arguments (a list of ``{capability, state}``).

        ``state`` is the outgoing MigrationStatus; ``incoming_started`` is true once
        migrate-incoming (or ``-incoming URI``) set up its transport; ``inmigrate`` is the
        ``inmigrate`` runstate (``-incoming`` given). ``preempt_locked``: postcopy-preempt can no
        longer be switched on (default: ``incoming_started``, QEMU 9.1's rule). Duplicates: the
        last entry wins."""
        caps = list(caps)
        if state in RUNNING_STATES or state == "colo":
            raise QapiError("There's a migration process in progress")
        new = dict(self.capabilities)
        for entry in caps:
            new[entry["capability"]] = bool(entry["state"])
        self._check_caps(self.capabilities, new, incoming_started, inmigrate,
                         incoming_started if preempt_locked is None else preempt_locked)
        if self.implemented is not None:
            for cap in CAPABILITIES:
                if new[cap] and not self.capabilities[cap] and cap not in self.implemented:
                    raise QapiError(f"Capability '{cap}' is not supported by this emulator")
        self.capabilities = new

    def _check_caps(self, old: Mapping[str, bool], new: Mapping[str, bool], incoming_started: bool,
                    inmigrate: bool, preempt_locked: bool) -> None:
        if new["x-colo"] and not self.replication:
            raise QapiError("QEMU compiled without replication module can't enable COLO")
        if new["postcopy-ram"]:
            reason = self.postcopy_unsupported_reason
            if not old["postcopy-ram"] and inmigrate and callable(reason):
                reason = reason()  # the host probe, run when a destination switches it on (as QEMU)
            if not old["postcopy-ram"] and inmigrate and reason is not None:
                raise QapiError(f"Postcopy is not supported: {reason}")
            if new["x-ignore-shared"]:
                raise QapiError("Postcopy is not compatible with ignore-shared")
            if new["multifd"]:
                raise QapiError("Postcopy is not yet compatible with multifd")
        if new["background-snapshot"]:
            if self.write_tracking == "unavailable":
                raise QapiError("Background-snapshot is not supported by host kernel")
            if self.write_tracking != "compatible":
                raise QapiError("Background-snapshot is not compatible with guest memory configuration")
            for cap in BACKGROUND_SNAPSHOT_INCOMPATIBLE:
                if new[cap]:
                    raise QapiError(f"Background-snapshot is not compatible with {cap}")
        # Linux: the current parameters (compression, TLS) count, not the ones being set
        if new["zero-copy-send"] and (not new["multifd"] or new["xbzrle"]
                                      or self.parameters["multifd-compression"] != "none" or self.tls_enabled):
            raise QapiError("Zero copy only available for non-compressed non-TLS multifd migration")
        if new["postcopy-preempt"]:
            if not new["postcopy-ram"]:
                raise QapiError("Postcopy preempt requires postcopy-ram")
            if preempt_locked:
                raise QapiError("Postcopy preempt must be set before incoming starts")
        if new["multifd"] and incoming_started:
            raise QapiError("Multifd must be set before incoming starts")
        if new["switchover-ack"] and not new["return-path"]:
            raise QapiError("Capability 'switchover-ack' requires capability 'return-path'")
        if new["dirty-limit"]:
            if new["auto-converge"]:
                raise QapiError("dirty-limit conflicts with auto-converge either of then available currently")
            if not self.kvm_dirty_ring:
                raise QapiError("dirty-limit requires KVM with accelerator property 'dirty-ring-size' set")
        if new["multifd"] and new["xbzrle"]:
            raise QapiError("Multifd is not compatible with xbzrle")
        if new["mapped-ram"]:
            if new["xbzrle"]:
                raise QapiError("Mapped-ram migration is incompatible with xbzrle")
            if new["postcopy-ram"]:
                raise QapiError("Mapped-ram migration is incompatible with postcopy")

    def query_capabilities(self) -> list[dict[str, Any]]:
        """``query-migrate-capabilities``: every capability, enum order, members in schema order."""
        return [{"capability": c, "state": self.capabilities[c]} for c in CAPABILITIES]

    # ---- parameters
    def set_parameters(self, args: Mapping[str, Any]) -> None:
        """``migrate-set-parameters`` with visited arguments (``MigrateSetParameters`` members).

        tls-* ``None`` (JSON null) means ``""``. The merged values are checked in QEMU's order;
        on the first failure nothing changes."""
        unknown = [k for k in args if k not in PARAMETERS]
        if unknown:  # the visitor rejects these first; a programming error here
            raise ValueError(f"unknown migration parameter(s) {unknown}")
        new: dict[str, Any] = {k: ("" if v is None and k.startswith("tls-") else v) for k, v in args.items()}
        merged = dict(self.parameters)
        merged.update(new)
        self._check_params(merged)
        for k, v in new.items():
            self.parameters[k] = _normalize_mapping(v) if k == "block-bitmap-mapping" else v
        # schema order (block-bitmap-mapping slots in after multifd-zstd-level)
        self.parameters = {k: self.parameters[k] for k in PARAMETERS if k in self.parameters}

    def _check_params(self, p: Mapping[str, Any]) -> None:
        if not 1 <= p["throttle-trigger-threshold"] <= 100:
            raise _expects("throttle_trigger_threshold", "an integer in the range of 1 to 100")
        if not 1 <= p["cpu-throttle-initial"] <= 99:
            raise _expects("cpu_throttle_initial", "an integer in the range of 1 to 99")
        if not 1 <= p["cpu-throttle-increment"] <= 99:
            raise _expects("cpu_throttle_increment", "an integer in the range of 1 to 99")
        if p["max-bandwidth"] > SIZE_MAX:  # never with 64-bit sizes
            raise _expects("max_bandwidth", "an integer in the range of 0 to (18446744073709551615UL) bytes/second")
        if p["avail-switchover-bandwidth"] > SIZE_MAX:
            raise _expects("avail_switchover_bandwidth",
                           "an integer in the range of 0 to (18446744073709551615UL) bytes/second")
        if p["downtime-limit"] > MAX_MIGRATE_DOWNTIME:
            raise _expects("downtime_limit", "an integer in the range of 0 to (2000 * 1000) ms")
        if p["multifd-channels"] < 1:
            raise _expects("multifd_channels", "a value between 1 and 255")
        if p["multifd-zlib-level"] > 9:
            raise _expects("multifd_zlib_level", "a value between 0 and 9")
        if p["multifd-zstd-level"] > 20:
            raise _expects("multifd_zstd_level", "a value between 0 and 20")
        size = p["xbzrle-cache-size"]
        if size < self.target_page_size or size & (size - 1):
            raise _expects("xbzrle_cache_size", "a power of two no less than the target page size")
        if not p["cpu-throttle-initial"] <= p["max-cpu-throttle"] <= 99:
            raise _expects("max_cpu_throttle", "an integer in the range of cpu_throttle_initial to 99")
        if p["announce-initial"] > 100000:
            raise _expects("announce_initial", "a value between 0 and 100000")
        if p["announce-max"] > 100000:
            raise _expects("announce_max", "a value between 0 and 100000")
        if p["announce-rounds"] > 1000:
            raise _expects("announce_rounds", "a value between 0 and 1000")
        if not 1 <= p["announce-step"] <= 10000:
            raise _expects("announce_step", "a value between 0 and 10000")
        if "block-bitmap-mapping" in p:
            detail = check_bitmap_alias_map(p["block-bitmap-mapping"])
            if detail is not None:
                raise QapiError(f"Invalid mapping given for block-bitmap-mapping: {detail}")
        # zero copy: the merged values; mapped-ram: the current ones (QEMU reads the live state)
        if self.capabilities["zero-copy-send"] and (p["multifd-compression"] != "none" or p["tls-creds"]):
            raise QapiError("Zero copy only available for non-compressed non-TLS multifd migration")
        if self.capabilities["mapped-ram"] and (self.parameters["multifd-compression"] != "none"
                                                or self.tls_enabled):
            raise QapiError("Mapped-ram only available for non-compressed non-TLS multifd migration")
        if not 1 <= p["x-vcpu-dirty-limit-period"] <= 1000:
            raise _expects("x-vcpu-dirty-limit-period", "a value between 1 and 1000")
        if p["vcpu-dirty-limit"] < 1:
            raise QapiError("Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s")
        if p["direct-io"] and not self.direct_io_supported:
            raise QapiError("No build-time support for direct-io")

    def query_parameters(self) -> dict[str, Any]:
        """``query-migrate-parameters``: every member in schema order (the serializer applies the
        QDict order); tls-* as strings; block-bitmap-mapping only once it has been set."""
        return copy.deepcopy(self.parameters)
