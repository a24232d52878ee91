"""Worlds of the collective path (gloo on 127.0.0.1); each rank prints ``RESULT <json>`` lines.

Modes (``argv[1]``):

* ``grads N [N ...]``: float64 MAML meta-gradients averaged over the world, for meta-batches of
  each size ``N``, three ways (a MetaOptimizer on a module; the functional API with
  ``inplace=False``; the sum convention ``op='sum'``), each against the one-process result
  computed in this process. Reports the largest absolute difference per check, and whether all
  ranks hold bit-identical averaged gradients.
* ``ddp N``: the same for a module wrapped in ``DistributedDataParallel`` (inner loop on
  ``ddp.module``), plus an outer SGD step that must leave the replicas identical.
* ``idle T``: join the world (timeout ``T`` s) and leave; launched with a rank missing, the
  ranks that did start must fail within the bound.
* ``teardown HOW``: the end of a run that used to abort at exit now and then (SIGABRT,
  ``terminate called without an active exception``): ``torch._dynamo`` and DDP imported after
  the group exists (they capture it through ``torch.distributed.nn.functional``), a DDP model,
  and a collective on Python tensors just before leaving. ``HOW``: ``helper`` (the library's
  init and :func:`destroy_process_group`), ``torch-init`` (``dist.init_process_group`` with
  the library's destroy), ``torch-destroy`` (the library's init, ``dist.destroy_process_group``),
  ``exit`` (no destroy at all: the library's exit hook), ``ddp-alive`` (destroy while a DDP model
  is still referenced: a warning). Reports the gloo worker threads left after the teardown.
* ``dies T`` / ``stalls T``: process-group timeout ``T`` s; rank 1 exits abruptly (``dies``) or
  sleeps (``stalls``) instead of joining an all-reduce; the other ranks report the error they
  get and how long it took.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
import warnings
from datetime import timedelta

import torch
from torch import nn

import torchopt
import torchopt.distributed as todist

torch.set_num_threads(1)
DIST = torch.distributed
INNER_STEPS = 2


def report(**fields):
    fields.setdefault('rank', DIST.get_rank() if DIST.is_initialized() else -1)
    print('RESULT ' + json.dumps(fields), flush=True)


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def task(index: int):
    """Task ``index``: a random linear-plus-sine regression (support, query), float64."""
    gen = torch.Generator().manual_seed(1000 + index)
    w = torch.randn(3, 1, generator=gen, dtype=torch.float64)
    x_spt, x_qry = (torch.randn(6, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    return x_spt, torch.sin(x_spt @ w), x_qry, torch.sin(x_qry @ w)


def mse(pred, target):
    return ((pred - target) ** 2).mean()


def module_meta_grads(net: nn.Module, indices, scale: float) -> None:
    """MAML with a MetaOptimizer on ``net``: accumulate ``scale * d(query loss)/d(theta)``."""
    inner = torchopt.MetaSGD(net, lr=0.3, momentum=0.5)
    net_state = torchopt.extract_state_dict(net, by='reference', detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner, by='reference')
    for index in indices:
        x_spt, y_spt, x_qry, y_qry = task(index)
        for _ in range(INNER_STEPS):
            inner.step(mse(net(x_spt), y_spt))
        (scale * mse(net(x_qry), y_qry)).backward()
        torchopt.recover_state_dict(net, net_state)
        torchopt.recover_state_dict(inner, opt_state)


def functional_meta_grads(params: list[torch.Tensor], indices, scale: float) -> None:
    """MAML with ``torchopt.adam`` (functional, ``inplace=False``) on a tensor list."""

    def forward(p, x):
        return torch.tanh(x @ p[0] + p[1]) @ p[2] + p[3]

    for index in indices:
        x_spt, y_spt, x_qry, y_qry = task(index)
        optim = torchopt.adam(lr=0.05)
        fast = tuple(params)
        state = optim.init(fast)
        for _ in range(INNER_STEPS):
            grads = torch.autograd.grad(mse(forward(fast, x_spt), y_spt), fast, create_graph=True)
            updates, state = optim.update(grads, state, inplace=False)
            fast = torchopt.apply_updates(fast, updates, inplace=False)
        (scale * mse(forward(fast, x_qry), y_qry)).backward()


def functional_params(seed: int = 0) -> list[torch.Tensor]:
    net = make_net(seed)
    return [
        net[0].weight.detach().t().clone().requires_grad_(),
        net[0].bias.detach().clone().requires_grad_(),
        net[2].weight.detach().t().clone().requires_grad_(),
        net[2].bias.detach().clone().requires_grad_(),
    ]


def max_diff(params, reference) -> float:
    return max((p.grad - r.grad).abs().max().item() for p, r in zip(params, reference))


def identical_on_all_ranks(params) -> bool:
    """Whether every rank holds bit-identical gradients (all-gathered and compared)."""
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    gathered = [torch.empty_like(flat) for _ in range(DIST.get_world_size())]
    DIST.all_gather(gathered, flat)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def check_grads(sizes: list[int]) -> None:
    for n in sizes:
        local = todist.shard_tasks(n)
        k = len(local)
        # 1. MetaOptimizer on a module, gradient of the local mean, weighted average.
        ref = make_net()
        module_meta_grads(ref, range(n), 1.0 / n)
        net = make_net()
        module_meta_grads(net, local, 1.0 / k if k else 0.0)
        total = todist.average_meta_gradients(net, k)
        params, ref_params = list(net.parameters()), list(ref.parameters())
        report(check=f'module_mean_n{n}', tasks=k, total=total,
               diff=max_diff(params, ref_params), same=identical_on_all_ranks(params))  # fmt: skip
        # 2. Functional API, inplace=False, gradient of the local mean, weighted average.
        ref_f = functional_params()
        functional_meta_grads(ref_f, range(n), 1.0 / n)
        par_f = functional_params()
        functional_meta_grads(par_f, local, 1.0 / k if k else 0.0)
        total = todist.average_meta_gradients(par_f, k)
        report(check=f'functional_mean_n{n}', tasks=k, total=total,
               diff=max_diff(par_f, ref_f), same=identical_on_all_ranks(par_f))  # fmt: skip
        # 3. Sum convention: local losses divided by the global count, then summed.
        par_s = functional_params()
        functional_meta_grads(par_s, local, 1.0 / n)
        divisor = todist.all_reduce_gradients(par_s, op='sum', bucket_cap_mb=1e-3)  # 1 KiB buckets
        report(check=f'functional_sum_n{n}', tasks=k, total=divisor,
               diff=max_diff(par_s, ref_f), same=identical_on_all_ranks(par_s))  # fmt: skip
        # 4. The same with the polling wait.
        par_p = functional_params()
        functional_meta_grads(par_p, local, 1.0 / n)
        divisor = todist.all_reduce_gradients(par_p, op='sum', bucket_cap_mb=1e-3, poll=True)
        report(check=f'functional_poll_sum_n{n}', tasks=k, total=divisor,
               diff=max_diff(par_p, ref_f), same=identical_on_all_ranks(par_p))  # fmt: skip


def check_zero_total() -> None:
    """Every rank with an empty share: a clear error on every rank, not a division by zero."""
    try:
        todist.average_meta_gradients(make_net(), 0)
    except ValueError as ex:
        report(check='zero_total', error=str(ex))
    else:
        report(check='zero_total', error=None)


def check_ddp(n: int) -> None:
    ref = make_net(seed=0)
    module_meta_grads(ref, range(n), 1.0 / n)
    # Each rank starts from different parameters; DDP broadcasts rank 0's (seed 0) at wrap time.
    ddp = nn.parallel.DistributedDataParallel(make_net(seed=DIST.get_rank()))
    local = todist.shard_tasks(n)
    k = len(local)
    module_meta_grads(todist.unwrap_model(ddp), local, 1.0 / k if k else 0.0)
    total = todist.average_meta_gradients(ddp, k)
    params = list(ddp.parameters())
    diff = max_diff(params, list(ref.parameters()))
    report(check=f'ddp_mean_n{n}', tasks=k, total=total, diff=diff,
           same=identical_on_all_ranks(params))  # fmt: skip
    torch.optim.SGD(ddp.parameters(), lr=0.1).step()
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    gathered = [torch.empty_like(flat) for _ in range(DIST.get_world_size())]
    DIST.all_gather(gathered, flat)
    ref_flat = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    report(check='ddp_step', tasks=k, total=total,
           diff=(flat - ref_flat).abs().max().item(),
           same=all(torch.equal(g, gathered[0]) for g in gathered))  # fmt: skip


def check_failure(mode: str, poll: bool) -> None:
    net = make_net()
    module_meta_grads(net, todist.shard_tasks(4), 0.25)
    todist.average_meta_gradients(net, len(todist.shard_tasks(4)))  # one that works
    if DIST.get_rank() == 1:
        if mode == 'dies':
            os._exit(9)
        time.sleep(3 * float(sys.argv[2]) + 5)  # well past the others' timeout
        os._exit(9)
    began = time.monotonic()
    try:
        todist.average_meta_gradients(net, 1, poll=poll)
    except Exception as ex:  # noqa: BLE001
        report(error=f'{type(ex).__name__}: {ex}'[:500], call_time=time.monotonic() - began)
        sys.stdout.flush()
        os._exit(3)  # a broken process group cannot be torn down cleanly; leave at once
    report(error=None, call_time=time.monotonic() - began)


def gloo_threads() -> list[str] | None:
    """Names of this process's gloo worker threads (None where /proc is not available)."""
    try:
        tasks = os.listdir('/proc/self/task')
    except OSError:
        return None
    names = []
    for tid in tasks:
        try:
            with open(f'/proc/self/task/{tid}/comm') as comm:
                names.append(comm.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(n for n in names if n.startswith(('pt_gloo', 'gloo')))


def teardown(how: str) -> None:
    rank = int(os.environ['RANK'])
    if how == 'exit':  # atexit runs last-in first-out: this reports after the library's hook
        import atexit

        atexit.register(lambda: print('RESULT ' + json.dumps(
            {'rank': rank, 'check': 'teardown', 'threads': gloo_threads(), 'warning': None}
        ), flush=True))  # fmt: skip
    if how == 'torch-init':
        DIST.init_process_group('gloo', init_method='env://', timeout=timedelta(seconds=60))
    else:
        todist.init_process_group('gloo', timeout=60.0)
    import torch._dynamo  # noqa: F401  (imports torch.distributed.nn.functional)

    ddp = nn.parallel.DistributedDataParallel(make_net(seed=rank))
    module_meta_grads(todist.unwrap_model(ddp), todist.shard_tasks(4), 0.25)
    todist.average_meta_gradients(ddp, len(todist.shard_tasks(4)))
    identical_on_all_ranks(list(ddp.parameters()))  # an all_gather on Python tensors, last
    if how != 'ddp-alive':
        del ddp
    if how == 'exit':
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        if how == 'torch-destroy':
            DIST.destroy_process_group()
        else:
            todist.destroy_process_group()
    report(rank=rank, check='teardown', threads=gloo_threads(),
           warning=str(caught[0].message) if caught else None)  # fmt: skip


def main() -> None:
    faulthandler.dump_traceback_later(120, exit=True)
    mode = sys.argv[1]
    if mode == 'teardown':
        teardown(sys.argv[2])
        return
    timeout = float(sys.argv[2]) if mode in ('dies', 'stalls', 'idle') else 60.0
    began = time.monotonic()
    try:
        todist.init_process_group('gloo', timeout=timeout)
    except Exception as ex:  # noqa: BLE001
        report(error=f'{type(ex).__name__}: {ex}'[:500], call_time=time.monotonic() - began)
        sys.stdout.flush()
        os._exit(3)
    if mode == 'grads':
        check_grads([int(n) for n in sys.argv[2:]])
        check_zero_total()
    elif mode == 'ddp':
        check_ddp(int(sys.argv[2]))
    elif mode in ('dies', 'stalls'):
        check_failure(mode, poll=sys.argv[3:] == ['poll'])
    elif mode == 'idle':
        report(error=None, call_time=time.monotonic() - began)
    else:
        raise SystemExit(f'unknown mode {mode!r}')
    todist.destroy_process_group()


if __name__ == '__main__':
    main()
