"""bsky.Service's RPCs as handlers of the index, one module per family (issue 15).

Each module registers its handlers with ``base.rpc`` (answered on a reader thread, given
a DataPlaneReader) or ``base.async_rpc`` (answered on the event loop, given the
``AppViewContext``: identity resolution); ``handlers()`` imports every family and returns
the registry.  Methods of bsky.Service with no handler answer UNIMPLEMENTED naming
themselves (the server reads the full method list from the descriptor).
"""

from __future__ import annotations

import importlib
import pkgutil

from smalldp.appview.rpcs.base import ASYNC_HANDLERS, SYNC_HANDLERS, AsyncHandler, SyncHandler

__all__ = ["handlers"]


def handlers() -> tuple[dict[str, SyncHandler], dict[str, AsyncHandler]]:
    """(sync handlers, async handlers) by method name, every family module imported."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(SYNC_HANDLERS), dict(ASYNC_HANDLERS)
