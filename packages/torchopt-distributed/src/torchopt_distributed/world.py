"""World helpers: ranks from torchrun's environment, RPC start-up and rank-gated functions.

The world is described by the environment variables that ``torchrun`` sets: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (defaults ``0, 1, 0, 1``: a single process
is a world of one). They are read once, when this module is imported.

:func:`auto_init_rpc` starts :mod:`torch.distributed.rpc` with a *bounded* rendezvous: unlike the
stock ``env://`` rendezvous, which waits 30 minutes for a rank that never comes, it fails after
``init_timeout`` seconds (argument, or environment variable ``TORCHOPT_RPC_INIT_TIMEOUT``) with an
error that names the missing ranks. RPC binds the loopback interface only when asked
(``loopback=True`` or ``TORCHOPT_RPC_LOOPBACK=1``), and glibc malloc is tuned for the process only
when asked (``tune_malloc=True`` or ``TORCHOPT_RPC_TUNE_MALLOC=1``).
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, Callable, NamedTuple, TypeVar

import torch.distributed as dist
import torch.distributed.rpc as rpc

from torchopt_distributed._malloc import check_positive, limit_malloc_arenas, retain_freed_memory
from torchopt_distributed._options import check_seconds, resolve_flag, resolve_seconds
from torchopt_distributed._shutdown import shutdown_at_exit

__all__ = [
    'WorldInfo',
    'default_worker_name_format',
    'get_world_info',
    'get_world_rank',
    'get_rank',
    'get_world_size',
    'get_local_rank',
    'get_local_world_size',
    'get_worker_id',
    'barrier',
    'auto_init_rpc',
    'limit_malloc_arenas',
    'retain_freed_memory',
    'on_rank',
    'not_on_rank',
    'rank_zero_only',
    'rank_non_zero_only',
    'rank_all',
    'INIT_TIMEOUT_ENV',
    'LOOPBACK_ENV',
    'TUNE_MALLOC_ENV',
    'check_seconds',
    'resolve_seconds',
    'resolve_flag',
    'DEFAULT_INIT_TIMEOUT',
    'RendezvousTimeoutError',
]

F = TypeVar('F', bound=Callable[..., Any])

#: Environment variable giving the rendezvous bound of :func:`auto_init_rpc`, in seconds.
INIT_TIMEOUT_ENV = 'TORCHOPT_RPC_INIT_TIMEOUT'
#: Environment variable asking :func:`auto_init_rpc` to bind the loopback interface (``1``).
LOOPBACK_ENV = 'TORCHOPT_RPC_LOOPBACK'
#: Rendezvous bound (seconds) used when neither the argument nor the variable is set.
DEFAULT_INIT_TIMEOUT = 300.0
#: Environment variable opting :func:`auto_init_rpc` in to glibc malloc tuning (``1``).
TUNE_MALLOC_ENV = 'TORCHOPT_RPC_TUNE_MALLOC'
#: ``malloc_arena_max`` applied by ``tune_malloc=True``.
TUNED_MALLOC_ARENA_MAX = 1
#: ``malloc_trim_threshold`` applied by ``tune_malloc=True`` (1 GiB).
TUNED_MALLOC_TRIM_THRESHOLD = 1 << 30

_RDZV_SCHEME = 'torchopt-env'


class RendezvousTimeoutError(TimeoutError, RuntimeError):
    """The RPC rendezvous did not complete in time (a rank never started or is unreachable)."""


def default_worker_name_format(
    world_rank: int,
    world_size: int,
    local_rank: int = 0,  # pylint: disable=unused-argument
    local_world_size: int = 1,  # pylint: disable=unused-argument
) -> str:
    """Name a worker ``worker<rank>``, the rank zero-padded to the width of the world size.

    Example: rank 7 of a world of 16 is ``'worker07'``.
    """
    return f'worker{world_rank:0{len(str(world_size))}d}'


_worker_name_format: Callable[..., str] = default_worker_name_format


class WorldInfo(NamedTuple):
    """Where this process sits in the world, as given by torchrun's environment variables."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def rank(self) -> int:
        """The global rank (same as :attr:`world_rank`)."""
        return self.world_rank

    @property
    def worker_name(self) -> str:
        """This process's RPC worker name, formatted with the current worker-name format."""
        return _worker_name_format(
            world_rank=self.world_rank,
            world_size=self.world_size,
            local_rank=self.local_rank,
            local_world_size=self.local_world_size,
        )


def _env_int(environ: Mapping[str, str], key: str, default: int) -> int:
    value = environ.get(key, '')
    if value.strip() == '':
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f'environment variable {key} must be an integer, got {value!r}') from None


def _read_world_info(environ: Mapping[str, str]) -> WorldInfo:
    """Parse and check the torchrun variables of ``environ``."""
    info = WorldInfo(
        world_rank=_env_int(environ, 'RANK', 0),
        world_size=_env_int(environ, 'WORLD_SIZE', 1),
        local_rank=_env_int(environ, 'LOCAL_RANK', 0),
        local_world_size=_env_int(environ, 'LOCAL_WORLD_SIZE', 1),
    )
    if info.world_size < 1:
        raise ValueError(f'WORLD_SIZE must be >= 1, got {info.world_size}')
    if not 0 <= info.world_rank < info.world_size:
        raise ValueError(
            f'RANK must be in [0, WORLD_SIZE={info.world_size}), got {info.world_rank}'
        )
    if info.local_world_size < 1:
        raise ValueError(f'LOCAL_WORLD_SIZE must be >= 1, got {info.local_world_size}')
    if not 0 <= info.local_rank < info.local_world_size:
        raise ValueError(
            f'LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE={info.local_world_size}), '
            f'got {info.local_rank}'
        )
    return info


_WORLD_INFO = _read_world_info(os.environ)


def get_world_info() -> WorldInfo:
    """Return the :class:`WorldInfo` read from the environment when this module was imported."""
    return _WORLD_INFO


# Upstream exposes the cached values as attributes of the function; keep them.
for _name, _value in (
    ('world_info', _WORLD_INFO),
    ('world_rank', _WORLD_INFO.world_rank),
    ('rank', _WORLD_INFO.world_rank),
    ('world_size', _WORLD_INFO.world_size),
    ('local_rank', _WORLD_INFO.local_rank),
    ('local_world_size', _WORLD_INFO.local_world_size),
):
    setattr(get_world_info, _name, _value)
    setattr(get_world_info, _name.upper(), _value)
del _name, _value


def get_world_rank() -> int:
    """Return the global rank of this process (``RANK``)."""
    return _WORLD_INFO.world_rank


get_rank = get_world_rank


def get_world_size() -> int:
    """Return the number of processes in the world (``WORLD_SIZE``)."""
    return _WORLD_INFO.world_size


def get_local_rank() -> int:
    """Return the rank of this process on its node (``LOCAL_RANK``)."""
    return _WORLD_INFO.local_rank


def get_local_world_size() -> int:
    """Return the number of processes on this node (``LOCAL_WORLD_SIZE``)."""
    return _WORLD_INFO.local_world_size


def get_worker_id(id: str | int | None = None) -> int:  # noqa: A002
    """Return the RPC worker id of ``id``: ints pass through, names are looked up in RPC.

    ``None`` means this worker (needs RPC to be initialised).
    """
    if isinstance(id, bool):
        raise TypeError(f'id must be a worker name, an int rank or None, got {id!r}')
    if isinstance(id, int):
        return id
    if id is not None and not isinstance(id, str):
        raise TypeError(f'id must be a worker name, an int rank or None, got {type(id).__name__}')
    return rpc.get_worker_info(id).id


def barrier(
    worker_names: Iterable[str] | None = None, *, timeout: float = rpc.api.UNSET_RPC_TIMEOUT
) -> None:
    """Block until every worker in ``worker_names`` (default: all) reaches this call.

    Unlike upstream (which logs and may wait forever), a barrier that fails, e.g. because a
    worker died or did not arrive within ``timeout`` seconds (default: the RPC timeout), raises
    ``RuntimeError``.
    """
    names = None if worker_names is None else set(worker_names)
    if names is not None and not names:
        raise ValueError('worker_names must name at least one worker')
    if timeout == rpc.api.UNSET_RPC_TIMEOUT:
        timeout = rpc.get_rpc_timeout()
    rpc.api._all_gather(None, names, timeout=timeout)  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------------
# Bounded rendezvous
# ----------------------------------------------------------------------------------------------

_rdzv_lock = threading.Lock()
_rdzv_counter = 0
_rdzv_registered = False


def _resolve_init_timeout(init_timeout: float | None) -> float:
    return resolve_seconds(init_timeout, 'init_timeout', INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT)


def _query(url: str) -> dict[str, str]:
    _, _, query = url.partition('?')
    return dict(pair.split('=', 1) for pair in query.split('&') if '=' in pair)


def _bounded_env_rendezvous(url: str, timeout: timedelta = timedelta(minutes=30), **kwargs: Any):
    """Rendezvous handler for ``torchopt-env://``: ``env://`` with a bound and named stragglers.

    Rank 0 hosts torch's :class:`~torch.distributed.TCPStore` (unless torchelastic's agent hosts
    it) without waiting for the others in the constructor; every rank then sets its own key and
    blocks in the store's :meth:`~torch.distributed.Store.wait` for all the keys, until the bound.
    On a timeout the keys that are absent name the missing ranks. (torch's own ``env://``
    handler is not bounded here: :func:`rpc.init_rpc` calls it without a timeout, so it waits the
    30-minute default; its store also cannot say which ranks are missing.)
    """
    del kwargs
    query = _query(url)
    rank = int(query['rank']) if 'rank' in query else get_world_rank()
    world_size = int(query['world_size']) if 'world_size' in query else get_world_size()
    bound = float(query.get('init_timeout', timeout.total_seconds()))
    generation = query.get('generation', '0')
    master_addr = os.environ.get('MASTER_ADDR', '')
    master_port = os.environ.get('MASTER_PORT', '')
    if not master_addr or not master_port:
        raise ValueError(
            'auto_init_rpc needs the environment variables MASTER_ADDR and MASTER_PORT '
            '(torchrun sets them)'
        )
    agent_store = os.environ.get('TORCHELASTIC_USE_AGENT_STORE', '').lower() == 'true'
    is_master = rank == 0 and not agent_store
    deadline = time.monotonic() + bound
    try:
        store = dist.TCPStore(
            master_addr,
            int(master_port),
            None,
            is_master,
            timedelta(seconds=bound),
            wait_for_workers=False,
            multi_tenant=True,
        )
    except Exception as ex:  # noqa: BLE001  # connection refused/timeout, address in use, ...
        who = 'host the rendezvous store' if is_master else 'reach the rendezvous store of rank 0'
        raise RendezvousTimeoutError(
            f'rank {rank} could not {who} at {master_addr}:{master_port} within {bound:g} s '
            f'(set by init_timeout / {INIT_TIMEOUT_ENV}); missing ranks: '
            f'{[0] if not is_master else []}. Cause: {type(ex).__name__}: {ex}'
        ) from ex
    prefix = f'torchopt/rdzv/{generation}/'
    store.set(f'{prefix}{rank}', '1')
    keys = [f'{prefix}{r}' for r in range(world_size)]
    try:  # the store's own blocking wait (server side), bounded by what is left of the bound
        store.wait(keys, timedelta(seconds=max(deadline - time.monotonic(), 1e-3)))
    except Exception as ex:  # noqa: BLE001  # DistStoreError on timeout, or the store went away
        try:
            missing = [r for r, key in enumerate(keys) if not store.check([key])]
        except Exception:  # noqa: BLE001  # the store's host (rank 0) is gone
            missing = [0]
        raise RendezvousTimeoutError(
            f'RPC rendezvous timed out after {bound:g} s (init_timeout / {INIT_TIMEOUT_ENV}) '
            f'on rank {rank}: missing ranks {missing} of world size {world_size}; '
            'they never started or cannot reach '
            f'{master_addr}:{master_port}'
        ) from ex
    yield (store, rank, world_size)
    raise RuntimeError('the torchopt-env:// rendezvous runs only once')


def _register_rendezvous() -> None:
    global _rdzv_registered  # pylint: disable=global-statement
    with _rdzv_lock:
        if not _rdzv_registered:
            from torch.distributed.rendezvous import register_rendezvous_handler  # noqa: PLC0415

            try:
                register_rendezvous_handler(_RDZV_SCHEME, _bounded_env_rendezvous)
            except RuntimeError:  # already registered (module reloaded)
                pass
            _rdzv_registered = True


def _next_generation() -> int:
    global _rdzv_counter  # pylint: disable=global-statement
    with _rdzv_lock:
        _rdzv_counter += 1
        return _rdzv_counter


def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex()]
    for name in ('lo', 'lo0'):
        if name in names:
            return name
    loops = [name for name in names if name.startswith('lo')]
    if loops:
        return loops[0]
    raise RuntimeError(f'loopback=True but no loopback interface was found among {names}')


def _is_loopback(addr: str) -> bool:
    if addr == 'localhost':
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _use_loopback() -> None:
    iface = _loopback_interface()
    os.environ.setdefault('TP_SOCKET_IFNAME', iface)
    os.environ.setdefault('GLOO_SOCKET_IFNAME', iface)
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    if not _is_loopback(os.environ['MASTER_ADDR']):
        raise ValueError(
            f'loopback=True but MASTER_ADDR={os.environ["MASTER_ADDR"]!r} is not a loopback address'
        )


def _resolve_loopback(loopback: bool | None) -> bool:
    return resolve_flag(loopback, 'loopback', LOOPBACK_ENV)


def auto_init_rpc(
    worker_init_fn: Callable[[], None] | None = None,
    worker_name_format: Callable[..., str] = default_worker_name_format,
    *,
    backend: rpc.BackendType | None = None,
    rpc_backend_options: rpc.RpcBackendOptions | None = None,
    init_timeout: float | None = None,
    loopback: bool | None = None,
    tune_malloc: bool | None = None,
    malloc_arena_max: int | None = None,
    malloc_trim_threshold: int | None = None,
    shutdown_timeout: float | None = None,
) -> Callable[[F], F]:
    """Decorator: start RPC for this world before the decorated function runs.

    When the decorated function is called it (1) joins the world with :func:`rpc.init_rpc`,
    naming this worker with ``worker_name_format``; (2) registers a graceful RPC shutdown at exit;
    (3) runs ``worker_init_fn`` between barriers; (4) calls the function.

    Args:
        worker_init_fn: Run on every worker after RPC starts, before the function.
        worker_name_format: ``f(world_rank, world_size, local_rank, local_world_size) -> str``.
        backend: The RPC backend (default TensorPipe).
        rpc_backend_options: Backend options; their ``rpc_timeout`` also bounds the barriers.
            An ``env://`` init method (the default) is replaced by the
            bounded rendezvous below; any other init method is used as given.
        init_timeout: Seconds to wait for all ranks to join; after that, every rank that is
            waiting raises :class:`RendezvousTimeoutError` naming the missing ranks. Default: the
            environment variable ``TORCHOPT_RPC_INIT_TIMEOUT``, else 300.
        loopback: Bind RPC (TensorPipe and Gloo) to the loopback interface, for single-machine
            runs. Default: the environment variable ``TORCHOPT_RPC_LOOPBACK``, else ``False``
            (interfaces are chosen by torch as usual).
        tune_malloc: Opt in to glibc malloc settings for repeated RPC work, applied to the
            whole process before RPC starts: ``malloc_arena_max=1`` and
            ``malloc_trim_threshold=1 GiB`` unless those are given. Default: the environment
            variable ``TORCHOPT_RPC_TUNE_MALLOC`` (``1`` to opt in), else ``False``: malloc is
            left alone. Measured benefit (distributed MAML, 16 tasks, MLP 64-256-256-5, 2 vCPUs;
            ``benchmarks/distributed_bench.py --backend rpc [--tune-malloc]``): the worker that
            runs the requests takes 7,900-10,200 minor page faults per meta-iteration without
            it, 17-81 with it; on an idle machine the arena cap alone took the 2-worker speed-up
            from 1.34x to 1.70-1.77x (``docs/distributed.md``, "malloc tuning").
        malloc_arena_max: Before RPC starts, cap glibc's malloc arenas at this number
            (:func:`limit_malloc_arenas`; default ``None``: not set unless ``tune_malloc``; a
            ``MALLOC_ARENA_MAX`` environment variable always wins). RPC requests run on whichever
            thread of the agent's pool is free, and with one arena per thread each request tends
            to land on memory glibc has returned to the OS (page faults per request). With one
            arena, threads that allocate at the same time take turns on its lock. This setting is
            process-wide and stays after RPC shuts down.
        malloc_trim_threshold: Before RPC starts, let glibc keep up to this many bytes of freed
            heap memory for reuse (:func:`retain_freed_memory`, which also serves blocks under
            32 MiB from the heap; default ``None``: not set unless ``tune_malloc``; a
            ``MALLOC_TRIM_THRESHOLD_`` environment variable always wins). By default glibc gives
            memory freed at the end of an iteration back to the OS and the next iteration faults
            it in again; with this setting the process's resident memory stays near its peak
            instead. Process-wide, like ``malloc_arena_max``.
        shutdown_timeout: Seconds the graceful RPC shutdown registered at exit may wait for
            the other workers to finish. Default ``None``: as long as the live ones need, as
            ``rpc.shutdown(graceful=True)`` (and upstream TorchOpt) waits, but a worker whose
            process died ends the wait (see :mod:`torchopt_distributed._shutdown`). A worker that
            reaches exit early, such as one whose work is all ``rank_zero_only``, must keep
            serving the others' calls, so a bound must be well above the longest run of work left
            on another worker; past it this worker stops serving and their calls to it fail.

    Returns:
        A decorator.
    """
    global _worker_name_format  # pylint: disable=global-statement
    if not callable(worker_name_format):
        raise TypeError('worker_name_format must be callable')
    if worker_init_fn is not None and not callable(worker_init_fn):
        raise TypeError('worker_init_fn must be callable or None')
    _worker_name_format = worker_name_format
    bound = _resolve_init_timeout(init_timeout)
    shutdown_bound = (
        None if shutdown_timeout is None else check_seconds(shutdown_timeout, 'shutdown_timeout')
    )
    use_loopback = _resolve_loopback(loopback)
    arena_max = check_positive(malloc_arena_max, 'malloc_arena_max')
    trim_threshold = check_positive(malloc_trim_threshold, 'malloc_trim_threshold')
    if resolve_flag(tune_malloc, 'tune_malloc', TUNE_MALLOC_ENV):
        arena_max = TUNED_MALLOC_ARENA_MAX if arena_max is None else arena_max
        trim_threshold = TUNED_MALLOC_TRIM_THRESHOLD if trim_threshold is None else trim_threshold

    def wrapper(func: F) -> F:
        from torch.distributed.elastic.multiprocessing.errors import record  # noqa: PLC0415

        @record
        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if use_loopback:
                _use_loopback()
            _register_rendezvous()
            if arena_max is not None:  # before init_rpc creates the agent's thread pool
                limit_malloc_arenas(arena_max)
            if trim_threshold is not None:
                retain_freed_memory(trim_threshold)
            info = get_world_info()
            options = rpc_backend_options
            if options is None:
                options = rpc.TensorPipeRpcBackendOptions()
            if getattr(options, 'init_method', None) in (None, 'env://'):
                options.init_method = (
                    f'{_RDZV_SCHEME}://?init_timeout={bound}&generation={_next_generation()}'
                )
            rpc.init_rpc(
                name=info.worker_name,
                rank=info.world_rank,
                world_size=info.world_size,
                backend=backend,
                rpc_backend_options=options,
            )
            atexit.register(shutdown_at_exit, shutdown_bound, float(options.rpc_timeout))
            barrier()
            if worker_init_fn is not None:
                worker_init_fn()
                barrier()
            return func(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return wrapper


# ----------------------------------------------------------------------------------------------
# Rank-gated functions
# ----------------------------------------------------------------------------------------------


def _check_ranks(ranks: tuple[int, ...], name: str) -> frozenset[int]:
    if not ranks:
        raise ValueError(f'{name}() needs at least one rank')
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f'{name}() takes int ranks, got {rank!r}')
    return frozenset(ranks)


def on_rank(*ranks: int) -> Callable[[F], F]:
    """Decorator: the function runs only on the given ranks and returns ``None`` elsewhere.

    The rank is read when the function is decorated.
    """
    wanted = _check_ranks(ranks, 'on_rank')

    def wrapper(func: F) -> F:
        if get_world_rank() in wanted:
            return func

        @functools.wraps(func)
        def skipped(*args: Any, **kwargs: Any) -> None:  # pylint: disable=unused-argument
            return None

        return skipped  # type: ignore[return-value]

    return wrapper


def not_on_rank(*ranks: int) -> Callable[[F], F]:
    """Decorator: the function returns ``None`` on the given ranks and runs elsewhere."""
    unwanted = _check_ranks(ranks, 'not_on_rank')
    kept = tuple(r for r in range(get_world_size()) if r not in unwanted)
    return on_rank(*(kept or (-1,)))


def rank_all(func: F) -> F:
    """Decorator: the function runs on every rank (the identity)."""
    return func


def rank_zero_only(func: F) -> F:
    """Decorator: the function runs only on rank 0 and returns ``None`` elsewhere."""
    return on_rank(0)(func)


def rank_non_zero_only(func: F) -> F:
    """Decorator: the function returns ``None`` on rank 0 and runs elsewhere."""
    return not_on_rank(0)(func)
