"""``metamorphosis compare``: the table is built from real federated runs, and resumes from them."""

import json

import pytest

from fl_metamorphosis.metrics.comparison import aggregate, compare_methods
from metamorphosis_cli.main import main


def test_aggregate_gives_mean_std_and_per_seed_values_and_keeps_labels():
    runs = [{"a": {"accuracy": 0.5, "probe": "mlp"}, "n": 2}, {"a": {"accuracy": 0.7, "probe": "mlp"}, "n": 4}]
    merged = aggregate(runs)
    assert merged["a"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert merged["a"]["accuracy"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert merged["a"]["accuracy"]["values"] == [0.5, 0.7] and merged["a"]["probe"] == "mlp"
    assert merged["n"]["values"] == [2.0, 4.0]


def test_compare_refuses_methods_with_different_seeds():
    with pytest.raises(ValueError, match="seeds"):
        compare_methods({"a": {0: {"x": 1}, 1: {"x": 2}}, "b": {0: {"x": 1}}})


@pytest.mark.slow(seconds=85)
def test_quick_compare_builds_the_table_from_real_runs_and_reuses_them(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--quick", "--out", str(out), "--methods", "universal", "metamorphosis", "--seeds", "0", "1"]
    assert main(args) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["seeds"] == [0, 1] and set(comparison["methods"]) == {"universal", "metamorphosis"}
    for method in ("universal", "metamorphosis"):
        m = comparison["methods"][method]
        per_seed = [
            json.loads((out / "runs" / f"{method}_seed{s}" / "summary.json").read_text())["methods"][method]
            for s in (0, 1)
        ]
        # each figure is the runs' own, not a re-computation
        assert m["tasks"]["left"]["accuracy"]["values"] == [r["tasks"]["left"]["accuracy"] for r in per_seed]
        assert m["membership"]["auc"]["values"] == [r["membership"]["auc"] for r in per_seed]
        assert m["dp_sgd"]["epsilon"]["mean"] <= 8.0 + 0.05
        # the attacker learned on as many releases as the server received: 60 x 3 devices x 3 queries
        assert all(r["attacker"]["train_samples"] >= 540 for r in per_seed)
    assert comparison["methods"]["universal"]["feature_dp"]["epsilon"] is None
    for name in ("comparison.md", "privacy_utility.png", "reconstruction_grids.png"):
        assert (out / name).stat().st_size > 0
    assert "| metamorphosis |" in (out / "comparison.md").read_text()
    capsys.readouterr()
    assert main(args) == 0  # the second call reuses every finished run
    seen = capsys.readouterr()
    assert (seen.out + seen.err).count("reusing the finished run") == 4


@pytest.mark.slow(seconds=45)
def test_quick_sweep_plots_utility_and_attacks_against_the_spent_epsilon(tmp_path):
    out = tmp_path / "sweep"
    assert main(["compare", "--quick", "--out", str(out), "--sweep", "feature_dp.noise_std=0.1,0.5"]) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["method"], r["set"]) for r in rows] == [("metamorphosis", "0.1"), ("metamorphosis", "0.5")]
    # x is the feature epsilon each run spent: more noise, smaller epsilon
    assert rows[0]["value"] == rows[0]["feature_epsilon"] > rows[1]["value"] > 0
    assert set(rows[0]["attack"]) == {"left->right", "right->left"}
    assert (out / "sweep.png").stat().st_size > 0 and (out / "frontier.png").stat().st_size > 0
    assert "noise_std=0.1" in (out / "sweep.md").read_text()


def _swept_run(accuracy, attack, ssim_gain):
    return {
        "tasks": {"a": {"accuracy": accuracy}, "b": {"accuracy": accuracy}},
        "cross_task_attack": {
            "a->b": {"accuracy": 0.5 + attack, "chance": 0.5, "label_floor": None},
            "b->a": {"accuracy": 0.5, "chance": 0.5, "label_floor": None},
        },
        "reconstruction": {
            t: {"ssim": 0.3, "ssim_label_only": 0.1, "ssim_features_and_label": 0.1 + ssim_gain} for t in "ab"
        },
        "dp_sgd": {"epsilon": 8.0},
        "feature_dp": {"epsilon": 50.0},
    }


def test_a_sweep_takes_categorical_values_and_marks_the_frontier(tmp_path, monkeypatch):
    from fl_metamorphosis.config import build_config
    from simulations import compare as compare_module

    # (accuracy, cross-task leak, input leak) each setting's run reports
    figures = {"impurity": (0.9, 0.2, 0.05), "overlap": (0.8, 0.0, 0.1), "8": (0.7, 0.1, 0.0)}
    figures["metamorphosis_adversarial"] = (0.6, 0.0, 0.0)

    def fake_simulate(run_cfg, out, echo, app_dir, resume, cores=None, runtime=None, tracking_parent=None):
        method = run_cfg.methods[0]
        key = run_cfg.loss.per_sample_penalty if run_cfg.model.feature_dim == 64 else str(run_cfg.model.feature_dim)
        key = method if method != "metamorphosis" else key
        summary = {"methods": {method: _swept_run(*figures[key])}, "tasks": ["a", "b"], "config": {}}
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps(summary))

    monkeypatch.setattr(compare_module, "simulate", fake_simulate)
    sweeps = [
        ("loss.per_sample_penalty", ["impurity", "overlap"]),
        ("model.feature_dim", ["8"]),
        ("method", ["metamorphosis_adversarial"]),  # the method itself, at the default settings
    ]
    cfg = build_config(None, ["federated.rounds=3"])
    rows = compare_module.sweep(cfg, tmp_path, ["metamorphosis"], 0, sweeps, echo=lambda _: None)
    # a category stays text, a number is plotted
    assert [r["value"] for r in rows] == ["impurity", "overlap", 8.0, "metamorphosis_adversarial"]
    assert rows[-1]["method"] == "metamorphosis_adversarial"
    table = (tmp_path / "sweep.md").read_text().splitlines()
    body = [line for line in table if line.startswith(("| loss", "| model", "| method"))]
    # most private first (ties: more accurate first); 8 is beaten by overlap (more accurate, less leak) and
    # the adversarial variant by overlap too (as private, less accurate)
    assert [line.split(" | ")[0] for line in body] == [
        "| loss.per_sample_penalty=overlap",
        "| method=metamorphosis_adversarial",
        "| model.feature_dim=8",
        "| loss.per_sample_penalty=impurity",
    ]
    assert [line.rstrip(" |").endswith("*") for line in body] == [True, False, False, True]
    assert "+0.200 | +0.050" in body[3]
    assert (tmp_path / "frontier.png").stat().st_size > 0


def test_compare_resumes_an_interrupted_run_and_starts_a_changed_one_afresh(tmp_path, monkeypatch):
    from fl_metamorphosis.checkpoint import RunCheckpoint, save_run
    from fl_metamorphosis.config import build_config
    from simulations import compare as compare_module

    cfg = build_config(None, ["federated.rounds=3"])
    calls = []

    def fake_simulate(run_cfg, out, echo, app_dir, resume, cores=None, runtime=None, tracking_parent=None):
        calls.append(resume)
        (out / "summary.json").write_text(json.dumps({"methods": {}, "config": run_cfg.model_dump()}))

    monkeypatch.setattr(compare_module, "simulate", fake_simulate)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text(cfg.model_dump_json())
    save_run(out / "checkpoints", RunCheckpoint(1, "metamorphosis", {}, {}, {}))  # killed after round 1
    compare_module.run_or_reuse(cfg, out, lambda _line: None, compare_module.APP_DIR)
    compare_module.run_or_reuse(cfg, out, lambda _line: None, compare_module.APP_DIR)  # finished now: reused
    other = build_config(None, ["federated.rounds=4"])
    (out / "summary.json").unlink()
    compare_module.run_or_reuse(other, out, lambda _line: None, compare_module.APP_DIR)  # another experiment
    assert calls == [True, False]
