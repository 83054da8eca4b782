"""The bound catalogue: each bound is a pure function of a BoundContext, registered once (see ``base``).

``runner`` selects bounds by name or group, resolves their typed settings and runs them; ``replay`` holds
the per-sample statistics that only bounds need. See ``docs/architecture.md``, *Bounds*.
"""

from ncbounds.bounds.base import REGISTRY, BoundResult, Evaluation, NotApplicable, register
from ncbounds.bounds.pacbayes_certificate import pac_bayes_kl_certificate, pac_bayes_kl_certificate_per_example
from ncbounds.bounds.runner import explain, load_catalogue, resolve_bound_options, run_bounds, select_bounds

__all__ = [
    "REGISTRY", "BoundResult", "Evaluation", "NotApplicable", "explain", "load_catalogue", "pac_bayes_kl_certificate",
    "pac_bayes_kl_certificate_per_example", "register", "resolve_bound_options", "run_bounds", "select_bounds",
]
