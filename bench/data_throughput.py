"""Data benchmarks: generator speed, base-data size and build time, pipeline throughput.

    python bench/data_throughput.py --arc-dir DIR [--batch 768]

Generates Sudoku and 30x30 maze CSVs, builds them and ARC-AGI-1 + ConceptARC (subsets
training, evaluation, concept; test subset evaluation) into a temporary directory, then
prints examples/s of each training pipeline (in-process threads, and Grain multiprocess
prefetch) and of the ARC evaluation pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import build, generate, pipeline
from data.arc import read_arc
from trm.cli import int_at_least, non_negative_int, positive_int, run_cli


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


WARM_UP = 10
"""Batches read before the clock starts: start-up (workers, lazy loading) and the batches the
pipeline read ahead meanwhile, which would otherwise come at no cost."""


def throughput(it, batches: int, batch: int) -> float:
    for _ in range(WARM_UP):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def bench_pipelines(name: str, data_dir: Path, args: argparse.Namespace) -> None:
    for workers in args.workers:
        it = pipeline.train_iterator(data_dir, global_batch_size=args.batch, seed=0,
                                     shard_index=0, shard_count=1, num_workers=workers)
        rate = throughput(it, args.batches, args.batch)
        where = f"{workers} worker processes" if workers else "in-process, 2 threads"
        print(f"  train {name:7s} batch {args.batch} ({where}): {rate:,.0f} examples/s")


ARC_SUBSETS = ["training", "evaluation", "concept"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arc-dir", type=Path, required=True,
                   help="folder with arc-agi_{training,evaluation,concept}_{challenges,"
                        "solutions}.json (e.g. TRM's kaggle/combined)")
    p.add_argument("--batch", type=positive_int, default=768)
    p.add_argument("--batches", type=int_at_least(20), default=30,
                   help="timed batches, after 10 unmeasured (at least 20: fewer would time "
                        "batches read ahead during the start-up)")
    p.add_argument("--workers", type=non_negative_int, nargs="+", default=[0, 2])
    p.add_argument("--sudoku-count", type=positive_int, default=2000)
    p.add_argument("--maze-count", type=positive_int, default=1000)
    args = p.parse_args()
    read_arc(args.arc_dir, ARC_SUBSETS)  # its faults before minutes of generating
    print(f"{os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate.write_sudoku_csv(root / "s.csv", args.sudoku_count, seed=0, progress=False)
        dt = time.perf_counter() - t0
        print(f"sudoku generator: {args.sudoku_count} puzzles in {dt:.1f} s = "
              f"{args.sudoku_count / dt:.1f} puzzles/s ({os.cpu_count()} processes)")
        build.build_sudoku(root / "s.csv", root / "s.csv", root / "sudoku")
        t0 = time.perf_counter()
        lengths = generate.write_maze_csv(root / "m.csv", args.maze_count, seed=0,
                                          progress=False)
        dt = time.perf_counter() - t0
        pct = np.percentile(lengths, [0, 10, 25, 50, 75, 90, 100]).astype(int).tolist()
        print(f"maze generator 30x30 (min path 111): {args.maze_count} in {dt:.1f} s; path "
              f"length min/10/25/50/75/90%/max = {pct}, mean {lengths.mean():.1f}")
        build.build_maze(root / "m.csv", root / "m.csv", root / "maze")
        t0 = time.perf_counter()
        meta = build.build_arc(args.arc_dir, ARC_SUBSETS, "evaluation", root / "arc",
                               progress=False)
        dt = time.perf_counter() - t0
        print(f"ARC-AGI-1 + ConceptARC base data (num_aug 1000): built in {dt:.1f} s, "
              f"{du(root / 'arc') / 2**20:.1f} MiB on disk; {meta['build']['tasks']} tasks, "
              f"{meta['num_puzzle_identifiers']} identifiers, "
              f"{meta['build']['tasks_with_fewer_copies']} tasks with < 1001 distinct copies "
              f"(fewest {meta['build']['min_copies']})")
        for name in ("sudoku", "maze", "arc"):
            bench_pipelines(name, root / name, args)
        it = pipeline.eval_batches(root / "arc", global_batch_size=args.batch, shard_index=0,
                                   shard_count=1)
        rate = throughput(it, args.batches, args.batch)
        print(f"  eval  arc     batch {args.batch} (in-process, 2 threads): {rate:,.0f} examples/s")


if __name__ == "__main__":
    sys.exit(run_cli(lambda _: main(), sys.argv[1:]))  # bad input: one `error:` line
