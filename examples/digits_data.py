"""Classification data from scikit-learn's bundled digits (no download), shared by the examples.

* :func:`imbalanced_noisy_digits`: a two-class, class-imbalanced training split with label noise,
  a small clean balanced validation split and a balanced test split (learning-to-reweight);
* :func:`digits_classification`: the ten-class problem split into train and test (ensembles).

Few-shot tasks live in ``fewshot_digits.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ['ImbalancedSplit', 'Split', 'digits_classification', 'imbalanced_noisy_digits']


class Split(NamedTuple):
    """Inputs ``(n, 64)`` in [0, 1] and integer labels ``(n,)``."""

    x: torch.Tensor
    y: torch.Tensor


class ImbalancedSplit(NamedTuple):
    """Noisy imbalanced training set, clean validation and test sets, and the clean train labels."""

    train: Split
    val: Split
    test: Split
    train_clean_labels: torch.Tensor


def _load(dtype: torch.dtype) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=dtype) / 16.0
    return Split(x, torch.tensor(digits.target))


def imbalanced_noisy_digits(
    classes: tuple[int, int] = (4, 9),
    majority: float = 0.95,
    noise: float = 0.2,
    val_per_class: int = 5,
    test_per_class: int = 50,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ImbalancedSplit:
    """Two digit classes relabelled 0 (majority) and 1 (minority).

    The training set holds all remaining majority images and as many minority images as make
    the majority fraction ``majority``; a fraction ``noise`` of its labels is flipped. The
    validation (``val_per_class`` per class) and test (``test_per_class`` per class) sets are
    balanced and clean.

    Args:
        classes: the (majority, minority) digits.
        majority: fraction of the training set in the majority class, in [0.5, 1).
        noise: fraction of training labels flipped, in [0, 0.5).
        val_per_class: clean validation images per class.
        test_per_class: test images per class.
        seed: seed of the split and of the noise.
        dtype: floating dtype of the inputs.
    """
    if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c <= 9 for c in classes):
        raise ValueError(f'`classes` must be two different digits, got {classes!r}')
    if not 0.5 <= majority < 1.0:
        raise ValueError(f'`majority` must be in [0.5, 1), got {majority}')
    if not 0.0 <= noise < 0.5:
        raise ValueError(f'`noise` must be in [0, 0.5), got {noise}')
    data = _load(dtype)
    g = torch.Generator().manual_seed(seed)
    pools = []
    for c in classes:
        idx = torch.nonzero(data.y == c).squeeze(1)
        pools.append(idx[torch.randperm(len(idx), generator=g)])
    held = val_per_class + test_per_class
    if min(len(p) for p in pools) <= held:
        raise ValueError(f'`val_per_class` + `test_per_class` = {held} leaves no training data')
    n_major = len(pools[0]) - held
    n_minor = max(1, round(n_major * (1 - majority) / majority))
    parts = {'val': [], 'test': [], 'train': []}
    for label, (pool, n_train) in enumerate(zip(pools, (n_major, n_minor))):
        for name, sl in (
            ('val', slice(0, val_per_class)),
            ('test', slice(val_per_class, held)),
            ('train', slice(held, held + n_train)),
        ):
            idx = pool[sl]
            parts[name].append((data.x[idx], torch.full((len(idx),), label)))

    def cat(name: str) -> Split:
        return Split(torch.cat([x for x, _ in parts[name]]), torch.cat([y for _, y in parts[name]]))

    train = cat('train')
    flip = torch.rand(len(train.y), generator=g) < noise
    noisy = torch.where(flip, 1 - train.y, train.y)
    return ImbalancedSplit(Split(train.x, noisy), cat('val'), cat('test'), train.y)


def digits_classification(
    test_fraction: float = 0.3, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Split, Split]:
    """The ten-class digits problem, shuffled and split into (train, test)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f'`test_fraction` must be in (0, 1), got {test_fraction}')
    data = _load(dtype)
    perm = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(perm) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return Split(data.x[train], data.y[train]), Split(data.x[test], data.y[test])
