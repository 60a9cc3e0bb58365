"""QEMU-compatible JSON: a streaming parser for QMP input and QEMU's serializer.

The parser reproduces QEMU's ``qobject/json-lexer.c`` + ``json-streamer.c`` +
``json-parser.c`` behaviour at the level a client can observe:

* input is a byte stream; values are split by brace/bracket balance, not lines;
* single-quoted strings and the ``\\'`` escape are accepted;
* error texts are QEMU's (``JSON parse error, stray '@'``, ``... invalid keyword
  'junk'``, ``... expecting value``, ...);
* after a lexical error the lexer skips input until a structural character
  (``[]{}:,``), an ASCII control character other than TAB, or a 0xFE/0xFF byte
  (QEMU's ``IN_RECOVERY`` state);
* the limits are QEMU's: 64 MiB per message, 2 Mi tokens, nesting depth 1024.

Resynchronisation guarantee (as documented in QEMU's qmp-spec): an ASCII control
character other than ``\\t``, ``\\r``, ``\\n`` (for example ``\\x1b``), or a
``\\xff`` byte, provokes a lexical error whatever state the parser is in, which
discards any partial message. The next complete value after it is parsed cleanly.
A plain newline is *not* enough: it does not close an unterminated object.

The serializer :func:`dumps` produces QEMU's exact bytes, including QDict hash
order for object members.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from json import decoder as _json_decoder
from typing import Any

__all__ = [
    "JsonStreamParser",
    "dumps",
    "qdict_bucket",
    "qdict_order",
    "MAX_TOKEN_SIZE",
    "MAX_TOKEN_COUNT",
    "MAX_NESTING",
]

MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10

# Token kinds. Structural tokens use their byte value.
_LCURLY, _RCURLY, _LSQUARE, _RSQUARE = ord("{"), ord("}"), ord("["), ord("]")
_COLON, _COMMA = ord(":"), ord(",")
_STRING, _INTEGER, _FLOAT, _KEYWORD = 1, 2, 3, 4
_STRUCTURAL = frozenset(b"{}[]:,")
# Pseudo-kinds of a pending token's scan: it needs more input, or it is broken.
_NEED_MORE, _BAD_TOKEN = 0, -1

# Bytes the lexer and the string decoder look at.
_DQUOTE, _SQUOTE, _BACKSLASH = ord('"'), ord("'"), ord("\\")
_DIGIT_0, _DIGIT_9, _MINUS, _PLUS, _DOT = ord("0"), ord("9"), ord("-"), ord("+"), ord(".")
_LOWER_E, _UPPER_E, _LOWER_U = ord("e"), ord("E"), ord("u")
_LOWER_A, _LOWER_Z = ord("a"), ord("z")

# Lexer states; the pending-token states come last (the lexer tests ``state > _RECOVERY``).
_START, _RECOVERY, _IN_STRING, _IN_NUMBER, _IN_KEYWORD = range(5)
_PENDING_STATES = (_IN_STRING, _IN_NUMBER, _IN_KEYWORD)
# Number sub-states (QEMU's IN_SIGN, IN_ZERO, IN_DIGITS, ...).
_N_SIGN, _N_ZERO, _N_DIGITS, _N_MANT, _N_MANT_DIGITS, _N_EXP_E, _N_EXP_SIGN, _N_EXP_DIGITS = range(8)
# Terminal number states end by lookahead; the others need another character.
_N_TERMINAL = {_N_ZERO: _INTEGER, _N_DIGITS: _INTEGER, _N_MANT_DIGITS: _FLOAT, _N_EXP_DIGITS: _FLOAT}

# The lexer patterns below all match the empty string: match() never returns None.
_WS_RE = re.compile(rb"[ \t\r\n]*")
# String bodies: bytes 0x20..0xFD except quote and backslash; an escape is a
# backslash plus any byte 0x20..0xFD (the parser rejects bad escapes later).
_DQ_BODY_RE = re.compile(rb'[^"\\\x00-\x1f\xfe\xff]*(?:\\[\x20-\xfd][^"\\\x00-\x1f\xfe\xff]*)*')
_SQ_BODY_RE = re.compile(rb"[^'\\\x00-\x1f\xfe\xff]*(?:\\[\x20-\xfd][^'\\\x00-\x1f\xfe\xff]*)*")
_DIGITS_RE = re.compile(rb"[0-9]*")
_KEYWORD_RE = re.compile(rb"[a-z]*")
# Recovery skips everything except structural chars, control chars other than
# TAB, and the impossible UTF-8 bytes.
_RECOVERY_RE = re.compile(rb"[^\x00-\x08\x0a-\x1f\xfe\xff\[\]{}:,]*")
# Fast path for complete strings; an incomplete or broken one goes through the DFA
# from its opening quote (one extra scan of this chunk's part of it: still linear).
_FAST_STRING_RE = re.compile(b'"' + _DQ_BODY_RE.pattern + b'"|\'' + _SQ_BODY_RE.pattern + b"'")
# Fast path for short numbers and keywords that are followed by a character that
# cannot continue them; anything else goes through the exact DFA.
_FAST_SCALAR_RE = re.compile(
    rb"(-?(?:0(?:\.[0-9]{1,30}(?:[eE][-+]?[0-9]{1,4})?)?"
    rb"|[1-9][0-9]{0,30}(?:\.[0-9]{1,30})?(?:[eE][-+]?[0-9]{1,4})?)"
    rb"|[a-z]{1,16})[ \t\r\n,\]}:]"
)

# json's C string scanner (json.decoder.scanstring is not in the typeshed stubs).
_scanstring: Callable[[str, int, bool], tuple[str, int]] = _json_decoder.scanstring  # type: ignore[attr-defined]

_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1


# Code points QEMU's mod_utf8_codepoint() refuses: surrogates and noncharacters.
# The BMP ones fit a fast regex class; the 32 astral ones are found by substring
# search, which is much faster than a regex class with astral members.
_BAD_BMP_RE = re.compile("[\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
_BAD_ASTRAL = tuple(chr((plane << 16) | low) for plane in range(1, 17) for low in (0xFFFE, 0xFFFF))


def _has_bad_cp(text: str) -> bool:
    if text.isascii():
        return False
    if _BAD_BMP_RE.search(text) is not None:
        return True
    return max(text) > "\uffff" and any(c in text for c in _BAD_ASTRAL)


def _replace_bad_cp(text: str) -> str:
    text = _BAD_BMP_RE.sub("\ufffd", text)
    for c in _BAD_ASTRAL:
        text = text.replace(c, "\ufffd")
    return text


def _valid_codepoint(cp: int) -> bool:
    if cp < 0 or cp > 0x10FFFF:
        return False
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False
    return not 0xD800 <= cp <= 0xDFFF


class _ParseError(Exception):
    """Internal: the first error of a message parse (QEMU keeps only the first)."""


def _lossy_text(data: bytes) -> str:
    """Decode bytes the way QEMU prints a C string holding them in JSON.

    ``%s`` stops at a NUL byte; invalid modified-UTF-8 sequences become U+FFFD,
    one per sequence as ``mod_utf8_codepoint()`` delimits them.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    try:
        text = data.decode("utf-8")
        if not _has_bad_cp(text):
            return text
    except UnicodeDecodeError:
        pass
    if len(data) > (1 << 20):
        # Only reached for enormous error tokens; C speed matters more here than
        # the exact number of replacement characters.
        return _replace_bad_cp(data.decode("utf-8", "replace"))
    out: list[str] = []
    i, n = 0, len(data)
    min_cp = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)
    while i < n:
        byte = data[i]
        i += 1
        if byte < 0x80:
            out.append(chr(byte))
            continue
        if byte >= 0xFE or not byte & 0x40:
            out.append("\ufffd")
            continue
        length, mask = 0, 0x80
        while byte & mask:
            length += 1
            mask >>= 1
        cp = byte & (mask - 1)
        ok = True
        for _ in range(1, length):
            if i >= n or (data[i] & 0xC0) != 0x80:
                ok = False
                break
            cp = (cp << 6) | (data[i] & 0x3F)
            i += 1
        if ok and _valid_codepoint(cp) and (cp >= min_cp[length - 2] or (cp == 0 and length == 2)):
            out.append(chr(cp))
        else:
            out.append("\ufffd")
    return "".join(out)


def _mod_utf8(seg: bytes) -> str:
    """Strictly decode modified UTF-8 (``C0 80`` is U+0000); raise on anything invalid."""
    try:
        text = seg.decode("utf-8")
    except UnicodeDecodeError:
        if b"\xc0\x80" not in seg:
            raise _ParseError("invalid UTF-8 sequence in string") from None
        try:
            # Replacing C0 80 cannot turn an invalid sequence into a valid one.
            text = seg.replace(b"\xc0\x80", b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise _ParseError("invalid UTF-8 sequence in string") from None
    if _has_bad_cp(text):
        raise _ParseError("invalid UTF-8 sequence in string")
    return text


# The byte after a backslash -> what it stands for (all escapes but \\u).
_SIMPLE_ESCAPES = {ord(esc): text for esc, text in zip("\"'\\/bfnrt", "\"'\\/\b\f\n\r\t")}
_HEX4_RE = re.compile(rb"[0-9a-fA-F]{4}")


def _hex4(tok: bytes, pos: int) -> int:
    return int(tok[pos:pos + 4], 16) if _HEX4_RE.match(tok, pos) else -1


def _decode_string_slow(tok: bytes) -> str:
    """Decode a string token exactly as QEMU's parse_string(), errors included."""
    end = len(tok) - 1
    p = 1
    out: list[str] = []
    while p < end:
        if tok[p] != _BACKSLASH:
            q = tok.find(b"\\", p, end)
            if q < 0:
                q = end
            out.append(_mod_utf8(tok[p:q]))
            p = q
            continue
        beg = p
        esc = tok[p + 1]
        p += 2
        simple = _SIMPLE_ESCAPES.get(esc)
        if simple is not None:
            out.append(simple)
            continue
        if esc != _LOWER_U:
            raise _ParseError("invalid escape sequence in string")
        cp = _hex4(tok, p)
        p += 4
        if 0xD800 <= cp <= 0xDBFF and tok[p:p + 2] == b"\\u":
            cp = 0x10000 + ((cp & 0x3FF) << 10)
            trailing = _hex4(tok, p + 2)
            if 0xDC00 <= trailing <= 0xDFFF:
                cp |= trailing & 0x3FF
                p += 6
            else:
                cp = -1
        # QEMU encodes U+0000 as C0 80, so \u0000 is valid.
        if cp != 0 and not _valid_codepoint(cp):
            raise _ParseError(f"{_lossy_text(tok[beg:p])} is not a valid Unicode character")
        out.append(chr(cp))
    return "".join(out)


def _decode_string(tok: bytes) -> str:
    if tok[0] == _DQUOTE:
        if b"\\" not in tok:
            try:
                text = tok[1:-1].decode("utf-8")
            except UnicodeDecodeError:
                return _decode_string_slow(tok)
            if not _has_bad_cp(text):
                return text
            return _decode_string_slow(tok)
        # Common escapes: let the C scanner do the work; anything it accepts
        # that QEMU would not (lone surrogates, noncharacters) is caught below.
        try:
            text, _ = _scanstring(tok.decode("utf-8"), 1, True)
        except (UnicodeDecodeError, ValueError):
            return _decode_string_slow(tok)
        if not _has_bad_cp(text):
            return text
    return _decode_string_slow(tok)


def _decode_integer(tok: bytes) -> int | float:
    # QEMU: int64 if it fits, else uint64 if it fits, else double.
    if len(tok) <= 21:
        value = int(tok)
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
    return float(tok)


def _literal(kind: int, tok: bytes) -> Any:
    if kind == _STRING:
        return _decode_string(tok)
    if kind == _INTEGER:
        return _decode_integer(tok)
    if kind == _FLOAT:
        return float(tok)
    if tok == b"true":
        return True
    if tok == b"false":
        return False
    if tok == b"null":
        return None
    raise _ParseError(f"invalid keyword '{tok.decode('ascii')}'")


_VALUE_START = frozenset((_STRING, _INTEGER, _FLOAT, _KEYWORD))


def _parse(tokens: list[tuple[int, bytes]]) -> Any:
    """Parse one balanced token sequence into a value (iterative: depth <= 1024).

    Mirrors QEMU's recursive descent so that the *first* error raised is the one
    QEMU would report.
    """
    n = len(tokens)
    p = 0
    # Frames: [container, key_or_None, expecting_key] for dicts; [list] for lists.
    stack: list[list[Any]] = []
    while True:
        # ---- parse_value() at p
        if p >= n:
            raise _ParseError("premature EOI")
        kind, tok = tokens[p]
        if kind == _LCURLY or kind == _LSQUARE:
            p += 1
            if p >= n:
                raise _ParseError("premature EOI")
            closer = _RCURLY if kind == _LCURLY else _RSQUARE
            if tokens[p][0] != closer:
                stack.append([{}, None, True] if kind == _LCURLY else [[]])
                continue
            p += 1
            value: Any = {} if kind == _LCURLY else []
        elif kind in _VALUE_START:
            value = _literal(kind, tok)
            p += 1
        else:
            raise _ParseError("expecting value")
        # ---- hand the finished value to the enclosing containers
        while True:
            if not stack:
                return value
            frame = stack[-1]
            if len(frame) == 1:  # list element
                frame[0].append(value)
                closer, what = _RSQUARE, "list"
            elif frame[2]:  # got a key
                if not isinstance(value, str):
                    raise _ParseError("key is not a string in object")
                if p >= n:
                    raise _ParseError("premature EOI")
                if tokens[p][0] != _COLON:
                    raise _ParseError("missing : in object pair")
                p += 1
                frame[1] = value
                frame[2] = False
                break
            else:  # got a member value
                container = frame[0]
                if frame[1] in container:
                    raise _ParseError("duplicate key")
                container[frame[1]] = value
                closer, what = _RCURLY, "dict"
            # After a list element or a member: a closer ends the container, a comma continues it.
            if p >= n:
                raise _ParseError("premature EOI")
            sep = tokens[p][0]
            p += 1
            if sep == closer:
                value = stack.pop()[0]
                continue
            if sep != _COMMA:
                raise _ParseError(f"expected separator in {what}")
            if closer == _RCURLY:
                frame[2] = True
            break


class JsonStreamParser:
    """Incremental QMP input parser (QEMU's JSON lexer + streamer + parser).

    Feed it bytes as they arrive; each call returns the values completed by that
    chunk, in order, as ``(value, None)``, or ``(None, message)`` for a parse
    error (``message`` is QEMU's full text, e.g. ``"JSON parse error, stray '@'"``).
    A JSON ``null`` value is ``(None, None)``.

    Scalars at top level need a following character to complete (QEMU's lexer
    uses lookahead): ``42`` alone is pending until more input arrives.

    Work is linear in the input: strings, digit runs and whitespace are scanned
    with regular expressions, and a pending token is never rescanned.
    """

    def __init__(
        self,
        *,
        max_token_size: int = MAX_TOKEN_SIZE,
        max_token_count: int = MAX_TOKEN_COUNT,
        max_nesting: int = MAX_NESTING,
    ) -> None:
        self.max_token_size = max_token_size
        self.max_token_count = max_token_count
        self.max_nesting = max_nesting
        self._out: list[tuple[Any, str | None]] = []
        self._reset_lexer()
        self._reset_streamer()

    # -- state -------------------------------------------------------------

    def _reset_lexer(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # next byte to examine
        self._state = _START
        self._tok_start = 0  # start of the pending token (string/number/keyword)
        self._quote = 0
        self._num_state = _N_SIGN

    def _reset_streamer(self) -> None:
        self._tokens: list[tuple[int, bytes]] = []
        self._tok_bytes = 0
        self._braces = 0
        self._brackets = 0

    def reset(self) -> None:
        """Drop all buffered input and partial messages (e.g. on reconnect)."""
        self._reset_lexer()
        self._reset_streamer()

    @property
    def pending(self) -> bool:
        """True when a partial message or token is buffered."""
        return bool(self._tokens) or self._state in _PENDING_STATES

    # -- public API ----------------------------------------------------------

    def feed(self, data: bytes) -> list[tuple[Any, str | None]]:
        """Consume ``data``; return the values (or errors) it completed. Never raises."""
        out: list[tuple[Any, str | None]] = []
        self._out = out
        try:
            self._buf += data
            self._lex()
        except Exception as exc:  # defensive: a parser bug must not kill the monitor
            self.reset()
            out.append((None, f"JSON parse error, internal error: {type(exc).__name__}"))
        return out

    # -- streamer (json-streamer.c) ------------------------------------------

    def _emit_error(self, message: str) -> None:
        self._reset_streamer()
        self._out.append((None, message))

    def _token(self, kind: int, text: bytes) -> None:
        if kind == _LCURLY:
            self._braces += 1
        elif kind == _RCURLY:
            self._braces -= 1
        elif kind == _LSQUARE:
            self._brackets += 1
        elif kind == _RSQUARE:
            self._brackets -= 1
        if self._tok_bytes + len(text) + 1 > self.max_token_size:
            return self._emit_error("JSON token size limit exceeded")
        if len(self._tokens) + 1 > self.max_token_count:
            return self._emit_error("JSON token count limit exceeded")
        if self._braces + self._brackets > self.max_nesting:
            return self._emit_error("JSON nesting depth limit exceeded")
        self._tokens.append((kind, text))
        self._tok_bytes += len(text)
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 and self._brackets >= 0:
            return None
        tokens = self._tokens
        self._reset_streamer()
        try:
            self._out.append((_parse(tokens), None))
        except _ParseError as exc:
            # parse_error() formats into a 1024-byte buffer.
            self._out.append((None, "JSON parse error, " + str(exc)[:1023]))
        return None

    def _lex_error(self, text: bytes) -> None:
        self._emit_error(f"JSON parse error, stray '{_lossy_text(text)}'")

    # -- lexer (json-lexer.c) --------------------------------------------------

    def _lex(self) -> None:
        """Lex the buffered input from ``self._pos``, handing complete tokens to the streamer.

        The lexer is a small state machine: the start state (between tokens), recovery
        (after a lexical error) and one state per multi-byte token in progress.
        """
        buf = self._buf
        n = len(buf)
        i = self._pos
        state = self._state
        while True:
            # Not an elif chain: each step may hand over to the next without looping.
            if state == _START:
                i, state = self._lex_start(buf, i, n)
                if state == _START:
                    break  # input exhausted between tokens
            if state == _RECOVERY:
                i = _RECOVERY_RE.match(buf, i).end()  # type: ignore[union-attr]
                if i >= n:
                    break
                state = _START
                continue
            i, state = self._lex_pending(buf, i, n, state)
            if state > _RECOVERY:  # still a pending-token state
                break  # the token needs more input; resume scanning at i
        # Compact: keep only the pending token's bytes.
        if state == _START or state == _RECOVERY:
            buf.clear()
            self._pos = 0
        else:
            start = self._tok_start
            if start:
                del buf[:start]
            self._tok_start = 0
            self._pos = i - start
        self._state = state

    def _lex_start(self, buf: bytearray, i: int, n: int) -> tuple[int, int]:
        """Lex whitespace, structural tokens, whole strings and short scalars from ``i``.

        Return ``(i, _START)`` at the end of input; otherwise the index after the first
        byte of a multi-byte token (or of a stray byte) and the state that follows it.
        """
        while True:
            i = _WS_RE.match(buf, i).end()  # type: ignore[union-attr]
            if i >= n:
                return i, _START
            c = buf[i]
            if c in _STRUCTURAL:
                self._token(c, bytes((c,)))
                i += 1
                continue
            if c == _DQUOTE or c == _SQUOTE:
                m = _FAST_STRING_RE.match(buf, i)
                # Too long a string takes the slow path, which reports the size limit.
                if m is not None and m.end() - i <= self.max_token_size:
                    self._token(_STRING, bytes(buf[i:m.end()]))
                    i = m.end()
                    continue
                self._tok_start = i
                self._quote = c
                return i + 1, _IN_STRING
            m = _FAST_SCALAR_RE.match(buf, i)
            if m is None:
                return i + 1, self._begin_scalar(c, i)
            end = m.end(1)
            tok = bytes(buf[i:end])
            if c >= _LOWER_A:
                kind = _KEYWORD
            elif b"." in tok or b"e" in tok or b"E" in tok:
                kind = _FLOAT
            else:
                kind = _INTEGER
            self._token(kind, tok)
            i = end

    def _begin_scalar(self, c: int, i: int) -> int:
        """Start the number or keyword whose first byte ``c`` is at ``i``; return the next state.

        Any other byte is a lexical error, and the lexer goes into recovery.
        """
        self._tok_start = i
        if _DIGIT_0 <= c <= _DIGIT_9 or c == _MINUS:
            self._num_state = _N_SIGN if c == _MINUS else (_N_ZERO if c == _DIGIT_0 else _N_DIGITS)
            return _IN_NUMBER
        if _LOWER_A <= c <= _LOWER_Z:
            return _IN_KEYWORD
        self._lex_error(bytes((c,)))
        return _RECOVERY

    def _lex_pending(self, buf: bytearray, i: int, n: int, state: int) -> tuple[int, int]:
        """Continue the token pending from ``self._tok_start``, scanning from ``i``.

        Return the resume index and the next state: ``state`` itself while the token
        needs more input, ``_START`` after a token, ``_RECOVERY`` after a broken one.
        """
        start = self._tok_start
        # event: index of the byte that completes (kind > 0, consumed or not) or
        # breaks (_BAD_TOKEN) the token; n when more input is needed.
        if state == _IN_STRING:
            quote = self._quote
            i = (_DQ_BODY_RE if quote == _DQUOTE else _SQ_BODY_RE).match(buf, i).end()  # type: ignore[union-attr]
            event, kind, consumed = n, _NEED_MORE, False
            if i < n:
                c = buf[i]
                if c == quote:
                    event, kind, consumed = i, _STRING, True
                elif c != _BACKSLASH:
                    event, kind = i, _BAD_TOKEN
                elif i + 1 < n:  # backslash followed by a byte that can't follow it
                    event, kind = i + 1, _BAD_TOKEN
        elif state == _IN_KEYWORD:
            i = _KEYWORD_RE.match(buf, i).end()  # type: ignore[union-attr]
            event, kind, consumed = (i, _KEYWORD, False) if i < n else (n, _NEED_MORE, False)
        else:
            event, kind, consumed, i = self._scan_number(buf, i, n)
        limit = self.max_token_size
        if event > start + limit:
            # QEMU flushes a token that grew past the limit and restarts lexing
            # right after it, in the start state.
            self._emit_error("JSON token size limit exceeded")
            return start + limit + 1, _START
        if event >= n:
            return i, state
        if kind == _BAD_TOKEN:
            self._lex_error(bytes(buf[start:event + 1]))
            return event + 1, _RECOVERY
        end = event + 1 if consumed else event
        self._token(kind, bytes(buf[start:end]))
        return end, _START

    def _scan_number(self, buf: bytearray, i: int, n: int) -> tuple[int, int, bool, int]:
        """Advance the number DFA; return (event, kind, consumed, resume_index).

        ``event`` is the index of the byte that completes or breaks the token (n when
        more input is needed); ``consumed`` says whether that byte belongs to the token.
        """
        st = self._num_state
        while i < n:
            c = buf[i]
            is_digit = _DIGIT_0 <= c <= _DIGIT_9
            if st == _N_DIGITS or st == _N_MANT_DIGITS or st == _N_EXP_DIGITS:
                if is_digit:
                    i = _DIGITS_RE.match(buf, i).end()  # type: ignore[union-attr]
                    continue
                if st != _N_EXP_DIGITS and (c == _LOWER_E or c == _UPPER_E):
                    st = _N_EXP_E
                elif st == _N_DIGITS and c == _DOT:
                    st = _N_MANT
                else:
                    self._num_state = st
                    return i, _N_TERMINAL[st], False, i
            elif st == _N_ZERO:
                if is_digit:
                    return i, _BAD_TOKEN, True, i
                if c != _DOT:
                    return i, _INTEGER, False, i
                st = _N_MANT
            elif st == _N_SIGN:
                if not is_digit:
                    return i, _BAD_TOKEN, True, i
                st = _N_ZERO if c == _DIGIT_0 else _N_DIGITS
            elif st == _N_MANT:
                if not is_digit:
                    return i, _BAD_TOKEN, True, i
                st = _N_MANT_DIGITS
            elif st == _N_EXP_E:
                if c == _PLUS or c == _MINUS:
                    st = _N_EXP_SIGN
                elif is_digit:
                    st = _N_EXP_DIGITS
                else:
                    return i, _BAD_TOKEN, True, i
            else:  # _N_EXP_SIGN
                if not is_digit:
                    return i, _BAD_TOKEN, True, i
                st = _N_EXP_DIGITS
            i += 1
        self._num_state = st
        return n, _NEED_MORE, False, i


# ---------------------------------------------------------------------------
# Serializer


@lru_cache(maxsize=8192)
def qdict_bucket(key: str) -> int:
    """Return the QDict hash bucket (0..511) of ``key`` (QEMU's ``tdb_hash() % 512``)."""
    data = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, c in enumerate(data):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % 512


def qdict_order(keys: list[str]) -> list[str]:
    """Order ``keys`` (given in insertion order) as QEMU iterates a QDict.

    Buckets ascend; within a bucket the most recently inserted key comes first.
    """
    if len(keys) <= 1:
        return list(keys)
    ranked = sorted((qdict_bucket(k), -i, k) for i, k in enumerate(keys))
    return [k for _, _, k in ranked]


def _ordered_items(d: dict[str, Any]) -> list[tuple[str, Any]]:
    items = list(d.items())
    for k, _ in items:
        if not isinstance(k, str):
            raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
    if len(items) <= 1:
        return items
    ranked = sorted((qdict_bucket(k), -i, i) for i, (k, _) in enumerate(items))
    return [items[i] for _, _, i in ranked]


# Characters QEMU's quoted_str() writes as a two-character escape.
_WRITER_ESCAPES = {ord(c): "\\" + esc for c, esc in zip('"\\\b\f\n\r\t', '"\\bfnrt')}


class _EscapeTable(dict[int, str]):
    """str.translate() table for QEMU's quoted_str(); filled lazily."""

    def __missing__(self, cp: int) -> str:
        if cp in _WRITER_ESCAPES:
            out = _WRITER_ESCAPES[cp]
        elif not _valid_codepoint(cp):
            out = "\\uFFFD"  # QEMU cannot hold it; its writer substitutes U+FFFD
        elif cp > 0xFFFF:
            v = cp - 0x10000
            # Not cached: at most one entry per BMP code point stays resident.
            return "\\u%04X\\u%04X" % (0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
        elif cp < 0x20 or cp >= 0x7F:
            out = "\\u%04X" % cp
        else:
            out = chr(cp)
        self[cp] = out
        return out


_ESCAPES = _EscapeTable()
# Negated class: compiling a class spanning up to U+10FFFF costs milliseconds.
_NEEDS_ESCAPE_RE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def _quote(s: str) -> str:
    if _NEEDS_ESCAPE_RE.search(s) is None:
        return '"' + s + '"'
    return '"' + s.translate(_ESCAPES) + '"'


_END = object()


def _newline(depth: int) -> str:
    return "\n" + " " * (4 * depth)


def dumps(obj: Any, pretty: bool = False) -> str:
    """Serialize ``obj`` exactly as QEMU's JSON writer would (ASCII only).

    Members use ``": "`` / ``", "``, objects follow QDict hash order, non-ASCII
    and DEL are ``\\uXXXX`` (upper-case hex, surrogate pairs above the BMP),
    floats are ``%.17g``. ``pretty`` gives QEMU's pretty layout (``-mon
    pretty=on``): a newline plus 4 spaces per level before each member and
    before each closing bracket. Accepts dict, list, tuple, str, int, float,
    bool, None; raises TypeError otherwise. Iterative, so deep nesting (e.g. an
    echoed id at QEMU's maximum depth) cannot overflow the Python stack.
    """
    parts: list[str] = []
    append = parts.append
    # Each frame: [iterator, is_dict]
    stack: list[list[Any]] = []
    value: Any = obj
    item: Any
    while True:
        if isinstance(value, str):
            append(_quote(value))
        elif value is None:
            append("null")
        elif value is True:
            append("true")
        elif value is False:
            append("false")
        elif isinstance(value, int):
            append("%d" % value)
        elif isinstance(value, float):
            append(format(value, ".17g"))
        elif isinstance(value, (dict, list, tuple)):
            is_dict = isinstance(value, dict)
            if not value:
                if pretty:
                    append(("{" if is_dict else "[") + _newline(len(stack)) + ("}" if is_dict else "]"))
                else:
                    append("{}" if is_dict else "[]")
            else:
                first = _newline(len(stack) + 1) if pretty else ""
                container: Any = value
                it: Any
                if is_dict:
                    it = iter(_ordered_items(container))
                    key, value = next(it)
                    append("{" + first + _quote(key) + ": ")
                else:
                    it = iter(container)
                    value = next(it)
                    append("[" + first)
                stack.append([it, is_dict])
                continue
        else:
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        # The value is complete: close finished containers, move to the next item.
        while stack:
            frame = stack[-1]
            item = next(frame[0], _END)
            if item is _END:
                stack.pop()
                closer = "}" if frame[1] else "]"
                append(_newline(len(stack)) + closer if pretty else closer)
                continue
            sep = "," + _newline(len(stack)) if pretty else ", "
            if frame[1]:
                key, value = item
                append(sep + _quote(key) + ": ")
            else:
                value = item
                append(sep)
            break
        else:
            return "".join(parts)
