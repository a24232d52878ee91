r"""Small tabular RL toolkit shared by the RL examples (MAML-RL, MGRL, LOLA-DiCE).

* :class:`TabularMDP`: a deterministic episodic MDP given by tables ``next_state[s, a]`` and
  ``reward[s, a]``, a start state and a horizon;
* :func:`rollout`: sample a batch of episodes with a tabular softmax policy (vectorised over
  episodes), keeping the log-probabilities differentiable;
* :func:`expected_return` / :func:`optimal_return`: the exact (differentiable) expected return of a
  policy and the optimum, by dynamic programming over the state distribution;
* :func:`magic_box` / :func:`dice_objective`: the DiCE estimator (Foerster et al., 2018), whose
  derivatives of every order are unbiased estimators of the derivatives of the expected return.

With :math:`\boxdot(x) = \exp(x - \bot(x))` (value 1, gradient :math:`\nabla x`) and
:math:`W_t = \sum_{t' \le t} \log \pi(a_{t'} \mid s_{t'})` the stochastic nodes reward
:math:`r_t` depends on,

.. math::

    \mathcal{L}_\text{DiCE} = \sum_t \gamma^t \boxdot(W_t) r_t
        + \sum_t \gamma^t \bigl(1 - \boxdot(\log \pi(a_t \mid s_t))\bigr) b_t,

where the second sum (zero in value and unbiased) is the baseline term that reduces variance.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    'TabularMDP',
    'Trajectories',
    'dice_objective',
    'expected_return',
    'magic_box',
    'optimal_return',
    'rollout',
]


class TabularMDP(NamedTuple):
    """A deterministic episodic MDP.

    Attributes:
        next_state: ``(S, A)`` long tensor, the state reached by action ``a`` in state ``s``.
        reward: ``(S, A)`` float tensor, the reward of action ``a`` in state ``s``.
        start: the start state.
        horizon: the number of steps of an episode (absorbing states loop with zero reward).
    """

    next_state: torch.Tensor
    reward: torch.Tensor
    start: int
    horizon: int

    @property
    def num_states(self) -> int:
        """Number of states ``S``."""
        return self.next_state.shape[0]

    @property
    def num_actions(self) -> int:
        """Number of actions ``A``."""
        return self.next_state.shape[1]


class Trajectories(NamedTuple):
    """A batch of ``N`` episodes of ``H`` steps (all fields ``(N, H)``)."""

    states: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor  # differentiable w.r.t. the policy logits
    rewards: torch.Tensor


def _check_logits(mdp: TabularMDP, logits: torch.Tensor) -> None:
    if logits.shape != (mdp.num_states, mdp.num_actions):
        raise ValueError(
            f'`logits` must have shape (num_states, num_actions) = '
            f'{(mdp.num_states, mdp.num_actions)}, got {tuple(logits.shape)}'
        )


def rollout(
    mdp: TabularMDP, logits: torch.Tensor, episodes: int, generator: torch.Generator | None = None
) -> Trajectories:
    """Sample ``episodes`` episodes with the policy ``softmax(logits[s])``.

    Args:
        mdp: the environment.
        logits: ``(S, A)`` policy logits (may require grad; the log-probabilities keep the graph).
        episodes: number of episodes sampled in parallel.
        generator: random generator for the actions.

    Returns:
        The trajectories, each field of shape ``(episodes, horizon)``.
    """
    _check_logits(mdp, logits)
    if episodes < 1:
        raise ValueError(f'`episodes` must be a positive integer, got {episodes}')
    log_pi = torch.log_softmax(logits, dim=-1)
    probs = log_pi.detach().exp()
    state = torch.full((episodes,), mdp.start, dtype=torch.long)
    states, actions = [], []
    for _ in range(mdp.horizon):  # sample with detached probabilities ...
        action = torch.multinomial(probs[state], 1, generator=generator).squeeze(-1)
        states.append(state)
        actions.append(action)
        state = mdp.next_state[state, action]
    s, a = torch.stack(states, dim=1), torch.stack(actions, dim=1)
    # ... then gather the differentiable log-probabilities of all steps at once
    return Trajectories(s, a, log_pi[s, a], mdp.reward[s, a])


def expected_return(mdp: TabularMDP, logits: torch.Tensor, discount: float = 1.0) -> torch.Tensor:
    r"""Exact expected (discounted) return of ``softmax(logits)``, differentiable.

    The state distribution is propagated exactly:
    :math:`d_{t+1}(s') = \sum_{s, a} d_t(s) \pi(a \mid s) [\text{next}(s, a) = s']` and
    :math:`J = \sum_t \gamma^t \sum_{s, a} d_t(s) \pi(a \mid s) r(s, a)`.
    """
    _check_logits(mdp, logits)
    pi = torch.softmax(logits, dim=-1)
    transition = torch.nn.functional.one_hot(mdp.next_state.reshape(-1), mdp.num_states).to(pi)
    dist = torch.zeros(mdp.num_states, dtype=pi.dtype)
    dist[mdp.start] = 1.0
    total = pi.new_zeros(())
    for t in range(mdp.horizon):
        joint = dist[:, None] * pi  # (S, A) probability of (s_t, a_t)
        total = total + discount**t * (joint * mdp.reward.to(pi)).sum()
        dist = joint.reshape(-1) @ transition
    return total


def optimal_return(mdp: TabularMDP, discount: float = 1.0) -> float:
    """The best achievable expected return (finite-horizon value iteration)."""
    value = torch.zeros(mdp.num_states, dtype=torch.float64)
    reward = mdp.reward.to(torch.float64)
    for _ in range(mdp.horizon):
        value = (reward + discount * value[mdp.next_state]).max(dim=-1).values
    return value[mdp.start].item()


def magic_box(x: torch.Tensor) -> torch.Tensor:
    r"""DiCE's magic box :math:`\exp(x - \bot(x))`: evaluates to 1, differentiates like ``x``."""
    return torch.exp(x - x.detach())


def dice_objective(
    log_probs: torch.Tensor,
    rewards: torch.Tensor,
    discount: float = 1.0,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DiCE surrogate of the expected discounted return, averaged over episodes.

    Args:
        log_probs: ``(N, H)`` log-probabilities of the stochastic nodes at each step (for several
            agents, the sum of their log-probabilities).
        rewards: ``(N, H)`` rewards.
        discount: the discount factor (a float or a differentiable 0-d tensor).
        values: optional ``(N, H)`` or ``(H,)`` baselines ``b_t`` (treated as constants here).

    Returns:
        A 0-d tensor to maximise.
    """
    if log_probs.shape != rewards.shape or log_probs.dim() != 2:
        raise ValueError(
            '`log_probs` and `rewards` must both have shape (episodes, horizon), got '
            f'{tuple(log_probs.shape)} and {tuple(rewards.shape)}'
        )
    steps = torch.arange(rewards.shape[1], dtype=rewards.dtype)
    weights = torch.as_tensor(discount, dtype=rewards.dtype) ** steps
    dependencies = torch.cumsum(log_probs, dim=1)
    objective = (magic_box(dependencies) * weights * rewards).sum(dim=1)
    if values is not None:
        objective = objective + ((1 - magic_box(log_probs)) * weights * values.detach()).sum(dim=1)
    return objective.mean()
