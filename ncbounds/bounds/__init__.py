"""Bound catalogue (DESIGN §6). Each bound is a pure function of a BoundContext; see ``runner``."""

from ncbounds.bounds.base import REGISTRY, BoundResult, register
from ncbounds.bounds.runner import explain, load_catalogue, run_bounds, select_bounds

__all__ = ["REGISTRY", "BoundResult", "explain", "load_catalogue", "register", "run_bounds", "select_bounds"]
