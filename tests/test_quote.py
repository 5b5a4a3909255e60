"""``jax_iris.quote``: untrusted values in one-line messages, escaped, cut to a limit in
time independent of their size, containers described and never walked."""

from __future__ import annotations

import time

import numpy as np
import pytest

from jax_iris.quote import clean, clean_path, quote


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "'plain'"),
        ("it's \\", r"'it\'s \\'"),
        (
            "a\nb\x1b[0m\x7f\x9b\u202e\u2066\ufeff\U000e0001",
            r"'a\nb\x1b[0m\x7f\x9b\u202e\u2066\ufeff\U000e0001'",
        ),
        (b"\x00ab\n'", r"b'\x00ab\n\''"),
        (12, "12"),
        (-1.5, "-1.5"),
        (float("nan"), "nan"),
        (True, "True"),
        (None, "None"),
        (2**1000, "an integer of 1001 bits"),
        ([1, 2, 3], "a list of 3 items"),
        ((1,), "a tuple of 1 item"),
        ({}, "an empty dict"),
        (object(), "an object"),
        (np.float32(1), "a float32"),
    ],
)
def test_quote_renders(value, expected):
    assert quote(value) == expected


def test_quote_cuts_to_the_limit_in_time_independent_of_size():
    huge = "\x1b" * 50_000_000
    values = (huge, huge.encode(), "x" * 50_000_000)  # built before the clock starts
    start = time.monotonic()
    for value in values:
        out = quote(value, 60)
        assert len(out) <= 60 and out.endswith("...'") and out.isprintable()
    assert time.monotonic() - start < 0.5  # slicing first: microseconds, not a 50 MB scan
    assert quote("é" * 100, 20) == "'" + "é" * 15 + "...'"
    assert quote("\x00" * 10, 20) == r"'\x00\x00\x00...'"  # never half an escape


def test_quote_never_recurses():
    deep: list = []
    for _ in range(200_000):
        deep = [deep]
    assert quote(deep) == "a list of 1 item"
    cyclic: dict = {}
    cyclic["self"] = cyclic
    assert quote(cyclic) == "a dict of 1 item"


def test_clean_and_clean_path():
    assert clean("a\nb\\c'd") == "a\\nb\\c'd"  # messages keep their backslashes and quotes
    assert clean("x" * 500, 100) == "x" * 97 + "..."
    long = "/" + "a" * 300 + "/name\x1b.pkl"
    shown = clean_path(long, 100)
    assert len(shown) <= 100 and shown.startswith("/aaa") and shown.endswith(r"/name\x1b.pkl")
