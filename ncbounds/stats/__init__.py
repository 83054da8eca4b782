"""Streaming float64 sufficient statistics (the "Statistics" section of ``docs/architecture.md``)."""

from ncbounds.stats.class_stats import ClassStats
from ncbounds.stats.logit_stats import LogitStats
from ncbounds.stats.projected import ProjectedStats

__all__ = ["ClassStats", "LogitStats", "ProjectedStats"]
