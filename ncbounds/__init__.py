"""ncbounds: neural-collapse statistics and generalization bounds for trained classifiers.

Python API::

    import ncbounds
    record = ncbounds.evaluate("run/epoch10.pt", arch="mlp:width=128", data="digits")
    record.test_error, record.metric("nc1", split="train")
    table = ncbounds.load_results("run/ncbounds-results")   # one row per checkpoint
"""

from ncbounds.threads import configure_wait_policy
from ncbounds.version import __version__

configure_wait_policy()  # before torch is imported: waiting OpenMP threads sleep instead of spinning


def evaluate(checkpoint=None, options=None, **kwargs):
    """Evaluate one checkpoint; see :func:`ncbounds.pipeline.evaluate`."""
    from ncbounds.pipeline import evaluate as _evaluate

    return _evaluate(checkpoint, options, **kwargs)


def load_results(path):
    """Results folder (or record file) → wide pandas DataFrame; see :func:`ncbounds.report.results.load_results`."""
    from ncbounds.report.results import load_results as _load_results

    return _load_results(path)


__all__ = ["__version__", "evaluate", "load_results"]
