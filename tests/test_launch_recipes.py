"""The README's launch recipes, dry: every `train.py` / `evaluate.py` command in them (also
inside a launcher's quoted --command) parses with its real parser, multi-host commands say
--mesh.distributed, and every `python -m sweeps run ... --dry-run` prints train.py commands
that parse too."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import tyro
from test_storage import FakeGCS, bucket  # noqa: F401 (fixture)

from sweeps.__main__ import main as sweeps_main
from trm.eval_run import EvalArgs
from trm.run_config import parse_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe_lines() -> list[str]:
    """Command lines of the code blocks of README "### Launch recipes"."""
    section = README.read_text().split("### Launch recipes", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def python_commands(words: list[str]) -> list[list[str]]:
    """[script or module, args...] of each `python X ...` in `words`, also inside quoted words
    (`--command "cd ~/trm && python train.py ..."`)."""
    found = []
    for i, w in enumerate(words):
        if " " in w:
            for part in w.split("&&"):
                found += python_commands(shlex.split(part))
        elif w == "python" and i + 1 < len(words):
            rest = words[i + 1:]
            found.append(rest[1:] if rest[0] == "-m" else rest)
            break
    return found


def check_command(cmd: list[str], multi_host: bool) -> str:
    """Parse one command with its real parser; its kind."""
    name, args = cmd[0], cmd[1:]
    if name == "train.py":
        cfg = parse_cli(args)
        assert cfg.mesh.distributed == multi_host, cmd
    elif name == "evaluate.py":
        parsed = tyro.cli(EvalArgs, args=args)
        assert parsed.mesh.distributed == multi_host, cmd
    return name


def test_recipes_parse(bucket, capsys):  # noqa: F811 (fixture)
    lines = recipe_lines()
    kinds = []
    for line in lines:
        words = shlex.split(line)
        multi_host = "gcloud" in words or "srun" in words
        for cmd in python_commands(words):
            kinds.append(check_command(cmd, multi_host))
            if cmd[0] == "sweeps":
                assert "--dry-run" in cmd and "--launcher" in cmd
                assert sweeps_main(cmd[1:]) == 0
                printed = capsys.readouterr().out.splitlines()
                assert len(printed) == 6  # exp05: six distinct runs
                for out in printed:
                    launched = shlex.split(out.split(None, 2)[2])
                    (train,) = python_commands(launched)
                    assert check_command(train, True) == "train.py"
    assert kinds.count("train.py") == 3 and kinds.count("evaluate.py") == 3
    assert kinds.count("sweeps") == 2


@pytest.mark.parametrize("words, expected", [
    (["srun", "python", "train.py", "x"], [["train.py", "x"]]),
    (["ssh", "h", "--command", "cd ~/a && python -m sweeps run y"], [["sweeps", "run", "y"]]),
])
def test_commands_are_found_inside_launchers(words, expected):
    assert python_commands(words) == expected
