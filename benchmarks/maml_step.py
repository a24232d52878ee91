"""MAML outer-iteration benchmark: MetaOptimizers vs a hand-written autograd unroll (1 thread).

MLP 32-256-256-256-10, batch 64, 5 inner steps + outer backward. For each inner optimizer it
prints the outer-iteration time as a ratio to the hand-written unroll of the same optimizer
(``torch.autograd.grad(create_graph=True)`` and per-tensor ops), measured interleaved in one
process, and the bytes saved for backward per inner step (``saved_tensors_hooks``): for the
whole inner step (network activations included) and for the optimizer update alone.

    python benchmarks/maml_step.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import torchopt

INNER_STEPS = 5
UPDATE_SCOPE = [contextlib.nullcontext]  # entered around the optimizer update only
LR = 1e-2
B1, B2, EPS, EPS_ROOT = 0.9, 0.999, 1e-8, 1e-10


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def data():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(64, 32, generator=g),
        torch.randint(0, 10, (64,), generator=g),
        torch.randn(64, 32, generator=g),
        torch.randint(0, 10, (64,), generator=g),
    )


def hand_sgd(net, x, y, xq, yq):
    params = list(net.parameters())
    for _ in range(INNER_STEPS):
        loss = F.cross_entropy(
            torch.func.functional_call(net, dict(zip(names(net), params)), (x,)), y
        )
        grads = torch.autograd.grad(loss, params, create_graph=True)
        with UPDATE_SCOPE[0]():
            params = [p - LR * g for p, g in zip(params, grads)]
    return F.cross_entropy(
        torch.func.functional_call(net, dict(zip(names(net), params)), (xq,)), yq
    )


def hand_adam(net, x, y, xq, yq):
    params = list(net.parameters())
    mu = [torch.zeros_like(p, requires_grad=True) for p in params]
    nu = [torch.zeros_like(p, requires_grad=True) for p in params]
    for t in range(1, INNER_STEPS + 1):
        loss = F.cross_entropy(
            torch.func.functional_call(net, dict(zip(names(net), params)), (x,)), y
        )
        grads = torch.autograd.grad(loss, params, create_graph=True)
        with UPDATE_SCOPE[0]():
            mu = [B1 * m + (1 - B1) * g for m, g in zip(mu, grads)]
            nu = [B2 * v + (1 - B2) * g * g for v, g in zip(nu, grads)]
            params = [
                p - LR * (m / (1 - B1**t)) / (torch.sqrt(v / (1 - B2**t) + EPS_ROOT) + EPS)
                for p, m, v in zip(params, mu, nu)
            ]
    return F.cross_entropy(
        torch.func.functional_call(net, dict(zip(names(net), params)), (xq,)), yq
    )


def names(net):
    return [k for k, _ in net.named_parameters()]


def meta(make_opt):
    def run(net, x, y, xq, yq):
        state = torchopt.extract_state_dict(net)
        opt = make_opt(net)
        inner_update = opt.impl.update

        def scoped_update(*a, **kw):
            with UPDATE_SCOPE[0]():
                return inner_update(*a, **kw)

        opt.impl = torchopt.base.GradientTransformation(opt.impl.init, scoped_update)
        for _ in range(INNER_STEPS):
            opt.step(F.cross_entropy(net(x), y))
        loss = F.cross_entropy(net(xq), yq)
        run.restore = lambda: torchopt.recover_state_dict(net, state)
        return loss

    return run


def functional(impl_factory):
    def run(net, x, y, xq, yq):
        params = dict(net.named_parameters())
        impl = impl_factory()
        state = impl.init(params)
        for _ in range(INNER_STEPS):
            loss = F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)
            grads = dict(
                zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True))
            )
            with UPDATE_SCOPE[0]():
                updates, state = impl.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
        return F.cross_entropy(torch.func.functional_call(net, params, (xq,)), yq)

    return run


CASES = {
    'sgd': {
        'hand-written unroll': hand_sgd,
        'MetaSGD': meta(lambda n: torchopt.MetaSGD(n, lr=LR)),
        'functional sgd(inplace=False)': functional(lambda: torchopt.sgd(LR)),
    },
    'adam': {
        'hand-written unroll': hand_adam,
        'MetaAdam': meta(lambda n: torchopt.MetaAdam(n, lr=LR, eps_root=EPS_ROOT)),
        'functional adam(inplace=False)': functional(
            lambda: torchopt.adam(LR, eps_root=EPS_ROOT, moment_requires_grad=True)
        ),
    },
}


def _backward_and_reset(fn, net, loss) -> None:
    loss.backward()
    restore = getattr(fn, 'restore', None)
    if restore is not None:
        restore()
    net.zero_grad(set_to_none=True)


def outer_iteration(fn, net, batch):
    _backward_and_reset(fn, net, fn(net, *batch))


def saved_bytes(fn, net, batch, update_only: bool = False) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    def hooks():
        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    if update_only:
        UPDATE_SCOPE[0] = hooks
        try:
            loss = fn(net, *batch)
        finally:
            UPDATE_SCOPE[0] = contextlib.nullcontext
    else:
        with hooks():
            loss = fn(net, *batch)
    _backward_and_reset(fn, net, loss)
    return total[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = make_net()
    batch = data()
    print(
        f'MAML outer iteration, MLP 32-256-256-256-10, batch 64, {INNER_STEPS} inner steps, '
        f'1 thread, median of {args.rounds}'
    )
    print()
    print(
        '| inner optimizer | implementation | time (ms) | vs hand-written '
        '| saved per inner step (KiB) | vs hand-written '
        '| saved by the update alone (KiB) | vs hand-written |'
    )
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    for opt_name, impls in CASES.items():
        times = {k: [] for k in impls}
        for fn in impls.values():
            outer_iteration(fn, net, batch)  # warm-up
        for _ in range(args.rounds):
            for k, fn in impls.items():
                t0 = time.perf_counter()
                outer_iteration(fn, net, batch)
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        mem = {k: saved_bytes(fn, net, batch) / INNER_STEPS / 1024 for k, fn in impls.items()}
        upd = {k: saved_bytes(fn, net, batch, True) / INNER_STEPS / 1024 for k, fn in impls.items()}
        ref_t, ref_m = med['hand-written unroll'], mem['hand-written unroll']
        ref_u = upd['hand-written unroll']
        for k in impls:
            upd_ratio = f'{upd[k] / ref_u:.2f}x' if ref_u else '-'
            print(
                f'| {opt_name} | {k} | {med[k] * 1e3:.1f} | {med[k] / ref_t:.2f}x | '
                f'{mem[k]:.0f} | {mem[k] / ref_m:.2f}x | {upd[k]:.0f} | {upd_ratio} |'
            )


if __name__ == '__main__':
    main()
