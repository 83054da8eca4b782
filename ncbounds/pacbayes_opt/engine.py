"""Optimise a Gaussian posterior around a trained network and certify it (orchestration level).

:func:`optimise_pac_bayes` runs the whole procedure for one network:

1. choose the prior N(w₀, λI) and the certificate samples (:mod:`ncbounds.pacbayes_opt.prior`);
2. start Q = N(μ, diag s²) at the checkpoint (or the prior) and minimise a PAC-Bayes objective
   (:mod:`ncbounds.pacbayes_opt.objectives`) with Adam, λ profiled out in closed form
   (λ* = (‖μ − w₀‖² + Σs²)/P minimises the KL; Dziugaite & Roy 2017 learn it by gradient descent,
   which converges to the same point), for a fixed number of steps (and an optional wall-clock cap);
3. evaluate the final Q only: fresh Monte-Carlo draws (a generator stream never used in training)
   on the n certificate samples, the KL in float64, the prior variance snapped to the grid
   λ_j = c·exp(−j/b) (the best j; every j is paid by the union bound), and the certificate of
   :mod:`ncbounds.bounds.pacbayes_certificate`. Nothing measured during the optimisation enters the
   certificate, so the optimisation cannot invalidate it;
4. for the deployed network f (the checkpoint), add an upper confidence bound on the disagreement
   P(f(x) ≠ g(x)), g ~ Q, measured on unlabeled inputs independent of training (the test inputs;
   their labels are never given to this module), with its own share of δ.

:class:`PacBayesOptEngine` binds a model and its data once and memoises runs by (config, δ, seed),
so the Gibbs and the deployed-network bounds share one optimisation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ncbounds.bounds.pacbayes_certificate import (
    best_lambda_on_grid,
    deterministic_certificate,
    lambda_grid_index,
    lambda_union_cost,
    mc_upper_full_pass,
    mc_upper_per_example,
    pac_bayes_kl_certificate,
    pac_bayes_kl_certificate_per_example,
)
from ncbounds.bounds.pacbayes_opt_config import PacBayesOptConfig
from ncbounds.errors import StatisticsError, UsageError
from ncbounds.io.datasets import Split
from ncbounds.pacbayes_opt.objectives import bounded_cross_entropy, objective_value
from ncbounds.pacbayes_opt.posterior import GaussianPosterior, working_copy
from ncbounds.pacbayes_opt.prior import resolve_prior
from ncbounds.pacbayes_opt.result import DEVICE_CACHE_BYTES, PacBayesOptResult, as_tensors, count_wrong, predictions

__all__ = ["PacBayesOptEngine", "PacBayesOptResult", "optimise_pac_bayes"]

#: On CPU, models with at most this many parameters run on one intra-op thread (as the Gibbs oracle).
SINGLE_THREAD_MAX_PARAMS = 200_000

_STREAM_TRAIN, _STREAM_BATCHES, _STREAM_GIBBS, _STREAM_DISAGREE = 1, 2, 3, 4


def _sub_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _initial_sigma(config: PacBayesOptConfig, mean: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    kind, value = config.sigma_rule()
    if kind == "absolute":
        return {n: torch.full_like(t, value) for n, t in mean.items()}
    # relative: s = F·|w|, floored at F·(RMS of the tensor)·1e-2 so zero weights get a usable start
    out = {}
    for n, t in mean.items():
        rms = float(t.detach().double().pow(2).mean().sqrt()) if t.numel() else 0.0
        floor = value * max(rms * 1e-2, 1e-6)
        out[n] = (value * t.detach().abs()).clamp_min(floor)
    return out


def _thread_policy(num_params: int, device: torch.device) -> int | None:
    if device.type == "cpu" and num_params <= SINGLE_THREAD_MAX_PARAMS:
        return 1
    return None


# ------------------------------------------------------------------------------------------------
# the procedure
# ------------------------------------------------------------------------------------------------


def optimise_pac_bayes(model: torch.nn.Module, train: Split, config: PacBayesOptConfig | None = None, delta: float = 0.05,
                       *, init_state: Mapping[str, torch.Tensor] | None = None,
                       prior_state: Mapping[str, torch.Tensor] | None = None,
                       unlabeled: Mapping[str, np.ndarray] | np.ndarray | None = None,
                       device: torch.device | str | None = None, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> PacBayesOptResult:
    """Optimise Q around ``model`` on ``train`` and return the certificates (see the module docstring).

    ``model`` is never modified (private copies are used). ``train``: the labelled training split.
    ``init_state``: initialization weights (state_dict names); ``prior_state``: the prior for
    ``prior="given"``. ``unlabeled``: input arrays WITHOUT labels for the deployed-network bound, a
    mapping of pool name → inputs (``config.unlabeled`` picks one) or one array. ``delta``: the level
    of each certificate. ``seed``: used when ``config.seed`` is None.
    """
    if not 0.0 < float(delta) < 1.0:
        raise UsageError(f"delta must lie strictly between 0 and 1; got {delta!r}.")
    config = (config or PacBayesOptConfig()).resolved(seed)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)

    num_params = sum(p.numel() for p in model.parameters())
    threads = _thread_policy(num_params, device)
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        return _run(model, train, config, float(delta), init_state, prior_state, unlabeled, device, t_start, say)
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _run(model, train, config, delta, init_state, prior_state, unlabeled, device, t_start, say) -> PacBayesOptResult:
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    x_all = torch.as_tensor(np.ascontiguousarray(train.x))
    if x_all.is_floating_point():
        x_all = x_all.to(dtype)
    y_all = torch.as_tensor(np.asarray(train.y), dtype=torch.int64)
    if x_all.numel() * x_all.element_size() <= DEVICE_CACHE_BYTES:
        x_dev, y_dev = x_all.to(device), y_all.to(device)
    else:
        x_dev, y_dev = x_all, y_all.to(device)
    n_train = int(y_all.shape[0])

    # 1. prior and certificate samples ----------------------------------------------------------
    t0 = time.perf_counter()
    prior = resolve_prior(model, x_all, y_all, config, init_state, prior_state, device)
    cert_idx = torch.as_tensor(prior.certificate_indices, device=device)
    n = int(prior.certificate_indices.size)
    if n < 8:
        raise UsageError(f"only {n} training samples are left for the certificate; Maurer's bound needs at least 8.")
    t_prior = time.perf_counter() - t0
    say(f"prior: {prior.kind}, {prior.info['prior_samples']} prior samples, n = {n} certificate samples ({t_prior:.1f} s)")

    # 2. posterior -----------------------------------------------------------------------------
    base = working_copy(model, device)
    posterior_init = config.posterior_init
    if posterior_init == "auto":
        posterior_init = "checkpoint" if prior.kind == "init" else "prior"
    start_mean = ({k: v.clone() for k, v in prior.centre.items()} if posterior_init == "prior"
                  else {k: v.detach().clone() for k, v in base.named_parameters() if k in prior.centre})
    prior.info["posterior_init"] = posterior_init
    post = GaussianPosterior(base, _initial_sigma(config, start_mean), start_mean, device)
    post.conv_training = config.conv_noise
    post.examples_per_draw = config.examples_per_draw
    P = post.num_parameters
    mc_mode = config.mc_mode
    if mc_mode == "auto":
        mc_mode = "per-example" if post.per_example_exact else "full-pass"
    elif mc_mode == "per-example" and not post.per_example_exact:
        raise UsageError("mc_mode=per-example needs exact per-example draws, which this architecture does not allow "
                         f"(parameters outside Linear/Conv/normalisation layers: {', '.join(post.other[:5])}); use full-pass.")

    delta_mc = config.mc_delta_fraction * delta
    delta_pb = delta - delta_mc
    train_rows = (torch.arange(n_train, device=device) if config.train_on == "all" else cert_idx)
    n_rows = int(train_rows.numel())
    gen = torch.Generator(device=device).manual_seed(_sub_seed(config.seed, _STREAM_TRAIN))
    batch_gen = torch.Generator(device="cpu").manual_seed(_sub_seed(config.seed, _STREAM_BATCHES))
    opt = torch.optim.Adam([{"params": post.mean_tensors, "lr": config.lr_mean},
                            {"params": post.log_sigma_tensors, "lr": config.lr_sigma}])
    schedule = None
    if config.lr_schedule == "cosine" and config.steps > 0:
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, config.steps) / config.steps)))
    history: dict[str, list] = {k: [] for k in ("step", "objective", "kl", "surrogate", "error", "prior_var", "seconds")}
    window = {"objective": 0.0, "kl": 0.0, "surrogate": 0.0, "error": 0.0, "count": 0}
    t1 = time.perf_counter()
    stopped_by = "steps"
    perm = torch.randperm(n_rows, generator=batch_gen)
    cursor = 0
    step = 0
    centre = prior.centre
    while step < config.steps:
        if config.time_budget_s is not None and time.perf_counter() - t1 >= config.time_budget_s:
            stopped_by = "time budget"
            break
        if cursor + config.batch_size > n_rows:
            perm = torch.randperm(n_rows, generator=batch_gen)
            cursor = 0
        rows = train_rows[perm[cursor:cursor + config.batch_size].to(device)]
        cursor += config.batch_size
        xb, yb = x_dev[rows].to(device), y_dev[rows]
        out = post(xb, "train", gen)
        emp = bounded_cross_entropy(out, yb, config.p_min).mean()
        sq, var, logvar = post.kl_terms(centre)
        lam = (sq + var) / P
        kl = 0.5 * (P * torch.log(lam) - logvar)
        with torch.no_grad():
            lam_f = float(lam)
            grid_j = lambda_grid_index(lam_f, config.lambda_c, config.lambda_b) if lam_f > 0 else 1.0
            jj = max(1, int(math.ceil(grid_j)))
            if config.lambda_grid_size is not None:
                jj = min(jj, config.lambda_grid_size)
            cost = float(lambda_union_cost(jj, config.lambda_grid_size))
        obj = objective_value(config.objective, emp, kl, n, delta_pb, cost, grid_j)
        if not torch.isfinite(obj):
            stopped_by = f"non-finite objective at step {step}"
            break
        opt.zero_grad(set_to_none=True)
        obj.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        step += 1
        with torch.no_grad():
            window["objective"] += float(obj)
            window["kl"] += float(kl)
            window["surrogate"] += float(emp)
            window["error"] += float((out.argmax(1) != yb).float().mean())
            window["count"] += 1
        if step % config.log_every == 0 or step == config.steps:
            c = window["count"]
            history["step"].append(step)
            for k in ("objective", "kl", "surrogate", "error"):
                history[k].append(window[k] / c)
            history["prior_var"].append(lam_f)
            history["seconds"].append(time.perf_counter() - t1)
            window = {"objective": 0.0, "kl": 0.0, "surrogate": 0.0, "error": 0.0, "count": 0}
            if step % (config.log_every * 20) == 0:
                say(f"step {step}: objective {history['objective'][-1]:.4f}, KL {history['kl'][-1]:.1f}, "
                    f"surrogate {history['surrogate'][-1]:.4f}, error {history['error'][-1]:.4f}")
    t_opt = time.perf_counter() - t1
    for t in post.mean_tensors + post.log_sigma_tensors:
        t.requires_grad_(False)

    # 3. the certificate from the final Q only ----------------------------------------------------
    t2 = time.perf_counter()
    eval_gen = torch.Generator(device=device).manual_seed(_sub_seed(config.seed, _STREAM_GIBBS))
    xc, yc = x_dev[cert_idx.to(x_dev.device)], y_dev[cert_idx]
    evaluated = 0
    with torch.no_grad():
        if mc_mode == "per-example":
            wrong = 0
            for _ in range(config.mc_passes):
                wrong += count_wrong(post, xc, yc, "per-example", eval_gen, config.eval_batch_size)
                evaluated += n
            trials = config.mc_passes * n
            e_hat = wrong / trials
            mc = {"mode": "per-example", "passes": config.mc_passes, "trials": trials, "errors": wrong,
                  "examples_evaluated": evaluated}
        else:
            per_draw = []
            for _ in range(config.mc_samples):
                w = post.sample(eval_gen)
                per_draw.append(count_wrong(post, xc, yc, "shared", eval_gen, config.eval_batch_size, weights=w))
                evaluated += n
            wrong = int(sum(per_draw))
            e_hat = wrong / (config.mc_samples * n)
            mc = {"mode": "full-pass", "draws": config.mc_samples, "errors": wrong, "examples_evaluated": evaluated,
                  "per_draw_error_std": float(np.std(np.asarray(per_draw) / n))}
        mean_wrong = count_wrong(post, xc, yc, "mean", None, config.eval_batch_size)
    if evaluated != n * (config.mc_passes if mc_mode == "per-example" else config.mc_samples):
        raise StatisticsError("internal error: the Monte-Carlo evaluation did not cover the certificate samples equally.")
    sq, var, logvar = post.kl_terms_float64(centre)
    if not all(math.isfinite(v) for v in (sq, var, logvar)):
        raise StatisticsError("the optimised posterior has non-finite parameters; lower the learning rates.")

    def gibbs_certificate(level: float) -> dict[str, Any]:
        d_mc = config.mc_delta_fraction * level
        d_pb = level - d_mc
        if mc_mode == "per-example":
            e_up = mc_upper_per_example(e_hat, mc["trials"], d_mc)
        else:
            e_up = mc_upper_full_pass(e_hat, config.mc_samples, d_mc)
        grid = best_lambda_on_grid(e_up, sq, var, logvar, P, n, d_pb, config.lambda_c, config.lambda_b,
                                   config.lambda_grid_size)
        if mc_mode == "per-example":
            cert = pac_bayes_kl_certificate_per_example(e_hat, mc["trials"], grid["kl"], n, d_pb, d_mc, grid["union_cost"])
        else:
            cert = pac_bayes_kl_certificate(e_hat, config.mc_samples, grid["kl"], n, d_pb, d_mc, grid["union_cost"])
        cert.update({k: grid[k] for k in ("j", "prior_var", "prior_var_optimum", "grid", "grid_c", "grid_b")})
        cert["level"] = level
        return cert

    gibbs = gibbs_certificate(delta)
    say(f"certificate {gibbs['value']:.4f} (ê {e_hat:.4f}, Ê {gibbs['mc_upper']:.4f}, KL/n {gibbs['kl'] / n:.4f})")

    # 4. the deployed network -----------------------------------------------------------------------
    deterministic, reason = None, None
    pool_name, pool = _pick_pool(unlabeled, config.unlabeled)
    if pool is None:
        reason = (f"no unlabeled input pool {config.unlabeled!r} was given, so the disagreement between the deployed "
                  "network and Q cannot be bounded.")
    else:
        x_u = as_tensors(post, pool)
        f_net = working_copy(model, device)
        f_pred = predictions(f_net, x_u, config.eval_batch_size, device)
        dis_gen = torch.Generator(device=device).manual_seed(_sub_seed(config.seed, _STREAM_DISAGREE))
        with torch.no_grad():
            if mc_mode == "per-example":
                dis = sum(count_wrong(post, x_u, f_pred, "per-example", dis_gen, config.eval_batch_size)
                          for _ in range(config.mc_passes))
                passes, draws = config.mc_passes, None
            else:
                dis = 0
                for _ in range(config.mc_samples):
                    w = post.sample(dis_gen)
                    dis += count_wrong(post, x_u, f_pred, "shared", dis_gen, config.eval_batch_size, weights=w)
                passes, draws = 1, config.mc_samples
        d_dis = config.disagreement_delta_fraction * delta
        g_part = gibbs_certificate(delta - d_dis)
        deterministic = deterministic_certificate(g_part["value"], delta - d_dis, int(dis), int(len(f_pred)), d_dis,
                                                  passes=passes, mc_samples=draws)
        deterministic.update(pool=pool_name, gibbs_terms=g_part, labels_used="none: only the inputs of the pool were read",
                             deployed_network="the checkpoint's weights (not Q's mean)")
        say(f"deployed-network certificate {deterministic['value']:.4f} (disagreement {deterministic['disagreement']:.4f} "
            f"on {len(f_pred)} unlabeled inputs)")
    t_eval = time.perf_counter() - t2

    diagnostics = {"posterior_mean_error": mean_wrong / n, "layers": post.describe_layers(), **post.summary()}
    return PacBayesOptResult(
        value=gibbs["value"], delta=delta, gibbs=gibbs, deterministic=deterministic, deterministic_reason=reason,
        n=n, n_train=n_train, prior=prior.info, prior_indices=prior.prior_indices,
        certificate_indices=prior.certificate_indices, num_parameters=P, objective=config.objective,
        sigma_init=str(config.sigma_init), steps_done=step, stopped_by=stopped_by,
        seconds={"prior": t_prior, "optimise": t_opt, "evaluate": t_eval, "total": time.perf_counter() - t_start},
        mc=mc, delta_split={"delta": delta, "gibbs_pb": delta_pb, "gibbs_mc": delta_mc,
                            "deterministic_disagreement": config.disagreement_delta_fraction * delta},
        history=history, config=config, diagnostics=diagnostics, posterior=post,
    )


def _pick_pool(unlabeled: Mapping[str, np.ndarray] | np.ndarray | None, name: str) -> tuple[str, np.ndarray | None]:
    if unlabeled is None:
        return name, None
    if isinstance(unlabeled, Mapping):
        pool = unlabeled.get(name)
        return name, (None if pool is None or len(pool) == 0 else pool)
    return name, (unlabeled if len(unlabeled) else None)


class PacBayesOptEngine:
    """A model and its data bound once; ``engine(config, delta=..., seed=...)`` runs (memoised).

    ``train``: the labelled training split; ``unlabeled``: pool name → input array (no labels);
    ``init_state``: initialization weights; ``prior_state``: weights for ``prior="given"``.
    The result of each (config, δ, seed) is cached so several bounds share one optimisation.
    """

    def __init__(self, model: torch.nn.Module, train: Split, *, unlabeled: Mapping[str, np.ndarray] | None = None,
                 init_state: Mapping[str, torch.Tensor] | None = None, prior_state: Mapping[str, torch.Tensor] | None = None,
                 device: torch.device | str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.model, self.train, self.unlabeled = model, train, unlabeled
        self.init_state, self.prior_state, self.device, self.log = init_state, prior_state, device, log
        self._cache: dict[tuple, PacBayesOptResult] = {}

    def __call__(self, config: PacBayesOptConfig | None = None, delta: float = 0.05, seed: int = 0) -> PacBayesOptResult:
        resolved = (config or PacBayesOptConfig()).resolved(seed)
        key = (resolved, float(delta))
        if key not in self._cache:
            self._cache[key] = optimise_pac_bayes(self.model, self.train, resolved, delta, init_state=self.init_state,
                                                  prior_state=self.prior_state, unlabeled=self.unlabeled,
                                                  device=self.device, seed=seed, log=self.log)
        return self._cache[key]

    def release(self) -> None:
        """Forget cached results (and their posteriors)."""
        self._cache.clear()

