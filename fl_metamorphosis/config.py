"""The whole experiment as one validated object.

Configuration is validated once, where it enters (a TOML file and ``--set key=value`` overrides), and
passed inside the library as typed objects. Unknown keys and out-of-range values are rejected with a
message that names the field.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .environment import cache_root
from .fleet.fleet_config import FleetConfig

Method = Literal[
    "universal",
    "adversarial",
    "nopeek",
    "metamorphosis",
    "metamorphosis_no_noise",
    "metamorphosis_no_decorrelation",
    "metamorphosis_no_crosssec",
    "metamorphosis_adversarial",
]  # the parts of each: fl_metamorphosis/methods.py


class ConfigError(ValueError):
    """A configuration a user wrote is invalid; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def model_dump(self, *, mode: str = "json", **kwargs: Any) -> dict[str, Any]:
        # JSON-safe by default (paths as text): configs are written to summaries, checkpoints and messages
        return super().model_dump(mode=mode, **kwargs)


DatasetName = Literal["digits", "synthetic", "mnist_pairs", "folder", "celeba", "utkface"]
FILE_DATASETS = ("folder", "celeba", "utkface")  # images on disk, decoded once into a cache
DEFAULT_TASKS = {"celeba": ["Male", "Smiling"], "utkface": ["age", "race"]}
# 40 megapixels: above any phone's default photo and most cameras', far below what exhausts a device's memory
# (one RGB copy of it is 120 MB); a bigger image must be downscaled or the cap raised.
MAX_IMAGE_PIXELS = 40_000_000
# Pillow's own default limit (PIL.Image.MAX_IMAGE_PIXELS, ~89.5 MP): above it Pillow itself warns when opening and,
# at twice it, refuses; capping the setting here keeps every decision about an image's size ours.
PILLOW_PIXEL_LIMIT = 89_478_485


class DataConfig(_Strict):
    """Which multi-task dataset, and how much of it (docs/data.md: the layouts on disk)."""

    name: DatasetName = Field(
        "digits",
        description="digits: embedded 8x8 digit pairs; synthetic: one generated object, tasks its attributes; "
        "mnist_pairs: MNIST-format IDX files composed side by side; folder: images + a CSV; celeba, utkface: "
        "those datasets' own layouts",
    )
    root: Path | None = Field(
        None,
        description="the dataset's folder on this machine (mnist_pairs, folder, celeba, utkface); never downloaded",
    )
    tasks: list[str] | None = Field(
        None,
        min_length=2,
        description="folder: the CSV's label columns; celeba: attribute names (default Male, Smiling); "
        "utkface: among gender, race, age (default age, race)",
    )
    train_pairs: int = Field(
        20_000,
        ge=10,
        description="training images: composed (digits, mnist_pairs, synthetic) or at most this many "
        "of the files' train split, a seeded subsample",
    )
    test_pairs: int = Field(4_000, ge=10, description="test images: composed, or at most this many of the test split")
    test_fraction: float = Field(
        0.22,
        gt=0.0,
        lt=1.0,
        description="digits: share of SOURCE digits held out; files without a split: share of "
        "images (of people, when identities are known) held out",
    )
    synthetic_tasks: list[Literal["shape", "colour", "position", "size"]] = Field(
        default_factory=lambda: ["shape", "colour"], min_length=2
    )
    synthetic_correlation: float = Field(
        0.0, ge=0.0, le=1.0, description="probability that the 2nd synthetic task copies the 1st"
    )
    image_size: int | None = Field(
        None,
        ge=8,
        le=256,
        description="image side in pixels: synthetic (default 16) and files, resized and "
        "centre-cropped (default 32); digit and MNIST items keep their own side",
    )
    colour: Literal["rgb", "grey"] = Field("rgb", description="files: decode as RGB (3 channels) or grey (1)")
    labels_file: str = Field("labels.csv", description="folder: the CSV, relative to data.root")
    file_column: str = Field("file", description="folder: the CSV column with each image's path under data.root")
    split_column: str = Field("split", description="folder: optional CSV column of train / test / val")
    identity_column: str = Field("identity", description="folder: optional CSV column of person ids")
    age_buckets: list[int] = Field(
        default_factory=lambda: [0, 18, 30, 45, 60], min_length=2, description="utkface: ascending age bucket edges"
    )
    skip_bad_files: bool = Field(
        False, description="drop unreadable images and malformed names (counted in the summary) instead of failing"
    )
    cache_dir: Path | None = Field(
        None, description="where decoded images are cached (default $XDG_CACHE_HOME or ~/.cache, /fl-metamorphosis)"
    )
    allow_paths_outside_root: bool = Field(
        False,
        description="folder, celeba, utkface: read images whose listed path leads outside data.root (celeba: "
        "outside its images folder) through '..', an absolute path or a symlink; off, such a row is refused, "
        "so a label file or folder from elsewhere cannot make a run read other files on this machine",
    )
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS,
        ge=1,
        le=PILLOW_PIXEL_LIMIT,
        description="files: an image declaring more pixels (width x height) is refused before it is decoded, "
        "so a small file that decodes to gigabytes (a decompression bomb) cannot exhaust memory",
    )

    @field_validator("root", "cache_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # absolute where the config is first read: devices and the ServerApp run in other folders
        return None if path is None else path.expanduser().absolute()

    @model_validator(mode="after")
    def _dataset_needs(self) -> DataConfig:
        if self.name in (*FILE_DATASETS, "mnist_pairs") and self.root is None:
            raise ValueError(
                f"data.root is required for data.name={self.name!r}: point it at the dataset's folder "
                "(docs/data.md lists the layout)"
            )
        if self.name == "folder" and self.tasks is None:
            raise ValueError("data.name='folder' needs data.tasks: the CSV's label columns, e.g. ['gender', 'smile']")
        if self.tasks is not None and self.name not in FILE_DATASETS:
            raise ValueError(
                f"data.tasks applies to folder, celeba and utkface; data.name={self.name!r} has fixed tasks"
                + (" (set data.synthetic_tasks)" if self.name == "synthetic" else "")
            )
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"data.tasks names a task twice: {self.tasks}")
        if any(b <= a for a, b in zip(self.age_buckets, self.age_buckets[1:], strict=False)):
            raise ValueError(f"data.age_buckets must ascend strictly, got {self.age_buckets}")
        return self

    def task_names(self) -> list[str] | None:
        """The tasks of a file dataset (the configured or the dataset's default ones)."""
        return self.tasks if self.tasks is not None else DEFAULT_TASKS.get(self.name)

    def side(self) -> int:
        """The image side: the configured one, or the dataset's default."""
        return self.image_size or (16 if self.name == "synthetic" else 32)

    def cache_folder(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        return cache_root()


class ModelConfig(_Strict):
    """Encoder, Cross-SEC and heads."""

    channels: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    groups: int = Field(4, ge=1, description="GroupNorm groups; must divide every channel count")
    feature_dim: int = Field(64, ge=2, description="channels C of the shared feature F")
    feature_map: bool = Field(False, description="keep F as a C x H x W map (True) or project it to a C-vector (False)")
    se_reduction: int = Field(4, ge=1, description="Cross-SEC bottleneck: C / se_reduction units")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature of the task competition")
    head_hidden: int = Field(64, ge=1)
    adversary_hidden: int = Field(128, ge=1, description="adversarial method: hidden units of each adversary")

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> ModelConfig:
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise ValueError(
                f"model.groups={self.groups} must divide every entry of model.channels; "
                f"{bad} are not multiples: change model.groups or model.channels"
            )
        return self


class LossConfig(_Strict):
    """Weights of the objective: sum_t CE_t + decorrelation_weight * D + input_weight * D_x."""

    decorrelation_weight: float = Field(1.0, ge=0.0)
    decorrelation_form: Literal["auto", "batch", "per_sample"] = Field(
        "auto",
        description="batch = distance correlation over the batch (not DP-safe); "
        "per_sample = attention impurity/overlap penalty (DP-safe); auto picks per_sample under DP-SGD",
    )
    input_decorrelation_weight: float = Field(0.0, ge=0.0, description="batch form only")
    per_sample_penalty: Literal["impurity", "overlap"] = Field(
        "overlap", description="impurity: every channel to ONE option (a task or none); overlap: tasks only"
    )
    adversary_weight: float = Field(0.5, ge=0.0, description="adversarial methods: weight of the adversary losses")
    adversary_objective: Literal["reverse", "entropy"] = Field(
        "reverse",
        description="reverse: gradient reversal (the encoder maximises the adversaries' losses; DeepObfuscator); "
        "entropy: the encoder pushes them towards a uniform guess (Roy and Boddeti 2019)",
    )
    nopeek_weight: float = Field(1.0, ge=0.0, description="nopeek method: weight of dCor^2(F, input)")


class DPSGDConfig(_Strict):
    """DP-SGD on the encoder + Cross-SEC (Opacus)."""

    enabled: bool = True
    target_epsilon: float | None = Field(8.0, gt=0.0)
    noise_multiplier: float | None = Field(None, gt=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    accountant: Literal["rdp", "prv"] = "rdp"
    grad_sample_mode: Literal["ghost", "hooks"] = Field(
        "ghost",
        description="how each sample's gradient norm is computed: ghost clipping (two backward passes, no "
        "per-sample gradient; privacy/ghost_clipping.py) or Opacus' hooks (every per-sample gradient formed); "
        "the same clipped sum, noise and accounting either way",
    )
    group_size: int = Field(
        16,
        ge=4,
        description="methods with a batch statistic (nopeek): pairs per clipping unit; accounted per group and "
        "converted to one pair by group privacy (privacy/group_dp_sgd.py)",
    )

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPSGDConfig:
        if self.enabled and (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "set exactly one of dp_sgd.target_epsilon and dp_sgd.noise_multiplier "
                "(the other to none) when dp_sgd.enabled is true"
            )
        return self


class FeatureDPConfig(_Strict):
    """Clip-and-noise of every released task feature."""

    enabled: bool = True
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    clip_norm: float = Field(1.0, gt=0.0, description="L2 (gaussian) or L1 (laplace) bound")
    noise_std: float = Field(0.25, gt=0.0, description="gaussian std, or laplace scale b (docs/privacy.md)")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the gaussian release")
    max_releases_per_pair: int | None = Field(
        1,
        ge=1,
        description="a device releases each of its pairs at most this often over a run (every release "
        "composes, and averaging k releases divides the noise by sqrt(k)); none: no cap (docs/privacy.md)",
    )


class ReleaseGateConfig(_Strict):
    """The device's check before it releases (``privacy/release_gate.py``): under the weights it received,
    a cross-validated probe reads each other task's label from a task's noised features on the device's
    own pairs and on public reference pairs; a task whose features read another task above the baseline by
    more than ``margin``, with ``confidence``, on either is probed again at a higher noise step, and
    withheld that round if none passes."""

    enabled: bool = Field(True, description="probe before every release; off: release whatever the weights give")
    margin: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="how far above the baseline (chance, or what the task's own label predicts) a probe may read "
        "another task before the task is withheld",
    )
    confidence: float = Field(
        0.9, gt=0.5, lt=1.0, description="one-sided confidence that the leak exceeds the margin before withholding"
    )
    probe_pairs: int = Field(2_000, ge=50, description="the device's pairs the probe uses (a secret sample)")
    folds: int = Field(4, ge=2, le=20, description="cross-validation folds (split by pair)")
    noise_copies: int = Field(
        2,
        ge=1,
        le=16,
        description="fresh-noise copies of each training-fold pair the probe learns from (the server holds many "
        "rows; more copies make the probe a closer stand-in for an attacker with many rows)",
    )
    reference: bool = Field(
        True,
        description="also probe public reference pairs released under the same weights (the dataset's test split, "
        "where the device can build it: the embedded digits and the synthetic set anywhere, files where they are on "
        "the device); a device whose own labels are skewed cannot see a leak on its own pairs alone",
    )
    noise_steps: list[float] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0],
        min_length=1,
        max_length=4,
        description="multiples of feature_dp.noise_std the gate tries in turn: a task whose features leak at one "
        "is probed again at the next, released at the first that passes, withheld if none does (a head keeps "
        "learning from noisier rows rather than none); [1.0]: withhold at once",
    )

    @field_validator("noise_steps")
    @classmethod
    def _steps_raise_the_noise(cls, steps: list[float]) -> list[float]:
        if steps[0] < 1.0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"release_gate.noise_steps={steps} must ascend strictly from at least 1.0, e.g. [1, 2, 4]")
        return steps


class RandomnessConfig(_Strict):
    """Where the devices' privacy randomness (DP-SGD noise and sampling, feature noise, released pairs) comes from."""

    source: Literal["os_entropy", "seeded"] = Field(
        "os_entropy",
        description="os_entropy: the OS CSPRNG, secret from the server; seeded: reproducible from train.seed, "
        "NOT private against the server (flagged in every summary; devices refuse it outside simulation)",
    )


class TrainConfig(_Strict):
    epochs: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0.0, description="Adam learning rate of encoder + Cross-SEC")
    head_lr: float = Field(2e-3, gt=0.0, description="Adam learning rate of the task heads")
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch threads; 0 = all cores")


class AuditConfig(_Strict):
    """The attacker: how much it sees and how hard it trains."""

    enabled: bool = Field(True, description="run the attacks (off only for timing runs: no privacy figures)")
    attacker_samples: int = Field(6_000, ge=50, description="released training features it learns on")
    eval_samples: int = Field(2_000, ge=20, description="held-out test samples it is scored on")
    probe_hidden: int = Field(256, ge=1)
    probe_max_iter: int = Field(60, ge=1)
    decoder_epochs: int = Field(30, ge=1)
    max_steps: int = Field(
        2_000,
        ge=1,
        description="cap on each learned attack's minibatch steps (fewer epochs over large attacker sets), so "
        "the audit's time does not grow with the releases; benchmarks/audit_budget.py measures the cost",
    )
    cache_dir: str | None = Field(
        None,
        description="folder for method-independent results (the label-only floor), shared by runs with the "
        "same data and attacker; `compare` sets it",
    )
    attackers: list[Literal["linear", "mlp", "knn", "boosting"]] = Field(
        default_factory=lambda: ["linear", "mlp", "knn", "boosting"],
        min_length=1,
        description="cross-task attacker families; the headline is the strongest of them",
    )
    knn_neighbors: int = Field(25, ge=1, description="k of the k-nearest-neighbours attacker")
    boosting_max_iter: int = Field(100, ge=1, description="boosting rounds of the gradient-boosting attacker")
    max_rows: int = Field(
        40_000,
        ge=100,
        description="cap on the rows the k-NN and boosting attackers learn from (a random sample); the MLP and "
        "linear probes see every row within audit.max_steps",
    )
    held_rounds: int | None = Field(
        8,
        ge=0,
        description="federated runs: feature queries whose held rows are attacked under their own round's weights "
        "(audit/round_audit.py): none = every one, k = k spread over the run and refined around the worst, 0 = off",
    )
    ssim_kernel: int = Field(7, ge=3, description="odd SSIM window; <= the image's shorter side")
    dcor_samples: int = Field(1_000, ge=20)

    @model_validator(mode="after")
    def _odd_kernel(self) -> AuditConfig:
        if self.ssim_kernel % 2 == 0:
            raise ValueError(f"audit.ssim_kernel={self.ssim_kernel} must be odd (e.g. 7)")
        return self


StrategyName = Literal[
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
]


class StrategyConfig(_Strict):
    """The server's aggregation strategy (Flower's own) and its parameters."""

    name: StrategyName = "fedavg"
    server_learning_rate: float = Field(1.0, gt=0.0, description="fedavgm")
    server_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="fedavgm")
    proximal_mu: float = Field(0.01, ge=0.0, description="fedprox: the devices add mu/2 ||w - w_global||^2")
    eta: float = Field(0.01, gt=0.0, description="fedadam/fedyogi/fedadagrad server learning rate")
    eta_l: float = Field(0.01, gt=0.0, description="fedadam/fedyogi/fedadagrad client learning rate")
    tau: float = Field(1e-3, gt=0.0, description="fedadam/fedyogi/fedadagrad adaptivity")
    beta_trim: float = Field(0.2, ge=0.0, lt=0.5, description="fedtrimmedavg: fraction cut at each end")
    num_malicious_nodes: int = Field(0, ge=0, description="krum/multikrum/bulyan: tolerated attackers")
    num_nodes_to_select: int = Field(1, ge=1, description="multikrum: updates averaged")


# Strategies whose rule reads each update (a median, a trimmed mean, distances between updates): under
# secure aggregation the server holds only the sum, so they cannot run.
NEEDS_INDIVIDUAL_UPDATES = {"fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"}


class SecAggConfig(_Strict):
    """Flower's SecAgg+ (``server/secure_aggregation.py``): its share graph and its fixed-point encoding.

    Devices send their update (trained minus received weights), not the weights: an update is small,
    so a narrow clipping range keeps the quantisation step small (2 * clipping_range / quantization_range,
    divided by the device's weight share)."""

    num_shares: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="share of the round's devices each device's key shares go to (1.0: all of them)",
    )
    reconstruction_threshold: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="share of a device's key shares needed to unmask it; more tolerates fewer dropouts and "
        "needs more colluding devices to unmask one update",
    )
    clipping_range: float = Field(
        0.5,
        gt=0.0,
        description="each update coordinate is clipped to [-c, c] before quantisation; a device counts the "
        "coordinates it clipped (the server warns: raise it)",
    )
    quantization_range: int = Field(2**22, ge=2**8, le=2**24, description="fixed-point levels per coordinate")
    max_weight: float = Field(
        10_000.0,
        gt=0.0,
        description="most training pairs a device may weigh in with: an update is scaled by pairs / max_weight "
        "before clipping, so a device with more is clipped harder (the server warns: raise it)",
    )
    timeout_s: float = Field(600.0, gt=0.0, description="how long each of the protocol's four stages waits")


class PoisoningConfig(_Strict):
    """A share of misbehaving devices, fixed for the run (``audit/poisoning.py``; simulation only)."""

    attack: Literal["none", "sign_flip", "scale", "gaussian", "label_flip", "stale"] = "none"
    share: float = Field(0.0, ge=0.0, lt=1.0, description="share of the devices that misbehave")
    sign_flip_scale: float = Field(1.0, gt=0.0, description="sign_flip: the update reversed and multiplied by it")
    boost: float = Field(10.0, gt=0.0, description="scale: the update multiplied by it")
    noise_std: float = Field(0.1, gt=0.0, description="gaussian: std of the noise sent as the update")

    def count(self, num_devices: int) -> int:
        """Misbehaving devices among ``num_devices``: the share, rounded half up."""
        return int(self.share * num_devices + 0.5) if self.attack != "none" else 0


class FederatedConfig(_Strict):
    """Devices, rounds, partitioning and per-device privacy budget of a federated run."""

    num_devices: int = Field(10, ge=1, le=100_000)
    rounds: int = Field(30, ge=1, le=10_000)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0, description="share of devices sampled per round")
    min_train_devices: int = Field(2, ge=1, description="fewer valid replies: the round is not aggregated")
    min_online_devices: int | None = Field(
        None,
        ge=1,
        description="devices that must be online before a round samples (None: all num_devices; a real fleet "
        "with devices that may stay offline should lower it, or a round waits for them)",
    )
    local_epochs: int = Field(1, ge=1)
    local_lr: float = Field(
        0.01,
        gt=0.0,
        description="devices' Adam learning rate; higher than train.lr because averaging the devices' noised "
        "updates shrinks each round's step (docs/federated.md)",
    )
    partitioning: Literal["iid", "dirichlet", "pathological", "identity"] = Field(
        "iid",
        description="identity: each device holds a few people's images (celeba's identity file, a folder's "
        "identity column), as a phone would",
    )
    dirichlet_alpha: float = Field(0.5, gt=0.0)
    classes_per_device: int = Field(2, ge=1, description="pathological: classes per device")
    partition_task: str | None = Field(
        None,
        description="dirichlet / pathological on synthetic and file datasets: the task whose labels skew the "
        "devices (default the first); digit pairs skew by the source digit",
    )
    device_epsilon_budget: float = Field(8.0, gt=0.0, description="cumulative DP-SGD epsilon a device may spend")
    feature_samples_per_device: int = Field(400, ge=1, description="released features per device per round")
    max_device_examples: int = Field(
        100_000,
        ge=1,
        description="a train reply claiming more training examples is rejected (num-examples is FedAvg's weight: "
        "one device's claim would otherwise outweigh every other update)",
    )
    head_epochs: int = Field(5, ge=0, description="server epochs over each round's released features")
    device_heads: Literal["frozen", "dp_trained"] = Field(
        "frozen",
        description="frozen: devices train encoder + Cross-SEC against the server's heads; dp_trained: devices "
        "also update the heads, under the same DP-SGD, and the server aggregates them like the encoder",
    )
    audit_every: int = Field(0, ge=0, description="audit every k rounds (0: only the final model)")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    secure_aggregation: bool = Field(
        False,
        description="the server receives only the weighted sum of the devices' updates (Flower's SecAgg+); "
        "strategies that read each update are refused",
    )
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    cpus_per_device: int = Field(1, ge=1, description="Ray CPUs per simulated device (one actor per core)")
    fleet: FleetConfig = Field(
        default_factory=FleetConfig,
        description="simulated device classes, availability, dropouts and a simulated clock (docs/fleet.md)",
    )
    poisoning: PoisoningConfig = Field(
        default_factory=PoisoningConfig,
        description="a share of poisoned or faulty devices, to measure robust strategies (docs/sweep.md)",
    )

    def sampled_per_round(self) -> int:
        """Devices sampled per round, as Flower's strategies compute it."""
        return max(int(self.num_devices * self.fraction_train), self.min_train_devices)

    def online_devices_needed(self) -> int:
        """Devices that must be online before a round samples: ``min_online_devices``, else all of them (a
        simulated fleet keeps devices offline on purpose: there, the fewest a round aggregates)."""
        if self.min_online_devices is not None:
            return self.min_online_devices
        return self.min_train_devices if self.fleet.enabled else self.num_devices

    @model_validator(mode="after")
    def _enough_devices(self) -> FederatedConfig:
        if self.min_online_devices is not None and not (
            self.min_train_devices <= self.min_online_devices <= self.num_devices
        ):
            raise ValueError(
                f"federated.min_online_devices={self.min_online_devices} must lie between "
                f"federated.min_train_devices={self.min_train_devices} and federated.num_devices={self.num_devices}"
            )
        if self.min_train_devices > self.num_devices:
            raise ValueError(
                f"federated.min_train_devices={self.min_train_devices} exceeds federated.num_devices="
                f"{self.num_devices}: lower it or add devices"
            )
        s, sampled = self.strategy, self.sampled_per_round()
        # Krum needs n > 2f + 2 updates, Bulyan n >= 4f + 3 (Blanchard et al. 2017; El Mhamdi et al. 2018).
        needs = {
            "krum": 2 * s.num_malicious_nodes + 3,
            "multikrum": 2 * s.num_malicious_nodes + 3,
            "bulyan": 4 * s.num_malicious_nodes + 3,
        }.get(s.name, 1)
        if sampled < needs:
            raise ValueError(
                f"strategy {s.name!r} with num_malicious_nodes={s.num_malicious_nodes} needs {needs} devices per "
                f"round, {sampled} are sampled: raise federated.num_devices or lower strategy.num_malicious_nodes"
            )
        if self.secure_aggregation and s.name in NEEDS_INDIVIDUAL_UPDATES:
            raise ValueError(
                f"federated.secure_aggregation=true gives the server only the sum of the updates, and strategy "
                f"{s.name!r} needs each update: choose fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad, "
                "or set federated.secure_aggregation=false"
            )
        if self.secure_aggregation and self.min_train_devices < 2:
            raise ValueError(
                "federated.secure_aggregation=true needs federated.min_train_devices >= 2 (the sum of one update "
                "is that update)"
            )
        if self.fleet.enabled and self.secure_aggregation:
            raise ValueError(
                "federated.fleet.enabled=true drops replies mid-protocol, which SecAgg+ handles in stages the fleet "
                "clock does not model: set federated.secure_aggregation=false for a fleet simulation"
            )
        if self.poisoning.attack != "none" and self.poisoning.count(self.num_devices) == 0:
            raise ValueError(
                f"federated.poisoning.attack={self.poisoning.attack!r} with share={self.poisoning.share} makes no "
                f"device of {self.num_devices} misbehave: raise federated.poisoning.share (at least "
                f"{0.5 / self.num_devices:.3g}) or set attack='none'"
            )
        if s.name == "multikrum" and s.num_nodes_to_select > sampled:
            raise ValueError(
                f"strategy.num_nodes_to_select={s.num_nodes_to_select} exceeds the {sampled} sampled devices"
            )
        return self


class TrackingConfig(_Strict):
    """Where a run's config, metrics and files are also logged (``fl_metamorphosis/tracking``); the run folder
    is written either way. Not part of the experiment: runs that differ only here are the same run."""

    backend: Literal["none", "mlflow", "tensorboard"] = Field(
        "none", description="none, mlflow, or tensorboard (event files in the run folder's tensorboard/)"
    )
    uri: str | None = Field(
        None,
        description="mlflow: the tracking URI (a team's server, http://host:5000); default a local store beside "
        "the run folder (sqlite:///<parent>/mlflow.db)",
    )
    experiment: str = Field("fl-metamorphosis", min_length=1, description="mlflow: the experiment's name")


class ExperimentConfig(_Strict):
    """One experiment. Defaults are the embedded demo."""

    name: str = "demo"
    methods: list[Method] = Field(default_factory=lambda: ["universal", "metamorphosis"], min_length=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    dp_sgd: DPSGDConfig = Field(default_factory=DPSGDConfig)
    feature_dp: FeatureDPConfig = Field(default_factory=FeatureDPConfig)
    release_gate: ReleaseGateConfig = Field(default_factory=ReleaseGateConfig)
    randomness: RandomnessConfig = Field(default_factory=RandomnessConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def experiment_dump(self) -> dict[str, Any]:
        """The config without ``tracking``: what makes two runs the same run."""
        return self.model_dump(exclude={"tracking"})

    @model_validator(mode="after")
    def _dp_safe_loss(self) -> ExperimentConfig:
        if self.dp_sgd.enabled and self.loss.decorrelation_form == "batch":
            raise ValueError(
                "loss.decorrelation_form='batch' couples the samples of a batch, which voids DP-SGD's "
                "per-sample clipping: use 'per_sample' or 'auto', or set dp_sgd.enabled=false"
            )
        if self.dp_sgd.enabled and self.loss.input_decorrelation_weight > 0:
            raise ValueError(
                "loss.input_decorrelation_weight > 0 needs a batch statistic, which voids DP-SGD: "
                "set it to 0 or set dp_sgd.enabled=false"
            )
        return self

    @model_validator(mode="after")
    def _partition_fits_data(self) -> ExperimentConfig:
        fed, data = self.federated, self.data
        if fed.partitioning == "identity" and data.name not in ("folder", "celeba"):
            raise ValueError(
                f"federated.partitioning='identity' needs people's ids (celeba's identity_CelebA.txt, a folder's "
                f"identity column); data.name={data.name!r} has none: use iid, dirichlet or pathological"
            )
        if fed.partition_task is not None:
            tasks = data.synthetic_tasks if data.name == "synthetic" else data.task_names()
            if tasks is None or fed.partition_task not in tasks:
                raise ValueError(
                    f"federated.partition_task={fed.partition_task!r} is not a task of data.name={data.name!r} "
                    f"(tasks: {tasks or 'the digit pairs skew by source digit, leave it unset'})"
                )
        return self

    def decorrelation_form(self) -> Literal["batch", "per_sample"]:
        """The form actually used: per-sample under DP-SGD, batch otherwise (unless forced)."""
        if self.loss.decorrelation_form != "auto":
            return self.loss.decorrelation_form
        return "per_sample" if self.dp_sgd.enabled else "batch"


def _parse_value(text: str) -> Any:
    """Parse an override value as TOML, so `--set train.epochs=3` gives an int; bare words stay text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text.lower() in ("none", "null"):
            return None
        return text


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value (e.g. train.epochs=3)")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = _parse_value(raw.strip())


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key: remove it or check its spelling"
        lines.append(f"  {field}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def build_config(tree: dict[str, Any] | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a config tree plus ``key=value`` overrides; raise ConfigError naming each bad field."""
    tree = dict(tree or {})
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def flatten_tree(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a config tree as its dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_tree(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def preset_overrides(path: str | Path) -> list[str]:
    """A TOML preset (e.g. ``configs/tiny.toml``) as ``key=value`` overrides, to lay over any config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"preset {str(path)!r} does not exist: pass an existing TOML file")

    return [f"{key}={json.dumps(value)}" for key, value in flatten_tree(tomllib.loads(path.read_text())).items()]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a TOML file (or the defaults when ``path`` is None) and apply overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist: pass an existing TOML file")
        try:
            tree = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    return build_config(tree, overrides)
