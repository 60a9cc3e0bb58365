"""A small QOM: a tree of named objects with paths like ``/machine/unattached/device[0]``."""
from __future__ import annotations

from typing import Any, Iterator

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
        self.properties: dict[str, Any] = {}

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
