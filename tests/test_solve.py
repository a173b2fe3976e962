"""`python evaluate.py solve`: puzzles of each kind through a model, the per-step text and
the PNG strip (size, panels, highlighted cells), and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_config, tiny_model
from matplotlib.image import imread
from test_data_fixtures import MAZE_A, MAZE_Q, built_arc, built_sudoku, solved_sudoku
from test_evaluate_cli import save_tiny_checkpoint

import evaluate as evaluate_cli
from data.arc import identifier_starts
from data.common import IGNORE_LABEL_ID
from data.pipeline import arc_pairs, load_metadata, task_ids
from data.store import read_arc
from trm.eval_source import ModelSource, load_model
from trm.render import HIGHLIGHT, cell_box, cells, draw_strip, strip_panels, strip_size
from trm.solve import Trace, arc_puzzle, describe, maze_puzzle, solve, sudoku_puzzle

SOLUTION = "".join(map(str, solved_sudoku(5).ravel()))
QUESTION = "".join("." if k % 3 == 0 else c for k, c in enumerate(SOLUTION))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("solve")
    return save_tiny_checkpoint(root, built_sudoku(root, n_train=8, n_test=8))[0]


def pixel(png: np.ndarray, x: float, y: float) -> np.ndarray:
    return png[int(y), int(x), :3]


def test_changed_and_wrong_cells_of_the_panels(tmp_path):
    q = sudoku_puzzle(QUESTION, SOLUTION)
    step1 = q.labels.copy()
    step1[0] = 5                              # one wrong digit at (0, 0)
    step2 = q.labels.copy()                   # fixed at step 2
    panels = strip_panels("sudoku", q.inputs, np.stack([step1, step2]),
                          np.array([-3.0, 2.0]), q.labels)
    assert [p.title for p in panels] == ["input", "step 1  P(halt) 0.05 ✗",
                                         "step 2  P(halt) 0.88 ✓", "target"]
    blanks = cells("sudoku", q.inputs) == 0
    np.testing.assert_array_equal(panels[1].changed, blanks)     # filled in at step 1
    assert panels[1].wrong.sum() == 1 and panels[1].wrong[0, 0]
    assert panels[2].changed.sum() == 1 and panels[2].changed[0, 0]
    assert not panels[2].wrong.any()
    path = tmp_path / "strip.png"
    assert draw_strip(path, "sudoku", panels, cells("sudoku", q.inputs)) == strip_size(4)
    png = imread(path)
    assert (png.shape[1], png.shape[0]) == strip_size(4)
    orange = np.array([int(HIGHLIGHT["sudoku"][k:k + 2], 16) / 255 for k in (1, 3, 5)])

    def top_edge(i: int, j: int) -> np.ndarray:           # of cell (i, j) in the step-2 panel
        x0, y0, x1, _ = cell_box(2, (9, 9), i, j)
        return png[int(y0), int((x0 + x1) / 2), :3]
    np.testing.assert_allclose(top_edge(0, 0), orange, atol=0.1)          # the changed cell
    assert np.abs(top_edge(2, 1) - orange).max() > 0.3                    # unchanged ones
    assert np.abs(top_edge(0, 1) - orange).max() > 0.3


def test_sudoku_strip_and_text(checkpoint, tmp_path):
    model = load_model(ModelSource(checkpoint_dir=str(checkpoint))).model
    puzzle = sudoku_puzzle(QUESTION, SOLUTION)
    trace = solve(model, puzzle)
    steps = model.config.halt_max_steps
    assert trace.step_preds.shape == (steps, 81) and trace.exact.shape == (steps,)
    text = describe(trace)
    assert all(f"step {k:2d}  q_halt" in text for k in range(1, steps + 1))
    panels = strip_panels("sudoku", puzzle.inputs, trace.step_preds, trace.halt_margin,
                          puzzle.labels)
    assert len(panels) == steps + 2
    path = tmp_path / "sudoku.png"
    size = draw_strip(path, "sudoku", panels, cells("sudoku", puzzle.inputs))
    png = imread(path)
    assert size == strip_size(len(panels)) == (png.shape[1], png.shape[0])


def test_maze_file(tmp_path):
    path = tmp_path / "maze.txt"
    path.write_text("\n".join(MAZE_A) + "\n")
    puzzle = maze_puzzle(path)
    assert (puzzle.inputs != 5).all() and (puzzle.labels == 5).sum() == "".join(MAZE_A).count("o")
    model = tiny_model(tiny_config(vocab_size=6, seq_len=25, num_puzzle_identifiers=1,
                                   L_layers=1, H_cycles=1, L_cycles=1, halt_max_steps=2))
    trace = solve(model, puzzle)
    panels = strip_panels("maze", puzzle.inputs, trace.step_preds, trace.halt_margin,
                          puzzle.labels)
    np.testing.assert_array_equal(cells("maze", puzzle.labels),
                                  [["# SGo".index(c) for c in row] for row in MAZE_A])
    size = draw_strip(tmp_path / "maze.png", "maze", panels)
    assert size == strip_size(4) and imread(tmp_path / "maze.png").shape[:2] == size[::-1]
    path.write_text("#S#\n# G\n")
    with pytest.raises(ValueError, match="N lines of N"):
        maze_puzzle(path)
    (tmp_path / "maze.bin").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=r"maze.bin: not a text file"):
        maze_puzzle(tmp_path / "maze.bin")
    with pytest.raises(ValueError, match="is a directory; give a maze file"):
        maze_puzzle(tmp_path)
    path.write_bytes(("\ufeff" + "\n".join(MAZE_Q) + "\n\n\n").encode())      # BOM, blank tail
    assert (maze_puzzle(path).inputs == puzzle.inputs).all()
    assert (maze_puzzle(path).labels == IGNORE_LABEL_ID).all()            # no path given
    path.write_text("\n".join(["#S###", "### #"] + MAZE_Q[2:]))
    with pytest.raises(ValueError, match="the goal 'G' is not reachable from 'S'"):
        maze_puzzle(path)
    path.write_text("\n".join(MAZE_Q[:2] + ["#Sx##"] + MAZE_Q[3:]))
    with pytest.raises(ValueError, match=r"'x' at position 12 \(row 3, column 3\) is outside"):
        maze_puzzle(path)
    path.write_text("\n".join(MAZE_Q[:3] + [MAZE_Q[3].rstrip("#")] + MAZE_Q[4:]))
    with pytest.raises(ValueError, match="line 4 has 4 characters, the file 5 lines; a maze is"):
        maze_puzzle(path)


def test_arc_task(tmp_path):
    d = built_arc(tmp_path, num_aug=2)
    puzzle = arc_puzzle(d, "ev0", 1)
    grid_in, grid_out = arc_pairs(d)["ev0"][1]
    np.testing.assert_array_equal(cells("arc", puzzle.inputs), grid_in)
    np.testing.assert_array_equal(cells("arc", puzzle.labels), grid_out)
    starts = identifier_starts(read_arc(d)[0].pool_count)
    assert puzzle.puzzle_identifier == starts[task_ids(d).index("ev0")]
    model = tiny_model(tiny_config(vocab_size=12, seq_len=900, L_layers=1, H_cycles=1,
                                   L_cycles=1, num_heads=2, halt_max_steps=2,
                                   num_puzzle_identifiers=load_metadata(d).num_puzzle_identifiers))
    trace = solve(model, puzzle)
    panels = strip_panels("arc", puzzle.inputs, trace.step_preds, trace.halt_margin,
                          puzzle.labels)
    assert panels[-1].title == "target" and panels[-1].grid.shape == grid_out.shape
    size = draw_strip(tmp_path / "arc.png", "arc", panels)
    assert imread(tmp_path / "arc.png").shape[:2] == size[::-1] == strip_size(4)[::-1]
    with pytest.raises(ValueError, match="test input"):
        arc_puzzle(d, "ev0", 2)
    with pytest.raises(ValueError, match="'tr0' is a training task; --arc-task takes a test"):
        arc_puzzle(d, "tr0", 0)
    with pytest.raises(ValueError, match="'nope' is not one of its tasks \\(its test tasks: "):
        arc_puzzle(d, "nope", 0)


def test_cli(checkpoint, tmp_path, capsys):
    out = tmp_path / "strip.png"
    args = ["solve", "--checkpoint-dir", str(checkpoint), "--out", str(out)]
    assert evaluate_cli.main(args + ["--sudoku", QUESTION, "--solution", SOLUTION]) == 0
    assert "adaptive halting" in capsys.readouterr().out and out.stat().st_size > 0
    out.unlink()
    two_s, no_g = tmp_path / "two_s.txt", tmp_path / "no_g.txt"
    two_s.write_text("\n".join(["#SS##"] + MAZE_Q[1:]) + "\n")
    no_g.write_text("\n".join(MAZE_Q[:-1] + ["#   #"]) + "\n")
    maze = tmp_path / "maze.txt"  # a valid maze, for a model of Sudokus
    maze.write_text("\n".join(MAZE_Q) + "\n")
    maze9 = tmp_path / "maze9.txt"  # 81 tokens with ids below 11: it fits, but is no Sudoku
    maze9.write_text("\n".join(["#S#######"] + ["#       #"] * 7 + ["#######G#"]) + "\n")
    wrong = SOLUTION[1:] + SOLUTION[0]                   # every row shifted: keeps no clue
    for bad, message in (
            (["--sudoku", "123"], "Sudoku puzzle has 3 characters, expected 81"),
            (["--sudoku", QUESTION, "--maze", "m.txt"], "exactly one puzzle"),
            (["--sudoku", "1" * 81],
             "Sudoku puzzle is not a valid Sudoku (digit 1 appears twice in row 1)"),
            (["--sudoku", "5..5" + "." * 77], "digit 5 appears twice in row 1"),
            (["--sudoku", QUESTION, "--solution", wrong],
             "Sudoku solution contradicts a clue of the puzzle"),
            (["--sudoku", QUESTION, "--solution", SOLUTION[:80] + "."],
             "Sudoku solution character '.' at position 80 (row 9, column 9)"),
            (["--maze", str(two_s)], "two_s.txt: maze must have exactly one start 'S'"),
            (["--maze", str(no_g)], "no_g.txt: maze must have exactly one goal 'G'"),
            (["--maze", str(maze)], "trained on sudoku puzzles, not maze"),
            (["--maze", str(maze), "--allow-data-mismatch"],
             ("this maze puzzle does not fit the model: it is 25 tokens with ids up to 4, the "
              "model reads 81 tokens with ids below 11")),
            (["--maze", str(maze9)], "trained on sudoku puzzles, not maze"),
            (["--maze", str(maze), "--solution", SOLUTION], "--solution goes with --sudoku"),
            (["--sudoku", QUESTION, "--test-index", "2"], "--test-index goes with --arc-task"),
            (["--sudoku", QUESTION, "--data-dir", str(tmp_path)],
             "--data-dir goes with --arc-task or --official-weights"),
            (["--arc-task", "00576224"], "sudoku data set: --arc-task needs an ARC one"),
            (["--sudoku", QUESTION, "--out", str(tmp_path)], "is a directory; give a file"),
            (["--sudoku", QUESTION, "--out", str(tmp_path / "s.txt")],
             "the strip is a PNG image; give a path ending in .png")):
        assert evaluate_cli.main(args + bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
        assert not out.exists()


def test_evaluate_help_names_the_solve_command(capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate_cli.main(["--help"])
    assert stop.value.code == 0 and "python evaluate.py solve --help" in capsys.readouterr().out


def test_a_maze_on_a_sudoku_model_with_allow_data_mismatch(checkpoint, tmp_path, capsys):
    """The model's Sudoku digits are no maze characters: they show as '?', no crash."""
    maze9 = tmp_path / "maze9.txt"
    maze9.write_text("\n".join(["#S#######"] + ["#       #"] * 7 + ["#######G#"]) + "\n")
    out = tmp_path / "m.png"
    assert evaluate_cli.main(["solve", "--checkpoint-dir", str(checkpoint), "--maze", str(maze9),
                              "--allow-data-mismatch", "--out", str(out)]) == 0
    assert "adaptive halting" in capsys.readouterr().out and out.stat().st_size > 0
    np.testing.assert_array_equal(cells("maze", np.array([1, 5, 6, 11, 0] + [1] * 4)),
                                  [[0, 4, -1], [-1, -1, 0], [0, 0, 0]])
    assert cells("sudoku", np.arange(2, 11)).max() == 9


def test_the_step_lines_show_the_halting_rule_s_margin():
    """P(halt) is the sigmoid of the rule's margin, so it passes 0.5 where halting stops;
    q_continue is shown where the rule reads it (hrm, the transformer baseline)."""
    puzzle = sudoku_puzzle(QUESTION, SOLUTION)
    preds = np.stack([puzzle.labels, puzzle.labels])
    q_halt, margin = np.array([0.634, 2.21]), np.array([-1.0, -0.5])
    text = describe(Trace(puzzle, preds, q_halt, margin, "q_halt > q_continue", None))
    assert "step  1  q_halt  +0.634  q_continue  +1.634  P(halt) 0.269" in text
    assert "step  2  q_halt  +2.210  q_continue  +2.710  P(halt) 0.378" in text
    assert "stops at step 2 (never confident; the last step)" in text
    text = describe(Trace(puzzle, preds, q_halt, q_halt, "q_halt > 0", None))
    assert "step  2  q_halt  +2.210  P(halt) 0.901" in text and "q_continue" not in text
    assert "stops at step 1" in text
