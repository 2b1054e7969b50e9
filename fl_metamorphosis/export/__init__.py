"""A trained run as ONNX files for edge boards and task owners (``metamorphosis export``)."""

from .onnx_export import export_run

__all__ = ["export_run"]
