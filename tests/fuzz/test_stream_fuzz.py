"""The migration stream fuzzer (``qtest.fuzz.stream``): its seeds, its mutants through the
in-process loader (a bounded hypothesis run, in every CI run), its oracles (each shown to fire),
its minimiser, and the out-of-process mode against the emulator and against stand-in binaries."""
from __future__ import annotations

import argparse
import random
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emu.migration.stream as emu_stream
from emu.migration.stream import StreamError
from qtest.fuzz import stream as fuzz

HEADER = bytes.fromhex("5145564d00000003")
CONFIG_NONE = bytes.fromhex("07000000046e6f6e65")


@pytest.fixture(scope="module")
def target() -> fuzz.StreamTarget:
    return fuzz.make_target(argparse.Namespace(machine="auto", timeout=10.0))


def test_every_seed_splits_losslessly_and_loads(target: fuzz.StreamTarget):
    names = {s.name for s in target.seeds}
    assert {"saver-none", "saver-pc", "minimal", "subsections-packaged"} <= names
    for seed in target.seeds:
        data = fuzz.join(seed.items)
        assert data[:8] == HEADER
        assert fuzz.machine_of(data) == seed.machine
        outcome = target.inproc.run(data, seed.machine)
        assert (outcome.kind, seed.name) == ("success", seed.name), outcome.message
        assert outcome.message in ("prelaunch", "paused")


def test_split_stream_types_the_fields_of_a_ram_section():
    seed = next(s for s in fuzz.build_seeds() if s.name == "minimal")
    kinds = [k for item in seed.items for k, _ in item]
    assert kinds[:5] == ["magic", "version", "type", "len32", "name"]
    assert kinds.count("page") == 2 and "fill" in kinds and "json" in kinds
    page_words = [b for item in seed.items for k, b in item if k == "ramword"]
    assert bytes.fromhex("0000000000001008") in page_words  # PAGE at 0x1000, block named
    xbzrle = kinds.index("u8")  # the XBZRLE record: word, encoding, delta length, delta
    assert kinds[xbzrle - 1:xbzrle + 3] == ["ramword", "u8", "len16", "raw"]
    # idstrs of START and FULL, the block names of MEM_SIZE and the first PAGE; MEM_SIZE's length
    assert kinds.count("name8") == 4 and kinds.count("be64") == 1


def test_split_stream_covers_bytes_after_the_vmdesc():
    seed = next(s for s in fuzz.build_seeds() if s.name == "minimal")
    data = fuzz.join(seed.items) + b"\x99tail"
    items = fuzz.split_stream(data)
    assert items[:-1] == seed.items and items[-1] == (("raw", b"\x99tail"),)


def test_mutants_differ_and_are_reproducible(target: fuzz.StreamTarget):
    a = [target.generate(random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    seeds = {fuzz.join(s.items) for s in target.seeds}
    mutants = [target.generate(random.Random(i)) for i in range(50)]
    assert sum(m not in seeds for m in mutants) >= 45


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_structured_mutants_load_without_findings(rng: random.Random):
    fuzz.fuzz_one_input(_mutant(rng))


_SEEDS: list[fuzz.Seed] = []


def _mutant(rng: random.Random) -> bytes:
    """A mutant of a seed under 40 KB (the pc seed loads 5x slower)."""
    if not _SEEDS:
        _SEEDS.extend(s for s in fuzz.build_seeds() if len(fuzz.join(s.items)) < 40000)
    return fuzz.mutate(rng, rng.choice(_SEEDS), _SEEDS)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([b"", HEADER, HEADER + CONFIG_NONE]), st.binary(max_size=200))
def test_raw_bytes_after_a_valid_prefix_load_without_findings(prefix: bytes, tail: bytes):
    fuzz.fuzz_one_input(prefix + tail)


# ---------------------------------------------------------------- each oracle fires

def _loader(timeout: float = 10.0) -> fuzz.InProcessLoader:
    return fuzz.InProcessLoader(timeout=timeout, max_growth_mib=64, max_rss_mib=4096)


def test_an_exception_other_than_stream_error_is_a_crash(monkeypatch):
    def broken(*args, **kwargs):
        return {}["nothing"]

    monkeypatch.setattr(emu_stream, "load_stream", broken)
    outcome = _loader().run(HEADER + CONFIG_NONE + b"\0", "none")
    assert outcome.kind == "crash"
    assert outcome.message.startswith("KeyError: 'nothing' at test_stream_fuzz.py:")


def test_a_load_that_does_not_return_is_a_hang(monkeypatch):
    def spin(*args, **kwargs):
        while True:
            pass

    monkeypatch.setattr(emu_stream, "load_stream", spin)
    outcome = _loader(timeout=0.3).run(HEADER, "none")
    assert (outcome.kind, outcome.message) == ("hang", "load did not return within 0.3 s")


def test_a_load_that_grows_memory_is_a_memory_finding(monkeypatch):
    def hog(*args, **kwargs):
        block = bytearray(160 << 20)
        block[::4096] = b"\1" * len(block[::4096])  # touched: resident
        raise StreamError(["load of migration failed: Invalid argument"], "EINVAL")

    if not fuzz._reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable: the peak RSS cannot be measured per input")
    monkeypatch.setattr(emu_stream, "load_stream", hog)
    outcome = _loader().run(HEADER, "none")
    assert outcome.kind == "memory"
    assert outcome.message.startswith("RSS grew by 1")


def test_a_last_line_that_does_not_match_the_errno_breaks_the_message_form(monkeypatch):
    def wrong(*args, **kwargs):
        raise StreamError(["Not a migration stream", "load of migration failed: Invalid argument"], "EPERM")

    monkeypatch.setattr(emu_stream, "load_stream", wrong)
    outcome = _loader().run(HEADER, "none")
    assert outcome.kind == "invariant"
    assert "does not state EPERM" in outcome.message


def test_a_clean_refusal_is_no_finding():
    outcome = _loader().run(b"QEVX" + HEADER[4:] + CONFIG_NONE + b"\0", "none")
    assert (outcome.kind, outcome.message) == ("clean", "load of migration failed: Invalid argument")


# ---------------------------------------------------------------- minimising

def test_shrink_keeps_only_what_the_finding_needs():
    data = bytes(range(256)) * 4 + b"\xde\xad\xbe\xef" + bytes(300)
    assert fuzz.shrink(data, lambda d: b"\xde\xad" in d) == b"\xde\xad"


def test_minimise_shrinks_a_reproducer_to_the_same_kind(monkeypatch, target: fuzz.StreamTarget):
    real = emu_stream.load_stream

    def picky(reader, *args, **kwargs):
        if b"TRIGGER" in reader.peek(1 << 20):
            raise ValueError("triggered")
        return real(reader, *args, **kwargs)

    monkeypatch.setattr(emu_stream, "load_stream", picky)
    data = fuzz.join(target.seeds[-1].items) + b"TRIGGER" + bytes(100)
    finding = target.run_one(data)
    assert finding is not None and finding.kind == "crash"
    small = target.minimise(data, finding)
    assert small.kind == "crash" and small.suffix == ".mig"
    assert small.reproducer == b"TRIGGER"
    assert "-incoming file:FILE" in small.replay


# ---------------------------------------------------------------- the process mode

def _process(binary: str, timeout: float = 20.0) -> fuzz.ProcessLoader:
    return fuzz.ProcessLoader(binary, timeout=timeout, max_rss_mib=1024)


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-destination"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_process_argv_uses_file_for_the_emulator_and_exec_for_qemu():
    assert fuzz.process_argv("emu-system-x86_64", "none", "/x.mig") == [
        "emu-system-x86_64", "-M", "none", "-m", "16M", "-display", "none", "-nodefaults", "-incoming", "file:/x.mig"]
    assert fuzz.process_argv("/opt/qemu-system-x86_64", "pc", "/x.mig")[-1] == "exec:cat /x.mig"


def test_a_destination_killed_by_a_signal_is_a_crash(tmp_path: Path):
    loader = _process(_script(tmp_path, "kill -SEGV $$"))
    try:
        outcome = loader.run(HEADER, "none")
    finally:
        loader.close()
    assert outcome.kind == "crash" and outcome.message.startswith("killed by signal 11")


def test_a_destination_that_never_answers_is_a_hang(tmp_path: Path):
    loader = _process(_script(tmp_path, "exec sleep 30"), timeout=0.5)
    try:
        outcome = loader.run(HEADER, "none")
    finally:
        loader.close()
    assert outcome.kind == "hang"


@pytest.mark.subprocess
def test_the_emulator_process_loads_a_seed_and_refuses_a_truncated_one(target: fuzz.StreamTarget):
    loader = _process("emu-system-x86_64")
    seed = fuzz.join(next(s for s in target.seeds if s.name == "minimal").items)
    try:
        assert loader.run(seed, "none") == fuzz.Outcome("success", "completed")
        assert loader.run(seed[:100], "none") == fuzz.Outcome("clean", "load of migration failed: Input/output error")
        assert loader.run(b"QEVX" + seed[4:], "none") == fuzz.Outcome("clean",
                                                                      "load of migration failed: Invalid argument")
    finally:
        loader.close()


def test_replay_command_reports_the_outcome(tmp_path: Path, capsys):
    path = tmp_path / "input.mig"
    path.write_bytes(HEADER + CONFIG_NONE + b"\x42\x00")
    assert fuzz.main([str(path), "--machine", "none"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{path}: [in-process, -M none] clean: load of migration failed: Invalid argument"
