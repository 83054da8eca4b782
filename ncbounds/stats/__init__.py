"""Streaming float64 sufficient statistics (DESIGN §4)."""

from ncbounds.stats.class_stats import ClassStats, choose_scatter_mode
from ncbounds.stats.logit_stats import LogitStats

__all__ = ["ClassStats", "LogitStats", "choose_scatter_mode"]
