import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the shared tables (optimizer_table.py)


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for one test.

    The float64 parity tests need it: torch.optim keeps some scalars (NAdam's momentum product,
    ASGD's eta and mu, Rprop's step sizes) in the default dtype.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
