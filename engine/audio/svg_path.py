"""SVG path data as PDF path operators: the part of engine.audio.score_pdf that reads `d`."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"[A-Za-z]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def n(x: float, digits: int = 2) -> bytes:
    """A number as PDF writes it: at most `digits` decimals, no trailing zeros."""
    text = (b"%.*f" % (digits, x)).rstrip(b"0").rstrip(b".")
    return b"0" if text in (b"", b"-", b"-0") else text


class _PathReader:
    """SVG path data read command by command into PDF path operators."""

    def __init__(self, d: str) -> None:
        self.tokens = _NUMBER.findall(d)
        self.i = 0
        self.out: list[bytes] = []
        self.x = self.y = self.sx = self.sy = 0.0
        self.last_c: tuple[float, float] | None = None  # the previous curve's control point

    def nums(self, k: int) -> list[float]:
        vals = [float(t) for t in self.tokens[self.i : self.i + k]]
        self.i += k
        return vals

    def point(self, rel: bool) -> tuple[float, float]:
        px, py = self.nums(2)
        return (self.x + px, self.y + py) if rel else (px, py)

    def line_to(self, x: float, y: float) -> None:
        self.x, self.y, self.last_c = x, y, None
        self.out.append(b"%s %s l" % (n(x), n(y)))

    def curve(
        self, c1: tuple[float, float], c2: tuple[float, float], end: tuple[float, float]
    ) -> None:
        self.out.append(b"%s %s %s %s %s %s c" % tuple(n(v) for v in (*c1, *c2, *end)))
        self.x, self.y = end

    def step(self, op: str, rel: bool) -> str:
        """Read one command's numbers; the command that further numbers repeat."""
        if op == "M":
            self.x, self.y = self.sx, self.sy = self.point(rel)
            self.out.append(b"%s %s m" % (n(self.x), n(self.y)))
            self.last_c = None
            return "L"  # further pairs are lines
        if op == "L":
            self.line_to(*self.point(rel))
        elif op == "H":
            (v,) = self.nums(1)
            self.line_to(self.x + v if rel else v, self.y)
        elif op == "V":
            (v,) = self.nums(1)
            self.line_to(self.x, self.y + v if rel else v)
        elif op in "CS":
            if op == "C":
                c1 = self.point(rel)
            else:
                c1 = (
                    (2 * self.x - self.last_c[0], 2 * self.y - self.last_c[1])
                    if self.last_c
                    else (self.x, self.y)
                )
            c2, end = self.point(rel), self.point(rel)
            self.curve(c1, c2, end)
            self.last_c = c2
        elif op in "QT":
            if op == "Q":
                q = self.point(rel)
            else:
                q = (
                    (2 * self.x - self.last_c[0], 2 * self.y - self.last_c[1])
                    if self.last_c
                    else (self.x, self.y)
                )
            x0, y0 = self.x, self.y
            end = self.point(rel)
            self.curve(
                (x0 + 2 / 3 * (q[0] - x0), y0 + 2 / 3 * (q[1] - y0)),
                (end[0] + 2 / 3 * (q[0] - end[0]), end[1] + 2 / 3 * (q[1] - end[1])),
                end,
            )
            self.last_c = q  # (T reflects the quadratic control point)
        else:  # an arc or an unknown command: verovio draws neither; skip its numbers
            self.i += 7 if op == "A" else 1
        return op

    def read(self) -> bytes:
        cmd = ""
        while self.i < len(self.tokens):
            if self.tokens[self.i].isalpha():
                cmd = self.tokens[self.i]
                self.i += 1
                if cmd in "zZ":
                    self.out.append(b"h")
                    self.x, self.y, self.last_c = self.sx, self.sy, None
                    continue
            op = self.step(cmd.upper(), cmd.islower())
            cmd = op.lower() if cmd.islower() else op
        return b" ".join(self.out)


def path_ops(d: str) -> bytes:
    """SVG path data as PDF path construction operators (M L H V C S Q T Z, either case)."""
    return _PathReader(d).read()
