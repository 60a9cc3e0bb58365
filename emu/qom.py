"""A small QOM: a tree of named objects with paths like ``/machine/unattached/device[0]``."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# The QOM type hierarchy: type name -> (parent type, abstract). Classes register themselves.
TYPES: dict[str, tuple[str | None, bool]] = {"object": (None, True)}


def register_type(name: str, parent: str | None, abstract: bool = False) -> None:
    TYPES[name] = (parent, abstract)


def type_ancestry(name: str) -> list[str]:
    """``name`` and its ancestors, nearest first."""
    chain = []
    cur: str | None = name
    while cur is not None and cur in TYPES:
        chain.append(cur)
        cur = TYPES[cur][0]
    return chain


class QomError(Exception):
    """A property access that QOM refuses (the message is QEMU's)."""


class Property:
    """One QOM property: its QOM type string (``bool``, ``string``, ``child<x>``...), the QAPI
    type a new value must have, and how to read and write it (None: read-only). ``static``
    properties of a device are frozen once it is realized, as qdev's are."""

    __slots__ = ("name", "type", "qapi_type", "getter", "setter", "static")

    def __init__(self, name: str, type_: str, getter: Callable[[], Any], setter: Callable[[Any], None] | None = None,
                 qapi_type: str | None = None, static: bool = False) -> None:
        self.name, self.type, self.qapi_type = name, type_, qapi_type
        self.getter, self.setter, self.static = getter, setter, static

    def get(self) -> Any:
        return self.getter()


class QObject:
    """A node of the object tree. ``type_name`` is the QOM type (``ioapic``, ``container``...);
    subclasses declare ``type_parent`` (and ``type_abstract``) and are registered as types."""

    type_name = "object"
    type_parent: str | None = None
    type_abstract = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name")
        if isinstance(name, str):
            register_type(name, cls.type_parent, cls.__dict__.get("type_abstract", False))

    def __init__(self) -> None:
        self.parent: QObject | None = None
        self.qom_name = ""
        self.children: dict[str, QObject] = {}
        self._props: dict[str, Property] = {}

    def add_property(self, name: str, type_: str, value: Any, qapi_type: str | None = None, writable: bool = True,
                     static: bool = False) -> None:
        """A plain value property (stored here; ``self.prop(name)`` reads it)."""
        box = [value]

        def setter(v: Any) -> None:
            box[0] = v

        self._props[name] = Property(name, type_, lambda: box[0], setter if writable else None, qapi_type, static)

    def define_property(self, prop: Property) -> None:
        """A property with its own getter and setter (a setter may refuse a value with QomError)."""
        self._props[prop.name] = prop

    def prop(self, name: str) -> Any:
        return self._props[name].get()

    def qom_properties(self) -> list[Property]:
        """``type`` first, then the object's own properties, then its children."""
        props = [Property("type", "string", lambda: self.type_name)]
        props.extend(self._props.values())
        props.extend(Property(name, f"child<{child.type_name}>", _path_getter(child))
                     for name, child in self.children.items())
        return props

    def qom_property(self, name: str) -> Property:
        for p in self.qom_properties():
            if p.name == name:
                return p
        raise QomError(f"Property '{self.type_name}.{name}' not found")

    def check_writable(self, prop: Property) -> None:
        """QomError unless ``prop`` may be set now."""
        if prop.setter is None:
            raise QomError(f"Property '{self.type_name}.{prop.name}' is not writable")

    def add_child(self, name: str, child: QObject) -> QObject:
        if name in self.children:
            raise ValueError(f"attempt to add duplicate property '{name}' to object (type '{self.type_name}')")
        child.parent, child.qom_name = self, name
        self.children[name] = child
        return child

    @property
    def path(self) -> str:
        parts: list[str] = []
        node: QObject | None = self
        while node is not None and node.parent is not None:
            parts.append(node.qom_name)
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def walk(self) -> Iterator[QObject]:
        yield self
        for child in self.children.values():
            yield from child.walk()


def _path_getter(obj: QObject) -> Callable[[], str]:
    """A getter for a ``child<...>`` property: the child's canonical path, read when asked."""
    return lambda: obj.path


class Container(QObject):
    type_name = "container"
    type_parent = "object"


def resolve_path(root: QObject, path: str) -> QObject | None:
    """QEMU's object_resolve_path: absolute, or a partial path that must match exactly one object."""
    if path.startswith("/"):
        node: QObject | None = root
        for part in path.split("/")[1:]:
            if part == "":
                continue
            node = node.children.get(part) if node is not None else None
        return node
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    found: QObject | None = None
    for obj in root.walk():
        node2: QObject | None = obj
        for part in reversed(parts):
            if node2 is None or node2.parent is None or node2.qom_name != part:
                node2 = None
                break
            node2 = node2.parent
        if node2 is not None:
            if found is not None:
                return None  # ambiguous
            found = obj
    return found
