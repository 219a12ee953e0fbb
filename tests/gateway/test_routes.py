"""Route matching, one rule per test, as the gateway issue states them; strip_prefix; the 404 body."""

from __future__ import annotations

from fastpipe.gateway import RouteConfig, RouteTable, not_found_body


def table(*routes: tuple[str | None, str]) -> RouteTable:
    """Routes named r0, r1, ... from (host, path_prefix) pairs, in this order."""
    return RouteTable(
        RouteConfig(name=f"r{index}", upstream="api", host=host, path_prefix=prefix)
        for index, (host, prefix) in enumerate(routes)
    )


def name(routes: RouteTable, host: bytes, path: bytes) -> str | None:
    route = routes.match(host, path)
    return None if route is None else route.name


# -- path prefixes


def test_prefix_without_slash_matches_longer_paths_and_siblings() -> None:
    routes = table((None, "/v1"))
    assert name(routes, b"h", b"/v1/models") == "r0"
    assert name(routes, b"h", b"/v1x") == "r0"
    assert name(routes, b"h", b"/v1") == "r0"


def test_prefix_with_slash_does_not_match_the_path_without_it() -> None:
    routes = table((None, "/v1/"))
    assert name(routes, b"h", b"/v1") is None
    assert name(routes, b"h", b"/v1/") == "r0"


def test_prefix_is_a_plain_string_prefix_case_sensitive() -> None:
    routes = table((None, "/v1/"))
    assert name(routes, b"h", b"/V1/models") is None
    assert name(routes, b"h", b"/x/v1/") is None


def test_query_never_changes_the_match() -> None:
    routes = table((None, "/v1"), (None, "/v1/"))
    assert name(routes, b"h", b"/v1?next=/v1/") == "r0"
    assert name(routes, b"h", b"/v1/?a=1") == "r1"


# -- hosts


def test_host_compares_case_insensitively() -> None:
    routes = table(("api.example.com", "/"))
    assert name(routes, b"API.Example.COM", b"/") == "r0"


def test_configured_host_in_upper_case_matches_too() -> None:
    routes = table(("API.example.com", "/"))
    assert name(routes, b"api.example.com", b"/") == "r0"


def test_host_port_is_ignored() -> None:
    routes = table(("api.example.com", "/"))
    assert name(routes, b"api.example.com:8080", b"/") == "r0"


def test_ipv6_host_with_port() -> None:
    routes = table(("::1", "/"), ("[::2]", "/"))
    assert name(routes, b"[::1]:8080", b"/") == "r0"
    assert name(routes, b"[::1]", b"/") == "r0"
    assert name(routes, b"[::2]:80", b"/") == "r1"
    assert name(routes, b"[::3]:8080", b"/") is None


def test_host_trailing_dot_is_the_same_name() -> None:
    routes = table(("api.example.com", "/"))
    assert name(routes, b"api.example.com.", b"/") == "r0"
    assert name(routes, b"api.example.com.:443", b"/") == "r0"


def test_other_host_does_not_match() -> None:
    routes = table(("api.example.com", "/"))
    assert name(routes, b"api.example.com", b"/") == "r0"  # first, so a sloppy memory of hosts would show
    assert name(routes, b"example.com", b"/") is None
    assert name(routes, b"xapi.example.com", b"/") is None
    assert name(routes, b"api.example.com.evil", b"/") is None


def test_wildcard_matches_one_label() -> None:
    routes = table(("*.example.com", "/"))
    assert name(routes, b"a.example.com", b"/") == "r0"


def test_wildcard_matches_several_labels() -> None:
    routes = table(("*.example.com", "/"))
    assert name(routes, b"a.b.c.example.com:8443", b"/") == "r0"


def test_wildcard_does_not_match_the_apex() -> None:
    routes = table(("*.example.com", "/"))
    assert name(routes, b"example.com", b"/") is None
    assert name(routes, b".example.com", b"/") is None


def test_wildcard_does_not_match_a_name_that_only_ends_alike() -> None:
    routes = table(("*.example.com", "/"))
    assert name(routes, b"badexample.com", b"/") is None


def test_wildcard_is_case_insensitive() -> None:
    routes = table(("*.Example.com", "/"))
    assert name(routes, b"A.EXAMPLE.COM", b"/") == "r0"


def test_route_without_host_matches_every_host() -> None:
    routes = table((None, "/"))
    assert name(routes, b"anything.test", b"/") == "r0"
    assert name(routes, b"", b"/") == "r0"
    assert name(routes, b"[::1]:1", b"/x") == "r0"


def test_missing_host_header_matches_only_routes_without_host() -> None:
    routes = table(("api.example.com", "/"), ("*.example.com", "/"))
    assert name(routes, b"", b"/") is None


def test_many_distinct_hosts_keep_matching_right() -> None:
    routes = table(("api.example.com", "/"), ("*.example.com", "/"), (None, "/v1/"))
    for number in range(3000):  # more distinct Host values than the table remembers
        assert name(routes, b"h%d.example.com" % number, b"/") == "r1"
        assert name(routes, b"h%d.other" % number, b"/v1/") == "r2"
        assert name(routes, b"API.example.com:%d" % number, b"/") == "r0"


# -- precedence


def test_longest_prefix_wins_whatever_the_hosts() -> None:
    routes = table(("api.example.com", "/"), (None, "/v1/"))
    assert name(routes, b"api.example.com", b"/v1/chat") == "r1"
    assert name(routes, b"api.example.com", b"/v2/chat") == "r0"


def test_longest_prefix_wins_over_an_exact_host_for_a_wildcard() -> None:
    routes = table(("api.example.com", "/v1/"), ("*.example.com", "/v1/chat"))
    assert name(routes, b"api.example.com", b"/v1/chat/completions") == "r1"
    assert name(routes, b"api.example.com", b"/v1/models") == "r0"


def test_equal_length_first_listed_wins() -> None:
    routes = table(("*.example.com", "/v1/"), ("api.example.com", "/v2/"), ("api.example.com", "/v1/"))
    assert name(routes, b"api.example.com", b"/v1/x") == "r0"
    routes = table(("api.example.com", "/v1/"), ("*.example.com", "/v1/"))
    assert name(routes, b"api.example.com", b"/v1/x") == "r0"
    assert name(routes, b"www.example.com", b"/v1/x") == "r1"


def test_equal_length_first_listed_wins_for_different_prefixes() -> None:
    routes = table((None, "/ab"), (None, "/ac"), (None, "/a"))
    assert name(routes, b"h", b"/ab") == "r0"
    assert name(routes, b"h", b"/ac") == "r1"
    assert name(routes, b"h", b"/ad") == "r2"


def test_listed_order_does_not_beat_a_longer_prefix() -> None:
    routes = table((None, "/"), (None, "/v1"), (None, "/v1/chat"))
    assert name(routes, b"h", b"/v1/chat/x") == "r2"
    assert name(routes, b"h", b"/v1/models") == "r1"
    assert name(routes, b"h", b"/other") == "r0"


def test_nested_wildcards_longest_prefix_then_order() -> None:
    routes = table(("*.example.com", "/"), ("*.eu.example.com", "/eu/"), (None, "/health"))
    assert name(routes, b"a.eu.example.com", b"/eu/x") == "r1"
    assert name(routes, b"a.eu.example.com", b"/x") == "r0"
    assert name(routes, b"eu.example.com", b"/eu/x") == "r0"  # the apex of *.eu.example.com
    assert name(routes, b"a.eu.example.com", b"/healthz") == "r2"


def test_no_route_matches() -> None:
    routes = table(("api.example.com", "/v1/"))
    assert name(routes, b"api.example.com", b"/v2/") is None


# -- strip_prefix and the 404


def stripping(prefix: str) -> RouteTable:
    return RouteTable([RouteConfig(name="s", upstream="api", path_prefix=prefix, strip_prefix=True)])


def test_strip_prefix_keeps_the_query() -> None:
    route = stripping("/api/").routes[0]
    assert route.upstream_target(b"/api/users?x=1") == b"/users?x=1"


def test_strip_prefix_of_the_prefix_itself_is_slash() -> None:
    route = stripping("/api/").routes[0]
    assert route.upstream_target(b"/api/") == b"/"


def test_strip_prefix_without_trailing_slash_keeps_a_leading_slash() -> None:
    route = stripping("/api").routes[0]
    assert route.upstream_target(b"/api/users") == b"/users"
    assert route.upstream_target(b"/api") == b"/"
    assert route.upstream_target(b"/api?x=1") == b"/?x=1"
    assert route.upstream_target(b"/apix") == b"/x"


def test_strip_prefix_of_slash_changes_nothing() -> None:
    route = stripping("/").routes[0]
    assert route.upstream_target(b"/a/b?c") == b"/a/b?c"


def test_without_strip_prefix_the_target_is_unchanged() -> None:
    route = table((None, "/api/")).routes[0]
    target = b"/api/users?x=1"
    assert route.upstream_target(target) is target


def test_not_found_body_names_host_with_port_and_path_without_query() -> None:
    assert not_found_body(b"Api.Example.com:8080", b"/v2/x?key=1") == b"no route for Api.Example.com:8080 /v2/x"
    assert not_found_body(b"", b"/") == b"no route for  /"
