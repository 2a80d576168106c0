"""`python -m sai.models.build_cpu_kernels [--force]`: compile the C++ CPU kernels of the sai ops."""

import sys

from sai.models import cpu_kernels

if __name__ == "__main__":
    if cpu_kernels.stale() or "--force" in sys.argv[1:]:
        print(cpu_kernels.build())
    else:
        print(f"{cpu_kernels.LIBRARY} is up to date")
