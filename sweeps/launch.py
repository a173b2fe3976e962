"""Launcher templates: start one training command on every host of a TPU pod or GPU cluster.

A template is a shell-like line (`shlex` rules). Two kinds:
- with `{cmd}`: for launchers that hand one string to a remote shell. Each word holding
  `{cmd}` gets the command there as one shell-quoted string, e.g.
  `gcloud compute tpus tpu-vm ssh my-pod --worker=all --command "cd ~/trm && {cmd}"`;
- without it: a prefix the command's words are appended to, e.g.
  `srun --nodes=4 --ntasks-per-node=1`.
The command launched is `python train.py ARGS...` in the working directory the launcher gives
(the template's `cd`, or srun's inherited one); runs started through a launcher also get
`--mesh.distributed` (jax's cluster auto-detection on TPU pods and SLURM).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

PLACEHOLDER = "{cmd}"


def template_words(template: str) -> list[str]:
    """The template's words; ValueError (one readable line) if it is empty or unbalanced."""
    try:
        words = shlex.split(template)
    except ValueError as e:
        raise ValueError(f"launcher template {template!r}: {e}") from None
    if not words:
        raise ValueError("launcher template is empty")
    if PLACEHOLDER in words[0]:
        raise ValueError(f"launcher template {template!r} must start with a program, "
                         f"not {PLACEHOLDER}")
    return words


def launch_argv(template: str | None, command: Sequence[str]) -> list[str]:
    """The argv that runs `command` (its words) through `template` (None: `command` itself)."""
    if template is None:
        return list(command)
    words = template_words(template)
    if not any(PLACEHOLDER in w for w in words):
        return [*words, *command]
    line = shlex.join(command)
    return [w.replace(PLACEHOLDER, line) for w in words]


def bash_launch_line(template: str | None) -> str:
    """The bash command, inside a function whose "$@" are train.py's arguments, that launches
    `$PYTHON train.py "$@"` (or, with `{cmd}`, `python train.py ...` as one string in "$cmd")
    through `template`: what `launch_argv` gives, written as bash."""
    command = '"$PYTHON" train.py "$@"'
    if template is None:
        return command
    words = template_words(template)
    if not any(PLACEHOLDER in w for w in words):
        return " ".join([shlex.quote(w) for w in words] + [command])

    def word(w: str) -> str:
        return '"$cmd"'.join(shlex.quote(part) if part else "" for part in
                             w.split(PLACEHOLDER)) or "''"

    return ("local cmd\n  cmd=\"python train.py$(printf ' %q' \"$@\")\"\n  "
            + " ".join(word(w) for w in words))
