"""The peak resident memory of this process, for the benchmarks and their peer runners (the
standard library only: the peers run in environments of their own)."""

import resource
import sys


def peak_rss_gb() -> float:
    """VmHWM on Linux (ru_maxrss there keeps the parent's peak across fork+exec); ru_maxrss,
    in bytes, on macOS."""
    if sys.platform == "linux":
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e9
