"""Evaluate a Tiny Recursive Model: `python evaluate.py --checkpoint-dir DIR [...]` or
`python evaluate.py --official-weights FILE [--official-config FILE] --data-dir D`; and
`python evaluate.py solve --checkpoint-dir DIR --sudoku 81CHARS | --maze FILE | --arc-task ID`.

See `python evaluate.py --help`, `python evaluate.py solve --help` and README "Evaluation".
"""

from __future__ import annotations

import sys

from trm.cli import exit_process, run_cli


def main(argv: list[str] | None = None) -> int:
    def run(args: list[str]) -> None:
        from trm.cli import parse_args
        from trm.eval_run import EvalArgs, run_evaluate
        from trm.solve import SolveArgs, run_solve

        if args[:1] == ["solve"]:
            run_solve(parse_args(SolveArgs, args[1:], prog="evaluate.py solve"))
        else:
            run_evaluate(parse_args(EvalArgs, args, prog="evaluate.py"))

    return run_cli(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    exit_process(main())
