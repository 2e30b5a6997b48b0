"""Shared test setup: tests run on the CPU with float32 and 64-bit off, as users run them."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
