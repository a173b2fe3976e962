"""CSV readers: token encodings of the official builders, options, and one clear error (file,
line, problem) for every kind of bad row; the CLI prints it and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_fixtures import HEADER, MAZE_A, MAZE_Q, maze_rows, sudoku_rows, write_csv

from data import build, generate, sources, validate
from data.__main__ import main
from data.common import DataError
from data.store import load_metadata, read_puzzles


def test_sudoku_tokens_match_the_official_encoding(tmp_path):
    q = "5." + "0" * 79
    a = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
    rows = sources.read_sudoku_csv(write_csv(tmp_path / "s.csv", [(q, a, 3)]))
    expected_in = np.full(81, 1)
    expected_in[0] = 6                                  # digit 5 -> 6; '.' and '0' -> 1
    assert (rows.inputs[0] == expected_in).all()
    assert (rows.labels[0] == np.array([int(c) + 1 for c in a])).all()
    assert rows.inputs.dtype == np.uint8 and rows.ratings.tolist() == [3]


def test_sudoku_min_rating_and_seeded_subsample(tmp_path):
    path = write_csv(tmp_path / "s.csv", sudoku_rows(30, 0))       # ratings k % 5
    rows = sources.read_sudoku_csv(path, min_rating=3)
    assert len(rows.inputs) == 12 and (rows.ratings >= 3).all()
    sub = sources.subsample(rows, 5, seed=1)
    assert len(sub.inputs) == 5 and (np.diff(sub.lines) > 0).all()
    assert (sources.subsample(rows, 5, seed=1).lines == sub.lines).all()
    assert not (sources.subsample(rows, 5, seed=2).lines == sub.lines).all()


def test_maze_tokens_match_the_official_encoding(tmp_path):
    rows = sources.read_maze_csv(write_csv(tmp_path / "m.csv", maze_rows(2)))
    charset = "# SGo"
    assert (rows.inputs[0] == [charset.index(c) + 1 for c in "".join(MAZE_Q)]).all()
    assert (rows.labels[1] == [charset.index(c) + 1 for c in "".join(MAZE_A)]).all()


GOOD_Q, GOOD_A, _ = sudoku_rows(1, 0)[0]
BAD_A = GOOD_A[:9] + GOOD_A[10] + GOOD_A[9] + GOOD_A[11:]           # swapped: rows still ok
CLUE = next(i for i, c in enumerate(GOOD_Q) if c != ".")


@pytest.mark.parametrize("rows, line, message", [
    ([(GOOD_Q + ".", GOOD_A, 0)], 2, "question has 82 characters, expected 81"),
    ([(GOOD_Q, GOOD_A[:-1], 0)], 2, "answer has 80 characters"),
    ([(GOOD_Q, GOOD_A, 0), ("x" + GOOD_Q[1:], GOOD_A, 0)], 3, "question character 'x'"),
    ([(GOOD_Q, "0" + GOOD_A[1:], 0)], 2, "answer character '0'"),
    ([(GOOD_Q[:CLUE] + str(int(GOOD_A[CLUE]) % 9 + 1) + GOOD_Q[CLUE + 1:], GOOD_A, 0)], 2,
     "contradicts a clue"),
    ([("." * 81, BAD_A, 0)], 2, "not a valid Sudoku"),
    ([(GOOD_Q, GOOD_A, "hard")], 2, "rating 'hard' is not an integer"),
    ([(GOOD_Q, GOOD_A)], 2, "expected 4 columns"),
    ([(GOOD_Q, "é" * 81, 0)], 2, "non-ASCII"),
])
def test_sudoku_bad_rows(tmp_path, rows, line, message):
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=message) as e:
        sources.read_sudoku_csv(path)
    assert str(e.value).startswith(f"{path}, line {line}: ")


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        sources.read_sudoku_csv(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is a directory, not a file"):
        sources.read_sudoku_csv(tmp_path)
    (tmp_path / "h.csv").write_text("q,a\n")
    with pytest.raises(DataError, match="line 1: header must be"):
        sources.read_maze_csv(tmp_path / "h.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: empty file"):
        sources.read_maze_csv(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="no puzzle rows"):
        sources.read_sudoku_csv(write_csv(tmp_path / "e.csv", []))
    with pytest.raises(DataError, match="no row has rating >= 9"):
        sources.read_sudoku_csv(write_csv(tmp_path / "r.csv", sudoku_rows(3, 0)), min_rating=9)


def _maze(q: list[str], a: list[str]) -> tuple[str, str, int]:
    return "".join(q), "".join(a), 0


LONG_A = ["#S###", "#o#o#", "#ooo#", "###o#", "#Goo#"]             # detour through (1,3)


@pytest.mark.parametrize("row, message", [
    (_maze(MAZE_Q, MAZE_A[:-1] + ["#Goo"]), "answer has 24 characters, expected 25"),
    (_maze(["#S#x#"] + MAZE_Q[1:], MAZE_A), "question character 'x'"),
    (_maze(["#So##"] + MAZE_Q[1:], MAZE_A), "question character 'o'"),
    (_maze(["#SS##"] + MAZE_Q[1:], MAZE_A), "exactly one start"),
    (_maze(MAZE_Q, ["#S#o#"] + MAZE_A[1:]), "other than by 'o' on free cells"),
    (_maze(MAZE_Q, LONG_A), "not a shortest path"),
    (_maze(MAZE_Q, MAZE_Q), "not a shortest path"),
])
def test_maze_bad_rows(tmp_path, row, message):
    path = write_csv(tmp_path / "bad.csv", maze_rows(1) + [row])
    with pytest.raises(DataError, match=message) as e:
        sources.read_maze_csv(path)
    assert f"{path}, line " in str(e.value)


def test_maze_grid_must_be_square(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [("#S  G", "#SooG", 0)])
    with pytest.raises(DataError, match=f"{path}, line 2: question length 5 is not a square"):
        sources.read_maze_csv(path)


def test_build_writes_base_arrays_and_metadata(tmp_path):
    tr = write_csv(tmp_path / "tr.csv", sudoku_rows(10, 0))
    te = write_csv(tmp_path / "te.csv", sudoku_rows(4, 1))
    build.build_sudoku(tr, te, tmp_path / "out", subsample_size=6, seed=3)
    meta = load_metadata(tmp_path / "out")
    assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers) == (11, 81, 1)
    assert (meta.total_groups, meta.mean_puzzle_examples, meta.default_num_aug) == (6, 1.0, 1000)
    assert load_metadata(tmp_path / "out", "test").total_groups == 4
    inputs, labels = read_puzzles(tmp_path / "out", "train")
    assert inputs.shape == labels.shape == (6, 81)
    mtr = write_csv(tmp_path / "mtr.csv", maze_rows(3))
    build.build_maze(mtr, mtr, tmp_path / "maze")
    meta = load_metadata(tmp_path / "maze", "test")
    assert (meta.vocab_size, meta.seq_len, meta.grid_size) == (6, 25, 5)


def test_cli_error_exits_nonzero_and_writes_nothing(tmp_path, capsys):
    good = write_csv(tmp_path / "good.csv", sudoku_rows(3, 0))
    bad = write_csv(tmp_path / "bad.csv", [(GOOD_Q, GOOD_A[:-1], 0)])
    out = tmp_path / "out"
    assert main(["build", "sudoku", "--train-csv", str(good), "--test-csv", str(bad),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}, line 2: answer has 80 characters")
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv"]
    assert main(["build", "sudoku", "--train-csv", str(good), "--test-csv", str(good),
                 "--out", str(out)]) == 0
    before = (out / "train" / "inputs.npy").read_bytes()
    assert main(["build", "sudoku", "--train-csv", str(bad), "--test-csv", str(good),
                 "--out", str(out)]) == 1                               # old data set intact
    assert (out / "train" / "inputs.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv", "out"]


def test_build_refuses_to_write_over_what_is_not_a_data_set(tmp_path, capsys):
    """--out may be new, empty or a data set (replaced); a file or a directory of other files
    (e.g. the raw input folder) is refused before any work, and left as it was."""
    good = write_csv(tmp_path / "good.csv", sudoku_rows(3, 0))
    build_args = ["build", "sudoku", "--train-csv", str(good), "--test-csv", str(good), "--out"]
    for taken, message in ((tmp_path, "is not empty and holds no data set"),
                           (good, "is a file; give a directory")):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main([*build_args, str(taken)]) == 1
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert good.read_text().startswith("source,question,answer,rating")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*build_args, str(empty)]) == 0
    assert main([*build_args, str(empty)]) == 0   # a data set is replaced
    assert (empty / "metadata.json").is_file()


def test_cli_generate_to_a_directory_is_one_error_and_leaves_no_file(tmp_path, capsys):
    assert main(["generate", "sudoku", "--count", "1", "--workers", "1", "--out",
                 str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} is a directory; give a file path"
    meant = f"{tmp_path / 'gen'}/"  # a directory that does not exist yet: not a file 'gen'
    assert main(["generate", "maze", "--count", "1", "--size", "5", "--out", meant]) == 1
    assert capsys.readouterr().err.strip() == f"error: {meant} is a directory; give a file path"
    assert list(tmp_path.iterdir()) == []


def test_subsample_larger_than_the_file_uses_every_row_and_says_so(tmp_path, capsys):
    good = write_csv(tmp_path / "good.csv", sudoku_rows(3, 0))
    assert main(["build", "sudoku", "--train-csv", str(good), "--test-csv", str(good),
                 "--subsample-size", "500", "--out", str(tmp_path / "out")]) == 0
    assert (f"notice: --subsample-size 500: {good} has only 3 puzzles; all are used"
            in capsys.readouterr().out)
    assert load_metadata(tmp_path / "out").total_groups == 3


def test_cli_build_maze_and_help(tmp_path, capsys):
    path = write_csv(tmp_path / "m.csv", maze_rows(2))
    assert main(["build", "maze", "--train-csv", str(path), "--test-csv", str(path),
                 "--out", str(tmp_path / "maze")]) == 0
    assert Path(tmp_path / "maze" / "metadata.json").is_file()
    with pytest.raises(SystemExit):
        main(["build", "nonsense"])


def test_readers_accept_a_byte_order_mark_and_trailing_empty_lines(tmp_path):
    rows = sudoku_rows(3, 0)
    text = HEADER + "".join(f"s,{q},{a},{r}\r\n" for q, a, r in rows)
    for name, data in (("bom.csv", "\ufeff" + text), ("tail.csv", text + "\r\n\n")):
        (tmp_path / name).write_bytes(data.encode())
        read = sources.read_sudoku_csv(tmp_path / name)
        assert read.lines.tolist() == [2, 3, 4]
        assert (read.labels[2] - 1 == [int(c) for c in rows[2][1]]).all()
    (tmp_path / "mid.csv").write_text(text.replace("\r\n", "\n\n", 1))
    with pytest.raises(DataError, match=r"line 3: empty line \(only allowed at the end\)"):
        sources.read_sudoku_csv(tmp_path / "mid.csv")
    (tmp_path / "latin1.csv").write_bytes(text.encode() + "s,é,é,0\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        sources.read_sudoku_csv(tmp_path / "latin1.csv")


def test_a_question_with_a_repeated_clue_is_rejected(tmp_path):
    two_fives = "55" + "." * 79
    for q in ("1" * 81, two_fives):                 # a solution cannot keep both clues
        with pytest.raises(DataError, match="line 2: answer contradicts a clue"):
            sources.read_sudoku_csv(write_csv(tmp_path / "a.csv", [(q, GOOD_A, 0)]))
    with pytest.raises(validate.BadRow, match=r"^question is not a valid Sudoku \(digit 5 "
                                              r"appears twice in row 1\)$") as e:
        validate.sudoku([GOOD_Q, two_fives], None)
    assert e.value.row == 1
    with pytest.raises(validate.BadRow, match=r"digit 7 appears twice in box 9"):
        validate.sudoku(["." * 60 + "7" + "." * 9 + "7" + "." * 10], None)


def test_leak_report_counts_equivalent_test_puzzles_and_strict_refuses(tmp_path, capsys):
    """The fixture Sudokus are all one grid up to symmetry (solved_sudoku): every test puzzle
    leaks. Generated ones do not; the same file on both sides leaks every row."""
    tr = write_csv(tmp_path / "tr.csv", sudoku_rows(6, 0))
    te = write_csv(tmp_path / "te.csv", sudoku_rows(3, 1))
    meta = build.build_sudoku(tr, te, tmp_path / "s")
    assert meta["leaks"]["test_in_train"] == 3 and meta["leaks"]["test"] == 3
    assert json.loads((tmp_path / "s" / "metadata.json").read_text())["leaks"] == meta["leaks"]
    assert main(["build", "sudoku", "--train-csv", str(tr), "--test-csv", str(te), "--out",
                 str(tmp_path / "strict"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 3 of 3 test puzzles equal a training puzzle (same solution "
                          "up to relabelling") and err.endswith("not building (--strict)\n")
    assert not (tmp_path / "strict").exists()
    gen_tr, gen_te = tmp_path / "gtr.csv", tmp_path / "gte.csv"
    generate.write_sudoku_csv(gen_tr, 6, seed=0, workers=1, progress=False)
    generate.write_sudoku_csv(gen_te, 3, seed=1, workers=1, progress=False)
    assert main(["build", "sudoku", "--train-csv", str(gen_tr), "--test-csv", str(gen_te),
                 "--out", str(tmp_path / "g"), "--strict"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        "leak check: 0 of 3 test puzzles equal a training puzzle (same solution up to "
        "relabelling, transpose, band/stack and row/column permutations)")
    assert out[-2] == (  # the whole metadata.json on one line buried the leak check
        f"wrote {tmp_path / 'g'}: sudoku, seq_len 81, vocabulary 11; train 6 puzzles (6006 with "
        f"augmented copies), test 3 puzzles (3 with augmented copies) (all in "
        f"{tmp_path / 'g'}/metadata.json)")
    mazes = write_csv(tmp_path / "m.csv", maze_rows(2))
    assert build.build_maze(mazes, mazes, tmp_path / "m")["leaks"]["test_in_train"] == 2
