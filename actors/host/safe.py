"""Describing an exception without trusting it: reporting a failure must not be able to fail.

An exception raised by a step is user code: its ``__str__`` may raise, its ``__notes__`` may be anything, its
class may lie about its name. Each helper here returns its best description and falls back, step by step, to
text it builds itself (the type's name and a placeholder), so that whoever reports a step's failure (the
worker's actor host, the supervisor) always has something to report. They catch ``BaseException``: a
``__str__`` raising ``SystemExit`` must not end the process that merely wanted to print it.
"""

from __future__ import annotations

import traceback


def type_name(exc: object) -> str:
    """``type(exc).__qualname__``, or a placeholder if even that cannot be read."""
    try:
        name = type(exc).__qualname__
        if type(name) is str:
            return name
    except BaseException:  # noqa: BLE001 -- a metaclass may define __qualname__ as it likes
        pass
    return "<exception of unknown type>"


def safe_text(exc: object) -> str:
    """``str(exc)``, or ``"<TypeName: str() failed>"`` when it raises or returns something odd."""
    try:
        text = str(exc)
        if type(text) is str:
            return text
    except BaseException:  # noqa: BLE001 -- see the module docstring
        pass
    return f"<{type_name(exc)}: str() failed>"


def safe_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` (as ``traceback.format_exception``), or as much of it as can be
    formatted: the frames and a safe one-line description, or at least that line."""
    try:
        text = "".join(traceback.format_exception(exc))
        if type(text) is str:
            return text
    except BaseException:  # noqa: BLE001 -- see the module docstring
        pass
    line = f"{type_name(exc)}: {safe_text(exc)}\n"
    try:
        return "Traceback (most recent call last):\n" + "".join(
            traceback.format_tb(exc.__traceback__)) + line
    except BaseException:  # noqa: BLE001 -- see the module docstring
        return line


def add_note_safely(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; when the exception's ``__notes__`` is not a list (add_note refuses it), the
    note replaces it on the instance; when even that fails, the note is dropped."""
    try:
        exc.add_note(note)
        return
    except BaseException:  # noqa: BLE001 -- see the module docstring
        pass
    try:
        exc.__notes__ = [note]
    except BaseException:  # noqa: BLE001 -- see the module docstring
        pass


def release_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s tracebacks (and its causes' and
    contexts'): a step that failed for want of memory still holds what it allocated in its frames, and
    describing its failure needs a little memory back. The tracebacks keep their file names and line
    numbers, so they still format; frames still executing are left alone."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        try:
            traceback.clear_frames(item.__traceback__)
            todo.extend((item.__cause__, item.__context__))
        except BaseException:  # noqa: BLE001 -- see the module docstring
            pass
