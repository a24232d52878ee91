"""One world, many checks: rank 0 compares distributed results with serial references.

Run as every rank of a world (see ``_world.launch``). Rank 0 writes ``{check: 'ok' | error}`` as
JSON to the path in ``argv[1]``; the other ranks only serve RPCs.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch

import torchopt
import torchopt.distributed as todist

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
TOL = {'rtol': 1e-12, 'atol': 1e-12}


# --- remote functions (module level: RPC sends them by name) ----------------------------------


@todist.parallelize(partitioner=todist.dim_partitioner(broadcast=(1,)), reducer=todist.sum_reducer)
def sq_loss_sum(x, w):
    return (x @ w).pow(2).sum()


@todist.parallelize()  # batch partitioner, mean reducer by default
def row_mean(x):
    return x.sin().mean(0)


@todist.parallelize(
    partitioner=todist.dim_partitioner(dim=0, exclusive=True, keepdim=False, broadcast=('w',)),
    reducer=todist.mean_reducer,
)
def per_sample(x, w):
    return (x @ w).pow(2)


@todist.parallelize(partitioner=todist.dim_partitioner(dim=-1), reducer=todist.sum_reducer)
def split_matmul(x, v):
    return x @ v.T


@todist.parallelize(partitioner=todist.TensorDimensionPartitioner(1, exclusive=True))
def column_sums(x):
    return x.sum()


@todist.parallelize_async(partitioner=todist.dim_partitioner(exclusive=True))
def where_am_i(x):
    return (todist.get_world_rank(), x.shape[0], tuple(todist.get_world_info()))


def whoami():
    info = todist.get_world_info()
    return (todist.get_rank(), info.world_size, info.worker_name, todist.get_worker_id())


def fail(message):
    raise ValueError(message)


@todist.parallelize(partitioner=todist.dim_partitioner(broadcast=(0,)), reducer=todist.sum_reducer)
def maml_query_loss(params, x_spt, y_spt, x_qry, y_qry):
    """Per task: one differentiable SGD step on the support set, then the query loss (summed)."""
    total = 0.0
    for t in range(x_spt.shape[0]):
        total = total + _maml_task(params, x_spt[t], y_spt[t], x_qry[t], y_qry[t])
    return total


def _forward(params, x):
    w1, b1, w2 = params
    return torch.tanh(x @ w1 + b1) @ w2


def _maml_task(params, x_spt, y_spt, x_qry, y_qry):
    optim = torchopt.sgd(lr=0.3)
    state = optim.init(params)
    inner = params
    for _ in range(2):
        loss = (_forward(inner, x_spt) - y_spt).pow(2).mean()
        grads = torch.autograd.grad(loss, inner, create_graph=True)
        updates, state = optim.update(grads, state, inplace=False)
        inner = torchopt.apply_updates(inner, updates, inplace=False)
    return (_forward(inner, x_qry) - y_qry).pow(2).mean()


# --- checks (rank 0) ---------------------------------------------------------------------------


def check_batch_sum():
    x, w = torch.randn(7, 4), torch.randn(4, 3)
    torch.testing.assert_close(sq_loss_sum(x, w), (x @ w).pow(2).sum(), **TOL)


def check_batch_mean_default():
    x = torch.randn(6, 4)  # 3 equal chunks: the mean of the means is the mean
    torch.testing.assert_close(row_mean(x), x.sin().mean(0), **TOL)


def check_exclusive_mean():
    x, w = torch.randn(5, 4), torch.randn(4, 2)
    torch.testing.assert_close(per_sample(x, w=w), (x @ w).pow(2).mean(0), **TOL)


def check_dim_partitioner_sum():
    x, v = torch.randn(3, 8), torch.randn(2, 8)
    torch.testing.assert_close(split_matmul(x, v), x @ v.T, **TOL)


def check_own_defaults_partitioner():
    x = torch.randn(4, 5)
    got = torch.stack(column_sums(x))  # no reducer: one result per column, in order
    torch.testing.assert_close(got, x.sum(0), **TOL)


def check_round_robin():
    world = todist.get_world_size()
    got = where_am_i(torch.zeros(5, 2)).wait()
    assert [r[0] for r in got] == [i % world for i in range(5)], got
    assert all(r[1] == 1 for r in got), got  # keepdim slices
    assert all(r[2][0] == r[0] and r[2][1] == world for r in got), got


def check_named_and_int_targets():
    world = todist.get_world_size()
    for rank in range(world):
        name = f'worker{rank}'
        assert todist.get_worker_id(name) == rank
        got = todist.remote_sync_call(whoami, partitioner=name)
        assert got == [(rank, world, name, rank)], got  # one partition: a list of one
        assert todist.remote_sync_call(whoami, partitioner=rank)[0][0] == rank


def check_remote_exception():
    try:
        todist.remote_sync_call(fail, args=('boom from a worker',), partitioner=1)
    except Exception as ex:  # noqa: BLE001
        assert 'boom from a worker' in str(ex), str(ex)
        assert 'ValueError' in str(ex), str(ex)
    else:
        raise AssertionError('the remote exception was swallowed')


def check_autograd_backward():
    x = torch.randn(7, 4)
    w = torch.randn(4, 3, requires_grad=True)
    with todist.autograd.context() as ctx:
        loss = sq_loss_sum(x, w)
        todist.autograd.backward(ctx, loss)
    (expected,) = torch.autograd.grad((x @ w).pow(2).sum(), w)
    torch.testing.assert_close(w.grad, expected, **TOL)
    # accumulation, as .backward() does
    with todist.autograd.context() as ctx:
        todist.autograd.backward(ctx, sq_loss_sum(x, w))
    torch.testing.assert_close(w.grad, 2 * expected, **TOL)


def check_autograd_grad_and_inputs():
    x = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(4, 2, requires_grad=True)
    unused = torch.randn(3, requires_grad=True)
    with todist.autograd.context() as ctx:
        gx, gw, gu = todist.autograd.grad(
            ctx, per_sample(x, w=w).sum(), [x, w, unused], allow_unused=True
        )
    ex, ew = torch.autograd.grad((x @ w).pow(2).mean(0).sum(), [x, w])
    torch.testing.assert_close(gx, ex, **TOL)
    torch.testing.assert_close(gw, ew, **TOL)
    assert gu is None and w.grad is None
    with todist.autograd.context() as ctx:
        try:
            todist.autograd.grad(ctx, per_sample(x, w=w).sum(), [w, unused])
        except RuntimeError as ex_:
            assert 'allow_unused' in str(ex_)
        else:
            raise AssertionError('unused input accepted')
    with todist.autograd.context() as ctx:
        todist.autograd.backward(ctx, per_sample(x, w=w).sum(), inputs=[w])
    torch.testing.assert_close(w.grad, ew, **TOL)
    assert x.grad is None


def check_maml_meta_gradient():
    gen = torch.Generator().manual_seed(0)
    params = (
        torch.randn(3, 8, generator=gen).requires_grad_(),
        torch.randn(8, generator=gen).requires_grad_(),
        torch.randn(8, 1, generator=gen).requires_grad_(),
    )
    tasks = [torch.randn(5, n, d, generator=gen) for n, d in ((4, 3), (4, 1), (6, 3), (6, 1))]
    with todist.autograd.context() as ctx:
        loss = maml_query_loss(params, *tasks)
        dist_grads = todist.autograd.grad(ctx, loss, params)
    local = sum(_maml_task(params, *(t[i] for t in tasks)) for i in range(5))
    torch.testing.assert_close(loss.detach(), local.detach(), **TOL)
    local_grads = torch.autograd.grad(local, params)
    for got, expected in zip(dist_grads, local_grads):
        torch.testing.assert_close(got, expected, **TOL)


CHECKS = {
    name[len('check_') :]: f for name, f in dict(globals()).items() if name.startswith('check_')
}


@todist.rank_zero_only
def run_checks(out_path):
    torch.manual_seed(0)
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = 'ok'
        except Exception:  # noqa: BLE001
            results[name] = traceback.format_exc()
    with open(out_path, 'w', encoding='utf-8') as file:
        json.dump(results, file)


def main():
    import faulthandler

    faulthandler.dump_traceback_later(50, exit=True)
    init_seen = []
    todist.auto_init_rpc(lambda: init_seen.append(os.getpid()), init_timeout=30)(run_checks)(
        sys.argv[1]
    )
    assert init_seen == [os.getpid()]


if __name__ == '__main__':
    main()
