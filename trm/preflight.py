"""What a run does before its first step: the CPU device split and the multi-host start, the
batch and storage checks, and its data set (generated, or copied from a URL).

Shared by `train.py` (`trm.loop.train`), `evaluate.py` and the benchmarks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from data.storage import is_url, local_copy, probe_write
from trm.cli import BLOCKING_THREAD, RunFailed, short_reason
from trm.config import ConfigError, flag_name
from trm.config_diff import to_json
from trm.run_config import MeshConfig, RunConfig


def split_cpu(m: MeshConfig, *batches: int | None) -> int | None:
    """Before JAX starts: one XLA:CPU device per core, so that a CPU run's data-parallel shards
    run side by side. Returns the device count set (None: left as it was).

    XLA:CPU runs a device's operations one after another: its matmuls use every core, but the
    recursion's many small element-wise and loop operations run on one. Sharding the batch over
    one device per core overlaps them (1.0-1.45x per step on 2 cores, README "Performance"). The count
    is `m.data` when a mesh size is asked for, else the largest <= the cores (or at most
    `m.cpu_devices`) that divides every batch given. Left alone when `m.cpu_devices` is 1, when
    XLA_FLAGS or `jax_num_cpu_devices` already set it, when JAX has started (its devices are
    fixed then), and multi-host unless `m.cpu_devices` asks.
    """
    if (m.cpu_devices == 1 or (m.distributed and m.cpu_devices == 0)
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices != -1):
        return None
    limit = m.cpu_devices or len(os.sched_getaffinity(0))
    count = m.data if m.data > 0 and not m.cpu_devices else max(
        n for n in range(1, limit + 1) if all(b is None or b % n == 0 for b in batches))
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has started: its devices are fixed
        return None
    return count


_JAX_ABORT_MARGIN_S = 60  # jax.distributed aborts the process (C++) this long after ours


def _interruptible(call: Callable[[], None], timeout: float, on_timeout: str) -> None:
    """`call()` in a helper thread while this one waits, at most `timeout` seconds (RunFailed
    `on_timeout` then): a blocking C++ call (jax waiting for the other processes) never
    returns to Python, so Ctrl-C and SIGTERM would wait for it, and jax's own timeout aborts
    the process with a C++ stack trace. The command then ends with os._exit
    (`trm.cli.exit_process`), which ends the thread."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:  # noqa: BLE001 (raised again in the waiting thread)
            failed.append(e)

    thread = threading.Thread(target=run, name=BLOCKING_THREAD, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        thread.join(0.2)
        if thread.is_alive() and time.monotonic() > deadline:
            raise RunFailed(on_timeout)
    if failed:
        raise failed[0]


def initialize_distributed(m: MeshConfig, settings: object, *,
                           preemption_sync: bool = False) -> None:
    """jax.distributed.initialize when launched multi-host (`train.py` and `evaluate.py`);
    without a coordinator address jax detects the cluster (TPU pod, SLURM, ...). RunFailed
    when not every process joins within `m.join_timeout` seconds; ConfigError when a process
    was started with other `settings` (the command's config dataclass) than process 0
    (`check_same_settings`).

    jax.distributed installs its preemption notifier as the SIGTERM handler (a notice all
    processes agree on a step to stop at, `trm.run_checkpoints.preemption_reached`). With
    `preemption_sync` (a training run) it keeps SIGTERM; else Python's handler is put back,
    so that SIGTERM stops the command (`trm.cli.sigterm_as_interrupt`)."""
    if not m.distributed:
        return
    local = m.coordinator_address is not None and m.coordinator_address.startswith(
        ("127.0.0.1:", "localhost:"))
    where = f" at {m.coordinator_address}" if m.coordinator_address else ""
    if m.coordinator_address is not None and None not in (m.process_id, m.num_processes):
        print(f"process {m.process_id}: waiting for all {m.num_processes} processes{where} "
              f"(at most {m.join_timeout} s, --mesh.join-timeout)", file=sys.stderr, flush=True)
    try:
        _interruptible(functools.partial(
            jax.distributed.initialize,
            coordinator_address=m.coordinator_address, num_processes=m.num_processes,
            process_id=m.process_id,
            # a coordinator on this machine listens on loopback only
            coordinator_bind_address=m.coordinator_address if local else None,
            initialization_timeout=m.join_timeout + _JAX_ABORT_MARGIN_S),
            m.join_timeout,
            f"--mesh.distributed: not every process joined{where} within {m.join_timeout} s "
            "(--mesh.join-timeout): start the same command on every host, each with its own "
            "--mesh.process-id from 0 to --mesh.num-processes - 1")
    except ValueError as e:  # no cluster detected and a setting missing
        raise ConfigError(f"--mesh.distributed: {e} No cluster (TPU pod, SLURM, ...) was "
                          "detected: give --mesh.coordinator-address, --mesh.num-processes and "
                          "--mesh.process-id") from None
    python_handler = signal.getsignal(signal.SIGTERM)  # Python's record, not the C handler
    if (not (preemption_sync and jax.process_count() > 1) and python_handler is not None
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGTERM, python_handler)
    check_same_settings(settings)


def _flat_settings(settings: object) -> dict[str, Any]:
    """{"optim.lr": 0.0001, ...} of a config dataclass, without --mesh.process-id."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value

    walk("", to_json(settings))
    flat.pop("mesh.process_id", None)
    return flat


def check_same_settings(settings: object) -> None:
    """Multi-process runs: ConfigError naming the first differing flag unless every process
    was started with the settings of process 0 (--mesh.process-id apart). Every process
    raises, so none waits for the others at a collective."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.frombuffer(json.dumps(_flat_settings(settings), sort_keys=True).encode(), np.uint8)
    longest = int(multihost_utils.process_allgather(np.array([mine.size])).max())
    every = multihost_utils.process_allgather(np.pad(mine, (0, longest - mine.size)))
    texts = [bytes(row).rstrip(b"\0").decode() for row in np.asarray(every)]
    first = json.loads(texts[0])
    for process, text in enumerate(texts[1:], start=1):
        other = json.loads(text)
        for key in sorted(first.keys() | other.keys()):
            if first.get(key) != other.get(key):
                raise ConfigError(
                    f"the processes were started with different settings: process {process} "
                    f"has {flag_name(key)} {other.get(key)!r}, process 0 {first.get(key)!r}; "
                    "run the same command on every host (only --mesh.process-id differs)")


def check_batches(cfg: RunConfig, devices: int) -> None:
    """Raise ConfigError naming the flag when a batch does not split over the mesh."""
    for flag, batch in (("--optim.global-batch-size", cfg.optim.global_batch_size),
                        ("--eval.batch-size", cfg.eval.batch_size)):
        if batch is not None and batch % devices:
            raise ConfigError(f"{flag} {batch} is not a multiple of the {devices} devices "
                              f"(--mesh.data)")


def check_writable(directory: str) -> None:
    """Write and remove a probe file in `directory`; RunFailed if that fails. Directories it
    had to create for the probe are removed again in a single-process run (a run that stops
    on a later check leaves nothing behind; the checkpointer creates them when it starts)."""
    try:  # several hosts probe one shared directory at once: only a single process tidies up
        probe_write(directory, name=f".trm-write-probe-{jax.process_index()}",
                    tidy=jax.process_count() == 1)
    except OSError as e:
        raise RunFailed(f"cannot write to {directory}: {short_reason(e)}") from None


@contextlib.contextmanager
def run_lock(directory: str) -> Iterator[None]:
    """Hold `directory`/.lock exclusively while the block runs, so that a second run on the
    same checkpoint directory stops at once (RunFailed naming the holder) instead of mixing
    its checkpoints in. fcntl.flock: the OS releases it however the process ends. Local
    directories, process 0 only (another host's lock, or one on a URL, is not seen)."""
    if is_url(directory) or jax.process_index() != 0:
        yield
        return
    path = Path(directory).absolute()
    created = [d for d in (path, *path.parents) if not d.exists()]
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFailed(f"{directory} is in use by another run ({holder}); wait for it to "
                            "end, or give another --run-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:  # a run that saved nothing leaves nothing: the lock, the folders made for it
            if [p.name for p in path.iterdir()] == [".lock"]:
                (path / ".lock").unlink()
                for d in created:
                    with contextlib.suppress(OSError):
                        d.rmdir()
            fcntl.flock(f, fcntl.LOCK_UN)


def check_free_space(directory: str, checkpoint_bytes: int, kept: int) -> None:
    """RunFailed unless a local `directory` (or, not yet created, its nearest existing parent)
    has room for the checkpoints of a run at its peak: the `kept` ones retention keeps plus
    the one being written, less the saved steps already there. Remote paths (gs://...) are
    not checked."""
    if is_url(directory):
        return
    where = next(p for p in (Path(directory).absolute(), *Path(directory).absolute().parents)
                 if p.exists())
    # the saved steps (numbered directories) retention will delete count towards the peak;
    # unusable/ and other files stay
    steps = [p for p in where.iterdir() if p.is_dir() and p.name.isdigit()] if (
        where == Path(directory).absolute()) else []
    have = sum(f.stat().st_size for p in steps for f in p.rglob("*") if f.is_file())
    free = shutil.disk_usage(where).free
    need = (kept + 1) * checkpoint_bytes - have
    if free < need:
        raise RunFailed(f"{directory}: {free / 2**20:.1f} MiB free, checkpoints of this run "
                        f"need about {need / 2**20:.1f} MiB more ({kept} kept + 1 being "
                        f"written, {checkpoint_bytes / 2**20:.1f} MiB each"
                        + (f", {have / 2**20:.1f} MiB there now)" if have else ")"))


def prepare_data(cfg: RunConfig, *, progress: bool = True) -> Path:
    """The local data directory: generated first when the config asks for a synthetic set
    (with progress bars on process 0), a local copy when data_dir is a URL
    (`data.storage.local_copy`)."""
    from data.common import check_output_dir
    from data.generate import ensure_tiny_dataset

    d = cfg.data
    if is_url(d.data_dir):  # RunConfig refuses generate with a URL
        return local_copy(d.data_dir)
    if d.generate != "none":
        kind = d.generate.removesuffix("-tiny")
        if not (Path(d.data_dir) / "metadata.json").is_file() and jax.process_index() == 0:
            check_output_dir(d.data_dir)  # a file or a foreign directory: refused first
            print(f"data: generating {d.num_train} + {d.num_test} {kind} puzzles into "
                  f"{d.data_dir} (once; later runs read them)", flush=True)
        ensure_tiny_dataset(kind, Path(d.data_dir), train_count=d.num_train,
                            test_count=d.num_test, seed=d.seed, min_clues=d.min_clues,
                            size=d.maze_size, progress=progress and jax.process_index() == 0)
    return Path(d.data_dir)


def with_absolute_data_dir(cfg: RunConfig) -> RunConfig:
    """`cfg` with a local --data.data-dir made absolute: the checkpoints record it, and
    evaluate.py, run from anywhere, reads the training run's data set from there."""
    if is_url(cfg.data.data_dir):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, data_dir=os.path.abspath(cfg.data.data_dir)))
