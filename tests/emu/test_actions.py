"""The runstate actions (emu/actions.py): QAPI enums, the merged ``action`` option group and the
GUEST_PANICKED action, with QEMU 7.2's texts (observed on the 7.2 build)."""
from __future__ import annotations

import pytest

from emu.actions import (
    ACTION_ENUMS,
    ACTION_HELP_TEXT,
    WATCHDOG_ACTIONS,
    ActionError,
    ActionOptions,
    RunstateActions,
    check_action,
    guest_panicked_action,
)
from emu.cli import CliError, EarlyHelp, parse_args


@pytest.mark.parametrize("panic, shutdown, action", [
    ("pause", "poweroff", "pause"), ("shutdown", "pause", "pause"), ("shutdown", "poweroff", "poweroff"),
    ("exit-failure", "pause", "poweroff"), ("none", "pause", "run"), ("none", "poweroff", "run"),
])
def test_guest_panicked_action(panic, shutdown, action):
    assert guest_panicked_action(RunstateActions(panic=panic, shutdown=shutdown)) == action


def test_every_enum_value_is_accepted_and_others_refused():
    assert [check_action("watchdog", a) for a in WATCHDOG_ACTIONS] == list(WATCHDOG_ACTIONS)
    for key in ACTION_ENUMS:
        for bad in ("foo", "RESET", "", "on", "inject_nmi"):
            with pytest.raises(ActionError) as e:
                check_action(key, bad)
            assert str(e.value) == f"Parameter '{key}' does not accept value '{bad}'"


def test_options_merge_last_value_wins_and_keep_the_first_location():
    opts = ActionOptions()
    opts.add("-no-reboot", "reboot=shutdown")
    opts.add("-action panic=none,reboot=reset", "panic=none,reboot=reset")
    opts.add("-watchdog-action pause", "watchdog=pause")
    assert opts.where == "-no-reboot"
    assert opts.resolve() == RunstateActions(reboot="reset", shutdown="poweroff", panic="none", watchdog="pause")


def test_set_action_checks_members_in_qapi_order_and_sets_nothing_on_error():
    actions = RunstateActions()
    with pytest.raises(ActionError, match="Parameter 'reboot' does not accept value 'yy'"):
        actions.apply({"shutdown": "ww", "panic": "xx", "reboot": "yy"})
    with pytest.raises(ActionError, match="Parameter 'shutdown'"):
        actions.apply({"panic": "none", "shutdown": "ww"})
    assert actions == RunstateActions()


@pytest.mark.parametrize("argv, message", [
    (["-action", "panic=foo"], "-action panic=foo: Parameter 'panic' does not accept value 'foo'"),
    (["-action", "foo=bar"], "-action foo=bar: Invalid parameter 'foo'"),
    (["-action", "panic=none", "-action", "panic=foo"], "-action panic=none: Parameter 'panic' does not accept value 'foo'"),
    (["-watchdog-action", "bogus"], "-watchdog-action bogus: Parameter 'watchdog' does not accept value 'bogus'"),
    (["-no-reboot", "-action", "panic=xx"], "-no-reboot: Parameter 'panic' does not accept value 'xx'"),
    (["-action", "panic=xx", "-watchdog-action", "bogus"], "-action panic=xx: Parameter 'panic' does not accept value 'xx'"),
    (["-action", "panic=,reboot=shutdown"], "-action panic=,reboot=shutdown: Parameter 'panic' does not accept value ''"),
    (["-action", "reboot=yy,panic=xx,watchdog=zz,shutdown=ww"],
     "-action reboot=yy,panic=xx,watchdog=zz,shutdown=ww: Parameter 'reboot' does not accept value 'yy'"),
    (["-action", "foo=bar,help"], "-action foo=bar,help: Invalid parameter 'foo'"),
])
def test_command_line_errors_are_qemus(argv, message):
    with pytest.raises(CliError) as e:
        parse_args(["-M", "none", *argv])
    assert str(e.value) == message


def test_short_form_boolean_warns_then_fails_on_its_value():
    with pytest.raises(CliError) as e:
        parse_args(["-action", "nopanic"])
    assert str(e.value) == "-action nopanic: Parameter 'panic' does not accept value 'off'"
    with pytest.raises(CliError) as e:
        parse_args(["-action", ",panic=none"])
    assert str(e.value).endswith("-action ,panic=none: Invalid parameter ''")
    assert str(e.value).startswith("-action ,panic=none: warning: short-form boolean option '' deprecated\n"
                                   "Please use =on instead\n")


@pytest.mark.parametrize("value", ["help", "help,foo=bar", "panic=xx,help"])
def test_help_lists_the_keys_and_exits_1(value):
    with pytest.raises(EarlyHelp) as e:
        parse_args(["-action", value])
    assert (str(e.value), e.value.status) == (ACTION_HELP_TEXT, 1)
    assert ACTION_HELP_TEXT == "action options:\n  panic=<str>\n  reboot=<str>\n  shutdown=<str>\n  watchdog=<str>\n"


def test_no_reboot_and_no_shutdown_are_members_of_the_group():
    cfg = parse_args(["-no-shutdown", "-no-reboot", "-action", "panic=exit-failure"])
    assert cfg.actions == RunstateActions(reboot="shutdown", shutdown="pause", panic="exit-failure", watchdog="reset")
    assert parse_args(["-action", "reboot=shutdown", "-action", "reboot=reset"]).actions.reboot == "reset"
    assert parse_args(["-watchdog-action", "pause"]).actions.watchdog == "pause"


def test_inject_nmi_is_refused_as_not_modelled():
    with pytest.raises(CliError, match="inject-nmi is not supported by this emulator"):
        parse_args(["-action", "watchdog=inject-nmi"])
