"""Parity with numbers recorded from the official PyTorch implementation (tests/fixtures), every
architecture, under the one rule of `python -m trm.parity`."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import FIXTURES, OFFICIAL_CASES

from trm import parity
from trm.models import layers

# The fast suite replays the trm files and one file of hrm and of the baseline; the other
# files (trm_hier6's among them: ~1 min each on 2 cores) are replayed by the slow suite.
FAST = [*(f"trm_official_{c}" for c in OFFICIAL_CASES), "hrm_official_attn_rope",
        "transformers_baseline_official_attn_learned"]
SLOW = ["trm_hier6_official_attn_rope", "hrm_official_attn_learned",
        "transformers_baseline_official_attn_rope", "trm_hier6_official_attn_learned"]
CHEAP = "transformers_baseline_official_attn_learned"  # one pass of two blocks per step
_CHECKED: dict[str, tuple[parity.Fixture, list[parity.Row]]] = {}


@pytest.fixture(scope="module", autouse=True)
def highest_precision():
    """The command's matmul precision, so that its replays reuse these tests' compilations."""
    with jax.default_matmul_precision("highest"):
        yield


def fixture_path(name: str) -> str:
    return str(FIXTURES / f"{name}.npz")


def checked_file(name: str) -> tuple[parity.Fixture, list[parity.Row]]:
    if name not in _CHECKED:
        fx = parity.load_fixture(fixture_path(name))
        _CHECKED[name] = fx, parity.check(fx)
    return _CHECKED[name]


@pytest.fixture(scope="module", params=[*FAST, *(pytest.param(n, marks=pytest.mark.slow)
                                                 for n in SLOW)])
def checked(request):
    return checked_file(request.param)


def test_every_recorded_quantity_is_compared(checked):
    fx, rows = checked
    names = {r.name for r in rows}
    recorded = {n for n in fx.records if n.startswith(("eval/", "train/"))}
    assert recorded == names
    grads = [n for n in names if "/grad/" in n or "/param_after/" in n]
    assert grads and "train/step3/grad/puzzle_emb_rows" in names
    for s in fx.steps("eval"):
        for key in ("logits", "q_halt_logits", "steps", "halted", "loss",
                    "metric_exact_accuracy", "metric_q_halt_loss", *fx.carry_keys):
            assert f"eval/step{s}/{key}" in names
    assert fx.steps("train") == [1, 2, 3] and "train/step2/current_inputs" in names
    if fx.config.arch == "hrm":  # the only official numbers of the Q-continue loss
        for s in (1, 2, 3):
            assert {f"train/step{s}/target_q_continue",
                    f"train/step{s}/metric_q_continue_loss"} <= names


def test_one_rule_for_every_quantity(checked):
    """error <= max(1e-5, 30 x the quantity's own one-ulp sensitivity), compounded or not."""
    fx, rows = checked
    assert len(rows) > 90
    bad = [r for r in rows if r.error > r.allowed()]
    assert not bad, bad[:5]
    # teacher forcing reaches every train step of the files that record each step's weights
    if parity.recorded_weights(fx, 1) is not None:
        assert not any(r.compounded for r in rows)


def test_param_after_is_the_optimiser_on_recorded_gradients(checked):
    """The update is applied to the recorded gradients, so `param_after` keeps only the
    optimiser's own rounding, even where AdamATan2 gets an update's sign from a gradient
    element within rounding of zero (trm_hier6_official_attn_learned has one: 1.4e-2 from our
    own gradients)."""
    _, rows = checked
    after = [r for r in rows if "/param_after/" in r.name]
    assert after and max(r.error for r in after) < 1e-6


def test_a_planted_optimiser_bug_fails(monkeypatch):
    """Half the weight decay moves `param_after` far beyond the rule."""
    fx, rows = checked_file(CHEAP)
    monkeypatch.setattr(parity, "adam_atan2", lambda lr, **kw: _ADAM_ATAN2(
        lr, **{**kw, "weight_decay": kw["weight_decay"] / 2}))
    buggy = parity.replay_train(fx, lambda sd: sd)
    failing = {r.name for r in rows if r.name in buggy and parity.relative_error(
        buggy[r.name], fx.records[r.name]) > r.allowed()}
    assert "train/step1/param_after/inner.lm_head.weight" in failing, sorted(failing)[:5]
    assert not any("/grad/" in n for n in failing)


def test_cli_passes_on_official_numbers(capsys):
    assert parity.main([fixture_path(CHEAP)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("max_rel_err=") and "0 quantities break it" in last


def test_cli_fails_on_wrong_weights(tmp_path, capsys):
    with np.load(fixture_path(CHEAP)) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["param/inner.lm_head.weight"] = arrays["param/inner.lm_head.weight"] * 1.001
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    assert parity.main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "logits" in out


def _attention_swapped(q, k, v):  # a swapped operand: scores k q^T instead of q k^T
    return _ATTENTION(k, q, v)


def _rms_norm_wrong_eps(x, eps):  # a wrong constant: 1e-4 for 1e-5
    return _RMS_NORM(x, 10 * eps)


_RMS_NORM, _ATTENTION, _ADAM_ATAN2 = layers.rms_norm, layers.attention, parity.adam_atan2


@pytest.mark.parametrize("name, bug", [
    ("attention", _attention_swapped),
    pytest.param("rms_norm", _rms_norm_wrong_eps, marks=pytest.mark.slow)])
def test_a_planted_one_line_bug_fails(monkeypatch, name, bug):
    """The rule catches a one-line bug: the replay with the bug breaks the allowances the
    correct code measured (its sensitivities)."""
    fx, rows = checked_file(CHEAP)
    monkeypatch.setattr(layers, name, bug)
    jax.clear_caches()  # the replay's compiled steps must see the bug
    try:
        buggy = parity.replay(fx)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    failing = {r.name for r in rows if parity.relative_error(buggy[r.name], fx.records[r.name])
               > r.allowed()}
    assert "eval/step1/logits" in failing, sorted(failing)[:5]


def test_cli_reports_unreadable_file(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    assert parity.main([str(missing)]) == 2
    assert "nope.npz" in capsys.readouterr().err


def test_cli_bad_input_is_one_line_before_any_replay(tmp_path, capsys):
    main = parity.main
    good = FIXTURES / "trm_official_attn_rope.npz"
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100_000])
    no_config = tmp_path / "no_config.npz"
    np.savez(no_config, a=np.zeros(2))
    arrays = dict(np.load(good))
    no_param = tmp_path / "no_param.npz"
    np.savez(no_param, **{k: v for k, v in arrays.items() if k != "param/inner.H_init"})
    no_record = tmp_path / "no_record.npz"
    np.savez(no_record, **{k: v for k, v in arrays.items() if k != "batch0/inputs"})
    no_eval = tmp_path / "no_eval.npz"
    np.savez(no_eval, **{k: v for k, v in arrays.items() if not k.startswith("eval/")})
    no_train = tmp_path / "no_train.npz"
    np.savez(no_train, **{k: v for k, v in arrays.items() if not k.startswith("train/")})
    settings = json.loads(str(arrays["config_json"]))

    def with_config(name: str, config: object) -> str:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **{**arrays, "config_json": np.array(json.dumps(config))})
        return str(path)

    cases = [([str(good), str(truncated)], "not an .npz file"),  # the good one is not replayed
             ([str(no_config)], "not a parity fixture: it has no config_json"),
             ([str(no_param)], ("not a complete fixture: official state dict lacks parameter "
                                "'inner.H_init'")),
             ([str(no_record)], "not a complete fixture: no 'batch0/inputs' recorded"),
             ([str(no_eval)], "not a complete fixture: no eval steps recorded"),
             ([str(no_train)], "not a complete fixture: no train steps recorded"),
             ([with_config("no_model", {"foo": 1})], "its config_json has no `model` mapping"),
             ([with_config("a_list", [1, 2])], "its config_json has no `model` mapping"),
             ([with_config("no_lr", {k: v for k, v in settings.items() if k != "lr"})],
              "its config_json lacks the number(s) lr"),
             ([with_config("text_width", {**settings, "model": {
                 **settings["model"], "hidden_size": "wide"}})],
              "config's hidden_size is 'wide', not an integer"),
             ([str(tmp_path / "missing.npz")], "no such file"),
             ([str(tmp_path)], "a directory; give the fixture files"),
             (["--tolerance", "0", str(good)], "need --tolerance > 0")]
    for args, message in cases:
        assert main(args) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: ")
        assert message in captured.err and captured.err.count("\n") == 1
