"""Edge tests run tiny models; on a shared 2-core machine they are ~10x faster on one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
