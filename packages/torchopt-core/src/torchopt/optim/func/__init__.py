"""Functional-style optimizer wrapper (upstream ``torchopt.optim.func``)."""

from torchopt.optim.func.base import FuncOptimizer

__all__ = ['FuncOptimizer']
