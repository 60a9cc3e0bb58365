"""``-device migration-fault,stage=...``: a test-only device whose migration fails on purpose.

QEMU's setup steps (``save_setup``/``load_setup`` of each handler) return an ``Error`` rather than
asserting; this device lets tests prove that path here: the migration ends ``failed`` with the
device's message as ``error-desc`` and the source guest keeps running. The ``save-state`` and
``post-load`` stages raise an unexpected exception instead (as a bug would), in the source's
device-state collection and in the destination's post-load, to prove that a migration thread
that raises still ends its migration ``failed`` and never hangs either side.
"""
from __future__ import annotations

from dataclasses import dataclass

DRIVER = "migration-fault"
STAGES = ("save-setup", "load-setup", "save-state", "post-load")


class MigrationSetupError(Exception):
    """A handler refused to set up; the text becomes the migration's error."""


@dataclass(frozen=True)
class MigrationFault:
    """Which setup step fails."""

    stage: str

    def check(self, stage: str) -> None:
        """Raises the injected error when ``stage`` is the configured one."""
        if stage == self.stage:
            if stage.endswith("-setup"):
                raise MigrationSetupError(f"{DRIVER}: injected {stage.replace('-', '_')} failure")
            raise RuntimeError(f"{DRIVER}: injected {stage} exception")


def parse_fault(opts: dict[str, str]) -> MigrationFault:
    """Options of ``-device migration-fault`` (driver already removed); ValueError on bad ones."""
    for key in opts:
        if key != "stage":
            raise ValueError(f"Property '{DRIVER}.{key}' not found")
    stage = opts.get("stage", "save-setup")
    if stage not in STAGES:
        raise ValueError(f"Parameter 'stage' does not accept value '{stage}'")
    return MigrationFault(stage)
