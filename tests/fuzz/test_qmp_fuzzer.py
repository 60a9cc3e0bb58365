"""The QMP fuzzer (``qtest.fuzz.qmp``): schema-aware generation, a bounded hypothesis run against
the emulator (in every CI run), its oracles (each shown to fire with a stand-in binary), its
minimiser, the host-safety filter and the replay command."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.errors import QapiError
from emu.monitor.registry import build_registry
from qtest.fuzz import qmp as fuzz

pytestmark = pytest.mark.subprocess

#: The emulator's command set (core and migration), as built for the process.
REGISTRY = build_registry()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> fuzz.QmpTarget:
    t = fuzz.QmpTarget(workdir=tmp_path_factory.mktemp("qmp-fuzz"))
    yield t
    t.close()


def lines(*msgs: object) -> bytes:
    return b"".join((m if isinstance(m, bytes) else json.dumps(m).encode()) + b"\n" for m in msgs)


def test_generation_follows_the_schema_the_emulator_serves(target: fuzz.QmpTarget):
    served = target._command("query-qmp-schema")
    assert served == REGISTRY.schema.introspect()
    assert "migrate" in target.schema.commands and "qom-set" in target.schema.commands
    assert ("/machine", "type", "string") in target.pools.qom  # harvested from the live QOM tree


def test_generation_is_reproducible_and_mostly_valid(target: fuzz.QmpTarget):
    assert target.generate(random.Random(5)) == target.generate(random.Random(5))
    rng = random.Random(11)
    valid = total = 0
    for _ in range(400):
        msg = target.gen.message(rng)
        total += 1
        if not isinstance(msg, dict) or set(msg) - {"execute", "arguments", "id"}:
            continue
        name = msg.get("execute")
        if not isinstance(name, str) or name not in target.schema.commands or not isinstance(
                msg.get("arguments", {}), dict):
            continue
        try:
            REGISTRY.schema.check_args(msg["execute"], msg.get("arguments", {}))
            valid += 1
        except QapiError:
            pass
    assert 0.45 < valid / total < 0.9  # mostly valid, so that the handlers run; the rest is not


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_generated_inputs_show_no_finding(target: fuzz.QmpTarget, rng: random.Random):
    data = target.generate(rng)
    finding = target.run_one(data)
    assert finding is None, (finding, data[:2000])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")), max_size=4))
def test_raw_byte_lines_show_no_finding(raw: list[bytes]):
    fuzz.fuzz_one_input(b"".join(line + b"\n" for line in raw))


def test_edge_messages_keep_the_grammar_and_a_quit_restarts(target: fuzz.QmpTarget):
    restarts = target.stats["restarts"]
    data = lines({"execute": "query-status", "id": 1e400},  # QEMU echoes it as a bare inf
                 b'{"execute": "query-name", "id": 18446744073709551616}',
                 b"[" * 1025 + b"]" * 1025, b'{"execute": "qom-list", "arguments": {"path": "\xc0\x80"}}',
                 b'{"execute": "query-uuid"', b"\x1b", b"'junk'",
                 {"execute": "human-monitor-command", "arguments": {"command-line": "q"}, "id": "bye"},
                 {"execute": "query-version", "id": [1, {"a": None}]})
    assert target.run_one(data) is None
    assert target.stats["restarts"] == restarts + 1
    assert target.stats["quits"] >= 1


def test_unsafe_migrations_are_refused():
    assert fuzz.unsafe_reason({"execute": "migrate", "arguments": {"uri": "exec:touch x"}})
    assert fuzz.unsafe_reason({"execute": "migrate", "arguments": {"channels": [
        {"channel-type": "main", "addr": {"transport": "exec", "args": ["sh"]}}]}})
    assert fuzz.unsafe_reason({"execute": "migrate", "arguments": {"uri": "file:/etc/x"}})
    assert fuzz.unsafe_reason({"exec-oob": "migrate", "arguments": {"channels": [
        {"addr": {"transport": "file", "filename": "/tmp/x", "offset": 0}}]}})
    assert fuzz.unsafe_reason({"execute": "migrate", "arguments": {"channels": [
        {"addr": {"transport": "socket", "type": "inet", "host": "example.com", "port": "1"}}]}})
    assert fuzz.unsafe_reason({"execute": "migrate", "arguments": {"uri": "file:fuzz-mig"}}) is None
    assert fuzz.unsafe_reason({"execute": "migrate", "arguments": {"channels": [
        {"addr": {"transport": "file", "filename": "fuzz-mig", "offset": 0}}]}}) is None
    assert fuzz.unsafe_reason({"execute": "qom-get", "arguments": {"path": "/etc/passwd"}}) is None


def test_generated_lines_are_never_unsafe(target: fuzz.QmpTarget):
    rng = random.Random(3)
    for _ in range(300):
        for line in fuzz.split_lines(target.generate(rng)):
            assert target._line_unsafe(line) is None, line[:300]


# ---- the oracles, with a stand-in binary that misbehaves on the command ``boom``

FAKE = r'''
import json, socket, sys
MODE = {mode!r}
path = next(a for a in sys.argv if a.startswith("unix:"))[5:].split(",")[0]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
conn, _ = srv.accept()
send = lambda o: conn.sendall(json.dumps(o).encode() + b"\r\n")
send({{"QMP": {{"version": {{}}, "capabilities": []}}}})
for line in conn.makefile("rb"):
    try:
        msg = json.loads(line)
    except ValueError:
        send({{"error": {{"class": "GenericError", "desc": "JSON parse error"}}}})
        continue
    reply = {{"return": [] if msg.get("id") == "harvest" else {{"status": "running", "running": True}}}}
    if msg.get("execute") == "qmp_capabilities":
        reply = {{"return": {{}}}}
    if msg.get("execute") == "boom":
        if MODE == "hang":
            continue
        if MODE == "exit":
            sys.exit(3)
        if MODE == "internal":
            reply = {{"error": {{"class": "GenericError", "desc": "internal error: boom"}}}}
        if MODE == "noid":
            msg.pop("id", None)
        if MODE == "garbage":
            conn.sendall(b"{{oops\r\n")
    if "id" in msg:
        reply["id"] = msg["id"]
    send(reply)
'''


def fake_binary(tmp_path: Path, mode: str) -> str:
    path = tmp_path / f"fake-{mode}"
    path.write_text(f"#!{sys.executable}\n" + FAKE.format(mode=mode))
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("mode,kind", [("hang", "hang"), ("exit", "crash"), ("internal", "crash"),
                                       ("noid", "invariant"), ("garbage", "invariant")])
def test_each_oracle_fires_and_the_minimiser_keeps_only_the_culprit(tmp_path: Path, mode: str, kind: str):
    t = fuzz.QmpTarget(fake_binary(tmp_path, mode), timeout=1.0, workdir=tmp_path)
    try:
        data = lines({"execute": "query-status", "id": 1}, {"execute": "boom", "id": 2},
                     {"execute": "query-name", "id": 3})
        assert t.run_one(lines({"execute": "query-status", "id": 1})) is None
        finding = t.run_one(data)
        assert finding is not None and finding.kind == kind, finding
        small = t.minimise(data, finding)
        assert (small.kind, small.suffix) == (kind, ".qmp")
        assert fuzz.split_lines(small.reproducer) == [json.dumps({"execute": "boom", "id": 2}).encode()]
    finally:
        t.close()


def test_memory_oracle_fires_over_the_bound(tmp_path: Path):
    t = fuzz.QmpTarget(rss_limit_mib=1, workdir=tmp_path)
    try:
        finding = t.run_one(lines({"execute": "query-status"}))
        assert finding is not None and finding.kind == "memory" and "over the 1 MiB bound" in finding.message
    finally:
        t.close()


def test_replay_command_reports_the_finding(tmp_path: Path):
    repro = tmp_path / "crash.qmp"
    repro.write_bytes(lines({"execute": "query-status"}, {"execute": "boom"}))
    argv = [sys.executable, "-m", "qtest.fuzz.qmp", "--replay", str(repro), "--timeout", "2"]
    bad = subprocess.run(argv + ["--binary", fake_binary(tmp_path, "exit")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and f"{repro}: crash: process ended (status 3" in bad.stdout
    good = subprocess.run(argv, capture_output=True, text=True, timeout=120)  # the emulator: boom is unknown
    assert good.returncode == 0 and "no finding" in good.stdout, good.stdout + good.stderr


# ---- the QMP corpus entries (``tests/fuzz/corpus/*.qmp``), replayed as the replay command does

CORPUS = Path(__file__).resolve().parent / "corpus"
#: findings not fixed yet (emulator code outside this fuzzer): strict, so a fix makes them fail
OPEN: dict[str, str] = {}  # corpus entries whose bug is not fixed yet: name -> why


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.qmp")), ids=lambda p: p.name)
def test_qmp_corpus_replays_without_findings(path: Path, request: pytest.FixtureRequest):
    if path.name in OPEN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=OPEN[path.name]))
    assert path.stat().st_size <= 4096
    finding = fuzz.replay(path)
    assert finding is None, f"{finding.kind}: {finding.message}"
