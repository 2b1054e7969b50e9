"""The warm runtime: runs one after another on one runner and its device actors (imports once) give a cold
run's figures, an actor that died between runs is replaced, a run cut short costs only its runner, and closing
the runtime leaves no process."""

import os
import signal

import pytest
from conftest import TINY_OVERRIDES

from fl_metamorphosis.config import build_config
from fl_metamorphosis.deployment.flower_processes import processes_of
from fl_metamorphosis.metrics import read_jsonl
from simulations.simulate import simulate
from simulations.warm_runtime import WarmRuntime

pytestmark = pytest.mark.slow

# seeded device noise (a simulation may ask for it): a warm and a cold run of one seed must then agree exactly
SEEDED = [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "audit.enabled=false", 'randomness.source="seeded"']


class Interrupt(Exception):
    pass


def _stop_at_round_1(line: str) -> None:
    if line.startswith("[round 1/"):
        raise Interrupt(line)


def _device_actors(home) -> set[int]:
    found = set()
    for pid in processes_of(home.resolve()):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::ClientAppActor"):
                found.add(pid)
        except OSError:
            continue
    return found


@pytest.mark.slow(seconds=125)
def test_warm_runs_reuse_one_runner_give_the_cold_figures_and_leave_no_process(tmp_path):
    cfg = build_config(None, SEEDED)
    simulate(cfg, tmp_path / "cold", echo=lambda _line: None)
    home = tmp_path / "runtime"
    with WarmRuntime(home, slots=1) as runtime:
        with pytest.raises(Interrupt):  # cut short: the runner is stopped mid-run
            simulate(cfg, tmp_path / "cut", echo=_stop_at_round_1, runtime=runtime)
        assert runtime._all[0].proc is None
        simulate(cfg, tmp_path / "warm1", echo=lambda _line: None, runtime=runtime)
        runner, actors = runtime._all[0].proc.pid, _device_actors(home)
        simulate(cfg, tmp_path / "warm2", echo=lambda _line: None, runtime=runtime)
        assert runtime._all[0].proc.pid == runner  # the second run paid no start-up: same process
        assert actors and _device_actors(home) == actors  # and its devices ran on the first run's actors
        os.kill(min(actors), signal.SIGKILL)  # an idle actor dies between runs (the OOM killer)
        simulate(cfg, tmp_path / "warm3", echo=lambda _line: None, runtime=runtime)
        assert runtime._all[0].proc.pid == runner and not _device_actors(home) & actors  # new actors
        assert processes_of(home.resolve())  # Ray and the runner stay up between runs
    assert processes_of(home.resolve()) == []

    cold = read_jsonl(tmp_path / "cold" / "metrics.jsonl")
    for name in ("warm1", "warm2", "warm3"):
        warm = read_jsonl(tmp_path / name / "metrics.jsonl")
        assert [r["round"] for r in warm] == [1, 2]
        for w, c in zip(warm, cold, strict=True):
            assert {k: v for k, v in w.items() if k != "seconds"} == {k: v for k, v in c.items() if k != "seconds"}
        assert (tmp_path / name / "flower.log").stat().st_size > 0
    assert not (tmp_path / "cut" / "summary.json").exists()
