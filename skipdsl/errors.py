"""Errors that point at the place in a spec (file, line, node, edge) and say what to do."""
from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """A short ``did you mean ...?`` suffix listing the valid names (empty when nothing is close)."""
    options = sorted(set(options))
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    valid = ", ".join(options)
    return (f"did you mean '{close[0]}'? " if close else "") + f"valid: {valid}"


class SpecError(ValueError):
    """A spec that cannot be loaded, expanded or compiled.

    Carries where the problem is (``file``, ``line``, ``node``, ``edge``), what was expected and
    what was found, and a ``hint`` saying what to do. ``str(err)`` is one readable message.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        node: str | None = None,
        edge: tuple[str, str] | None = None,
        expected: object = None,
        found: object = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.node = node
        self.edge = edge
        self.expected = expected
        self.found = found
        self.hint = hint
        super().__init__(self._format())

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}" + (f":{self.line}" if self.line else ""))
        elif self.line:
            parts.append(f"line {self.line}")
        if self.node:
            parts.append(f"node {self.node}")
        if self.edge:
            parts.append(f"edge {self.edge[0]} -> {self.edge[1]}")
        return ", ".join(parts)

    def _format(self) -> str:
        out = self.where()
        out = f"{out}: {self.message}" if out else self.message
        if self.expected is not None or self.found is not None:
            out += f" (expected {self.expected}, found {self.found})"
        if self.hint:
            out += f"\n  hint: {self.hint}"
        return out

    def located(self, file: str | None = None, line: int | None = None) -> "SpecError":
        """The same error with a file/line filled in where it had none."""
        if file and not self.file:
            self.file = file
        if line and not self.line:
            self.line = line
        self.args = (self._format(),)
        return self


class DataError(ValueError):
    """A dataset that is missing, truncated or mislabelled; names the file and what to do."""
