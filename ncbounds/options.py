"""The options of one evaluation: one typed schema, from which everything else is derived.

:class:`EvalOptions` is the single definition of every evaluation option — its type, default, help
text, command-line flag and whether it is part of a record's identity. From it come:

* the Python API keywords (``ncbounds.evaluate(ckpt, layers="all", delta=0.01)``);
* the click options of ``report`` and ``batch`` (``cli/options.py`` builds them from the field
  metadata, so a new option is one field here);
* the record's ``options`` object (:meth:`EvalOptions.to_record`);
* the ``--resume`` / ``merge`` identity (:meth:`EvalOptions.identity`): the options that can change
  the numbers; those that cannot (device, batch size, trust flags, progress) are left out;
* validation (:meth:`EvalOptions.validate`): one sentence per bad value, naming both the API keyword
  and the flag.

Defaults shared with the bounds (δ, Monte-Carlo draws) are defined once in
:mod:`ncbounds.bounds.context`. Per-bound settings are typed fields of each bound's own options class
(``--bound-option NAME.KEY=VALUE``, see :func:`ncbounds.bounds.runner.resolve_bound_options`); here
they are kept as given (``bound_options``) so they can be recorded and hashed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncbounds.bounds.context import DEFAULT_DELTA, DEFAULT_MC_SAMPLES
from ncbounds.bounds.pacbayes_opt_config import PAC_BAYES_OPT_GROUP
from ncbounds.errors import UsageError

__all__ = ["EvalOptions", "option_fields"]

#: Metadata keys of an option field: ``flag`` (the command-line flag, None: no flag), ``help``,
#: ``identity`` (part of the record identity), ``record`` (written into the record), ``kind`` (how the
#: command line parses it: value, flag, json, shots, bound_options), ``choices``, ``since`` (a field added
#: after 0.1 enters the identity only when it differs from its default, so records of 0.1 stay current).


def _opt(default: Any = None, *, flag: str | None, help: str, identity: bool = True, record: bool = True,
         kind: str = "value", choices: tuple[str, ...] | None = None, since: str | None = None, factory: Any = None):
    meta = {"flag": flag, "help": help, "identity": identity, "record": record, "kind": kind, "choices": choices, "since": since}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EvalOptions:
    """Options of one evaluation (see the module docstring; each field's help is its documentation)."""

    arch: str | None = _opt(flag="--arch", help="Architecture spec: mlp:width=512, resnet18-cifar, file.py:Class, pkg.mod:factory.")
    arch_kwargs: dict = _opt(flag="--arch-kwargs", kind="json", factory=dict, help="JSON object of architecture keyword arguments.")
    data: str | None = _opt(flag="--data",
                            help="Data spec: digits, mnist1d, gaussian-etf:K=10,d=64, npz:FILE, cifar10:ROOT, features:FILE.")
    layers: str | None = _opt(flag="--layers",
                              help="Extra layers to measure: NAME,NAME or 'all' (the penultimate layer is always measured).")
    device: str = _opt("auto", flag="--device", identity=False, help="auto | cpu | cuda[:N].")
    batch_size: int = _opt(256, flag="--batch-size", identity=False, help="Samples per forward pass.")
    conv_reduce: str = _opt("avg", flag="--conv-reduce", choices=("avg", "flatten"), help="Reduction of conv feature maps.")
    convention: str = _opt("canonical", flag="--convention", help="Metric convention (see `ncbounds conventions`).")
    trust_checkpoint: bool = _opt(False, flag="--trust-checkpoint", kind="flag", identity=False,
                                  help="Allow arbitrary unpickling (only for checkpoints from a trusted source).")
    trust_code: bool = _opt(False, flag="--trust-code", kind="flag", identity=False,
                            help="Let sidecars name Python files / import paths as architectures and paths outside their folder "
                                 "(only for folders you trust).")
    effective_depth_epsilon: float = _opt(0.01, flag="--effective-depth-epsilon",
                                          help="ε of the effective depth: first layer whose NCC training error is ≤ ε.")
    seed: int = _opt(0, flag="--seed", help="Seed of every random draw (Monte Carlo, bounds).")
    bounds: str = _opt("default", flag="--bounds",
                       help="Bounds: default (all but Monte-Carlo ones), all, none, certificates, predictors, a group or NAME,NAME.")
    delta: float = _opt(DEFAULT_DELTA, flag="--delta", help="Failure probability of each certificate.")
    init: str | None = _opt(flag="--init", help="Checkpoint at initialization (prior centre / distance-to-init terms).")
    mc_samples: int = _opt(DEFAULT_MC_SAMPLES, flag="--mc-samples", help="Monte-Carlo weight draws for PAC-Bayes.")
    shots: tuple[int, ...] | None = _opt(flag="--shots", kind="shots",
                                         help="m values for the m-shot transfer bounds, e.g. 1,5,10 (default: training samples per class).")
    amp: bool = _opt(False, flag="--amp", kind="flag", help="Run the forward pass under mixed precision (statistics stay float64).")
    bound_options: dict = _opt(flag="--bound-option", kind="bound_options", factory=dict, since="0.2",
                               help="A bound's own setting, NAME.KEY=VALUE (NAME a bound or a group; repeatable); "
                                    "`ncbounds list-bounds --explain NAME` lists them.")
    minority: str | None = _opt(flag="--minority", since="0.2",
                                help="Minority classes of the minority-collapse metrics: auto (the default: classes whose training count "
                                     "is below √(n_max·n_min)) or a list such as 0,3-5.")
    ml_decision: str = _opt("sigmoid", flag="--ml-decision", choices=("sigmoid", "top-m"), since="0.2",
                            help="Decision rule of multi-label errors: sigmoid (label k when its logit > 0) or top-m (the m largest "
                                 "logits, m the true number of labels, as Li et al. 2024 evaluate).")
    threads: int | None = _opt(flag="--threads", identity=False, since="0.2",
                               help="Torch threads per evaluation (default: the cores this process may use, divided among --jobs).")
    target_data: str | None = _opt(flag="--target-data", since="0.2",
                                   help="Transfer target: a data spec of new classes or another dataset of the same input shape "
                                        "(e.g. digits:classes=5-9); adds one pass per target split and the record's transfer object.")
    prior: str | None = _opt(flag="--prior", since="0.2",
                             help="Prior of the optimised PAC-Bayes certificates (group pac-bayes-opt): init (data-free, centred at "
                                  "the init checkpoint; the default when one is known), learn[:fraction=0.5,epochs=100,lr=0.02,seed=S] "
                                  "(a prior network trained on a seeded part of the training split; the certificate uses the rest) "
                                  "or a checkpoint file CKPT with --prior-samples.")
    prior_samples: str | None = _opt(flag="--prior-samples", since="0.2",
                                     help="For --prior CKPT: a file of the training-split indices that prior was trained on (.npy, "
                                          ".json list, or integers in text); the certificate uses the other samples.")
    pb_steps: int | None = _opt(flag="--pb-steps", since="0.2",
                                help="Adam steps of the optimised PAC-Bayes posterior (default 8000).")
    pb_time: float | None = _opt(flag="--pb-time", since="0.2",
                                 help="Wall-clock cap in seconds on that optimisation (stops early; the certificate stays valid, "
                                      "but the number then depends on the machine's speed and load).")
    progress: bool = _opt(False, flag=None, identity=False, record=False, help="Draw progress bars on stderr.")
    debug: bool = _opt(False, flag=None, identity=False, record=False, help="Let exceptions through (tracebacks).")

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Check every value before any work; returns the bound names ``bounds`` selects.

        Raises :class:`UsageError` with one sentence naming the keyword and the flag."""
        from ncbounds.bounds.runner import resolve_bound_options, select_bounds
        from ncbounds.metrics.conventions import get_convention

        def bad(name: str, what: str) -> UsageError:
            flag = _FIELDS[name].metadata["flag"]
            return UsageError(f"{name}{f' ({flag})' if flag else ''} {what}")

        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise bad("batch_size", f"must be a positive integer, got {self.batch_size}.")
        if not 0 < self.delta < 1:
            raise bad("delta", f"must lie strictly between 0 and 1, got {self.delta}.")
        if not isinstance(self.mc_samples, int) or self.mc_samples < 1:
            raise bad("mc_samples", f"must be a positive integer, got {self.mc_samples}.")
        if not 0 <= self.effective_depth_epsilon <= 1:
            raise bad("effective_depth_epsilon", f"must lie in [0, 1], got {self.effective_depth_epsilon}.")
        if not (self.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", str(self.device))):
            raise bad("device", f"must be auto, cpu or cuda[:N], not {self.device!r}.")
        if self.conv_reduce not in ("avg", "flatten"):
            raise bad("conv_reduce", f"must be 'avg' or 'flatten', not {self.conv_reduce!r}.")
        if self.shots is not None and (not self.shots or any(not isinstance(m, int) or m < 1 for m in self.shots)):
            raise bad("shots", f"must be positive integers such as 1,5,10, not {self.shots!r}.")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1):
            raise bad("threads", f"must be a positive integer, got {self.threads}.")
        if not isinstance(self.arch_kwargs, dict):
            raise bad("arch_kwargs", "must be a dict (a JSON object on the command line).")
        get_convention(self.convention)
        if self.minority not in (None, "auto"):
            from ncbounds.io.datasets.selection import parse_classes

            try:
                parse_classes(self.minority, "--minority")
            except UsageError:
                raise bad("minority", f"must list class indices such as 0,3-5, not {self.minority!r}.") from None
        if self.ml_decision not in ("sigmoid", "top-m"):
            raise bad("ml_decision", f"must be 'sigmoid' or 'top-m', not {self.ml_decision!r}.")
        if self.target_data is not None and (not isinstance(self.target_data, str) or not self.target_data.strip()):
            raise bad("target_data", f"must be a data spec such as digits:classes=5-9, not {self.target_data!r}.")
        from ncbounds.bounds.targets import target_selection

        selected = target_selection(self.bounds, select_bounds(self.bounds), self.target_data is not None)
        shorthand = self.pac_bayes_opt_settings()
        if shorthand and not any(n in selected for n in _pac_bayes_opt_bounds()):
            raise UsageError("--prior, --prior-samples, --pb-steps and --pb-time set the optimised PAC-Bayes certificates, "
                             f"which --bounds {self.bounds} does not select; add --bounds certificates or pac-bayes-opt.")
        resolve_bound_options(self.bound_settings(), selected)
        return selected

    def pac_bayes_opt_settings(self) -> dict[str, Any]:
        """The ``pac-bayes-opt`` settings given by the shorthands --prior, --prior-samples, --pb-steps, --pb-time.

        ``init`` / ``auto`` → ``prior``; ``learn[:k=v,…]`` → ``prior=learn`` and ``prior_<k>`` for k in
        fraction, epochs, lr, momentum, batch_size, seed; a checkpoint file → ``prior=given`` with
        ``prior_indices`` read from ``prior_samples`` (the engine loads the prior's weights)."""
        from ncbounds.io.indices import read_indices
        from ncbounds.io.kv import parse_kv

        out: dict[str, Any] = {}
        prior = self.prior
        if prior is not None:
            kind, _, rest = str(prior).partition(":")
            if kind in ("init", "auto") and not rest:
                out["prior"] = kind
            elif kind == "learn":
                out["prior"] = "learn"
                for key, value in parse_kv(rest).items():
                    if key not in _LEARN_KEYS:
                        raise UsageError(f"--prior learn:{key}=… is not a setting; learn takes {', '.join(_LEARN_KEYS)}.")
                    out[f"prior_{key}"] = value
            elif Path(prior).is_file():
                if self.prior_samples is None:
                    raise UsageError(f"--prior {prior} needs --prior-samples FILE, the training indices that prior was trained on "
                                     "(an empty file if it saw no training sample).")
                out.update(prior="given", prior_indices=read_indices(self.prior_samples))
            else:
                raise UsageError(f"--prior must be init, learn[:fraction=F,…] or an existing checkpoint file; "
                                 f"{prior!r} is none of them.")
        if self.prior_samples is not None and out.get("prior") != "given":
            raise UsageError("--prior-samples goes with --prior CKPT (a prior you trained); "
                             "init and learn priors choose their own samples.")
        if self.pb_steps is not None:
            out["steps"] = self.pb_steps
        if self.pb_time is not None:
            out["time_budget_s"] = self.pb_time
        return out

    def bound_settings(self) -> dict[str, dict[str, Any]]:
        """``bound_options`` with the :meth:`pac_bayes_opt_settings` shorthands merged into the
        ``pac-bayes-opt`` group entry (a shorthand and a ``--bound-option pac-bayes-opt.KEY`` that
        disagree are a UsageError)."""
        shorthand = self.pac_bayes_opt_settings()
        settings = {k: dict(v) for k, v in (self.bound_options or {}).items()}
        if not shorthand:
            return settings
        group = settings.setdefault(PAC_BAYES_OPT_GROUP, {})
        for key, value in shorthand.items():
            if key in group and group[key] != value:
                raise UsageError(f"--bound-option {PAC_BAYES_OPT_GROUP}.{key}={group[key]!r} disagrees with the value {value!r} "
                                 "that --prior/--pb-steps/--pb-time give; give it once.")
            group[key] = value
        return settings

    def identity(self, bound_names: list[str]) -> dict[str, Any]:
        """The options that decide the numbers, as a JSON-ready dict (hashed into the record identity).

        ``bounds`` is replaced by the sorted names it selects (so a catalogue that grows makes
        ``default`` records stale); fields marked ``since`` enter only when not at their default."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.metadata["identity"]:
                continue
            value = getattr(self, f.name)
            if f.metadata["since"] and value == _default(f):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["bounds"] = sorted(bound_names)
        return out

    def to_record(self) -> dict[str, Any]:
        """The ``options`` object of a record (every field but progress and debug)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["record"]}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


_FIELDS = {f.name: f for f in dataclasses.fields(EvalOptions)}

#: Keys of ``--prior learn:KEY=VALUE`` (each sets the config field ``prior_KEY``).
_LEARN_KEYS = ("fraction", "epochs", "lr", "momentum", "batch_size", "seed")


def _pac_bayes_opt_bounds() -> list[str]:
    from ncbounds.bounds.runner import load_catalogue

    return [n for n, s in load_catalogue().items() if s.group == PAC_BAYES_OPT_GROUP]


def option_fields() -> list[dataclasses.Field]:
    """The fields of :class:`EvalOptions` in declaration order (``cli/options.py`` turns them into flags)."""
    return list(dataclasses.fields(EvalOptions))
