import pytest
import torch as th


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Bitwise comparisons need the same reduction order in both runs."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)
