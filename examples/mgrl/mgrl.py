r"""Meta-gradient reinforcement learning: learning the discount factor online (Xu et al., 2018).

"Meta-Gradient Reinforcement Learning" (Xu, van Hasselt and Silver, NeurIPS 2018) treats the
return's discount :math:`\gamma = \sigma(\eta)` as a meta-parameter. Each iteration the agent takes
a REINFORCE step with :math:`\gamma`-discounted returns on sampled episodes (a differentiable
``torchopt.MetaSGD`` step), then :math:`\eta` follows the gradient of the *true* objective (the
undiscounted return, :math:`\gamma' = 1`) measured on fresh episodes of the updated policy:

.. math::

    \theta' = \theta + \alpha \sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)
        \bigl(G^{\gamma}_t - b_t\bigr), \qquad
    \eta \leftarrow \eta + \beta \, \frac{\partial \theta'}{\partial \eta}^{\!\top}
        \sum_t \nabla_{\theta'} \log \pi_{\theta'}(a'_t \mid s'_t) \bigl(G^{1}_t - b'_t\bigr).

The environment is a corridor of ``--length`` states where every state offers a small immediate
reward (+1, episode ends) and the end of the corridor pays +10. With a short-sighted
:math:`\gamma` the agent learns to grab +1 at once; the meta-gradient raises :math:`\gamma` until
walking to the end wins. Baseline: the same learner with :math:`\gamma` fixed at its initial
value.

    python examples/mgrl/mgrl.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, output_dir, progress, pyplot, set_threads  # noqa: E402
from rl_common import TabularMDP, expected_return, optimal_return, rollout  # noqa: E402

import torchopt  # noqa: E402

__all__ = ['corridor', 'discounted_returns', 'main', 'policy_gradient_loss', 'train']

CASH, WALK = 0, 1


def corridor(length: int = 6, small: float = 1.0, large: float = 10.0) -> TabularMDP:
    """Corridor states ``0..length-1`` and an absorbing terminal state ``length``."""
    if length < 1:
        raise ValueError(f'`length` must be a positive integer, got {length}')
    terminal = length
    next_state = torch.full((length + 1, 2), terminal, dtype=torch.long)
    reward = torch.zeros(length + 1, 2)
    for s in range(length):
        reward[s, CASH] = small
        next_state[s, WALK] = s + 1
    reward[length - 1, WALK] = large
    return TabularMDP(next_state, reward, start=0, horizon=length + 1)


def discounted_returns(rewards: torch.Tensor, discount: torch.Tensor | float) -> torch.Tensor:
    r"""Returns-to-go :math:`G_t = \sum_{k \ge t} \gamma^{k - t} r_k` (differentiable in gamma)."""
    returns, running = [], rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + discount * running
        returns.append(running)
    return torch.stack(returns[::-1], dim=1)


def policy_gradient_loss(
    log_probs: torch.Tensor, rewards: torch.Tensor, discount: torch.Tensor | float
) -> torch.Tensor:
    """REINFORCE surrogate (to minimise) with a time-dependent mean baseline."""
    returns = discounted_returns(rewards, discount)
    advantages = returns - returns.mean(dim=0).detach()
    return -(log_probs * advantages).sum(dim=1).mean()


class Policy(nn.Module):
    """A tabular softmax policy, uniform at initialisation."""

    def __init__(self, num_states: int, num_actions: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_states, num_actions))


def train(
    mdp: TabularMDP, args: argparse.Namespace, meta: bool, generator: torch.Generator
) -> tuple[list[float], list[float]]:
    """Train a policy; with ``meta`` also learn gamma. Returns (returns, gammas) per iteration."""
    policy = Policy(mdp.num_states, mdp.num_actions)
    inner_opt = torchopt.MetaSGD(policy, lr=args.lr)
    eta = torch.tensor(math.log(args.gamma / (1 - args.gamma)), requires_grad=meta)
    meta_opt = torch.optim.Adam([eta], lr=args.meta_lr) if meta else None
    returns, gammas = [], []
    for _ in progress(range(args.iterations), 'MGRL' if meta else 'fixed gamma'):
        gamma = torch.sigmoid(eta)
        traj = rollout(mdp, policy.logits, args.episodes, generator)
        inner_opt.step(policy_gradient_loss(traj.log_probs, traj.rewards, gamma))
        if meta:
            # Cross-validation: the true (undiscounted) objective on fresh episodes of theta'.
            fresh = rollout(mdp, policy.logits, args.episodes, generator)
            meta_loss = policy_gradient_loss(fresh.log_probs, fresh.rewards, 1.0)
            meta_opt.zero_grad()
            meta_loss.backward(inputs=[eta])
            meta_opt.step()
        torchopt.stop_gradient(policy)  # theta' becomes the new (leaf) starting point
        returns.append(expected_return(mdp, policy.logits.detach()).item())
        gammas.append(torch.sigmoid(eta).item())
    return returns, gammas


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train with a meta-learned and with a fixed discount; compare undiscounted returns."""
    parser = argparse.ArgumentParser(description='Meta-gradient RL learning the discount factor')
    add_common_args(parser, __file__)
    parser.add_argument('--iterations', type=int, default=400)
    parser.add_argument('--episodes', type=int, default=64, help='episodes per update')
    parser.add_argument('--length', type=int, default=6, help='corridor length')
    parser.add_argument('--gamma', type=float, default=0.5, help='initial discount factor')
    parser.add_argument('--lr', type=float, default=0.2, help='policy learning rate')
    parser.add_argument('--meta-lr', type=float, default=0.2, help='learning rate of logit(gamma)')
    args = parser.parse_args(argv)
    if not 0.0 < args.gamma < 1.0:
        parser.error(f'--gamma must be in (0, 1), got {args.gamma}')
    if args.quick:
        args.iterations = 150
    set_threads()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    mdp = corridor(args.length)
    optimum = optimal_return(mdp)
    print(
        f'MGRL on a corridor of {args.length} states, {args.iterations} updates, '
        f'initial gamma {args.gamma}'
    )
    meta_returns, gammas = train(mdp, args, meta=True, generator=gen)
    fixed_returns, _ = train(mdp, args, meta=False, generator=gen)
    window = max(1, args.iterations // 10)
    mgrl = sum(meta_returns[-window:]) / window
    fixed = sum(fixed_returns[-window:]) / window
    print(f'exact undiscounted return (mean of the last {window} updates):')
    print(f'  MGRL (learned gamma -> {gammas[-1]:.3f})  {mgrl:6.3f}')
    print(f'  fixed gamma = {args.gamma:<12}     {fixed:6.3f}   (baseline)')
    print(f'  optimal                          {optimum:6.3f}')

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(meta_returns, label='MGRL (learned gamma)')
    ax1.plot(fixed_returns, label=f'fixed gamma = {args.gamma}')
    ax1.axhline(optimum, color='k', lw=0.8, label='optimal')
    ax1.set_xlabel('update')
    ax1.set_ylabel('undiscounted return')
    ax1.legend(fontsize=8)
    ax2.plot(gammas, color='C0')
    ax2.set_xlabel('update')
    ax2.set_ylabel('gamma = sigmoid(eta)')
    fig.suptitle('Meta-gradient RL: learning the discount')
    fig.tight_layout()
    path = output_dir(args.out) / 'mgrl.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'plot written to {path}')
    return {'mgrl': mgrl, 'baseline': fixed, 'gamma': gammas[-1], 'optimal': optimum}


if __name__ == '__main__':
    main()
