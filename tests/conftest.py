"""Shared pytest setup: the unit tests use tiny tensors, where intra-op threads only add overhead
and contention on the 2-core machine CI runs on. ``mdkl`` is imported first so that its pinned
numeric kernel path (``mdkl.NUMERIC_KERNEL_ENV``) is in force before any torch operation runs."""

import mdkl  # noqa: F401  (pins the numeric kernel path before torch computes anything)
import torch

torch.set_num_threads(1)
