"""Tensor subclasses as parameters: FSDP2's ``DTensor`` and a strict wrapper subclass (float64).

``torch.distributed.fsdp.fully_shard`` makes every parameter a ``DTensor``, which has no rule
for ``torch._fused_sgd_`` or ``torch._foreach_copy_``: ``torchopt.SGD(momentum=...)`` failed on an
FSDP2 model where ``torch.optim.SGD`` runs. The kernels now take plain tensors only and
multi-tensor ops run per tensor on a subclass. :class:`Strict` refuses what ``DTensor`` refuses
(every fused kernel, accel's ops, ``_foreach_copy_``), so every optimizer is checked on it in
process; the FSDP2 test runs two real processes on loopback.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from optimizer_table import ALL, row_params, rows
from torch.utils._python_dispatch import return_and_correct_aliasing
from torch.utils._pytree import tree_map

import torchopt

pytestmark = pytest.mark.usefixtures('float64_default')

TOL = 1e-12
_REFUSED = ('_fused_', 'torchopt_accel', '_foreach_copy')


class Strict(torch.Tensor):
    """A wrapper subclass: every op runs on the inner tensor, except those ``DTensor`` refuses."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor, requires_grad: bool = False):
        return torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, dtype=inner.dtype, device=inner.device, strides=inner.stride(),
            requires_grad=requires_grad,
        )  # fmt: skip

    def __init__(self, inner: torch.Tensor, requires_grad: bool = False) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f'Strict({self.inner!r})'

    def __tensor_flatten__(self):
        return ['inner'], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, size, stride):
        return Strict(inner['inner'])

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(part in func.name() for part in _REFUSED):
            raise NotImplementedError(f'{func.name()} has no rule for Strict (as for DTensor)')
        unwrapped = func(*tree_map(_inner, args), **tree_map(_inner, kwargs))
        out = tree_map(_wrap, unwrapped)
        return return_and_correct_aliasing(func, args, kwargs, out)


def _inner(x):
    return x.inner if isinstance(x, Strict) else x


def _wrap(x):
    return Strict(x) if isinstance(x, torch.Tensor) and not isinstance(x, Strict) else x


def _grads(ps):
    return [torch.sin(_inner(p)).detach() * 0.3 for p in ps]


def _class_steps(row, wrap, steps=3, **extra):
    ps = [p.clone() for p in row_params(row, 0)]
    ps = [Strict(p, requires_grad=True) if wrap else p.requires_grad_() for p in ps]
    opt = row.cls(ps, **row.kwargs, **extra)
    for _ in range(steps):
        for p, g in zip(ps, _grads(ps)):
            p.grad = Strict(g) if wrap else g
        opt.step()
    return [_inner(p).detach() for p in ps]


def _max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@rows()
def test_every_class_steps_a_subclass_as_plain_tensors(row):
    assert _max_err(_class_steps(row, wrap=True), _class_steps(row, wrap=False)) <= TOL


def _functional_steps(row, wrap, inplace, steps=3):
    ps = tuple(Strict(p.clone()) if wrap else p.clone() for p in row_params(row, 0))
    opt = row.fn(**row.kwargs)
    state = opt.init(ps)
    for _ in range(steps):
        grads = tuple(Strict(g) if wrap else g for g in _grads(ps))
        updates, state = opt.update(grads, state, params=ps, inplace=inplace)
        ps = tuple(torchopt.apply_updates(ps, updates, inplace=inplace))
    return [_inner(p) for p in ps]


@rows()
@pytest.mark.parametrize('inplace', [True, False])
def test_every_functional_update_takes_a_subclass(row, inplace):
    got = _functional_steps(row, wrap=True, inplace=inplace)
    assert _max_err(got, _functional_steps(row, wrap=False, inplace=inplace)) <= TOL


def test_accelerated_adam_on_a_subclass_warns_and_runs_core():
    row = next(r for r in ALL if r.id == 'Adam')
    with pytest.warns(UserWarning, match='take plain tensors, not Strict'):
        got = _class_steps(row, wrap=True, use_accelerated_op=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # (the plugin may be missing: a warning of its own)
        want = _class_steps(row, wrap=False, use_accelerated_op=True)
    assert _max_err(got, want) <= TOL


_FSDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    CASES = {
        'SGD-momentum': dict(cls='SGD', lr=0.05, momentum=0.9),
        'Adam': dict(cls='Adam', lr=0.05),
        'AdamW-amsgrad': dict(cls='AdamW', lr=0.05, amsgrad=True),
        'RMSprop': dict(cls='RMSProp', lr=0.01),
        'Adagrad': dict(cls='AdaGrad', lr=0.05),
        'NAdam': dict(cls='NAdam', lr=0.05),
        'Lamb': dict(cls='Lamb', lr=0.05),
        'LARS': dict(cls='LARS', lr=0.05),
    }

    def run(rank, port, path, queue):
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
        dist.init_process_group('gloo', rank=rank, world_size=2)
        torch.set_default_dtype(torch.float64)
        import torchopt
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        from torch.distributed.fsdp import fully_shard

        def make(name, sharded, seed=0):
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                        torch.nn.Linear(8, 4))
            if sharded:
                fully_shard(model)
            kwargs = dict(CASES[name])
            return model, getattr(torchopt, kwargs.pop('cls'))(model.parameters(), **kwargs)

        def train(model, opt, steps, seed):
            torch.manual_seed(seed)
            for _ in range(steps):
                opt.zero_grad()
                model(torch.randn(8, 6)).pow(2).mean().backward()
                opt.step()

        def full(model):
            return [getattr(p, 'full_tensor', lambda: p)().detach() for p in model.parameters()]

        out = {}
        for name in CASES:
            results = []
            for sharded in (True, False):
                model, opt = make(name, sharded)
                train(model, opt, 4, 1)  # the same data on both ranks
                results.append(full(model))
            out[name] = max((a - b).abs().max().item() for a, b in zip(*results))
        for name in ('Adam', 'SGD-momentum'):  # a sharded checkpoint through DCP, resumed
            model, opt = make(name, True)
            train(model, opt, 4, 1)
            model_sd, optim_sd = get_state_dict(model, opt)
            where = os.path.join(path, name)
            dcp.save({'model': model_sd, 'optim': optim_sd}, checkpoint_id=where)
            other, other_opt = make(name, True, seed=5)
            model_sd, optim_sd = get_state_dict(other, other_opt)
            loaded = {'model': model_sd, 'optim': optim_sd}
            dcp.load(loaded, checkpoint_id=where)
            set_state_dict(other, other_opt, model_state_dict=loaded['model'],
                           optim_state_dict=loaded['optim'])
            train(model, opt, 3, 2)
            train(other, other_opt, 3, 2)
            out['DCP-' + name] = max((a - b).abs().max().item()
                                     for a, b in zip(full(model), full(other)))
        if rank == 0:
            queue.put(out)
        dist.destroy_process_group()

    if __name__ == '__main__':
        ctx = mp.get_context('spawn')
        queue = ctx.Queue()
        path = tempfile.mkdtemp()
        procs = [ctx.Process(target=run, args=(r, int(sys.argv[1]), path, queue))
                 for r in range(2)]
        for p in procs:
            p.start()
        print(repr(queue.get(timeout=200)))
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, p.exitcode
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == 'win32',
    reason='needs torch.distributed with gloo',
)
def test_fsdp2_sharded_steps_match_unsharded_and_resume_through_dcp(tmp_path):
    script = tmp_path / 'fsdp2.py'
    script.write_text(_FSDP_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(_free_port())],
        capture_output=True, text=True, timeout=280,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    errors = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert set(errors) == {
        'SGD-momentum', 'Adam', 'AdamW-amsgrad', 'RMSprop', 'Adagrad', 'NAdam', 'Lamb', 'LARS',
        'DCP-Adam', 'DCP-SGD-momentum',
    }  # fmt: skip
    assert all(err <= TOL for err in errors.values()), errors
