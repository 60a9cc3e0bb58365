"""Negative property tests for the QAPI input visitor: break exactly one rule, expect QEMU's text.

For every command of the schema (``REGISTRY.schema.commands``) plus a few synthetic commands with
nested structs, unions (a union whose branch is a union), alternates, lists and every builtin, a
generator written from the schema entities builds a *valid* argument object. One spot is then
mutated (a required member removed, one unknown member added, a value of the wrong JSON type, a bad
enum value, an out-of-range sized integer) at any depth.  The expected error text is derived here,
from the mutation and the rules of spec/migration-qapi.md §2 and docs/qmp-facts.md §3.1, never by
asking our visitor:

* full path (``a[2].b``) for missing / unexpected / wrong-type; bare member name (``null`` for a
  list element) for enum values, integer ranges and an alternate without a branch for the JSON type;
* signed ints say ``expected: integer``; unsigned ints and sizes ``Parameter '<path>' expects uint64``;
* everything visited before the mutated spot is valid (the object was valid), so the mutated spot
  gives the first error in QEMU's visiting order; an unexpected member is the only one of its object.

Each case is checked on ``Schema.check_args`` and end to end through a negotiated ``QmpSession``,
where the rejected command must leave the machine, the handlers and the event stream untouched.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emu.errors import QapiError
from emu.monitor.protocol import CommandHandler, CommandRegistry, QmpServer, QmpSession
from emu.monitor.qapi import Alternate, Builtin, Enum, Schema, Struct
from emu.monitor.registry import build_registry

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
SIZED = {
    "int8": (-(1 << 7), (1 << 7) - 1), "int16": (-(1 << 15), (1 << 15) - 1), "int32": (-(1 << 31), (1 << 31) - 1),
    "uint8": (0, (1 << 8) - 1), "uint16": (0, (1 << 16) - 1), "uint32": (0, (1 << 32) - 1),
}
SIGNED = {"int", "int8", "int16", "int32", "int64"}
UNSIGNED = {"uint8", "uint16", "uint32", "uint64", "size"}
MAX_DEPTH = 4

# ---------------------------------------------------------------------------------------------
# Synthetic commands: nesting the core schema lacks (structs in lists, unions with a union branch,
# alternates of every kind, a base struct, every builtin). Names are prefixed to avoid clashes.

EXTRA: list[dict[str, Any]] = [
    {'enum': 'XTstColor', 'data': ['red', 'green', 'blue']},
    {'enum': 'XTstKind', 'data': ['inet', 'unix', 'fd', 'vsock']},
    {'struct': 'XTstInet', 'data': {'host': 'str', 'port': 'str', '*numeric': 'bool', '*to': 'uint16',
                                    '*ipv4': 'bool', '*keep-alive': 'bool', '*ttl': 'int16'}},
    {'struct': 'XTstUnix', 'data': {'path': 'str', '*abstract': 'bool'}},
    {'struct': 'XTstFd', 'data': {'str': 'str'}},
    # 'vsock' has no branch: only the base members are allowed then
    {'union': 'XTstAddr', 'base': {'type': 'XTstKind'}, 'discriminator': 'type',
     'data': {'inet': 'XTstInet', 'unix': 'XTstUnix', 'fd': 'XTstFd'}},
    {'enum': 'XTstTransport', 'data': ['socket', 'exec', 'file']},
    {'struct': 'XTstExec', 'data': {'args': ['str']}},
    {'struct': 'XTstFile', 'data': {'filename': 'str', 'offset': 'uint64'}},
    {'union': 'XTstMigAddr', 'base': {'transport': 'XTstTransport'}, 'discriminator': 'transport',
     'data': {'socket': 'XTstAddr', 'exec': 'XTstExec', 'file': 'XTstFile'}},
    {'enum': 'XTstChanType', 'data': ['main']},
    {'struct': 'XTstChannel', 'data': {'channel-type': 'XTstChanType', 'addr': 'XTstMigAddr'}},
    {'alternate': 'XTstStrOrNull', 'data': {'s': 'str', 'n': 'null'}},
    {'alternate': 'XTstIntOrStr', 'data': {'i': 'int', 's': 'str'}},
    {'alternate': 'XTstNumOrColor', 'data': {'n': 'number', 'c': 'XTstColor'}},
    {'alternate': 'XTstU8OrBool', 'data': {'u': 'uint8', 'b': 'bool'}},
    {'alternate': 'XTstI16OrList', 'data': {'i': 'int16', 'l': ['XTstColor']}},
    {'alternate': 'XTstRef', 'data': {'definition': 'XTstInner', 'reference': 'str'}},
    {'struct': 'XTstInner', 'data': {'name': 'str', '*color': 'XTstColor', '*level': 'int8',
                                     '*colors': ['XTstColor'], '*child': 'XTstRef'}},
    {'struct': 'XTstBase', 'data': {'id': 'str', '*tag': 'uint32'}},
    {'struct': 'XTstDerived', 'base': 'XTstBase', 'data': {'flag': 'bool', '*ratio': 'number'}},
    {'struct': 'XTstAll', 'data': {'i8': 'int8', 'i16': 'int16', 'i32': 'int32', 'i64': 'int64', 'i': 'int',
                                   'u8': 'uint8', 'u16': 'uint16', 'u32': 'uint32', 'u64': 'uint64',
                                   'sz': 'size', 'num': 'number', 'b': 'bool', 's': 'str', 'nul': 'null',
                                   '*anything': 'any', '*e': 'XTstColor'}},
    {'command': 'x-tst-all', 'data': 'XTstAll'},
    {'command': 'x-tst-nested', 'data': {'channels': ['XTstChannel'], '*inner': 'XTstInner',
                                         '*derived': 'XTstDerived', '*sizes': ['uint32'],
                                         '*levels': ['int8']}},
    {'command': 'x-tst-alts', 'data': {'a': 'XTstStrOrNull', '*b': 'XTstIntOrStr', '*c': ['XTstRef'],
                                       '*d': 'XTstNumOrColor', '*e': ['XTstU8OrBool'], '*f': 'XTstI16OrList',
                                       '*g': ['XTstStrOrNull']}},
    {'command': 'x-tst-boxed', 'data': 'XTstMigAddr', 'boxed': True},
    {'command': 'x-tst-deep', 'data': {'chan': 'XTstChannel', 'addrs': ['XTstAddr'], 'inet': 'XTstInet',
                                       '*all': ['XTstAll']}},
]
EXTRA_COMMANDS = [e["command"] for e in EXTRA if "command" in e]
#: The emulator's command set (core and migration), as the process serves it.
REGISTRY = build_registry()
CORE_COMMANDS = sorted(REGISTRY.schema.commands)

# ---------------------------------------------------------------------------------------------
# The registry used end to end: the core one plus the synthetic commands, every handler recorded.

HANDLER_CALLS: list[str] = []


def _recording(name: str, inner: Any) -> Any:
    def handler(ctx: Any, args: dict[str, Any]) -> Any:
        HANDLER_CALLS.append(name)
        return inner(ctx, args) if inner is not None else None

    return handler


def _build_registry() -> CommandRegistry:
    reg = REGISTRY.copy()
    reg.schema.extend(EXTRA)
    for name in reg.schema.commands:
        old = reg.get(name)
        reg.register(CommandHandler(name, _recording(name, old.handler if old else None),
                             allow_oob=old.allow_oob if old else False,
                             allow_preneg=old.allow_preneg if old else False))
    return reg


E2E_REGISTRY = _build_registry()


class RecordingMachine:
    """A MachineControl that records every method call and attribute access (none may happen)."""

    def __init__(self) -> None:
        self.touched: list[str] = []
        self.runstate = "running"
        self.running = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self.touched.append(name)
        return lambda *a, **k: self.touched.append(f"{name}()")


class Harness:
    def __init__(self) -> None:
        self.machine = RecordingMachine()
        self.server = QmpServer(self.machine, registry=E2E_REGISTRY)  # type: ignore[arg-type]
        self.events: list[Any] = []
        orig = self.server.emit_event

        def emit_event(*a: Any, **k: Any) -> None:
            self.events.append(a)
            orig(*a, **k)

        self.server.emit_event = emit_event  # type: ignore[method-assign]
        self.out: list[bytes] = []
        self.session: QmpSession = self.server.new_session(self.out.append)
        self.session.opened()
        self.session.feed(b'{"execute": "qmp_capabilities"}')
        assert self.out[-1] == b'{"return": {}}\r\n', self.out
        self.out.clear()
        HANDLER_CALLS.clear()
        self.machine.touched.clear()


# ---------------------------------------------------------------------------------------------
# The generator and the oracle (both read the schema entities; neither calls the visitor)


def join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


def bare(name: str | None) -> str:
    return name if name is not None else "null"


# QEMU's parser rejects "\u0000" (QString is NUL-terminated), surrogates and Unicode noncharacters
# (U+FDD0..U+FDEF, U+xFFFE/U+xFFFF: util/unicode.c is_valid_codepoint): keep them out of valid strings
def _valid_char(c: str) -> bool:
    return not (0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFE) == 0xFFFE)


TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00").filter(_valid_char),
               max_size=6)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False,
                                                                                  allow_infinity=False), TEXT)
SMALL_JSON = st.recursive(JSON_SCALAR, lambda c: st.lists(c, max_size=2) | st.dictionaries(TEXT, c, max_size=2),
                          max_leaves=4)
# wrong-value categories, each with the JSON (QObject) type it has
CATEGORIES: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "string": ("string", TEXT),
    "bool": ("bool", st.booleans()),
    "null": ("null", st.none()),
    "int": ("num", st.integers(-1000, 1000)),
    "bigint": ("num", st.integers(INT64_MAX + 1, UINT64_MAX)),          # a uint64 QNum
    "hugeint": ("num", st.integers(UINT64_MAX + 1, 1 << 80) | st.integers(-(1 << 80), INT64_MIN - 1)),  # a double
    "float": ("num", st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1.0, -0.0, 0.5])),
    "object": ("object", st.dictionaries(TEXT, SMALL_JSON, max_size=2)),
    "array": ("array", st.lists(SMALL_JSON, max_size=2)),
}
NUM_CATS = {"int", "bigint", "hugeint", "float"}


class Model:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._memo: dict[tuple[str, int], st.SearchStrategy[Any]] = {}

    # -- schema reading
    def entity(self, name: str) -> Any:
        if name.startswith("["):
            return ("array", name[1:-1])
        return self.schema.entities[name]

    def flatten(self, ent: Struct) -> list[Any]:
        base = self.flatten(self.schema.entities[ent.base]) if ent.base else []  # type: ignore[arg-type]
        return base + list(ent.own_members)

    def members_for(self, ent: Struct, value: dict[str, Any]) -> list[Any]:
        """The members visited for this object: base (with the tag), then the chosen branch, recursively."""
        members = self.flatten(ent)
        if ent.discriminator is not None:
            branch = ent.variants.get(value.get(ent.discriminator))  # type: ignore[arg-type]
            if branch is not None:
                members += self.members_for(self.schema.entities[branch], value)  # type: ignore[arg-type]
        return members

    def qtype(self, type_name: str) -> str:
        ent = self.entity(type_name)
        if isinstance(ent, tuple):
            return "array"
        if isinstance(ent, Builtin):
            if ent.name in SIGNED | UNSIGNED | {"number"}:
                return "num"
            return {"str": "string", "bool": "bool", "null": "null"}[ent.name]
        if isinstance(ent, Enum):
            return "string"
        assert isinstance(ent, Struct), ent
        return "object"

    def alt_branch(self, ent: Alternate, value: Any) -> Any:
        q = _qtype_of(value)
        return next(b for b in ent.branches if self.qtype(b.type) == q)

    # -- valid values
    def gen(self, type_name: str, depth: int = 0) -> st.SearchStrategy[Any]:
        key = (type_name, min(depth, MAX_DEPTH))
        if key not in self._memo:
            self._memo[key] = self._gen(type_name, depth)
        return self._memo[key]

    def _gen(self, type_name: str, depth: int) -> st.SearchStrategy[Any]:
        assert depth < MAX_DEPTH + 12, f"required members recurse forever at {type_name}"
        ent = self.entity(type_name)
        if isinstance(ent, tuple):
            if depth >= MAX_DEPTH:
                return st.just([])
            return st.lists(self.gen(ent[1], depth + 1), max_size=3)
        if isinstance(ent, Builtin):
            n = ent.name
            if n in SIZED:
                return st.integers(*SIZED[n])
            return {
                "str": TEXT, "bool": st.booleans(), "null": st.none(), "any": SMALL_JSON,
                "int": st.integers(INT64_MIN, INT64_MAX), "int64": st.integers(INT64_MIN, INT64_MAX),
                # negative values are accepted for uint64/size and wrap (spec §2)
                "uint64": st.integers(INT64_MIN, UINT64_MAX), "size": st.integers(INT64_MIN, UINT64_MAX),
                "number": st.floats(allow_nan=False, allow_infinity=False) | st.integers(INT64_MIN, INT64_MAX),
            }[n]
        if isinstance(ent, Enum):
            return st.sampled_from(ent.values)
        if isinstance(ent, Alternate):
            branches = [b for b in ent.branches
                        if depth < MAX_DEPTH or self.qtype(b.type) not in ("object", "array")] or ent.branches
            return st.one_of([self.gen(b.type, depth) for b in branches])
        assert isinstance(ent, Struct), ent
        return self._object(ent, depth)

    def _object(self, ent: Struct, depth: int) -> st.SearchStrategy[dict[str, Any]]:
        members = self.flatten(ent)

        def build(tag: str | None) -> st.SearchStrategy[dict[str, Any]]:
            req: dict[str, Any] = {}
            opt: dict[str, Any] = {}
            for m in members:
                if m.name == ent.discriminator:
                    req[m.name] = st.just(tag)
                elif not m.optional:
                    req[m.name] = self.gen(m.type, depth + 1)
                elif depth < MAX_DEPTH:
                    opt[m.name] = self.gen(m.type, depth + 1)
            own = st.fixed_dictionaries(req, optional=opt)
            branch = ent.variants.get(tag) if tag is not None else None
            if branch is None:
                return own
            inner = self._object(self.schema.entities[branch], depth)  # type: ignore[arg-type]
            return st.tuples(own, inner).map(lambda t: {**t[0], **t[1]})

        if ent.discriminator is None:
            return build(None)
        tag_type = next(m.type for m in members if m.name == ent.discriminator)
        return st.sampled_from(self.schema.entities[tag_type].values).flatmap(build)  # type: ignore[attr-defined]

    # -- mutation sites of a valid value
    def sites(self, type_name: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        self._walk(type_name, value, "", None, None, None, False, out)
        return out

    def _walk(self, type_name: str, value: Any, path: str, name: str | None, container: Any, key: Any,
              in_alt: bool, out: list[tuple[str, dict[str, Any]]]) -> None:
        ent = self.entity(type_name)
        if container is not None and not in_alt:
            out.append(("value", dict(type=type_name, path=path, name=name, container=container, key=key)))
        if isinstance(ent, Alternate):
            branch = self.alt_branch(ent, value)
            self._walk(branch.type, value, path, name, container, key, True, out)
        elif isinstance(ent, tuple):
            for i, v in enumerate(value):
                self._walk(ent[1], v, f"{path}[{i}]", None, value, i, False, out)
        elif isinstance(ent, Struct):
            members = self.members_for(ent, value)
            for m in members:
                if m.name in value:
                    self._walk(m.type, value[m.name], join(path, m.name), m.name, value, m.name, False, out)
                    if not m.optional:
                        out.append(("missing", dict(path=join(path, m.name), container=value, key=m.name)))
            out.append(("unexpected", dict(path=path, obj=value, known={m.name for m in members})))

    # -- what a wrong value / bad enum / range mutation can do at a value site
    def value_mutations(self, type_name: str) -> list[str]:
        kinds = []
        if self.wrong_categories(type_name):
            kinds.append("wrong")
        if self.enum_of(type_name) is not None:
            kinds.append("enum")
        if self.sized_of(type_name) is not None:
            kinds.append("range")
        return kinds

    def accepted(self, type_name: str) -> set[str]:
        ent = self.entity(type_name)
        if isinstance(ent, Alternate):
            # dispatch is on the QObject type: every number is a QNum, whichever branch takes it
            # (float into an int branch is covered by the explicit tests below)
            qtypes = {self.qtype(b.type) for b in ent.branches}
            return {c for c, (q, _) in CATEGORIES.items() if q in qtypes}
        if isinstance(ent, Builtin):
            n = ent.name
            if n == "any":
                return set(CATEGORIES)
            if n == "number":
                return set(NUM_CATS)
            if n in SIGNED:
                return {"int"}  # 'int' may still be out of a sized range: that is a range error
            if n in UNSIGNED:
                return {"int", "bigint"}
        q = self.qtype(type_name)
        return {c for c, (cq, _) in CATEGORIES.items() if cq == q}

    def wrong_categories(self, type_name: str) -> list[str]:
        return sorted(set(CATEGORIES) - self.accepted(type_name))

    def _scalar_branch(self, type_name: str, pred: Any) -> Any:
        ent = self.entity(type_name)
        cands = [b.type for b in ent.branches] if isinstance(ent, Alternate) else [type_name]
        return next((self.entity(t) for t in cands if pred(self.entity(t))), None)

    def enum_of(self, type_name: str) -> Enum | None:
        return self._scalar_branch(type_name, lambda e: isinstance(e, Enum))

    def sized_of(self, type_name: str) -> str | None:
        ent = self._scalar_branch(type_name, lambda e: isinstance(e, Builtin) and e.name in SIZED)
        return ent.name if ent is not None else None

    def wrong_type_message(self, type_name: str, path: str, name: str | None) -> str:
        ent = self.entity(type_name)
        if isinstance(ent, Alternate):
            return f"Invalid parameter type for '{bare(name)}', expected: {ent.name}"
        if isinstance(ent, Builtin) and ent.name in UNSIGNED:
            return f"Parameter '{path}' expects uint64"
        if isinstance(ent, Builtin) and ent.name in SIGNED:
            expected = "integer"
        elif isinstance(ent, Builtin):
            expected = {"str": "string", "bool": "boolean", "null": "null", "number": "number"}[ent.name]
        elif isinstance(ent, Enum):
            expected = "string"
        elif isinstance(ent, tuple):
            expected = "array"
        else:
            expected = "object"
        return f"Invalid parameter type for '{path}', expected: {expected}"


def _qtype_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


def mutate(model: Model, type_name: str, args: dict[str, Any], data: st.DataObject) -> tuple[dict[str, Any], str, str]:
    """Break one rule in a copy of ``args``; return (mutated args, expected desc, what was done)."""
    args = copy.deepcopy(args)
    candidates: list[tuple[str, dict[str, Any]]] = []
    for kind, site in model.sites(type_name, args):
        if kind == "value":
            candidates += [(k, site) for k in model.value_mutations(site["type"])]
        else:
            candidates.append((kind, site))
    # pick a (kind, depth) group first, so that deep sites are not drowned by the many shallow ones
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for kind, site in candidates:
        groups.setdefault((kind, site["path"].count(".") + site["path"].count("[")), []).append(site)
    kind, depth = data.draw(st.sampled_from(sorted(groups)), label="kind, depth")
    site = data.draw(st.sampled_from(groups[(kind, depth)]), label="site")
    path = site["path"]
    event(f"{kind} {'nested' if '.' in path or '[' in path else 'top'}")
    if kind == "missing":
        del site["container"][site["key"]]
        return args, f"Parameter '{site['path']}' is missing", f"remove {site['path']}"
    if kind == "unexpected":
        key = data.draw(TEXT.filter(lambda k: k not in site["known"]), label="unexpected key")
        site["obj"][key] = data.draw(SMALL_JSON, label="unexpected value")
        path = join(site["path"], key)
        return args, f"Parameter '{path}' is unexpected", f"add {path!r}"
    t, path, name = site["type"], site["path"], site["name"]
    if kind == "wrong":
        cat = data.draw(st.sampled_from(model.wrong_categories(t)), label="category")
        new = data.draw(CATEGORIES[cat][1], label="wrong value")
        expected = model.wrong_type_message(t, path, name)
    elif kind == "enum":
        values = model.enum_of(t).values  # type: ignore[union-attr]
        new = data.draw(TEXT.filter(lambda v: v not in values), label="bad enum value")
        expected = f"Parameter '{bare(name)}' does not accept value '{new}'"
    else:
        sized = model.sized_of(t)
        assert sized is not None
        lo, hi = SIZED[sized]
        if sized.startswith("u"):  # negative values wrap to >= 2^63 first
            bad = st.integers(hi + 1, UINT64_MAX) | st.integers(INT64_MIN, -1)
        else:
            bad = st.integers(INT64_MIN, lo - 1) | st.integers(hi + 1, INT64_MAX)
        new = data.draw(bad, label="out of range")
        expected = f"Parameter '{bare(name)}' expects {sized}_t"
    site["container"][site["key"]] = new
    return args, expected, f"{kind} at {path}: {new!r}"


CORE_MODEL = Model(REGISTRY.schema)
E2E_MODEL = Model(E2E_REGISTRY.schema)


def arg_type(schema: Schema, command: str) -> str | None:
    return schema.commands[command].arg_type


def check_direct(schema: Schema, command: str, args: dict[str, Any], expected: str, what: str) -> None:
    with pytest.raises(QapiError) as info:
        schema.check_args(command, args)
    assert (info.value.cls, info.value.desc) == ("GenericError", expected), (what, args)


def check_e2e(command: str, args: dict[str, Any], expected: str, what: str) -> None:
    h = Harness()
    request = json.dumps({"execute": command, "arguments": args, "id": 41})
    h.session.feed(request.encode())
    assert len(h.out) == 1, (what, h.out)
    line = h.out[0]
    assert line.endswith(b"\r\n") and line.startswith(b'{"id": 41, "error": '), (what, line)
    assert json.loads(line) == {"id": 41, "error": {"class": "GenericError", "desc": expected}}, (what, request)
    assert HANDLER_CALLS == [] and h.machine.touched == [] and h.events == [], (what, HANDLER_CALLS,
                                                                               h.machine.touched, h.events)
    assert h.machine.runstate == "running" and h.session.negotiated and not h.session.is_closed


def _run_case(model: Model, schema: Schema, command: str, data: st.DataObject) -> None:
    t = arg_type(schema, command)
    valid: dict[str, Any] = data.draw(model.gen(t) if t else st.just({}), label="valid args")
    schema.check_args(command, copy.deepcopy(valid))  # the generator's output is valid
    if t is None:  # no arguments: only an unexpected member can be wrong
        key = data.draw(TEXT, label="unexpected key")
        args, expected, what = {key: data.draw(SMALL_JSON)}, f"Parameter '{key}' is unexpected", f"add {key!r}"
    else:
        args, expected, what = mutate(model, t, valid, data)
    check_direct(schema, command, copy.deepcopy(args), expected, what)
    check_e2e(command, args, expected, what)


@pytest.mark.parametrize("command", CORE_COMMANDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_core_command_one_broken_rule(command: str, data: st.DataObject) -> None:
    """Every command of REGISTRY's schema; checked on REGISTRY.schema.check_args and end to end."""
    _run_case(CORE_MODEL, REGISTRY.schema, command, data)


@pytest.mark.parametrize("command", EXTRA_COMMANDS)
@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.filter_too_much])
@given(data=st.data())
def test_nested_one_broken_rule(command: str, data: st.DataObject) -> None:
    """Nested paths: structs in lists, union branches (a union inside a union), alternates."""
    _run_case(E2E_MODEL, E2E_REGISTRY.schema, command, data)


def test_generator_reaches_every_mutation_kind() -> None:
    """Sanity of the oracle itself: the synthetic schema offers every kind at a nested path."""
    kinds: set[str] = set()
    sample = {"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "inet",
                                                              "host": "h", "port": "1", "to": 5}}],
              "inner": {"name": "n", "colors": ["red"], "level": 1}}
    for kind, site in E2E_MODEL.sites("q_obj_x-tst-nested-arg", sample):
        if kind == "value":
            kinds |= {(k, site["path"]) for k in E2E_MODEL.value_mutations(site["type"])}  # type: ignore[misc]
        else:
            kinds.add((kind, site["path"]))  # type: ignore[arg-type]
    assert ("missing", "channels[0].addr.host") in kinds
    assert ("missing", "channels[0].addr.type") in kinds
    assert ("unexpected", "channels[0].addr") in kinds
    assert ("range", "channels[0].addr.to") in kinds
    assert ("enum", "inner.colors[0]") in kinds
    assert ("wrong", "channels[0].addr.port") in kinds


# ---------------------------------------------------------------------------------------------
# Explicit cases pinned to the spec's examples (nested union paths, bare names, list 'null')

PINNED = [
    ("x-tst-nested", {"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "inet",
                                                                     "host": "h", "port": 1050}}]},
     "Invalid parameter type for 'channels[0].addr.port', expected: string"),
    ("x-tst-nested", {"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "inet",
                                                                     "host": "h", "port": "1", "to": 70000}}]},
     "Parameter 'to' expects uint16_t"),
    ("x-tst-nested", {"channels": [{"channel-type": "main", "addr": {"transport": "file", "filename": "f"}}]},
     "Parameter 'channels[0].addr.offset' is missing"),
    ("x-tst-nested", {"channels": [{"channel-type": "main", "addr": {"transport": "file", "filename": "f",
                                                                     "offset": "0x1000"}}]},
     "Parameter 'channels[0].addr.offset' expects uint64"),
    ("x-tst-nested", {"channels": [{"channel-type": "main", "addr": {"transport": "socket"}}]},
     "Parameter 'channels[0].addr.type' is missing"),
    ("x-tst-nested", {"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "vsock",
                                                                     "foo": 1}}]},
     "Parameter 'channels[0].addr.foo' is unexpected"),
    ("x-tst-nested", {"channels": [{"channel-type": "x"}]}, "Parameter 'channel-type' does not accept value 'x'"),
    ("x-tst-nested", {"channels": [1]}, "Invalid parameter type for 'channels[0]', expected: object"),
    ("x-tst-nested", {"channels": [], "sizes": [1, -1]}, "Parameter 'null' expects uint32_t"),
    ("x-tst-nested", {"channels": [], "levels": [1, 128]}, "Parameter 'null' expects int8_t"),
    ("x-tst-alts", {"a": 1}, "Invalid parameter type for 'a', expected: XTstStrOrNull"),
    ("x-tst-alts", {"a": None, "g": ["x", {}]}, "Invalid parameter type for 'null', expected: XTstStrOrNull"),
    ("x-tst-alts", {"a": None, "c": [{"name": "n", "child": True}]},
     "Invalid parameter type for 'child', expected: XTstRef"),
    ("x-tst-alts", {"a": None, "c": [{"name": "n", "child": {"name": "m", "zz": 1}}]},
     "Parameter 'c[0].child.zz' is unexpected"),
    ("x-tst-alts", {"a": None, "d": "purple"}, "Parameter 'd' does not accept value 'purple'"),
    ("x-tst-alts", {"a": None, "e": [300]}, "Parameter 'null' expects uint8_t"),
    ("qmp_capabilities", {"enable": ["bogus"]}, "Parameter 'null' does not accept value 'bogus'"),
    ("query-status", {"x": 1, "y": 1, "z": 1}, "Parameter 'z' is unexpected"),
]


@pytest.mark.parametrize("command,args,expected", PINNED)
def test_pinned(command: str, args: dict[str, Any], expected: str) -> None:
    check_direct(E2E_REGISTRY.schema, command, copy.deepcopy(args), expected, "pinned")
    check_e2e(command, args, expected, "pinned")


# ---------------------------------------------------------------------------------------------
# Alternates dispatch on the QObject type: every JSON number is a QNum, so a float or a huge number
# meant for an alternate's integer branch fails in that branch, with the branch's message.


@pytest.mark.parametrize("args,expected", [
    ({"a": None, "b": 1.5}, "Invalid parameter type for 'b', expected: integer"),
    ({"a": None, "b": 2.0}, "Invalid parameter type for 'b', expected: integer"),
    ({"a": None, "e": [1.5]}, "Parameter 'e[0]' expects uint64"),
    ({"a": None, "f": 0.5}, "Invalid parameter type for 'f', expected: integer"),
])
def test_float_into_integer_alternate_direct(args: dict[str, Any], expected: str) -> None:
    check_direct(E2E_REGISTRY.schema, "x-tst-alts", args, expected, "alt")


@pytest.mark.parametrize("text,expected", [
    ('{"a": null, "b": 1180591620717411303424}', "Invalid parameter type for 'b', expected: integer"),
    ('{"a": null, "b": 1.5}', "Invalid parameter type for 'b', expected: integer"),
])
def test_float_into_integer_alternate_wire(text: str, expected: str) -> None:
    h = Harness()
    h.session.feed(b'{"execute": "x-tst-alts", "id": 1, "arguments": ' + text.encode() + b"}")
    assert [json.loads(x) for x in h.out] == [{"id": 1, "error": {"class": "GenericError", "desc": expected}}]
