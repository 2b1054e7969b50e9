"""The Optuna search: a pruned trial stops its run (and every process of it), and a study that is started
again goes on to its number of trials instead of starting over."""

import json

import optuna
import pytest
from conftest import TINY_OVERRIDES
from mlflow.tracking import MlflowClient

from fl_metamorphosis.config import build_config
from fl_metamorphosis.deployment.flower_processes import processes_of
from simulations.search import _round_reporter, run_search
from simulations.simulate import simulate
from simulations.sweep_config import SweepConfig

TINY = [*TINY_OVERRIDES, 'methods=["metamorphosis"]']


class PruneAtOnce:
    """A trial whose pruner stops it at the first round reported."""

    def __init__(self):
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return True


@pytest.mark.slow(seconds=30)
def test_a_pruned_trial_stops_its_run_and_every_process_of_it(tmp_path):
    out, trial = tmp_path / "trial", PruneAtOnce()
    cfg = build_config(None, [*TINY, "federated.rounds=6", "audit.enabled=false"])
    with pytest.raises(optuna.TrialPruned):
        simulate(cfg, out, echo=_round_reporter(trial, out / "metrics.jsonl", lambda _line: None))
    assert trial.reports and trial.reports[0][0] == 1 and 0.0 <= trial.reports[0][1] <= 1.0
    assert processes_of((out / ".flwr").resolve()) == []
    assert not (out / "summary.json").exists()


@pytest.mark.slow(seconds=65)
def test_a_search_records_its_trials_and_resumes_to_its_number_of_trials(tmp_path):
    def search(trials):
        sweep = SweepConfig.model_validate(
            {"search": {"strategy": "fedadam", "ranges": {"eta": [0.001, 0.1]}, "trials": trials, "seed": 3}}
        )
        # no audit: the study's bookkeeping is the subject, and a trial's value is its accuracy either way
        tracked = ["tracking.backend=mlflow", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
        base = build_config(None, [*TINY, "audit.enabled=false", *tracked])
        return run_search(sweep, base, tmp_path, echo=lambda _line: None)

    first = search(2)
    assert [t["state"] for t in first["trials"]] == ["complete", "complete"]
    assert first["best"]["accuracy"] == max(t["value"] for t in first["trials"])
    assert 0.001 <= first["best"]["params"]["eta"] <= 0.1
    assert (tmp_path / "search_history.png").exists() and (tmp_path / "search.md").exists()
    again = search(3)  # one more trial, not three
    assert len(again["trials"]) == 3 and again["trials"][:2] == first["trials"]
    assert again["trials"][2]["params"] not in [t["params"] for t in first["trials"]]  # no replayed draw
    assert json.loads((tmp_path / "search.json").read_text())["trials"][2]["run"] == "search/trial-2"
    # each trial a tracked run with its sampled parameters, under the search's run (the same across both calls)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = json.loads((tmp_path / "tracking.json").read_text())["mlflow"]["run_id"]
    runs = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    by_trial = {int(r.data.params["trial.number"]): r for r in runs}
    assert sorted(by_trial) == [0, 1, 2]
    for t in again["trials"]:
        assert float(by_trial[t["number"]].data.params["trial.eta"]) == pytest.approx(t["params"]["eta"])
