"""Worlds that go wrong; each rank prints one ``RESULT <json>`` line describing what it saw.

Modes (``argv[1]``):

* ``idle``: join the world (bound ``argv[2]`` seconds) and leave. Launched with a rank missing,
  the ranks that did start must fail with a clear error within the bound.
* ``worker_dies``: rank 1 exits abruptly inside a remote call from rank 0; rank 0 must get an
  error (not hang) and still exit.
* ``late_call``: only rank 0 works (``rank_zero_only``), for ``argv[2]`` seconds, several RPC
  timeouts; the others reach exit at once and must still serve its calls afterwards.
* ``late_call_one_dies``: as ``late_call`` with 3 ranks, but rank 2 dies right away; rank 0's
  calls to rank 1 must still work and every survivor must exit without hanging.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time

import torchopt.distributed as todist

START = time.monotonic()


def report(**fields):
    fields['elapsed'] = time.monotonic() - START
    print('RESULT ' + json.dumps(fields), flush=True)


def die():
    os._exit(7)


def die_soon():
    time.sleep(0.5)  # after the start-up barrier has released every rank
    os._exit(9)


@todist.rank_zero_only
def call_dying_worker():
    began = time.monotonic()
    try:
        todist.remote_sync_call(die, partitioner=1)
    except Exception as ex:  # noqa: BLE001
        report(error=f'{type(ex).__name__}: {ex}', call_time=time.monotonic() - began)
    else:
        report(error=None)


LATE_CALL_RPC_TIMEOUT = 1.0


@todist.rank_zero_only
def late_calls(seconds, targets):
    time.sleep(seconds)  # longer than the RPC timeout: the others wait at exit meanwhile
    results = {}
    for rank in targets:
        value = todist.rpc.rpc_sync(rank, os.getpid, timeout=20)
        results[str(rank)] = value
    report(error=None, pids=results)


def main():
    faulthandler.dump_traceback_later(60, exit=True)
    mode = sys.argv[1]
    if mode == 'idle':
        bound = float(sys.argv[2])
        try:
            todist.auto_init_rpc(init_timeout=bound)(lambda: None)()
        except Exception as ex:  # noqa: BLE001
            report(error=f'{type(ex).__name__}: {ex}', kind=type(ex).__mro__[1].__name__)
            sys.exit(3)
        report(error=None)
    elif mode == 'idle_env':
        try:
            todist.auto_init_rpc()(lambda: None)()
        except Exception as ex:  # noqa: BLE001
            report(error=f'{type(ex).__name__}: {ex}')
            sys.exit(3)
        report(error=None)
    elif mode == 'worker_dies':
        options = todist.rpc.TensorPipeRpcBackendOptions(rpc_timeout=20)
        todist.auto_init_rpc(rpc_backend_options=options, init_timeout=30)(call_dying_worker)()
    elif mode in ('late_call', 'late_call_one_dies'):
        seconds = float(sys.argv[2])
        if mode == 'late_call_one_dies' and todist.get_rank() == 2:
            todist.auto_init_rpc(init_timeout=30)(die_soon)()
        options = todist.rpc.TensorPipeRpcBackendOptions(rpc_timeout=LATE_CALL_RPC_TIMEOUT)
        targets = [1] if mode == 'late_call_one_dies' else range(1, todist.get_world_size())
        todist.auto_init_rpc(rpc_backend_options=options, init_timeout=30)(late_calls)(
            seconds, list(targets)
        )
        if todist.get_rank() != 0:
            report(error=None, pid=os.getpid())  # at exit next: waits for rank 0 there
    else:
        raise SystemExit(f'unknown mode {mode!r}')


if __name__ == '__main__':
    main()
