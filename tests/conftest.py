"""Shared pytest setup: the unit tests use tiny tensors, where intra-op threads only add overhead
and contention on the 2-core machine CI runs on."""

import torch

torch.set_num_threads(1)
