"""Rendering for the CLI: Rich on a terminal, plain lines otherwise, one JSON object for --json.

Human output goes to stdout normally, and to stderr under --json, so stdout then holds exactly
one JSON object. Rich emits no ANSI codes when its stream is not a terminal. Every text shown goes through
``files.printable``: names come from the data (class folders, ONNX metadata) and may hold ESC,
newlines or other control characters, which are shown as escapes, never sent raw; table cells are
plain text, never Rich markup.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from resnet_cifar.files import printable

from resnet_cifar.files import json_text


class Output:
    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.console = Console(stderr=json_mode, highlight=False, soft_wrap=True)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def line(self, text: str) -> None:
        self.console.print(printable(text), markup=False)

    def error(self, message: str) -> None:
        # One line, never a traceback: users act on the message, not on our stack.
        self.errors.print(f"error: {printable(message)}", markup=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        title = printable(title)
        rows = [[printable(str(cell)) for cell in row] for row in rows]
        if self.is_terminal:
            table = Table(title=Text(title))
            for index, column in enumerate(columns):
                table.add_column(column, justify="left" if index == 0 else "right")
            for row in rows:
                table.add_row(*(Text(cell) for cell in row))
            self.console.print(table)
            return
        self.line(title)
        widths = [max(len(str(column)), *(len(str(row[i])) for row in rows)) for i, column in enumerate(columns)]
        for row in (columns, *rows):
            cells = [str(cell).ljust(width) if i == 0 else str(cell).rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
            self.line("  ".join(cells).rstrip())

    def json(self, payload: dict[str, Any]) -> None:
        sys.stdout.write(json_text(payload) + "\n")
        sys.stdout.flush()
