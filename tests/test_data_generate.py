"""Generators: Sudoku uniqueness and minimality (checked by an independent solver), maze path
validity and optimality (independent BFS), CSV round trips, tiny data sets, the CLI."""

from __future__ import annotations

import json
import shutil
from collections import deque

import numpy as np
import pytest

from data import build, generate, sources, sudoku_gen
from data.__main__ import main
from data.common import DataError
from data.maze_gen import generate_mazes
from data.store import load_metadata


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Plain backtracking (fewest-candidates cell first), independent of data.sudoku_gen."""
    g = list(grid)

    def allowed(c: int) -> set[int]:
        r, k = divmod(c, 9)
        b = (r // 3) * 27 + (k // 3) * 3
        used = {g[r * 9 + j] for j in range(9)} | {g[i * 9 + k] for i in range(9)}
        used |= {g[b + i * 9 + j] for i in range(3) for j in range(3)}
        return set(range(1, 10)) - used

    def rec() -> int:
        empty = [c for c in range(81) if g[c] == 0]
        if not empty:
            return 1
        c = min(empty, key=lambda e: len(allowed(e)))
        total = 0
        for v in allowed(c):
            g[c] = v
            total += rec()
            g[c] = 0
            if total >= limit:
                break
        return min(total, limit)

    return rec()


@pytest.fixture(scope="module")
def puzzles():
    rng = np.random.default_rng(0)
    return [sudoku_gen.generate(rng) for _ in range(6)]


def test_sudoku_puzzles_have_one_solution_and_are_minimal(puzzles):
    for puzzle, solution, rating in puzzles:
        assert count_solutions(puzzle) == 1
        assert all(p in (0, s) for p, s in zip(puzzle, solution))
        grid = np.array(solution).reshape(9, 9)
        assert all(sorted(u) == list(range(1, 10)) for u in [*grid, *grid.T])
        assert sudoku_gen.solve(puzzle)[0] == [solution]
        assert rating == sudoku_gen.rating(puzzle) >= 0
    puzzle = puzzles[0][0]
    for c in [c for c in range(81) if puzzle[c]][:8]:           # no clue can be dropped
        assert count_solutions(puzzle[:c] + [0] + puzzle[c + 1:]) == 2


def test_sudoku_rating_counts_guesses(puzzles):
    solution = puzzles[0][1]
    assert sudoku_gen.rating(solution) == 0                       # nothing to guess
    assert sudoku_gen.rating([0 if c < 5 else v for c, v in enumerate(solution)]) == 0
    assert sudoku_gen.rating([0] * 81) > 0                        # an empty grid needs guesses
    assert sudoku_gen.count_solutions([0] * 81) == 2
    assert sudoku_gen.solve([1, 1] + [0] * 79) == ([], 0)         # contradictory clues


def test_generated_sudoku_csv_round_trips_and_respects_min_rating(tmp_path):
    rows = generate.sudoku_rows(8, seed=3, min_rating=2, workers=1, progress=False)
    assert all(r >= 2 for _, _, r in rows)
    assert rows == generate.sudoku_rows(8, seed=3, min_rating=2, workers=2, progress=False)
    generate.write_sudoku_csv(tmp_path / "s.csv", 8, seed=3, min_rating=2, workers=1,
                              progress=False)
    read = sources.read_sudoku_csv(tmp_path / "s.csv")
    assert read.ratings.tolist() == [r for _, _, r in rows]
    assert (read.inputs[0] - 1 == [0 if c == "." else int(c) for c in rows[0][0]]).all()


def bfs(free: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int]]:
    """Distances and shortest-path counts (capped at 2) from start, queue-based."""
    n = len(free)
    info = {start: (0, 1)}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        d, k = info[(r, c)]
        for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= rr < n and 0 <= cc < n and free[rr, cc]:
                if (rr, cc) not in info:
                    info[(rr, cc)] = (d + 1, k)
                    queue.append((rr, cc))
                elif info[(rr, cc)][0] == d + 1:
                    info[(rr, cc)] = (d + 1, min(2, info[(rr, cc)][1] + k))
    return info


@pytest.mark.parametrize("size, count, min_len", [(10, 30, None), (30, 3, None), (7, 20, 3)])
def test_mazes_have_a_unique_shortest_path_of_the_required_length(size, count, min_len):
    q, a, lengths = generate_mazes(count, size=size, min_path_length=min_len, seed=1,
                                   progress=False)
    threshold = {10: 12, 30: 111}.get(size, min_len)
    for qq, aa, n in zip(q, a, lengths):
        start = tuple(np.argwhere(qq == 3)[0])
        goal = tuple(np.argwhere(qq == 4)[0])
        info = bfs(qq != 1, start)
        assert info[goal] == (n, 1) and n >= threshold
        path = np.argwhere(aa == 5)
        assert len(path) == n - 1 and (qq[aa == 5] == 2).all()
        assert ((aa == qq) | (aa == 5)).all()
        on_path = (aa == 5) | (qq == 3) | (qq == 4)
        assert bfs(on_path, start)[goal][0] == n                  # connected, S to G
        walls = (qq == 1).mean()
        assert 0.2 < walls < 0.6


def test_generated_maze_csv_reads_back(tmp_path):
    lengths = generate.write_maze_csv(tmp_path / "m.csv", 5, size=8, seed=0, progress=False)
    rows = sources.read_maze_csv(tmp_path / "m.csv")               # validates shortest paths
    assert rows.inputs.shape == (5, 64) and rows.ratings.tolist() == lengths.tolist()
    with pytest.raises(DataError, match="impossible"):
        generate.write_maze_csv(tmp_path / "x.csv", 1, size=4, min_path_length=20)
    assert not (tmp_path / "x.csv").exists()


def test_ensure_tiny_dataset_builds_once(tmp_path):
    out = generate.ensure_tiny_dataset("maze", tmp_path / "tiny", train_count=12, test_count=4,
                                       size=8)
    meta = load_metadata(out)
    assert (meta.seq_len, meta.vocab_size, meta.total_groups) == (64, 6, 12)
    build = json.loads((out / "metadata.json").read_text())["build"]
    assert build["train_csv"] == build["test_csv"] == "(generated)"  # no temporary path
    stamp = (out / "metadata.json").stat().st_mtime_ns
    again = generate.ensure_tiny_dataset("maze", tmp_path / "tiny", train_count=12,
                                         test_count=4, size=8)
    assert again == out and (out / "metadata.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="holds a data set generated with other settings: "
                                        "train puzzles 12 \\(asked: 13\\), size 8 \\(asked: "
                                        "9\\); give .* delete it to rebuild"):
        generate.ensure_tiny_dataset("maze", out, train_count=13, test_count=4, size=9)
    sudoku = generate.ensure_tiny_dataset("sudoku", tmp_path / "s", train_count=4, test_count=2)
    assert load_metadata(sudoku, "test").total_groups == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "tiny"]


def test_ensure_tiny_dataset_refuses_a_file_or_foreign_directory_before_generating(
        tmp_path, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("generated before the output check")

    monkeypatch.setattr(generate, "write_maze_csv", no_generation)
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    for out, message in ((tmp_path / "file", "is a file"), (tmp_path / "notes", "not empty")):
        with pytest.raises(DataError, match=message):
            generate.ensure_tiny_dataset("maze", out, train_count=6, test_count=2, size=6)
    assert (tmp_path / "notes" / "notes.txt").read_text() == "mine"


def test_ensure_tiny_dataset_when_another_process_finishes_first(tmp_path, monkeypatch):
    """Hosts of a multi-host run generate into one shared directory at once: the one that
    finishes second keeps the set already in place (its own is the same) instead of swapping
    it out under the other's feet; a set of another recipe there is an error."""
    theirs = generate.ensure_tiny_dataset("maze", tmp_path / "theirs", train_count=6,
                                          test_count=2, size=6)
    (theirs / "marker").write_text("theirs")
    out = tmp_path / "tiny"
    real = build.build_maze

    def finished_meanwhile(train_csv, test_csv, staged, **kwargs):
        result = real(train_csv, test_csv, staged, **kwargs)
        shutil.copytree(theirs, out)  # what the faster process renamed into place
        return result

    monkeypatch.setattr(build, "build_maze", finished_meanwhile)
    got = generate.ensure_tiny_dataset("maze", out, train_count=6, test_count=2, size=6)
    assert got == out and (out / "marker").read_text() == "theirs"
    assert load_metadata(out).total_groups == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs", "tiny"]  # nothing aside
    shutil.rmtree(out)
    with pytest.raises(DataError, match="delete it to rebuild"):
        generate.ensure_tiny_dataset("maze", out, train_count=7, test_count=2, size=6)


def test_cli_generate(tmp_path, capsys):
    assert main(["generate", "maze", "--count", "3", "--size", "8", "--out",
                 str(tmp_path / "m.csv")]) == 0
    assert "path length min/25%/median/75%/max" in capsys.readouterr().out
    assert main(["generate", "sudoku", "--count", "2", "--workers", "1", "--out",
                 str(tmp_path / "s.csv")]) == 0
    assert len(sources.read_sudoku_csv(tmp_path / "s.csv").inputs) == 2
    assert "sudoku: 100%" in capsys.readouterr().err  # the bar
    assert main(["generate", "sudoku", "--count", "2", "--workers", "1", "--no-progress",
                 "--out", str(tmp_path / "s2.csv")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["generate", "maze", "--count", "1", "--size", "4", "--min-path-length", "50",
                 "--out", str(tmp_path / "bad.csv")]) == 1
    assert capsys.readouterr().err.startswith("error: min_path_length 50 is impossible")
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["generate", "sudoku", "--count", "2", "--seed", "-1"], "argument --seed: must be >= 0"),
    (["generate", "maze", "--count", "2", "--seed", "-1"], "argument --seed: must be >= 0"),
    (["generate", "maze", "--count", "2", "--size", "1"], "argument --size: must be in 4..30, got 1"),
    (["generate", "maze", "--count", "2", "--size", "200"],
     "argument --size: must be in 4..30, got 200"),
    (["generate", "sudoku", "--count", "2", "--min-clues", "90"],
     "argument --min-clues: must be in 0..81, got 90"),
    (["generate", "maze", "--count", "2", "--min-path-length", "-3"],
     "argument --min-path-length: must be >= 1"),
    (["generate", "sudoku", "--count", "2", "--workers", "0"], "argument --workers: must be >= 1"),
    (["build", "arc", "--arc-dir", ".", "--subsets", "training", "--test-subset", "training",
      "--seed", "-5"], "argument --seed: must be >= 0"),
    (["build", "sudoku", "--train-csv", "a", "--test-csv", "b", "--subsample-size", "0"],
     "argument --subsample-size: must be >= 1"),
    (["build", "sudoku", "--train-csv", "a", "--test-csv", "b", "--num-aug", "-3"],
     "argument --num-aug: must be >= 0, got -3"),
    (["build", "maze", "--train-csv", "a", "--test-csv", "b", "--num-aug", "8"],
     "argument --num-aug: must be in 0..7, got 8"),
])
def test_cli_bad_numbers_name_their_flag(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(out)])
    assert e.value.code == 2 and message in capsys.readouterr().err and not out.exists()


def test_cli_generate_stops_on_a_filter_no_candidate_meets(tmp_path, capsys):
    """A 5x5 maze has no unique shortest path of 20 moves (though 20 <= 24 passes the
    size check): one error line, exit 1, no file, instead of sampling forever."""
    out = tmp_path / "m.csv"
    assert main(["generate", "maze", "--count", "1", "--size", "5", "--min-path-length", "20",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "--min-path-length 20 at --size 5" in err
    assert not out.exists()


def test_sudoku_filter_no_candidate_meets_is_an_error(tmp_path, monkeypatch, capsys):
    """60 clues leave nothing to guess (rating 0), so --min-rating 1 rejects every candidate:
    one error line, exit 1, no file (the limit lowered from ~1 min of candidates)."""
    monkeypatch.setattr(generate, "MAX_REJECTED_SUDOKUS", 5)
    out = tmp_path / "s.csv"
    assert main(["generate", "sudoku", "--count", "1", "--min-rating", "1", "--min-clues", "60",
                 "--workers", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: 5 generated candidates in a row were rejected")
    assert "--min-rating 1 with --min-clues 60" in err
    assert not out.exists()


def test_sudoku_filter_no_candidate_meets_stops_the_workers():
    with pytest.raises(DataError, match="in a row were rejected"):
        generate.sudoku_rows(120, min_rating=1, min_clues=60, workers=2, progress=False,
                             max_rejected=3)
