"""TensorBoard: event files in the run folder's ``tensorboard/``.

TensorBoard has no run ids and no nesting of its own: a run is its folder, and ``tensorboard --logdir``
on a sweep's folder shows every cell under it. The config goes in as a text summary, report.md and
summary.json as text, the plots as images. A resumed run writes a new event file in the same folder,
holding only the steps the earlier files lack.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Tracker, in_series

FOLDER = "tensorboard"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self):
        self.writer = self.folder = None

    def start(self, run_dir: Path, *, title: str, run_id: str | None, parent_id: str | None, store: Path) -> str:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(run_dir).resolve() / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.folder))
        return str(self.folder)

    def log_params(self, params: dict[str, str]) -> None:
        table = "\n".join(["| key | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in sorted(params.items()))])
        self.writer.add_text("config", table)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_file(self, path: Path) -> None:
        path = Path(path)
        if path.suffix == ".png":
            from matplotlib.image import imread

            self.writer.add_image(path.stem, imread(path)[..., :3], dataformats="HWC")
        elif path.suffix == ".json":
            self.writer.add_text(path.name, "```\n" + json.dumps(json.loads(path.read_text()), indent=1) + "\n```")
        else:
            self.writer.add_text(path.name, path.read_text())
        self.writer.flush()

    def last_step(self, prefix: str) -> int | None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(self.folder), size_guidance={"scalars": 0})
        events.Reload()
        tags = [t for t in events.Tags()["scalars"] if in_series(t, prefix)]
        return max((e.step for t in tags for e in events.Scalars(t)), default=None)

    def end(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()
