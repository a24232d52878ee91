r"""LOLA-DiCE on the iterated prisoner's dilemma (Foerster et al., 2018).

"Learning with Opponent-Learning Awareness" (LOLA; Foerster et al., AAMAS 2018) lets each agent
differentiate through one (or more) anticipated learning steps of its opponent; "DiCE: The
Infinitely Differentiable Monte-Carlo Estimator" (Foerster et al., ICML 2018) makes that
possible from sampled episodes. With :math:`J_i` the DiCE objective of agent :math:`i`,

.. math::

    \theta_2' = \theta_2 + \alpha_\text{in} \nabla_{\theta_2} J_2(\theta_1, \theta_2), \qquad
    \theta_1 \leftarrow \theta_1 + \alpha_\text{out} \nabla_{\theta_1} J_1(\theta_1, \theta_2'),

and symmetrically for agent 2. The opponent's lookahead is a differentiable step of the
functional ``torchopt.sgd(..., maximize=True)`` with ``inplace=False``; the outer updates use
``torchopt.Adam``. Each agent's memory-one policy is five logits: :math:`P(\text{cooperate})` at the
start and after each joint outcome CC, CD, DC, DD. Baseline: naive learners (plain policy
gradient, no lookahead), which learn to defect.

    python examples/lola/lola_dice.py [--quick] [--lookaheads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402
from rl_common import dice_objective  # noqa: E402

import torchopt  # noqa: E402

__all__ = ['IPDEpisodes', 'PAYOFF', 'STATES', 'ipd_rollout', 'lola_gradient', 'main', 'train']

STATES = ('start', 'CC', 'CD', 'DC', 'DD')
#: PAYOFF[a1, a2] = (reward of agent 1, reward of agent 2); action 0 cooperates, 1 defects.
PAYOFF = torch.tensor([[[-1.0, -1.0], [-3.0, 0.0]], [[0.0, -3.0], [-2.0, -2.0]]])


class IPDEpisodes(NamedTuple):
    """Iterated-prisoner's-dilemma episodes of ``R`` independent runs (fields ``(R, batch, length)``)."""

    states: torch.Tensor
    log_probs: tuple[torch.Tensor, torch.Tensor]
    values: tuple[torch.Tensor, torch.Tensor]
    rewards: tuple[torch.Tensor, torch.Tensor]


def _gather(table: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``table[r, states[r, ...]]`` for a ``(R, 5)`` table and ``(R, ...)`` states."""
    return table.gather(1, states.reshape(len(states), -1)).reshape(states.shape)


def ipd_rollout(
    thetas: tuple[torch.Tensor, torch.Tensor],
    values: tuple[torch.Tensor, torch.Tensor],
    batch: int,
    length: int,
    generator: torch.Generator,
) -> IPDEpisodes:
    """Play ``batch`` episodes of ``length`` rounds in each of ``R`` independent runs.

    ``thetas`` and ``values`` are ``(R, 5)``. The rounds are sampled with detached probabilities;
    the differentiable log-probabilities and values of all rounds are gathered at once afterwards,
    which keeps the autograd graph small.
    """
    runs = thetas[0].shape[0]
    p_defect = [torch.sigmoid(-theta.detach()) for theta in thetas]
    uniform = torch.rand(length, 2, runs, batch, generator=generator)
    state = torch.zeros(runs, batch, dtype=torch.long)
    states, actions = [], ([], [])
    for t in range(length):
        states.append(state)
        moves = [(uniform[t, i] < p_defect[i].gather(1, state)).long() for i in range(2)]
        for i in range(2):
            actions[i].append(moves[i])
        state = 1 + 2 * moves[0] + moves[1]
    s = torch.stack(states, dim=-1)
    a = [torch.stack(actions[i], dim=-1) for i in range(2)]
    # log P(cooperate) = logsigmoid(theta[s]), log P(defect) = logsigmoid(-theta[s])
    log_probs = tuple(
        torch.where(
            a[i].bool(), _gather(F.logsigmoid(-thetas[i]), s), _gather(F.logsigmoid(thetas[i]), s)
        )
        for i in range(2)
    )
    return IPDEpisodes(
        s,
        log_probs,
        (_gather(values[0], s), _gather(values[1], s)),
        (PAYOFF[a[0], a[1], 0], PAYOFF[a[0], a[1], 1]),
    )


def agent_objective(ep: IPDEpisodes, i: int, gamma: float) -> torch.Tensor:
    """Sum over runs of agent ``i``'s DiCE objective (its rewards depend on both agents)."""
    runs, batch, length = ep.states.shape
    flat = lambda x: x.reshape(runs * batch, length)  # noqa: E731
    both = flat(ep.log_probs[0] + ep.log_probs[1])
    return runs * dice_objective(both, flat(ep.rewards[i]), gamma, values=flat(ep.values[i]))


def value_loss(ep: IPDEpisodes, i: int, gamma: float) -> torch.Tensor:
    """Squared error of agent ``i``'s state values against its discounted returns-to-go."""
    rewards, returns = ep.rewards[i], []
    running = ep.values[i][..., -1].detach()  # bootstrap the truncated tail
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + gamma * running
        returns.append(running)
    return F.mse_loss(ep.values[i], torch.stack(returns[::-1], dim=-1))


def lola_gradient(
    i: int,
    thetas: list[torch.Tensor],
    values: list[torch.Tensor],
    args: argparse.Namespace,
    generator: torch.Generator,
) -> torch.Tensor:
    """Gradient of agent ``i``'s objective after ``args.lookaheads`` opponent steps."""
    j = 1 - i
    lookahead = torchopt.sgd(lr=args.lr_in, maximize=True)
    opponent = thetas[j]
    state = lookahead.init(opponent)
    for _ in range(args.lookaheads):
        pair = (thetas[0], opponent) if i == 0 else (opponent, thetas[1])
        ep = ipd_rollout(pair, values, args.batch, args.length, generator)
        (grad,) = torch.autograd.grad(
            agent_objective(ep, j, args.gamma), opponent, create_graph=True
        )
        updates, state = lookahead.update(grad, state, inplace=False)
        opponent = torchopt.apply_updates(opponent, updates, inplace=False)
    pair = (thetas[0], opponent) if i == 0 else (opponent, thetas[1])
    ep = ipd_rollout(pair, values, args.batch, args.length, generator)
    (grad,) = torch.autograd.grad(agent_objective(ep, i, args.gamma), thetas[i])
    return grad


def train(args: argparse.Namespace, lookaheads: int, generator: torch.Generator) -> dict:
    """Train ``args.runs`` independent pairs of agents at once (LOLA if ``lookaheads`` > 0)."""
    args = argparse.Namespace(**{**vars(args), 'lookaheads': lookaheads})
    thetas = [torch.zeros(args.runs, 5, requires_grad=True) for _ in range(2)]
    values = [torch.zeros(args.runs, 5, requires_grad=True) for _ in range(2)]
    theta_opt = torchopt.Adam(thetas, lr=args.lr_out)  # element-wise: the runs stay independent
    value_opt = torchopt.Adam(values, lr=args.lr_v)
    rewards, coop_probs = [], []
    name = f'LOLA-DiCE ({lookaheads} lookahead)' if lookaheads else 'naive learners'
    for _ in progress(range(args.iterations), name):
        grads = [lola_gradient(i, thetas, values, args, generator) for i in range(2)]
        theta_opt.zero_grad()
        for theta, grad in zip(thetas, grads):
            theta.grad = -grad  # ascend the objectives
        theta_opt.step()
        # Evaluate the new policies and fit the value baselines on the same episodes.
        ep = ipd_rollout(tuple(thetas), tuple(values), args.batch, args.length, generator)
        value_opt.zero_grad()
        (value_loss(ep, 0, args.gamma) + value_loss(ep, 1, args.gamma)).backward(inputs=values)
        value_opt.step()
        rewards.append(((ep.rewards[0] + ep.rewards[1]) / 2).mean(dim=(1, 2)))  # per run
        coop_probs.append(torch.sigmoid(thetas[0].detach()))
    window = max(1, args.iterations // 10)
    final = torch.stack(rewards[-window:]).mean(dim=0)  # (R,)
    return {
        'rewards': torch.stack(rewards),
        'coop_probs': torch.stack(coop_probs),  # (T, R), (T, R, 5)
        'reward': final.mean().item(),
        # a run "cooperates" when its reward per round is closer to CC (-1) than to DD (-2)
        'cooperating_runs': (final > -1.5).float().mean().item(),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train LOLA-DiCE agents and naive learners; compare rewards and cooperation."""
    parser = argparse.ArgumentParser(description="LOLA-DiCE on the iterated prisoner's dilemma")
    add_common_args(parser, __file__)
    parser.add_argument('--iterations', type=int, default=200)
    parser.add_argument('--runs', type=int, default=8, help='independent runs, trained at once')
    parser.add_argument('--lookaheads', type=int, default=1, help='opponent steps anticipated')
    parser.add_argument('--batch', type=int, default=128, help='episodes per rollout')
    parser.add_argument('--length', type=int, default=150, help='rounds per episode')
    parser.add_argument('--gamma', type=float, default=0.96)
    parser.add_argument('--lr-out', type=float, default=0.2)
    parser.add_argument('--lr-in', type=float, default=0.3)
    parser.add_argument('--lr-v', type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.lookaheads < 1:
        parser.error(f'--lookaheads must be a positive integer, got {args.lookaheads}')
    if args.runs < 1:
        parser.error(f'--runs must be a positive integer, got {args.runs}')
    if args.quick:
        args.iterations, args.length = 150, 100
    set_threads()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    print(
        f"Iterated prisoner's dilemma: {args.runs} independent runs of {args.iterations} "
        f'updates, {args.batch} episodes of {args.length} rounds per rollout'
    )
    lola = train(args, args.lookaheads, gen)
    naive = train(args, 0, gen)
    print(
        'reward per round and agent, mean over runs of the last 10% of updates '
        '(CC = -1, DD = -2), and the fraction of runs that cooperate (reward > -1.5):'
    )
    print(
        f'  LOLA-DiCE       {lola["reward"]:6.3f}   cooperating runs {lola["cooperating_runs"]:.2f}'
    )
    print(
        f'  naive learners  {naive["reward"]:6.3f}   cooperating runs '
        f'{naive["cooperating_runs"]:.2f}   (baseline)'
    )
    print('agent 1 P(cooperate | state) at the end, mean over runs:')
    for label, run in (('LOLA-DiCE', lola), ('naive', naive)):
        probs = '  '.join(f'{s}={p:.2f}' for s, p in zip(STATES, run['coop_probs'][-1].mean(0)))
        print(f'  {label:10s} {probs}')

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (label, run) in zip(axes[:2], (('LOLA-DiCE', lola), ('naive learners', naive))):
        probs = run['coop_probs'].mean(dim=1)  # (T, 5), mean over runs
        for k, s in enumerate(STATES):
            ax.plot(probs[:, k], label=s)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f'{label}: agent 1 P(cooperate | state)', fontsize=10)
        ax.set_xlabel('update')
        ax.legend(fontsize=7)
    for k, (label, run) in enumerate((('LOLA-DiCE', lola), ('naive learners', naive))):
        axes[2].plot(run['rewards'], color=f'C{k}', lw=0.6, alpha=0.5)
        axes[2].plot(run['rewards'].mean(dim=1), color=f'C{k}', lw=2, label=label)
    axes[2].set_xlabel('update')
    axes[2].set_ylabel('reward per round (thin: single runs)')
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = output_dir(args.out) / 'lola_dice.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'plot written to {path}')
    return {
        'lola_reward': lola['reward'],
        'naive_reward': naive['reward'],
        'lola_cooperating_runs': lola['cooperating_runs'],
        'naive_cooperating_runs': naive['cooperating_runs'],
    }


if __name__ == '__main__':
    main()
