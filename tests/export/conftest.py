"""One torch thread for the export tests.

On this 2-core machine with other work running, every two-thread parallel region waits for a
descheduled thread: a tiny model's forward pass took 0.4-0.6 s with two threads and 3 ms with
one. The results do not depend on it; the time does, a hundredfold.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
