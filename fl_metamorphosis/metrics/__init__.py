"""Metric rows, run-folder writers, plots and the Markdown report."""

from .plots import plot_attacks, plot_reconstruction_grid, plot_rounds, plot_training_curves
from .report import render_report
from .writer import JsonlWriter, read_jsonl, write_json, write_jsonl

__all__ = [
    "JsonlWriter",
    "plot_attacks",
    "plot_rounds",
    "plot_reconstruction_grid",
    "plot_training_curves",
    "read_jsonl",
    "render_report",
    "write_json",
    "write_jsonl",
]
