"""Remembered noise calibrations: the search's own value, from the file only where the accountant agrees."""

import functools
import json

import pytest
from opacus.accountants.utils import get_noise_multiplier

from fl_metamorphosis.privacy import calibration_memo
from fl_metamorphosis.privacy.accounting import StepHistory
from fl_metamorphosis.privacy.calibration_memo import calibrated, memo_file

TARGET = dict(epsilon=2.0, delta=1e-5, sample_rate=0.25, accountant="rdp")


@pytest.fixture
def searches(tmp_path, monkeypatch):
    """The memo in a fresh folder; the list of the searches that ran."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ran = []

    def search(**kwargs):
        ran.append(kwargs)
        return get_noise_multiplier(**kwargs)

    monkeypatch.setattr("opacus.accountants.utils.get_noise_multiplier", search)
    return ran


@functools.cache
def _opacus(**length):
    return get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=0.25, accountant="rdp", **length)


def test_a_remembered_calibration_is_the_searchs_value_and_saves_the_search(searches):
    first = calibrated(**TARGET, epochs=1)
    assert first == _opacus(epochs=1) and len(searches) == 1
    assert calibrated(**TARGET, epochs=1) == first and len(searches) == 1  # a new process would read the file
    assert calibrated(**TARGET, steps=8) == _opacus(steps=8) and len(searches) == 2  # steps: its own entry
    assert len(json.loads(memo_file().read_text())) == 2


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_an_edited_value_that_misses_the_target_is_searched_again(searches, factor):
    right = calibrated(**TARGET, epochs=1)
    memo = json.loads(memo_file().read_text())
    (key,) = memo
    memo[key] = right * factor  # less noise overspends the budget; more noise wastes it
    memo_file().write_text(json.dumps(memo))
    again = calibrated(**TARGET, epochs=1)
    assert again == right and len(searches) == 2
    steps = int(1 / 0.25)
    assert 2.0 - calibration_memo.TOLERANCE <= StepHistory.of([(again, 0.25, steps)]).epsilon(1e-5) <= 2.0
    assert json.loads(memo_file().read_text())[key] == right  # the file is mended


def test_an_unreadable_or_unwritable_memo_only_costs_the_search(searches, tmp_path, monkeypatch):
    memo_file().parent.mkdir(parents=True)
    memo_file().write_text("{not json")
    assert calibrated(**TARGET, epochs=1) == _opacus(epochs=1)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # its folder cannot be created
    assert calibrated(**TARGET, epochs=1) == _opacus(epochs=1) and len(searches) == 2
