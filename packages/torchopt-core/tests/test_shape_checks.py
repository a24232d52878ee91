"""A state that belongs to parameters of other shapes raises a ValueError naming the leaf (#16).

torch's CPU fused kernels do not check shapes: before the checks, ``adam(0.1)`` initialised on a
2-element tensor and updated with a 100,000-element gradient read and wrote past the state's
memory (wrong numbers, ``munmap_chunk(): invalid pointer``, or a segfault). Every optimizer is
run through every entry point with the shapes differing at one leaf — functional ``update``
(in place and not), the torch-like class's ``load_state_dict`` (torch.optim's layout and
TorchOpt 0.7's tuple of states), and the Meta class's ``load_state_dict`` — each optimizer in
its own subprocess, so that a crash fails the test instead of the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from optimizer_table import rows

import torchopt

BIG = 100_000  # the size that segfaulted before the checks

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torchopt
    from torch import nn

    fn, cls, meta = (getattr(torchopt, n) for n in sys.argv[1:4])
    kwargs, big, matrices = json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == '1'
    for k in ('betas', 'eps', 'etas', 'step_sizes'):
        if isinstance(kwargs.get(k), list):
            kwargs[k] = tuple(kwargs[k])
    results = {}

    def expect_value_error(mode, run, untouched):
        before = [t.clone() for t in untouched]
        try:
            run()
        except ValueError as ex:
            msg = str(ex)
            ok = ('leaf 1' in msg or 'parameter 1' in msg or '1)' in msg) and 'shape' in msg
            same = all(torch.equal(a, b) for a, b in zip(before, untouched))
            results[mode] = 'ok' if ok and same else f'bad: {msg!r} unchanged={same}'
        except Exception as ex:  # noqa: BLE001
            results[mode] = f'{type(ex).__name__}: {ex}'
        else:
            results[mode] = 'no error'
        print(json.dumps(results), flush=True)

    # Muon takes matrices only: its leaves are (2, 3) and (3, 4) or (300, big // 300).
    shape_a, shape_b = ((2, 3), (3, 4)) if matrices else ((2,), (3,))
    shape_big = (300, big // 300) if matrices else (big,)
    small = [torch.ones(shape_a), torch.ones(shape_b)]
    large = [torch.ones(shape_a), torch.ones(shape_big)]
    if not any(isinstance(x, torch.Tensor) and x.dim() > 0
               for x in torch.utils._pytree.tree_leaves(fn(**kwargs).init(small))):
        print(json.dumps({'stateless': 'ok'}))  # no per-leaf state: nothing can disagree
        sys.exit(0)
    for inplace in (True, False):
        opt = fn(**kwargs)
        state = opt.init([t.clone() for t in small])
        grads = [t.clone() for t in large]
        params = [t.clone() for t in large]
        expect_value_error(
            f'functional inplace={inplace}',
            lambda: opt.update(grads, state, params=params, inplace=inplace),
            params + grads,
        )

    a = [t.clone().requires_grad_() for t in small]
    opt_a = cls(a, **kwargs)
    for p in a:
        p.grad = torch.ones_like(p)
    opt_a.step()
    for layout, saved in [('torch layout', opt_a.state_dict()),
                          ('TorchOpt 0.7 tuple', tuple(opt_a.state_groups))]:
        b = [t.clone().requires_grad_() for t in large]
        opt_b = cls(b, **kwargs)
        for p in b:
            p.grad = torch.ones_like(p)

        def load_and_step():
            opt_b.load_state_dict(saved)
            opt_b.step()

        expect_value_error(f'class load_state_dict ({layout})', load_and_step,
                           [p.detach() for p in b])  # fmt: skip

    if True:  # every row has a Meta class
        class Net(nn.Module):
            def __init__(self, shape):
                super().__init__()
                self.a = nn.Parameter(torch.ones(shape_a))
                self.b = nn.Parameter(torch.ones(shape))

            def forward(self):
                return (self.a ** 2).sum() + (self.b ** 2).sum()

        net_a, net_b = Net(shape_b), Net(shape_big)
        opt_a = meta(net_a, **kwargs)
        opt_a.step(net_a())
        opt_b = meta(net_b, **kwargs)

        def meta_load_and_step():
            opt_b.load_state_dict(opt_a.state_dict())
            opt_b.step(net_b())

        expect_value_error(
            'meta load_state_dict', meta_load_and_step, [net_b.a.detach(), net_b.b.detach()]
        )
    print(json.dumps(results), flush=True)
    """
)


@rows()
def test_shape_mismatch_raises_naming_the_leaf_in_every_entry_point(row):
    assert row.meta_kwargs == row.kwargs
    names = [x.__name__ for x in (row.fn, row.cls, row.meta)]
    assert all(getattr(torchopt, n) is x for n, x in zip(names, (row.fn, row.cls, row.meta)))
    res = subprocess.run(
        [
            sys.executable,
            '-c',
            _SCRIPT,
            *names,
            json.dumps(row.kwargs),
            str(BIG),
            '1' if row.matrices_only else '0',
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in res.stdout.splitlines() if line.startswith('{')]
    assert res.returncode == 0, (
        f'the process died (exit {res.returncode}) after {lines[-1] if lines else "nothing"}:\n'
        f'{res.stderr[-2000:]}'
    )
    results = json.loads(lines[-1])
    assert len(results) >= 3 or results == {'stateless': 'ok'}
    assert all(v == 'ok' for v in results.values()), results
