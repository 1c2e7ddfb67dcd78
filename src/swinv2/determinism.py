"""Deterministic mode: bit-reproducible training and inference.

```python
import swinv2

swinv2.set_deterministic(0)     # first thing in the script, before building models or data loaders
```

After the call, running the same script twice on the same machine gives bit-identical weights and outputs
on the CPU. What it takes, and what stays the user's job:

- Seeds: Python's `random`, NumPy's global generator and torch's generators (CPU and every GPU) are seeded.
  Stochastic depth, dropout and `torch.randperm`-based shuffling draw from them. DataLoader workers get
  seeds derived from torch's generator, so shuffling is reproducible; NumPy or `random` calls inside a
  worker are not reseeded by torch: seed them in `worker_init_fn` (e.g. from `torch.initial_seed()`).
- Algorithms: `torch.use_deterministic_algorithms(True)`; an operation without a deterministic
  implementation raises instead of silently varying. cuDNN autotuning is switched off.
- Threads: CPU kernels split reductions by the number of threads, so floating-point sums are reproducible
  for a given thread count, not across thread counts. Pass `threads=` to pin it (the default keeps
  torch's choice, which is the same from run to run on one machine). Different CPUs (instruction sets)
  or torch builds may also round differently.
- GPUs: cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` set before CUDA is initialised; it is set here when it is
  not already, so call this function before the first CUDA operation.
- Cost: deterministic kernels can be slower on GPUs; on CPUs the difference is small.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_deterministic(seed: int = 0, *, threads: int | None = None) -> None:
    """Seed every generator and make torch choose deterministic algorithms (see the module docstring).

    Args:
        seed: the seed for `random`, NumPy and torch (CPU and CUDA).
        threads: if given, `torch.set_num_threads(threads)`: results are bit-identical only between runs
            with the same number of intra-op threads.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        torch.set_num_threads(threads)
    # cuBLAS reads this when its handle is created; ":4096:8" is the setting NVIDIA documents for determinism.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
