"""Distributed MAML on rotated digits (40 classes, 5-way 1-shot) with torchopt.distributed.

Run with ``torchrun --nproc_per_node 2 examples/distributed/maml.py --quick`` and
``--backend collective`` (the default) or ``--backend rpc``.

``--backend collective`` (torch.distributed collectives; gloo on CPU, NCCL on GPU): every rank
holds the same meta-parameters and draws the same meta-batch, takes its contiguous share of the
tasks (``todist.shard_tasks``), adapts and back-propagates its share of the mean query loss
locally, and the meta-gradients are summed over the ranks in bucketed all-reduces
(``todist.all_reduce_gradients(params, op='sum')``) before every rank takes the same Adam step.

``--backend rpc`` (torch.distributed.rpc, TorchOpt's API): rank 0 owns the meta-parameters of a
small MLP and samples a meta-batch of tasks. The meta-batch is split along the task dimension
over every worker (rank 0 included); each worker adapts the parameters on its tasks' support
sets with a differentiable SGD inner loop (``torchopt.sgd``) and returns the summed query
losses. The losses are summed across workers and the meta-gradient flows back to rank 0 through
distributed autograd:

.. math::

    \\theta \\leftarrow \\mathrm{Adam}\\Big(\\nabla_\\theta \\frac{1}{T}\\sum_{t=1}^{T}
        \\mathcal{L}^{\\mathrm{qry}}_t\\big(\\theta - \\alpha \\nabla_\\theta
        \\mathcal{L}^{\\mathrm{spt}}_t(\\theta)\\big)\\Big)

(with ``--inner-steps`` steps instead of one). Rank 0 writes the plot ``outputs/maml.png`` (or
``--out DIR``): meta-train query loss and accuracy per meta-iteration, with the meta-test
accuracy before and after. ``--bench`` prints one JSON line of timings instead (no plot), used by
``benchmarks/distributed_bench.py --separate-worlds`` (RPC backend).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import torchopt
import torchopt.distributed as todist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import add_common_args, output_dir, progress, pyplot  # noqa: E402  (examples/common.py)
from fewshot_digits import FewShotDigits  # noqa: E402  (examples/fewshot_digits.py)

__all__ = [
    'init_params',
    'forward',
    'adapt_and_evaluate',
    'task_losses',
    'meta_step',
    'rpc_options',
    'local_task_losses',
    'local_meta_backward',
    'collective_meta_step',
    'train_collective',
    'main',
]

torch.set_num_threads(1)


def init_params(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Kaiming-uniform MLP parameters ``[w1, b1, w2, b2, ...]`` for layer ``sizes``."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = (6.0 / fan_in) ** 0.5
        params.append(
            ((torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound).requires_grad_()
        )
        params.append(torch.zeros(fan_out, requires_grad=True))
    return params


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP: ReLU hidden layers, linear output (logits)."""
    for i in range(0, len(params) - 2, 2):
        x = torch.relu(x @ params[i] + params[i + 1])
    return x @ params[-2] + params[-1]


def adapt_and_evaluate(
    params: list[torch.Tensor],
    x_spt: torch.Tensor,
    y_spt: torch.Tensor,
    x_qry: torch.Tensor,
    y_qry: torch.Tensor,
    inner_steps: int,
    inner_lr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt ``params`` on one task's support set; return (query loss, query accuracy)."""
    optim = torchopt.sgd(lr=inner_lr)
    state = optim.init(params)
    fast = tuple(params)
    for _ in range(inner_steps):
        loss = F.cross_entropy(forward(fast, x_spt), y_spt)
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        updates, state = optim.update(grads, state, inplace=False)
        fast = torchopt.apply_updates(fast, updates, inplace=False)
    logits = forward(fast, x_qry)
    accuracy = (logits.argmax(-1) == y_qry).double().mean()
    return F.cross_entropy(logits, y_qry), accuracy


# params, inner_steps and inner_lr go whole to every worker; the task tensors are split.
_BROADCAST = (0, 5, 6)


@todist.parallelize(
    partitioner=todist.dim_partitioner(broadcast=_BROADCAST), reducer=todist.sum_reducer
)
def task_losses(
    params: list[torch.Tensor],
    x_spt: torch.Tensor,
    y_spt: torch.Tensor,
    x_qry: torch.Tensor,
    y_qry: torch.Tensor,
    inner_steps: int,
    inner_lr: float,
) -> torch.Tensor:
    """On one worker: ``[sum of query losses, sum of query accuracies]`` over its tasks."""
    losses, accs = [], []
    for t in range(x_spt.shape[0]):
        loss, acc = adapt_and_evaluate(
            params, x_spt[t], y_spt[t], x_qry[t], y_qry[t], inner_steps, inner_lr
        )
        losses.append(loss)
        accs.append(acc.to(loss.dtype))
    return torch.stack([torch.stack(losses).sum(), torch.stack(accs).sum().detach()])


def meta_step(
    params, meta_opt, tasks, args, timings: list | None = None, workers: list[int] | None = None
) -> tuple[float, float]:
    """One distributed meta-iteration; returns (mean query loss, mean query accuracy).

    ``workers`` limits the shares to these ranks (default: every rank of the world), e.g.
    ``[0]`` for the whole meta-batch on rank 0 in a larger world (used by the benchmark).
    """
    num_tasks = tasks.x_support.shape[0]
    start = time.perf_counter()
    meta_opt.zero_grad()
    with todist.autograd.context() as context_id:
        if workers is None:
            out = task_losses(params, *tasks, args.inner_steps, args.inner_lr)
        else:
            out = todist.remote_sync_call(
                task_losses.__wrapped__, args=(params, *tasks, args.inner_steps, args.inner_lr),
                partitioner=todist.dim_partitioner(broadcast=_BROADCAST, workers=workers),
                reducer=todist.sum_reducer,
            )  # fmt: skip
        loss = out[0] / num_tasks
        forward_done = time.perf_counter()
        todist.autograd.backward(context_id, loss)
        backward_done = time.perf_counter()
    meta_opt.step()
    if timings is not None:
        timings.append((forward_done - start, backward_done - forward_done))
    return loss.item(), out[1].item() / num_tasks


def evaluate(params, data, args, num_tasks: int) -> float:
    """Mean query accuracy after adaptation on held-out classes (distributed, no meta-grad)."""
    tasks = data.batch(num_tasks)
    out = task_losses(
        [p.detach().requires_grad_() for p in params], *tasks, args.inner_steps, args.inner_lr
    )
    return out[1].item() / num_tasks


@todist.rank_zero_only
def train(args: argparse.Namespace) -> dict[str, float]:
    """Meta-train on rank 0, fanning the tasks out to all workers; returns the headline numbers."""
    torch.manual_seed(args.seed)
    train_data = FewShotDigits(
        n_way=5, k_shot=1, k_query=args.k_query, split='train', seed=args.seed
    )
    test_data = FewShotDigits(n_way=5, k_shot=1, k_query=args.k_query, split='test', seed=args.seed)
    params = init_params([64, *[args.hidden] * args.layers, 5], seed=args.seed)
    meta_opt = torchopt.Adam(params, lr=args.meta_lr)
    world = todist.get_world_size()
    print(f'distributed MAML: {world} worker(s), {args.tasks} tasks per meta-batch', flush=True)
    before = evaluate(params, test_data, args, args.eval_tasks)
    times: list[float] = []
    parts: list[tuple[float, float]] = []
    curve: list[tuple[float, float]] = []
    for it in progress(range(1, args.iterations + 1), 'meta-train'):
        tasks = train_data.batch(args.tasks)
        start = time.perf_counter()
        loss, acc = meta_step(params, meta_opt, tasks, args, parts)
        times.append(time.perf_counter() - start)
        curve.append((loss, acc))
        if not args.bench and (it % args.log_every == 0 or it == args.iterations):
            print(f'iter {it:4d}  query loss {loss:.4f}  query acc {acc:.3f}', flush=True)
    after = evaluate(params, test_data, args, args.eval_tasks)
    print(f'meta-test accuracy (5-way 1-shot): {before:.3f} before, {after:.3f} after', flush=True)
    if not args.bench:
        print(f'plot written to {plot(curve, before, after, world, args)}', flush=True)
    if args.bench:
        result = {'workers': world, **_summary(times[args.warmup :])}
        result['forward_s'] = _summary([f for f, _ in parts[args.warmup :]])['median_s']
        result['backward_s'] = _summary([b for _, b in parts[args.warmup :]])['median_s']
        if world == 1:  # the same meta-iterations without RPC, for the overhead
            local = []
            for _ in range(args.iterations):
                tasks = train_data.batch(args.tasks)
                start = time.perf_counter()
                meta_opt.zero_grad()
                out = task_losses.__wrapped__(params, *tasks, args.inner_steps, args.inner_lr)
                (out[0] / args.tasks).backward()
                meta_opt.step()
                local.append(time.perf_counter() - start)
            result['local'] = _summary(local[args.warmup :])
        print('BENCH ' + json.dumps(result), flush=True)
    return {'before': before, 'after': after, 'train_loss': curve[-1][0], 'train_acc': curve[-1][1]}


def local_task_losses(params, tasks, args) -> torch.Tensor:
    """``[sum of query losses, sum of query accuracies]`` over ``tasks`` (zeros if none)."""
    if tasks.x_support.shape[0] == 0:  # more ranks than tasks: an empty share
        return params[0].new_zeros(2)
    return task_losses.__wrapped__(params, *tasks, args.inner_steps, args.inner_lr)


def local_meta_backward(params, tasks, args, num_tasks: int) -> torch.Tensor:
    """Back-propagate ``(query loss of each task) / num_tasks`` into ``params[i].grad``, task by
    task; return the detached ``[sum of query losses, sum of query accuracies]``.

    The same gradients as one backward of the summed losses, but only one task's unrolled graph
    is alive at a time: the memory of a meta-iteration no longer grows with the tasks per rank,
    and two ranks on one machine do not compete for cache and memory bandwidth with whole
    meta-batch graphs (``benchmarks/distributed_bench.py`` measures it).
    """
    sums = params[0].new_zeros(2)
    for t in range(tasks.x_support.shape[0]):
        loss, acc = adapt_and_evaluate(
            params, tasks.x_support[t], tasks.y_support[t], tasks.x_query[t], tasks.y_query[t],
            args.inner_steps, args.inner_lr,
        )  # fmt: skip
        (loss / num_tasks).backward()
        sums += torch.stack([loss.detach(), acc.to(loss.dtype)])
    return sums


def collective_meta_step(params, meta_opt, tasks, args, device=None) -> tuple[torch.Tensor, float]:
    """One meta-iteration of the collective backend on this rank.

    ``tasks`` is the whole meta-batch (the same on every rank); this rank adapts on its share and
    back-propagates ``(query loss of each task) / T`` (:func:`local_meta_backward`), and the
    gradients are summed over the ranks: the mean over all ``T`` tasks whatever the shard sizes.

    Returns:
        This rank's ``[loss sum, accuracy sum]`` (detached) and the seconds spent in the
        gradient all-reduce.
    """
    num_tasks = tasks.x_support.shape[0]
    local = todist.shard_tasks(tasks)
    if device is not None:
        local = type(local)(*(part.to(device) for part in local))
    meta_opt.zero_grad()
    out = local_meta_backward(params, local, args, num_tasks)
    start = time.perf_counter()
    todist.all_reduce_gradients(params, op='sum', poll=getattr(args, 'poll', False))
    comm = time.perf_counter() - start
    meta_opt.step()
    return out, comm


def _global_sums(local: torch.Tensor) -> torch.Tensor:
    total = local.clone()
    dist.all_reduce(total)
    return total


def evaluate_collective(params, data, args, num_tasks: int, device=None) -> float:
    """Mean query accuracy after adaptation on held-out classes, each rank its share."""
    local = todist.shard_tasks(data.batch(num_tasks))
    if device is not None:
        local = type(local)(*(part.to(device) for part in local))
    detached = [p.detach().requires_grad_() for p in params]
    return _global_sums(local_task_losses(detached, local, args).detach())[1].item() / num_tasks


def train_collective(args: argparse.Namespace) -> dict[str, float] | None:
    """Meta-train on every rank of the world; rank 0 prints, plots and returns the numbers."""
    backend = todist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device('cuda', torch.cuda.current_device()) if backend == 'nccl' else None
    torch.manual_seed(args.seed)  # the same data and parameters on every rank
    train_data = FewShotDigits(
        n_way=5, k_shot=1, k_query=args.k_query, split='train', seed=args.seed
    )
    test_data = FewShotDigits(n_way=5, k_shot=1, k_query=args.k_query, split='test', seed=args.seed)
    params = init_params([64, *[args.hidden] * args.layers, 5], seed=args.seed)
    if device is not None:
        params = [p.detach().to(device).requires_grad_() for p in params]
    meta_opt = torchopt.Adam(params, lr=args.meta_lr)
    if rank == 0:
        print(f'distributed MAML ({backend} collectives): {world} worker(s), '
              f'{args.tasks} tasks per meta-batch', flush=True)  # fmt: skip
    before = evaluate_collective(params, test_data, args, args.eval_tasks, device)
    times: list[float] = []
    comms: list[float] = []
    curve: list[tuple[float, float]] = []
    iterations: Iterable[int] = range(1, args.iterations + 1)
    if rank == 0:
        iterations = progress(iterations, 'meta-train')
    for it in iterations:
        tasks = train_data.batch(args.tasks)
        start = time.perf_counter()
        local, comm = collective_meta_step(params, meta_opt, tasks, args, device)
        times.append(time.perf_counter() - start)
        comms.append(comm)
        sums = _global_sums(local)  # for the log only
        loss, acc = sums[0].item() / args.tasks, sums[1].item() / args.tasks
        curve.append((loss, acc))
        if rank == 0 and not args.bench and (it % args.log_every == 0 or it == args.iterations):
            print(f'iter {it:4d}  query loss {loss:.4f}  query acc {acc:.3f}', flush=True)
    after = evaluate_collective(params, test_data, args, args.eval_tasks, device)
    todist.destroy_process_group()  # barrier, then release the group and join its threads
    if rank != 0:
        return None
    print(f'meta-test accuracy (5-way 1-shot): {before:.3f} before, {after:.3f} after', flush=True)
    if args.bench:
        result = {'workers': world, **_summary(times[args.warmup :])}
        result['allreduce_s'] = _summary(comms[args.warmup :])['median_s']
        print('BENCH ' + json.dumps(result), flush=True)
    else:
        print(f'plot written to {plot(curve, before, after, world, args)}', flush=True)
    return {'before': before, 'after': after, 'train_loss': curve[-1][0], 'train_acc': curve[-1][1]}


def plot(
    curve: list[tuple[float, float]],
    before: float,
    after: float,
    world: int,
    args: argparse.Namespace,
) -> Path:
    """Write ``maml.png`` (rank 0): meta-train query loss and accuracy, meta-test accuracy."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    its = range(1, len(curve) + 1)
    ax_loss.plot(its, [c[0] for c in curve])
    ax_loss.set_ylabel('mean query loss after adaptation')
    ax_acc.plot(its, [c[1] for c in curve], label='meta-train tasks')
    ax_acc.axhline(before, color='C1', ls=':', label=f'meta-test, before: {before:.3f}')
    ax_acc.axhline(after, color='C2', ls='--', label=f'meta-test, after: {after:.3f}')
    ax_acc.axhline(0.2, color='k', lw=0.8, ls='-.', label='chance')
    ax_acc.set_ylabel('query accuracy after adaptation')
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel('meta-iteration')
    fig.suptitle(
        f'distributed MAML ({args.backend}), 5-way 1-shot rotated digits, {world} worker(s), '
        f'{args.tasks} tasks per meta-batch'
    )
    fig.tight_layout()
    path = output_dir(args.out) / 'maml.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _summary(times: list[float]) -> dict[str, float]:
    steady = sorted(times)
    return {'median_s': steady[len(steady) // 2], 'min_s': steady[0], 'iterations': len(steady)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    add_common_args(parser, __file__)
    parser.add_argument(
        '--backend', choices=['collective', 'rpc'], default='collective',
        help='torch.distributed collectives (all-reduced meta-gradients) or RPC (TorchOpt API)',
    )  # fmt: skip
    parser.add_argument('--bench', action='store_true', help='print timings as JSON')
    parser.add_argument('--iterations', type=int, default=300)
    parser.add_argument('--tasks', type=int, default=16, help='tasks per meta-batch')
    parser.add_argument('--k-query', type=int, default=5)
    parser.add_argument('--inner-steps', type=int, default=2)
    parser.add_argument('--inner-lr', type=float, default=0.4)
    parser.add_argument('--meta-lr', type=float, default=3e-3)
    parser.add_argument('--hidden', type=int, default=64)
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--eval-tasks', type=int, default=64)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--log-every', type=int, default=25)
    parser.add_argument(
        '--rpc-transport', choices=['default', 'tcp'], default='default',
        help="TensorPipe transport: torch's default (shared memory on one host) or TCP only",
    )  # fmt: skip
    parser.add_argument(
        '--poll', action='store_true',
        help='collective: wait for the all-reduce by polling (all_reduce_gradients(poll=True)); '
        'faster on virtual machines when every rank has a core of its own',
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = min(args.iterations, 20)
        args.eval_tasks, args.log_every = 16, 5
    if args.tasks < 1 or args.iterations <= args.warmup and args.bench:
        parser.error('--tasks must be >= 1 and --iterations > --warmup with --bench')
    return args


def rpc_options(transport: str) -> todist.rpc.TensorPipeRpcBackendOptions | None:
    """TensorPipe options for ``--rpc-transport``: ``None`` (torch's default: shared memory on
    one host) for ``'default'``, TCP with the basic channel for ``'tcp'``."""
    if transport == 'tcp':
        return todist.rpc.TensorPipeRpcBackendOptions(_transports=['uv'], _channels=['basic'])
    return None


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    """Join the torchrun world and meta-train; rank 0 returns the headline numbers."""
    args = parse_args(argv)
    if args.backend == 'collective':
        return train_collective(args)
    return todist.auto_init_rpc(rpc_backend_options=rpc_options(args.rpc_transport))(train)(args)


if __name__ == '__main__':
    main()
