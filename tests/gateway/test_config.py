"""The configuration file: defaults, every check at load, and the exact line each problem points at."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fastpipe import Limits
from fastpipe.gateway import (
    ConfigError,
    ListenAddress,
    Secret,
    config_from_dict,
    load_config,
    load_config_text,
)
from fastpipe.gateway.config import ROUTE_LIMITS

ENV = {"OPENAI_API_KEY": "sk-test-123", "API_HOST": "10.0.0.7"}

FULL = """\
[server]
listen = "127.0.0.1:8080"        # also a list of addresses
workers = 1
access_log = false
metrics = "127.0.0.1:9100"

[limits]
upstream_timeout = 60

[upstreams.api]
servers = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
balance = "round-robin"
max_fails = 1
fail_timeout = 10
retries = 1

[[routes]]
name = "chat"
host = "api.example.com"
path_prefix = "/v1/"
upstream = "api"
strip_prefix = false
set_request_headers = { "Authorization" = "Bearer ${OPENAI_API_KEY}" }
limits = { upstream_timeout = 300 }
usage = "openai"
usage_drain_bytes = 1048576
usage_drain_seconds = 30
"""

MINIMAL = """\
[upstreams.api]
servers = ["http://127.0.0.1:9001"]

[[routes]]
upstream = "api"
"""


def problems(text: str, environ: dict[str, str] | None = None) -> list[tuple[int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(textwrap.dedent(text), file="g.toml", environ=ENV if environ is None else environ)
    assert caught.value.file == "g.toml"
    return [(problem.line, problem.message) for problem in caught.value.problems]


def only_problem(text: str, environ: dict[str, str] | None = None) -> tuple[int | None, str]:
    found = problems(text, environ)
    assert len(found) == 1, found
    return found[0]


# -- what a good file resolves to


def test_the_issue_example_loads() -> None:
    config = load_config_text(FULL, environ=ENV)
    assert config.server.listen == (ListenAddress("127.0.0.1", 8080),)
    assert config.server.metrics == ListenAddress("127.0.0.1", 9100)
    assert config.limits == {"upstream_timeout": 60}
    group = config.upstreams["api"]
    assert group.servers == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    (route,) = config.routes
    assert route.name == "chat"
    assert route.host == "api.example.com"
    assert route.set_request_headers == (("Authorization", "Bearer sk-test-123"),)
    assert route.limits.upstream_timeout == 300
    assert route.limit_overrides == {"upstream_timeout": 300}
    assert (route.usage, route.usage_drain_bytes, route.usage_drain_seconds) == ("openai", 1 << 20, 30.0)


def test_defaults() -> None:
    config = load_config_text(MINIMAL, environ={})
    assert config.server.listen == (ListenAddress("127.0.0.1", 8080),)
    assert (config.server.workers, config.server.access_log, config.server.metrics) == (1, False, None)
    assert config.limits == {}
    group = config.upstreams["api"]
    assert (group.balance, group.max_fails, group.fail_timeout, group.retries) == ("round-robin", 1, 10.0, 1)
    (route,) = config.routes
    assert route.name == "* /"
    assert (route.host, route.path_prefix, route.strip_prefix) == (None, "/", False)
    assert route.set_request_headers == ()
    assert route.limits == Limits()
    assert (route.usage, route.usage_drain_bytes, route.usage_drain_seconds) == (None, 1048576, 30.0)


def test_default_name_is_host_and_prefix() -> None:
    config = load_config_text(MINIMAL + 'host = "API.example.com"\npath_prefix = "/v1/"\n', environ={})
    assert config.routes[0].name == "api.example.com /v1/"


def test_route_limits_are_layered_over_the_file_limits_over_the_defaults() -> None:
    text = "[limits]\nupstream_timeout = 100\nconnect_timeout = 2\n" + MINIMAL + "limits = { upstream_timeout = 300 }\n"
    route = load_config_text(text, environ={}).routes[0]
    assert (route.limits.upstream_timeout, route.limits.connect_timeout, route.limits.idle_timeout) == (300, 2, 75.0)


def test_listen_may_be_a_list_with_ipv6() -> None:
    config = load_config_text('[server]\nlisten = ["0.0.0.0:80", "[::1]:8080"]\n' + MINIMAL, environ={})
    assert config.server.listen == (ListenAddress("0.0.0.0", 80), ListenAddress("::1", 8080))
    assert str(config.server.listen[1]) == "[::1]:8080"


def test_a_dict_loads_like_a_file_without_lines() -> None:
    config = config_from_dict(
        {"upstreams": {"api": {"servers": ["http://a:1"]}}, "routes": [{"upstream": "api"}]}, environ={}
    )
    assert config.routes[0].upstream == "api"
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"upstreams": {"api": {"servers": ["http://a:1"]}}, "routes": [{"upstream": "b"}]})
    assert (caught.value.file, caught.value.line) == (None, None)
    assert "routes[0].upstream: unknown upstream 'b'" in caught.value.message


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(FULL)
    assert load_config(path, environ=ENV).routes[0].name == "chat"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert caught.value.line is None
    assert "cannot read" in caught.value.message


# -- ${VAR}


def test_env_value_is_a_secret_that_prints_as_its_template() -> None:
    value = load_config_text(FULL, environ=ENV).routes[0].set_request_headers[0][1]
    assert isinstance(value, Secret)
    assert value == "Bearer sk-test-123"
    assert value.encode() == b"Bearer sk-test-123"
    # %-formatting takes another path than format(): both must show the template.
    for shown in (str(value), repr(value), f"{value}", "%s" % value, f"{value:>30}"):  # noqa: UP031
        assert "sk-test-123" not in shown
        assert "${OPENAI_API_KEY}" in shown


def test_env_in_a_server_url() -> None:
    config = load_config_text(MINIMAL.replace("127.0.0.1", "${API_HOST}"), environ=ENV)
    assert config.upstreams["api"].servers == ("http://10.0.0.7:9001",)


def test_literal_dollar_brace_is_escaped_by_doubling_the_dollar() -> None:
    text = MINIMAL + 'set_request_headers = { "X-Template" = "$${NOT_EXPANDED} $HOME" }\n'
    value = load_config_text(text, environ={}).routes[0].set_request_headers[0][1]
    assert value == "${NOT_EXPANDED} $HOME"
    assert not isinstance(value, Secret)


def test_missing_env_var_points_at_its_line() -> None:
    line, message = only_problem(FULL, environ={})
    assert line == 23
    assert message.startswith("routes[0].set_request_headers.Authorization: environment variable OPENAI_API_KEY")


def test_unclosed_reference_is_an_error() -> None:
    line, message = only_problem(MINIMAL + 'name = "a ${B"\n', environ={})
    assert line == 6
    assert "without a closing" in message


# -- line numbers of problems


def test_unknown_top_level_key() -> None:
    assert only_problem("colour = 1\n" + MINIMAL)[0] == 1


def test_unknown_key_in_server() -> None:
    line, message = only_problem("[server]\nworkers = 2\n\n  # note\nlisen = '0:1'\n" + MINIMAL)
    assert line == 5
    assert message.startswith("server.lisen: unknown key 'lisen' (known: listen, workers, access_log, metrics)")


def test_unknown_key_in_an_upstream_group() -> None:
    text = """\
    [upstreams.api]
    servers = [
      "http://127.0.0.1:9001",   # a comment with = and [brackets]
      "http://127.0.0.1:9002",
    ]
    retry = 3

    [[routes]]
    upstream = "api"
    """
    assert only_problem(text) == (
        6,
        "upstreams.api.retry: unknown key 'retry' (known: servers, balance, max_fails, fail_timeout, retries)",
    )


def test_unknown_key_in_the_second_route() -> None:
    text = MINIMAL + '\n[[routes]]\npath_prefix = "/b"\nupstream = "api"\nstrip_prefixes = true\n'
    line, message = only_problem(text)
    assert line == 10
    assert message.startswith("routes[1].strip_prefixes: unknown key")


def test_unknown_key_inside_an_inline_table() -> None:
    line, message = only_problem(MINIMAL + "# x = 1\nlimits = { upstream_timeout = 3, upstream_timout = 4 }\n")
    assert line == 7
    assert message.startswith("routes[0].limits.upstream_timout: unknown key")


def test_unknown_limit_in_the_limits_table() -> None:
    line, message = only_problem("# top\n[limits]\nupstream_timeout = 1\nmax_body = 10\n" + MINIMAL)
    assert line == 4
    assert "limits.max_body: unknown key 'max_body'" in message


def test_unknown_upstream_name() -> None:
    text = """\
    [upstreams.api]
    servers = ["http://127.0.0.1:9001"]

    [[routes]]
    name = "a"
    upstream = "api"

    [[routes]]
    name = "b"
    path_prefix = "/b/"
    upstream = "apl"
    """
    assert only_problem(text) == (11, "routes[1].upstream: unknown upstream 'apl' (defined: api)")


def test_bad_url_in_a_one_line_array() -> None:
    text = MINIMAL.replace('["http://127.0.0.1:9001"]', '["http://127.0.0.1:9001", "ftp://127.0.0.1:21"]')
    line, message = only_problem(text)
    assert line == 2
    assert message.startswith("upstreams.api.servers[1]: upstream 'ftp://127.0.0.1:21': only http:// and https://")


def test_bad_url_in_a_multi_line_array_points_at_its_element() -> None:
    text = """\
    [upstreams.api]
    servers = [
      "http://127.0.0.1:9001",
      '''http://127.0.0.1:9002''',
      "http://127.0.0.1:9003/v1",
    ]

    [[routes]]
    upstream = "api"
    """
    line, message = only_problem(text)
    assert line == 5
    assert "a path prefix is not supported" in message


def test_bad_port_in_a_url() -> None:
    line, message = only_problem(MINIMAL.replace("9001", "99999"))
    assert line == 2
    assert "upstreams.api.servers[0]" in message


def test_missing_required_key_points_at_the_table_header() -> None:
    text = MINIMAL + '\n# the second route\n[[routes]]\npath_prefix = "/x/"\n'
    assert only_problem(text) == (8, "routes[1]: upstream is required: the name of an [upstreams.NAME] table")


def test_missing_servers_points_at_the_group_header() -> None:
    text = '[upstreams.api]\nbalance = "round-robin"\n\n[upstreams.other]\nretries = 0\n[[routes]]\nupstream = "api"\n'
    found = problems(text)
    assert [line for line, _ in found] == [1, 4]
    assert found[0][1] == "upstreams.api: servers is required: a list of http:// or https:// URLs"


def test_keys_in_a_sub_table_of_a_route() -> None:
    text = MINIMAL + "\n[routes.limits]\nupstream_timeout = 5\nheader_timeout = 5\n"
    line, message = only_problem(text)
    assert line == 9
    assert message.startswith("routes[0].limits.header_timeout: header_timeout cannot differ per route")


def test_dotted_keys() -> None:
    text = 'upstreams.api.servers = ["http://a:1"]\nupstreams.api.balanse = "x"\n[[routes]]\nupstream = "api"\n'
    assert only_problem(text)[0] == 2


def test_keys_after_a_multi_line_string_are_counted_right() -> None:
    text = MINIMAL + 'name = """\nx = 1\n[server]\n"""\nusage = "opnai"\n'
    line, message = only_problem(text)
    assert line == 10
    assert message == "routes[0].usage: must be one of openai, anthropic, got 'opnai'"


def test_quoted_key_names() -> None:
    text = MINIMAL + '"strip_prefix" = "yes"\n'
    assert only_problem(text) == (6, "routes[0].strip_prefix: must be true or false, got 'yes'")


def test_toml_syntax_error_has_its_line() -> None:
    line, message = only_problem(MINIMAL + "name = \n")
    assert line == 6
    assert "line" not in message


def test_problems_are_all_reported_in_line_order() -> None:
    text = """\
    [server]
    workers = 0

    [upstreams.api]
    servers = ["http://127.0.0.1:9001"]
    balance = "random"
    max_fails = -1
    fail_timeout = 0

    [[routes]]
    upstream = "api"
    usage = "gemini"
    usage_drain_bytes = -5
    """
    found = problems(text)
    assert [line for line, _ in found] == [2, 6, 7, 8, 12, 13]
    assert found[0][1] == "server.workers: must be an integer >= 1, got 0"
    assert found[1][1] == "upstreams.api.balance: must be one of round-robin, least-connections, got 'random'"
    assert found[2][1] == "upstreams.api.max_fails: must be an integer >= 0, got -1"
    assert found[3][1] == "upstreams.api.fail_timeout: must be more than 0 seconds"


# -- checks


def test_limit_value_is_checked_by_limits_at_its_line() -> None:
    line, message = only_problem("[limits]\nconnect_timeout = 5\nupstream_timeout = -1\n" + MINIMAL)
    assert line == 3
    assert message.startswith("limits.upstream_timeout: upstream_timeout must be a positive number")


def test_route_limit_value_is_checked_with_the_file_limits() -> None:
    text = "[limits]\nwrite_high_water = 1000\nwrite_low_water = 10\n" + MINIMAL + "limits = { max_body_size = -1 }\n"
    line, message = only_problem(text)
    assert line == 9
    assert "max_body_size must be an integer >= 0" in message


def test_only_per_exchange_limits_may_differ_per_route() -> None:
    assert {"upstream_timeout", "connect_timeout", "max_body_size"} <= ROUTE_LIMITS
    assert not {"header_timeout", "idle_timeout", "pool_size", "shutdown_grace"} & ROUTE_LIMITS


def test_bad_host_values() -> None:
    for host in ("api.example.com:8080", "http://api.example.com", "*", "a.*.com", "*example.com", "a b", ""):
        line, message = only_problem(MINIMAL + f"host = {host!r}\n")
        assert line == 6, host
        assert "must be a host name" in message


def test_good_host_values_are_normalised() -> None:
    for written, stored in (
        ("API.Example.com.", "api.example.com"),
        ("*.Example.COM", "*.example.com"),
        ("[::1]", "::1"),
        ("bücher.example", "xn--bcher-kva.example"),
    ):
        assert load_config_text(MINIMAL + f"host = {written!r}\n", environ={}).routes[0].host == stored


def test_bad_path_prefix() -> None:
    for prefix in ("v1/", "/v1?x", "/v 1", "/vé"):
        line, message = only_problem(MINIMAL + f"path_prefix = {prefix!r}\n")
        assert line == 6
        assert "must be an ASCII path starting with /" in message


def test_framing_headers_may_not_be_set() -> None:
    line, message = only_problem(MINIMAL + 'set_request_headers = { "Transfer-Encoding" = "chunked" }\n')
    assert line == 6
    assert "may not set it" in message


def test_host_may_not_be_set_as_a_header() -> None:
    line, message = only_problem(MINIMAL + 'set_request_headers = { "X-A" = "1", "host" = "b" }\n')
    assert line == 6
    assert "rewrite_host" in message


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path, environ={}).routes[0].upstream == "api"


def test_header_value_with_a_line_break_from_the_environment_is_refused_without_showing_it() -> None:
    line, message = only_problem(
        MINIMAL + 'set_request_headers = { "X-Key" = "${K}" }\n', environ={"K": "abc\r\nX-Evil: 1"}
    )
    assert line == 6
    assert "control character" in message
    assert "abc" not in message and "Evil" not in message


def test_header_name_must_be_a_token() -> None:
    assert "not a valid header name" in only_problem(MINIMAL + 'set_request_headers = { "X Key" = "v" }\n')[1]


def test_drain_settings_without_usage() -> None:
    line, message = only_problem(MINIMAL + "usage_drain_seconds = 5\n")
    assert line == 6
    assert "has no effect without usage" in message


def test_negative_numbers_are_refused() -> None:
    text = MINIMAL.replace('"]\n', '"]\nretries = -1\n', 1) + "usage = 'anthropic'\nusage_drain_seconds = -1\n"
    assert [line for line, _ in problems(text)] == [3, 8]


def test_types_are_checked() -> None:
    text = '[server]\nworkers = "2"\naccess_log = 1\nlisten = 8080\n' + MINIMAL + "strip_prefix = 'no'\n"
    assert [line for line, _ in problems(text)] == [2, 3, 4, 10]


def test_no_routes_and_no_upstreams() -> None:
    found = problems("[server]\nworkers = 1\n")
    assert [message.split(":")[0] for _, message in found] == ["no [upstreams.NAME] table", "no [[routes]]"]


def test_a_route_that_can_never_match() -> None:
    text = (
        MINIMAL + 'path_prefix = "/v1/"\n\n[[routes]]\nhost = "a.example.com"\npath_prefix = "/v1/"\nupstream = "api"\n'
    )
    line, message = only_problem(text)
    assert line == 8
    assert message.startswith("routes[1]: can never match: routes[0]")


def test_wildcard_shadowing_an_exact_host_is_an_error_but_not_the_reverse() -> None:
    route = '\n[[routes]]\nhost = "{}"\npath_prefix = "/v1/"\nupstream = "api"\n'
    head = MINIMAL.replace('[[routes]]\nupstream = "api"\n', "")
    assert only_problem(head + route.format("*.example.com") + route.format("a.example.com"))[0] == 10
    load_config_text(head + route.format("a.example.com") + route.format("*.example.com"), environ={})
    load_config_text(head + route.format("*.example.com") + route.format("example.com"), environ={})
    load_config_text(head + route.format("*.example.com") + route.format("*.example.org"), environ={})


def test_route_names_must_be_unique() -> None:
    text = MINIMAL + 'name = "x"\n[[routes]]\nname = "x"\npath_prefix = "/b/"\nupstream = "api"\n'
    assert only_problem(text) == (8, "routes[1].name: route name 'x' is used twice (routes[0])")


def test_a_server_listed_twice() -> None:
    text = MINIMAL.replace('["http://127.0.0.1:9001"]', '["http://127.0.0.1:9001", "127.0.0.1:9001"]')
    assert "listed twice" in only_problem(text)[1]
