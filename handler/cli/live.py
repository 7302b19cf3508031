"""The live view: a panel redrawn in place on the terminal while a run goes.

    procflow  Pipeline  perf/pipeline.py  run 1f2e3d4c  2 workers
    3.2s [██████████▌░░░░░░░░░░░] 33/81 step runs 41% · ~4.1s left
    step      running  waiting:worker  waiting:num_workers  done  failed
    split           0               0                    0     1       0
    crunch          2              24                    0    14       0
    gather          0               0                    0    14       0
    workers 2/2 busy · 0 idle · CPU 1.9 cores
      4711 crunch 0.4s  4712 crunch 0.1s

How it stays whole (hand-written ANSI; see docs/cli.md for why not a library):

- width and height come from the real terminal, asked on every draw through the descriptor saved before fd
  1 was turned into a pipe (so a resize is followed without a SIGWINCH handler);
- every line is clipped to width - 1 columns, and the panel to height - 1 lines, so nothing wraps and the
  top of the panel is never scrolled out of the cursor's reach;
- a redraw moves the cursor up by the rows the previous frame takes *now* (its lines re-measured at the
  current width: a terminal that reflows on a narrowing resize wraps them), prints what the steps printed
  meanwhile, then the panel, each line on a row erased first (``ESC[2K``: which also drops the "wrapped"
  mark tmux leaves on rows it reflowed, that would glue them together on the next resize), then erases
  what is left below (``ESC[J``, from the row under the panel). It never clears from the screen's
  top-left corner, which tmux (``scroll-on-clear``) would copy into the scrollback on every frame. One
  write per frame, inside the terminal's synchronized-update brackets where supported (else ignored).
- after a narrowing resize, a terminal that reflows may have pushed the top of the last frame into its
  scrollback (tmux keeps the cursor's row); moving up is then stopped by the screen's top row, and the
  new frame is drawn from there: the screen is right, the scrollback keeps a piece of that one frame.

fd 1 is a pipe while the panel is up because the workers inherit it: what they (or this process) print is
read by a thread and shown above the panel, whole lines only, instead of tearing it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .stats import RunStats, clock, runs, summary_lines
from .text import bar, clip, fold, pad, rows_of, terminal_size, width_of, wrap_at
from .views import View, print_result

TICK = 0.1  # seconds between redraws
SYNC_ON, SYNC_OFF = "\x1b[?2026h", "\x1b[?2026l"
ERASE_LINE = "\x1b[2K"  # the whole row, and (tmux) its "wrapped" mark left by a reflow on resize

# column key -> headers (wide, medium, narrow)
COLUMNS = {
    "running": ("running", "run", "run"),
    "pending": ("waiting:worker", "wait:wkr", "wkr"),
    "queued": ("waiting:num_workers", "wait:n_w", "n_w"),
    "waiting": ("waiting:event", "wait:evt", "evt"),
    "done": ("done", "done", "done"),
    "failed": ("failed", "fail", "fail"),
    "cancelled": ("cancelled", "canc", "cnc"),
}
LEGEND = {"pending": "wkr: waiting for a worker", "queued": "n_w: on num_workers",
          "waiting": "evt: for an event", "cancelled": "cnc: cancelled"}


def _table(stats: RunStats, width: int) -> tuple[list[str], list[str], list[str]]:
    """Header line, one line per step, and the legend the narrow headers need (if they are used)."""
    keys = ["running", "pending", "queued"]
    if any(c.suspended for c in stats.steps.values()):
        keys.append("waiting")
    keys += ["done", "failed"]
    if any(c.cancelled for c in stats.steps.values()):
        keys.append("cancelled")
    rows = []
    for name, c in stats.steps.items():
        values: dict[str, int | None] = {"running": c.running, "pending": stats.pending(name),
                                         "queued": c.queued, "waiting": c.waiting, "done": c.done,
                                         "failed": c.failed, "cancelled": c.cancelled}
        rows.append((name, ["?" if values[k] is None else str(values[k]) for k in keys]))
    longest = max([4] + [width_of(n) for n, _ in rows])
    for form in range(3):
        heads = [COLUMNS[k][form] for k in keys]
        cols = [max(len(h), *(len(r[1][i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
        fixed = sum(cols) + 2 * len(cols)
        if fixed + min(longest, 14) <= width or form == 2:
            break
    name_w = max(4, min(longest, width - fixed))
    header = clip("step".ljust(name_w) + "".join(f"  {h:>{w}}" for h, w in zip(heads, cols)), width)
    lines = [clip(pad(name, name_w) + "".join(f"  {v:>{w}}" for v, w in zip(vals, cols)), width)
             for name, vals in rows]
    return [header], lines, [LEGEND[k] for k in keys if k in LEGEND] if form == 2 else []


def panel(stats: RunStats, title: str, width: int, height: int, notes: list[str]) -> list[str]:
    """The panel's lines, each at most ``width`` columns, at most ``height`` lines."""
    t = stats.totals()
    elapsed = clock(stats.elapsed())
    if t["known"]:
        frac = t["finished"] / t["known"]
        eta = stats.eta(t["known"] - t["finished"])
        left = f" · ~{clock(eta)} left" if eta is not None else ""
        count = f" {t['finished']}/{t['known']}"
        tails = [f"{count} step runs {frac:.0%}{left}", f"{count} {frac:.0%}{left}", f"{count} {frac:.0%}"]
        for tail in tails:  # the longest text that leaves room for a bar of 12 columns
            room = width - len(elapsed) - 1 - width_of(tail)
            if room >= 12:
                break
        progress = f"{elapsed} {bar(frac, min(40, room))}{tail}" if room >= 6 else f"{elapsed}{tail}"
    else:
        progress = f"{elapsed} · {runs(t['finished'])} finished, {t['running']} running"
        if t["failed"]:
            progress += f", {t['failed']} failed"
    head, rows, legend = _table(stats, width)
    busy = stats.busy()
    cores = stats.cpu.cores()
    pool = [f"workers {len(busy)}/{stats.workers} busy", f"{max(0, stats.workers - len(busy))} idle"]
    if cores is not None:
        pool.append(f"CPU {cores:.1f} cores")
    tail_lines = wrap_at(pool, width)
    now = stats.now()
    running = [f"{pid} {','.join(sorted({i.step for i in invs}))} "
               f"{clock(now - min(i.started or now for i in invs))}" for pid, invs in sorted(busy.items())]
    extra = ["  " + line for line in wrap_at(running, width - 2, sep="  ", indent="")[:2]]
    noted = [clip(n, width) for n in notes]
    info = []
    if any(stats.pending(s) is None for s in stats.steps):
        info.append(clip("?: not reported by the runtime (no idle worker)", width))
    info += wrap_at(legend, width, indent="")
    if stats.last_event:
        info.append(clip(f"last event  {stats.last_event}", width))
    top = [clip(title, width), clip(progress, width)] + head
    room = height - len(top) - len(tail_lines) - len(noted)
    optional = extra + info
    if len(rows) > room:  # not all steps fit: as many as fit, then how many are left out
        keep = max(0, room - 1)
        rows = rows[:keep] + [clip(f"… {len(rows) - keep} more steps", width)]
        optional = []
    lines = top + rows + tail_lines + optional[:max(0, room - len(rows))] + noted
    return lines[:max(1, height)]


class LiveView(View):
    def __init__(self, stats: RunStats, out: TextIO) -> None:
        super().__init__(stats, out)
        self.title = ""
        self.notes: list[str] = []
        self.tty: int | None = None  # the terminal's own descriptor (fd 1 is a pipe meanwhile)
        self.drawn: list[str] = []  # the lines of the frame on screen
        self.last_draw = 0.0
        self.printed: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.partial = b""  # printed text after its last newline, held back until the line is complete
        self.passthrough = False
        self.cursor_hidden = False
        self.asking: str | None = None  # the question on screen, if any (the panel is frozen meanwhile)

    @contextlib.contextmanager
    def owning_stdout(self) -> Iterator[None]:
        """Route fd 1 through a pipe while the panel is up. The forkserver keeps a copy of the pipe until
        this process exits, so the reader thread lives on as a plain pass-through once the panel is gone."""
        sys.stdout.flush()
        saved = os.dup(1)
        self.tty = saved
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.close(write_end)
        self.out = open(saved, "w", closefd=False)  # noqa: SIM115 -- closed in the finally below
        threading.Thread(target=self._read_prints, args=(read_end,), name="procflow-cli-prints",
                         daemon=True).start()
        try:
            yield
        finally:
            self._show_cursor()
            self.out.flush()
            sys.stdout.flush()
            self.passthrough = True
            os.dup2(saved, 1)
            self.out.close()
            self.out = sys.stdout
            self.tty = None
            self._take_printed(sys.stdout, complete_lines=False)
            os.close(saved)

    def _read_prints(self, fd: int) -> None:
        while chunk := os.read(fd, 65536):
            if self.passthrough:
                os.write(1, chunk)
            else:
                self.printed.put(chunk)

    def _take_printed(self, out: TextIO | None, complete_lines: bool = True) -> str:
        data = self.partial
        while not self.printed.empty():
            data += self.printed.get()
        cut = data.rfind(b"\n") + 1 if complete_lines else len(data)
        self.partial = data[cut:]
        text = data[:cut].decode(errors="replace")
        if out is not None and text:
            out.write(text)
        return text

    def _show_cursor(self) -> None:
        if self.cursor_hidden:
            self.cursor_hidden = False
            self.out.write("\x1b[?25h")
            self.out.flush()

    def size(self) -> tuple[int, int]:
        return terminal_size(self.tty)

    # --- the View interface --------------------------------------------------------------------------
    def begin(self, title: str) -> None:
        self.title = f"procflow  {title}"
        self.cursor_hidden = True
        self.out.write("\x1b[?25l")  # hide the cursor while the panel moves
        self.draw()

    def refresh(self) -> None:
        if self.asking is None and (time.monotonic() - self.last_draw >= TICK or not self.printed.empty()):
            self.draw()

    def notice(self, text: str) -> None:
        self.notes = [text]
        if self.asking is None:
            self.draw()

    def draw(self, above: str = "") -> None:
        columns, rows = self.size()
        width = max(1, columns - 1)  # never the last column: no pending wrap, no wrap
        lines = panel(self.stats, self.title, width, max(1, rows - 1), self.notes)
        up = sum(rows_of(line, columns) for line in self.drawn)
        printed = (above + self._take_printed(None)).splitlines()
        frame = [SYNC_ON, f"\x1b[{up}A" if up else "", "\r"]
        frame += [f"{ERASE_LINE}{line}\x1b[K\n" for line in printed]  # K: a long print's last row
        frame += [f"{ERASE_LINE}{line}\n" for line in lines]
        frame.append("\x1b[J")  # what is left of a longer frame below (never from the top-left corner)
        self.out.write("".join(frame) + SYNC_OFF)
        self.out.flush()
        self.drawn = lines
        self.last_draw = time.monotonic()

    def prompt(self, text: str) -> None:
        """Freeze the panel and ask below it; the terminal echoes what the user types."""
        self.draw()
        self.asking = text
        self._show_cursor()
        self.out.write(text)
        self.out.flush()

    def answered(self, text: str, answer: str, echoed: bool) -> None:
        """Take the question (and the echoed answer) off the screen with the panel, keep them as one
        history line above it, and let the panel move again."""
        columns, _ = self.size()
        asked = text + (answer if echoed else "")
        # Echoed: Enter left the cursor at the start of the next row; else it is still on the last row.
        self.drawn.extend([asked] if echoed else [])
        up_extra = 0 if echoed else rows_of(asked, columns) - 1
        self.out.write(f"\x1b[{up_extra}A" if up_extra else "")
        self.asking = None
        self.cursor_hidden = True
        self.out.write("\x1b[?25l")
        self.draw(above=f"{text}{answer}\n")

    def end(self, status: str, outcome: dict[str, Any]) -> None:
        self.notes = []
        self.draw()
        self._show_cursor()
        width = max(20, self.size()[0] - 1)
        for line in summary_lines(status, self.stats.summary()):
            for part in fold(line, width):
                print(part, file=self.out)
        print_result(outcome, self.out)
