"""Float64 references for the optimizers that ``torch.optim`` lacks (one parameter at a time).

Each ``reference(p, g, state, kwargs) -> new p`` is written from the paper and optax's documented
update rule, with this library's conventions (``lr`` first, ``betas`` a tuple, ``maximize``, the
defaults of the alias). ``state`` is a dict the function keeps between steps; a parameter whose
gradient is missing is simply not called, so its own step count does not advance. The rows of
``optimizer_table`` name these as their reference; the parity tests match them to 1e-10.
"""

from __future__ import annotations

import torch

__all__ = [
    'adabelief',
    'adan',
    'lamb',
    'lars',
    'lion',
    'novograd',
    'sign_sgd',
    'yogi',
]


def _prep(g, p, kw, decay_key='weight_decay'):
    g = -g if kw.get('maximize', False) else g
    wd = kw.get(decay_key, 0.0)
    return g + wd * p if wd else g


def adabelief(p, g, s, kw):
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


def yogi(p, g, s, kw):
    b1, b2 = kw.get('betas', (0.9, 0.999))
    eps, eps_root = kw.get('eps', 1e-3), kw.get('eps_root', 0.0)
    init = kw.get('initial_accumulator_value', 1e-6)
    g = _prep(g, p, kw)
    t = s['t'] = s.get('t', 0) + 1
    m = s['m'] = b1 * s.get('m', init) + (1 - b1) * g
    v0 = s.get('v', torch.full_like(p, init))
    v = s['v'] = v0 - (1 - b2) * torch.sign(v0 - g * g) * g * g
    return p - kw['lr'] * (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps)


def novograd(p, g, s, kw):
    b1, b2 = kw.get('betas', (0.9, 0.25))
    eps, eps_root, wd = kw.get('eps', 1e-6), kw.get('eps_root', 0.0), kw.get('weight_decay', 0.0)
    g = -g if kw.get('maximize', False) else g
    t = s['t'] = s.get('t', 0) + 1
    sq = (g * g).sum()
    v = s['v'] = sq if t == 1 else b2 * s['v'] + (1 - b2) * sq
    d = g / (torch.sqrt(v + eps_root) + eps) + wd * p
    m = s['m'] = d if t == 1 else b1 * s['m'] + d
    return p - kw['lr'] * m


def adan(p, g, s, kw):
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


def sign_sgd(p, g, s, kw):
    g = -g if kw.get('maximize', False) else g
    return p - kw['lr'] * torch.sign(g)


def lars(p, g, s, kw):
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


def lion(p, g, s, kw):
    b1, b2 = kw.get('betas', (0.9, 0.99))
    g = -g if kw.get('maximize', False) else g
    m = s.get('m', torch.zeros_like(p))
    u = torch.sign(b1 * m + (1 - b1) * g)
    s['m'] = b2 * m + (1 - b2) * g
    return p - kw.get('lr', 1e-4) * (u + kw.get('weight_decay', 0.0) * p)


def lamb(p, g, s, kw):
    b1, b2 = kw.get('betas', (0.9, 0.999))
    eps, eps_root = kw.get('eps', 1e-6), kw.get('eps_root', 0.0)
    g = -g if kw.get('maximize', False) else g
    t = s['t'] = s.get('t', 0) + 1
    m = s['m'] = b1 * s.get('m', 0.0) + (1 - b1) * g
    v = s['v'] = b2 * s.get('v', 0.0) + (1 - b2) * g * g
    r = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps)
    r = r + kw.get('weight_decay', 0.0) * p
    p_norm, r_norm = p.norm(), r.norm()
    ratio = p_norm / r_norm if p_norm > 0 and r_norm > 0 else 1.0
    return p - kw.get('lr', 1e-3) * ratio * r
