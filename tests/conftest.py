"""Shared test setup.

- Tests run on the CPU with float32 and 64-bit off, as users run them.
- One persistent XLA compilation cache for the whole session, set before JAX starts: every in-process test
  and every subprocess a test starts (they inherit the environment) compiles a given program once. Tests
  train the same small models many times, and on 2 cores compiling is most of a small run's time. A
  cached executable is the one XLA compiled, so no number changes.
- pytest-xdist runs the modules on two workers (pyproject's addopts; `-n 0` runs in one process);
  training runs that several modules derive checks from are made once per session
  (`tests/shared_runs.py`).
"""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "LGMM_TEST_COMPILATION_CACHE" not in os.environ:  # the controller; xdist's workers inherit it
    os.environ["LGMM_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="lgmm_jax_tests_xla_cache_")
os.environ.update(
    JAX_COMPILATION_CACHE_DIR=os.environ["LGMM_TEST_COMPILATION_CACHE"],
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
)


def pytest_unconfigure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(os.environ["LGMM_TEST_COMPILATION_CACHE"], ignore_errors=True)
