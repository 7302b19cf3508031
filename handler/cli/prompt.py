"""Human in the loop: a run's ``InputRequiredEvent`` becomes a question, the answer a ``HumanResponseEvent``.

    step:  await ctx.wait_for_event(HumanResponseEvent, waiter_event=InputRequiredEvent(prefix="Name? "))
    CLI:   shows "Name? ", reads a line from stdin, handler.send_event_sync(HumanResponseEvent(response=line))

Modes: ``text`` reads a line of plain text (a terminal, or a pipe), ``json`` (``--json``) reads one JSON value
per line (an object gives the response event's fields, ``{"response": "ada"}``; anything else becomes
``response``), ``off`` (``--no-input``, or stdin closed) asks nothing: the step waits for its timeout.
Questions are asked one at a time, in the order the run published them.

stdin is read with ``select`` and ``os.read`` (never a blocking ``readline``): the watch loop keeps taking
events and acting on Ctrl-C while a question is up, and a run that ends meanwhile ends the question.
"""

from __future__ import annotations

import collections
import json
import os
import select
import time
from typing import Any, Literal

from actors import Event, HumanResponseEvent, InputRequiredEvent, WorkflowError

from .stats import Question
from .views import View

Mode = Literal["text", "json", "off"]


def question(ev: InputRequiredEvent) -> str:
    """The prompt for ``ev``: its ``prefix`` (LlamaIndex's field), else its other fields, else a default."""
    prefix = ev.get("prefix")
    if isinstance(prefix, str) and prefix:
        return prefix if prefix.endswith((" ", "\n")) else prefix + " "
    fields = {k: v for k, v in {**ev.model_dump(), **ev.to_dict()}.items() if v is not None and k != "_data"}
    return (f"{type(ev).__name__} {fields}: " if fields else "input required: ").replace("\n", " ")


def response(line: str, mode: Mode) -> Event:
    """The event to send for one line of input (``ValueError`` for a line that is not JSON in json mode)."""
    fields: dict[str, Any] = {"response": line}
    if mode == "json":
        value = json.loads(line)
        fields = value if isinstance(value, dict) else {"response": value}
    return HumanResponseEvent(**fields)


class Prompter:
    def __init__(self, mode: Mode, view: View, handler: Any, fd: int = 0) -> None:
        self.mode, self.view, self.handler, self.fd = mode, view, handler, fd
        self.waiting: collections.deque[InputRequiredEvent] = collections.deque()
        self.asking: str | None = None
        self.buffer = b""
        self.answers = 0
        try:
            self.echoed = os.isatty(fd)  # a terminal shows what is typed; a pipe does not
        except OSError:
            self.echoed = False

    @property
    def busy(self) -> bool:
        """Whether a question is up (the watch loop then waits on stdin instead of on the stream)."""
        return self.asking is not None

    def request(self, ev: InputRequiredEvent) -> None:
        if self.mode == "off":
            return
        self.waiting.append(ev)
        if self.asking is None:
            self._next()

    def _next(self) -> None:
        if self.waiting and self.mode != "off":
            self.asking = question(self.waiting.popleft())
            self.view.stats.questions.append(Question(self.asking, time.monotonic()))
            self.view.prompt(self.asking)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a line of input; answer the question with it."""
        if self.asking is None:
            return
        line = self._line()
        if line is None:
            try:
                ready, _, _ = select.select([self.fd], [], [], timeout)
            except (OSError, ValueError):
                ready = []
            if not ready:
                return
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._closed()
                return
            self.buffer += chunk
            line = self._line()
            if line is None:
                return
        self._answer(line)

    def _line(self) -> str | None:
        cut = self.buffer.find(b"\n")
        if cut < 0:
            return None
        line, self.buffer = self.buffer[:cut], self.buffer[cut + 1:]
        return line.decode(errors="replace").rstrip("\r")

    def _answer(self, line: str) -> None:
        asked = self.asking or ""
        try:
            ev = response(line, self.mode)
        except (ValueError, TypeError) as exc:
            self.view.answered(asked, line, self.echoed)
            self.view.notice(f"not a JSON answer ({exc}): {line[:60]!r}; send one JSON value per line")
            self.view.prompt(asked)
            return
        self.view.answered(asked, line, self.echoed)
        self.asking = None
        try:
            self.handler.send_event_sync(ev)
            self.answers += 1
            record = self.view.stats.questions[-1]
            record.answered, record.answer = time.monotonic(), line
        except WorkflowError as exc:  # the run ended meanwhile
            self.view.notice(f"the answer was not delivered: {exc}")
        self._next()

    def _closed(self) -> None:
        """stdin is at its end: no more questions; the steps waiting for an answer wait for their timeout."""
        asked, self.asking = self.asking or "", None
        self.mode = "off"
        self.waiting.clear()
        self.view.answered(asked, "", False)  # Ctrl-D echoes no newline
        self.view.notice("no input (stdin is closed): the step waits for its wait_for_event timeout")

    def stop(self) -> None:
        """The run is over: take down the question still up."""
        if self.asking is not None:
            asked, self.asking = self.asking, None
            self.view.answered(asked, "", False)
        self.waiting.clear()
