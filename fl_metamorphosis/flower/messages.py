"""The device protocol: every record name, config key and metric key, and the three replies as types.

The ClientApp builds its replies with ``to_record`` and the ServerApp reads them with ``from_record``, so
both sides share one definition. A reply carries ``PROTOCOL_VERSION``; one of another version, or with a
missing or unexpected record or field, is rejected by ``from_record`` with a ``MessageError`` naming it.

A features reply names the tasks the device's release gate withheld (``gate`` record, task -> reason;
a withheld task's record is empty) and the noise each released task carries (``noise`` record, task ->
multiple of the configured feature noise, at least 1). A device whose privacy policy refuses a request
answers with an error reply whose reason starts with ``POLICY_REFUSED`` and names each field, the value
asked and the floor.

Every value is checked too, before the server uses it (a device may lie or be broken): ``from_record``
rejects what no honest device sends (a NaN, a negative count, a sample rate outside (0, 1], an accuracy
outside [0, 1]); ``FeaturesReply.check`` what only the server knows (the feature shape, each task's
classes, the rows it asked for). A NaN noise multiplier would make the accountant loop forever.

Train replies keep the shape Flower's strategies aggregate: exactly one ArrayRecord (``arrays``) and one
MetricRecord (``metrics``, weighted by ``num-examples``); a device that declines sends a ConfigRecord
(``status``) with its reason instead of the arrays.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from ..config import ExperimentConfig
from .arrays import decode

PROTOCOL_VERSION = 2  # 2: features replies name withheld tasks

# message types (the ClientApp's handlers)
TRAIN, FEATURES, EVALUATE = "train", "query.features", "evaluate"
# record names
ARRAYS, CONFIG, METRICS, STATUS, TASK_PREFIX, GATE, NOISE = (
    "arrays",
    "config",
    "metrics",
    "status",
    "task.",
    "gate",
    "noise",
)
# how an error reply's reason starts when the device's privacy policy refused the request
POLICY_REFUSED = "refused by the device's privacy policy: "
# request config keys (``proximal-mu`` is Flower's FedProx key)
EXPERIMENT, SERVER_ROUND, PROXIMAL_MU = "experiment", "server-round", "proximal-mu"


class MessageError(ValueError):
    """A reply that does not follow the protocol; the message names the record or field."""


def is_policy_refusal(reason: str) -> bool:
    """Whether an error reply's reason is a device's policy refusal (not a crash or a lost device)."""
    return POLICY_REFUSED in reason  # Flower's runtime may wrap the reason of an exception in its type


def config_record(cfg: ExperimentConfig, **extra: int | float | str | bool) -> ConfigRecord:
    """The experiment travels with every request, so a real device needs no config file of its own."""
    return ConfigRecord({EXPERIMENT: cfg.model_dump_json(), **extra})


def experiment_from(record: ConfigRecord) -> ExperimentConfig:
    return ExperimentConfig.model_validate_json(str(record[EXPERIMENT]))


def request_digest(message_type: str, content: RecordDict) -> str:
    """SHA-256 over a request's kind and every record's bytes: equal digests, identical requests."""
    h = hashlib.sha256(message_type.encode())
    for name, record in sorted(content.array_records.items()):
        for key, array in sorted(record.items()):
            h.update(f"\0a{name}/{key}/{array.dtype}/{array.shape}\0".encode())
            h.update(array.data)
    for name, record in sorted({**content.config_records, **content.metric_records}.items()):
        for key, value in sorted(record.items()):
            h.update(f"\0c{name}/{key}={value!r}".encode())
    return h.hexdigest()


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)


def _check_fields(what: str, found: set[str], expected: set[str]) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise MessageError(
            f"{what}: missing field {missing[0]!r}" + (f" (and {len(missing) - 1} more)" * (len(missing) > 1))
        )
    if extra:
        raise MessageError(
            f"{what}: unexpected field {extra[0]!r}" + (f" (and {len(extra) - 1} more)" * (len(extra) > 1))
        )


def _require(what: str, ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise MessageError(f"{what}: field {name!r} is {value!r}, it must be {rule}")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _check_records(what: str, content: RecordDict, expected: set[str]) -> None:
    found = set(content.array_records) | set(content.metric_records) | set(content.config_records)
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise MessageError(f"{what}: missing record {missing[0]!r}")
    if extra:
        raise MessageError(f"{what}: unexpected record {extra[0]!r}")


def _metrics(what: str, content: RecordDict, expected: set[str]) -> Mapping[str, Any]:
    if METRICS not in content.metric_records:
        raise MessageError(f"{what}: missing record {METRICS!r}")
    return check_metrics(what, content.metric_records[METRICS], expected)


def check_metrics(what: str, metrics: Mapping[str, Any], expected: set[str]) -> Mapping[str, Any]:
    """The protocol version first (a mismatch explains every other difference), then the fields."""
    if "protocol" in metrics and int(metrics["protocol"]) != PROTOCOL_VERSION:
        raise MessageError(
            f"{what}: protocol version {int(metrics['protocol'])}, this side speaks {PROTOCOL_VERSION}: "
            "run the same fl-metamorphosis version on the server and the devices"
        )
    _check_fields(what, set(metrics), expected | {"protocol"})
    return metrics


@dataclass
class TrainReply:
    device: int
    num_examples: int
    train_loss: float
    epsilon: float  # cumulative, after this round (the device's own accountant)
    noise_multiplier: float
    sample_rate: float
    steps: int  # cumulative DP-SGD steps
    round_steps: int  # steps taken this round
    grouped: bool  # accounted per group of pairs (group privacy converts to one pair)
    declined: str | None = None
    weights: dict[str, np.ndarray | torch.Tensor] | None = None  # None when declined

    FIELDS = {
        "device", "num-examples", "train-loss", "epsilon", "noise-multiplier", "sample-rate", "steps",
        "round-steps", "grouped", "declined",
    }  # fmt: skip

    def to_record(self) -> RecordDict:
        metrics = MetricRecord(
            {
                "protocol": PROTOCOL_VERSION,
                "device": self.device,
                "num-examples": self.num_examples,
                "train-loss": self.train_loss,
                "epsilon": self.epsilon,
                "noise-multiplier": self.noise_multiplier,
                "sample-rate": self.sample_rate,
                "steps": self.steps,
                "round-steps": self.round_steps,
                "grouped": int(self.grouped),
                "declined": int(self.declined is not None),
            }
        )
        content = RecordDict({METRICS: metrics})
        if self.declined is not None:
            content[STATUS] = ConfigRecord({"declined": self.declined})
        else:
            content[ARRAYS] = ArrayRecord({k: Array(_numpy(v)) for k, v in (self.weights or {}).items()})
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainReply:
        m = _metrics("train reply", content, cls.FIELDS)
        declined = bool(int(m["declined"]))
        _check_records("train reply", content, {METRICS, STATUS if declined else ARRAYS})
        return cls.from_metrics(
            m,
            declined=str(content[STATUS]["declined"]) if declined else None,
            weights=None if declined else {k: decode(v) for k, v in content[ARRAYS].items()},
        )

    @classmethod
    def from_metrics(
        cls, m: Mapping[str, Any], *, declined: str | None, weights: dict[str, np.ndarray] | None
    ) -> TrainReply:
        """From metrics already checked against ``FIELDS``."""
        return cls(
            device=int(m["device"]),
            num_examples=int(m["num-examples"]),
            train_loss=float(m["train-loss"]),
            epsilon=float(m["epsilon"]),
            noise_multiplier=float(m["noise-multiplier"]),
            sample_rate=float(m["sample-rate"]),
            steps=int(m["steps"]),
            round_steps=int(m["round-steps"]),
            grouped=bool(int(m["grouped"])),
            declined=declined,
            weights=weights,
        ).check()

    def check(self) -> TrainReply:
        """Values no honest device sends: they would hang the accountant or skew the ledger and FedAvg."""
        what = "train reply"
        _require(what, self.device >= 0, "device", self.device, "at least 0")
        _require(what, self.num_examples >= 0, "num-examples", self.num_examples, "at least 0")
        _require(what, _finite(self.train_loss), "train-loss", self.train_loss, "finite")
        _require(what, self.epsilon >= 0, "epsilon", self.epsilon, "at least 0 (infinite without DP-SGD), not NaN")
        _require(what, _finite(self.noise_multiplier) and self.noise_multiplier >= 0, "noise-multiplier",
                 self.noise_multiplier, "finite and at least 0")  # fmt: skip
        _require(what, 0 < self.sample_rate <= 1, "sample-rate", self.sample_rate, "in (0, 1]")
        _require(what, self.steps >= 0, "steps", self.steps, "at least 0")
        _require(what, 0 <= self.round_steps <= self.steps, "round-steps", self.round_steps,
                 f"in [0, steps={self.steps}]")  # fmt: skip
        return self


@dataclass
class FeaturesReply:
    device: int
    releases_max: int  # the most any one of the device's pairs has been released, this reply included
    releases_total: int
    tasks: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> (features, labels)
    withheld: dict[str, str] = field(default_factory=dict)  # task -> the release gate's reason (its record is empty)
    noise: dict[str, float] = field(default_factory=dict)  # released task -> its noise, times feature_dp.noise_std

    FIELDS = {"device", "num-examples", "releases-max", "releases-total"}

    @property
    def num_examples(self) -> int:
        """Rows of each released task (withheld tasks have none)."""
        return max((len(f) for f, _ in self.tasks.values()), default=0)

    def to_record(self) -> RecordDict:
        metrics = {
            "protocol": PROTOCOL_VERSION,
            "device": self.device,
            "num-examples": self.num_examples,
            "releases-max": self.releases_max,
            "releases-total": self.releases_total,
        }
        content = RecordDict(
            {
                METRICS: MetricRecord(metrics),
                GATE: ConfigRecord(dict(self.withheld)),
                NOISE: ConfigRecord({t: float(m) for t, m in self.noise.items()}),
            }
        )
        for name, (features, labels) in self.tasks.items():
            content[TASK_PREFIX + name] = ArrayRecord(
                {"features": Array(_numpy(features)), "labels": Array(_numpy(labels))}
            )
        return content

    @classmethod
    def from_record(cls, content: RecordDict, task_names: list[str]) -> FeaturesReply:
        m = _metrics("features reply", content, cls.FIELDS)
        _check_records("features reply", content, {METRICS, GATE, NOISE, *(TASK_PREFIX + t for t in task_names)})
        withheld = {str(k): str(v) for k, v in content[GATE].items()}
        noise = {str(k): float(v) for k, v in content[NOISE].items()}
        for record, names in ((GATE, withheld), (NOISE, noise)):
            unknown = sorted(set(names) - set(task_names))
            if unknown:
                raise MessageError(f"features reply, record {record!r}: unknown task {unknown[0]!r}")
        if any(not m >= 1.0 for m in noise.values()):  # also NaN
            raise MessageError(f"features reply, record {NOISE!r}: a noise multiple below 1: {noise}")
        tasks = {}
        for name in task_names:
            record = content[TASK_PREFIX + name]
            _check_fields(f"features reply, record {TASK_PREFIX + name!r}", set(record), {"features", "labels"})
            features = torch.from_numpy(decode(record["features"]))
            labels = torch.from_numpy(decode(record["labels"]))
            rows = 0 if name in withheld else int(m["num-examples"])
            if len(features) != rows or len(labels) != len(features):
                raise MessageError(
                    f"features reply, record {TASK_PREFIX + name!r}: {len(features)} features and {len(labels)} "
                    f"labels, expected {rows}" + (" (withheld by the release gate)" if name in withheld else "")
                )
            tasks[name] = (features, labels)
        reply = cls(int(m["device"]), int(m["releases-max"]), int(m["releases-total"]), tasks, withheld, noise)
        what = "features reply"
        _require(what, reply.device >= 0, "device", reply.device, "at least 0")
        _require(what, reply.releases_max >= 0, "releases-max", reply.releases_max, "at least 0")
        _require(what, reply.releases_total >= reply.releases_max, "releases-total", reply.releases_total,
                 f"at least releases-max={reply.releases_max}")  # fmt: skip
        return reply

    def check(self, expected: ReleaseShape) -> FeaturesReply:
        """Against what the server asked for and its own model: rows, feature shape and dtype, finite values,
        labels in each task's range. Head training would crash, or silently turn non-finite, on any of them."""
        for name, (features, labels) in self.tasks.items():
            what = f"features reply, record {TASK_PREFIX + name!r}"
            rows = len(features)
            _require(what, rows <= expected.max_rows, "rows", rows, f"at most the {expected.max_rows} asked for")
            shape = tuple(features.shape[1:])
            _require(what, shape == expected.feature_shape, "features.shape", shape,
                     f"{expected.feature_shape} per row (the server's model)")  # fmt: skip
            _require(what, features.dtype == torch.float32, "features.dtype", str(features.dtype), "float32")
            _require(what, bool(torch.isfinite(features).all()), "features", "non-finite values", "finite")
            _require(what, labels.dim() == 1 and not labels.is_floating_point(), "labels",
                     f"{labels.dtype} of shape {tuple(labels.shape)}", "one integer label per row")  # fmt: skip
            classes = expected.num_classes[name]
            ok = rows == 0 or (int(labels.min()) >= 0 and int(labels.max()) < classes)
            _require(what, ok, "labels", "out of range", f"in [0, {classes})")
        return self


@dataclass(frozen=True)
class ReleaseShape:
    """What a features reply must fit, from the server's own model and request."""

    feature_shape: tuple[int, ...]
    num_classes: dict[str, int]  # task -> classes
    max_rows: int  # rows asked of one device (federated.feature_samples_per_device)


@dataclass
class EvaluateReply:
    device: int
    num_examples: int
    accuracy: dict[str, float]  # task -> accuracy on the device's local test pairs

    def to_record(self) -> RecordDict:
        metrics = {f"accuracy.{t}": a for t, a in self.accuracy.items()}
        metrics.update({"protocol": PROTOCOL_VERSION, "device": self.device, "num-examples": self.num_examples})
        return RecordDict({METRICS: MetricRecord(metrics)})

    @classmethod
    def from_record(cls, content: RecordDict, task_names: list[str]) -> EvaluateReply:
        expected = {"device", "num-examples", *(f"accuracy.{t}" for t in task_names)}
        m = _metrics("evaluate reply", content, expected)
        _check_records("evaluate reply", content, {METRICS})
        reply = cls(int(m["device"]), int(m["num-examples"]), {t: float(m[f"accuracy.{t}"]) for t in task_names})
        what = "evaluate reply"
        _require(what, reply.device >= 0, "device", reply.device, "at least 0")
        _require(what, reply.num_examples >= 0, "num-examples", reply.num_examples, "at least 0")
        for task, accuracy in reply.accuracy.items():
            _require(what, 0 <= accuracy <= 1, f"accuracy.{task}", accuracy, "in [0, 1]")
        return reply


def to_payload(content: RecordDict) -> dict[str, Any]:
    """A reply as plain values, its arrays as their serialized bytes (what a device keeps on disk to send
    the same reply again, byte for byte)."""
    return {
        "arrays": {
            n: {k: {"dtype": v.dtype, "shape": list(v.shape), "stype": v.stype, "data": v.data} for k, v in r.items()}
            for n, r in content.array_records.items()
        },
        "metrics": {n: dict(r) for n, r in content.metric_records.items()},
        "configs": {n: dict(r) for n, r in content.config_records.items()},
    }


def from_payload(payload: dict[str, Any]) -> RecordDict:
    content = RecordDict()
    for name, arrays in payload["arrays"].items():
        content[name] = ArrayRecord({k: Array(**{**v, "shape": tuple(v["shape"])}) for k, v in arrays.items()})
    for name, metrics in payload["metrics"].items():
        content[name] = MetricRecord(metrics)
    for name, configs in payload["configs"].items():
        content[name] = ConfigRecord(configs)
    return content
