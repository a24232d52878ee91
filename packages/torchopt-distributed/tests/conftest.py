"""Shared setup of the torchopt-distributed tests: one thread, the launcher importable."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
