"""Causal interventions on CogVLM forward passes: ablate, steer, patch a module's activations at chosen tokens, or
knock out attention between tokens, in the prefill and/or every generation step (``Intervene``), with values from
stored lens runs or computed now (``sources``)."""

from .context import Intervene
from .edits import Ablate, Knockout, Patch, Steer
from .effects import effects
from .layout import InterventionError
from .sources import capture, load_vector, mean_difference, stored_activation, stored_mean
from .sweep import PatchingSweep, patching_sweep, render_sweep

__all__ = ["Ablate", "Intervene", "InterventionError", "Knockout", "Patch", "PatchingSweep", "Steer", "capture",
           "effects", "load_vector", "mean_difference", "patching_sweep", "render_sweep", "stored_activation",
           "stored_mean"]
