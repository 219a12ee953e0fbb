"""The line of every key in a TOML document, for error messages (tomllib reports none)."""

from __future__ import annotations

import sys

from fastpipe.gateway.toml_lines import key_lines

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DOCUMENT = '''\
# a comment with "quotes" and = signs
title = "x = [not a table]"   # trailing comment
"quoted.key" = 1
a.b.c = 2

[upstreams.api]
servers = [
  "http://one",  # first
  # a comment line
  'http://two',
]
note = """
key = "inside a string"
[not.a.table]
"""
after = 3

[[routes]]
upstream = "api"
limits = { upstream_timeout = 3, "max_body_size" = 4 }

[[routes]]
items = [{ x = 1 },
         { y = 2 }]
literal = \'\'\'
a = 1\'\'\'
when = 1979-05-27 07:32:00
last = true

[routes.limits]
connect_timeout = 1
'''


def test_every_key_has_its_line() -> None:
    tomllib.loads(DOCUMENT)  # the scanner assumes a document tomllib accepts
    lines = key_lines(DOCUMENT)
    expected = {
        ("title",): 2,
        ("quoted.key",): 3,
        ("a", "b", "c"): 4,
        ("a",): 4,
        ("upstreams", "api"): 6,
        ("upstreams", "api", "servers"): 7,
        ("upstreams", "api", "servers", 0): 8,
        ("upstreams", "api", "servers", 1): 10,
        ("upstreams", "api", "note"): 12,
        ("upstreams", "api", "after"): 16,
        ("routes",): 18,
        ("routes", 0): 18,
        ("routes", 0, "upstream"): 19,
        ("routes", 0, "limits", "upstream_timeout"): 20,
        ("routes", 0, "limits", "max_body_size"): 20,
        ("routes", 1): 22,
        ("routes", 1, "items", 0, "x"): 23,
        ("routes", 1, "items", 1, "y"): 24,
        ("routes", 1, "literal"): 25,
        ("routes", 1, "when"): 27,
        ("routes", 1, "last"): 28,
        ("routes", 1, "limits"): 30,
        ("routes", 1, "limits", "connect_timeout"): 31,
    }
    assert {path: lines.line_of(path) for path in expected} == expected


def test_a_path_never_written_falls_back_to_its_table_or_first_key() -> None:
    lines = key_lines(DOCUMENT)
    assert lines.line_of(("routes", 1, "upstream")) == 22  # missing key: the [[routes]] header
    assert lines.line_of(("upstreams", "api", "balance")) == 6
    assert lines.line_of(("a", "b", "missing")) == 4  # a table made by dotted keys: its first key
    assert lines.line_of(("server",)) is None
    assert lines.line_of(("upstreams",)) == 6  # written only as part of [upstreams.api]


def test_text_it_cannot_follow_gives_what_it_found() -> None:
    lines = key_lines('a = 1\nb = "unterminated')
    assert lines.line_of(("a",)) == 1
