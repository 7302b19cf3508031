"""``ctx.store``: the run-wide key/value store and typed state, with blocking twins for ``def`` steps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .backend import MISSING

if TYPE_CHECKING:
    from .context import Context


class Store:
    """The run-wide key/value store. Values are copied (pickled) on every get and set, because steps run
    in other processes: mutate a value you got, then ``set`` it back."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context[Any]) -> None:
        self._ctx = ctx

    async def get(self, key: str, default: Any = MISSING) -> Any:
        """The value at ``key`` (dotted keys reach into nested dicts, models and lists); ``default``, or
        ``ValueError`` when absent and no default was given."""
        return await asyncio.wrap_future(self._ctx._backend_or_raise().store_call("get", key, default))

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key`` for every step of this run."""
        await asyncio.wrap_future(self._ctx._backend_or_raise().store_call("set", key, value))

    def get_sync(self, key: str, default: Any = MISSING) -> Any:
        """Blocking twin of ``get``, for plain ``def`` steps (it works in async steps too, blocking them)."""
        backend = self._ctx._backend_or_raise()
        return backend.wait(backend.store_call("get", key, default))

    def set_sync(self, key: str, value: Any) -> None:
        """Blocking twin of ``set``, for plain ``def`` steps (it works in async steps too, blocking them)."""
        backend = self._ctx._backend_or_raise()
        backend.wait(backend.store_call("set", key, value))

    async def get_state(self) -> Any:
        """A copy of the whole state: the ``Context[State]`` model, or a ``DictState`` (dict-like)."""
        return await asyncio.wrap_future(self._ctx._backend_or_raise().store_call("get_state"))

    async def set_state(self, state: Any) -> None:
        """Replace the whole state (an instance of the workflow's state type or of a base class of it, whose
        fields are then merged; a dict or ``DictState`` for an untyped state)."""
        await asyncio.wrap_future(self._ctx._backend_or_raise().store_call("set_state", state))

    async def clear(self) -> None:
        """Reset the state to the defaults of its type (an empty ``DictState`` when untyped)."""
        await asyncio.wrap_future(self._ctx._backend_or_raise().store_call("clear"))

    @contextlib.asynccontextmanager
    async def edit_state(self) -> AsyncIterator[Any]:
        """``async with ctx.store.edit_state() as state:`` edit a copy of the state while holding the run's
        state lock; the copy is saved on exit, or dropped if the block raises. Atomic across every step of
        the run, wherever it runs (the lock lives in the supervisor)."""
        backend = self._ctx._backend_or_raise()
        state = await asyncio.wrap_future(backend.store_call("lock_state"))
        try:
            yield state
            saving = backend.store_call("unlock_state", state)  # raises if the state cannot be pickled
        except BaseException:
            await asyncio.shield(asyncio.wrap_future(backend.store_call("unlock_state", MISSING)))
            raise
        await asyncio.wrap_future(saving)

    @contextlib.contextmanager
    def edit_state_sync(self) -> Iterator[Any]:
        """Blocking twin of ``edit_state``, for plain ``def`` steps. In an async step it blocks the worker's
        loop while it waits for the lock, so it refuses to wait when another step of the same worker holds
        or awaits the lock (that step could never give it back): use ``async with edit_state()`` there."""
        backend = self._ctx._backend_or_raise()
        state = backend.wait(backend.store_call("lock_state"))
        try:
            yield state
            saving = backend.store_call("unlock_state", state)  # raises if the state cannot be pickled
        except BaseException:
            backend.wait(backend.store_call("unlock_state", MISSING))
            raise
        backend.wait(saving)
