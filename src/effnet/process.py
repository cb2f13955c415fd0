"""Process-wide settings that effnet's commands make before they allocate anything.

Every forward and backward pass writes its activations into newly allocated memory, and on Linux each
first touch of a 4 KiB page is a page fault, which costs far more inside a virtual machine than on bare
metal: on a 2-core cloud VM (AMD EPYC) a training step of tf_efficientnet_cc_b0_4e at batch 32 took 180k
faults and a quarter of its CPU time in the kernel. With THP_MEM_ALLOC_ENABLE=1, PyTorch's CPU allocator
backs buffers of 2 MiB and more with transparent huge pages: 6k faults per step, and the step 1.05-1.4x
faster (README, Benchmarks). PyTorch reads the variable at its first large allocation, so setting it at
the start of a command, before any model exists, is in time.
"""

from __future__ import annotations

import os

HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> str:
    """Set THP_MEM_ALLOC_ENABLE=1 unless the user set it (0 keeps 4 KiB pages); returns the value in force.
    Only effnet's command line calls this: a Python program's allocator is its own to configure."""
    return os.environ.setdefault(HUGE_PAGES, "1")


def huge_pages() -> str:
    """The THP_MEM_ALLOC_ENABLE value in force, for reports ('0 (default)' when unset)."""
    return os.environ.get(HUGE_PAGES, "0 (default)")
