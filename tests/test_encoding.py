"""The reversible bytes<->text rule (docs/events.md, "Strings")."""

import os
import random

from vigil.encoding import display, escape, unescape


def test_round_trip_random_bytes():
    rng = random.Random(7)
    alphabet = [0x5C, 0x78, 0x66, 0x30, 0xC3, 0xA9, 0xFF, 0x41, 0xE2, 0x82, 0xAC, 0x00, 0x0A, 0xED]
    for _ in range(20_000):
        b = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        assert unescape(escape(b)) == b, b
    for _ in range(200):
        b = os.urandom(64)
        assert unescape(escape(b)) == b


def test_known_forms():
    assert escape(b"plain") == "plain"
    assert escape("café".encode()) == "café"
    assert escape(b"a\\b") == "a\\\\b"
    assert escape(b"\xff") == "\\xff"
    assert escape(b"\\xff") == "\\\\xff"  # a literal backslash-x is not a byte escape
    assert escape(b"\xed\xa0\x80") == "\\xed\\xa0\\x80"  # encoded surrogates are invalid UTF-8


def test_display_has_no_control_characters():
    for b in (b"a\nb", b"\x1b[2J", b"\r", "\u2028".encode(), b"\xc2\x9b", bytes(range(32))):
        shown = display(b)
        assert shown.isprintable(), repr(shown)
    assert display(b"tab\there") == "tab\\there"
