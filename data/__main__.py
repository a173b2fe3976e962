"""`python -m data build sudoku|maze|arc ...` and `python -m data generate sudoku|maze ...`.

Bad input prints one `error: ...` line and exits with status 1 (no traceback, no output).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data import build, generate
from data.arc import SUBSETS
from data.common import MAZE_SIZES, DataError
from data.maze_gen import default_min_path_length
from trm.cli import (
    argument_parser,
    int_at_least,
    interrupted,
    non_negative_int,
    os_error_line,
    positive_int,
    reader_gone,
    sigterm_as_interrupt,
)


def _parser() -> argparse.ArgumentParser:
    p = argument_parser(prog="python -m data", description=__doc__.split("\n")[0])
    cmd = p.add_subparsers(dest="command", required=True)
    b = cmd.add_parser("build", help="validate raw files and write a data set directory")
    bk = b.add_subparsers(dest="kind", required=True)
    s = bk.add_parser("sudoku", help="Sudoku-Extreme CSV files")
    s.add_argument("--subsample-size", type=positive_int, help="training puzzles to keep (seeded)")
    s.add_argument("--min-rating", type=int, help="keep rows with rating >= R (both files)")
    m = bk.add_parser("maze", help="Maze-Hard CSV files")
    m.add_argument("--subsample-size", type=positive_int, help="training mazes to keep (seeded)")
    for q in (s, m):
        q.add_argument("--train-csv", type=Path, required=True)
        q.add_argument("--test-csv", type=Path, required=True)
    a = bk.add_parser("arc", help="ARC JSON (arc-agi_<subset>_{challenges,solutions}.json; "
                                  "the test subset's solutions are optional)")
    a.add_argument("--arc-dir", type=Path, required=True)
    a.add_argument("--subsets", nargs="+", required=True, help=f"of {', '.join(SUBSETS)}")
    a.add_argument("--test-subset", required=True,
                   help="subset whose test pairs form the test split")
    a.add_argument("--official-rng", action="store_true",
                   help="order and augment the tasks with the official builder's random "
                        "stream: the puzzle identifiers of the official build of the same "
                        "files, --subsets, --seed and --num-aug (to evaluate official weights)")
    for q, aug in ((s, build.SUDOKU_NUM_AUG), (m, build.MAZE_NUM_AUG), (a, build.ARC_NUM_AUG)):
        q.add_argument("--out", type=Path, required=True, help="data set directory")
        q.add_argument("--seed", type=non_negative_int, default=None,
                       help="subsample / augmentation-pool seed (default 0"
                            + ("; 42, the official default, with --official-rng)" if q is a
                               else ")"))
        q.add_argument("--num-aug", type=int_at_least(0, 7) if q is m else non_negative_int,
                       default=aug,
                       help=f"default augmented copies per puzzle (default {aug})")
        q.add_argument("--strict", action="store_true",
                       help="refuse to build when a test puzzle equals a training puzzle "
                            "(the leak check; without it the count is printed and recorded)")

    g = cmd.add_parser("generate", help="generate puzzles into a CSV file")
    gk = g.add_subparsers(dest="kind", required=True)
    gs = gk.add_parser("sudoku", help="unique-solution Sudokus (rating = solver guesses)")
    gs.add_argument("--min-rating", type=int, default=0, help="keep puzzles with rating >= R")
    gs.add_argument("--min-clues", type=int_at_least(0, 81), default=0,
                    help="give solution cells back until each puzzle has >= N clues (easier; "
                         "default 0: minimal puzzles, ~22-26 clues)")
    gs.add_argument("--workers", type=positive_int, help="processes (default: all cores)")
    gm = gk.add_parser("maze", help="mazes with a unique shortest path (rating = its length)")
    gm.add_argument("--size", type=int_at_least(*MAZE_SIZES), default=30,
                    help="side N of the N x N grid")
    gm.add_argument("--min-path-length", type=positive_int,
                    help=f"minimum shortest path in moves (default {default_min_path_length(30)} "
                         "at 30x30, scaled by area)")
    gm.add_argument("--allow-ties", action="store_true",
                    help="keep mazes with several shortest paths")
    for q in (gs, gm):
        q.add_argument("--count", type=positive_int, required=True)
        q.add_argument("--out", required=True, help="CSV file to write")  # str: keeps a "/"
        q.add_argument("--seed", type=non_negative_int, default=0)
    for q in (a, gs, gm):  # the commands with a progress bar
        q.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar (e.g. output to a log file)")
    return p


def _run(args: argparse.Namespace) -> str:
    if args.command == "build":
        official = getattr(args, "official_rng", False)
        seed = (42 if official else 0) if args.seed is None else args.seed
        common = {"seed": seed, "num_aug": args.num_aug, "strict": args.strict}
        if args.kind == "sudoku":
            meta = build.build_sudoku(args.train_csv, args.test_csv, args.out,
                                      subsample_size=args.subsample_size,
                                      min_rating=args.min_rating, **common)
        elif args.kind == "maze":
            meta = build.build_maze(args.train_csv, args.test_csv, args.out,
                                    subsample_size=args.subsample_size, **common)
        else:
            meta = build.build_arc(args.arc_dir, args.subsets, args.test_subset, args.out,
                                   progress=args.progress, official_rng=official, **common)
        unit = "tasks" if meta["name"] == "arc" else "puzzles"
        splits = ", ".join(f"{name} {split['total_groups']} {unit} ({split['total_puzzles']} "
                           "with augmented copies)" for name, split in meta["splits"].items())
        lines = [(f"wrote {args.out}: {meta['name']}, seq_len {meta['seq_len']}, vocabulary "
                 f"{meta['vocab_size']}; {splits} (all in {args.out}/metadata.json)"),
                 build.leak_line(meta["leaks"])]
        unknown, pairs = (meta["build"].get(k, 0) for k in ("unknown_test_outputs", "test_pairs"))
        if unknown:
            scored = ("nothing" if unknown == pairs else "only the known ones (pass@K: the "
                      "tasks whose every test output is known)")
            lines.append(f"notice: {args.arc_dir}/arc-agi_{args.test_subset}_solutions.json "
                         f"not found: {unknown} of the {pairs} test outputs are unknown; "
                         f"evaluation predicts them into the submission and scores {scored}")
        rows = meta["splits"]["train"]["total_groups"]
        if args.kind != "arc" and args.subsample_size and rows < args.subsample_size:
            filtered = " after --min-rating" if getattr(args, "min_rating", None) else ""
            lines.append(f"notice: --subsample-size {args.subsample_size}: {args.train_csv} has "
                         f"only {rows} puzzles{filtered}; all are used (as official)")
        return "\n".join(lines)
    out, t0 = args.out, time.perf_counter()  # a str: Path("DIR/") would name a file
    if args.kind == "sudoku":
        generate.write_sudoku_csv(out, args.count, seed=args.seed,
                                  min_rating=args.min_rating, min_clues=args.min_clues,
                                  workers=args.workers, progress=args.progress)
        return f"wrote {args.count} Sudokus to {args.out} in {time.perf_counter() - t0:.1f} s"
    lengths = generate.write_maze_csv(out, args.count, size=args.size,
                                      min_path_length=args.min_path_length,
                                      unique_path=not args.allow_ties, seed=args.seed,
                                      progress=args.progress)
    pct = np.percentile(lengths, [0, 25, 50, 75, 100]) if len(lengths) else []
    return (f"wrote {args.count} mazes to {args.out} in {time.perf_counter() - t0:.1f} s; "
            f"path length min/25%/median/75%/max = {'/'.join(str(int(x)) for x in pct)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            print(_run(args))
            sys.stdout.flush()
    except BrokenPipeError:
        return reader_gone()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the disk filled up while writing
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        return interrupted(e, " (nothing written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
