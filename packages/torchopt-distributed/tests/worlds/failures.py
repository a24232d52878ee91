"""Worlds that go wrong; each rank prints one ``RESULT <json>`` line describing what it saw.

Modes (``argv[1]``):

* ``idle``: join the world (bound ``argv[2]`` seconds) and leave. Launched with a rank missing,
  the ranks that did start must fail with a clear error within the bound.
* ``worker_dies``: rank 1 exits abruptly inside a remote call from rank 0; rank 0 must get an
  error (not hang) and still exit.
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


@todist.rank_zero_only
def call_dying_worker():
    began = time.monotonic()
    try:
        todist.remote_sync_call(die, partitioner=1)
    except Exception as ex:  # noqa: BLE001
        report(error=f'{type(ex).__name__}: {ex}', call_time=time.monotonic() - began)
    else:
        report(error=None)


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
    else:
        raise SystemExit(f'unknown mode {mode!r}')


if __name__ == '__main__':
    main()
