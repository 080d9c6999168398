"""Shared test settings: one torch thread per test process (2-core CI machines)."""

import torch

torch.set_num_threads(1)
