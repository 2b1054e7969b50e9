"""A device's privacy ledger is never silently restarted, and two processes of one device never lose a spend.

A device whose data folder records that it took part refuses to answer when its ledger is gone (deleted
folder, missing file, dangling symlink, unreadable file) until its owner resets it explicitly; every message's
load -> work -> save holds the state folder's lock.
"""

import multiprocessing
import os
import shutil
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, operator_policy_file
from device_messages import train_message
from flwr.app import Context, RecordDict

from clients.client_app import app as client_app
from fl_metamorphosis.config import build_config
from fl_metamorphosis.data.device_folder import write_device_folder
from fl_metamorphosis.data.partition import device_datasets
from fl_metamorphosis.flower.messages import POLICY_REFUSED, is_policy_refusal
from fl_metamorphosis.privacy.device_state import (
    PARTICIPATION_FILE,
    RESET_HINT,
    STATE_FILE,
    DeviceState,
    LedgerMissing,
    StateBusy,
    device_lock,
    participation,
    reset_device_state,
)

CFG = build_config(None, [*TINY_OVERRIDES, 'methods=["metamorphosis"]', "release_gate.enabled=false"])


def _spent(folder: Path, data: Path | None, steps: int = 5) -> None:
    """A device that took part: one save of a state with ``steps`` DP-SGD steps."""
    DeviceState(history=DeviceState().history.extended(1.0, 0.01, steps)).save(folder, durable=True, data_dir=data)


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    return tmp_path / "state", data


# --- the participation record and the refusal -----------------------------------------------------------------


def test_the_first_save_records_in_the_data_folder_that_the_device_took_part(tmp_path):
    state, data = _folders(tmp_path)
    _spent(state, data)
    record = participation(data)
    assert record is not None and record["state_dir"] == str(state.resolve()) and record["since"]
    assert DeviceState.load(state, data).history.steps == 5
    # a simulated device (no data folder of its own) records nothing anywhere else
    _spent(tmp_path / "sim", None)
    assert sorted(p.name for p in (tmp_path / "sim").iterdir()) == [STATE_FILE]


@pytest.mark.parametrize("loss", ["folder deleted", "file deleted", "unreadable file"])
def test_a_missing_ledger_after_taking_part_is_refused_naming_the_folder_and_the_reset(tmp_path, loss):
    state, data = _folders(tmp_path)
    _spent(state, data)
    if loss == "folder deleted":
        shutil.rmtree(state)
    elif loss == "file deleted":
        (state / STATE_FILE).unlink()
    else:
        (state / STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(LedgerMissing) as err:
        DeviceState.load(state, data)
    assert str(state) in str(err.value) and RESET_HINT in str(err.value)
    if loss != "unreadable file":
        assert str(data) in str(err.value) and "took part since" in str(err.value)


def test_a_dangling_symlink_at_the_state_file_is_refused_even_without_a_data_folder(tmp_path):
    state, data = _folders(tmp_path)
    state.mkdir()
    (state / STATE_FILE).symlink_to(tmp_path / "elsewhere" / STATE_FILE)
    for own_data in (data, None):
        with pytest.raises(LedgerMissing, match="symlink") as err:
            DeviceState.load(state, own_data)
        assert str(state) in str(err.value) and RESET_HINT in str(err.value)


def test_a_dangling_symlink_at_the_state_folder_is_refused(tmp_path):
    state, _ = _folders(tmp_path)
    state.symlink_to(tmp_path / "unmounted")
    with pytest.raises(LedgerMissing, match="dangling symlink"), device_lock(state):
        pass


def test_a_device_that_never_took_part_starts_fresh(tmp_path):
    state, data = _folders(tmp_path)
    assert DeviceState.load(state, data).history.steps == 0  # nothing recorded: a first start, not a loss


def test_the_owners_reset_forgets_the_spend_and_allows_a_fresh_start(tmp_path, caplog):
    state, data = _folders(tmp_path)
    _spent(state, data, steps=7)
    message = reset_device_state(data, state)
    assert "FORGOTTEN" in message and "7 DP-SGD steps" in message and message in caplog.text
    assert participation(data) is None and not (state / STATE_FILE).exists()
    assert len(list(state.glob(f"{STATE_FILE}.forgotten-*"))) == 1  # kept for the owner, never read
    assert DeviceState.load(state, data).history.steps == 0
    _spent(state, data, steps=2)  # the fresh budget is recorded again
    assert participation(data) is not None and DeviceState.load(state, data).history.steps == 2


def test_a_reset_clears_a_lost_ledger_and_a_dangling_link(tmp_path):
    state, data = _folders(tmp_path)
    _spent(state, data)
    shutil.rmtree(state)
    state.symlink_to(tmp_path / "unmounted")
    reset_device_state(data, state)
    assert DeviceState.load(state, data).history.steps == 0
    with pytest.raises(FileNotFoundError, match="data-dir"):
        reset_device_state(tmp_path / "no-such-data", state)


# --- through the ClientApp: the refusal reaches the server as one ---------------------------------------------


def _board(tmp_path: Path) -> Context:
    train, test = device_datasets(CFG.data, CFG.federated, 0, CFG.train.seed)
    data = write_device_folder(tmp_path / "data", 0, train, test)
    node_config = {
        "partition-id": 0,
        "num-partitions": 3,
        "state-dir": str(tmp_path / "state"),
        "data-dir": str(data),
        "policy-file": operator_policy_file(tmp_path / "owner", CFG),
    }
    return Context(run_id=1, node_id=101, node_config=node_config, state=RecordDict(), run_config={})


def test_a_board_whose_state_folder_was_deleted_refuses_as_a_refusal_until_reset(tmp_path):
    context = _board(tmp_path)
    state, data = Path(context.node_config["state-dir"]), Path(context.node_config["data-dir"])
    first = client_app(train_message(CFG, 1)[0], context)
    assert not first.has_error() and (data / PARTICIPATION_FILE).exists()
    shutil.rmtree(state)
    refused = client_app(train_message(CFG, 2)[0], context)
    assert refused.has_error() and is_policy_refusal(refused.error.reason)  # the server books it as a refusal
    assert refused.error.reason.startswith(POLICY_REFUSED) and str(state) in refused.error.reason
    assert RESET_HINT in refused.error.reason and not (state / STATE_FILE).exists()  # nothing trained
    reset_device_state(data, state)
    again = client_app(train_message(CFG, 2)[0], context)
    assert not again.has_error() and again.content["metrics"]["steps"] == first.content["metrics"]["steps"]


# --- the lock --------------------------------------------------------------------------------------------------


def _spend_many(folder: str, times: int, start: Event) -> None:
    """One process of the device: ``times`` messages, each load -> +1 step -> save under the lock."""
    start.wait()
    for _ in range(times):
        with device_lock(Path(folder)):
            state = DeviceState.load(Path(folder))
            state.history = state.history.extended(1.0, 0.01, 1)
            time.sleep(0.002)  # the work between load and save, where an unlocked second process would interleave
            state.save(Path(folder), durable=False)


def test_two_processes_of_one_device_never_lose_a_spend(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_spend_many, args=(str(tmp_path), 20, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert DeviceState.load(tmp_path).history.steps == 40


def test_a_lock_held_past_the_timeout_is_a_clear_error(tmp_path):
    with device_lock(tmp_path), pytest.raises(StateBusy, match="state-dir") as err, device_lock(tmp_path, 0.05):
        pass
    assert str(tmp_path) in str(err.value)
    with device_lock(tmp_path, 0.05):  # released when the holder leaves
        assert os.path.exists(tmp_path / "privacy_state.lock")
