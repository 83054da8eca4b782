"""Transfer of frozen features to target classes: transferability scores, few-shot episodes, model ranking.

Pure numpy/scipy/scikit-learn functions on arrays of target features (float64 throughout):

- :mod:`ncbounds.transfer.scores` — LogME, LEEP, NCE, H-score, and (re-exported from
  :mod:`ncbounds.transfer.separability`) GBC, SFDA and the three raw NCTI terms;
- :mod:`ncbounds.transfer.fewshot` — m-shot nearest-class-center episodes with t-intervals and a
  binomial-kl certificate, target NCC error and a linear probe with Clopper–Pearson intervals;
- :mod:`ncbounds.transfer.ranking` — Kendall τ, weighted τ, Pearson r, top-k hits and the NCTI combination
  across a set of models;
- :mod:`ncbounds.transfer.bounds` — the Galanti, György & Hutter (2022) CDNV bound on m-shot NCC error.
"""
