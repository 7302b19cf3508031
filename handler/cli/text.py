"""Text for terminals: display widths, clipping to a width, a progress bar, the terminal's real size.

Everything a view draws goes through ``clip`` so that no line ever reaches the last column: a line that
fills it leaves the cursor in the "pending wrap" state, and one that passes it wraps; either way the
view's count of the lines it drew (what it moves the cursor up by on the next redraw) would be wrong.
"""

from __future__ import annotations

import os
import unicodedata


def char_width(ch: str) -> int:
    """Columns one character takes: 0 for combining marks and controls, 2 for wide (CJK, emoji)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Cc", "Cf", "Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width_of(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(char_width(ch) for ch in text)


def printable(text: str) -> str:
    """``text`` with control characters (which would move the cursor) shown as ``?``."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def clip(text: str, width: int) -> str:
    """At most ``width`` columns of ``text`` (control characters replaced), with ``…`` where cut."""
    text = printable(text)
    if width_of(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for ch in text:
        w = char_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def rows_of(text: str, columns: int) -> int:
    """Terminal rows a line of ``text`` takes at ``columns`` (a terminal that reflows wraps it)."""
    return max(1, -(-width_of(text) // max(1, columns)))


def bar(fraction: float, width: int) -> str:
    """``[████▌░░░░]`` of ``width`` columns (brackets included), eighths for the partial cell."""
    inner = max(1, width - 2)
    fraction = min(1.0, max(0.0, fraction))
    eighths = int(fraction * inner * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    return "[" + ("█" * full + partial).ljust(inner, "░")[:inner] + "]"


def terminal_size(fd: int | None) -> tuple[int, int]:
    """(columns, rows) of the terminal on ``fd``: the real one, asked each time (it may be resized).

    ``shutil.get_terminal_size()`` looks at fd 1, which is a pipe while the live view owns it, and then
    says 80 whatever the terminal; so the view asks the terminal's own (saved) descriptor. ``COLUMNS`` /
    ``LINES`` are the fallback, then 80 x 24."""
    if fd is not None:
        try:
            size = os.get_terminal_size(fd)
            if size.columns > 0 and size.lines > 0:
                return size.columns, size.lines
        except OSError:
            pass
    try:
        return int(os.environ["COLUMNS"]), int(os.environ.get("LINES", "24"))
    except (KeyError, ValueError):
        return 80, 24


def fold(line: str, width: int) -> list[str]:
    """A line of prose in lines of at most ``width`` columns: broken between its `` · `` parts first, then
    between words; continuation lines indented by two spaces."""
    out: list[str] = []
    for part in wrap_at(line.split(" · "), 10 ** 6 if width_of(line) <= width else width, clipped=False):
        if width_of(part) <= width:
            out.append(part)
            continue
        words = part.split(" ")
        current = ""
        for word in words:
            candidate = f"{current} {word}" if current else word
            if width_of(candidate) <= width or not current.strip():
                current = candidate
            else:
                out.append(current)
                current = "  " + word
        out.append(current)
    return [clip(x, width) for x in out]


def wrap_at(parts: list[str], width: int, sep: str = " · ", indent: str = "  ", clipped: bool = True
            ) -> list[str]:
    """Join ``parts`` with ``sep``, breaking lines between parts to stay within ``width``; a part longer
    than a whole line is clipped."""
    lines: list[str] = []
    line = ""
    for part in parts:
        candidate = f"{line}{sep}{part}" if line else part
        if width_of(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = indent + part
    if line:
        lines.append(line)
    return [clip(x, width) for x in lines] if clipped else lines


def pad(text: str, width: int) -> str:
    """``text`` clipped to ``width`` columns, then padded with spaces to exactly ``width`` columns."""
    text = clip(text, width)
    return text + " " * (width - width_of(text))
