"""A simulated fleet of unlike edge devices (device classes, availability, dropouts, a simulated clock).
No Flower import: ``server/fleet_grid.py`` applies it to a simulation's messages."""

from .clock import Arrival, Fleet, TrainPhase, Work, assign_classes, load_trace
from .fleet_config import DEFAULT_FLEET_FILE, DeviceClass, FleetConfig

__all__ = [
    "DEFAULT_FLEET_FILE",
    "Arrival",
    "DeviceClass",
    "Fleet",
    "FleetConfig",
    "TrainPhase",
    "Work",
    "assign_classes",
    "load_trace",
]
