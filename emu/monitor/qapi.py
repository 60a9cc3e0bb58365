"""QAPI: the schema of every QMP command and event, and QEMU's input visitor.

The schema is written in QEMU's own schema language (``{'struct': ..., 'data': {...}}`` dicts, see
``schema_core.py``); ``Schema`` compiles it into types, commands and events. ``Schema.check_args``
validates a command's arguments the way QEMU's QObject input visitor does, with its exact
messages: full member paths (``channels[0].addr.port``) for missing, unexpected and wrongly-typed
members; bare member names for enum values and integer ranges; the first error in schema order
wins, and an object's unexpected members are reported after its known members were visited.
``Schema.introspect`` produces ``query-qmp-schema``'s SchemaInfo list from the same data.

Below the protocol: it imports only ``ghash``, ``qjson`` and ``emu.errors``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from emu.errors import QapiError
from emu.monitor.ghash import first_unexpected
from emu.monitor.qjson import qdict_order

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1), "int16": (-(1 << 15), (1 << 15) - 1), "int32": (-(1 << 31), (1 << 31) - 1),
    "uint8": (0, (1 << 8) - 1), "uint16": (0, (1 << 16) - 1), "uint32": (0, (1 << 32) - 1),
}
# builtin type -> SchemaInfo json-type
BUILTINS = {
    "str": "string", "number": "number", "int": "int", "int8": "int", "int16": "int", "int32": "int",
    "int64": "int", "uint8": "int", "uint16": "int", "uint32": "int", "uint64": "int", "size": "int",
    "bool": "boolean", "null": "null", "any": "value",
}
_QTYPES = {str: "qstring", bool: "qbool", int: "qnum", float: "qnum", dict: "qdict", list: "qlist",
           type(None): "qnull"}


def _qtype(value: Any) -> str:
    return _QTYPES.get(type(value), "any")


class SchemaError(ValueError):
    """The schema itself is inconsistent (a programming error, found at start-up)."""


class Member:
    __slots__ = ("name", "type", "optional", "features")

    def __init__(self, name: str, type_: str, optional: bool, features: tuple[str, ...] = ()) -> None:
        self.name, self.type, self.optional, self.features = name, type_, optional, features


class Entity:
    """A named schema entity: enum, struct, union, alternate, array, builtin, command or event."""

    meta = "entity"

    def __init__(self, name: str, features: Iterable[str] = ()) -> None:
        self.name = name
        self.features = tuple(features)


class Builtin(Entity):
    meta = "builtin"


class Enum(Entity):
    meta = "enum"

    def __init__(self, name: str, values: list[str], features: Iterable[str] = ()) -> None:
        super().__init__(name, features)
        self.values = values
        self.value_set = frozenset(values)


class Array(Entity):
    meta = "array"

    def __init__(self, element: str) -> None:
        super().__init__(f"[{element}]")
        self.element = element


class Struct(Entity):
    """An object type: own members after its base's. Unions add a discriminator and variants."""

    meta = "object"

    def __init__(self, name: str, members: list[Member], base: str | None = None, features: Iterable[str] = (),
                 discriminator: str | None = None, variants: dict[str, str] | None = None) -> None:
        super().__init__(name, features)
        self.own_members = members
        self.base = base
        self.discriminator = discriminator
        self.variants = variants or {}
        self.members: list[Member] = []  # resolved, base first


class Alternate(Entity):
    meta = "alternate"

    def __init__(self, name: str, branches: list[Member], features: Iterable[str] = ()) -> None:
        super().__init__(name, features)
        self.branches = branches


class Command(Entity):
    meta = "command"

    def __init__(self, name: str, arg_type: str | None, ret_type: str | None, boxed: bool, allow_oob: bool,
                 allow_preconfig: bool, features: Iterable[str] = ()) -> None:
        super().__init__(name, features)
        self.arg_type, self.ret_type = arg_type, ret_type
        self.boxed, self.allow_oob, self.allow_preconfig = boxed, allow_oob, allow_preconfig


class Event(Entity):
    meta = "event"

    def __init__(self, name: str, arg_type: str | None, features: Iterable[str] = ()) -> None:
        super().__init__(name, features)
        self.arg_type = arg_type


def _type_ref(t: Any) -> str:
    """``'int'`` or ``['int']`` (a list type) as one string name."""
    if isinstance(t, list):
        if len(t) != 1:
            raise SchemaError(f"array type must have one element type: {t!r}")
        return f"[{t[0]}]"
    if not isinstance(t, str):
        raise SchemaError(f"bad type reference {t!r}")
    return t


def _features(expr: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f if isinstance(f, str) else f["name"] for f in expr.get("features", ()))


def _members(data: Mapping[str, Any]) -> list[Member]:
    out = []
    for key, spec in data.items():
        feats: tuple[str, ...] = ()
        if isinstance(spec, dict):  # {'type': ..., 'features': [...]}
            feats = _features(spec)
            spec = spec["type"]
        out.append(Member(key.lstrip("*"), _type_ref(spec), key.startswith("*"), feats))
    return out


class Schema:
    """A compiled schema. ``extend`` adds expressions (other modules add their commands)."""

    def __init__(self, exprs: Iterable[Mapping[str, Any]] = ()) -> None:
        self.entities: dict[str, Entity] = {name: Builtin(name) for name in BUILTINS}
        self.entities[EMPTY] = Struct(EMPTY, [])
        self.commands: dict[str, Command] = {}
        self.events: dict[str, Event] = {}
        self.order: list[Command | Event] = []  # commands and events in declaration order
        self.extend(exprs)

    # ---- building
    def extend(self, exprs: Iterable[Mapping[str, Any]]) -> None:
        for expr in exprs:
            self._add(expr)
        self._resolve()

    def declare_command(self, expr: Mapping[str, Any]) -> None:
        """Adds or replaces one command declaration."""
        name = expr["command"]
        if name in self.commands:
            self.order.remove(self.commands.pop(name))
            self.entities.pop(f"q_obj_{name}-arg", None)
        self.extend([expr])

    def copy(self) -> Schema:
        """An independent schema with the same declarations (entities are shared, immutable)."""
        other = Schema.__new__(Schema)
        other.entities = dict(self.entities)
        other.commands = dict(self.commands)
        other.events = dict(self.events)
        other.order = list(self.order)
        return other

    def _define(self, ent: Entity) -> None:
        if ent.name in self.entities and not isinstance(self.entities[ent.name], Array):
            raise SchemaError(f"'{ent.name}' is already defined")
        self.entities[ent.name] = ent

    def _implicit_struct(self, owner: str, suffix: str, data: Mapping[str, Any]) -> str:
        name = f"q_obj_{owner}-{suffix}"
        self._define(Struct(name, _members(data)))
        return name

    def _add(self, expr: Mapping[str, Any]) -> None:
        feats = _features(expr)
        if "enum" in expr:
            values = [v if isinstance(v, str) else v["name"] for v in expr["data"]]
            self._define(Enum(expr["enum"], values, feats))
        elif "struct" in expr:
            self._define(Struct(expr["struct"], _members(expr.get("data", {})), expr.get("base"), feats))
        elif "union" in expr:
            name = expr["union"]
            base = expr["base"]
            if isinstance(base, dict):
                base = self._implicit_struct(name, "base", base)
            variants = {k: _type_ref(v["type"] if isinstance(v, dict) else v) for k, v in expr["data"].items()}
            self._define(Struct(name, [], base, feats, expr["discriminator"], variants))
        elif "alternate" in expr:
            branches = [Member(k, _type_ref(v["type"] if isinstance(v, dict) else v), False)
                        for k, v in expr["data"].items()]
            self._define(Alternate(expr["alternate"], branches, feats))
        elif "command" in expr:
            name = expr["command"]
            data = expr.get("data")
            arg = self._implicit_struct(name, "arg", data) if isinstance(data, dict) and data else data or None
            ret = expr.get("returns")
            cmd = Command(name, arg, _type_ref(ret) if ret is not None else None, bool(expr.get("boxed")),
                          bool(expr.get("allow-oob")), bool(expr.get("allow-preconfig")), feats)
            self.commands[name] = cmd
            self.order.append(cmd)
        elif "event" in expr:
            name = expr["event"]
            data = expr.get("data")
            arg = self._implicit_struct(name, "arg", data) if isinstance(data, dict) and data else data or None
            self.events[name] = Event(name, arg, feats)
            self.order.append(self.events[name])
        else:
            raise SchemaError(f"unknown schema expression {expr!r}")

    def _type(self, name: str) -> Entity:
        ent = self.entities.get(name)
        if ent is None and name.startswith("["):
            self._type(name[1:-1])
            ent = self.entities[name] = Array(name[1:-1])
        if ent is None:
            raise SchemaError(f"unknown type '{name}'")
        return ent

    def _resolve(self) -> None:
        """Checks every reference and flattens struct/union members (base first)."""
        for ent in list(self.entities.values()):
            if isinstance(ent, Struct):
                ent.members = self._flatten(ent, set())
                if ent.discriminator is not None:
                    disc = next((m for m in ent.members if m.name == ent.discriminator), None)
                    if disc is None or not isinstance(self._type(disc.type), Enum):
                        raise SchemaError(f"union {ent.name}: discriminator must be an enum member of its base")
                    for value, vtype in ent.variants.items():
                        if not isinstance(self._type(vtype), Struct):
                            raise SchemaError(f"union {ent.name}: branch '{value}' is not an object type")
            for m in getattr(ent, "own_members", ()) or getattr(ent, "branches", ()):
                self._type(m.type)
        for cmd in self.commands.values():
            for t in (cmd.arg_type, cmd.ret_type):
                if t is not None:
                    self._type(t)
        for ev in self.events.values():
            if ev.arg_type is not None:
                self._type(ev.arg_type)

    def _flatten(self, st: Struct, seen: set[str]) -> list[Member]:
        if st.name in seen:
            raise SchemaError(f"'{st.name}' includes itself")
        members: list[Member] = []
        if st.base is not None:
            base = self._type(st.base)
            if not isinstance(base, Struct):
                raise SchemaError(f"'{st.name}': base '{st.base}' is not a struct")
            members = self._flatten(base, seen | {st.name})
        return members + st.own_members

    # ---- the input visitor
    def check_args(self, command: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Validates (and converts) a command's arguments; QapiError with QEMU's text if invalid."""
        cmd = self.commands[command]
        if cmd.arg_type is None:
            if args:
                raise QapiError(f"Parameter '{first_unexpected(qdict_order(list(args)), [])}' is unexpected")
            return {}
        return self._visit_object(self.entities[cmd.arg_type], args, "")  # type: ignore[arg-type]

    def visit(self, type_name: str, value: Any, path: str = "", name: str | None = None) -> Any:
        """Checks one value against a type (``path`` is its full name, ``name`` its bare name)."""
        ent = self._type(type_name)
        if isinstance(ent, Builtin):
            return _visit_builtin(ent.name, value, path, name)
        if isinstance(ent, Enum):
            if not isinstance(value, str):
                raise QapiError(f"Invalid parameter type for '{path}', expected: string")
            if value not in ent.value_set:
                raise QapiError(f"Parameter '{name if name is not None else 'null'}' does not accept value '{value}'")
            return value
        if isinstance(ent, Array):
            if not isinstance(value, list):
                raise QapiError(f"Invalid parameter type for '{path}', expected: array")
            return [self.visit(ent.element, v, f"{path}[{i}]", None) for i, v in enumerate(value)]
        if isinstance(ent, Struct):
            if not isinstance(value, dict):
                raise QapiError(f"Invalid parameter type for '{path}', expected: object")
            return self._visit_object(ent, value, path)
        if isinstance(ent, Alternate):
            # QEMU picks the branch by the value's QObject type, and every JSON number is a QNum:
            # a float or huge number for an int branch fails in that branch's visitor
            want = _qtype(value)
            for branch in ent.branches:
                if self._qtype_of_type(branch.type) == want:
                    return self.visit(branch.type, value, path, name)
            # the generated alternate visitor names the bare member, not the path
            bare = name if name is not None else "null"
            raise QapiError(f"Invalid parameter type for '{bare}', expected: {ent.name}")
        raise SchemaError(f"cannot visit '{type_name}'")

    def _qtype_of_type(self, type_name: str) -> str:
        """The QObject type a value of this schema type has (what alternates dispatch on)."""
        ent = self._type(type_name)
        if isinstance(ent, Builtin):
            return {"string": "qstring", "number": "qnum", "int": "qnum", "boolean": "qbool", "null": "qnull"}.get(
                BUILTINS[ent.name], "any")
        return {"enum": "qstring", "array": "qlist", "object": "qdict", "alternate": "any"}[ent.meta]

    def _json_type(self, type_name: str) -> str:
        ent = self._type(type_name)
        if isinstance(ent, Builtin):
            return BUILTINS[ent.name]
        return {"enum": "string", "array": "array", "object": "object"}.get(ent.meta, "value")

    def _visit_object(self, st: Struct, value: Mapping[str, Any], path: str) -> dict[str, Any]:
        out = self._visit_struct_members(st, value, path)
        if len(out) != len(value):
            # checked when the object's visit ends, after all its known members; with several
            # unknown keys QEMU names the first its GHashTable yields
            first = first_unexpected(qdict_order(list(value)), list(out))
            raise QapiError(f"Parameter '{_join(path, first or '')}' is unexpected")
        return out

    def _visit_struct_members(self, st: Struct, value: Mapping[str, Any], path: str) -> dict[str, Any]:
        """Base members (with the discriminator) first, then the chosen branch's, recursively:
        a union's branch may itself be a union (MigrationAddress -> SocketAddress)."""
        out = self._visit_members(st.members, value, path)
        if st.discriminator is not None:
            branch = st.variants.get(out[st.discriminator])
            if branch is not None:
                variant = self.entities[branch]
                assert isinstance(variant, Struct)
                out.update(self._visit_struct_members(variant, value, path))
        return out

    def _visit_members(self, members: list[Member], value: Mapping[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in members:
            if m.name in value:
                out[m.name] = self.visit(m.type, value[m.name], _join(path, m.name), m.name)
            elif not m.optional:
                raise QapiError(f"Parameter '{_join(path, m.name)}' is missing")
        return out

    # ---- introspection (query-qmp-schema)
    def introspect(self) -> list[dict[str, Any]]:
        """SchemaInfo list as QEMU's introspection generator builds it (docs/qmp-facts.md §1):
        every command and event in schema order, then each type they use in first-use order.
        Type names are masked as numbers in first-request order; builtins keep their names, every
        integer type is ``int``, arrays are ``[element]``; missing types are the empty object."""
        masked: dict[str, str] = {}
        used: list[str] = []

        def use(type_name: str) -> str:
            ent = self._type(type_name)
            if isinstance(ent, Builtin) and BUILTINS[ent.name] == "int":
                type_name = "int"
            elif isinstance(ent, Array) and self._json_type(ent.element) == "int" and isinstance(
                    self._type(ent.element), Builtin):
                type_name = "[int]"
                self._type("[int]")
            if type_name not in used:
                used.append(type_name)
            ent = self._type(type_name)
            if isinstance(ent, Builtin):
                return ent.name
            if isinstance(ent, Array):
                return f"[{use(ent.element)}]"
            if type_name not in masked:
                masked[type_name] = str(len(masked))
            return masked[type_name]

        infos: list[dict[str, Any]] = []
        for ent in self.order:
            if isinstance(ent, Command):
                info: dict[str, Any] = {"name": ent.name, "meta-type": "command",
                                        "arg-type": use(ent.arg_type or EMPTY), "ret-type": use(ent.ret_type or EMPTY)}
                if ent.allow_oob:
                    info["allow-oob"] = True
            else:
                info = {"name": ent.name, "meta-type": "event", "arg-type": use(ent.arg_type or EMPTY)}
            infos.append(_with_features(info, ent.features))
        done = 0
        while done < len(used):  # the work list grows while types are described
            infos.append(self._type_info(used[done], use))
            done += 1
        return infos

    def _type_info(self, type_name: str, use: Any) -> dict[str, Any]:
        ent = self._type(type_name)
        name = use(type_name)
        if isinstance(ent, Builtin):
            return {"name": name, "meta-type": "builtin", "json-type": BUILTINS[ent.name]}
        info: dict[str, Any] = {"name": name, "meta-type": ent.meta}
        if isinstance(ent, Enum):
            info["members"] = [{"name": v} for v in ent.values]
            info["values"] = list(ent.values)
        elif isinstance(ent, Array):
            info["element-type"] = use(ent.element)
        elif isinstance(ent, Struct):
            info["members"] = [_member_info(m, use) for m in ent.members]
            if ent.discriminator is not None:
                info["tag"] = ent.discriminator
                variants = [{"case": case, "type": use(t)} for case, t in ent.variants.items()]
                tag_type = self._type(next(m.type for m in ent.members if m.name == ent.discriminator))
                assert isinstance(tag_type, Enum)
                # every tag value without a branch gets the empty object, in enum order
                variants += [{"case": v, "type": use(EMPTY)} for v in tag_type.values if v not in ent.variants]
                info["variants"] = variants
        elif isinstance(ent, Alternate):
            info["members"] = [{"type": use(b.type)} for b in ent.branches]
        return _with_features(info, ent.features)


EMPTY = "q_empty"  # the empty object: arguments of commands without any, and so on


def _member_info(m: Member, use: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"name": m.name, "type": use(m.type)}
    if m.optional:
        info["default"] = None
    return _with_features(info, m.features)


def _with_features(info: dict[str, Any], features: tuple[str, ...]) -> dict[str, Any]:
    if features:
        info["features"] = list(features)
    return info


def _join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


def _visit_builtin(kind: str, value: Any, path: str, name: str | None) -> Any:
    bare = name if name is not None else "null"
    if kind == "str":
        if not isinstance(value, str):
            raise QapiError(f"Invalid parameter type for '{path}', expected: string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise QapiError(f"Invalid parameter type for '{path}', expected: boolean")
        return value
    if kind == "null":
        if value is not None:
            raise QapiError(f"Invalid parameter type for '{path}', expected: null")
        return None
    if kind == "any":
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise QapiError(f"Invalid parameter type for '{path}', expected: number")
        return float(value)
    if kind.startswith("u") or kind == "size":
        # QEMU's visitor reads every unsigned type as uint64 first; negative values wrap.
        if isinstance(value, bool) or not isinstance(value, int) or not INT64_MIN <= value <= UINT64_MAX:
            raise QapiError(f"Parameter '{path}' expects uint64")
        value &= UINT64_MAX
        lo, hi = INT_RANGES.get(kind, (0, UINT64_MAX))
        if value > hi:
            raise QapiError(f"Parameter '{bare}' expects {kind}_t")
        return value
    # signed integers
    if isinstance(value, bool) or not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX:
        raise QapiError(f"Invalid parameter type for '{path}', expected: integer")
    lo, hi = INT_RANGES.get(kind, (INT64_MIN, INT64_MAX))
    if not lo <= value <= hi:
        raise QapiError(f"Parameter '{bare}' expects {kind}_t")
    return value
