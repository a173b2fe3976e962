"""The study catalog: every entry builds, varies only its group's variable, and its generated
command line parses back (tyro) into the same config, at full and at CPU scale."""

from __future__ import annotations

import dataclasses

import pytest

from sweeps.catalog import BY_NAME, CATALOG, GROUPS, aliases, baseline, canonical, select
from sweeps.configs import diff, get_path, override, tyro_flags
from sweeps.runner import Settings, plan, run_config
from sweeps.scale import scale_cpu
from trm.optim import lr_batch_scale
from trm.presets import PRESETS
from trm.run_config import RunConfig, parse_cli

MAIN_GROUPS = ["baseline", "exp01", "exp02a", "exp02b", "exp03", "exp04a", "exp04b", "exp05",
               "exp06", "exp07", "exp08", "exp09", "exp10", "contrib01", "contrib02"]
SCHEDULE = {"optim.epochs", "eval.eval_interval"}


def test_catalog_has_the_study_table_and_the_further_items():
    main = [e for e in CATALOG if not e.group.further]
    assert [g for g in GROUPS if not GROUPS[g].further] == MAIN_GROUPS
    assert len(main) == 68  # the baseline and 67 named variations
    sizes = {g: len(select(g)) for g in ("exp01", "exp02a", "exp02b", "exp03", "exp04a",
                                         "exp04b", "exp05", "exp06", "exp09", "exp10")}
    assert sizes == {"exp01": 6, "exp02a": 6, "exp02b": 5, "exp03": 5, "exp04a": 6,
                     "exp04b": 5, "exp05": 6, "exp06": 6, "exp09": 5, "exp10": 5}
    further = {g.name for g in GROUPS.values() if g.further}
    assert further == {"tn_grid", "mlp_vs_attn", "ema_onoff", "nsup", "model_params",
                       "data_size", "lr_batch", "compute_halt", "ckpt_avg", "arch"}
    assert len(select("tn_grid")) == 9


def lr_effective(cfg: RunConfig) -> float:
    return cfg.optim.lr * lr_batch_scale(cfg.optim)
    assert all(e.description and e.question for e in CATALOG)


def test_baseline_is_the_study_baseline():
    b = baseline()
    m, o = b.model, b.optim
    assert (m.mlp_t, m.pos_encodings, m.hidden_size, m.num_heads, m.L_layers, m.H_cycles,
            m.L_cycles, m.halt_max_steps, m.forward_dtype) == (True, "none", 512, 8, 2, 3, 6,
                                                                16, "bfloat16")
    assert (o.epochs, b.eval.eval_interval, o.global_batch_size, o.lr, o.lr_warmup_steps,
            o.lr_min_ratio, o.puzzle_emb_lr, o.weight_decay, o.puzzle_emb_weight_decay) == (
        50000, 5000, 768, 1e-4, 2000, 1.0, 1e-4, 1.0, 1.0)
    assert (o.optimizer, o.b1, o.b2, o.ema, o.ema_rate) == ("adam_atan2", 0.9, 0.95, True, 0.999)
    assert (b.data.num_train, b.data.num_aug, b.seed) == (1000, 1000, 0)
    assert o.lr_batch_scaling == "none" and b.curriculum.phases == ()
    assert b.halting.exploration_start is None and b.halting.step_penalty == 0.0
    assert b.eval.average_last_k == 1


@pytest.mark.parametrize("group", list(GROUPS))
def test_entries_differ_from_the_baseline_exactly_in_their_group_variable(group):
    entries = select(group) if group != "baseline" else [BY_NAME["baseline"]]
    entries = [e for e in entries if e.group.name == group]
    fields = set(GROUPS[group].fields)
    changed = set()
    for e in entries:
        d = set(diff(baseline(), e.config()))
        assert d <= fields, f"{e.name} changes {d - fields}, outside its group's {fields}"
        assert d or canonical(e).name == "baseline", e.name
        changed |= d
    assert changed == fields, f"{group} never varies {fields - changed}"
    configs = [e.config() for e in entries]
    assert len(set(configs)) == len(configs), f"{group} has two equal entries"


def test_study_values():
    assert [BY_NAME[f"exp01{c}"].config().model.hidden_size for c in "abcdef"] == [
        256, 384, 512, 768, 1024, 1536]
    assert [e.config().model.L_cycles for e in select("exp02a")] == [2, 4, 6, 8, 10, 12]
    assert [(e.config().model.L_layers, e.config().model.L_cycles) for e in select("exp03")] \
        == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2)]
    assert [e.config().data.num_train for e in select("exp04a")] == [100, 250, 500, 1000, 2000,
                                                                      5000]
    lrs = [lr_effective(e.config()) for e in select("exp06")]
    assert lrs == pytest.approx([5e-5, 7.07e-5, 1e-4, 1.414e-4, 2e-4, 2.83e-4], rel=1e-3)
    assert [lr_effective(e.config()) for e in select("lr_batch")] == pytest.approx(
        [1e-4, 2e-4, 4e-4, 8e-4])
    adaptive = BY_NAME["contrib02_adaptive"].config().halting
    assert (adaptive.exploration_start, adaptive.exploration_end) == (0.3, 0.05)
    phases = BY_NAME["contrib01_curriculum"].config().curriculum.phases
    assert phases[0][0] == 0.0 and phases[-1][1:] == (3, 6)


def test_entries_equal_to_an_earlier_one_share_its_run():
    for name in ("exp01c", "exp02a_03", "exp02b_03", "exp03b", "exp04a_1000", "exp04b_1000",
                 "exp05_d", "exp07b", "exp08d", "exp09a", "exp10b", "contrib01_baseline",
                 "contrib02_baseline", "tn_H3_L6", "arch_mlp", "ema_on", "nsup_16", "data_01k",
                 "halt_penalty_0p0", "avg_last_1", "arch_trm_mlp"):
        assert canonical(name).name == "baseline", name
    assert canonical("nsup_04").name == "exp05_a"
    assert canonical("ema_off").name == "exp08a"
    assert canonical("tn_H3_L2").name == "exp02a_01"
    assert "exp01c" in [e.name for e in aliases("baseline")]
    runs = plan(select("exp01"), Settings())
    assert [r.name for r in runs] == ["exp01a", "exp01b", "baseline", "exp01d", "exp01e",
                                      "exp01f"]
    assert runs[2].entries == ("exp01c",)
    assert {"exp01", "exp05", "baseline"} <= set(runs[2].config.tracking.tags)


def test_select_patterns():
    assert [e.name for e in select("exp05_[ab]")] == ["exp05_a", "exp05_b"]
    assert [e.name for e in select("exp04a_100")] == ["exp04a_100"]
    assert len(select("exp02")) == 11 and len(select("exp02a,exp02b")) == 11
    assert {e.group.name for e in select("contrib")} == {"contrib01", "contrib02"}
    assert len(select("all")) == len(CATALOG)
    with pytest.raises(ValueError, match="matches no experiment"):
        select("exp99")


def _check_parses_back(cfg: RunConfig) -> None:
    preset = PRESETS["sudoku-extreme"][1]
    argv = ["sudoku-extreme", *tyro_flags(preset, cfg)]
    assert parse_cli(argv) == cfg, argv


@pytest.mark.parametrize("scale", [None, "cpu"])
def test_every_command_line_parses_back_into_its_config(scale):
    runs = plan(CATALOG, Settings(scale=scale, root="/tmp/study root", repo="/tmp/a b"))
    for r in runs:
        assert parse_cli(r.argv) == r.config, r.name
        assert r.config.run_dir == f"/tmp/study root/{r.name}"
        assert r.config.tracking.run_name == r.name
        assert r.config.tracking.track == (scale is None)


def test_flags_cover_bools_none_tuples_and_unprefixed_names():
    cfg = override(baseline(), {"tracking.track": False, "model.mlp_t": False,
                                "eval.eval_interval": None, "eval.eval_sets": ("test", "train"),
                                "tracking.tags": ("a b", "c"),
                                "curriculum.phases": ((0.0, 1, 2), (0.5, 3, 6)),
                                "halting.exploration_start": 0.3,
                                "halting.exploration_end": 0.0, "optim.lr": 1 / 3})
    flags = tyro_flags(PRESETS["sudoku-extreme"][1], cfg)
    assert "--no-track" in flags and "--model.no-mlp-t" in flags
    assert flags[flags.index("--eval.eval-interval") + 1] == "None"
    _check_parses_back(cfg)
    _check_parses_back(override(cfg, {"eval.eval_sets": (), "model.mlp_t": True}))


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "baseline"])
def test_cpu_scale_keeps_the_group_variable_varied(group):
    base = scale_cpu(baseline(), data_root="d")
    entries = [e for e in select(group) if e.group.name == group]
    scaled = [scale_cpu(e.config(), data_root="d") for e in entries]
    assert len(set(scaled)) == len(entries)
    fields = set(GROUPS[group].fields)
    if group == "arch":  # 12 heads at hidden 64 / 8 would give RoPE an odd head dim
        fields.add("model.hidden_size")
    for e, cfg in zip(entries, scaled):
        d = set(diff(base, cfg))
        assert d <= fields | SCHEDULE, f"{e.name}: {d}"
        # the schedule spans at least the requested steps, and the run stops there
        assert cfg.optim.epochs * cfg.data.num_train // cfg.optim.global_batch_size >= 16
        assert cfg.max_steps == 16
        assert cfg.model.hidden_size <= 192 and cfg.data.generate == "sudoku-tiny"


def test_architecture_comparison():
    """TRM vs HRM vs the transformer baseline (and TRM's ablations) on the same data and
    budget, each with its official config/arch/*.yaml cycles, layers and heads."""
    cfgs = {e.name: e.config() for e in select("arch")}
    assert len({(c.data, c.optim) for c in cfgs.values()}) == 1
    hrm = cfgs["arch_hrm_attn"].model
    assert (hrm.arch, hrm.H_cycles, hrm.L_cycles, hrm.H_layers, hrm.L_layers) == (
        "hrm", 2, 2, 4, 4)
    assert cfgs["arch_hrm_mlp"].model.mlp_t and not hrm.mlp_t
    tb = cfgs["arch_transformer"].model
    assert (tb.arch, tb.H_layers, tb.num_heads, tb.pos_encodings) == (
        "transformers_baseline", 8, 12, "rope")
    cpu = scale_cpu(cfgs["arch_transformer"], data_root="d").model
    assert cpu.head_dim % 2 == 0 and cpu.num_heads == 12


def test_run_config_names_and_tags_the_run():
    cfg = run_config("exp05_a", Settings(scale="cpu", root="r", track=True, repo="rep"))
    assert cfg.run_dir == "r/exp05_a" and cfg.tracking.repo == "rep" and cfg.tracking.track
    assert cfg.tracking.experiment == "trm-study-cpu"
    assert cfg.tracking.tags == ("sweep", "exp05", "nsup", "exp05_a")
    assert cfg.data.data_dir == "r/data/sudoku-25" and cfg.optim.global_batch_size == 3
    assert get_path(cfg, "model.halt_max_steps") == 1


def test_override_rejects_unknown_fields():
    with pytest.raises(KeyError, match="hiden_size"):
        override(baseline(), {"model.hiden_size": 3})
    assert dataclasses.replace(baseline()) == override(baseline(), {})
