"""Per-sample statistics that only bounds need, collected in the replay after each split's pass.

Each module holds one accumulator (``update(features, labels)``, ``merge``, ``state``: the
:class:`ncbounds.stats.accumulator.Accumulator` protocol) and the :class:`~ncbounds.bounds.base.ReplayRequest`
that a bound names in ``register(needs=...)``:

- :mod:`.moments` — per-class moments up to order four around the split's means (``luthra_new``);
- :mod:`.decision_axes` — spreads of held-out features along the deployed head's and the NCC's decision
  axes (the sample-split certificates);
- :mod:`.pair_moments` — per-class covariances, third- and fourth-moment terms (``nc_cantelli``,
  ``gaussian_ncc``).
"""
