"""Migration capabilities and parameters (spec/migration-qapi.md §9, §10): defaults, every check
message in QEMU 9.1's order, atomicity, set -> query round trips, and the schema around them."""
from __future__ import annotations

from typing import Any

import pytest

from emu.errors import QapiError
from emu.migration.params import CAPABILITIES, RUNNING_STATES, MigrationConfig
from emu.migration.schema import SCHEMA as MIG
from emu.migration.schema_params import SCHEMA as PARAMS
from emu.monitor.qapi import Schema
from emu.monitor.qjson import dumps, qdict_order
from emu.monitor.schema_core import SCHEMA as CORE

SCHEMA = Schema(CORE + MIG + PARAMS)

SPEC_CAPS = ["xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram", "x-colo", "release-ram", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit", "mapped-ram"]
SPEC_DEFAULTS = {
    "throttle-trigger-threshold": 50, "cpu-throttle-initial": 20, "cpu-throttle-increment": 10,
    "max-bandwidth": 134217728, "avail-switchover-bandwidth": 0, "downtime-limit": 300, "multifd-channels": 2,
    "multifd-zlib-level": 1, "multifd-zstd-level": 1, "xbzrle-cache-size": 67108864, "max-cpu-throttle": 99,
    "announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
    "x-vcpu-dirty-limit-period": 1000, "vcpu-dirty-limit": 1, "direct-io": False, "cpu-throttle-tailslow": False,
    "tls-creds": "", "tls-hostname": "", "tls-authz": "", "x-checkpoint-delay": 20000, "max-postcopy-bandwidth": 0,
    "multifd-compression": "none", "mode": "normal", "zero-page-detection": "multifd",
}
PREDICTED_ORDER = ["cpu-throttle-tailslow", "xbzrle-cache-size", "cpu-throttle-initial", "announce-max", "direct-io", "avail-switchover-bandwidth", "zero-page-detection", "multifd-channels", "mode", "multifd-zstd-level", "announce-initial", "downtime-limit", "tls-authz", "vcpu-dirty-limit", "multifd-compression", "announce-rounds", "announce-step", "tls-creds", "x-vcpu-dirty-limit-period", "multifd-zlib-level", "max-cpu-throttle", "max-postcopy-bandwidth", "tls-hostname", "throttle-trigger-threshold", "max-bandwidth", "x-checkpoint-delay", "cpu-throttle-increment"]


def caps(*names: str, state: bool = True) -> list[dict[str, Any]]:
    return [{"capability": n, "state": state} for n in names]


def set_caps(cfg: MigrationConfig, *names: str, **kw: Any) -> None:
    cfg.set_capabilities(SCHEMA.check_args("migrate-set-capabilities", {"capabilities": caps(*names)})[
        "capabilities"], **kw)


def set_params(cfg: MigrationConfig, args: dict[str, Any]) -> None:
    cfg.set_parameters(SCHEMA.check_args("migrate-set-parameters", args))


def refused(fn: Any, *a: Any, **kw: Any) -> str:
    with pytest.raises(QapiError) as exc:
        fn(*a, **kw)
    assert exc.value.cls == "GenericError"
    return exc.value.desc


# ---------------------------------------------------------------------------------------------
# schema

def test_schema_compiles_and_orders() -> None:
    assert SCHEMA.entities["MigrationCapability"].values == SPEC_CAPS  # type: ignore[attr-defined]
    assert SCHEMA.entities["MultiFDCompression"].values == ["none", "zlib", "zstd"]  # type: ignore[attr-defined]
    members = [m.name for m in SCHEMA.entities["MigrationParameters"].members]  # type: ignore[attr-defined]
    assert members == [m.name for m in SCHEMA.entities["MigrateSetParameters"].members]  # type: ignore[attr-defined]
    assert members.index("block-bitmap-mapping") == members.index("multifd-zstd-level") + 1
    assert SCHEMA.commands["migrate-set-parameters"].boxed
    unstable = {m.name for m in SCHEMA.entities["MigrationParameters"].members  # type: ignore[attr-defined]
                if "unstable" in m.features}
    assert unstable == {"x-checkpoint-delay", "x-vcpu-dirty-limit-period"}


@pytest.mark.parametrize("args, desc", [
    ({"tls-creds": 1}, "Invalid parameter type for 'tls-creds', expected: StrOrNull"),
    ({"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
    ({"multifd-channels": -1}, "Parameter 'multifd-channels' expects uint8_t"),
    ({"x-checkpoint-delay": 1 << 32}, "Parameter 'x-checkpoint-delay' expects uint32_t"),
    ({"max-bandwidth": "x"}, "Parameter 'max-bandwidth' expects uint64"),
    ({"max-bandwidth": 1.5}, "Parameter 'max-bandwidth' expects uint64"),
    ({"compress-level": 1}, "Parameter 'compress-level' is unexpected"),
    ({"block-incremental": True}, "Parameter 'block-incremental' is unexpected"),
    ({"multifd-compression": "qpl"}, "Parameter 'multifd-compression' does not accept value 'qpl'"),
    ({"mode": "cpr-transfer"}, "Parameter 'mode' does not accept value 'cpr-transfer'"),
    ({"block-bitmap-mapping": [{"node-name": "a", "alias": "b", "bitmaps": [
        {"name": "x", "alias": "y", "transform": {"persistent": 1}}]}]},
     "Invalid parameter type for 'block-bitmap-mapping[0].bitmaps[0].transform.persistent', expected: boolean"),
])
def test_set_parameters_visitor_errors(args: dict[str, Any], desc: str) -> None:
    assert refused(SCHEMA.check_args, "migrate-set-parameters", args) == desc


@pytest.mark.parametrize("args, desc", [
    ({"capabilities": [{"capability": "compress", "state": True}]},
     "Parameter 'capability' does not accept value 'compress'"),
    ({"capabilities": [{"capability": "block", "state": True}]},
     "Parameter 'capability' does not accept value 'block'"),
    ({"capabilities": [{"capability": "xbzrle"}]}, "Parameter 'capabilities[0].state' is missing"),
    ({"capabilities": [{"capability": "xbzrle", "state": True, "x": 1}]},
     "Parameter 'capabilities[0].x' is unexpected"),
    ({"capabilities": [1]}, "Invalid parameter type for 'capabilities[0]', expected: object"),
    ({}, "Parameter 'capabilities' is missing"),
])
def test_set_capabilities_visitor_errors(args: dict[str, Any], desc: str) -> None:
    assert refused(SCHEMA.check_args, "migrate-set-capabilities", args) == desc


# ---------------------------------------------------------------------------------------------
# defaults and queries

def test_capability_defaults_and_order() -> None:
    cfg = MigrationConfig()
    out = cfg.query_capabilities()
    assert [c["capability"] for c in out] == SPEC_CAPS == list(CAPABILITIES)
    assert all(c["state"] is False for c in out)
    assert dumps(out[0]) == '{"state": false, "capability": "xbzrle"}'


def test_parameter_defaults_and_wire_order() -> None:
    out = MigrationConfig().query_parameters()
    assert out == SPEC_DEFAULTS
    assert "block-bitmap-mapping" not in out
    assert list(out) == [m.name for m in SCHEMA.entities["MigrationParameters"].members  # type: ignore[attr-defined]
                         if m.name != "block-bitmap-mapping"]
    assert qdict_order(list(out)) == PREDICTED_ORDER


def test_query_returns_copies() -> None:
    cfg = MigrationConfig()
    cfg.query_parameters()["downtime-limit"] = 1
    cfg.query_capabilities()[0]["state"] = True
    assert cfg.query_parameters()["downtime-limit"] == 300 and not cfg.capability("xbzrle")


# ---------------------------------------------------------------------------------------------
# capabilities: behaviour and every §9 message

def test_set_capabilities_basics() -> None:
    cfg = MigrationConfig()
    cfg.set_capabilities([])
    set_caps(cfg, "events", "xbzrle")
    cfg.set_capabilities(caps("xbzrle") + caps("xbzrle", state=False))  # last one wins
    assert {c["capability"] for c in cfg.query_capabilities() if c["state"]} == {"events"}
    for name in CAPABILITIES:  # everything accepted alone, except the two refused ones
        fresh = MigrationConfig()
        if name in ("x-colo", "dirty-limit", "switchover-ack", "postcopy-preempt", "zero-copy-send"):
            continue
        set_caps(fresh, name)
        assert fresh.capability(name)


@pytest.mark.parametrize("state", sorted(RUNNING_STATES | {"colo"}))
def test_capabilities_refused_while_running(state: str) -> None:
    cfg = MigrationConfig()
    assert refused(cfg.set_capabilities, caps("xbzrle"), state) == "There's a migration process in progress"
    assert refused(cfg.set_capabilities, [], state) == "There's a migration process in progress"


@pytest.mark.parametrize("state", ["none", "completed", "failed", "cancelled"])
def test_capabilities_allowed_when_idle(state: str) -> None:
    cfg = MigrationConfig()
    cfg.set_capabilities(caps("xbzrle"), state)
    assert cfg.capability("xbzrle")


CAP_CASES: list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any], str]] = [
    # (capabilities, MigrationConfig options, set_capabilities keywords, message)
    (("x-colo",), {}, {}, "QEMU compiled without replication module can't enable COLO"),
    (("x-colo", "postcopy-ram", "multifd"), {}, {}, "QEMU compiled without replication module can't enable COLO"),
    (("postcopy-ram",), {"postcopy_unsupported_reason": "Userfaultfd not available: Operation not permitted"},
     {"inmigrate": True}, "Postcopy is not supported: Userfaultfd not available: Operation not permitted"),
    (("postcopy-ram", "x-ignore-shared"), {}, {}, "Postcopy is not compatible with ignore-shared"),
    (("postcopy-ram", "x-ignore-shared", "multifd"), {}, {}, "Postcopy is not compatible with ignore-shared"),
    (("postcopy-ram", "multifd"), {}, {}, "Postcopy is not yet compatible with multifd"),
    (("background-snapshot",), {"write_tracking": "unavailable"}, {},
     "Background-snapshot is not supported by host kernel"),
    (("background-snapshot",), {"write_tracking": "available"}, {},
     "Background-snapshot is not compatible with guest memory configuration"),
    (("zero-copy-send",), {}, {}, "Zero copy only available for non-compressed non-TLS multifd migration"),
    (("zero-copy-send", "multifd", "xbzrle"), {}, {},
     "Zero copy only available for non-compressed non-TLS multifd migration"),
    (("postcopy-preempt",), {}, {}, "Postcopy preempt requires postcopy-ram"),
    (("postcopy-preempt", "postcopy-ram"), {}, {"incoming_started": True},
     "Postcopy preempt must be set before incoming starts"),
    (("multifd",), {}, {"incoming_started": True}, "Multifd must be set before incoming starts"),
    (("switchover-ack",), {}, {}, "Capability 'switchover-ack' requires capability 'return-path'"),
    (("dirty-limit", "auto-converge"), {}, {},
     "dirty-limit conflicts with auto-converge either of then available currently"),
    (("dirty-limit",), {}, {}, "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"),
    (("multifd", "xbzrle"), {}, {}, "Multifd is not compatible with xbzrle"),
    (("mapped-ram", "xbzrle"), {}, {}, "Mapped-ram migration is incompatible with xbzrle"),
    (("mapped-ram", "postcopy-ram"), {}, {}, "Mapped-ram migration is incompatible with postcopy"),
    # order: the earlier check wins
    (("postcopy-ram", "multifd", "xbzrle"), {}, {}, "Postcopy is not yet compatible with multifd"),
    (("switchover-ack", "multifd", "xbzrle"), {}, {}, "Capability 'switchover-ack' requires capability 'return-path'"),
    (("mapped-ram", "xbzrle", "multifd"), {}, {}, "Multifd is not compatible with xbzrle"),
]


@pytest.mark.parametrize("names, opts, kw, desc", CAP_CASES)
def test_capability_checks(names: tuple[str, ...], opts: dict[str, Any], kw: dict[str, Any], desc: str) -> None:
    cfg = MigrationConfig(**opts)
    before = cfg.query_capabilities()
    assert refused(set_caps, cfg, *names, **kw) == desc
    assert cfg.query_capabilities() == before


@pytest.mark.parametrize("other", [
    "postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "return-path", "multifd",
    "pause-before-switchover", "auto-converge", "release-ram", "rdma-pin-all", "xbzrle", "validate-uuid",
    "zero-copy-send"])
def test_background_snapshot_incompatible(other: str) -> None:
    cfg = MigrationConfig()
    assert refused(cfg.set_capabilities, caps("background-snapshot", other)) == \
        f"Background-snapshot is not compatible with {other}"


def test_background_snapshot_first_in_list_order_wins() -> None:
    cfg = MigrationConfig()
    # xbzrle comes before dirty-bitmaps in the enum, but dirty-bitmaps comes first in QEMU's list
    assert refused(cfg.set_capabilities, caps("xbzrle", "background-snapshot", "dirty-bitmaps")) == \
        "Background-snapshot is not compatible with dirty-bitmaps"
    cfg = MigrationConfig(replication=True)
    assert refused(cfg.set_capabilities, caps("background-snapshot", "x-colo")) == \
        "Background-snapshot is not compatible with x-colo"


def test_capability_checks_pass_when_allowed() -> None:
    cfg = MigrationConfig(replication=True, kvm_dirty_ring=True)
    set_caps(cfg, "x-colo")
    set_caps(cfg, "dirty-limit")
    cfg = MigrationConfig()
    set_caps(cfg, "return-path", "switchover-ack")
    set_caps(cfg, "postcopy-ram", "postcopy-preempt", inmigrate=True)
    # the whole new set is checked: postcopy-ram stays on, so multifd is refused now
    assert refused(set_caps, cfg, "multifd") == "Postcopy is not yet compatible with multifd"
    cfg.set_capabilities(caps("postcopy-ram", "postcopy-preempt", state=False) + caps("multifd", "zero-copy-send"))
    assert cfg.capability("multifd") and cfg.capability("zero-copy-send")
    cfg2 = MigrationConfig(postcopy_unsupported_reason="no")
    set_caps(cfg2, "postcopy-ram")  # the probe only runs on the destination (inmigrate)
    set_caps(cfg2, "postcopy-ram", inmigrate=True)  # ... and only when it is being turned on


def test_zero_copy_uses_current_parameters() -> None:
    cfg = MigrationConfig()
    set_params(cfg, {"multifd-compression": "zlib"})
    assert refused(set_caps, cfg, "multifd", "zero-copy-send") == \
        "Zero copy only available for non-compressed non-TLS multifd migration"
    set_params(cfg, {"multifd-compression": "none", "tls-creds": "tls0"})
    assert refused(set_caps, cfg, "multifd", "zero-copy-send") == \
        "Zero copy only available for non-compressed non-TLS multifd migration"
    set_params(cfg, {"tls-creds": None})
    set_caps(cfg, "multifd", "zero-copy-send")


# ---------------------------------------------------------------------------------------------
# parameters: every §10 message

PARAM_CASES = [
    ({"throttle-trigger-threshold": 0}, "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
    ({"throttle-trigger-threshold": 101}, "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
    ({"cpu-throttle-initial": 0}, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
    ({"cpu-throttle-initial": 100}, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
    ({"cpu-throttle-increment": 0}, "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
    ({"cpu-throttle-increment": 255}, "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
    ({"downtime-limit": 2000001}, "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
    ({"downtime-limit": -1}, "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
    ({"multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
    ({"multifd-zlib-level": 10}, "Parameter 'multifd_zlib_level' expects a value between 0 and 9"),
    ({"multifd-zstd-level": 21}, "Parameter 'multifd_zstd_level' expects a value between 0 and 20"),
    ({"xbzrle-cache-size": 0}, "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"),
    ({"xbzrle-cache-size": 2048}, "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"),
    ({"xbzrle-cache-size": 3 << 20}, "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"),
    ({"max-cpu-throttle": 100}, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    ({"max-cpu-throttle": 19}, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    ({"announce-initial": 100001}, "Parameter 'announce_initial' expects a value between 0 and 100000"),
    ({"announce-max": 100001}, "Parameter 'announce_max' expects a value between 0 and 100000"),
    ({"announce-rounds": 1001}, "Parameter 'announce_rounds' expects a value between 0 and 1000"),
    ({"announce-step": 0}, "Parameter 'announce_step' expects a value between 0 and 10000"),
    ({"announce-step": 10001}, "Parameter 'announce_step' expects a value between 0 and 10000"),
    ({"x-vcpu-dirty-limit-period": 0}, "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000"),
    ({"x-vcpu-dirty-limit-period": 1001}, "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000"),
    ({"vcpu-dirty-limit": 0}, "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"),
    # check order: the first failing check in QEMU's order wins, whatever the argument order
    ({"vcpu-dirty-limit": 0, "multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
    ({"announce-step": 0, "downtime-limit": 1 << 40, "throttle-trigger-threshold": 0},
     "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
    ({"max-cpu-throttle": 100, "xbzrle-cache-size": 1}, "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"),
    # max-cpu-throttle is checked against the merged cpu-throttle-initial
    ({"cpu-throttle-initial": 50, "max-cpu-throttle": 40}, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
]


@pytest.mark.parametrize("args, desc", PARAM_CASES)
def test_parameter_checks(args: dict[str, Any], desc: str) -> None:
    cfg = MigrationConfig()
    set_params(cfg, {"tls-creds": "a", "max-bandwidth": 5})
    before = cfg.query_parameters()
    assert refused(set_params, cfg, {"tls-hostname": "host", **args, "max-postcopy-bandwidth": 7}) == desc
    assert cfg.query_parameters() == before


def test_max_cpu_throttle_merged_with_current() -> None:
    cfg = MigrationConfig()
    set_params(cfg, {"max-cpu-throttle": 30})
    assert refused(set_params, cfg, {"cpu-throttle-initial": 31}) == \
        "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"
    set_params(cfg, {"cpu-throttle-initial": 30})
    set_params(cfg, {"cpu-throttle-initial": 99, "max-cpu-throttle": 99})


def test_boundaries_accepted() -> None:
    cfg = MigrationConfig()
    good = {"throttle-trigger-threshold": 100, "cpu-throttle-initial": 1, "cpu-throttle-increment": 99,
            "downtime-limit": 2000000, "multifd-channels": 255, "multifd-zlib-level": 9, "multifd-zstd-level": 20,
            "xbzrle-cache-size": 4096, "max-cpu-throttle": 1, "announce-initial": 100000, "announce-max": 0,
            "announce-rounds": 1000, "announce-step": 1, "x-vcpu-dirty-limit-period": 1,
            "vcpu-dirty-limit": 1 << 63, "max-bandwidth": -1, "avail-switchover-bandwidth": (1 << 64) - 1,
            "x-checkpoint-delay": (1 << 32) - 1, "direct-io": True, "mode": "cpr-reboot",
            "zero-page-detection": "legacy", "multifd-compression": "zstd", "cpu-throttle-tailslow": True}
    set_params(cfg, good)
    out = cfg.query_parameters()
    assert out["max-bandwidth"] == (1 << 64) - 1  # the visitor wraps -1
    for k, v in good.items():
        if k != "max-bandwidth":
            assert out[k] == v, k


def test_block_bitmap_mapping() -> None:
    cfg = MigrationConfig()
    mapping = [{"bitmaps": [{"alias": "b0", "name": "bitmap0", "transform": {"persistent": True}},
                            {"alias": "b1", "name": "bitmap1"}], "alias": "n0", "node-name": "drive0"}]
    set_params(cfg, {"block-bitmap-mapping": mapping})
    out = cfg.query_parameters()
    assert out["block-bitmap-mapping"] == mapping
    assert list(out["block-bitmap-mapping"][0]) == ["node-name", "alias", "bitmaps"]
    assert list(out)[list(out).index("multifd-zstd-level") + 1] == "block-bitmap-mapping"
    mapping[0]["alias"] = "changed"
    assert cfg.query_parameters()["block-bitmap-mapping"][0]["alias"] == "n0"
    set_params(cfg, {"block-bitmap-mapping": []})
    assert cfg.query_parameters()["block-bitmap-mapping"] == []  # stays present once set
    set_params(cfg, {"downtime-limit": 5})
    assert cfg.query_parameters()["block-bitmap-mapping"] == []


def node(name: str, alias: str, *bitmaps: tuple[str, str]) -> dict[str, Any]:
    return {"node-name": name, "alias": alias, "bitmaps": [{"name": n, "alias": a} for n, a in bitmaps]}


@pytest.mark.parametrize("mapping, detail", [
    ([node("d", "1a")], "The node alias '1a' is not well-formed"),
    ([node("d", "")], "The node alias '' is not well-formed"),
    ([node("d", "a b")], "The node alias 'a b' is not well-formed"),
    ([node("d", "a" * 256)], f"The node alias '{'a' * 256}' is longer than 255 bytes"),
    ([node("d" * 32, "a")], f"The node name '{'d' * 32}' is longer than 31 bytes"),
    ([node("d", "a"), node("d", "b")], "The node name 'd' is mapped twice"),
    ([node("d", "a"), node("e", "a")], "The node alias 'a' is used twice"),
    ([node("d", "a", ("b", "x" * 256))], f"The bitmap alias '{'x' * 256}' is longer than 255 bytes"),
    ([node("d", "a", ("b" * 1024, "x"))], f"The bitmap name '{'b' * 1024}' is longer than 1023 bytes"),
    ([node("d", "a", ("b", "x"), ("b", "y"))], "The bitmap 'd'/'b' is mapped twice"),
    ([node("d", "a", ("b", "x"), ("c", "x"))], "The bitmap alias 'a'/'x' is used twice"),
    # the name->alias pass runs over the whole list before the alias->name pass
    ([node("d", "a"), node("e", "a"), node("e", "z")], "The node name 'e' is mapped twice"),
])
def test_block_bitmap_mapping_errors(mapping: list[dict[str, Any]], detail: str) -> None:
    cfg = MigrationConfig()
    before = cfg.query_parameters()
    assert refused(set_params, cfg, {"block-bitmap-mapping": mapping}) == \
        f"Invalid mapping given for block-bitmap-mapping: {detail}"
    assert cfg.query_parameters() == before


def test_block_bitmap_mapping_checked_after_ranges_before_dirty_limit() -> None:
    cfg = MigrationConfig()
    bad = [node("d", "1")]
    assert refused(set_params, cfg, {"block-bitmap-mapping": bad, "announce-step": 0}) == \
        "Parameter 'announce_step' expects a value between 0 and 10000"
    assert refused(set_params, cfg, {"block-bitmap-mapping": bad, "vcpu-dirty-limit": 0}).startswith(
        "Invalid mapping given for block-bitmap-mapping: ")


def test_zero_copy_parameter_check_uses_merged_values() -> None:
    cfg = MigrationConfig()
    set_caps(cfg, "multifd", "zero-copy-send")
    msg = "Zero copy only available for non-compressed non-TLS multifd migration"
    assert refused(set_params, cfg, {"multifd-compression": "zlib"}) == msg
    assert refused(set_params, cfg, {"tls-creds": "tls0"}) == msg
    set_params(cfg, {"tls-creds": None, "tls-hostname": "h"})
    # the zero-copy check precedes x-vcpu-dirty-limit-period and vcpu-dirty-limit
    assert refused(set_params, cfg, {"multifd-compression": "zstd", "vcpu-dirty-limit": 0}) == msg
    assert refused(set_params, cfg, {"multifd-compression": "zstd", "announce-max": 1 << 20}) == \
        "Parameter 'announce_max' expects a value between 0 and 100000"


def test_mapped_ram_parameter_check_uses_current_values() -> None:
    msg = "Mapped-ram only available for non-compressed non-TLS multifd migration"
    cfg = MigrationConfig()
    set_caps(cfg, "mapped-ram")
    set_params(cfg, {"multifd-compression": "zlib"})  # current compression is none: accepted
    assert cfg.query_parameters()["multifd-compression"] == "zlib"
    assert refused(set_params, cfg, {}) == msg  # now every set fails, even undoing it
    assert refused(set_params, cfg, {"multifd-compression": "none"}) == msg
    cfg = MigrationConfig()
    set_params(cfg, {"tls-creds": "tls0"})
    set_caps(cfg, "mapped-ram")
    assert refused(set_params, cfg, {"tls-creds": ""}) == msg
    assert refused(set_params, cfg, {"x-vcpu-dirty-limit-period": 0}) == msg


def test_direct_io_unsupported() -> None:
    cfg = MigrationConfig(direct_io_supported=False)
    assert refused(set_params, cfg, {"direct-io": True, "vcpu-dirty-limit": 2}) == "No build-time support for direct-io"
    set_params(cfg, {"direct-io": False})
    assert refused(set_params, cfg, {"direct-io": True, "vcpu-dirty-limit": 0}) == \
        "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"


# ---------------------------------------------------------------------------------------------
# round trips and atomicity

def test_empty_set_succeeds_and_changes_nothing() -> None:
    cfg = MigrationConfig()
    set_params(cfg, {})
    assert cfg.query_parameters() == SPEC_DEFAULTS


def test_round_trip_every_parameter() -> None:
    cfg = MigrationConfig()
    new = {"announce-initial": 1, "announce-max": 2, "announce-rounds": 3, "announce-step": 4,
           "throttle-trigger-threshold": 5, "cpu-throttle-initial": 6, "cpu-throttle-increment": 7,
           "cpu-throttle-tailslow": True, "tls-creds": "c", "tls-hostname": "h", "tls-authz": "z",
           "max-bandwidth": 8, "avail-switchover-bandwidth": 9, "downtime-limit": 10, "x-checkpoint-delay": 11,
           "multifd-channels": 12, "xbzrle-cache-size": 8192, "max-postcopy-bandwidth": 13, "max-cpu-throttle": 14,
           "multifd-compression": "zlib", "multifd-zlib-level": 0, "multifd-zstd-level": 0,
           "block-bitmap-mapping": [node("n", "a", ("b", "c"))], "x-vcpu-dirty-limit-period": 15,
           "vcpu-dirty-limit": 16, "mode": "cpr-reboot", "zero-page-detection": "none", "direct-io": True}
    set_params(cfg, dict(reversed(list(new.items()))))
    out = cfg.query_parameters()
    assert out == new and list(out) == list(new)  # schema order, whatever the argument order
    assert SCHEMA.check_args("migrate-set-parameters", out) == out  # query output is valid input


def test_tls_null_means_empty_string() -> None:
    cfg = MigrationConfig()
    set_params(cfg, {"tls-creds": "x", "tls-hostname": "y", "tls-authz": "z"})
    set_params(cfg, {"tls-creds": None, "tls-hostname": None, "tls-authz": None})
    out = cfg.query_parameters()
    assert (out["tls-creds"], out["tls-hostname"], out["tls-authz"]) == ("", "", "")


def test_failed_set_is_atomic() -> None:
    cfg = MigrationConfig()
    set_params(cfg, {"downtime-limit": 1000})
    before = cfg.query_parameters()
    assert refused(set_params, cfg, {"downtime-limit": 5, "max-bandwidth": 1, "tls-creds": "t",
                                     "block-bitmap-mapping": [node("d", "a")], "vcpu-dirty-limit": 0})
    assert cfg.query_parameters() == before
    set_caps(cfg, "events")
    capsb = cfg.query_capabilities()
    assert refused(cfg.set_capabilities, caps("xbzrle", "auto-converge", "multifd"))
    assert cfg.query_capabilities() == capsb


def test_set_parameters_allowed_during_migration() -> None:
    cfg = MigrationConfig()
    set_params(cfg, {"max-bandwidth": 1})  # no state argument: never refused for running migrations
    assert cfg.parameter("max-bandwidth") == 1
