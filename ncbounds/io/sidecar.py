"""Sidecar metadata next to checkpoints.

A checkpoint ``X.pt`` may have ``X.json`` beside it, or its folder one ``ncbounds.json`` shared by all
checkpoints in it (the per-file sidecar wins key by key). Known keys: ``arch`` (spec string; relative
file paths resolve against the sidecar's folder), ``arch_kwargs`` (object), ``init_checkpoint`` (path,
relative to the sidecar's folder), ``data`` (data spec, relative file paths likewise), ``hparams``
(object: the checkpoint's hyperparameters).

**Hyperparameters are declared, not guessed.** With an ``hparams`` object (the folder's and the file's
merged key by key), exactly its keys are the hyperparameters (exported as ``hp.<key>``, the axes of the
granulated Kendall coefficient) and every other key is metadata (``meta.<key>``). Without one, every
other key is a hyperparameter **except** those that name a measured quantity (``test_error``,
``train_acc``, ``val_loss``, ``accuracy`` …), a time (``time``, ``*_seconds``, ``created`` …), provenance
(``git``, ``commit``, ``host``, ``path``, ``run_id`` …) or a wrapper/runtime flag (``compiled``,
``ddp``, ``device`` …) — see :data:`NOT_HYPERPARAMETER` — and objects; those are metadata. The
architecture's keyword arguments become hyperparameters ``hp.arch.<key>`` in the results table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ncbounds.errors import UsageError

KNOWN_KEYS = ("arch", "arch_kwargs", "init_checkpoint", "data", "hparams")
#: The keys that ``sidecar_hash`` covers directly; every other key is covered as ``hyperparameters``.
INPUT_KEYS = ("arch", "arch_kwargs", "init_checkpoint", "data")

_MEASURE = r"(err|error|errors|acc|accuracy|loss|nll|top1|top5|top_1|top_5|ece|auc|f1|margin|gap|generalization_gap|ppl|perplexity)"
#: Sidecar keys that are never taken for hyperparameters when no ``hparams`` object declares them.
NOT_HYPERPARAMETER = re.compile(
    rf"""^(
        (train|training|test|val|valid|validation|eval|final|best|heldout)[_.-]?{_MEASURE}s?
      | {_MEASURE}s?
      | (.*[_.-])?(time|times|timing|timings|seconds|secs|sec|duration|elapsed|runtime|wall|walltime|wall_time
                   |timestamp|date|datetime|created|updated)
      | git|git_.*|commit|sha|sha1|sha256|hash|host|hostname|node|user|path|file|filename|checkpoint|ckpt|version|versions
      | run|run_id|run_name|id|uuid|wandb.*|mlflow.*|notes?|comment|comments|description|tags?|status
      | compiled|torch_compile|ddp|dataparallel|distributed|wrapper|wrapper_key|prefix|module_prefix|format|weights_only
      | device|devices|world_size|rank|local_rank|num_gpus|gpus|amp|precision|dtype
    )$""",
    re.X | re.I,
)
FOLDER_SIDECAR = "ncbounds.json"


@dataclass
class Sidecar:
    """Merged sidecar of one checkpoint; ``base_dir`` is where relative paths resolve."""

    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    init_checkpoint: str | None = None
    data: str | None = None
    hyperparameters: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    hparams_source: str = "none"  # "hparams" (declared), "sidecar keys" (fallback) or "none"
    extra_keys: dict = field(default_factory=dict)  # every key but the input keys, as written (for identity hashes)
    base_dir: str | None = None
    sources: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # key → the sidecar file that set it

    def source_of(self, key: str) -> str:
        """The sidecar file that provided ``key`` (the per-file sidecar wins over the folder's)."""
        return self.origin.get(key) or (self.sources[-1] if self.sources else "the sidecar")


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"sidecar {path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or remove it.") from None
    if not isinstance(value, dict):
        raise UsageError(f"sidecar {path} must hold a JSON object with keys such as 'arch' and 'data'.")
    return value


def read_sidecar(checkpoint: str | Path) -> Sidecar:
    """Merge the folder's ``ncbounds.json`` and the checkpoint's own ``<stem>.json`` (later wins)."""
    ckpt = Path(checkpoint)
    merged: dict = {}
    declared: dict | None = None
    sources = []
    origin: dict[str, str] = {}
    for candidate in (ckpt.parent / FOLDER_SIDECAR, ckpt.with_suffix(".json")):
        if candidate.is_file() and candidate != ckpt:
            values = _read(candidate)
            if "hparams" in values:
                if not isinstance(values["hparams"], dict):
                    raise UsageError(f"sidecar {candidate}: 'hparams' must be a JSON object such as {{\"lr\": 0.1, \"width\": 64}}.")
                declared = {**(declared or {}), **values["hparams"]}
            merged.update(values)
            origin.update({key: str(candidate) for key in values})
            sources.append(str(candidate))
    side = Sidecar(base_dir=str(ckpt.parent), sources=sources, origin=origin)
    side.arch = merged.get("arch")
    side.arch_kwargs = dict(merged.get("arch_kwargs") or {})
    side.data = merged.get("data")
    init = merged.get("init_checkpoint")
    if init:
        side.init_checkpoint = str((ckpt.parent / init)) if not Path(init).is_absolute() else init
    side.extra_keys = {k: v for k, v in merged.items() if k not in INPUT_KEYS}
    others = {k: v for k, v in merged.items() if k not in KNOWN_KEYS}
    if declared is not None:
        side.hyperparameters, side.metadata, side.hparams_source = dict(declared), others, "hparams"
    else:
        side.hyperparameters = {k: v for k, v in others.items() if is_hyperparameter(k, v)}
        side.metadata = {k: v for k, v in others.items() if k not in side.hyperparameters}
        side.hparams_source = "sidecar keys" if others else "none"
    return side


def is_hyperparameter(key: str, value) -> bool:
    """The fallback rule (no ``hparams`` object): a scalar or list that does not name a measure, a time,
    provenance or a wrapper flag (:data:`NOT_HYPERPARAMETER`)."""
    return not isinstance(value, dict) and not NOT_HYPERPARAMETER.match(str(key))
