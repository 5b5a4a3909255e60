"""Helpers for tests that run a command function in-process as its script would."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def call(
    command: Callable[[list[str]], int], argv: Sequence[object], capsys
) -> tuple[int, str, str]:
    """Run ``command(argv)``; argparse's exits become the exit code. Returns (code, out, err)."""
    try:
        code = command([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    """stderr holds exactly one line, no traceback, mentioning every needle."""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
