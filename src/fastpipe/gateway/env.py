"""``${VAR}`` in configuration strings: expanded from the environment at load, and never shown again.

A string that took any part of its value from the environment becomes a :class:`Secret`: a ``str`` that
works as its value everywhere (comparison, ``encode``, hashing) but shows only its template, with the
``${VAR}`` references unexpanded, when printed, formatted or logged. An API key put in a header is the
usual case, and a log line or ``check-config`` output must not leak it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ("Secret", "expand")

# ``${NAME}``, or ``$${...}``: the escape for a literal ``${``.
_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Secret(str):
    """A configuration string with environment values in it; ``str()``/``repr()``/``format()`` show the template.

    Use the string itself (``secret.encode()``, ``secret == other``) or :meth:`reveal` to get the value.
    Operations that make a new string (``lower()``, ``+``) return a plain ``str`` carrying the value.
    """

    template: str

    def __new__(cls, value: str, template: str) -> Secret:
        made = super().__new__(cls, value)
        made.template = template
        return made

    def reveal(self) -> str:
        """The value, as a plain ``str``."""
        return str.__str__(self)

    def __str__(self) -> str:
        return self.template

    def __repr__(self) -> str:
        return f"Secret({self.template!r})"

    def __format__(self, spec: str) -> str:
        return format(self.template, spec)

    def __reduce__(self) -> tuple[type[Secret], tuple[str, str]]:
        # The default would rebuild from the value alone and lose the template.
        return (Secret, (self.reveal(), self.template))


def expand(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with each ``${NAME}`` replaced by ``environ[NAME]`` (``$${`` stays a literal ``${``).

    Returns ``text`` itself when it references nothing, else a :class:`Secret`. A missing variable, a bad
    name or an unclosed ``${`` is a ``ValueError`` whose message never contains a value.
    """
    if "${" not in text:
        return text
    pieces: list[str] = []
    position = 0
    substituted = False
    for reference in _REFERENCE.finditer(text):
        pieces.append(text[position : reference.start()])
        position = reference.end()
        escaped, name = reference.groups()
        if escaped:
            pieces.append("${" + name + "}")
            continue
        if not _NAME.match(name):
            raise ValueError(f"${{{name}}} is not an environment variable name (letters, digits and _)")
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set (referenced as ${{{name}}})")
        pieces.append(environ[name])
        substituted = True
    # A ``${`` before a match would have been part of it: only the text after the last one can hold one.
    if "${" in text[position:]:
        raise ValueError("'${' without a closing '}' (write $${ for a literal ${)")
    pieces.append(text[position:])
    value = "".join(pieces)
    return Secret(value, text) if substituted else value
