"""Test-wide settings: one intra-op thread per process.

The suite runs on 2-core machines, often with a second process (DataLoader workers, a torchrun
peer) beside it; PyTorch's default of one thread per core then thrashes (a tiny forward measured
160x slower). One thread keeps timings stable.
"""

import torch

torch.set_num_threads(1)
