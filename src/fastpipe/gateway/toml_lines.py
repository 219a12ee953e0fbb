"""Where each key of a TOML document was written: ``tomllib`` gives the values but no line numbers.

:func:`key_lines` scans a document that ``tomllib`` has already accepted and records the line of every
key, table header and array element under its path: ``("upstreams", "api", "servers")``,
``("routes", 0)`` for the first ``[[routes]]`` header, ``("upstreams", "api", "servers", 1)`` for the
second element of that array. It is a scanner, not a validator: on text it does not understand it moves
on rather than fail, because a line number is a courtesy on top of an error that exists anyway.
"""

from __future__ import annotations

from typing import Union

__all__ = ("KeyLines", "Path", "key_lines")

Path = tuple[Union[str, int], ...]

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b", '"': '"', "\\": "\\"}


class KeyLines:
    """The line of each path in one document; :meth:`line_of` falls back to the nearest written ancestor."""

    def __init__(self, lines: dict[Path, int]) -> None:
        self._lines = lines

    def __contains__(self, path: Path) -> bool:
        return path in self._lines

    def line_of(self, path: Path) -> int | None:
        """The line where ``path`` was written; for a path never written (a missing key), the line of its
        table's header, or of the first key written inside that table (a table made by dotted keys)."""
        while path:
            line = self._lines.get(path)
            if line is not None:
                return line
            inside = [found for key, found in self._lines.items() if key[: len(path)] == path]
            if inside:
                return min(inside)
            path = path[:-1]
        return None


def key_lines(text: str) -> KeyLines:
    scanner = _Scanner(text)
    try:
        scanner.document()
    except IndexError:  # text this scanner does not follow: keep what it found
        pass
    return KeyLines(scanner.lines)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.array_sizes: dict[Path, int] = {}  # [[array]] path -> how many of its tables were opened

    # -- moving

    def advance(self, count: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + count)
        self.pos += count

    def at(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def more(self) -> bool:
        return self.pos < len(self.text)

    def skip_spaces(self) -> None:
        while self.more() and self.text[self.pos] in " \t":
            self.pos += 1

    def skip_blank(self) -> None:
        """Spaces, line ends and comments."""
        while self.more():
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.advance()
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    # -- structure

    def record(self, path: Path, line: int) -> None:
        self.lines.setdefault(path, line)

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip_blank()
            if not self.more():
                return
            start = self.pos
            line = self.line
            if self.at("[["):
                self.advance(2)
                table = self.open_array_table(self.key(), line)
                self.skip_spaces()
                self.advance(2)
            elif self.at("["):
                self.advance()
                table = self.resolve(self.key())
                self.record(table, line)
                self.skip_spaces()
                self.advance()
            else:
                self.key_value(table)
            if self.pos == start:  # never loop on text not understood
                self.advance()

    def resolve(self, parts: list[str]) -> Path:
        """A header's dotted key as a path: a part naming an array of tables means its latest table."""
        path: Path = ()
        for part in parts:
            path += (part,)
            size = self.array_sizes.get(path)
            if size:
                path += (size - 1,)
        return path

    def open_array_table(self, parts: list[str], line: int) -> Path:
        if not parts:
            return ()
        array = (*self.resolve(parts[:-1]), parts[-1])
        index = self.array_sizes.get(array, 0)
        self.array_sizes[array] = index + 1
        self.record(array, line)
        self.record((*array, index), line)
        return (*array, index)

    def key_value(self, table: Path) -> None:
        line = self.line
        parts = self.key()
        if not parts:
            return
        for depth in range(1, len(parts) + 1):
            self.record((*table, *parts[:depth]), line)
        self.skip_spaces()
        if self.at("="):
            self.advance()
            self.skip_spaces()
            self.value((*table, *parts))

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_spaces()
            if self.at('"'):
                parts.append(self.basic_string())
            elif self.at("'"):
                end = self.text.index("'", self.pos + 1)
                parts.append(self.text[self.pos + 1 : end])
                self.advance(end + 1 - self.pos)
            else:
                start = self.pos
                while self.more() and self.text[self.pos] in _BARE_KEY:
                    self.pos += 1
                if self.pos == start:
                    return parts
                parts.append(self.text[start : self.pos])
            self.skip_spaces()
            if not self.at("."):
                return parts
            self.advance()

    def value(self, path: Path) -> None:
        if self.at('"""') or self.at("'''"):
            self.multiline_string(self.text[self.pos : self.pos + 3])
        elif self.at('"'):
            self.basic_string()
        elif self.at("'"):
            self.advance(self.text.index("'", self.pos + 1) + 1 - self.pos)
        elif self.at("["):
            self.array(path)
        elif self.at("{"):
            self.inline_table(path)
        else:  # number, bool, date and time (which may hold a space)
            while self.more() and self.text[self.pos] not in ",]}\n#":
                self.pos += 1

    def array(self, path: Path) -> None:
        self.advance()
        index = 0
        while True:
            self.skip_blank()
            if not self.more() or self.at("]"):
                self.advance()
                return
            start = self.pos
            self.record((*path, index), self.line)
            self.value((*path, index))
            index += 1
            self.skip_blank()
            if self.at(","):
                self.advance()
            elif self.pos == start:
                self.advance()

    def inline_table(self, path: Path) -> None:
        self.advance()
        while True:
            self.skip_blank()
            if not self.more() or self.at("}"):
                self.advance()
                return
            start = self.pos
            self.key_value(path)
            self.skip_blank()
            if self.at(","):
                self.advance()
            elif self.pos == start:
                self.advance()

    def basic_string(self) -> str:
        """Consume ``"..."`` and return its text with the escapes decoded (it may be a key)."""
        self.advance()
        out: list[str] = []
        while True:
            char = self.text[self.pos]
            if char == '"':
                self.advance()
                return "".join(out)
            if char == "\\":
                code = self.text[self.pos + 1]
                if code in "uU":
                    width = 4 if code == "u" else 8
                    out.append(chr(int(self.text[self.pos + 2 : self.pos + 2 + width], 16)))
                    self.advance(2 + width)
                    continue
                out.append(_ESCAPES.get(code, code))
                self.advance(2)
                continue
            out.append(char)
            self.advance()

    def multiline_string(self, quotes: str) -> None:
        self.advance(3)
        while True:
            if quotes == '"""' and self.at("\\"):
                self.advance(2)
            elif self.at(quotes):
                self.advance(3)
                # Up to two quotes right before the closing three belong to the string.
                for _ in range(2):
                    if self.at(quotes[0]):
                        self.advance()
                return
            else:
                self.advance()
