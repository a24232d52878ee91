"""The functional optimizers of issue #20 against torch.optim or float64 references (20 steps).

Rows come from ``optimizer_table.FUNCTIONAL_CASES``. Those with a torch.optim class must match it
to 1e-12; those without (AdaBelief, Yogi, NovoGrad, Adan, signSGD, LARS) must match the
references below, written from the papers and optax's documented update rules, to 1e-10. Each
row is also run with missing gradients (a parameter whose gradient is None is skipped and its
own step count does not advance), under vmap, and with a state of the wrong shapes.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
import textwrap

import optree
import pytest
import torch

import torchopt
from optimizer_table import FUNCTIONAL_CASES, FUNCTIONAL_IDS, init_params, shapes_for
from optimizer_table import loss as _loss

STEPS = 20
TORCH_TOL = 1e-12
REF_TOL = 1e-10
ROWS = [(c[0], c[2], c[3], c[4]) for c in FUNCTIONAL_CASES]


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --- float64 references (one parameter at a time) -------------------------------------------------


def _prep(g, p, kw, decay_key='weight_decay'):
    g = -g if kw.get('maximize', False) else g
    wd = kw.get(decay_key, 0.0)
    return g + wd * p if wd else g


def _adabelief(p, g, s, kw):
    b1, b2 = kw.get('betas', (0.9, 0.999))
    eps, eps_root = kw.get('eps', 1e-16), kw.get('eps_root', 1e-16)
    g = _prep(g, p, kw)
    t = s['t'] = s.get('t', 0) + 1
    m = s['m'] = b1 * s.get('m', 0.0) + (1 - b1) * g
    v = s['v'] = b2 * s.get('v', 0.0) + (1 - b2) * (g - m) ** 2 + eps_root
    if kw.get('nesterov', False):
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    else:
        m_hat = m / (1 - b1**t)
    return p - kw['lr'] * m_hat / (torch.sqrt(v / (1 - b2**t)) + eps)


def _yogi(p, g, s, kw):
    b1, b2 = kw.get('betas', (0.9, 0.999))
    eps, eps_root = kw.get('eps', 1e-3), kw.get('eps_root', 0.0)
    init = kw.get('initial_accumulator_value', 1e-6)
    g = _prep(g, p, kw)
    t = s['t'] = s.get('t', 0) + 1
    m = s['m'] = b1 * s.get('m', init) + (1 - b1) * g
    v0 = s.get('v', torch.full_like(p, init))
    v = s['v'] = v0 - (1 - b2) * torch.sign(v0 - g * g) * g * g
    return p - kw['lr'] * (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps)


def _novograd(p, g, s, kw):
    b1, b2 = kw.get('betas', (0.9, 0.25))
    eps, eps_root, wd = kw.get('eps', 1e-6), kw.get('eps_root', 0.0), kw.get('weight_decay', 0.0)
    g = -g if kw.get('maximize', False) else g
    t = s['t'] = s.get('t', 0) + 1
    sq = (g * g).sum()
    v = s['v'] = sq if t == 1 else b2 * s['v'] + (1 - b2) * sq
    d = g / (torch.sqrt(v + eps_root) + eps) + wd * p
    m = s['m'] = d if t == 1 else b1 * s['m'] + d
    return p - kw['lr'] * m


def _adan(p, g, s, kw):
    b1, b2, b3 = kw.get('betas', (0.98, 0.92, 0.99))
    eps, eps_root, wd = kw.get('eps', 1e-8), kw.get('eps_root', 1e-8), kw.get('weight_decay', 0.0)
    g = -g if kw.get('maximize', False) else g
    t = s.get('t', 0)
    diff = g - s['g'] if t > 0 else torch.zeros_like(g)
    m = s['m'] = b1 * s.get('m', 0.0) + (1 - b1) * g
    v = s['v'] = b2 * s.get('v', 0.0) + (1 - b2) * diff
    n = s['n'] = b3 * s.get('n', 0.0) + (1 - b3) * (g + (1 - b2) * diff) ** 2
    s['g'], t = g, t + 1
    s['t'] = t
    m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
    u = (m_hat + (1 - b2) * v_hat) / (torch.sqrt(n_hat + eps_root) + eps)
    return p - kw['lr'] * (u + wd * p)


def _sign_sgd(p, g, s, kw):
    g = -g if kw.get('maximize', False) else g
    return p - kw['lr'] * torch.sign(g)


def _lars(p, g, s, kw):
    g = -g if kw.get('maximize', False) else g
    d = g + kw.get('weight_decay', 0.0) * p
    p_norm, d_norm = p.norm(), d.norm()
    ratio = kw.get('trust_coefficient', 0.001) * p_norm / (d_norm + kw.get('eps', 0.0))
    if p_norm == 0 or d_norm == 0:
        ratio = 1.0
    step = -kw['lr'] * ratio * d
    mu = kw.get('momentum', 0.9)
    b = s['b'] = step + mu * s.get('b', 0.0)
    return p + (step + mu * b if kw.get('nesterov', False) else b)


REFERENCES = {
    torchopt.adabelief: _adabelief, torchopt.yogi: _yogi, torchopt.novograd: _novograd,
    torchopt.adan: _adan, torchopt.sign_sgd: _sign_sgd, torchopt.lars: _lars,
}


# --- runners --------------------------------------------------------------------------------------


def _params(name: str, seed: int = 1, n: int = 3) -> list[torch.Tensor]:
    return init_params(seed, n, shapes_for(name))


def _missing_schedule(n: int) -> list[set[int]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        mask = torch.rand(n, generator=g) < 0.35
        out.append({i for i in range(n) if mask[i]})
    return out


def _run_expected(name, fn, torch_cls, kwargs, missing, params):
    if torch_cls is not None:
        extra = {'foreach': False} if 'foreach' in inspect.signature(torch_cls).parameters else {}
        opt = torch_cls(params, **extra, **kwargs)
        for skip in missing:
            opt.zero_grad(set_to_none=True)
            _loss(params).backward()
            for i in skip:
                params[i].grad = None
            opt.step()
        return [p.detach() for p in params]
    ref = REFERENCES[fn]
    states = [{} for _ in params]
    values = [p.detach().clone() for p in params]
    for skip in missing:
        xs = [v.clone().requires_grad_() for v in values]
        grads = torch.autograd.grad(_loss(xs), xs)
        values = [v if i in skip else ref(v, g, states[i], kwargs)
                  for i, (v, g) in enumerate(zip(values, grads))]  # fmt: skip
    return values


def _run_functional(fn, kwargs, missing, params, inplace):
    params = {f'p{i}': p.clone().requires_grad_() for i, p in enumerate(params)}
    opt = fn(**kwargs)
    state = opt.init(params)
    for skip in missing:
        loss = _loss(list(params.values()))
        grads = list(torch.autograd.grad(loss, list(params.values())))
        for i in skip:
            grads[i] = None
        updates, state = opt.update(dict(zip(params, grads)), state, params=params,
                                    inplace=inplace)  # fmt: skip
        params = torchopt.apply_updates(params, updates, inplace=inplace)
        if not inplace:
            params = {k: v.detach().requires_grad_() for k, v in params.items()}
    return [v.detach() for v in params.values()], state


def _max_err(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _tol(torch_cls):
    return TORCH_TOL if torch_cls is not None else REF_TOL


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(('name', 'fn', 'torch_cls', 'kwargs'), ROWS, ids=FUNCTIONAL_IDS)
@pytest.mark.parametrize('inplace', [True, False])
def test_functional_matches_reference(name, fn, torch_cls, kwargs, inplace):
    missing = [set()] * STEPS
    params = _params(name)
    expected = _run_expected(name, fn, torch_cls, kwargs, missing,
                             [p.clone().requires_grad_() for p in params])  # fmt: skip
    got, _ = _run_functional(fn, kwargs, missing, params, inplace)
    assert _max_err(got, expected) <= _tol(torch_cls)
    assert _max_err(got, params) > 1e-4  # the parameters moved


@pytest.mark.parametrize(('name', 'fn', 'torch_cls', 'kwargs'), ROWS, ids=FUNCTIONAL_IDS)
@pytest.mark.parametrize('inplace', [True, False])
def test_functional_skips_missing_gradients(name, fn, torch_cls, kwargs, inplace):
    missing = _missing_schedule(4)
    params = _params(name, seed=3, n=4)
    expected = _run_expected(name, fn, torch_cls, kwargs, missing,
                             [p.clone().requires_grad_() for p in params])  # fmt: skip
    got, _ = _run_functional(fn, kwargs, missing, params, inplace)
    assert _max_err(got, expected) <= _tol(torch_cls)


@pytest.mark.parametrize(('name', 'fn', 'torch_cls', 'kwargs'), ROWS, ids=FUNCTIONAL_IDS)
def test_states_are_pure_tensor_trees(name, fn, torch_cls, kwargs):
    state = fn(**kwargs).init(_params(name))
    assert all(isinstance(x, torch.Tensor) for x in optree.tree_leaves(state))


@pytest.mark.parametrize(('name', 'fn', 'torch_cls', 'kwargs'), ROWS, ids=FUNCTIONAL_IDS)
def test_vmap_over_init_and_update_matches_a_loop(name, fn, torch_cls, kwargs):
    # Muon's Newton-Schulz iteration runs in bfloat16, where a batched matmul rounds differently
    # from the per-matrix one: compare at bfloat16's resolution (2**-8) times the step size.
    tol = 2e-3 if name.startswith('Muon') else 1e-12
    opt = fn(**kwargs)
    params = [torch.stack([p + k for k in range(3)]) for p in _params(name, seed=3)]
    grads = [torch.randn_like(p) for p in params]
    state = torch.func.vmap(opt.init)(params)

    def step(g, s, p):
        updates, s = opt.update(g, s, params=p, inplace=False)
        return torchopt.apply_updates(p, updates, inplace=False), s

    new_params, state = torch.func.vmap(step)(grads, state, params)
    new_params, state = torch.func.vmap(step)(grads, state, new_params)
    for k in range(3):
        p_k = [p[k].clone() for p in params]
        s_k = opt.init(p_k)
        for _ in range(2):
            u, s_k = opt.update([g[k] for g in grads], s_k, params=p_k, inplace=False)
            p_k = torchopt.apply_updates(p_k, u, inplace=False)
        for got, want in zip(new_params, p_k):
            torch.testing.assert_close(got[k], want, rtol=tol, atol=tol)


@pytest.mark.parametrize(('name', 'fn', 'torch_cls', 'kwargs'), ROWS, ids=FUNCTIONAL_IDS)
def test_out_of_place_is_differentiable_and_never_mutates(name, fn, torch_cls, kwargs):
    params = [p.clone().requires_grad_() for p in _params(name)]
    opt = fn(**kwargs)
    state = opt.init(params)
    for _ in range(2):  # a second step differentiates through a non-trivial state
        grads = list(torch.autograd.grad(_loss(params), params, create_graph=True))
        snapshot = [x.clone() for x in optree.tree_leaves((grads, state, params))]
        inputs = optree.tree_leaves((grads, state, params))
        updates, state = opt.update(grads, state, params=params, inplace=False)
        assert all(torch.equal(a, b) for a, b in zip(snapshot, inputs))
        params = torchopt.apply_updates(params, updates, inplace=False)
    meta = torch.autograd.grad(_loss(params), [p for p in params if p.requires_grad],
                               allow_unused=True)  # fmt: skip
    assert all(m is None or torch.isfinite(m).all() for m in meta)


_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torchopt

    fn, kwargs, big = getattr(torchopt, sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    for k in ('betas', 'eps', 'etas', 'step_sizes'):
        if isinstance(kwargs.get(k), list):
            kwargs[k] = tuple(kwargs[k])
    matrices = sys.argv[4] == '1'
    small = [torch.ones(2, 3), torch.ones(3, 4)] if matrices else [torch.ones(2), torch.ones(3)]
    large = [torch.ones(2, 3), torch.ones(300, big // 300)] if matrices else [
        torch.ones(2), torch.ones(big)]
    results = {}
    if not any(isinstance(x, torch.Tensor) and x.dim() > 0
               for x in torch.utils._pytree.tree_leaves(fn(**kwargs).init(small))):
        print(json.dumps({'stateless': 'ok'}))  # no per-leaf state: nothing can disagree
        sys.exit(0)
    for inplace in (True, False):
        opt = fn(**kwargs)
        state = opt.init([t.clone() for t in small])
        grads = [t.clone() for t in large]
        params = [t.clone() for t in large]
        before = [t.clone() for t in params + grads]
        try:
            opt.update(grads, state, params=params, inplace=inplace)
        except ValueError as ex:
            ok = 'leaf 1' in str(ex) and 'shape' in str(ex)
            same = all(torch.equal(a, b) for a, b in zip(before, params + grads))
            results[str(inplace)] = 'ok' if ok and same else f'bad: {ex!r} unchanged={same}'
        except Exception as ex:  # noqa: BLE001
            results[str(inplace)] = f'{type(ex).__name__}: {ex}'
        else:
            results[str(inplace)] = 'no error'
    print(json.dumps(results), flush=True)
    """
)


@pytest.mark.parametrize(('name', 'fn', 'torch_cls', 'kwargs'), ROWS, ids=FUNCTIONAL_IDS)
def test_shape_mismatch_raises_naming_the_leaf(name, fn, torch_cls, kwargs):
    matrices = '1' if shapes_for(name) else '0'
    res = subprocess.run(
        [sys.executable, '-c', _SCRIPT, fn.__name__, json.dumps(kwargs), '100200', matrices],
        capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in res.stdout.splitlines() if line.startswith('{')]
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(lines[-1])
    assert results in ({'True': 'ok', 'False': 'ok'}, {'stateless': 'ok'}), results


def test_muon_rejects_non_matrices_naming_the_leaf():
    with pytest.raises(ValueError, match=r'leaf 1.*shape \(3,\)'):
        torchopt.muon().init([torch.ones(2, 2), torch.ones(3)])


def test_asgd_keeps_the_averaged_parameters_like_torch():
    params = [p.clone().requires_grad_() for p in _params('ASGD')]
    ref = torch.optim.ASGD([p.clone().detach().requires_grad_() for p in params], lr=5e-2, t0=3,
                           foreach=False)  # fmt: skip
    ref_params = ref.param_groups[0]['params']
    opt = torchopt.asgd(lr=5e-2, t0=3)
    state = opt.init(params)
    for _ in range(10):
        grads = list(torch.autograd.grad(_loss(params), params))
        updates, state = opt.update(grads, state, params=params)
        torchopt.apply_updates(params, updates)
        ref.zero_grad()
        _loss(ref_params).backward()
        ref.step()
    averages = state[-1].ax
    assert _max_err(averages, [ref.state[p]['ax'] for p in ref_params]) <= 1e-13


def test_adafactor_keeps_factored_moments():
    opt = torchopt.adafactor()
    state = opt.init([torch.zeros(4, 6), torch.zeros(5), torch.zeros(2, 3, 4)])
    sub = state[-1]
    assert [tuple(x.shape) for x in sub.row_var] == [(4, 1), (0,), (2, 3, 1)]
    assert [tuple(x.shape) for x in sub.col_var] == [(1, 6), (0,), (2, 1, 4)]
    assert [tuple(x.shape) for x in sub.variance] == [(0,), (5,), (0,)]


def test_yogi_and_adabelief_defaults_are_optax_defaults():
    for fn, expected in [
        (torchopt.adabelief, dict(betas=(0.9, 0.999), eps=1e-16, eps_root=1e-16)),
        (torchopt.yogi, dict(betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6)),
        (torchopt.novograd, dict(betas=(0.9, 0.25), eps=1e-6, eps_root=0.0)),
        (torchopt.adan, dict(betas=(0.98, 0.92, 0.99), eps=1e-8, eps_root=1e-8)),
        (torchopt.lars, dict(trust_coefficient=0.001, momentum=0.9, eps=0.0)),
    ]:
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in expected} == expected, fn.__name__


def test_the_torch_defaults_are_torch_optim_defaults():
    def defaults(f, skip=()):
        return {k: v.default for k, v in inspect.signature(f).parameters.items()
                if v.default is not inspect.Parameter.empty and k not in skip}  # fmt: skip

    torch_skip = ('foreach', 'capturable', 'differentiable', 'fused', 'params', 'amsgrad')
    for ours, theirs in [(torchopt.adafactor, torch.optim.Adafactor),
                         (torchopt.rprop, torch.optim.Rprop), (torchopt.asgd, torch.optim.ASGD),
                         (torchopt.muon, torch.optim.Muon)]:  # fmt: skip
        mine = defaults(ours, ('moment_requires_grad',))
        ref = defaults(theirs, torch_skip)
        assert {k: mine[k] for k in ref} == {k: v for k, v in ref.items()}, ours.__name__
    assert math.isclose(inspect.signature(torchopt.amsgrad).parameters['lr'].default, 1e-3)
