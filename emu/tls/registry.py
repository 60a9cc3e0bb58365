"""User objects by id: QEMU's ``/objects`` container, object-add/object-del, and the lookups
migration needs (``migration_tls_get_creds``, ``qauthz_is_allowed_by_id``).

The registry is not a separate store: it is the ``objects`` child of the machine's QOM root
(``vm.machine.root``), created on first use, so ``qom-list /objects`` and ``qom-get`` see the
objects and anything holding the VM (monitor handlers, the migration manager) reaches them with
``objects_registry(vm.machine.root)``.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from emu.qom import Container, QObject
from emu.tls.authz import AuthzSimple, QAuthZ
from emu.tls.base import UserObject, id_wellformed
from emu.tls.creds import TlsCreds, TlsCredsAnon, TlsCredsPsk, TlsCredsX509
from emu.tls.errors import TlsError

__all__ = ["OBJECT_TYPES", "ObjectRegistry", "objects_registry", "create_object", "get_tls_creds",
           "authz_is_allowed_by_id"]

#: The user-creatable types this emulator implements (qom-type -> class).
OBJECT_TYPES: dict[str, type[UserObject]] = {
    cls.type_name: cls for cls in (AuthzSimple, TlsCredsAnon, TlsCredsPsk, TlsCredsX509)
}

_lock = threading.Lock()


def _new_object(qom_type: str, obj_id: str, props: Mapping[str, Any]) -> UserObject:
    """user_creatable_add_type up to (not including) adding and completing: id and type checks,
    then every property set in the given order."""
    if not id_wellformed(obj_id):
        raise TlsError("Parameter 'id' expects an identifier")
    cls = OBJECT_TYPES.get(qom_type)
    if cls is None:
        raise TlsError(f"object type '{qom_type}' is not supported by this emulator")
    obj = cls()
    for name, value in props.items():
        obj.set_property(name, value)
    return obj


def create_object(qom_type: str, obj_id: str, props: Mapping[str, Any]) -> UserObject:
    """A new, completed (loaded) object, not added anywhere. TlsError with QEMU's text."""
    obj = _new_object(qom_type, obj_id, props)
    obj.complete()
    return obj


class ObjectRegistry:
    """A view of the ``/objects`` container under a QOM root (QEMU's object_get_objects_root)."""

    def __init__(self, container: QObject) -> None:
        self.container = container

    def add(self, obj_id: str, obj: UserObject) -> None:
        """Add a completed object (QEMU's duplicate-property text on a reused id)."""
        with _lock:
            try:
                self.container.add_child(obj_id, obj)
            except ValueError as e:
                raise TlsError(str(e)) from None

    def create(self, qom_type: str, obj_id: str, props: Mapping[str, Any]) -> UserObject:
        """object-add: properties, then the id is taken, then ``complete``; a failed completion
        removes the object again (the order of QEMU's user_creatable_add_type)."""
        obj = _new_object(qom_type, obj_id, props)
        self.add(obj_id, obj)
        try:
            obj.complete()
        except BaseException:
            self._remove(obj_id)
            raise
        return obj

    def get(self, obj_id: str) -> QObject | None:
        return self.container.children.get(obj_id)

    def delete(self, obj_id: str) -> None:
        """object-del."""
        obj = self.get(obj_id)
        if obj is None:
            raise TlsError(f"object '{obj_id}' not found")
        if isinstance(obj, UserObject) and not obj.can_be_deleted():
            raise TlsError(f"object '{obj_id}' is in use, can not be deleted")
        self._remove(obj_id)
        if isinstance(obj, UserObject):
            obj.finalize()

    def _remove(self, obj_id: str) -> None:
        with _lock:
            obj = self.container.children.pop(obj_id, None)
            if obj is not None:
                obj.parent = None

    def ids(self) -> list[str]:
        return list(self.container.children)


def objects_registry(root: QObject) -> ObjectRegistry:
    """The registry of a QOM root (``vm.machine.root``); ``/objects`` is created on first use."""
    with _lock:
        container = root.children.get("objects")
        if container is None:
            container = root.add_child("objects", Container())
    return ObjectRegistry(container)


def get_tls_creds(registry: ObjectRegistry, creds_id: str, endpoint: str) -> TlsCreds:
    """migration_tls_get_creds: the TLS credentials ``creds_id`` for a ``client`` or ``server``
    endpoint, or TlsError with QEMU's text."""
    obj = registry.get(creds_id)
    if obj is None:
        raise TlsError(f"No TLS credentials with id '{creds_id}'")
    if not isinstance(obj, TlsCreds):
        raise TlsError(f"Object with id '{creds_id}' is not TLS credentials")
    if obj.endpoint != endpoint:
        raise TlsError(f"Expected TLS credentials for a {endpoint} endpoint")
    return obj


def get_authz(registry: ObjectRegistry, authz_id: str) -> QAuthZ:
    """The authz object ``authz_id`` (qauthz_is_allowed_by_id's lookup and texts)."""
    obj = registry.get(authz_id)
    if obj is None:
        raise TlsError(f"Cannot find QAuthZ object ID {authz_id}")
    if not isinstance(obj, QAuthZ):
        raise TlsError(f"Object '{authz_id}' is not a QAuthZ subclass")
    return obj


def authz_is_allowed_by_id(registry: ObjectRegistry, authz_id: str, identity: str) -> bool:
    return get_authz(registry, authz_id).is_allowed(identity)


def create_from_keyval(registry: ObjectRegistry, opts: Mapping[str, str]) -> UserObject:
    """``-object TYPE,id=ID,prop=value...``: the command line's strings, with QEMU's keyval
    spellings of booleans (on/off, yes/no, true/false), then ``registry.create``."""
    props = dict(opts)
    qom_type, obj_id = props.pop("qom-type", ""), props.pop("id", "")
    cls = OBJECT_TYPES.get(qom_type)
    typed: dict[str, Any] = {}
    for name, text in props.items():
        spec = cls.prop_spec(name) if cls is not None else None
        if spec is not None and spec.qom_type == "bool":
            flag = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}.get(text)
            if flag is None:
                raise TlsError(f"Parameter '{name}' expects 'on' or 'off'")
            typed[name] = flag
        else:
            typed[name] = text
    return registry.create(qom_type, obj_id, typed)
