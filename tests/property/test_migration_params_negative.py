"""Negative property tests for migrate-set-capabilities and migrate-set-parameters (QEMU 9.1).

Arguments are generated, then checked the way the monitor runs the commands: ``Schema.check_args``
(the QAPI visitor) first, then ``MigrationConfig.set_capabilities`` / ``set_parameters``. The
expected error text is computed here from spec/migration-qapi.md §2, §9 and §10, written as
tables (member types, check order, messages), never by asking the code under test:

* visitor errors: bare member names for enum values and uint8/uint32 ranges, full paths for
  missing / unexpected / wrong-type members, ``expects uint64`` for non-integers and integers
  outside [-2^63, 2^64) in unsigned members; the first bad member in schema order wins, and an
  unexpected member is reported only when every known member was fine;
* semantic errors: the first failing check in QEMU's order over the merged values (the current
  values updated by the arguments), with the C field names;
* any rejected command leaves ``query_parameters()`` and ``query_capabilities()`` unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emu.errors import QapiError
from emu.migration.params import MigrationConfig
from emu.migration.schema import SCHEMA as MIG
from emu.migration.schema_params import SCHEMA as PARAMS
from emu.monitor.qapi import Schema
from emu.monitor.schema_core import SCHEMA as CORE

SCHEMA = Schema(CORE + MIG + PARAMS)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT64_MIN, UINT64_MAX = -(1 << 63), (1 << 64) - 1

# ---------------------------------------------------------------------------------------------
# The rules, from the spec

CAPS = ["xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "events", "postcopy-ram", "x-colo", "release-ram", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit", "mapped-ram"]
BG_SNAPSHOT_LIST = ["postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "return-path", "multifd", "pause-before-switchover", "auto-converge", "release-ram", "rdma-pin-all", "xbzrle", "x-colo", "validate-uuid", "zero-copy-send"]
RUNNING = ["setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover-setup", "postcopy-recover", "cancelling", "pre-switchover", "device", "wait-unplug", "colo"]
IDLE = ["none", "completed", "failed", "cancelled"]

# MigrateSetParameters members in schema order with their types (§10)
TYPES: dict[str, str] = {
    "announce-initial": "size", "announce-max": "size", "announce-rounds": "size", "announce-step": "size",
    "throttle-trigger-threshold": "uint8", "cpu-throttle-initial": "uint8", "cpu-throttle-increment": "uint8",
    "cpu-throttle-tailslow": "bool", "tls-creds": "StrOrNull", "tls-hostname": "StrOrNull",
    "tls-authz": "StrOrNull", "max-bandwidth": "size", "avail-switchover-bandwidth": "size",
    "downtime-limit": "uint64", "x-checkpoint-delay": "uint32", "multifd-channels": "uint8",
    "xbzrle-cache-size": "size", "max-postcopy-bandwidth": "size", "max-cpu-throttle": "uint8",
    "multifd-compression": "MultiFDCompression", "multifd-zlib-level": "uint8", "multifd-zstd-level": "uint8",
    "block-bitmap-mapping": "mapping", "x-vcpu-dirty-limit-period": "uint64", "vcpu-dirty-limit": "uint64",
    "mode": "MigMode", "zero-page-detection": "ZeroPageDetection", "direct-io": "bool",
}
ENUMS = {"MultiFDCompression": ["none", "zlib", "zstd"], "MigMode": ["normal", "cpr-reboot"],
         "ZeroPageDetection": ["none", "legacy", "multifd"]}
WIDTH = {"uint8": 8, "uint32": 32}
REMOVED = ["compress-level", "compress-threads", "compress-wait-thread", "decompress-threads", "block-incremental"]


def ranged(c_name: str, lo: int, hi: int, text: str) -> tuple[str, Callable[[int], bool], str]:
    return c_name, (lambda v: lo <= v <= hi), f"Parameter '{c_name}' expects {text}"


# (member, valid?, message) in migrate_params_check order; the cross checks are handled apart
RANGE_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("throttle-trigger-threshold", *ranged("throttle_trigger_threshold", 1, 100,
                                           "an integer in the range of 1 to 100")[1:]),
    ("cpu-throttle-initial", *ranged("cpu_throttle_initial", 1, 99, "an integer in the range of 1 to 99")[1:]),
    ("cpu-throttle-increment", *ranged("cpu_throttle_increment", 1, 99, "an integer in the range of 1 to 99")[1:]),
    ("downtime-limit", *ranged("downtime_limit", 0, 2000000,
                               "an integer in the range of 0 to (2000 * 1000) ms")[1:]),
    ("multifd-channels", *ranged("multifd_channels", 1, 255, "a value between 1 and 255")[1:]),
    ("multifd-zlib-level", *ranged("multifd_zlib_level", 0, 9, "a value between 0 and 9")[1:]),
    ("multifd-zstd-level", *ranged("multifd_zstd_level", 0, 20, "a value between 0 and 20")[1:]),
    ("xbzrle-cache-size", lambda v: v >= 4096 and v.bit_count() == 1,
     "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"),
    ("max-cpu-throttle", None,  # type: ignore[list-item]  # depends on cpu-throttle-initial
     "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    ("announce-initial", *ranged("announce_initial", 0, 100000, "a value between 0 and 100000")[1:]),
    ("announce-max", *ranged("announce_max", 0, 100000, "a value between 0 and 100000")[1:]),
    ("announce-rounds", *ranged("announce_rounds", 0, 1000, "a value between 0 and 1000")[1:]),
    ("announce-step", lambda v: 1 <= v <= 10000, "Parameter 'announce_step' expects a value between 0 and 10000"),
    ("block-bitmap-mapping", None, ""),  # type: ignore[list-item]  # placeholder: alias-map check
    ("zero-copy", None, "Zero copy only available for non-compressed non-TLS multifd migration"),  # type: ignore
    ("mapped-ram", None, "Mapped-ram only available for non-compressed non-TLS multifd migration"),  # type: ignore
    ("x-vcpu-dirty-limit-period", lambda v: 1 <= v <= 1000,
     "Parameter 'x-vcpu-dirty-limit-period' expects a value between 1 and 1000"),
    ("vcpu-dirty-limit", lambda v: v >= 1, "Parameter 'vcpu_dirty_limit' must be greater than 1 MB/s"),
]


def expected_param_error(current: dict[str, Any], caps: dict[str, bool], args: dict[str, Any]) -> str | None:
    merged = dict(current)
    merged.update({k: ("" if v is None else v) if k.startswith("tls-") else v for k, v in args.items()})
    for member, ok, msg in RANGE_RULES:
        if member == "max-cpu-throttle":
            if not merged["cpu-throttle-initial"] <= merged["max-cpu-throttle"] <= 99:
                return msg
        elif member == "block-bitmap-mapping":
            if "block-bitmap-mapping" in merged:
                bad = bad_alias(merged["block-bitmap-mapping"])
                if bad is not None:
                    return f"Invalid mapping given for block-bitmap-mapping: The node alias '{bad}' is not well-formed"
        elif member == "zero-copy":
            if caps["zero-copy-send"] and (merged["multifd-compression"] != "none" or merged["tls-creds"] != ""):
                return msg
        elif member == "mapped-ram":
            if caps["mapped-ram"] and (current["multifd-compression"] != "none" or current["tls-creds"] != ""):
                return msg
        elif not ok(merged[member]):
            return msg
    return None


def bad_alias(mapping: list[dict[str, Any]]) -> str | None:
    """Only well-formedness is generated wrong here (the unit tests cover the other alias rules)."""
    for node in mapping:
        a = node["alias"]
        if not (a[:1].isascii() and a[:1].isalpha() and all(c.isascii() and (c.isalnum() or c in "-._")
                                                              for c in a)):
            return a
    return None


def expected_caps_error(new: dict[str, bool], params: dict[str, Any], incoming_started: bool) -> str | None:
    rules: list[tuple[bool, str]] = [
        (new["x-colo"], "QEMU compiled without replication module can't enable COLO"),
        (new["postcopy-ram"] and new["x-ignore-shared"], "Postcopy is not compatible with ignore-shared"),
        (new["postcopy-ram"] and new["multifd"], "Postcopy is not yet compatible with multifd"),
    ]
    rules += [(new["background-snapshot"] and new[c], f"Background-snapshot is not compatible with {c}")
              for c in BG_SNAPSHOT_LIST]
    rules += [
        (new["zero-copy-send"] and (not new["multifd"] or new["xbzrle"] or params["multifd-compression"] != "none"
                                    or params["tls-creds"] != ""),
         "Zero copy only available for non-compressed non-TLS multifd migration"),
        (new["postcopy-preempt"] and not new["postcopy-ram"], "Postcopy preempt requires postcopy-ram"),
        (new["postcopy-preempt"] and incoming_started, "Postcopy preempt must be set before incoming starts"),
        (new["multifd"] and incoming_started, "Multifd must be set before incoming starts"),
        (new["switchover-ack"] and not new["return-path"],
         "Capability 'switchover-ack' requires capability 'return-path'"),
        (new["dirty-limit"] and new["auto-converge"],
         "dirty-limit conflicts with auto-converge either of then available currently"),
        (new["dirty-limit"], "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"),
        (new["multifd"] and new["xbzrle"], "Multifd is not compatible with xbzrle"),
        (new["mapped-ram"] and new["xbzrle"], "Mapped-ram migration is incompatible with xbzrle"),
        (new["mapped-ram"] and new["postcopy-ram"], "Mapped-ram migration is incompatible with postcopy"),
    ]
    return next((msg for failed, msg in rules if failed), None)


# ---------------------------------------------------------------------------------------------
# Running a command as the monitor does

def run(cfg: MigrationConfig, command: str, args: dict[str, Any], **kw: Any) -> str | None:
    try:
        visited = SCHEMA.check_args(command, args)
        if command == "migrate-set-capabilities":
            cfg.set_capabilities(visited["capabilities"], **kw)
        else:
            cfg.set_parameters(visited)
    except QapiError as exc:
        assert exc.cls == "GenericError"
        return exc.desc
    return None


def snapshot(cfg: MigrationConfig) -> tuple[Any, Any]:
    return cfg.query_parameters(), cfg.query_capabilities()


def caps_state(cfg: MigrationConfig) -> dict[str, bool]:
    return {c["capability"]: c["state"] for c in cfg.query_capabilities()}


# ---------------------------------------------------------------------------------------------
# Strategies

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
JSON_VALUES = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=2),
                        st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2))
_KINDS: dict[type, st.SearchStrategy[Any]] = {
    type(None): st.none(), bool: st.booleans(), int: st.integers(-(1 << 70), 1 << 70),
    float: st.floats(allow_nan=False, allow_infinity=False), str: st.text(max_size=5),
    list: st.lists(JSON_SCALARS, max_size=2), dict: st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2),
}


def json_not(*excluded: type) -> st.SearchStrategy[Any]:
    """Any JSON value whose type is none of ``excluded`` (bool is not an int here)."""
    return st.one_of(*[s for t, s in _KINDS.items() if t not in excluded])


ALIAS = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,6}", fullmatch=True)
BAD_ALIAS = st.one_of(st.just(""), st.from_regex(r"[0-9._-][A-Za-z0-9]{0,4}", fullmatch=True),
                      st.from_regex(r"[A-Za-z][a-z]{0,3}[ /:!é][a-z]{0,3}", fullmatch=True))


@st.composite
def mappings(draw: Any, bad: bool = False) -> list[dict[str, Any]]:
    n = draw(st.integers(1 if bad else 0, 3))
    nodes = [{"node-name": f"node{i}", "alias": draw(ALIAS) + str(i),
              "bitmaps": [{"name": f"b{j}", "alias": f"a{j}"} for j in range(draw(st.integers(0, 2)))]}
             for i in range(n)]
    if bad:
        nodes[draw(st.integers(0, n - 1))]["alias"] = draw(BAD_ALIAS)
    return nodes


def type_valid(kind: str) -> st.SearchStrategy[Any]:
    """Any value the visitor accepts for the member (semantically valid or not)."""
    if kind in WIDTH:
        return st.integers(0, (1 << WIDTH[kind]) - 1)
    if kind in ("size", "uint64"):
        return st.integers(0, UINT64_MAX)
    if kind == "bool":
        return st.booleans()
    if kind == "StrOrNull":
        return st.one_of(st.none(), st.text(max_size=4))
    if kind == "mapping":
        return mappings()
    return st.sampled_from(ENUMS[kind])


SEM_VALID: dict[str, st.SearchStrategy[Any]] = {
    "throttle-trigger-threshold": st.integers(1, 100), "cpu-throttle-initial": st.integers(1, 99),
    "cpu-throttle-increment": st.integers(1, 99), "downtime-limit": st.integers(0, 2000000),
    "multifd-channels": st.integers(1, 255), "multifd-zlib-level": st.integers(0, 9),
    "multifd-zstd-level": st.integers(0, 20), "xbzrle-cache-size": st.integers(12, 63).map(lambda e: 1 << e),
    "max-cpu-throttle": st.just(99), "announce-initial": st.integers(0, 100000),
    "announce-max": st.integers(0, 100000), "announce-rounds": st.integers(0, 1000),
    "announce-step": st.integers(1, 10000), "x-vcpu-dirty-limit-period": st.integers(1, 1000),
    "vcpu-dirty-limit": st.integers(1, UINT64_MAX), "multifd-compression": st.just("none"),
    "tls-creds": st.sampled_from([None, ""]),
}


@st.composite
def prior_config(draw: Any) -> MigrationConfig:
    """A config moved away from the defaults by valid commands (caps first, then parameters)."""
    cfg = MigrationConfig()
    mode = draw(st.sampled_from(["plain", "zero-copy", "mapped-ram"]))
    if mode == "zero-copy":
        assert run(cfg, "migrate-set-capabilities", {"capabilities": [
            {"capability": "multifd", "state": True}, {"capability": "zero-copy-send", "state": True}]}) is None
    elif mode == "mapped-ram":
        assert run(cfg, "migrate-set-capabilities", {"capabilities": [
            {"capability": "mapped-ram", "state": True}]}) is None
    names = draw(st.lists(st.sampled_from(sorted(SEM_VALID) + ["mode", "direct-io", "tls-hostname"]),
                          unique=True, max_size=6))
    args = {n: draw(SEM_VALID.get(n, type_valid(TYPES[n]))) for n in names}
    if "max-cpu-throttle" in args or "cpu-throttle-initial" in args:
        args["max-cpu-throttle"] = draw(st.integers(args.get("cpu-throttle-initial", 20), 99))
    assert run(cfg, "migrate-set-parameters", args) is None
    if mode == "mapped-ram" and draw(st.booleans()):
        # accepted: the mapped-ram check reads the current (still plain) values
        assert run(cfg, "migrate-set-parameters", {"multifd-compression": "zlib"}) is None
    return cfg


@st.composite
def bad_value(draw: Any, name: str) -> tuple[Any, str]:
    """A value the visitor rejects for member ``name``, with QEMU's message."""
    kind = TYPES[name]
    if kind in WIDTH or kind in ("size", "uint64"):
        choice = draw(st.sampled_from(["type", "huge", "width"] if kind in WIDTH else ["type", "huge"]))
        if choice == "type":
            v = draw(st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.lists(st.integers(), max_size=1),
                               st.floats(allow_nan=False, allow_infinity=False), st.just({})))
            return v, f"Parameter '{name}' expects uint64"
        if choice == "huge":
            v = draw(st.one_of(st.integers(UINT64_MAX + 1, 1 << 80), st.integers(-(1 << 80), INT64_MIN - 1)))
            return v, f"Parameter '{name}' expects uint64"
        bits = WIDTH[kind]
        v = draw(st.one_of(st.integers(1 << bits, UINT64_MAX), st.integers(INT64_MIN, -1)))
        return v, f"Parameter '{name}' expects uint{bits}_t"
    if kind == "bool":
        v = draw(json_not(bool))
        return v, f"Invalid parameter type for '{name}', expected: boolean"
    if kind == "StrOrNull":
        v = draw(json_not(type(None), str))
        return v, f"Invalid parameter type for '{name}', expected: StrOrNull"
    if kind == "mapping":
        choice = draw(st.sampled_from(["array", "object", "missing", "member"]))
        if choice == "array":
            v = draw(json_not(list))
            return v, f"Invalid parameter type for '{name}', expected: array"
        if choice == "object":
            v = draw(json_not(dict, list))
            return [v], f"Invalid parameter type for '{name}[0]', expected: object"
        if choice == "missing":
            member = draw(st.sampled_from(["node-name", "alias", "bitmaps"]))
            node = {"node-name": "n", "alias": "a", "bitmaps": []}
            del node[member]
            return [node], f"Parameter '{name}[0].{member}' is missing"
        v = draw(json_not(str, list, dict))
        return ([{"node-name": "n", "alias": "a", "bitmaps": [{"name": "b", "alias": v}]}],
                f"Invalid parameter type for '{name}[0].bitmaps[0].alias', expected: string")
    # enum
    if draw(st.booleans()):
        v = draw(json_not(str))
        return v, f"Invalid parameter type for '{name}', expected: string"
    v = draw(st.one_of(st.text(max_size=8), st.sampled_from(["qpl", "uadk", "cpr-transfer", "NONE"])).filter(
        lambda x: x not in ENUMS[kind]))
    return v, f"Parameter '{name}' does not accept value '{v}'"


UNKNOWN_KEY = st.one_of(st.sampled_from(REMOVED + ["block", "compress", "foo"]),
                        st.text(min_size=1, max_size=8)).filter(lambda k: k not in TYPES)


# ---------------------------------------------------------------------------------------------
# migrate-set-parameters

@SETTINGS
@given(cfg=prior_config(), data=st.data())
def test_set_parameters_visitor_errors(cfg: MigrationConfig, data: Any) -> None:
    names = list(TYPES)
    valid_names = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=5))
    args = {n: data.draw(type_valid(TYPES[n])) for n in valid_names}
    bad_names = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=3,
                                   min_size=data.draw(st.sampled_from([1, 1, 1, 0]))))
    expected: dict[str, str] = {}
    for n in bad_names:
        args[n], expected[n] = data.draw(bad_value(n))
    unknown = data.draw(st.one_of(st.none(), UNKNOWN_KEY)) if bad_names else data.draw(UNKNOWN_KEY)
    if unknown is not None:
        args[unknown] = data.draw(JSON_VALUES)
    order = data.draw(st.permutations(list(args)))
    args = {k: args[k] for k in order}
    first_bad = next((n for n in names if n in expected), None)
    want = expected[first_bad] if first_bad else f"Parameter '{unknown}' is unexpected"
    event(want.split("'")[0] + ("unexpected" if not first_bad else TYPES[first_bad]))
    before = snapshot(cfg)
    assert run(cfg, "migrate-set-parameters", args) == want
    assert snapshot(cfg) == before


SEM_INVALID: dict[str, st.SearchStrategy[Any]] = {
    "throttle-trigger-threshold": st.sampled_from([0] + list(range(101, 256))),
    "cpu-throttle-initial": st.sampled_from([0] + list(range(100, 256))),
    "cpu-throttle-increment": st.sampled_from([0] + list(range(100, 256))),
    "downtime-limit": st.integers(2000001, UINT64_MAX),
    "multifd-channels": st.just(0),
    "multifd-zlib-level": st.integers(10, 255), "multifd-zstd-level": st.integers(21, 255),
    "xbzrle-cache-size": st.one_of(st.integers(0, 4095), st.integers(4097, UINT64_MAX)),
    "max-cpu-throttle": st.integers(0, 255),
    "announce-initial": st.integers(100001, UINT64_MAX), "announce-max": st.integers(100001, UINT64_MAX),
    "announce-rounds": st.integers(1001, UINT64_MAX),
    "announce-step": st.one_of(st.just(0), st.integers(10001, UINT64_MAX)),
    "x-vcpu-dirty-limit-period": st.one_of(st.just(0), st.integers(1001, UINT64_MAX)),
    "vcpu-dirty-limit": st.just(0),
    "block-bitmap-mapping": mappings(bad=True),
    "multifd-compression": st.sampled_from(["zlib", "zstd"]),
    "tls-creds": st.text(min_size=1, max_size=4),
}


@SETTINGS
@given(cfg=prior_config(), data=st.data())
def test_set_parameters_semantic_errors(cfg: MigrationConfig, data: Any) -> None:
    names = data.draw(st.lists(st.sampled_from(sorted(SEM_INVALID)), unique=True, min_size=1, max_size=3))
    args = {n: data.draw(SEM_INVALID[n]) for n in names}
    others = data.draw(st.lists(st.sampled_from(sorted(set(TYPES) - set(args))), unique=True, max_size=4))
    for n in others:
        args[n] = data.draw(SEM_VALID.get(n, type_valid(TYPES[n]))) if n != "max-cpu-throttle" else 99
    order = data.draw(st.permutations(list(args)))
    args = {k: args[k] for k in order}
    current, caps = cfg.query_parameters(), caps_state(cfg)
    want = expected_param_error(current, caps, args)
    event(want or "accepted")
    before = snapshot(cfg)
    got = run(cfg, "migrate-set-parameters", args)
    assert got == want
    if want is not None:
        assert snapshot(cfg) == before
    else:
        out = cfg.query_parameters()
        for k, v in args.items():
            assert out[k] == ("" if v is None else v), k


# ---------------------------------------------------------------------------------------------
# migrate-set-capabilities

@st.composite
def cap_entry(draw: Any) -> dict[str, Any]:
    return {"capability": draw(st.sampled_from(CAPS)), "state": draw(st.booleans())}


@SETTINGS
@given(cfg=prior_config(), data=st.data())
def test_set_capabilities_visitor_errors(cfg: MigrationConfig, data: Any) -> None:
    entries = data.draw(st.lists(cap_entry(), max_size=3))
    i = data.draw(st.integers(0, len(entries)))
    kind = data.draw(st.sampled_from(["cap-value", "not-object", "missing-cap", "missing-state", "cap-type",
                                      "state-type", "extra", "top-extra", "not-list"]))
    path = f"capabilities[{i}]"
    entry: Any = {"capability": data.draw(st.sampled_from(CAPS)), "state": data.draw(st.booleans())}
    args: dict[str, Any] = {}
    if kind == "not-list":
        value = data.draw(json_not(list))
        want = "Invalid parameter type for 'capabilities', expected: array"
    else:
        if kind == "not-object":
            entry = data.draw(json_not(dict))
            want = f"Invalid parameter type for '{path}', expected: object"
        elif kind == "missing-cap":
            del entry["capability"]
            want = f"Parameter '{path}.capability' is missing"
        elif kind == "missing-state":
            del entry["state"]
            want = f"Parameter '{path}.state' is missing"
        elif kind == "cap-type":
            entry["capability"] = data.draw(json_not(str))
            want = f"Invalid parameter type for '{path}.capability', expected: string"
        elif kind == "cap-value":
            v = data.draw(st.one_of(st.sampled_from(["compress", "block", "x-colo2", "XBZRLE"]),
                                    st.text(max_size=6)).filter(lambda x: x not in CAPS))
            entry["capability"] = v
            want = f"Parameter 'capability' does not accept value '{v}'"
        elif kind == "state-type":
            entry["state"] = data.draw(json_not(bool))
            want = f"Invalid parameter type for '{path}.state', expected: boolean"
        elif kind == "extra":
            key = data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in ("capability", "state")))
            entry[key] = data.draw(JSON_VALUES)
            want = f"Parameter '{path}.{key}' is unexpected"
        if kind == "top-extra":
            key = data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k != "capabilities"))
            args[key] = data.draw(JSON_VALUES)
            want = f"Parameter '{key}' is unexpected"
        else:
            entries.insert(i, entry)
            # later entries may be broken too: the first error (at index i) wins
            entries += data.draw(st.lists(JSON_VALUES, max_size=2))
        value = entries
    args["capabilities"] = value
    args = {k: args[k] for k in data.draw(st.permutations(list(args)))}
    event(kind)
    before = snapshot(cfg)
    assert run(cfg, "migrate-set-capabilities", args, state=data.draw(st.sampled_from(IDLE + RUNNING))) == want
    assert snapshot(cfg) == before


@SETTINGS
@given(cfg=prior_config(), data=st.data())
def test_set_capabilities_semantic_errors(cfg: MigrationConfig, data: Any) -> None:
    # bias towards the capabilities with rules, so that every message shows up
    ruled = ["x-colo", "postcopy-ram", "x-ignore-shared", "multifd", "background-snapshot", "zero-copy-send",
             "postcopy-preempt", "switchover-ack", "return-path", "dirty-limit", "auto-converge", "xbzrle",
             "mapped-ram"]
    entries = data.draw(st.lists(st.builds(lambda c, s: {"capability": c, "state": s},
                                           st.one_of(st.sampled_from(ruled), st.sampled_from(CAPS)),
                                           st.integers(0, 3).map(bool)), max_size=5))
    running = data.draw(st.integers(0, 9)) == 0
    state = data.draw(st.sampled_from(RUNNING if running else IDLE))
    incoming_started = data.draw(st.integers(0, 4)) == 0
    new = caps_state(cfg)
    for e in entries:
        new[e["capability"]] = e["state"]
    if state in RUNNING:
        want: str | None = "There's a migration process in progress"
    else:
        want = expected_caps_error(new, cfg.query_parameters(), incoming_started)
    event(want or "accepted")
    before = snapshot(cfg)
    got = run(cfg, "migrate-set-capabilities", {"capabilities": entries}, state=state,
              incoming_started=incoming_started)
    assert got == want
    if want is not None:
        assert snapshot(cfg) == before
    else:
        assert caps_state(cfg) == new
        assert cfg.query_parameters() == before[0]


@pytest.mark.parametrize("rule", range(len(RANGE_RULES)))
def test_rule_table_is_reachable(rule: int) -> None:
    """Each semantic rule of the table has an invalid-value generator or a cross check."""
    member = RANGE_RULES[rule][0]
    assert member in SEM_INVALID or member in ("zero-copy", "mapped-ram")
