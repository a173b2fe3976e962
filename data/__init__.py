"""Puzzle data: readers of the public formats, offline generators, augmentations, and Grain
pipelines that augment on the fly (see README, section "Data")."""
