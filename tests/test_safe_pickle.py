"""safe_pickle on its own: what it loads, each bound at its edge, legacy imports, no globals.

Hostile checkpoint files (crafted, special, fuzzed) go through ``checkpoint.load`` in
test_checkpoint_safety.py; these call the module directly, in-process.
"""

import os
import pickle

import pytest

from jax_iris.io import safe_pickle
from jax_iris.io.safe_pickle import LegacyRefused, Refused

BUILTINS = {
    "ints": [0, -1, 2**31, 2**70],
    "floats": (0.5, -0.0, float("inf")),
    "text": "été \U0001f600",
    "bytes": b"\0\xff" * 100,
    "flags": [True, False, None],
    "nested": {"a": [{"b": ()}]},
}


def _stream(*parts: bytes) -> bytes:
    return b"\x80\x04" + b"".join(parts) + b"."


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_a_pickle_of_builtins_loads_as_pickle_loads_it(protocol):
    data = pickle.dumps(BUILTINS, protocol=protocol)
    assert safe_pickle.loads(data) == pickle.loads(data) == BUILTINS


def test_nesting_is_allowed_to_the_bound_and_refused_past_it():
    deepest = pickle.dumps(_nested(safe_pickle.MAX_NESTING), protocol=4)
    assert safe_pickle.loads(deepest) == _nested(safe_pickle.MAX_NESTING)
    with pytest.raises(Refused, match="nests deeper than 32 levels"):
        safe_pickle.check(pickle.dumps(_nested(safe_pickle.MAX_NESTING + 1), protocol=4))


def test_opcodes_are_counted_to_the_bound():
    # PROTO, n times NONE POP, NONE, STOP: 2n + 3 opcodes
    safe_pickle.check(_stream(b"N0" * 49_998 + b"N"))  # 99,999
    with pytest.raises(Refused, match="more than 100,000 pickle opcodes"):
        safe_pickle.check(_stream(b"N0" * 49_999 + b"N"))  # 100,001


def test_texts_are_bounded_one_by_one_before_decoding_and_in_all():
    at_bound = "a" * safe_pickle.MAX_TEXT
    assert safe_pickle.loads(pickle.dumps(at_bound, protocol=4)) == at_bound
    with pytest.raises(Refused, match="a text of 65,537 bytes, over the 65,536 allowed"):
        safe_pickle.check(pickle.dumps(at_bound + "a", protocol=4))
    many = [str(i) + "a" * 60_000 for i in range(18)]  # each allowed, 1,080,000 in all
    with pytest.raises(Refused, match="more than 1,048,576 characters of text"):
        safe_pickle.check(pickle.dumps(many, protocol=4))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_stream(b"N\x94h\x01"), "corrupt: memo index 1 was never written"),
        (_stream(b"Nq\x05"), "corrupt: memo index 5 skips unwritten entries"),
        (_stream(b"N\x94Nq\x00"), "corrupt: memo index 0 is not the next one"),
        (_stream(b"]\x94]\x94a0h\x01]a0N"), "changes a container after sharing it"),
        (_stream(b"NN"), "corrupt: the pickle does not end with one object"),
        (_stream(b"N") + b"\0\0", "corrupt: 2 bytes follow the end of the pickle"),
        (_stream(b"\x8f"), "refused: it uses pickle opcode EMPTY_SET, which this format never"),
        (_stream(b"cos\nsystem\n"), "refused: it asks to import os.system, which this format"),
        (_stream(b"NNR"), "asks to call or build objects with pickle opcode REDUCE"),
    ],
)
def test_check_refuses_with_one_line(data, message):
    with pytest.raises(Refused) as info:
        safe_pickle.check(data)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not isinstance(info.value, LegacyRefused)


def test_what_names_the_format_in_refusals():
    with pytest.raises(Refused, match="uses pickle opcode EMPTY_SET, which a zoo file never"):
        safe_pickle.check(_stream(b"\x8f"), what="a zoo file")


def test_legacy_imports_are_followed_to_the_end_then_refused_as_legacy():
    old = pickle.dumps({"kept": os.stat_result(range(10))}, protocol=4)
    with pytest.raises(LegacyRefused, match=r"import os\.stat_result, which this format"):
        safe_pickle.check(old, legacy=frozenset({"os"}))
    with pytest.raises(Refused, match=r"import os\.stat_result") as info:
        safe_pickle.check(old)  # os not legacy: refused at the import
    assert not isinstance(info.value, LegacyRefused)
    beside = old[:-1] + b"0" + pickle.dumps(print, protocol=4)[2:]  # builtins.print after it
    with pytest.raises(Refused, match=r"import builtins\.print") as info:
        safe_pickle.check(beside, legacy=frozenset({"os"}))
    assert not isinstance(info.value, LegacyRefused)


def test_the_unpickler_resolves_no_global_even_unchecked(monkeypatch):
    monkeypatch.setattr(safe_pickle, "check", lambda data, **kwargs: None)
    with pytest.raises(Refused, match=r"refused: it asks to import (posix|os)\.system"):
        safe_pickle.loads(pickle.dumps(os.system))


def test_a_checked_stream_the_unpickler_rejects_is_refused():
    unhashable_key = _stream(b"}]", b"Ns")  # {[]: None}
    with pytest.raises(Refused, match=r"truncated, corrupt or not a pickle \(TypeError: "):
        safe_pickle.loads(unhashable_key)
