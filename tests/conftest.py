"""Strict test settings: 8 simulated CPU devices, rank promotion raises. One compilation cache
for the session (its pytest-xdist workers and the commands the tests start): the tests compile
the same training and evaluation steps again and again (each run builds its own jitted
functions); the cache is keyed by the program, so a changed program (a planted bug) is
compiled afresh."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="trm-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
