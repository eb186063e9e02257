"""Structural checks of a STAR file before it is parsed (behind skpose.io).

A STAR table has no row count and no end marker, so a file cut short can read back as
a smaller, valid table. What can be detected, and is refused here with the file and
line:

- a data row whose number of fields differs from the number of columns its ``loop_``
  declares (a file cut mid-row, a row broken over two lines, a missing value);
- a key without a value in a key-value block;
- a file that does not end in a newline whose last value is shorter than the same
  column's values in the rows above it (at least two, all written with the same
  number of characters after their last ``.``: ``-51.522700`` cut to ``-51.52``,
  ``particles.mrcs`` cut to ``particles.mr``).

What cannot be detected: a cut on a line boundary (whole rows lost; RELION ends every
table with an empty line, but other writers do not, so its absence proves nothing);
a cut inside the last value of a file without a final newline when that value has no
``.`` (an integer, a name without an extension) or when fewer than two rows precede
it; and any change that leaves every row with its full number of fields.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

__all__ = ["check_star_structure", "refuse_cryosparc"]

_QUOTED_TOKEN = re.compile(r'"[^"]*"|\S+')
_NUMPY_MAGIC = b"\x93NUMPY"
_CHECKED_BEFORE_LAST = 8  # rows above the last one whose format it is compared with


def refuse_cryosparc(path: Path) -> None:
    """Point a cryoSPARC ``.cs`` file (a numpy array) to :func:`read_cryosparc`."""
    with open(path, "rb") as handle:
        magic = handle.read(len(_NUMPY_MAGIC))
    if magic == _NUMPY_MAGIC:
        raise ValueError(
            f"'{path}' is a cryoSPARC .cs file, not a STAR file: read it with "
            "skpose.read_cryosparc (the command line reads STAR files; convert it "
            "first, e.g. with pyem's csparc2star.py)."
        )


def _fields(line: str) -> list[str]:
    """The whitespace-separated fields of a data row, as starfile's parser sees them.

    Single quotes count as double quotes; ``#`` starts a comment outside quotes.
    """
    if "'" not in line and '"' not in line:
        return line.partition("#")[0].split()
    tokens = []
    for token in _QUOTED_TOKEN.findall(line.replace("'", '"')):
        if token.startswith("#"):
            break
        tokens.append(token)
    return tokens


def _decimals(value: str) -> int | None:
    """Characters after the last ``.`` (None without one): a value's written format."""
    _, dot, tail = value.rpartition(".")
    return len(tail) if dot else None


class _Loop:
    """The loop being scanned: its columns and the last column's recent values."""

    def __init__(self, block: str):
        self.block = block
        self.columns: list[str] = []
        self.last_values: deque[str] = deque(maxlen=_CHECKED_BEFORE_LAST + 1)

    def row(self, path, number: int, line: str) -> bool:
        """Check one data line; True when it is a row (not blank or a comment)."""
        fields = _fields(line)
        if not fields:
            return False
        if len(fields) != len(self.columns):
            raise ValueError(
                f"STAR file '{path}', line {number}: a data row with {len(fields)} "
                f"fields in the loop_ of block 'data_{self.block}', which has "
                f"{len(self.columns)} columns: the file is truncated or a row is "
                "broken (every row needs a value for every column)."
            )
        self.last_values.append(fields[-1])
        return True

    def check_cut_value(self, path, number: int) -> None:
        """The last value of a file without a final newline, against the rows above."""
        *before, last = self.last_values
        formats = {_decimals(v) for v in before}
        if len(before) < 2 or len(formats) != 1 or None in formats:
            return
        if _decimals(last) != formats.pop():
            raise ValueError(
                f"STAR file '{path}', line {number}: the file ends inside a value: "
                f"{self.columns[-1]} is {last!r} where the rows above are written "
                f"like {before[-1]!r}, and the file does not end in a newline; it "
                "looks truncated."
            )


def _key_value(path, number: int, line: str, block: str) -> None:
    if len(line.split()) < 2:
        raise ValueError(
            f"STAR file '{path}', line {number}: key {line.split()[0]} of block "
            f"'data_{block}' has no value."
        )


def check_star_structure(path) -> None:
    """Refuse a STAR file whose rows or end show that it is broken or cut short.

    Blocks, loops and rows are found as starfile's parser finds them (a loop's rows
    run to the next ``data_`` line). See the module docstring for what is and is not
    detected.

    Raises
    ------
    ValueError
        Naming the file and the line.
    """
    path = Path(path)
    block, state, loop, last_row, raw, number = "", "none", None, 0, "", 0
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if line.startswith("data_"):
                block, state = line[5:], "start"
            elif state == "start" and line.startswith("loop_"):
                loop, state = _Loop(block), "header"
            elif state in ("start", "simple") and line.startswith("_"):
                _key_value(path, number, line, block)
                state = "simple"
            elif state == "header" and line.startswith("_"):
                loop.columns.append(line.split()[0][1:])
            elif state in ("header", "rows"):
                state = "rows"
                if loop.row(path, number, line):
                    last_row = number
    if last_row and last_row == number and not raw.endswith("\n"):
        loop.check_cut_value(path, number)
