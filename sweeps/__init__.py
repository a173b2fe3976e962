"""The scaling-study catalog as generated runs: `python -m sweeps --help`."""
