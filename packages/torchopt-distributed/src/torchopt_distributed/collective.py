"""Task-parallel meta-learning on :mod:`torch.distributed` collectives (no RPC).

Every process of a ``torchrun`` world holds the same meta-parameters, takes its share of the
meta-batch of tasks (:func:`shard_tasks`), runs the inner loops of its tasks locally
(MetaOptimizers, the functional API, :mod:`torch.func`), back-propagates its share of the outer
loss, and then averages the meta-gradients over the world in bucketed all-reduces
(:func:`average_meta_gradients` / :func:`all_reduce_gradients`) before every process takes the
same outer step. Works on every backend (gloo on CPU, NCCL on GPU: the buffers live where the
gradients live).

Example (``torchrun --nproc_per_node 2 train.py``)::

    import torchopt.distributed as todist

    todist.init_process_group()                    # gloo on CPU, NCCL when CUDA is available
    net = Net()                                    # the same initial parameters on every rank
    for tasks in loader:                           # the same meta-batch on every rank
        local = todist.shard_tasks(tasks)          # this rank's tasks
        meta_opt.zero_grad()
        for task in local:
            ...                                    # inner loop, query loss / len(local)
            loss.backward()
        todist.average_meta_gradients(net, len(local))  # = the one-process mean over tasks
        meta_opt.step()
    todist.destroy_process_group()                 # barrier, release the group, join threads

Models wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`: DDP's reducer cannot
follow the double backward of an unrolled inner loop (PyTorch issue #63929), so run the inner
and outer forward passes on ``ddp.module`` (:func:`unwrap_model`) -- DDP's reducer then stays
idle, as it only arms itself in ``ddp.forward`` -- and let :func:`average_meta_gradients` reduce
the gradients of ``ddp`` (it unwraps it). DDP still broadcasts rank 0's parameters and buffers
when it is constructed; buffers (e.g. batch-norm statistics) are not synchronised afterwards.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from torchopt_distributed import world
from torchopt_distributed._sharding import _check_index, shard_bounds, shard_tasks

__all__ = [
    'COLLECTIVE_TIMEOUT_ENV',
    'DEFAULT_COLLECTIVE_TIMEOUT',
    'init_process_group',
    'destroy_process_group',
    'shard_bounds',
    'shard_tasks',
    'unwrap_model',
    'all_reduce_gradients',
    'average_meta_gradients',
]

#: Environment variable giving the default ``timeout`` of :func:`init_process_group` (seconds).
COLLECTIVE_TIMEOUT_ENV = 'TORCHOPT_DIST_TIMEOUT'
#: ``timeout`` (seconds) of :func:`init_process_group` when neither argument nor variable is set.
DEFAULT_COLLECTIVE_TIMEOUT = 300.0
#: What a polling wait does between checks: hand the CPU to any other runnable thread.
_yield_cpu = getattr(os, 'sched_yield', None) or (lambda: time.sleep(0))

#: Default bucket size of :func:`all_reduce_gradients` (as DDP's ``bucket_cap_mb``).
DEFAULT_BUCKET_CAP_MB = 25.0


def _is_ddp(module: Any) -> bool:
    return isinstance(module, nn.parallel.DistributedDataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return ``model.module`` for a ``DistributedDataParallel`` model, else ``model``.

    Run inner loops (and the outer forward) on the unwrapped module: DDP's reducer arms itself
    only in ``ddp.forward``, so it stays out of the double backward it cannot handle.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    return cast(nn.Module, model.module) if _is_ddp(model) else model


def init_process_group(
    backend: str | None = None,
    *,
    timeout: float | None = None,
    loopback: bool | None = None,
) -> str:
    """Join the ``torchrun`` world as the default process group (``init_method='env://'``).

    Outside ``torchrun`` (``WORLD_SIZE`` unset or 1, no ``MASTER_ADDR``/``MASTER_PORT``) the
    process is a world of one, backed by an in-memory store.

    Args:
        backend: ``'gloo'``, ``'nccl'``, ... Default: ``'nccl'`` when CUDA and NCCL are available
            (each process then uses GPU ``LOCAL_RANK``), else ``'gloo'``.
        timeout: Seconds that the rendezvous waits for a missing rank and that a collective waits
            for a rank that does not take part (gloo raises; NCCL's watchdog aborts the process).
            Default: the environment variable ``TORCHOPT_DIST_TIMEOUT``, else 300 (torch's own
            default is 30 minutes for gloo).
        loopback: Bind gloo (and NCCL's bootstrap) to the loopback interface, for single-machine
            runs. Default: the environment variable ``TORCHOPT_RPC_LOOPBACK``, else ``False``.

    Returns:
        The backend used.

    Raises:
        RuntimeError: the default process group is already initialised.

    The group is left by :func:`destroy_process_group`; if the program exits without calling it,
    an :mod:`atexit` hook destroys the group (locally, without a barrier) before the interpreter
    shuts down, so that gloo's worker threads are joined while they can still take the GIL (see
    :func:`destroy_process_group`). ``torch.distributed.nn.functional`` is imported first: imported
    after the group exists (as ``torch._dynamo`` and DDP do), its functions would capture the
    group as a default argument and keep it, and its threads, alive after it is destroyed.
    """
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f'backend must be a str or None, got {backend!r}')
    seconds = world.resolve_seconds(
        timeout, 'timeout', COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT
    )
    use_loopback = world.resolve_flag(loopback, 'loopback', world.LOOPBACK_ENV)
    if not dist.is_available():
        raise RuntimeError('torch.distributed is not available in this build of torch')
    if dist.is_initialized():
        raise RuntimeError('the default process group is already initialized')
    if backend is None:
        backend = 'nccl' if torch.cuda.is_available() and dist.is_nccl_available() else 'gloo'
    if use_loopback:
        world._use_loopback()  # pylint: disable=protected-access
        os.environ.setdefault('NCCL_SOCKET_IFNAME', os.environ['GLOO_SOCKET_IFNAME'])
    info = world.get_world_info()
    kwargs: dict[str, Any] = {'init_method': 'env://'}
    if info.world_size == 1 and not (
        os.environ.get('MASTER_ADDR') or os.environ.get('MASTER_PORT')
    ):
        kwargs = {'store': dist.HashStore()}  # a world of one outside torchrun: no sockets
    if 'nccl' in backend and torch.cuda.is_available():
        device = torch.device('cuda', info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        kwargs['device_id'] = device
    _import_functional_before_init()
    dist.init_process_group(
        backend,
        rank=info.world_rank,
        world_size=info.world_size,
        timeout=timedelta(seconds=seconds),
        **kwargs,
    )
    global _OWN_GROUP, _EXIT_HOOK_REGISTERED  # noqa: PLW0603
    _OWN_GROUP = weakref.ref(dist.group.WORLD)
    if not _EXIT_HOOK_REGISTERED:
        atexit.register(_destroy_at_exit)
        _EXIT_HOOK_REGISTERED = True
    return backend


# ----------------------------------------------------------------------------------------------
# Leaving the world
# ----------------------------------------------------------------------------------------------
#
# Why this is more than ``dist.destroy_process_group()``: a gloo worker thread drops its
# reference to a finished collective's Work (and so to the tensors it holds, whose Python
# objects need the GIL to be released) only *after* the Work is marked complete, i.e. possibly
# after the caller has moved on. If the interpreter is already finalising when that happens, the
# thread's attempt to take the GIL ends it with ``pthread_exit``, whose forced unwind through a
# ``noexcept`` frame calls ``std::terminate``: the process aborts (SIGABRT, "terminate called
# without an active exception") after it has done all its work. Destroying the process group
# joins those threads, but only if nothing else keeps the group alive: ``torch.distributed.nn.
# functional``, when imported after the group was created (``torch._dynamo`` and DDP import
# it), holds it as the default ``group`` argument of ten functions.

_OWN_GROUP: weakref.ReferenceType[Any] | None = None
_EXIT_HOOK_REGISTERED = False
_FUNCTIONAL = 'torch.distributed.nn.functional'


def _import_functional_before_init() -> None:
    if _FUNCTIONAL in sys.modules or dist.is_initialized():
        return
    try:
        __import__(_FUNCTIONAL)  # its defaults then capture ``group.WORLD`` while it is None
    except ImportError:  # pragma: no cover - a torch build without it
        pass


def _forget_destroyed_groups() -> None:
    """Reset stale ``group`` defaults of ``torch.distributed.nn.functional`` to ``None``.

    ``None`` means the default group at call time; a default that holds a (now destroyed)
    process group would keep it, and its threads, alive.
    """
    module = sys.modules.get(_FUNCTIONAL)
    if module is None:
        return
    for value in vars(module).values():
        defaults = getattr(value, '__defaults__', None)
        if getattr(value, '__module__', None) != _FUNCTIONAL or not defaults:
            continue
        if any(isinstance(d, dist.ProcessGroup) for d in defaults):
            value.__defaults__ = tuple(
                None if isinstance(d, dist.ProcessGroup) else d for d in defaults
            )


def _destroy(group_ref: weakref.ReferenceType[Any]) -> bool:
    """Destroy every process group; whether the default one is gone (its threads joined)."""
    dist.destroy_process_group()
    _forget_destroyed_groups()
    if group_ref() is not None:
        gc.collect()  # e.g. a dropped DistributedDataParallel model in a reference cycle
    return group_ref() is None


def _still_alive_warning() -> None:
    warnings.warn(
        'the destroyed default process group is still referenced (e.g. by a '
        'DistributedDataParallel model that is still alive), so its worker threads outlive '
        'destroy_process_group; a process that exits right after a collective can then abort '
        '(std::terminate). Drop such references (del ddp) before destroy_process_group.',
        RuntimeWarning,
        stacklevel=3,
    )


def destroy_process_group(*, barrier: bool = True) -> None:
    """Leave the world: wait for every rank, destroy the process groups, join their threads.

    Call it once every rank is done with its collectives (the counterpart of
    :func:`init_process_group`; it also works for a group made by
    :func:`torch.distributed.init_process_group`). Unlike ``dist.destroy_process_group()`` alone,
    it makes sure that the default group is really released -- its gloo worker threads joined --
    before the program goes on to exit: a worker thread that is still releasing the last
    collective's tensors when the interpreter shuts down aborts the process (``terminate called
    without an active exception``). To that end it resets the default ``group`` argument of
    ``torch.distributed.nn.functional``'s functions when they hold the destroyed group (they
    capture it when that module is imported after the group was created) to ``None``, which is
    what they hold when imported before, and collects garbage if the group is still alive.

    Args:
        barrier: First wait until every rank reaches this call (``dist.barrier()``, bounded by the
            group's timeout), so that no rank leaves while another still communicates with it.
            Pass ``False`` when a rank may be gone (after a failed collective).

    Warns:
        RuntimeWarning: the group is still referenced after it was destroyed (e.g. by a
            ``DistributedDataParallel`` model that is still alive): delete those first.
    """
    if not isinstance(barrier, bool):
        raise TypeError(f'barrier must be True or False, got {barrier!r}')
    if not (dist.is_available() and dist.is_initialized()):
        return
    if barrier and dist.get_world_size() > 1:
        dist.barrier()
    if not _destroy(weakref.ref(dist.group.WORLD)):
        _still_alive_warning()


def _destroy_at_exit() -> None:
    """Destroy the group made by :func:`init_process_group` if the program did not.

    No barrier: this also runs when a rank leaves with an exception.
    """
    own = _OWN_GROUP() if _OWN_GROUP is not None else None
    if own is None or not dist.is_initialized() or dist.group.WORLD is not own:
        return
    del own
    if not _destroy(weakref.ref(dist.group.WORLD)):
        _still_alive_warning()


# ----------------------------------------------------------------------------------------------
# Sharding the meta-batch
# ----------------------------------------------------------------------------------------------


def _parameters(params_or_module: Any) -> list[torch.Tensor]:
    """The tensors whose ``.grad`` is reduced, in a deterministic order, without duplicates."""
    if isinstance(params_or_module, nn.Module):
        candidates: Iterable[Any] = unwrap_model(params_or_module).parameters()
    elif isinstance(params_or_module, torch.Tensor):
        candidates = [params_or_module]
    elif isinstance(params_or_module, Iterable) and not isinstance(params_or_module, (str, bytes)):
        candidates = []
        for item in params_or_module:
            if isinstance(item, Mapping) and 'params' in item:  # an optimizer's param group
                group = item['params']
                candidates.extend([group] if isinstance(group, torch.Tensor) else group)
            else:
                candidates.append(item)
    else:
        raise TypeError(
            'params_or_module must be a torch.nn.Module (DDP-wrapped or not), a tensor or an '
            f'iterable of tensors / param groups, got {type(params_or_module).__name__}'
        )
    params, seen = [], set()
    for param in candidates:
        if not isinstance(param, torch.Tensor):
            raise TypeError(f'params_or_module must hold tensors, got {type(param).__name__}')
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            params.append(param)
    return params


def _buckets(grads: list[torch.Tensor], cap_bytes: float) -> list[list[int]]:
    """Indices of ``grads`` grouped by (device, dtype), then cut into buckets of <= cap bytes."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, grad in enumerate(grads):
        groups.setdefault((grad.device, grad.dtype), []).append(i)
    buckets = []
    for indices in groups.values():
        bucket: list[int] = []
        size = 0
        for i in indices:
            nbytes = grads[i].numel() * grads[i].element_size()
            if bucket and size + nbytes > cap_bytes:
                buckets.append(bucket)
                bucket, size = [], 0
            bucket.append(i)
            size += nbytes
        buckets.append(bucket)
    return buckets


def all_reduce_gradients(
    params_or_module: Any,
    *,
    op: str = 'mean',
    weight: float | None = None,
    group: Any = None,
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
    poll: bool = False,
) -> float:
    """All-reduce the ``.grad`` of parameters across the processes of ``group``, in buckets.

    Gradients are grouped by (device, dtype) and flattened into buckets of at most
    ``bucket_cap_mb`` MiB (a larger tensor gets a bucket of its own); every bucket's all-reduce
    is started asynchronously and then awaited, and the results are copied back into ``.grad``.
    A parameter with ``requires_grad=True`` and no gradient takes part with zeros (and gets a
    zero ``.grad``), so that a rank with no tasks still joins the collective; parameters with
    ``requires_grad=False`` are skipped. Every rank must pass the same parameters in the same
    order (the same model).

    Args:
        params_or_module: A module (a :class:`~torch.nn.parallel.DistributedDataParallel` one is
            unwrapped), a tensor, or an iterable of tensors or optimizer param groups.
        op: ``'mean'`` (default) or ``'sum'``.
        weight: With ``op='mean'``, this rank's weight ``w_r`` (e.g. its number of tasks when its
            gradient is the mean over its tasks): the result is ``sum_r w_r g_r / sum_r w_r``,
            the total weight travelling in the same bucket. ``None``: ``sum_r g_r / world_size``.
        group: The process group (default: the default group).
        bucket_cap_mb: Bucket size in MiB (default 25, as DDP).
        poll: Wait for the all-reduces by polling their completion, giving the CPU away between
            polls (``os.sched_yield``), instead of blocking in the backend's wait. A blocked
            thread is woken by the backend's I/O thread when the last peer's data arrives, and
            on a virtual machine that wake-up can take milliseconds (2-3 ms per gloo all-reduce
            measured on a 2-vCPU VM; ``docs/distributed.md``). Polling keeps the CPU busy while
            this rank waits for the others, so use it when every rank has a core of its own.

    Returns:
        The divisor applied: ``1.0`` for ``'sum'``, the world size, or the total weight.

    Raises:
        ValueError: a bad ``op``/``weight``/``bucket_cap_mb``, a sparse gradient, or a total
            weight of zero.
    """
    if op not in ('mean', 'sum'):
        raise ValueError(f"op must be 'mean' or 'sum', got {op!r}")
    if weight is not None:
        if op != 'mean':
            raise ValueError("weight is only meaningful with op='mean'")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f'weight must be a number or None, got {weight!r}')
        if not weight >= 0 or weight == float('inf'):
            raise ValueError(f'weight must be finite and >= 0, got {weight!r}')
    if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)):
        raise TypeError(f'bucket_cap_mb must be a number, got {bucket_cap_mb!r}')
    if not bucket_cap_mb > 0:
        raise ValueError(f'bucket_cap_mb must be > 0, got {bucket_cap_mb!r}')
    if not isinstance(poll, bool):
        raise TypeError(f'poll must be True or False, got {poll!r}')
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            'all_reduce_gradients needs an initialized process group '
            '(torchopt.distributed.init_process_group() or torch.distributed.init_process_group)'
        )
    params = _parameters(params_or_module)
    grads = []
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param, memory_format=torch.preserve_format)
        if param.grad.is_sparse:
            raise ValueError('all_reduce_gradients does not reduce sparse gradients')
        grads.append(param.grad)
    world_size = dist.get_world_size(group)
    weighted = weight is not None
    if world_size == 1:  # nothing to exchange: sum_r w_r g_r / sum_r w_r = g
        if weighted:
            _check_total(float(weight))  # type: ignore[arg-type]
            return float(weight)  # type: ignore[arg-type]
        return 1.0
    if not grads:
        if not weighted:
            return 1.0 if op == 'sum' else float(world_size)
        total = _all_reduce_scalar(float(weight), group)  # type: ignore[arg-type]
        _check_total(total)
        return total
    buckets = _buckets(grads, bucket_cap_mb * (1 << 20))
    flats, works = [], []
    for b, indices in enumerate(buckets):
        parts = [grads[i].reshape(-1) for i in indices]
        if weighted and b == 0:  # the total weight travels with the first bucket
            parts.append(torch.ones(1, dtype=parts[0].dtype, device=parts[0].device))
        flat = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
        if weight is not None and weight != 1:
            flat.mul_(weight)
        flats.append(flat)
        works.append(dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group, async_op=True))
    _wait(works, poll)
    if op == 'sum':
        divisor = 1.0
    elif weighted:
        divisor = float(flats[0][-1].item())
        _check_total(divisor)
    else:
        divisor = float(world_size)
    for flat, indices in zip(flats, buckets):
        if divisor != 1.0:
            flat.div_(divisor)
        offset = 0
        for i in indices:
            numel = grads[i].numel()
            grads[i].copy_(flat[offset : offset + numel].view_as(grads[i]))
            offset += numel
    return divisor


def _wait(works: list[Any], poll: bool) -> None:
    """Wait for ``works``, then collect their errors.

    With ``poll``, spin on their completion first, yielding the CPU between checks (the
    backend's I/O thread that completes them may need this very CPU).
    """
    if poll:
        for work in works:
            while not work.is_completed():
                _yield_cpu()
    for work in works:
        work.wait()


def _all_reduce_scalar(value: float, group: Any) -> float:
    device = torch.device('cpu')
    if dist.get_backend(group) == dist.Backend.NCCL:
        device = torch.device('cuda', torch.cuda.current_device())
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return float(tensor.item())


def _check_total(total: float) -> None:
    if not total > 0:
        raise ValueError(
            f'the weights of all ranks sum to {total!r}: no rank had a task (weight) to average'
        )


def average_meta_gradients(
    params_or_module: Any,
    num_local_tasks: int,
    *,
    group: Any = None,
    bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
    poll: bool = False,
) -> int:
    """Make ``.grad`` the mean meta-gradient over every task of every rank.

    Each rank's ``.grad`` must be the gradient of the *mean* outer loss over its own
    ``num_local_tasks`` tasks (``0`` for an empty share, whose gradients may be ``None``). The
    result, ``sum_r n_r g_r / sum_r n_r``, is the one-process mean over the whole meta-batch
    whatever the shard sizes (equal to it up to floating-point summation order). One
    bucketed all-reduce (:func:`all_reduce_gradients` with ``weight=num_local_tasks``; ``poll``
    as there).

    Returns:
        The number of tasks over all ranks.
    """
    num_local_tasks = _check_index(num_local_tasks, 'num_local_tasks')
    if num_local_tasks < 0:
        raise ValueError(f'num_local_tasks must be >= 0, got {num_local_tasks}')
    total = all_reduce_gradients(
        params_or_module,
        weight=num_local_tasks,
        group=group,
        bucket_cap_mb=bucket_cap_mb,
        poll=poll,
    )
    return int(round(total))
