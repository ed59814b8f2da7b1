"""`notellm.device.rewarded_threads`: all cores only when a matmul is enough faster on them; torch's thread
count is left as it was."""

import os

import torch

from notellm.device import rewarded_threads


def test_rewarded_threads_follows_the_measured_speedup():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    before = torch.get_num_threads()
    assert rewarded_threads(min_speedup=0.0) == cores          # any speed-up is enough
    assert rewarded_threads(min_speedup=float("inf")) == 1     # none is
    assert rewarded_threads(max_threads=1) == 1
    assert torch.get_num_threads() == before
