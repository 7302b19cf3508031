"""The worker's mailbox when the supervisor's end of its pipe is gone."""

from __future__ import annotations

import multiprocessing

import pytest

from actors.host import Ready
from runtime.workers.process import main


@pytest.mark.timeout(30)
def test_a_send_into_a_pipe_the_supervisor_closed_leaves_as_an_orphan_does(monkeypatch: pytest.MonkeyPatch
                                                                           ) -> None:
    # It used to raise BrokenPipeError in a loop callback: a traceback on the program's stderr from each
    # worker flushing as its supervisor closed the pipe (shutdown, a program that exits abruptly).
    left: list[str] = []

    def orphaned(self: main.WorkerMailbox) -> None:
        left.append("orphaned")

    monkeypatch.setattr(main.WorkerMailbox, "orphaned", orphaned)
    inbox_r, inbox_w = multiprocessing.Pipe(duplex=False)
    outbox_r, outbox_w = multiprocessing.Pipe(duplex=False)
    outbox_r.close()
    mailbox = main.WorkerMailbox(inbox_r, outbox_w)
    mailbox.send(Ready(1), now=True)
    assert left == ["orphaned"]
    for end in (inbox_r, inbox_w, outbox_w):
        end.close()
