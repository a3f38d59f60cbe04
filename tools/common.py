"""Peak memory of this process for the benchmarks: the resident set on the CPU, the allocator peak on CUDA. Run
tools as modules from the repository root (``python -m tools.<name>``) so that this module is importable."""

from __future__ import annotations

import resource


def reset_peak_memory(device: str = "cpu") -> None:
    """Start a new high-water mark: CUDA's allocator peak, or (Linux) the process's peak resident set."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass  # not Linux: the baseline is then the earlier peak, and a growth measured from it a lower bound


def peak_memory_mib(device: str = "cpu") -> float:
    """The high-water mark since :func:`reset_peak_memory`: CUDA's allocator peak, or the peak resident set."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
