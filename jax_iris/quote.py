"""Quote untrusted values in one-line messages: escaped, cut short, never recursive.

A value read from a file may hold newlines, terminal escape sequences, bidi
overrides, megabytes of text or containers nested thousands deep. ``quote`` turns
any of them into a short printable string in time proportional to ``limit``:
text is sliced before it is escaped, containers are described, never walked.
"""

from __future__ import annotations

ELLIPSIS = "..."
_MIN_LIMIT = 16  # room for a description such as "an integer of 4096 bits"
_MAX_INT_BITS = 128  # larger integers are described; their digits could be long to print
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_char(char: str) -> str:
    """``char`` itself if printable, else a backslash escape (control, format, separator)."""
    if char.isprintable():
        return char
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean(text: str, limit: int = 200) -> str:
    """``text`` with every non-printable character escaped, cut to ``limit`` characters.

    For text that is already a message or a path: backslashes and quotes are kept.
    """
    return _escape(text, max(limit, _MIN_LIMIT), quotes=False)


def clean_path(path: object, limit: int = 200) -> str:
    """A file path for a one-line message; a long one keeps its start and its end."""
    text = str(path)
    limit = max(limit, _MIN_LIMIT)
    if len(text) <= limit:
        return clean(text, limit)
    half = (limit - len(ELLIPSIS)) // 2
    head = clean(text[:half], half)
    tail = "".join(escape_char(c) for c in text[-half:])[-half:]
    return head + ELLIPSIS + tail


def quote(value: object, limit: int = 60) -> str:
    """A short, printable rendering of ``value`` for a message, at most ``limit`` characters.

    Text and bytes are quoted as ``repr`` would, escaped and cut with ``...``;
    numbers are printed (huge integers described); anything else is described by
    its type ("a list of 3 items"), never by calling its ``repr``.
    """
    limit = max(limit, _MIN_LIMIT)
    if isinstance(value, str):
        return _escape(value, limit, quotes=True)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _escape_bytes(bytes(memoryview(value)[:limit]), len(value), limit)
    if value is None or isinstance(value, bool):
        return "None" if value is None else str(bool(value))
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            return f"an integer of {value.bit_length()} bits"
        return _cut(int.__repr__(value), limit)
    if isinstance(value, float):  # the base repr, as for int: a subclass's own is not trusted
        return _cut(float.__repr__(value), limit)
    if isinstance(value, complex):
        return _cut(complex.__repr__(value), limit)
    return _describe(value)


def _describe(value: object) -> str:
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        size = len(value)
        if size == 0:
            return f"an empty {kind}"
        return f"{article} {kind} of {size} item{'s' if size != 1 else ''}"
    return f"{article} {kind}"[:80]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _escape(text: str, limit: int, *, quotes: bool) -> str:
    """Escape at most ``limit`` characters of ``text``; the result has at most ``limit``."""
    room = limit - (2 if quotes else 0)
    out: list[str] = []
    used = 0
    cut = False
    for char in text[:room]:
        piece = "\\" + char if quotes and char in "\\'" else escape_char(char)
        if used + len(piece) > room:
            cut = True
            break
        out.append(piece)
        used += len(piece)
    else:
        cut = len(text) > room
    if cut:
        while out and used > room - len(ELLIPSIS):
            used -= len(out.pop())
        out.append(ELLIPSIS)
    body = "".join(out)
    return f"'{body}'" if quotes else body


def _escape_bytes(head: bytes, size: int, limit: int) -> str:
    room = limit - 3  # b'...'
    out: list[str] = []
    used = 0
    for byte in head:
        char = chr(byte)
        if char in "\\'":
            piece = "\\" + char
        elif 0x20 <= byte < 0x7F:
            piece = char
        else:
            piece = _NAMED_ESCAPES.get(char, f"\\x{byte:02x}")
        if used + len(piece) > room:
            break
        out.append(piece)
        used += len(piece)
    else:
        if size <= room:
            return "b'" + "".join(out) + "'"
    while out and used > room - len(ELLIPSIS):
        used -= len(out.pop())
    return "b'" + "".join(out) + ELLIPSIS + "'"
