"""The graceful RPC shutdown :func:`~.world.auto_init_rpc` registers at exit.

A worker often reaches exit long before the others: with ``rank_zero_only`` training, every other
rank only serves rank 0's calls. It must keep serving them until rank 0 is done, as
``rpc.shutdown(graceful=True)`` does by waiting without a bound. That unbounded wait never ends
when a peer has died, so here each worker first announces its arrival in the RPC world's store
and waits for the others' announcements, checking meanwhile that the workers still missing are
alive: a worker whose process is gone refuses the connection of a cheap built-in call at once,
while a busy one answers it from its RPC threads. The wait ends when every worker has arrived or
died. All arrived: torch's graceful shutdown, bounded by the RPC timeout (everyone is there, so
it is quick, and the bound covers a peer that dies after arriving). One died: a local shutdown,
so that no worker hangs at exit.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import torch
import torch.distributed.rpc as rpc

__all__ = ['shutdown_at_exit']

#: Seconds between the liveness checks of the workers that have not reached exit yet.
POLL_SECONDS = 1.0
_PREFIX = 'torchopt/exit/'


def _alive(name: str, timeout: float) -> bool:
    """Whether worker ``name`` may still be running: it answers, or is too busy to in time."""
    try:  # a built-in op runs on the peer's RPC threads without its Python interpreter
        rpc.rpc_sync(name, torch.add, args=(torch.zeros(()), 0), timeout=timeout)
    except RuntimeError as ex:  # refused or reset: the process is gone; a timeout: busy
        message = str(ex).lower()
        return 'timeout' in message or 'timed out' in message
    return True


def _await_peers(store: Any, rank: int, names: dict[int, str], timeout: float) -> bool:
    """Announce this worker's arrival; wait until every other has arrived or died.

    Returns:
        True when all arrived, False when one died first (or the store's host is gone).
    """
    keys = {r: f'{_PREFIX}{r}' for r in names}
    store.set(keys[rank], '1')
    dead: set[int] = set()
    while True:
        with contextlib.suppress(Exception):  # the wait's own timeout, or the store went away
            store.wait(
                [key for r, key in keys.items() if r not in dead], timedelta(seconds=POLL_SECONDS)
            )
            return not dead
        try:
            missing = [r for r, key in keys.items() if r not in dead and not store.check([key])]
        except Exception:  # noqa: BLE001  # the store's host is gone
            return False
        if not missing:
            return not dead
        dead.update(r for r in missing if not _alive(names[r], timeout))


def shutdown_at_exit(timeout: float | None, ping_timeout: float) -> None:
    """Shut RPC down at exit; never raises (peers may be gone), never hangs on a dead peer.

    Args:
        timeout: ``None``: wait as long as the live workers need (see the module docstring);
            seconds: ``rpc.shutdown(graceful=True, timeout=timeout)``.
        ping_timeout: Bound of one liveness check (the RPC timeout); a check that times out
            counts the worker as alive.
    """
    try:
        if not rpc.api._is_current_rpc_agent_set():  # pylint: disable=protected-access
            return
        if timeout is not None:
            rpc.shutdown(graceful=True, timeout=timeout)
            return
        agent = rpc.api._get_current_rpc_agent()  # pylint: disable=protected-access
        store = getattr(agent, 'store', None)
        if store is None:  # not TensorPipe: torch's own unbounded graceful shutdown
            rpc.shutdown(graceful=True)
            return
        names = {info.id: info.name for info in agent.get_worker_infos()}
        rank = agent.get_worker_info().id
        if _await_peers(store, rank, names, ping_timeout):
            # everyone is here, so torch's gathering is quick; its bound covers a peer that
            # dies after arriving (the unbounded gathering would wait for it forever)
            rpc.shutdown(graceful=True, timeout=ping_timeout)
        else:
            rpc.shutdown(graceful=False)  # live peers are done with this worker
    except Exception:  # noqa: BLE001  # peers gone: finish locally, never hang at exit
        pass
