"""`python -m sweeps list|show|script|run|analyze ...`: the study catalog from the command line.

  list [PATTERN ...]          entries by group (name, description, shared runs)
  show NAME                   an entry's config diff against the baseline and its command line
  script PATTERN ... [-o F]   a bash script of `python train.py ...` lines, one per run
  run PATTERN ... [--jobs N]  train the runs not finished yet (logs in <run_dir>/train.log)
  --launcher TEMPLATE         (script, run) start each run on every host, e.g.
      'gcloud compute tpus tpu-vm ssh POD --worker=all --command "cd ~/trm && {cmd}"'
      or an srun prefix 'srun --nodes=4 --ntasks-per-node=1' (see sweeps/launch.py);
      --dry-run prints exactly what would run
  analyze PATTERN ...         tables and plots from the Aim repository

PATTERN: a name (exp05_a), a group or group prefix (exp01, exp02, contrib), a glob
(exp05_[ab], exp0*) or all.
`--scale cpu` shrinks every run to a CPU smoke run (see sweeps/scale.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence

from data.common import atomic_file, check_can_write_in
from data.storage import is_url
from trm.cli import argument_parser, exit_process, positive_int, run_cli


def _accuracy(text: str) -> float:
    """argparse `type=` for an accuracy: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"an exact accuracy in (0, 1], got {value:g}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argument_parser(prog="python -m sweeps", description=__doc__.split("\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="\n".join(__doc__.split("\n")[2:]))
    cmd = p.add_subparsers(dest="command", required=True)
    ls = cmd.add_parser("list", help="list catalog entries")
    ls.add_argument("patterns", nargs="*", default=["all"])
    show = cmd.add_parser("show", help="an entry's diff against the baseline")
    show.add_argument("name")
    sc = cmd.add_parser("script", help="write a shell script of train.py commands")
    sc.add_argument("-o", "--output", help="script file (default: stdout)")
    rn = cmd.add_parser("run", help="train the selected runs")
    rn.add_argument("--jobs", type=positive_int, default=1, help="runs at a time (default 1)")
    rn.add_argument("--force", action="store_true", help="also rerun finished runs")
    an = cmd.add_parser("analyze", help="tables and plots from the Aim repository")
    an.add_argument("--out", help="output folder (default <root>/analysis)")
    an.add_argument("--set", default="test", help="eval set of the accuracy (default test)")
    an.add_argument("--target", type=_accuracy, default=0.85,
                    help="exact accuracy of 'steps to target' (default 0.85)")
    an.add_argument("--experiment", help="Aim experiment (default trm-study[-cpu]; "
                                         "'any' reads every run)")
    for q in (show, sc, rn, an):
        q.add_argument("--scale", choices=("cpu",), help="shrink every run to CPU size")
        q.add_argument("--steps", type=positive_int, default=None,
                       help="optimiser steps per run with --scale cpu (default 16)")
        q.add_argument("--root", help="run directories go under ROOT "
                                      "(default runs/study, runs/study-cpu with --scale)")
        q.add_argument("--repo", default=".aim", help="Aim repository (default .aim)")
    for q in (sc, rn):
        q.add_argument("patterns", nargs="+")
        q.add_argument("--dry-run", action="store_true", help="print what would run and stop")
        q.add_argument("--launcher", help="launcher template: {cmd} = the command as one "
                                          "string; without {cmd}, a prefix (srun ...)")
        q.add_argument("--track", action=argparse.BooleanOptionalAction, default=None,
                       help="log to Aim (default: on, off with --scale cpu)")
    an.add_argument("patterns", nargs="+")
    return p


def _settings(args: argparse.Namespace):
    from sweeps.runner import Settings

    if args.steps is not None and args.scale != "cpu":
        raise ValueError("--steps sets the steps of a CPU-scale run: give --scale cpu too (the "
                         "full-size runs train their catalog epochs)")
    return Settings(scale=args.scale, root=args.root, repo=args.repo,
                    track=getattr(args, "track", None),
                    launcher=getattr(args, "launcher", None),
                    **({} if args.steps is None else {"steps": args.steps}))


def _list(patterns: Sequence[str]) -> None:
    from sweeps.catalog import GROUPS, canonical, select

    entries = select(patterns)
    group = None
    for e in entries:
        if e.group.name != group:
            group = e.group.name
            g = GROUPS[group]
            print(f"\n{group}: {g.title} [{g.variable}]{' (further item)' if g.further else ''}"
                  f"\n  {g.question}")
        same = canonical(e).name
        print(f"  {e.name:<22} {e.description}" + ("" if same == e.name else f"  (= {same})"))
    runs = len({canonical(e).name for e in entries})
    groups = len({e.group.name for e in entries})
    print(f"\n{len(entries)} entries in {groups} groups, {runs} distinct runs")


def _show(args: argparse.Namespace) -> None:
    from sweeps.catalog import BY_NAME, aliases, baseline, canonical
    from sweeps.configs import diff
    from sweeps.runner import plan

    if args.name not in BY_NAME:
        raise ValueError(f"no catalog entry {args.name!r} (python -m sweeps list)")
    e = BY_NAME[args.name]
    print(f"{e.name} ({e.group.name}: {e.group.title})\n  {e.description}\n  question: "
          f"{e.question}\n  varies: {', '.join(e.varies) or '-'}")
    changes = diff(baseline(), e.config())
    print("diff against the baseline:" if changes else "same config as the baseline")
    for path, (old, new) in changes.items():
        print(f"  {path}: {old!r} -> {new!r}")
    shared = [x.name for x in aliases(e) if x.name != e.name]
    if shared:
        print(f"shares its run ({canonical(e).name}) with: {', '.join(shared)}")
    run = plan([e], _settings(args))[0]
    print(f"command:\n  python {run.command}")


def _script(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from sweeps.catalog import select
    from sweeps.runner import plan
    from sweeps.script import script

    runs = plan(select(args.patterns), _settings(args))
    if args.dry_run:
        print("\n".join(r.shown for r in runs))
        return
    text = script(runs, "python -m sweeps " + shlex.join(argv))
    if args.output:
        with atomic_file(args.output) as tmp:
            tmp.write_text(text)
        print(f"wrote {len(runs)} runs to {args.output}")
    else:
        print(text, end="")


def _run(args: argparse.Namespace) -> None:
    from sweeps.catalog import select
    from sweeps.runner import plan, report, run_all

    settings = _settings(args)
    runs = plan(select(args.patterns), settings)
    if not is_url(settings.run_root):  # before any data set or run starts; a dry run too
        check_can_write_in(settings.run_root)  # (its probe leaves nothing behind)
    if args.dry_run:
        for r in runs:
            step = None if r.finished() else r.saved_step()
            state = ("to run" if not r.finished() and step is None else
                     f"resumes at step {step}" if step is not None else
                     ("stale, from scratch" if args.force else "stale") if r.stale() else
                     "finished")  # stale: another command line
            print(f"{r.name:<22} {state:<20} {r.shown}")
        return
    t0 = time.monotonic()
    outcomes = run_all(runs, jobs=args.jobs, force=args.force)
    print(report(outcomes) + f" ({time.monotonic() - t0:.0f} s)")
    if any(o.status == "failed" for o in outcomes):
        raise SystemExit(1)


def _analyze(args: argparse.Namespace) -> None:
    from sweeps.analyze import analyze
    from sweeps.catalog import select

    settings = _settings(args)
    experiment = args.experiment or settings.experiment
    out = args.out or f"{settings.run_root}/analysis"
    check_can_write_in(out)  # a file in the way, an unwritable place: before the analysis
    analyze(select(args.patterns), settings, out,
            experiment=None if experiment == "any" else experiment, eval_set=args.set,
            target=args.target)


def main(argv: Sequence[str] | None = None) -> int:
    def go(args_list: list[str]) -> None:
        args = _parser().parse_args(args_list)
        {"list": lambda: _list(args.patterns), "show": lambda: _show(args),
         "script": lambda: _script(args, args_list), "run": lambda: _run(args),
         "analyze": lambda: _analyze(args)}[args.command]()

    try:
        return run_cli(go, list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


if __name__ == "__main__":
    exit_process(main())
