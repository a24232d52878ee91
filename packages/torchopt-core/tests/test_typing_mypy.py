"""A user's script annotated with ``torchopt.typing`` types passes mypy (issue #23).

mypy runs in a subprocess on a small script, from a directory without the project's
configuration (as in a user's project), with a fresh cache. The script ends with two wrong
lines, so the check can fail: mypy must report exactly those two and nothing else. mypy is a
dependency of the test environment (hatch.toml).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """\
    import torch

    import torchopt
    from torchopt.typing import GradientTransformation, OptState, Params, Schedule, Updates


    def make_params() -> Params:
        return {'w': torch.zeros(3, requires_grad=True), 'b': (torch.zeros(1), [torch.ones(2)])}


    def step(
        opt: GradientTransformation, params: Params, grads: Updates, state: OptState
    ) -> tuple[Params, OptState]:
        updates, state = opt.update(grads, state, params=params)
        return torchopt.apply_updates(params, updates), state


    schedule: Schedule = torchopt.schedule.linear_schedule(1e-2, 1e-3, 10)
    opt = torchopt.chain(torchopt.clip_grad_norm(1.0), torchopt.adam(lr=schedule))
    params = make_params()
    state = opt.init(params)
    grads: Updates = {'w': torch.ones(3), 'b': (torch.ones(1), [torch.ones(2)])}
    params, state = step(opt, params, grads, state)
    net = torch.nn.Linear(2, 1)
    meta = torchopt.MetaAdam(net, lr=0.1)
    torch_like = torchopt.Adam(net.parameters(), lr=1e-3)
    bad_params: Params = 3  # WRONG-1: not a tree of tensors
    bad_opt = torchopt.adam(lr='fast')  # WRONG-2: neither a number nor a schedule
    """
)


def test_user_script_passes_mypy(tmp_path):
    script = tmp_path / 'user_script.py'
    script.write_text(SCRIPT, encoding='utf-8')
    wrong = {
        i + 1: tag
        for i, line in enumerate(SCRIPT.splitlines())
        for tag in ('WRONG-1', 'WRONG-2')
        if tag in line
    }
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'mypy',
            '--no-error-summary',
            '--cache-dir',
            str(tmp_path / 'c'),
            '--config-file',
            '',
            script.name,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, 'MYPYPATH': ''},
    )
    errors = [line for line in out.stdout.splitlines() if ': error:' in line]
    lines = sorted(int(line.split(':')[1]) for line in errors)
    assert lines == sorted(wrong), out.stdout + out.stderr
