"""Tests for emu.monitor.qjson: QEMU's JSON stream parser and serializer."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.monitor.qjson import JsonStreamParser, dumps, qdict_bucket, qdict_order

OK = None  # second member of a successful parse result


def parse_all(data: bytes, **kw: Any) -> list[tuple[Any, str | None]]:
    return JsonStreamParser(**kw).feed(data)


def parse_one(data: bytes) -> Any:
    results = parse_all(data + b"\n")
    assert len(results) == 1, results
    value, err = results[0]
    assert err is None, err
    return value


def errors(data: bytes, **kw: Any) -> list[str | None]:
    return [err for _, err in parse_all(data, **kw)]


# ---------------------------------------------------------------------------
# Framing


STREAM = (
    b' {"execute": "qmp_capabilities"}{"execute":"query-status","id":"__qmp#00000"}'
    b"\r\n  {'execute': 'x', 'arguments': {'s': 'it\\'s \"q\"'}}[1, 2.5, -3e2]\n"
    b'"\\u00e9\xc3\xa9\\uD83D\\uDE00" {"nested": {"a": [true, false, null, {}]}, "id": 18446744073709551615}'
)
STREAM_VALUES = [
    {"execute": "qmp_capabilities"},
    {"execute": "query-status", "id": "__qmp#00000"},
    {"execute": "x", "arguments": {"s": "it's \"q\""}},
    [1, 2.5, -300.0],
    "\u00e9\u00e9\U0001F600",
    {"nested": {"a": [True, False, None, {}]}, "id": 18446744073709551615},
]


def test_stream_in_one_chunk() -> None:
    assert parse_all(STREAM) == [(v, OK) for v in STREAM_VALUES]


def test_stream_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        parser = JsonStreamParser()
        results = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
        assert results == [(v, OK) for v in STREAM_VALUES], cut


def test_stream_byte_by_byte() -> None:
    parser = JsonStreamParser()
    results = []
    for i in range(len(STREAM)):
        results += parser.feed(STREAM[i:i + 1])
    assert results == [(v, OK) for v in STREAM_VALUES]


def test_object_completes_without_newline() -> None:
    # qemu.qmp sends compact JSON with nothing after it.
    parser = JsonStreamParser()
    assert parser.feed(b'{"execute":"query-status","id":"__qmp#00001"}') == [
        ({"execute": "query-status", "id": "__qmp#00001"}, OK)
    ]
    assert not parser.pending


def test_leading_space_from_send_fd_scm_is_whitespace() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b" ") == []
    assert parser.feed(b'{"execute": "getfd"}') == [({"execute": "getfd"}, OK)]


def test_top_level_scalars_need_lookahead() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b"42") == []
    assert parser.pending
    assert parser.feed(b" ") == [(42, OK)]
    assert parser.feed(b"true") == []
    assert parser.feed(b"]") == [(True, OK), (None, "JSON parse error, expecting value")]


def test_incomplete_object_waits_then_completes() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b'{"execute":\n') == []
    assert parser.feed(b' "x"\n') == []
    assert parser.feed(b"}") == [({"execute": "x"}, OK)]


def test_single_quotes() -> None:
    assert parse_one(b"{'execute': 'query-status'}") == {"execute": "query-status"}
    assert parse_one(b"'a\"b'") == 'a"b'
    assert parse_one(b"'a\\'b'") == "a'b"
    assert parse_one(b'"a\\\'b"') == "a'b"  # \' is accepted in double quotes too


# ---------------------------------------------------------------------------
# Scalars


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"-0", 0),
        (b"9223372036854775807", 9223372036854775807),
        (b"-9223372036854775808", -9223372036854775808),
        (b"18446744073709551615", 18446744073709551615),
        (b"18446744073709551616", 18446744073709551616.0),
        (b"-9223372036854775809", -9223372036854775809.0),
        (b"1" * 40, float("1" * 40)),
        (b"1.5", 1.5),
        (b"1e3", 1000.0),
        (b"1E+3", 1000.0),
        (b"-2.5e-1", -0.25),
        (b"0.0", 0.0),
        (b"1e999", math.inf),
    ],
)
def test_numbers(text: bytes, value: Any) -> None:
    got = parse_one(text)
    assert got == value
    assert type(got) is type(value)


def test_float_types() -> None:
    assert type(parse_one(b"1.0")) is float
    assert type(parse_one(b"10")) is int


def test_zero_then_exponent_is_two_tokens() -> None:
    # QEMU's lexer has no exponent after a bare 0: "0e5" is 0, e, 5.
    assert parse_all(b"0e5 ") == [(0, OK), (None, "JSON parse error, invalid keyword 'e'"), (5, OK)]


def test_strings() -> None:
    assert parse_one(b'"\\"\\\\\\/\\b\\f\\n\\r\\t"') == "\"\\/\b\f\n\r\t"
    assert parse_one(b'"\\u0041\\u00e9\\u20AC"') == "A\u00e9\u20ac"
    assert parse_one(b'"\\ud83d\\ude00"') == "\U0001F600"
    assert parse_one(b'"\\u0000"') == "\0"
    assert parse_one(b'"a\xc0\x80b"') == "a\0b"  # modified UTF-8 NUL
    assert parse_one("\"\u00e9\U0001F600\"".encode()) == "\u00e9\U0001F600"
    assert parse_one(b'"\x7f"') == "\x7f"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'"\\ud800"', "\\ud800 is not a valid Unicode character"),
        (b'"\\udc00"', "\\udc00 is not a valid Unicode character"),
        (b'"\\ud800\\u0041"', "\\ud800 is not a valid Unicode character"),
        (b'"\\uFFFF"', "\\uFFFF is not a valid Unicode character"),
        (b'"\\u12x4"', "\\u12x4 is not a valid Unicode character"),
        (b'"\\q"', "invalid escape sequence in string"),
        (b'"\xc3("', "invalid UTF-8 sequence in string"),
        (b'"\xed\xa0\x80"', "invalid UTF-8 sequence in string"),  # UTF-8 surrogate
        (b'"\xef\xbf\xbf"', "invalid UTF-8 sequence in string"),  # U+FFFF
        (b'"\xc1\x81"', "invalid UTF-8 sequence in string"),  # overlong
    ],
)
def test_string_errors(text: bytes, message: str) -> None:
    assert errors(text) == ["JSON parse error, " + message]


def test_keywords() -> None:
    assert parse_all(b"[true, false, null]") == [([True, False, None], OK)]
    assert errors(b"nul ") == ["JSON parse error, invalid keyword 'nul'"]


# ---------------------------------------------------------------------------
# Errors (migration-qapi.md §1.4) and recovery


def test_stray_character() -> None:
    assert errors(b"@") == ["JSON parse error, stray '@'"]


def test_junk_after_object() -> None:
    assert parse_all(b'{"execute": "x"} junk\n') == [
        ({"execute": "x"}, OK),
        (None, "JSON parse error, invalid keyword 'junk'"),
    ]


def test_trailing_comma() -> None:
    assert errors(b'{"execute": "x",}') == ["JSON parse error, expecting value"]
    assert errors(b"[1,]") == ["JSON parse error, expecting value"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"}", "expecting value"),
        (b"]", "expecting value"),
        (b",", "expecting value"),
        (b":", "expecting value"),
        (b'{"a":}', "expecting value"),
        (b'{"a"}', "missing : in object pair"),
        (b'{"a" 1}', "missing : in object pair"),
        (b"{1: 2}", "key is not a string in object"),
        (b'{{"a": 1}: 2}', "key is not a string in object"),
        (b'{"a": 1 "b": 2}', "expected separator in dict"),
        (b'{"a": 1]', "expected separator in dict"),
        (b"[1 2]", "expected separator in list"),
        (b"[}", "expecting value"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
    ],
)
def test_parser_errors(text: bytes, message: str) -> None:
    assert errors(text) == ["JSON parse error, " + message]


@pytest.mark.parametrize(
    ("text", "stray"),
    [
        (b"01", "01"),
        (b"-a", "-a"),
        (b"1.x", "1.x"),
        (b"1ex", "1ex"),
        (b"1e+x", "1e+x"),
        (b'"ab\ncd"', '"ab\n'),
        (b'"ab\\\x01', '"ab\\\x01'),
        (b"\x7f", "\x7f"),
        (b"\xff", "\ufffd"),
        (b"\xc3\xa9", "\ufffd"),  # non-ASCII outside a string
        (b"\x00", ""),  # %s stops at NUL
        (b'"a\x00', '"a'),
    ],
)
def test_lexical_errors(text: bytes, stray: str) -> None:
    assert errors(text) == [f"JSON parse error, stray '{stray}'"]


def test_error_drops_partial_message_and_recovers() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b'{"execute": @ "rest"\n') == [(None, "JSON parse error, stray '@'")]
    assert parser.feed(b'{"execute": "ok"}') == [({"execute": "ok"}, OK)]


def test_recovery_stops_at_structural_character() -> None:
    # Recovery ends at the ',' which then stands alone at top level, as in QEMU.
    assert errors(b'{"execute": @ "rest", {"a": 1}') == [
        "JSON parse error, stray '@'",
        "JSON parse error, expecting value",
        None,
    ]


def test_recovery_skips_until_structural_or_control() -> None:
    parser = JsonStreamParser()
    # After the error, "skipped words 12" is ignored; the newline resyncs.
    assert parser.feed(b"@ skipped words 12\n 7 ") == [(None, "JSON parse error, stray '@'"), (7, OK)]


def test_control_character_forces_resync_from_open_object() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b'{"a": [1, {"b": "unterminated') == []
    assert parser.feed(b"\x1b") == [(None, 'JSON parse error, stray \'"unterminated\x1b\'')]
    assert parser.feed(b'{"execute": "x"}') == [({"execute": "x"}, OK)]
    assert not parser.pending


def test_newline_does_not_close_an_open_object() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b'{"a": 1,\n\n') == []
    assert parser.pending


# ---------------------------------------------------------------------------
# Limits


def test_nesting_limit() -> None:
    ((value, err),) = parse_all(b"[" * 1024 + b"]" * 1024)
    assert err is None
    assert dumps(value) == "[" * 1024 + "]" * 1024  # dumps is iterative; == would recurse
    results = parse_all(b"[" * 1025 + b"]" * 1025)
    assert results[0] == (None, "JSON nesting depth limit exceeded")
    # QEMU then sees the stray closers one by one.
    assert all(r == (None, "JSON parse error, expecting value") for r in results[1:])


def test_nesting_limit_recovers() -> None:
    parser = JsonStreamParser()
    parser.feed(b"{" * 2000)
    assert parser.feed(b"\x1b" + b'{"execute": "x"}') == [
        (None, "JSON parse error, stray '\x1b'"),
        ({"execute": "x"}, OK),
    ]


def _nest(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_token_size_limit() -> None:
    parser = JsonStreamParser(max_token_size=64)
    assert parser.feed(b'{"s": "' + b"x" * 40 + b'"}') == [({"s": "x" * 40}, OK)]
    got = parser.feed(b'{"s": "' + b"x" * 100 + b'"}\x1b{"a": 1}')
    assert got[0] == (None, "JSON token size limit exceeded")
    assert got[-1] == ({"a": 1}, OK)


def test_token_size_limit_on_pending_token() -> None:
    parser = JsonStreamParser(max_token_size=64)
    got = []
    for _ in range(10):
        got += parser.feed(b"x" * 10)
    assert (None, "JSON token size limit exceeded") in got


@pytest.mark.parametrize("quote", [b'"', b"'"])
def test_string_size_limit_boundary(quote: bytes) -> None:
    # Whole strings take a fast path; the DFA's limit rule (and its restart point) must still hold.
    expected = {
        7: [("xxxxx", OK), (1, OK)],
        8: [(None, "JSON token size limit exceeded"), (1, OK)],
        9: [(None, "JSON token size limit exceeded"), (1, OK)],
        10: [(None, "JSON token size limit exceeded")],
        11: [(None, "JSON token size limit exceeded"), (None, "JSON parse error, invalid keyword 'x'")],
    }
    for length, want in expected.items():
        parser = JsonStreamParser(max_token_size=8)
        assert parser.feed(quote + b"x" * (length - 2) + quote + b" 1 ") == want, length


def test_token_count_limit() -> None:
    parser = JsonStreamParser(max_token_count=10)
    assert parser.feed(b"[1, 2, 3, 4]") == [([1, 2, 3, 4], OK)]
    got = parser.feed(b"[1, 2, 3, 4, 5, 6]\n")
    assert got[0] == (None, "JSON token count limit exceeded")


def test_huge_string_completes() -> None:
    # Performance guard without timing: a quadratic parser would not finish.
    body = b"a" * (10 << 20)
    msg = b'{"execute": "x", "arguments": {"s": "' + body + b'"}}'
    parser = JsonStreamParser()
    results = []
    for i in range(0, len(msg), 1 << 16):
        results += parser.feed(msg[i:i + (1 << 16)])
    assert len(results) == 1
    assert len(results[0][0]["arguments"]["s"]) == len(body)


def test_many_small_messages_in_one_chunk() -> None:
    data = b'{"execute": "query-status"}' * 20000
    results = JsonStreamParser().feed(data)
    assert len(results) == 20000


# ---------------------------------------------------------------------------
# Robustness (hypothesis)

_JSONISH = st.sampled_from(list(b'{}[]:,"\'\\ \n\tabcdeflnrstu0123456789-+.eE@\x00\x1b\x7f\xc3\xa9\xff'))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300), st.lists(_JSONISH, max_size=300).map(bytes)), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_random_input_never_raises_and_is_chunking_independent(data: bytes, cuts: list[int]) -> None:
    whole = JsonStreamParser().feed(data)
    parser = JsonStreamParser()
    chunked: list[tuple[Any, str | None]] = []
    prev = 0
    for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
        chunked += parser.feed(data[prev:cut])
        prev = cut
    assert _canon(chunked) == _canon(whole)
    assert not any(err and "internal error" in err for _, err in whole)
    # A control character always resynchronises.
    tail = parser.feed(b'\x1b{"execute": "sync"}')
    assert tail[-1] == ({"execute": "sync"}, OK)


def _canon(results: list[tuple[Any, str | None]]) -> str:
    return repr(results)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _valid_text(value: Any) -> bool:
    """QEMU cannot carry surrogates or noncharacters; skip such strings."""
    if isinstance(value, str):
        return all(
            not (0xD800 <= ord(c) <= 0xDFFF or 0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFE) == 0xFFFE)
            for c in value
        )
    if isinstance(value, list):
        return all(_valid_text(v) for v in value)
    if isinstance(value, dict):
        return all(_valid_text(k) and _valid_text(v) for k, v in value.items())
    return True


@settings(max_examples=300, deadline=None)
@given(value=_json_values)
def test_dumps_then_parse_round_trips(value: Any) -> None:
    if not _valid_text(value):
        return
    text = dumps(value)
    assert text.isascii()
    assert "\n" not in text
    assert parse_one(text.encode()) == value


# ---------------------------------------------------------------------------
# Serializer


def test_separators_and_empty_containers() -> None:
    assert dumps({"return": {}}) == '{"return": {}}'
    assert dumps([1, [], {}, "x"]) == '[1, [], {}, "x"]'
    assert dumps([]) == "[]"
    assert dumps((1, 2)) == "[1, 2]"


def test_scalars() -> None:
    assert dumps(None) == "null"
    assert dumps(True) == "true"
    assert dumps(False) == "false"
    assert dumps(18446744073709551615) == "18446744073709551615"
    assert dumps(-5) == "-5"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (461.109, "461.10899999999998"),
        (0.1, "0.10000000000000001"),
        (1e20, "1e+20"),
        (1.5e-7, "1.4999999999999999e-07"),
        (math.inf, "inf"),
    ],
)
def test_floats(value: float, text: str) -> None:
    assert dumps(value) == text


def test_unicode_escapes() -> None:
    assert dumps("a\u00e9b\U0001F600") == '"a\\u00E9b\\uD83D\\uDE00"'
    assert dumps("\x7f\x01\x1f") == '"\\u007F\\u0001\\u001F"'
    assert dumps("\"\\/\b\f\n\r\t") == '"\\"\\\\/\\b\\f\\n\\r\\t"'
    assert dumps("\0") == '"\\u0000"'
    assert dumps("\u20ac\uffef") == '"\\u20AC\\uFFEF"'
    # Code points QEMU strings cannot hold come out as U+FFFD.
    assert dumps("\ud800\ufffe\U0001FFFF") == '"\\uFFFD\\uFFFD\\uFFFD"'
    assert dumps({"\u00e9": 1}) == '{"\\u00E9": 1}'


def test_dumps_rejects_unserializable() -> None:
    with pytest.raises(TypeError):
        dumps({"a": object()})
    with pytest.raises(TypeError):
        dumps({1: "a"})


def test_dumps_deep_nesting_does_not_recurse() -> None:
    assert dumps(_nest(5000)) == "[" * 5000 + "]" * 5000


def _ordered(keys: str) -> list[str]:
    return [k.strip() for k in keys.split(",")]


@pytest.mark.parametrize(
    ("insertion", "expected"),
    [
        ("return, id", "return, id"),
        ("error, id", "id, error"),
        ("class, desc", "class, desc"),
        ("event, timestamp, data", "timestamp, event, data"),
        ("seconds, microseconds", "seconds, microseconds"),
        ("running, singlestep, status", "status, singlestep, running"),
        ("version, capabilities", "version, capabilities"),
        ("qemu, package", "qemu, package"),
        ("major, minor, micro", "micro, minor, major"),
        ("capability, state", "state, capability"),
        ("host, port, ipv4, type", "port, ipv4, host, type"),
        ("path, type", "path, type"),
        ("status, socket-address", "status, socket-address"),
        ("status, error-desc", "status, error-desc"),
        ("guest, reason", "guest, reason"),
        (
            "status, ram, total-time, downtime, expected-downtime, setup-time",
            "expected-downtime, status, setup-time, downtime, total-time, ram",
        ),
        (
            "transferred, remaining, total, duplicate, normal, normal-bytes, dirty-pages-rate, mbps, "
            "dirty-sync-count, postcopy-requests, page-size, multifd-bytes, pages-per-second, precopy-bytes, "
            "downtime-bytes, postcopy-bytes, dirty-sync-missed-zero-copy",
            "total, postcopy-requests, dirty-sync-count, multifd-bytes, pages-per-second, downtime-bytes, "
            "page-size, remaining, postcopy-bytes, mbps, transferred, dirty-sync-missed-zero-copy, "
            "precopy-bytes, duplicate, dirty-pages-rate, normal-bytes, normal",
        ),
        (
            # MigrationParameters in schema order: vcpu-dirty-limit shares a bucket
            # with multifd-compression and, inserted later, comes first.
            "announce-initial, announce-max, announce-rounds, announce-step, throttle-trigger-threshold, "
            "cpu-throttle-initial, cpu-throttle-increment, cpu-throttle-tailslow, tls-creds, tls-hostname, "
            "tls-authz, max-bandwidth, avail-switchover-bandwidth, downtime-limit, x-checkpoint-delay, "
            "multifd-channels, xbzrle-cache-size, max-postcopy-bandwidth, max-cpu-throttle, "
            "multifd-compression, multifd-zlib-level, multifd-zstd-level, x-vcpu-dirty-limit-period, "
            "vcpu-dirty-limit, mode, zero-page-detection, direct-io",
            "cpu-throttle-tailslow, xbzrle-cache-size, cpu-throttle-initial, announce-max, direct-io, "
            "avail-switchover-bandwidth, zero-page-detection, multifd-channels, mode, multifd-zstd-level, "
            "announce-initial, downtime-limit, tls-authz, vcpu-dirty-limit, multifd-compression, "
            "announce-rounds, announce-step, tls-creds, x-vcpu-dirty-limit-period, multifd-zlib-level, "
            "max-cpu-throttle, max-postcopy-bandwidth, tls-hostname, throttle-trigger-threshold, "
            "max-bandwidth, x-checkpoint-delay, cpu-throttle-increment",
        ),
    ],
)
def test_qdict_key_order(insertion: str, expected: str) -> None:
    keys = _ordered(insertion)
    assert qdict_order(keys) == _ordered(expected)
    rendered = dumps({k: 0 for k in keys})
    assert rendered == "{" + ", ".join(f'"{k}": 0' for k in _ordered(expected)) + "}"


def test_same_bucket_most_recent_first() -> None:
    assert qdict_bucket("singlestep") == qdict_bucket("status")
    assert dumps({"status": 1, "singlestep": 2}) == '{"singlestep": 2, "status": 1}'
    assert dumps({"singlestep": 2, "status": 1}) == '{"status": 1, "singlestep": 2}'


def test_observed_72_lines() -> None:
    assert (
        dumps({"return": {"running": False, "singlestep": False, "status": "prelaunch"}})
        == '{"return": {"status": "prelaunch", "singlestep": false, "running": false}}'
    )
    greeting = {
        "QMP": {
            "version": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"},
            "capabilities": ["oob"],
        }
    }
    assert dumps(greeting) == (
        '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
        '"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}'
    )
    assert (
        dumps({"return": {"socket-address": [{"type": "inet", "host": "127.0.0.1", "port": "45723", "ipv4": True}]}})
        == '{"return": {"socket-address": [{"port": "45723", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]}}'
    )


def test_pretty_layout() -> None:
    # QEMU's json-writer in pretty mode (-mon ...,pretty=on).
    assert dumps({"return": {}}, pretty=True) == '{\n    "return": {\n    }\n}'
    assert dumps({"return": [1, {"a": []}], "id": 1}, pretty=True) == (
        '{\n    "return": [\n        1,\n        {\n            "a": [\n            ]\n        }\n    ],\n    "id": 1\n}'
    )
    assert dumps([], pretty=True) == "[\n]"
    assert dumps("x", pretty=True) == '"x"'
