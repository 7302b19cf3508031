"""A tiny terminal for tests: enough of a VT100 to replay what the live view writes and read the screen.

It keeps the rows that scroll off the top (the scrollback), so that a torn redraw -- a panel left behind
and drawn again below -- shows as the panel's title twice. ``wraps`` counts the lines that ran past the
right edge (autowrap); the live view must never cause one. Like tmux (``scroll-on-clear``), clearing
the whole screen from its top-left corner moves what was on it into the scrollback.
"""

from __future__ import annotations

import re

CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z@])")


class Screen:
    def __init__(self, columns: int, rows: int, onlcr: bool = True) -> None:
        self.onlcr = onlcr  # a pty turns "\n" into "\r\n" (pass False for what was read off a pty)
        self.columns, self.rows = columns, rows
        self.screen = [[" "] * columns for _ in range(rows)]
        self.history: list[str] = []
        self.r = self.c = 0
        self.pending_wrap = False
        self.wraps = 0

    def _newline(self) -> None:
        self.pending_wrap = False
        if self.r == self.rows - 1:
            self.history.append("".join(self.screen.pop(0)).rstrip())
            self.screen.append([" "] * self.columns)
        else:
            self.r += 1

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = CSI.match(text, i)
                if m is None:
                    i += 1
                    continue
                self._csi(m.group(1), m.group(2))
                i = m.end()
                continue
            if ch == "\r":
                self.c, self.pending_wrap = 0, False
            elif ch == "\n":
                self._newline()
                if self.onlcr:
                    self.c = 0
            elif ch >= " ":
                if self.pending_wrap:
                    self.wraps += 1
                    self._newline()
                    self.c = 0
                self.screen[self.r][self.c] = ch
                if self.c == self.columns - 1:
                    self.pending_wrap = True
                else:
                    self.c += 1
            i += 1

    def _csi(self, args: str, op: str) -> None:
        if args.startswith("?"):
            return  # modes: cursor visibility, synchronized output
        n = int(args) if args.isdigit() else 1
        if op == "A":
            self.r, self.pending_wrap = max(0, self.r - n), False
        elif op == "J":
            if self.r == 0 and self.c == 0:  # tmux's scroll-on-clear: a whole-screen clear keeps the text
                self.history += [line for line in self.lines()]
            self.screen[self.r][self.c:] = [" "] * (self.columns - self.c)
            for row in range(self.r + 1, self.rows):
                self.screen[row] = [" "] * self.columns
        elif op == "K" and args == "2":
            self.screen[self.r] = [" "] * self.columns
        elif op == "K":
            self.screen[self.r][self.c:] = [" "] * (self.columns - self.c)

    def lines(self) -> list[str]:
        """The screen's rows, trailing blank rows dropped."""
        rows = ["".join(row).rstrip() for row in self.screen]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def all_lines(self) -> list[str]:
        return self.history + self.lines()
