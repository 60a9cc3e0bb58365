"""What the VM does on guest reboot, shutdown, panic and watchdog expiry (QEMU 7.2's runstate actions).

Owns the QAPI enums ``RebootAction``, ``ShutdownAction``, ``PanicAction`` and ``WatchdogAction``,
the :class:`RunstateActions` record the VM consults, and the command-line side of QEMU's single
``action`` option group: ``-action``, ``-no-reboot`` (``reboot=shutdown``), ``-no-shutdown``
(``shutdown=pause``) and ``-watchdog-action X`` (``watchdog=X``) all merge into one set of
options, the last value of each key winning; unknown keys are refused as each option is read,
values only once all options are read (QEMU runs ``set-action`` then), located at the first
option of the group. QMP ``set-action``/``watchdog-set-action`` apply the same record.
Imports only the QemuOpts lexer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.qemu_opts import parse_items

REBOOT_ACTIONS = ("reset", "shutdown")
SHUTDOWN_ACTIONS = ("poweroff", "pause")
PANIC_ACTIONS = ("pause", "shutdown", "exit-failure", "none")
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "debug", "none", "inject-nmi")

#: The keys of the ``action`` group in QAPI member order (the order ``set-action`` checks them).
ACTION_ENUMS = {"reboot": REBOOT_ACTIONS, "shutdown": SHUTDOWN_ACTIONS, "panic": PANIC_ACTIONS,
                "watchdog": WATCHDOG_ACTIONS}

#: ``-action help``: QEMU prints the group's keys sorted, then exits 1.
ACTION_HELP_TEXT = "action options:\n" + "".join(f"  {k}=<str>\n" for k in sorted(ACTION_ENUMS))


class ActionError(ValueError):
    """A bad ``-action`` key or value; ``str()`` is QEMU's message (without the location)."""


@dataclass
class RunstateActions:
    """The actions in force (QEMU's defaults)."""

    reboot: str = "reset"
    shutdown: str = "poweroff"
    panic: str = "shutdown"
    watchdog: str = "reset"

    def apply(self, values: dict[str, str]) -> None:
        """``set-action``: checks every value (ActionError with QEMU's text), then sets them all."""
        checked = {key: check_action(key, values[key]) for key in ACTION_ENUMS if key in values}
        for key, value in checked.items():
            setattr(self, key, value)


def check_action(key: str, value: str) -> str:
    """``value`` if it is one of ``key``'s enum values, else ActionError (QAPI's text)."""
    if value not in ACTION_ENUMS[key]:
        raise ActionError(f"Parameter '{key}' does not accept value '{value}'")
    return value


@dataclass
class ActionOptions:
    """The merged ``action`` group of one command line: the first option's text (where errors
    point), the keys in order, deprecation warnings met, and whether help was asked for."""

    where: str | None = None
    values: dict[str, str] = field(default_factory=dict)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    wants_help: bool = False

    def add(self, where: str, text: str) -> None:
        """One option of the group (``where`` is how QEMU names it, e.g. ``-action panic=none``);
        ActionError for an unknown key, checked at once as QEMU's option parser does."""
        if self.where is None:
            self.where = where
        for item in parse_items(text):
            if item.is_help:  # QEMU stops reading the option here
                self.wants_help = True
                return
            warning = item.deprecation()
            if warning is not None:
                self.warnings.append((f"{where}: warning: {warning[0]}", warning[1]))
            if item.key not in ACTION_ENUMS:
                raise ActionError(f"Invalid parameter '{item.key}'")
            self.values[item.key] = item.value

    def resolve(self) -> RunstateActions:
        """The actions once every option was read; ActionError for a bad value."""
        actions = RunstateActions()
        actions.apply(self.values)
        return actions


def guest_panicked_action(actions: RunstateActions) -> str:
    """The ``action`` of the GUEST_PANICKED event QEMU 7.2 sends (qemu_system_guest_panicked).

    ``"pause"``: the VM then stops with runstate ``guest-panicked``. ``"poweroff"``: the VM
    stops (``guest-panicked``) and a shutdown with cause ``guest-panic`` is requested (the
    process exits 1 instead of 0 when the panic action is ``exit-failure``). ``"run"``: only
    the event. GUEST_CRASHLOADED always has action ``"run"`` and nothing else happens.
    """
    if actions.panic == "pause" or (actions.panic == "shutdown" and actions.shutdown == "pause"):
        return "pause"
    if actions.panic in ("shutdown", "exit-failure"):
        return "poweroff"
    return "run"
