"""Conversions between the library's objects and Flower records (the only Flower types it touches)."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, RecordDict

from ..config import ExperimentConfig

EXPERIMENT_KEY = "experiment"


def config_record(cfg: ExperimentConfig, **extra: int | float | str | bool) -> ConfigRecord:
    """The experiment travels with every message, so a real device needs no config file of its own."""
    return ConfigRecord({EXPERIMENT_KEY: cfg.model_dump_json(), **extra})


def experiment_from(record: ConfigRecord) -> ExperimentConfig:
    return ExperimentConfig.model_validate_json(str(record[EXPERIMENT_KEY]))


def load_json(state: RecordDict, name: str, key: str, default):
    """A JSON value a ClientApp keeps in ``context.state`` between rounds."""
    if name not in state.config_records:
        return default
    return json.loads(str(state.config_records[name][key]))
