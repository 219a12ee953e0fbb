"""Bodyless responses: wrap(None, owner) is None; wrap(body, owner, **kw) is Pipe(body, owner, **kw)."""

from __future__ import annotations

import weakref
from types import ModuleType

from ._support import BareSource, Owner, ReleaseRecorder, drain


def test_wrap_of_no_body_is_none(impl: ModuleType) -> None:
    released = ReleaseRecorder()
    assert impl.wrap(None, Owner()) is None
    assert impl.wrap(None, Owner(), on_release=released) is None
    assert released.calls == []


async def test_wrap_of_a_body_is_a_pipe_of_that_implementation(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    body = BareSource([b"a", b"b"])
    pipe = impl.wrap(body, owner, on_release=released)
    del owner
    assert type(pipe) is impl.Pipe
    assert pipe.state == "idle"
    assert pipe.owner is owner_ref()
    assert await drain(pipe) == [b"a", b"b"]
    assert owner_ref() is None
    assert [call.state for call in released.calls] == ["closed"]


async def test_wrap_without_an_owner(impl: ModuleType) -> None:
    pipe = impl.wrap(BareSource([b"a"]))
    assert pipe.owner is None
    assert await drain(pipe) == [b"a"]
