"""Kernel tests run the Triton kernels under the CPU interpreter; triton.jit reads this at decoration time,
so it must be set before the first `import kernels.*` (this conftest is loaded before the test modules here)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
