"""User-creatable QOM objects (QEMU's ``TYPE_USER_CREATABLE``): typed properties and completion.

A :class:`UserObject` is a node of the QOM tree (``emu.qom.QObject``) that ``object-add`` creates
under ``/objects/<id>``. Subclasses declare their properties with :class:`PropSpec`; setting a
property checks its value as QEMU's QObject input visitor does (same texts), and ``complete()`` is
QEMU's ``UserCreatableClass.complete`` (loading files, checking required properties).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from emu.qom import Property, QObject
from emu.tls.errors import TlsError

__all__ = ["PropSpec", "UserObject", "id_wellformed"]


@dataclass(frozen=True)
class PropSpec:
    """One property: QOM type (``bool``, ``string``, an enum name), the Python attribute that
    holds it, the enum values (for enum properties) and whether it can be set."""

    name: str
    qom_type: str
    attr: str
    enum: tuple[str, ...] = ()
    writable: bool = True

    @property
    def qapi_type(self) -> str:
        return {"bool": "bool", "string": "str"}.get(self.qom_type, self.qom_type)


def id_wellformed(obj_id: str) -> bool:
    """QEMU's id_wellformed: a letter, then letters, digits, ``-``, ``.``, ``_``."""
    if not obj_id or not obj_id[0].isascii() or not obj_id[0].isalpha():
        return False
    return all(c.isascii() and (c.isalnum() or c in "-._") for c in obj_id[1:])


class UserObject(QObject):
    """An object ``object-add`` can create. Subclasses list their ``PROPS`` (parents' first)."""

    PROPS: ClassVar[Sequence[PropSpec]] = ()

    def __init__(self) -> None:
        super().__init__()
        for spec in self.PROPS:
            self._props[spec.name] = self._qom_property(spec)

    def _qom_property(self, spec: PropSpec) -> Property:
        """The QOM property that reads and (if writable) sets ``spec``'s attribute."""

        def getter() -> Any:
            return self._get(spec)

        def setter(value: Any) -> None:
            self.set_property(spec.name, value)

        return Property(spec.name, spec.qom_type, getter, setter if spec.writable else None,
                        spec.qapi_type if spec.writable else None)

    def _get(self, spec: PropSpec) -> Any:
        value = getattr(self, spec.attr)
        return "" if value is None else value  # QEMU's output visitor turns a NULL string into ""

    @classmethod
    def prop_spec(cls, name: str) -> PropSpec | None:
        return next((s for s in cls.PROPS if s.name == name), None)

    def set_property(self, name: str, value: Any) -> None:
        """Set one property with the QObject visitor's checks (TlsError with QEMU's text)."""
        spec = self.prop_spec(name)
        if spec is None:
            raise TlsError(f"Property '{self.type_name}.{name}' not found")
        if not spec.writable:
            raise TlsError(f"Property '{self.type_name}.{name}' is not writable")
        if spec.qom_type == "bool":
            if not isinstance(value, bool):
                raise TlsError(f"Invalid parameter type for '{name}', expected: boolean")
        elif not isinstance(value, str):
            raise TlsError(f"Invalid parameter type for '{name}', expected: string")
        elif spec.enum and value not in spec.enum:
            raise TlsError(f"Parameter '{name}' does not accept value '{value}'")
        setattr(self, spec.attr, value)

    def complete(self) -> None:
        """QEMU's ``complete``: runs once all properties are set (raises TlsError)."""

    def can_be_deleted(self) -> bool:
        return True

    def finalize(self) -> None:
        """Release what ``complete`` acquired (object-del, or a failed object-add)."""
