"""The scaling-study catalog (STUDY.md) as generated runs: `python -m sweeps --help`."""
