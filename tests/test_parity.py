"""Parity with numbers recorded from the official PyTorch implementation (tests/fixtures)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FIXTURES, OFFICIAL_CASES

from trm import parity


@pytest.fixture(scope="module", params=OFFICIAL_CASES)
def checked(request):
    fx = parity.load_fixture(str(FIXTURES / f"trm_official_{request.param}.npz"))
    return fx, parity.check(fx)


def test_every_recorded_quantity_is_compared(checked):
    fx, rows = checked
    names = {r.name for r in rows}
    grads = [n for n in fx.records if "/grad/" in n or "/param_after/" in n]
    assert grads and set(grads) <= names
    for s in fx.steps("eval"):
        for key in ("logits", "q_halt_logits", "z_H", "z_L", "steps", "halted", "loss",
                    "metric_exact_accuracy", "metric_q_halt_loss"):
            assert f"eval/step{s}/{key}" in names
    assert fx.steps("train") == [1, 2, 3]
    assert "train/step2/current_inputs" in names and "train/step3/grad/puzzle_emb_rows" in names


def test_replayed_quantities_within_1e_5(checked):
    _, rows = checked
    replayed = [r for r in rows if r.sensitivity is None]
    assert len(replayed) > 90
    worst = max(replayed, key=lambda r: r.error)
    assert worst.error <= 1e-5, worst


def test_compounded_quantities_within_noise_floor(checked):
    _, rows = checked
    for r in rows:
        if r.sensitivity is not None:
            assert r.error <= r.allowed(1e-5, 30.0), r


def test_cli_passes_on_official_numbers(capsys):
    assert parity.main([str(FIXTURES / "trm_official_attn_learned.npz")]) == 0
    assert "max_rel_err=" in capsys.readouterr().out.splitlines()[-1]


def test_cli_fails_on_wrong_weights(tmp_path, capsys):
    with np.load(FIXTURES / "trm_official_attn_learned.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/inner.lm_head.weight"] = arrays["param/inner.lm_head.weight"] * 1.001
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    assert parity.main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "logits" in out


def test_cli_reports_unreadable_file(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert parity.main([str(missing)]) == 2
    assert "nope.npz" in capsys.readouterr().err
