"""A worker app that picks up newly registered models without a restart.

Hosts that load models once per container or replica (Modal's `@enter`) otherwise serve the
models they started with until they are replaced. `ReloadingApp` serves the worker app built
from the registry as it was, and at most every `check_s` seconds (on a request, never on a timer
of its own) asks the host for the registry's generation: a value that changes when a model is
registered. When it changed, it refreshes the host's view of the registry (Modal: reload the
Volume), builds a new worker app in a thread while the old one keeps answering, switches, and
stops the old one once its requests have finished.

A failed refresh or build keeps the running models; `on_failure` lets the host react (Modal:
stop taking inputs, so a fresh container with the new models replaces this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger("molserve.deploy")

ASGIApp = Callable[..., Any]


def registry_generation(root) -> tuple:
    """A registry directory's generation from its listing alone: every endpoint's version
    folders (a new version is renamed into place complete, so its folder appearing is the
    moment it counts)."""
    from pathlib import Path

    root = Path(root)
    if not root.is_dir():
        return ()
    return tuple(sorted(
        (endpoint.name, version.name)
        for endpoint in root.iterdir() if endpoint.is_dir() and not endpoint.name.startswith(".")
        for version in endpoint.iterdir() if (version / "manifest.json").is_file()))


class ReloadingApp:
    def __init__(self, build: Callable[[], ASGIApp], generation: Callable[[], Hashable], *,
                 refresh: Callable[[], None] = lambda: None,
                 on_failure: Callable[[BaseException], None] = lambda error: None,
                 check_s: float = 30.0, drain_s: float = 60.0) -> None:
        self._build = build
        self._generation = generation
        self._refresh = refresh
        self._on_failure = on_failure
        self.check_s = check_s
        self.drain_s = drain_s
        self.generation: Hashable = None
        self.reloads = 0
        self._app: ASGIApp | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._in_flight: dict[int, int] = {}
        self._last_check = 0.0
        self._task: asyncio.Task | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._app is None:  # a host that does not run the lifespan protocol
            await self._start()
        self._maybe_check()
        app = self._app
        self._in_flight[id(app)] = self._in_flight.get(id(app), 0) + 1
        try:
            await app(scope, receive, send)
        finally:
            self._in_flight[id(app)] -= 1

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as error:  # the host reports a failed start and stops
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._task is not None:
                    self._task.cancel()
                if self._stack is not None:
                    await self._stack.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        self.generation = await asyncio.to_thread(self._generation)
        self._app, self._stack = await self._started(await asyncio.to_thread(self._build))

    @staticmethod
    async def _started(app: ASGIApp) -> tuple[ASGIApp, contextlib.AsyncExitStack]:
        stack = contextlib.AsyncExitStack()
        router = getattr(app, "router", None)
        if router is not None and hasattr(router, "lifespan_context"):
            await stack.enter_async_context(router.lifespan_context(app))
        return app, stack

    def _maybe_check(self) -> None:
        now = time.monotonic()
        if now - self._last_check < self.check_s or (self._task is not None and not self._task.done()):
            return
        self._last_check = now
        self._task = asyncio.get_running_loop().create_task(self.check())

    async def check(self) -> bool:
        """Reload if the registry's generation changed; True when new models now answer."""
        try:
            current = await asyncio.to_thread(self._generation)
            if current == self.generation:
                return False
            log.info("the registry changed; loading its models")
            await asyncio.to_thread(self._refresh)
            app, stack = await self._started(await asyncio.to_thread(self._build))
        except Exception as error:
            log.error("keeping the running models: reloading failed: %s", error)
            self._on_failure(error)
            return False
        old, old_stack = self._app, self._stack
        self._app, self._stack, self.generation = app, stack, current
        self.reloads += 1
        if old_stack is not None:
            # The old app's batchers answer the requests it already took, then stop.
            deadline = time.monotonic() + self.drain_s
            while self._in_flight.get(id(old), 0) > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self._in_flight.pop(id(old), None)
            await old_stack.aclose()
        return True
