r"""MAML for reinforcement learning on a family of tabular grid-world navigation tasks.

Model-Agnostic Meta-Learning (Finn et al., ICML 2017) applied to RL: the meta-parameters are the
logits of a tabular softmax policy; each task is a 5x5 grid world whose goal cell is drawn from
the top two rows (the agent starts at the bottom centre, the reward is minus the normalised
Manhattan distance to the goal after each move). The inner loop is one policy-gradient step on
``--inner-episodes`` sampled episodes, taken by ``torchopt.MetaSGD`` so that it stays
differentiable; the inner objective is the DiCE estimator (Foerster et al., 2018), whose gradient
of the gradient is correct for sampled episodes:

.. math::

    \theta'_i = \theta + \alpha \nabla_\theta \hat J^\text{DiCE}_{\tau_i}(\theta), \qquad
    \min_\theta \; -\sum_i \hat J^\text{DiCE}_{\tau_i}(\theta'_i).

The tasks are small enough that the expected return of the adapted policy is evaluated exactly
(dynamic programming), so the printed numbers carry no sampling noise. Baseline: the same
adaptation from the uniform policy (random initialisation, no meta-learning).

    python examples/maml_rl/maml_rl.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402
from rl_common import (  # noqa: E402
    TabularMDP,
    dice_objective,
    expected_return,
    optimal_return,
    rollout,
)

import torchopt  # noqa: E402

__all__ = ['GOALS', 'TabularPolicy', 'adapt', 'grid_task', 'main', 'meta_test']

SIZE = 5
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right
GOALS = [(r, c) for r in range(2) for c in range(SIZE)]  # the task family: goals in the top rows


def grid_task(goal: tuple[int, int], size: int = SIZE, horizon: int = 8) -> TabularMDP:
    """The grid world whose goal is ``goal``: moves into walls stay put."""
    next_state = torch.empty(size * size, len(MOVES), dtype=torch.long)
    reward = torch.empty(size * size, len(MOVES))
    for r in range(size):
        for c in range(size):
            for a, (dr, dc) in enumerate(MOVES):
                nr, nc = min(max(r + dr, 0), size - 1), min(max(c + dc, 0), size - 1)
                next_state[r * size + c, a] = nr * size + nc
                reward[r * size + c, a] = -(abs(nr - goal[0]) + abs(nc - goal[1])) / (2 * size - 2)
    return TabularMDP(next_state, reward, start=(size - 1) * size + size // 2, horizon=horizon)


class TabularPolicy(nn.Module):
    """A softmax policy with one logit per (state, action), initialised uniform."""

    def __init__(self, num_states: int, num_actions: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_states, num_actions))


def adapt(
    policy: TabularPolicy,
    task: TabularMDP,
    inner_opt: torchopt.MetaSGD,
    steps: int,
    episodes: int,
    generator: torch.Generator,
) -> None:
    """``steps`` differentiable policy-gradient steps on sampled episodes (in place)."""
    for _ in range(steps):
        traj = rollout(task, policy.logits, episodes, generator)
        baseline = traj.rewards.mean(dim=0)  # time-dependent baseline: reduces variance
        inner_opt.step(-dice_objective(traj.log_probs, traj.rewards, values=baseline))


def meta_test(
    policy: TabularPolicy,
    goals: list[tuple[int, int]],
    args: argparse.Namespace,
    generator: torch.Generator,
) -> list[float]:
    """Adapt ``policy`` to each goal (sampled episodes) and return the exact adapted returns."""
    state = torchopt.extract_state_dict(policy, by='copy')
    returns = []
    for goal in goals:
        task = grid_task(goal)
        inner_opt = torchopt.MetaSGD(policy, lr=args.inner_lr)
        adapt(policy, task, inner_opt, args.test_steps, args.inner_episodes, generator)
        returns.append(expected_return(task, policy.logits.detach()).item())
        torchopt.recover_state_dict(policy, state)
    return returns


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Meta-train, then compare adapted returns of MAML and of a uniform initialisation."""
    parser = argparse.ArgumentParser(description='MAML-RL on tabular grid-world navigation')
    add_common_args(parser, __file__)
    parser.add_argument('--iterations', type=int, default=300)
    parser.add_argument('--meta-batch', type=int, default=10, help='tasks per meta-update')
    parser.add_argument('--inner-episodes', type=int, default=20, help='episodes per inner step')
    parser.add_argument('--inner-steps', type=int, default=1)
    parser.add_argument('--test-steps', type=int, default=1)
    parser.add_argument('--inner-lr', type=float, default=2.0)
    parser.add_argument('--outer-lr', type=float, default=0.1)
    parser.add_argument('--test-tasks', type=int, default=40)
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.test_tasks = 50, 20
    set_threads()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    sample_mdp = grid_task(GOALS[0])
    policy = TabularPolicy(sample_mdp.num_states, sample_mdp.num_actions)
    meta_opt = torch.optim.Adam(policy.parameters(), lr=args.outer_lr)
    inner_opt = torchopt.MetaSGD(policy, lr=args.inner_lr)
    meta_state = torchopt.extract_state_dict(policy, by='reference')

    history = []
    print(f'MAML-RL: {args.iterations} meta-iterations of {args.meta_batch} grid-world tasks')
    for _ in progress(range(args.iterations), 'meta-train'):
        meta_opt.zero_grad()
        goals = torch.randint(len(GOALS), (args.meta_batch,), generator=gen).tolist()
        adapted_returns = []
        for g in goals:
            task = grid_task(GOALS[g])
            adapt(policy, task, inner_opt, args.inner_steps, args.inner_episodes, gen)
            traj = rollout(task, policy.logits, args.inner_episodes, gen)  # validation episodes
            outer = -dice_objective(traj.log_probs, traj.rewards, values=traj.rewards.mean(0))
            (outer / args.meta_batch).backward()
            adapted_returns.append(expected_return(task, policy.logits.detach()).item())
            torchopt.recover_state_dict(policy, meta_state)  # back to the meta-parameters
            torchopt.stop_gradient(inner_opt)
        meta_opt.step()
        history.append(sum(adapted_returns) / len(adapted_returns))

    test_goals = [GOALS[g] for g in torch.randint(len(GOALS), (args.test_tasks,), generator=gen)]
    optimum = sum(optimal_return(grid_task(g)) for g in test_goals) / len(test_goals)
    maml = meta_test(policy, test_goals, args, gen)
    baseline_policy = TabularPolicy(sample_mdp.num_states, sample_mdp.num_actions)
    base = meta_test(baseline_policy, test_goals, args, gen)
    uniform = sum(
        expected_return(grid_task(g), baseline_policy.logits).item() for g in test_goals
    ) / len(test_goals)
    maml_mean, base_mean = sum(maml) / len(maml), sum(base) / len(base)

    print(
        f'exact expected return on {args.test_tasks} test tasks after {args.test_steps} '
        f'policy-gradient step(s) of {args.inner_episodes} episodes:'
    )
    print(f'  MAML initialisation      {maml_mean:7.3f}')
    print(f'  uniform initialisation   {base_mean:7.3f}   (no meta-learning baseline)')
    print(f'  uniform, not adapted     {uniform:7.3f}')
    print(f'  optimal policy           {optimum:7.3f}')

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history, label='MAML (meta-train tasks, after adaptation)')
    ax.axhline(base_mean, color='C1', ls='--', label='uniform init + adaptation (test)')
    ax.axhline(maml_mean, color='C0', ls=':', label='MAML init + adaptation (test)')
    ax.axhline(optimum, color='k', lw=0.8, label='optimal')
    ax.set_xlabel('meta-iteration')
    ax.set_ylabel('expected return')
    ax.set_title('MAML-RL on grid-world navigation')
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = output_dir(args.out) / 'maml_rl.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'plot written to {path}')
    return {'maml': maml_mean, 'baseline': base_mean, 'optimal': optimum, 'uniform': uniform}


if __name__ == '__main__':
    main()
