"""Optimised PAC-Bayes engine (ncbounds.pacbayes_opt) and the pacbayes_opt bounds.

Checks: the configuration's validation; exact per-example draws of the posterior against a
hand-written Monte-Carlo reference (and that the local reparameterisation of a convolution is not
exact, so the comparison can fail); n = the number of samples actually evaluated when the prior takes
a subset (counted by spying on the network, for per-example and whole-sample Monte Carlo, learnt and
given priors); determinism; validity on Gaussian data with a fixed linear model whose Gibbs risk and
error are computed by Gauss–Hermite quadrature (failures in at most δ of 50 seeds, while the plain
estimate fails often); MNIST-1D MLP and CNN certificates above the Gibbs and network errors on 20,000
fresh samples; the bound functions and their wiring through ``evaluate``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_models import one_torch_thread
from scipy.stats import norm
from torch import nn

from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.bounds.pacbayes_certificate import pac_bayes_kl_certificate, pac_bayes_kl_certificate_per_example
from ncbounds.errors import UsageError
from ncbounds.io.datasets import Split, etf_means, load_data
from ncbounds.pacbayes_opt import GaussianPosterior, PacBayesOptConfig, PacBayesOptEngine, optimise_pac_bayes
from ncbounds.stats import ClassStats


@pytest.fixture(autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture
def opt_bounds():
    """The module of the two bound functions (registered in the catalogue like every bound)."""
    import ncbounds.bounds.pacbayes_opt as module

    return module


FAST = dict(steps=15, batch_size=50, log_every=5, mc_passes=1, prior_epochs=2, eval_batch_size=500)


def tiny_problem(n: int = 300, seed: int = 0):
    """A 3-class Gaussian problem in 6 dimensions and a small trained MLP with its init weights."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(3, 6)) * 2
    y = rng.integers(0, 3, size=n)
    x = (means[y] + rng.normal(size=(n, 6))).astype(np.float32)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval(), init, Split(x, y.astype(np.int64))


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


def test_config_validation_and_mapping():
    cfg = PacBayesOptConfig()
    assert cfg.objective == "fquad" and cfg.prior == "auto"
    for bad in [dict(prior="x"), dict(prior_fraction=1.0), dict(objective="mse"), dict(steps=-1), dict(p_min=0.0),
                dict(sigma_init="relative:-1"), dict(sigma_init=0.0), dict(mc_mode="sometimes"), dict(mc_delta_fraction=1.0),
                dict(prior="given"), dict(prior_indices=(1, 1)), dict(lambda_grid_size=0), dict(time_budget_s=0)]:
        with pytest.raises(UsageError):
            PacBayesOptConfig(**bad)
    assert PacBayesOptConfig(sigma_init=0.05).sigma_rule() == ("absolute", 0.05)
    assert PacBayesOptConfig.from_mapping({"steps": 5, "prior_indices": [3, 1]}).prior_indices == (3, 1)
    with pytest.raises(UsageError, match="unknown pacbayes_opt option"):
        PacBayesOptConfig.from_mapping({"stepz": 5})
    assert PacBayesOptConfig(seed=None).resolved(7).seed == 7 and PacBayesOptConfig(seed=3).resolved(7).seed == 3


# ------------------------------------------------------------------------------------------------
# the stochastic network: exact per-example draws
# ------------------------------------------------------------------------------------------------


def _conv_bn_net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(1), nn.Linear(24, 4))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        net[1].running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
        net[1].weight.copy_(torch.tensor([1.2, 0.8, -0.5]))
        net[1].bias.copy_(torch.tensor([0.1, 0.0, -0.1]))
    return net.eval()


def _reference_logits(net, sig, x, S, seed):
    """S logits of x, each from its own explicit weight draw (written independently of the library)."""
    g = torch.Generator().manual_seed(seed)
    p = dict(net.named_parameters())

    def draw(name):
        return p[name].detach() + sig * torch.randn((S, *p[name].shape), generator=g)

    wc, bc, gam, bet, wl, bl = (draw(n) for n in ("0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"))
    xp = nn.functional.pad(x.reshape(1, 8), (1, 1))[0]
    patches = torch.stack([xp[t:t + 3] for t in range(8)])  # (8, 3)
    h = torch.einsum("sck,tk->sct", wc[:, :, 0, :], patches) + bc[:, :, None]
    bn = net[1]
    h = (h - bn.running_mean[None, :, None]) / torch.sqrt(bn.running_var[None, :, None] + bn.eps)
    h = torch.relu(h * gam[:, :, None] + bet[:, :, None]).reshape(S, 24)
    return torch.einsum("soi,si->so", wl, h) + bl


@pytest.mark.parametrize("budget", [None, 96 * 5000])
def test_per_example_draws_match_an_explicit_weight_sampling_reference(monkeypatch, budget):
    import ncbounds.pacbayes_opt.posterior as posterior_module

    if budget is not None:  # explicit draws split into chunks of 5,000 examples
        monkeypatch.setattr(posterior_module, "EXPLICIT_DRAW_ELEMENTS", budget)
    net = _conv_bn_net()
    sig = 0.3
    post = GaussianPosterior(net, {n: torch.full_like(p, sig) for n, p in net.named_parameters()})
    assert post.per_example_exact
    x = torch.linspace(-1, 1, 8).reshape(1, 1, 8)
    S = 40_000
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ours = post(x.expand(S, 1, 8).contiguous(), "per-example", g)
        ref = _reference_logits(net, sig, x, S, seed=1)
    se = ref.std(0) / math.sqrt(S)
    assert torch.all((ours.mean(0) - ref.mean(0)).abs() < 5 * math.sqrt(2) * se)
    cov_o, cov_r = torch.cov(ours.T), torch.cov(ref.T)
    assert torch.allclose(cov_o, cov_r, rtol=0.06, atol=0.06 * float(cov_r.diagonal().mean()))
    # different examples of one batch have independent weights
    a, b = ours[: S // 2], ours[S // 2:]
    corr = torch.corrcoef(torch.stack([a[:, 0], b[:, 0]]))[0, 1]
    assert abs(float(corr)) < 0.03
    # whole-sample draws ("shared"): a given weight draw is used for every example of the batch
    w = post.sample(torch.Generator().manual_seed(3))
    with torch.no_grad():
        two = post(torch.cat([x, x]), "shared", weights=w)
    assert torch.equal(two[0], two[1])


def test_training_draws_are_chunked_under_a_memory_budget(monkeypatch):
    import ncbounds.pacbayes_opt.posterior as posterior_module

    net = _conv_bn_net()
    post = GaussianPosterior(net, {n: torch.full_like(p, 0.1) for n, p in net.named_parameters()})
    post.examples_per_draw = 4
    monkeypatch.setattr(posterior_module, "EXPLICIT_DRAW_ELEMENTS", 96 * 3)  # 12 rows (3 draws of 4) per chunk
    assert post._chunk_rows("train", 50) == 12 and post._chunk_rows("per-example", 50) == 3
    out = post(torch.randn(50, 1, 8), "train", torch.Generator().manual_seed(0))
    out.sum().backward()
    assert out.shape == (50, 4) and all(t.grad is not None for t in post.mean_tensors + post.log_sigma_tensors)


def test_local_reparameterisation_of_a_convolution_is_not_exact():
    """Before global pooling, independent per-position noise averages out; a shared filter's does not."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.AdaptiveAvgPool1d(1), nn.Flatten(1), nn.Linear(2, 2)).eval()
    sig = {n: torch.full_like(p, 0.3 if n.startswith("0.") else 1e-6) for n, p in net.named_parameters()}
    post = GaussianPosterior(net, sig)
    x = torch.linspace(-1, 1, 16).reshape(1, 1, 16).expand(20_000, 1, 16).contiguous()
    with torch.no_grad():
        exact = post(x, "per-example", torch.Generator().manual_seed(0)).var(0)
        post.conv_training = "local"
        local = post(x, "train", torch.Generator().manual_seed(1)).var(0)
    assert torch.all(exact > 2 * local), (exact, local)



def test_posterior_never_modifies_the_model_and_rejects_inexact_per_example():
    model, _, _ = tiny_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.inner(x) * self.scale

    post = GaussianPosterior(Scaled(), {n: torch.full_like(p, 0.1) for n, p in Scaled().named_parameters()})
    assert not post.per_example_exact and post.other == ["scale"]
    with pytest.raises(UsageError, match="full-pass"):
        post(torch.zeros(2, 6), "per-example", torch.Generator())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------
# n = the number of samples actually evaluated
# ------------------------------------------------------------------------------------------------


class _RowCounter:
    def __init__(self, monkeypatch):
        self.rows = {"per-example": 0, "shared": 0}
        original = GaussianPosterior.forward

        def spy(post, x, mode="mean", generator=None, weights=None):
            if mode in self.rows and not torch.is_grad_enabled():
                self.rows[mode] += int(x.shape[0])
            return original(post, x, mode, generator, weights)

        monkeypatch.setattr(GaussianPosterior, "forward", spy)
        monkeypatch.setattr(GaussianPosterior, "__call__", spy)


@pytest.mark.parametrize("mc_mode", ["per-example", "full-pass"])
def test_n_is_the_number_of_evaluated_samples_with_a_learnt_prior(monkeypatch, mc_mode):
    model, init, train = tiny_problem(n=301)
    counter = _RowCounter(monkeypatch)
    fast = {k: v for k, v in FAST.items() if k not in ("mc_passes", "prior_epochs")}
    cfg = PacBayesOptConfig(prior="learn", prior_fraction=0.3, prior_epochs=40, mc_mode=mc_mode, mc_passes=3, mc_samples=20,
                            **fast)
    res = optimise_pac_bayes(model, train, cfg, 0.05, init_state=init, seed=1)
    n_prior = int(np.floor(0.3 * 301))
    assert res.n == 301 - n_prior == len(res.certificate_indices)
    assert len(res.prior_indices) == n_prior
    assert set(res.prior_indices).isdisjoint(res.certificate_indices)
    assert sorted(set(res.prior_indices) | set(res.certificate_indices)) == list(range(301))
    repeats = 3 if mc_mode == "per-example" else 20
    # the certificate saw exactly the n certificate samples, `repeats` times each
    assert counter.rows["per-example" if mc_mode == "per-example" else "shared"] == repeats * res.n
    g = res.gibbs
    d_mc, d_pb = g["delta_mc"], g["delta"]
    if mc_mode == "per-example":
        want = pac_bayes_kl_certificate_per_example(g["gibbs_error"], 3 * res.n, g["kl"], res.n, d_pb, d_mc, g["union_cost"])
        wrong_n = pac_bayes_kl_certificate_per_example(g["gibbs_error"], 3 * 301, g["kl"], 301, d_pb, d_mc, g["union_cost"])
    else:
        want = pac_bayes_kl_certificate(g["gibbs_error"], 20, g["kl"], res.n, d_pb, d_mc, g["union_cost"])
        wrong_n = pac_bayes_kl_certificate(g["gibbs_error"], 20, g["kl"], 301, d_pb, d_mc, g["union_cost"])
    assert res.value < 1.0 and res.value == want["value"] and res.value > wrong_n["value"]
    assert d_mc + d_pb == pytest.approx(0.05)
    assert res.prior["kind"] == "learn" and res.prior["prior_samples"] == n_prior


def test_given_prior_uses_the_complement_of_its_declared_indices():
    model, init, train = tiny_problem(n=200)
    declared = tuple(range(0, 200, 4))
    cfg = PacBayesOptConfig(prior="given", prior_indices=declared, **FAST)
    res = optimise_pac_bayes(model, train, cfg, 0.05, prior_state=init, seed=0)
    assert res.n == 150 and not set(declared) & set(res.certificate_indices.tolist())
    assert res.prior["kind"] == "given"
    with pytest.raises(UsageError, match="do not match"):
        optimise_pac_bayes(model, train, cfg, 0.05, prior_state={"0.weight": torch.zeros(2, 2)}, seed=0)
    with pytest.raises(UsageError, match="initialization weights"):
        optimise_pac_bayes(model, train, PacBayesOptConfig(prior="init", **FAST), 0.05, seed=0)


def test_runs_are_deterministic_and_memoised():
    model, init, train = tiny_problem()
    cfg = PacBayesOptConfig(prior="init", **FAST)
    a = optimise_pac_bayes(model, train, cfg, 0.05, init_state=init, seed=3)
    b = optimise_pac_bayes(model, train, cfg, 0.05, init_state=init, seed=3)
    c = optimise_pac_bayes(model, train, cfg, 0.05, init_state=init, seed=4)
    def trace(r):
        return {k: v for k, v in r.history.items() if k != "seconds"}

    assert a.value == b.value and trace(a) == trace(b) and a.gibbs == b.gibbs
    assert trace(c) != trace(a)
    engine = PacBayesOptEngine(model, train, init_state=init)
    assert engine(cfg, delta=0.05, seed=3) is engine(cfg, delta=0.05, seed=3)
    assert engine(cfg, delta=0.05, seed=3).value == a.value
    assert len(a.history["step"]) == 3 and a.steps_done == 15 and a.stopped_by == "steps"


@pytest.mark.parametrize("objective", ["fquad", "fclassic", "flamb", "dziugaite-roy"])
def test_every_objective_runs_and_lowers_its_value(objective):
    model, init, train = tiny_problem()
    cfg = PacBayesOptConfig(prior="init", objective=objective, **{**FAST, "steps": 60, "log_every": 10})
    res = optimise_pac_bayes(model, train, cfg, 0.05, init_state=init, seed=0)
    h = res.history["objective"]
    assert all(math.isfinite(v) for v in h) and h[-1] < h[0]
    assert 0.0 <= res.gibbs["gibbs_error"] <= res.value <= 1.0


def test_time_budget_finite_grid_and_certificate_only_training():
    model, init, train = tiny_problem()
    cfg = PacBayesOptConfig(prior="learn", train_on="certificate", lambda_grid_size=500, time_budget_s=0.3,
                            lr_schedule="cosine", **{**FAST, "steps": 10**7})
    res = optimise_pac_bayes(model, train, cfg, 0.05, init_state=init, seed=0)
    assert res.stopped_by == "time budget" and 0 < res.steps_done < 10**7
    assert res.gibbs["union_cost"] == pytest.approx(math.log(500)) and 1 <= res.gibbs["j"] <= 500


# ------------------------------------------------------------------------------------------------
# validity on Gaussian data with a fixed linear model (known risk)
# ------------------------------------------------------------------------------------------------

_GH_T, _GH_W = np.polynomial.hermite.hermgauss(100)


def gibbs_risk_linear(mu_w, s_w, mu_b, s_b, means, sigma):
    """Exact Gibbs risk of N(μ, diag s²) over a 2-class linear model on N(means[y], σ²I_2) classes.

    Given x, the logit difference z_y − z_{1−y} is Gaussian with mean (μ_y − μ_{1−y})·x + μb_y − μb_{1−y}
    and variance Σ_i (s_{y,i}² + s_{1−y,i}²) x_i² + s_by² + s_b(1−y)², so P(error | x, y) = Φ(−mean/sd);
    the expectation over x is a 100×100 Gauss–Hermite quadrature (smooth integrand when s is not tiny).
    """
    t1, t2 = np.meshgrid(_GH_T, _GH_T, indexing="ij")
    w = np.outer(_GH_W, _GH_W) / math.pi
    risk = 0.0
    for y in (0, 1):
        o = 1 - y
        x1 = means[y, 0] + sigma * math.sqrt(2) * t1
        x2 = means[y, 1] + sigma * math.sqrt(2) * t2
        m = (mu_w[y, 0] - mu_w[o, 0]) * x1 + (mu_w[y, 1] - mu_w[o, 1]) * x2 + mu_b[y] - mu_b[o]
        v = (s_w[y, 0] ** 2 + s_w[o, 0] ** 2) * x1**2 + (s_w[y, 1] ** 2 + s_w[o, 1] ** 2) * x2**2 + s_b[y] ** 2 + s_b[o] ** 2
        risk += 0.5 * float(np.sum(w * norm.cdf(-m / np.sqrt(v))))
    return risk


def _etf_problem(seed, sigma=1.0, n=100):
    data = load_data(f"gaussian-etf:K=2,d=2,n={n},sigma={sigma},r=1.0,seed={seed}")
    means = etf_means(2, 2, 1.0, seed)
    model = nn.Linear(2, 2)
    with torch.no_grad():  # a fixed classifier (the Bayes direction), chosen from the population only
        model.weight.copy_(torch.as_tensor(means, dtype=torch.float32))
        model.bias.zero_()
    init = {"weight": 0.5 * model.weight.detach().clone(), "bias": torch.zeros(2)}  # data-free prior centre
    return data, means, model.eval(), init


def test_quadrature_agrees_with_simulation():
    data, means, model, init = _etf_problem(0)
    cfg = PacBayesOptConfig(prior="init", sigma_init=0.4, **FAST)
    res = optimise_pac_bayes(model, data.train, cfg, 0.1, init_state=init, seed=0)
    post = res.posterior
    mu_w, mu_b = post.mean["weight"].double().numpy(), post.mean["bias"].double().numpy()
    s_w, s_b = post.sigma("weight").detach().double().numpy(), post.sigma("bias").detach().double().numpy()
    exact = gibbs_risk_linear(mu_w, s_w, mu_b, s_b, means, 1.0)
    big = load_data("gaussian-etf:K=2,d=2,n=100000,sigma=1.0,r=1.0,seed=0")
    sim = res.gibbs_error_on(big.train.x, big.train.y, passes=1, seed=5)
    assert sim == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 200_000))
    assert float(post.sigma("weight").min()) > 0.1  # smooth integrand: the quadrature is accurate


def test_certificates_hold_on_synthetic_data_with_known_risk():
    delta, seeds = 0.1, 50
    cfg = PacBayesOptConfig(prior="init", sigma_init=0.4, **FAST)
    fails = {"gibbs": 0, "deployed": 0, "plain_estimate": 0}
    gaps = []
    for seed in range(seeds):
        data, means, model, init = _etf_problem(seed, n=1000)  # n = 2000 certificate samples
        res = optimise_pac_bayes(model, data.train, cfg, delta, init_state=init,
                                 unlabeled={"test": data.test.x}, seed=seed)
        post = res.posterior
        true_gibbs = gibbs_risk_linear(post.mean["weight"].double().numpy(), post.sigma("weight").detach().double().numpy(),
                                       post.mean["bias"].double().numpy(), post.sigma("bias").detach().double().numpy(),
                                       means, 1.0)
        true_f = norm.cdf(-1.0)  # the fixed classifier is the Bayes classifier: error Φ(−r/σ)
        assert float(post.sigma("weight").min()) > 0.1  # keeps the quadrature accurate
        fails["gibbs"] += res.value < true_gibbs
        fails["deployed"] += res.deterministic["value"] < true_f
        fails["plain_estimate"] += res.gibbs["gibbs_error"] < true_gibbs
        gaps.append(res.value - true_gibbs)
    assert fails["gibbs"] <= delta * seeds and fails["deployed"] <= delta * seeds
    assert fails["plain_estimate"] >= 0.2 * seeds  # the harness detects an estimate that is not a bound
    assert 0 < float(np.median(gaps)) < 0.15  # measured: 0.08


# ------------------------------------------------------------------------------------------------
# MNIST-1D: certificates above fresh errors
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d():
    return load_data("mnist1d:n=5000"), load_data("mnist1d:n=25000,seed=7")


def _train(model, split, epochs, lr=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.as_tensor(split.x), torch.as_tensor(split.y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 100):
            idx = perm[i:i + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_mnist1d_certificates_exceed_fresh_errors(mnist1d, arch):
    from ncbounds.models.builtin import CNN1D, MLP

    data, fresh = mnist1d
    torch.manual_seed(0)
    model = MLP(input_dim=40, width=64, depth=2) if arch == "mlp" else CNN1D(channels=16)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, data.train, epochs=30)
    cfg = PacBayesOptConfig(prior="learn", prior_epochs=40, prior_lr=0.05, steps=150, log_every=50, mc_passes=2)
    res = optimise_pac_bayes(model, data.train, cfg, 0.05, init_state=init, unlabeled={"test": data.test.x}, seed=0)
    fresh_gibbs = res.gibbs_error_on(fresh.train.x, fresh.train.y, passes=1, seed=11)
    with torch.no_grad():
        fresh_err = float((model(torch.as_tensor(fresh.train.x)).argmax(1).numpy() != fresh.train.y).mean())
    assert len(fresh.train.y) == 20_000
    assert res.value >= fresh_gibbs, (res.value, fresh_gibbs)
    assert res.deterministic["value"] >= fresh_err, (res.deterministic["value"], fresh_err)
    # informative, not trivially true (measured: CNN 0.149 / 0.279, MLP 0.557 / 1.0 — an MLP is a poor
    # MNIST-1D model, ~39% error, and the posterior around its learnt prior disagrees with it too often)
    if arch == "cnn":
        assert res.value < 0.3 and res.deterministic["value"] < 0.5
    else:
        assert res.value < 0.8
    assert res.deterministic["n_inputs"] == len(data.test.x)


# ------------------------------------------------------------------------------------------------
# the bound functions and their wiring
# ------------------------------------------------------------------------------------------------


def _summary(n):
    stats = ClassStats(3, 1, scatter_mode="none")
    stats.update(torch.zeros(n, 1, dtype=torch.float64), torch.arange(n) % 3)
    return SplitSummary(n=n, errors=0, margins=None, stats=stats, projected=None, metrics={})


def test_bound_functions_package_the_engine_result(opt_bounds):
    pacbayes_opt, pacbayes_opt_deterministic = opt_bounds.pacbayes_opt, opt_bounds.pacbayes_opt_deterministic
    model, init, train = tiny_problem()
    engine = PacBayesOptEngine(model, train, unlabeled={"test": train.x[:100]}, init_state=init)
    cfg = PacBayesOptConfig(prior="init", **FAST)
    settings = {"pacbayes_opt": cfg, "pacbayes_opt_deterministic": cfg}
    ctx = BoundContext(num_classes=3, train=_summary(300), test=_summary(100),
                       options=BoundOptions(delta=0.05, seed=2, bound=settings), model=model, pacbayes_opt=engine)
    gibbs, det = pacbayes_opt(ctx), pacbayes_opt_deterministic(ctx)
    res = engine(cfg, delta=0.05, seed=2)
    assert gibbs.status == det.status == "certificate" and gibbs.delta == det.delta == 0.05
    assert gibbs.value == res.value and det.value == res.deterministic["value"]
    assert det.value >= gibbs.value  # B at a smaller δ plus a non-negative disagreement bound
    assert gibbs.inputs["n"] == 300 and gibbs.inputs["prior"]["kind"] == "init"
    assert "label" in det.inputs["labels_used"] and det.inputs["unlabeled_inputs"] == 100
    assert gibbs.details["history"]["step"] == res.history["step"]
    assert gibbs.details["kl_over_n"] == pytest.approx(res.gibbs["kl"] / 300)
    ctx.pacbayes_opt = None
    assert pacbayes_opt(ctx).status == "not-applicable" and pacbayes_opt_deterministic(ctx).status == "not-applicable"
    no_pool = PacBayesOptEngine(model, train, init_state=init)
    ctx.pacbayes_opt = no_pool
    assert pacbayes_opt_deterministic(ctx).status == "not-applicable"


def test_evaluate_wires_the_engine(tmp_path, monkeypatch, opt_bounds):
    import json

    from helpers_models import ARCH, trained_mlp

    import ncbounds
    import ncbounds.pacbayes_opt.engine as engine_module
    from ncbounds.models import build_model

    torch.manual_seed(0)
    init_model = build_model(ARCH)
    torch.save(init_model.state_dict(), tmp_path / "init.pt")
    torch.save(trained_mlp().state_dict(), tmp_path / "final.pt")
    (tmp_path / "final.json").write_text(json.dumps({"arch": ARCH, "data": "digits", "init_checkpoint": "init.pt"}))
    calls = []
    real = engine_module.optimise_pac_bayes
    monkeypatch.setattr(engine_module, "optimise_pac_bayes", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    record = ncbounds.evaluate(str(tmp_path / "final.pt"), bounds="pacbayes_opt,pacbayes_opt_deterministic", device="cpu",
                               bound_options={"pac-bayes-opt": FAST})
    assert len(calls) == 1 and calls[0].steps == FAST["steps"]  # the group settings reached both bounds: one shared run
    by_name = {b["name"]: b for b in record.bounds}
    assert by_name["pacbayes_opt"]["status"] == "certificate", by_name["pacbayes_opt"]
    assert by_name["pacbayes_opt"]["inputs"]["prior"]["kind"] == "init"  # the sidecar's init checkpoint was used
    assert by_name["pacbayes_opt"]["inputs"]["n"] == record.data["splits"]["train"]["n"]
    det = by_name["pacbayes_opt_deterministic"]
    assert det["status"] == "certificate" and det["inputs"]["unlabeled_inputs"] == record.data["splits"]["test"]["n"]
    json.dumps(record.to_dict()["bounds"], allow_nan=False)  # the bound records are strict JSON as they are
