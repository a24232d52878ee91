"""Benchmark torchopt.distributed: distributed MAML scaling and per-call RPC overhead.

Run ``python benchmarks/distributed_bench.py`` (add ``--quick`` for a short run). It starts
worlds of real processes on 127.0.0.1 (no torchrun needed), one intra-op thread per process:

1. Distributed MAML meta-iterations on compute-bound tasks with 1 and 2 workers (rank ``r``
   pinned to CPU ``r``; ``--no-pin`` to let the OS schedule), once per ``--tasks`` value
   (default 16 and 32 tasks per meta-batch: a meta-iteration sends the same four rounds of
   messages whatever its work, so the speed-up grows with the work per call). By default one
   world of 2 processes alternates, iteration by iteration, the whole meta-batch on rank 0 (RPC
   to itself; rank 1 idles) and the meta-batch split over both ranks, so both settings see the
   same machine conditions; the table gives median times over ``--paired-iterations`` each.
   ``--separate-worlds`` instead runs ``examples/distributed/maml.py --bench`` in a world of 1
   and a world of 2, alternated over ``--rounds`` rounds (best median of each), and also times
   the meta-iterations without RPC (``local``).
   The hardware ceiling line runs two independent processes (no RPC), each the MAML share of
   half the tasks, started at the same instant: ``2 * t_alone / t_together`` bounds the
   speed-up any 2-worker implementation can reach on the machine. A summary table ends the run.
2. Per-call overhead in a world of 2: a local call, ``rpc_sync`` to itself and to the other
   worker, ``remote_sync_call`` split over both workers, and a distributed-autograd round trip.

Timings are medians of repeated calls measured inside one process (these machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ['main']

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / 'examples' / 'distributed' / 'maml.py'


# --- worker side: per-call overhead ----------------------------------------------------------


def _noop(x):
    return x


def _square_sum(x):
    return (x * x).sum()


def _minor_faults() -> int:
    """Minor page faults of this process so far (memory handed back to the OS and touched
    again shows up here, whatever the load on the machine)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _median_us(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e6 * times[len(times) // 2]


def _overhead(repeat: int) -> None:
    import torch

    import torchopt.distributed as todist

    torch.set_num_threads(1)

    @todist.rank_zero_only
    def measure():
        x = torch.randn(16)
        xg = torch.randn(16, requires_grad=True)
        rpc = todist.rpc

        def autograd_round_trip():
            with todist.autograd.context() as ctx:
                loss = todist.remote_sync_call(_square_sum, args=(xg,), reducer=todist.sum_reducer)
                todist.autograd.grad(ctx, loss, [xg])

        rows = {
            'local call': lambda: _noop(x),
            'rpc_sync to self': lambda: rpc.rpc_sync(0, _noop, args=(x,)),
            'rpc_sync to other worker': lambda: rpc.rpc_sync(1, _noop, args=(x,)),
            'remote_sync_call, 2 workers': lambda: todist.remote_sync_call(
                _noop, args=(x,), reducer=todist.sum_reducer
            ),
            'dist autograd fwd+bwd, 2 workers': autograd_round_trip,
        }
        for fn in rows.values():  # warm up
            for _ in range(20):
                fn()
        result = {name: _median_us(fn, repeat) for name, fn in rows.items()}
        print('BENCH ' + json.dumps(result), flush=True)

    todist.auto_init_rpc(init_timeout=60)(measure)()


# --- worker side: 1 and 2 workers alternated in one world --------------------------------------


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _paired(args: argparse.Namespace) -> None:
    """Rank 0 of a world of 2 runs distributed-MAML meta-iterations, alternating between the
    whole meta-batch on itself (1 worker, RPC to self; rank 1 idles) and the meta-batch split
    over both ranks, so that both settings see the same machine conditions."""
    sys.path[:0] = [str(EXAMPLE.parent), str(EXAMPLE.parent.parent)]
    from types import SimpleNamespace

    import torch
    from fewshot_digits import FewShotDigits  # examples/fewshot_digits.py
    from maml import init_params, meta_step, rpc_options  # examples/distributed/maml.py

    import torchopt
    import torchopt.distributed as todist

    torch.set_num_threads(1)
    num_tasks = args.tasks[0]
    settings = SimpleNamespace(inner_steps=args.inner_steps, inner_lr=0.4)

    @todist.rank_zero_only
    def measure() -> None:
        data = FewShotDigits(n_way=5, k_shot=1, k_query=15, split='train', seed=0)
        params = init_params([64, args.hidden, args.hidden, 5])
        meta_opt = torchopt.Adam(params, lr=1e-3)
        totals: dict[int, list[float]] = {1: [], 2: []}
        parts: dict[int, list[tuple[float, float]]] = {1: [], 2: []}  # (forward, backward)
        faults: dict[int, list[tuple[int, int]]] = {1: [], 2: []}  # (rank 0, rank 1)
        for it in range(args.warmup + args.iterations):
            for workers in (1, 2) if it % 2 == 0 else (2, 1):
                tasks = data.batch(num_tasks)
                before = (_minor_faults(), todist.rpc.rpc_sync(1, _minor_faults))
                start = time.perf_counter()
                meta_step(
                    params, meta_opt, tasks, settings, parts[workers],
                    workers=[0] if workers == 1 else None,
                )  # fmt: skip
                totals[workers].append(time.perf_counter() - start)
                after = (_minor_faults(), todist.rpc.rpc_sync(1, _minor_faults))
                faults[workers].append((after[0] - before[0], after[1] - before[1]))
        result = {}
        for workers, total in totals.items():
            total, part = total[args.warmup :], parts[workers][args.warmup :]
            result[str(workers)] = {
                'median_s': _median(total),
                'min_s': min(total),
                'forward_s': _median([f for f, _ in part]),
                'backward_s': _median([b for _, b in part]),
                'iterations': len(total),
                'faults': [_median([f[r] for f in faults[workers][args.warmup :]]) for r in (0, 1)],
            }
        print('BENCH ' + json.dumps(result), flush=True)

    todist.auto_init_rpc(rpc_backend_options=rpc_options(args.rpc_transport), init_timeout=60)(
        measure
    )()


# --- worker side: collective backend, 1 and 2 processes alternated in one world ----------------


def _collective_paired(args: argparse.Namespace) -> None:
    """Both ranks of a gloo world of 2 alternate, iteration by iteration, the whole meta-batch on
    rank 0 alone (its gradients all-reduced over a group of one, as in a world of one; rank 1
    waits at the next barrier) and the meta-batch split over both ranks with the gradients summed
    in :func:`todist.all_reduce_gradients`. Each setting has its own parameters and Adam state.
    A barrier starts every timed meta-iteration; after it, one more all-reduce of the same
    gradients, timed after a barrier, gives the communication alone."""
    sys.path[:0] = [str(EXAMPLE.parent), str(EXAMPLE.parent.parent)]
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from fewshot_digits import FewShotDigits  # examples/fewshot_digits.py
    from maml import init_params, local_meta_backward  # examples/distributed/maml.py

    import torchopt
    import torchopt.distributed as todist

    torch.set_num_threads(1)
    if os.environ.get('TORCHOPT_RPC_TUNE_MALLOC'):  # --tune-malloc: auto_init_rpc's settings
        from torchopt_distributed.world import limit_malloc_arenas, retain_freed_memory

        limit_malloc_arenas(1)
        retain_freed_memory(1 << 30)
    todist.init_process_group('gloo', timeout=300)
    rank = dist.get_rank()
    solo = dist.new_group([0])
    settings = SimpleNamespace(inner_steps=args.inner_steps, inner_lr=0.4)
    num_tasks = args.tasks[0]
    data = FewShotDigits(n_way=5, k_shot=1, k_query=15, split='train', seed=0)
    params = {w: init_params([64, args.hidden, args.hidden, 5]) for w in (1, 2)}
    opts = {w: torchopt.Adam(params[w], lr=1e-3) for w in (1, 2)}
    keys = ('total', 'compute', 'allreduce', 'comm', 'faults', 'cpu')
    times: dict[int, dict[str, list[float]]] = {w: {k: [] for k in keys} for w in (1, 2)}

    def step(workers: int, tasks, record: bool) -> None:
        faults, cpu = _minor_faults(), time.process_time()
        start = time.perf_counter()
        local = tasks if workers == 1 else todist.shard_tasks(tasks)
        opts[workers].zero_grad()
        local_meta_backward(params[workers], local, settings, num_tasks)
        computed = time.perf_counter()
        group = solo if workers == 1 else None
        todist.all_reduce_gradients(params[workers], op='sum', group=group, poll=args.poll)
        reduced = time.perf_counter()
        opts[workers].step()
        done = time.perf_counter()
        sample = {
            'total': done - start, 'compute': computed - start, 'allreduce': reduced - computed,
            'faults': _minor_faults() - faults, 'cpu': time.process_time() - cpu,
        }  # fmt: skip
        dist.barrier(group)
        begin = time.perf_counter()
        todist.all_reduce_gradients(params[workers], op='sum', group=group, poll=args.poll)
        sample['comm'] = time.perf_counter() - begin
        if record:
            for key, value in sample.items():
                times[workers][key].append(value)

    # Settings alternate in blocks of --block meta-iterations; the first of a block is not timed
    # (with blocks > 1): rank 1 has just been idle through the other setting, and the first
    # meta-iteration after idling ran 7-13 ms slower on this VM than in continuous training.
    block = args.block
    timed = max(block - 1, 1)
    rounds = -(-(args.warmup + args.paired_iterations) // timed)
    for it in range(rounds):
        for workers in (1, 2) if it % 2 == 0 else (2, 1):
            for k in range(block):
                tasks = data.batch(num_tasks)  # the same tasks on both ranks
                dist.barrier()
                if workers == 2 or rank == 0:
                    step(workers, tasks, record=block == 1 or k > 0)
    gathered: list[Any] = [None, None]
    mine = {k: _median(times[2][k][args.warmup :]) for k in ('compute', 'faults', 'cpu')}
    dist.all_gather_object(gathered, mine)
    if rank != 0:
        todist.destroy_process_group()
        return
    result: dict[str, Any] = {
        str(w): {k: _median(v[args.warmup :]) for k, v in row.items()} for w, row in times.items()
    }
    for w in (1, 2):
        result[str(w)]['min_s'] = min(times[w]['total'][args.warmup :])
        result[str(w)]['iterations'] = len(times[w]['total']) - args.warmup
    result['2']['compute_by_rank'] = gathered
    numel = sum(p.numel() for p in params[2])
    result['grad_bytes'] = numel * params[2][0].element_size()
    print('BENCH ' + json.dumps(result), flush=True)
    todist.destroy_process_group()


# --- orchestrator -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _ceiling(
    start_at: float, seconds: float, share: int, hidden: int, inner_steps: int, per_task: bool
) -> None:
    """One process of the hardware-ceiling measurement: the MAML share of ``share`` tasks
    (forward and backward, no communication) in a loop, from ``start_at`` for ``seconds``; with
    ``per_task`` one backward per task, as the collective backend does, else one backward of the
    summed losses, as the RPC backend does."""
    sys.path[:0] = [str(EXAMPLE.parent), str(EXAMPLE.parent.parent)]
    from types import SimpleNamespace

    import torch
    from fewshot_digits import FewShotDigits  # examples/fewshot_digits.py
    from maml import init_params, local_meta_backward, task_losses  # examples/distributed/maml.py

    torch.set_num_threads(1)
    settings = SimpleNamespace(inner_steps=inner_steps, inner_lr=0.4)
    data = FewShotDigits(n_way=5, k_shot=1, k_query=15, split='train', seed=0)
    params = init_params([64, hidden, hidden, 5])
    while time.time() < start_at:
        time.sleep(0.001)
    times = []
    end = time.time() + seconds
    while time.time() < end:
        tasks = data.batch(share)
        start = time.perf_counter()
        if per_task:
            local_meta_backward(params, tasks, settings, share)
        else:
            task_losses.__wrapped__(params, *tasks, inner_steps, 0.4)[0].backward()
        times.append(time.perf_counter() - start)
    times.sort()
    print('BENCH ' + json.dumps({'median_s': times[len(times) // 2]}), flush=True)


def _world(
    cmd: list[str], size: int, timeout: float, pin: bool = False, every_rank: bool = False
) -> Any:
    port = _free_port()
    procs = []
    cpus = sorted(os.sched_getaffinity(0))
    for rank in range(size):
        env = dict(
            os.environ, RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(size), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
            TP_SOCKET_IFNAME='lo', GLOO_SOCKET_IFNAME='lo', OMP_NUM_THREADS='1',
        )  # fmt: skip
        env.pop('TORCHELASTIC_USE_AGENT_STORE', None)
        cpu = {cpus[rank % len(cpus)]}
        procs.append(
            subprocess.Popen(  # noqa: S603
                [sys.executable, *cmd],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                preexec_fn=(lambda cpu=cpu: os.sched_setaffinity(0, cpu)) if pin else None,
            )  # fmt: skip
        )
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            if proc.returncode != 0:
                raise RuntimeError(f'{cmd} rank failed ({proc.returncode}):\n{err[-3000:]}')
            outs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.communicate()
    results = []
    for rank, out in enumerate(outs if every_rank else outs[:1]):
        lines = [line for line in out.splitlines() if line.startswith('BENCH ')]
        if not lines:
            raise RuntimeError(f'no BENCH line from rank {rank} of {cmd}')
        results.append(json.loads(lines[0][len('BENCH ') :]))
    return results if every_rank else results[0]


def _ms(seconds: float | None) -> str:
    return '-' if seconds is None else f'{1e3 * seconds:.1f}'


def _separate_worlds(args: argparse.Namespace, tasks: int) -> tuple[dict, dict, tuple, str]:
    """The example's ``--bench`` mode in a world of 1 and a world of 2, alternated over
    ``--rounds`` rounds (best median of each); the world of 1 also times the meta-iterations
    without RPC."""
    maml = [
        str(EXAMPLE), '--backend', 'rpc', '--bench', '--iterations', str(args.iterations),
        '--warmup', '2',
        '--tasks', str(tasks), '--hidden', str(args.hidden), '--inner-steps',
        str(args.inner_steps), '--k-query', '15', '--eval-tasks', '2',
        '--rpc-transport', args.rpc_transport,
    ]  # fmt: skip
    best: dict[int, dict] = {}
    for _ in range(args.rounds):
        for workers in (1, 2):
            result = _world(maml, workers, timeout=600, pin=args.pin)
            if workers not in best or result['median_s'] < best[workers]['median_s']:
                best[workers] = result
    one, two = best[1], best[2]
    rows = (('local, no RPC', one['local']), ('1 worker (RPC to self)', one), ('2 workers', two))
    method = (
        f'separate worlds, best of {args.rounds} rounds, median of {one["iterations"]} iterations'
    )
    return one, two, rows, method


def _collective_table(args: argparse.Namespace, tasks: int) -> tuple[float, float, float]:
    """The collective backend's table for ``tasks`` tasks (1 vs 2 processes, paired) and the
    hardware ceiling; returns the 1- and 2-process medians and the ceiling speed-up."""
    result = _world(
        [__file__, '--backend', 'collective', '--role', 'collective-paired', '--tasks',
         str(tasks), '--paired-iterations', str(args.paired_iterations), '--warmup', '2',
         '--hidden', str(args.hidden), '--inner-steps', str(args.inner_steps),
         '--block', str(args.block),
         '--poll' if args.poll else '--no-poll'],
        2, timeout=600, pin=args.pin,
    )  # fmt: skip
    one, two = result['1'], result['2']
    print(
        f'Collective MAML meta-iteration ({tasks} tasks of 5-way 1-shot rotated digits, '
        f'MLP 64-{args.hidden}-{args.hidden}-5, {args.inner_steps} inner steps; gloo on '
        f'127.0.0.1, {"polling" if args.poll else "blocking"} all-reduce wait; '
        f'{len(os.sched_getaffinity(0))} CPUs, '
        f'{"one pinned per rank" if args.pin else "unpinned"}; 1 and 2 processes alternated in '
        f'one world of 2 in blocks of {args.block} meta-iterations'
        f'{" (the first of each untimed)" if args.block > 1 else ""}, '
        f'median of {one["iterations"]} meta-iterations each; gradients '
        f'{result["grad_bytes"] / 1024:.0f} KiB)'
    )
    print(
        f'| {"setting":<22} | {"median (ms)":>11} | {"min (ms)":>9} | {"speed-up":>8} '
        f'| {"fwd+bwd (ms)":>12} | {"all-reduce in step (ms)":>23} | {"comm alone (ms)":>15} |'
    )
    print(f'|{"-" * 24}|{"-" * 13}|{"-" * 11}|{"-" * 10}|{"-" * 14}|{"-" * 25}|{"-" * 17}|')
    for name, row in (('1 process', one), ('2 processes', two)):
        print(
            f'| {name:<22} | {1e3 * row["total"]:>11.1f} | {1e3 * row["min_s"]:>9.1f} | '
            f'{one["total"] / row["total"]:>7.2f}x | {1e3 * row["compute"]:>12.1f} | '
            f'{1e3 * row["allreduce"]:>23.2f} | {1e3 * row["comm"]:>15.2f} |'
        )
    by_rank = ', '.join(f'{1e3 * r["compute"]:.1f}' for r in two['compute_by_rank'])
    faults = ' / '.join(str(r['faults']) for r in two['compute_by_rank'])
    print(
        f'2 processes: fwd+bwd of the 8-task shares by rank {by_rank} ms; the all-reduce in the '
        'step includes waiting for the slower rank, "comm alone" is one all-reduce of the same '
        'gradients after a barrier.'
    )
    print(
        f'Minor page faults per meta-iteration (median): 1 process {one["faults"]}, '
        f'2 processes {faults} (rank 0 / rank 1)'
    )
    cpus = [r['cpu'] for r in two['compute_by_rank']]
    print(
        f'CPU time per meta-iteration (process, median): 1 process {1e3 * one["cpu"]:.1f} ms, '
        f'2 processes {" / ".join(f"{1e3 * c:.1f}" for c in cpus)} ms (rank 0 / rank 1) -> '
        f'{one["cpu"] / max(cpus):.2f}x in CPU time (what the wall-clock speed-up approaches on '
        'an idle machine, less the communication latency)'
    )
    ceiling = _ceiling_line(args, tasks, per_task=True)
    print()
    return one['total'], two['total'], ceiling


def _ceiling_line(args: argparse.Namespace, tasks: int, per_task: bool = False) -> float:
    """Print the hardware-ceiling line (two independent processes, no communication), each
    running its share the way the backend measured does (``per_task``: one backward per task)."""
    share, seconds = max(tasks // 2, 1), 2.0 if args.quick else 4.0

    def ceiling_cmd() -> list[str]:  # all processes start computing at the same moment
        return [
            __file__, '--role', 'ceiling', '--start-at', str(time.time() + 10), '--seconds',
            str(seconds), '--tasks', str(share), '--hidden', str(args.hidden),
            '--inner-steps', str(args.inner_steps), *(['--per-task'] if per_task else []),
        ]  # fmt: skip

    alone = _world(ceiling_cmd(), 1, timeout=120, pin=args.pin, every_rank=True)[0]['median_s']
    both = _world(ceiling_cmd(), 2, timeout=120, pin=args.pin, every_rank=True)
    slowest = max(r['median_s'] for r in both)
    print(
        f'Hardware ceiling (no communication): one {share}-task share (fwd+bwd) '
        f'{1e3 * alone:.1f} ms alone, {1e3 * slowest:.1f} ms while another process runs one -> '
        f'at most {2 * alone / slowest:.2f}x for 2 processes on this machine'
    )
    return 2 * alone / slowest


def _maml_table(args: argparse.Namespace, tasks: int) -> tuple[float, float, float]:
    """Time distributed MAML with ``tasks`` tasks per meta-batch on 1 and 2 workers; print the
    table and the machine's 2-worker ceiling for the same work.

    Returns:
        The 1-worker and 2-worker median meta-iteration times (s) and the ceiling speed-up.
    """
    if args.separate_worlds:
        one, two, rows, method = _separate_worlds(args, tasks)
    else:
        result = _world(
            [__file__, '--role', 'paired', '--tasks', str(tasks), '--iterations',
             str(args.paired_iterations), '--warmup', '2', '--hidden', str(args.hidden),
             '--inner-steps', str(args.inner_steps), '--rpc-transport', args.rpc_transport],
            2, timeout=600, pin=args.pin,
        )  # fmt: skip
        one, two = result['1'], result['2']
        rows = (('1 worker (RPC to self)', one), ('2 workers', two))
        method = (
            f'1 and 2 workers alternated in one world of 2, median of {one["iterations"]} '
            'meta-iterations each'
        )
    print(
        f'Distributed MAML meta-iteration ({tasks} tasks of 5-way 1-shot rotated digits, '
        f'MLP 64-{args.hidden}-{args.hidden}-5, {args.inner_steps} inner steps; '
        f'transport {args.rpc_transport}; {len(os.sched_getaffinity(0))} CPUs, '
        f'{"one pinned per rank" if args.pin else "unpinned"}; {method})'
    )
    print(
        f'| {"setting":<28} | {"median (ms)":>11} | {"min (ms)":>9} | {"speed-up":>8} '
        f'| {"fwd (ms)":>8} | {"bwd (ms)":>8} |'
    )
    print(f'|{"-" * 30}|{"-" * 13}|{"-" * 11}|{"-" * 10}|{"-" * 10}|{"-" * 10}|')
    for name, row in rows:
        print(
            f'| {name:<28} | {1e3 * row["median_s"]:>11.1f} | {1e3 * row["min_s"]:>9.1f} | '
            f'{one["median_s"] / row["median_s"]:>7.2f}x | '
            f'{_ms(row.get("forward_s")):>8} | {_ms(row.get("backward_s")):>8} |'
        )
    if 'faults' in two:
        print(
            'Minor page faults per meta-iteration (median; rank 0 / rank 1): '
            f'1 worker {one["faults"][0]} / {one["faults"][1]}, '
            f'2 workers {two["faults"][0]} / {two["faults"][1]} '
            f'(malloc tuning {"on" if os.environ.get("TORCHOPT_RPC_TUNE_MALLOC") else "off"})'
        )
    ceiling = _ceiling_line(args, tasks)
    print()
    return one['median_s'], two['median_s'], ceiling


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument(
        '--backend', choices=['rpc', 'collective'], default='rpc',
        help='RPC (parallelize + distributed autograd) or collectives (all-reduced gradients)',
    )  # fmt: skip
    parser.add_argument(
        '--tune-malloc', action='store_true',
        help='opt in to auto_init_rpc glibc malloc tuning (TORCHOPT_RPC_TUNE_MALLOC=1); the '
        'collective workers apply the same settings',
    )  # fmt: skip
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument(
        '--iterations', type=int, default=12, help='per world and round (--separate-worlds)'
    )
    parser.add_argument(
        '--paired-iterations', type=int, default=40,
        help='meta-iterations per setting when 1 and 2 workers alternate in one world',
    )  # fmt: skip
    parser.add_argument(
        '--separate-worlds', action='store_true',
        help='time 1 worker in a world of 1 and 2 workers in a world of 2 (separate runs, '
        'alternated over --rounds) instead of alternating them in one world',
    )  # fmt: skip
    parser.add_argument('--warmup', type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument(
        '--tasks', type=int, nargs='+', default=[16, 32],
        help='tasks per meta-batch; one table per value (more tasks: more compute per RPC)',
    )  # fmt: skip
    parser.add_argument('--hidden', type=int, default=256)
    parser.add_argument('--inner-steps', type=int, default=5)
    parser.add_argument('--repeat', type=int, default=300)
    parser.add_argument('--rpc-transport', choices=['default', 'tcp'], default='default')
    parser.add_argument('--role', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--start-at', type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument('--seconds', type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument('--per-task', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument(
        '--poll', action=argparse.BooleanOptionalAction, default=True,
        help="collective: all_reduce_gradients(poll=True), a polling wait for the all-reduce "
        '(--no-poll: the blocking wait)',
    )  # fmt: skip
    parser.add_argument(
        '--block', type=int, default=4,
        help='collective: the settings alternate in blocks of this many meta-iterations, the '
        'first of each block untimed (1: alternate every meta-iteration, all timed)',
    )  # fmt: skip
    parser.add_argument(
        '--pin', action=argparse.BooleanOptionalAction, default=True,
        help='pin rank r to CPU r (mod the CPUs this process may use); --no-pin lets the OS '
        'place them',
    )  # fmt: skip
    parser.add_argument('--skip-overhead', action='store_true', help='only the MAML table')
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error(f'--block must be >= 1, got {args.block}')
    if args.role == 'overhead':
        _overhead(args.repeat)
        return
    if args.role == 'paired':
        _paired(args)
        return
    if args.role == 'collective-paired':
        _collective_paired(args)
        return
    if args.role == 'ceiling':
        share, hidden, steps = args.tasks[0], args.hidden, args.inner_steps
        _ceiling(args.start_at, args.seconds, share, hidden, steps, args.per_task)
        return
    if args.quick:
        args.rounds, args.iterations, args.paired_iterations, args.repeat = 1, 6, 8, 100
        args.tasks = args.tasks[:1]

    if args.tune_malloc:
        os.environ['TORCHOPT_RPC_TUNE_MALLOC'] = '1'
    print(f'load before: {_load()}')
    table = _collective_table if args.backend == 'collective' else _maml_table
    rows = {tasks: table(args, tasks) for tasks in args.tasks}
    print(f'Summary ({args.backend}): 2-process speed-up against the work per meta-iteration')
    print(
        f'| {"tasks per meta-batch":<20} | {"1 worker (ms)":>13} | {"2 workers (ms)":>14} '
        f'| {"speed-up":>8} | {"ceiling":>7} | {"of ceiling":>10} |'
    )
    print(f'|{"-" * 22}|{"-" * 15}|{"-" * 16}|{"-" * 10}|{"-" * 9}|{"-" * 12}|')
    for tasks, (one, two, ceiling) in rows.items():
        print(
            f'| {tasks:<20} | {1e3 * one:>13.1f} | {1e3 * two:>14.1f} | {one / two:>7.2f}x '
            f'| {ceiling:>6.2f}x | {100 * one / two / ceiling:>9.0f}% |'
        )
    if not args.skip_overhead and args.backend == 'rpc':
        _overhead_table(args)
    print(f'load after: {_load()}')
    for tasks, (one, two, ceiling) in rows.items():
        where = f' [{tasks} tasks]' if len(rows) > 1 else ''
        print(f'speed-up 2 vs 1 processes: {one / two:.2f}x (ceiling {ceiling:.2f}x){where}')


def _load() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews the timings)."""
    try:
        return ' '.join(f'{x:.2f}' for x in os.getloadavg()) + f' on {os.cpu_count()} CPUs'
    except OSError:
        return 'unknown'


def _overhead_table(args: argparse.Namespace) -> None:
    """The RPC per-call overhead table (world of 2)."""
    print()
    over = _world([__file__, '--role', 'overhead', '--repeat', str(args.repeat)], 2, timeout=300)
    base = over['local call']
    print(f'Per-call overhead (world of 2, 16-float tensor, median of {args.repeat} calls)')
    print(f'| {"call":<34} | {"median (us)":>11} | {"vs local":>9} |')
    print(f'|{"-" * 36}|{"-" * 13}|{"-" * 11}|')
    for name, value in over.items():
        print(f'| {name:<34} | {value:>11.1f} | {value / base:>8.0f}x |')


if __name__ == '__main__':
    main()
