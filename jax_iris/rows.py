"""Flower measurements typed or read by a user, checked row by row; imports no jax.

A row is four numbers in the order of the iris data (sepal length, sepal width,
petal length, petal width, in cm). A CSV may start with a header naming the columns
in any order: scikit-learn's ``sepal length (cm)`` or a plain ``sepal_length``,
``Sepal.Length`` (case, ``_``, ``.``, ``-`` and the ``(cm)`` unit are ignored).
Input is read to at most ``MAX_INPUT_BYTES`` and ``MAX_ROWS`` rows, so a huge file or
an endless stdin is refused instead of read. Every problem is one ``RowError`` line
naming the row and the column.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from jax_iris.data import NUM_FEATURES
from jax_iris.quote import clean_path, quote

FEATURES = ("sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)")
SPECIES = ("setosa", "versicolor", "virginica")  # ``load_iris().target_names``, in label order
MAX_ROWS = 100_000
MAX_INPUT_BYTES = 8 * 2**20  # 8 MiB: ~300,000 typical rows, more than MAX_ROWS
FLOAT32_MAX = float(np.finfo(np.float32).max)
STDIN = "-"


class RowError(ValueError):
    """Input that is not rows of four finite numbers; the message is one line."""


def _normal(name: str) -> str:
    """``'Sepal.Length (cm)'`` -> ``'sepal length'``: how header names are compared."""
    name = re.sub(r"\(\s*cm\s*\)", " ", name.strip().lower())
    return " ".join(re.split(r"[\s._-]+", name)).strip()


_COLUMN_OF = {_normal(name): i for i, name in enumerate(FEATURES)}
_SPLIT_ROW = re.compile(r"\s*,\s*|\s+")


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RowError(f"{where}: {quote(text.strip(), 40)} is not a number") from None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise RowError(f"{where}: {quote(text.strip(), 40)} is not a finite number float32 holds")
    return value


def _check_count(values: Sequence[str], where: str) -> None:
    if len(values) != NUM_FEATURES:
        raise RowError(
            f"{where} has {len(values):,} value{'s' if len(values) != 1 else ''},"
            f" expected {NUM_FEATURES} ({', '.join(FEATURES)})"
        )


def parse_row(text: str, where: str) -> list[float]:
    """``'5.1,3.5,1.4,0.2'`` (commas and/or spaces) -> four floats; ``where`` names it."""
    values = [v for v in _SPLIT_ROW.split(text.strip()) if v] if text.strip() else []
    _check_count(values, where)
    return [_number(v, f"{where}, column {i + 1} ({FEATURES[i]})") for i, v in enumerate(values)]


def from_arguments(rows: Sequence[str]) -> np.ndarray:
    """``--row`` values -> float64 [rows, 4]."""
    if len(rows) > MAX_ROWS:
        raise RowError(f"{len(rows):,} --row values, more than the {MAX_ROWS:,} rows allowed")
    table = [parse_row(text, f"--row {n} ({quote(text, 40)})") for n, text in enumerate(rows, 1)]
    return np.asarray(table, np.float64).reshape(-1, NUM_FEATURES)


def read_bounded(path: str, stdin: BinaryIO | None = None) -> bytes:
    """At most ``MAX_INPUT_BYTES`` of a file, or of stdin for ``-``; more is refused unread."""
    shown = "stdin" if path == STDIN else clean_path(path)
    limit = f"more than the {MAX_INPUT_BYTES:,} bytes --input reads; split it into smaller files"
    try:
        if path == STDIN:
            stream = stdin if stdin is not None else sys.stdin.buffer
            data = stream.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, "rb") as file:
                if os.fstat(file.fileno()).st_size > MAX_INPUT_BYTES:
                    raise RowError(f"{shown} holds {limit}")
                data = file.read(MAX_INPUT_BYTES + 1)
    except OSError as err:
        raise RowError(f"cannot read {shown}: {err.strerror or err}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise RowError(f"{shown} holds {limit}")
    return data


def from_csv(data: bytes, name: str) -> np.ndarray:
    """CSV bytes -> float64 [rows, 4]: a header (any column order) or none, blank lines skipped.

    The first line is a header when none of its values is a number.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RowError(f"{name} is not UTF-8 text (byte {err.start + 1:,})") from None
    order: list[int] | None = None
    table: list[list[float]] = []
    line_number = 0
    try:
        for line_number, values in enumerate(csv.reader(text.splitlines()), 1):
            if not any(v.strip() for v in values):
                continue
            if order is None and not table and not any(map(_is_number, values)):
                order = _header_order(values, f"{name} line {line_number}")
                continue
            if len(table) == MAX_ROWS:
                raise RowError(f"{name} holds more than the {MAX_ROWS:,} rows allowed; split it")
            where = f"{name} row {len(table) + 1} (line {line_number})"
            _check_count(values, where)
            row = [0.0] * NUM_FEATURES
            for column, value in enumerate(values):
                feature = column if order is None else order[column]
                label = f"{where}, column {column + 1} ({FEATURES[feature]})"
                row[feature] = _number(value, label)
            table.append(row)
    except csv.Error as err:
        raise RowError(f"{name} line {line_number + 1}: not CSV ({err})") from None
    if not table:
        what = "a header and no rows" if order is not None else "no rows"
        raise RowError(f"{name} holds {what}; expected lines of {NUM_FEATURES} numbers")
    return np.asarray(table, np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header_order(names: Sequence[str], where: str) -> list[int]:
    """Feature index of each header column; unknown, repeated or missing columns refused."""
    order: list[int] = []
    for column, name in enumerate(names, 1):
        feature = _COLUMN_OF.get(_normal(name))
        if feature is None:
            raise RowError(
                f"{where}, column {column}: unknown column {quote(name, 40)};"
                f" expected {', '.join(FEATURES)} (in any order)"
            )
        if feature in order:
            raise RowError(f"{where}, column {column}: {FEATURES[feature]} appears twice")
        order.append(feature)
    missing = [FEATURES[i] for i in range(NUM_FEATURES) if i not in order]
    if missing:
        raise RowError(f"{where}: the header has no {', '.join(missing)} column")
    return order
