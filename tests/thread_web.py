"""An aiohttp application on 127.0.0.1, served from its own thread and event loop: the
lifecycle the tests' fake servers share (fake_pds.FakeNetwork, appview_harness.FakePlc,
test_appview_identity.FakePlc), so that a synchronous test or script can use them with
``with``. A subclass adds its routes in ``routes``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web


class ThreadedWebServer:
    """Serves ``routes`` on 127.0.0.1 at a free ``port`` between ``__enter__`` and ``__exit__``."""

    port: int
    runner_options: dict[str, Any] = {}  # extra web.AppRunner arguments (access_log=None: quiet)

    def routes(self, app: web.Application) -> None:
        """Add the server's routes to ``app``."""
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            app = web.Application()
            self.routes(app)
            self._runner = web.AppRunner(app, shutdown_timeout=0.1, **self.runner_options)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop)
        assert ready.wait(10), f"{type(self).__name__} did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
