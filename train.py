"""Train a Tiny Recursive Model: `python train.py <preset> [--section.field value ...]`.

Presets: see `python train.py --help`. Example: `python train.py sudoku-tiny --no-track`.
"""

from __future__ import annotations

import sys

from trm.cli import exit_process, run_cli


def main(argv: list[str] | None = None) -> int:
    from trm.loop import train
    from trm.run_config import parse_cli

    def run(args: list[str]) -> None:
        import jax

        result = train(parse_cli(args))
        if jax.process_index() != 0:  # process 0 alone prints
            return
        for split, metrics in result.eval_metrics.items():
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())  # pass@K by K
            if metrics.get("count", 1) == 0:  # e.g. ARC's hidden test set: outputs unknown
                shown = "no known outputs to score (predictions only)"
            print(f"eval {split} @ step {result.steps}: {shown}")

    return run_cli(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    exit_process(main())
