import pytest
import torch

import torchopt_accel  # noqa: F401  (registers torch.ops.torchopt_accel)


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and torchopt_accel.build_info()['cuda']:
        return
    reason = (
        'no CUDA device' if not torch.cuda.is_available() else 'torchopt-accel built without CUDA'
    )
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
