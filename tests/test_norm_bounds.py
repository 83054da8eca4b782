"""Network extraction (weights/network.py), norm/margin bounds (bounds/norm_margin.py), Jiang et al. norm measures."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers_models import bound_settings
from torch import nn

from ncbounds.bounds import jiang_norms, norm_margin
from ncbounds.bounds.base import REGISTRY, BoundResult
from ncbounds.bounds.context import BoundContext, BoundOptions, SplitSummary
from ncbounds.models.builtin import CNN1D, MLP, LeNet5, ResNet18CIFAR
from ncbounds.stats.class_stats import ClassStats
from ncbounds.weights.folding import fold_batchnorm
from ncbounds.weights.network import extract_network

NORM_BOUNDS = ("bartlett2017", "golowich2018", "neyshabur2018")
JIANG = ("jiang_params", "jiang_inverse_margin", "jiang_spec_init", "jiang_spec_orig", "jiang_prod_of_spec", "jiang_sum_of_spec",
         "jiang_prod_of_fro", "jiang_fro_dist", "jiang_dist_spec_init", "jiang_param_norm", "jiang_path_norm")
NEEDS_INIT = ("jiang_spec_init", "jiang_fro_dist", "jiang_dist_spec_init")


# ------------------------------------------------------------------------------------------------ helpers


def _summary(model: nn.Module, x: np.ndarray, y: np.ndarray, K: int) -> SplitSummary:
    with torch.no_grad():
        logits = copy.deepcopy(model).double().eval()(torch.as_tensor(x, dtype=torch.float64)).numpy()
    idx = np.arange(len(y))
    other = logits.copy()
    other[idx, y] = -np.inf
    margins = logits[idx, y] - other.max(1)
    return SplitSummary(n=len(y), errors=int(np.sum(logits.argmax(1) != y)), margins=margins,
                        stats=ClassStats(K, 1, scatter_mode="none"), projected=None, metrics={})


def make_ctx(model, x, y, K, input_shape, init_state=None, xt=None, yt=None, **opts) -> BoundContext:
    """A BoundContext built by hand: margins from a float64 copy of the model, input norms from x."""
    model = model.eval()
    xt, yt = (x, y) if xt is None else (xt, yt)
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    sq = (flat**2).sum(1)
    opts["bound"] = bound_settings(opts.get("bound"))
    return BoundContext(num_classes=K, train=_summary(model, x, y, K), test=_summary(model, xt, yt, K), options=BoundOptions(**opts),
                        model=model, init_state=init_state, input_shape=tuple(input_shape),
                        input_norms={"sum_sq": float(sq.sum()), "max": float(np.sqrt(sq.max())), "m": len(x)})


def random_data(n: int, shape: tuple, K: int, seed: int = 0):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, *shape)), g.integers(0, K, n)


def power_iteration(layer, iters: int = 60) -> float:
    """Largest singular value of the layer's map (bias excluded) by power iteration on AᵀA (from below)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, *layer.input_shape), generator=g, dtype=torch.float64)
    for _ in range(iters):
        x = (x / x.norm()).requires_grad_(True)
        (x,) = torch.autograd.grad(0.5 * (layer.apply(x) ** 2).sum(), x)
        x = x.detach()
    x = x / x.norm()
    with torch.no_grad():
        return float(layer.apply(x).norm())


def full_matrix(layer) -> torch.Tensor:
    """The (out_dim × in_dim) matrix of x ↦ Wx, column j = the map applied to the j-th basis vector."""
    basis = torch.eye(layer.in_dim, dtype=torch.float64).reshape(layer.in_dim, *layer.input_shape)
    with torch.no_grad():
        return layer.apply(basis).reshape(layer.in_dim, layer.out_dim).T


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread-synchronisation overhead on small CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits_mlp():
    from helpers_models import digits_split, trained_mlp

    from ncbounds.models import build_model

    x, y, xt, yt = digits_split()
    torch.manual_seed(0)
    init_state = copy.deepcopy(build_model("mlp:input_dim=64,num_classes=10,width=32,depth=2").state_dict())
    model = trained_mlp()
    return model, init_state, (x, y, xt, yt)


# ------------------------------------------------------------------------------------------------ extraction


def test_extract_mlp_layer_list_and_shapes():
    torch.manual_seed(0)
    model = MLP(input_dim=64, width=16, depth=2).eval()
    net = extract_network(model, (64,))
    assert net.supported and net.reason is None and net.weights_complete
    assert [layer.name for layer in net.layers] == ["features.0", "features.2", "fc"]
    assert [layer.input_shape for layer in net.layers] == [(64,), (16,), (16,)]
    assert [layer.output_shape for layer in net.layers] == [(16,), (16,), (10,)]
    assert all(layer.kind == "linear" and layer.has_bias for layer in net.layers)
    for layer, mod in zip(net.layers, [model.features[0], model.features[2], model.fc], strict=True):
        assert layer.weight.dtype == torch.float64
        assert torch.equal(layer.weight, mod.weight.detach().double())
        assert layer.op_norm.method == "exact-svd" and layer.op_norm.exact
        assert layer.op_norm.value == pytest.approx(float(torch.linalg.matrix_norm(mod.weight.detach().double(), 2)), rel=1e-12)
        assert layer.fro_norm == pytest.approx(float(mod.weight.detach().double().norm()), rel=1e-12)
    assert [g and [op.kind for op in g] for g in net.gaps()] == [[], ["relu"], ["relu"], []]


def test_extract_cnn1d_layers_shapes_and_global_pool():
    torch.manual_seed(0)
    net = extract_network(CNN1D(channels=8, depth=3).eval(), (40,))
    assert net.supported
    assert [layer.name for layer in net.layers] == ["features.0", "features.2", "features.4", "fc"]
    assert [layer.kind for layer in net.layers] == ["conv1d", "conv1d", "conv1d", "linear"]
    assert [layer.spatial_shape for layer in net.layers] == [(40,), (40,), (20,), ()]
    assert [layer.input_shape for layer in net.layers] == [(1, 40), (8, 40), (8, 20), (8,)]
    assert [layer.output_shape for layer in net.layers] == [(8, 40), (8, 20), (8, 10), (10,)]
    assert net.layers[1].conv["stride"] == (2,) and net.layers[0].conv["padding"] == (2,)
    assert all(layer.op_norm.method == "fft-circular-embedding" for layer in net.layers[:3])
    pool = [op for op in net.ops if getattr(op, "kind", None) == "avg_pool"]
    assert len(pool) == 1 and pool[0].lipschitz == pytest.approx(1 / math.sqrt(10), rel=1e-12)  # global mean of 10 positions
    assert net.gap_lipschitz()[3] == pytest.approx(1 / math.sqrt(10), rel=1e-12)


def test_extract_lenet5_layers_shapes_and_maxpool():
    torch.manual_seed(0)
    net = extract_network(LeNet5(input_size=8).eval(), (1, 8, 8))
    assert net.supported
    assert [layer.name for layer in net.layers] == ["conv1", "conv2", "fc1", "fc2", "fc"]
    assert [layer.input_shape for layer in net.layers] == [(1, 8, 8), (6, 4, 4), (64,), (120,), (84,)]
    assert [layer.spatial_shape for layer in net.layers[:2]] == [(8, 8), (4, 4)]
    pools = [op for op in net.ops if getattr(op, "kind", None) == "max_pool"]
    assert [p.name for p in pools] == ["pool1", "pool2"]
    assert all(p.lipschitz == 1.0 and "non-overlapping" in p.method for p in pools)


def test_overlapping_maxpool_gets_sqrt_multiplicity():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    net = extract_network(model.eval(), (1, 6, 6))
    pool = [op for op in net.ops if getattr(op, "kind", None) == "max_pool"][0]
    assert pool.lipschitz == pytest.approx(3.0)  # each pixel in at most 3×3 windows: √9


def conv_bn_chain() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    for bn in (model[1], model[6]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return model.eval()


def test_batchnorm_folded_into_conv_and_linear():
    model = conv_bn_chain()
    net = extract_network(model, (2, 6, 6))
    assert net.supported and net.weights_complete
    assert [(layer.name, layer.batchnorm) for layer in net.layers] == [("0", "1"), ("5", "6"), ("8", None)]
    w, b = fold_batchnorm(model[0].weight, model[0].bias, model[1])
    assert torch.allclose(net.layers[0].weight, w, rtol=0, atol=1e-15) and torch.allclose(net.layers[0].bias, b, rtol=0, atol=1e-15)
    w2, b2 = fold_batchnorm(model[5].weight, None, model[6])
    assert torch.allclose(net.layers[1].weight, w2) and torch.allclose(net.layers[1].bias, b2)
    # the operator norm is that of the folded weight
    assert net.layers[0].op_norm.value >= power_iteration(net.layers[0]) * (1 - 1e-9)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    assert torch.allclose(net.forward(x), copy.deepcopy(model).double()(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("factory, shape", [
    (lambda: MLP(input_dim=64, width=16, depth=2), (64,)),
    (lambda: CNN1D(channels=8, depth=3), (40,)),
    (lambda: LeNet5(input_size=8), (1, 8, 8)),
    (lambda: LeNet5(input_size=8), (64,)),
])
def test_chain_replay_equals_model(factory, shape):
    torch.manual_seed(0)
    model = factory().eval()
    net = extract_network(model, shape)
    x = torch.randn(5, *shape, dtype=torch.float64)
    ref = copy.deepcopy(model).double()(x)
    assert torch.allclose(net.forward(x).reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


def test_operator_norms_dominate_power_iteration():
    torch.manual_seed(0)
    for model, shape in [(LeNet5(input_size=8), (1, 8, 8)), (CNN1D(channels=8), (40,)), (conv_bn_chain(), (2, 6, 6))]:
        net = extract_network(model.eval(), shape)
        for layer in net.layers:
            est = power_iteration(layer)
            assert layer.op_norm.value >= est * (1 - 1e-9), layer.name
            assert layer.op_norm.value <= est * 2.5  # a bound, but not a useless one


def test_full_matrix_norms_match_jacobian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2), nn.ReLU(),
                          nn.Conv2d(6, 3, 2, padding="same", dilation=2), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    net = extract_network(model.eval(), (4, 7, 7))
    assert net.supported
    for layer in net.layers:
        mat = full_matrix(layer)
        assert np.allclose(layer.row_sq_norms(), (mat**2).sum(1).numpy(), rtol=1e-12, atol=1e-14)
        assert layer.matrix_fro_norm() == pytest.approx(float(mat.norm()), rel=1e-12)
        assert layer.op_norm.value >= float(torch.linalg.matrix_norm(mat, 2)) * (1 - 1e-12)
        if layer.bias is not None:
            assert layer.bias_full_norm() == pytest.approx(float(np.linalg.norm(layer.bias_rows())), rel=1e-12)


def test_unsupported_modules_and_functional_ops_are_reported():
    sig = extract_network(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)).eval(), (4,))
    assert not sig.supported and "Sigmoid" in sig.reason and sig.weights_complete

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    fun = extract_network(Functional().eval(), (4,))
    assert not fun.supported and "'b'" in fun.reason and "not a plain chain" in fun.reason

    bn_first = extract_network(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)).eval(), (4,))
    assert not bn_first.supported and "BatchNorm" in bn_first.reason and not bn_first.weights_complete

    bad_shape = extract_network(nn.Linear(4, 2), (5,))
    assert not bad_shape.supported and "does not run" in bad_shape.reason
    assert not extract_network(nn.Linear(4, 2), ()).supported


# ------------------------------------------------------------------------------------------------ residual networks


def test_resnet_is_not_a_chain_and_bounds_say_why():
    torch.manual_seed(0)
    model = ResNet18CIFAR(width=8).eval()
    x, y = random_data(40, (3, 8, 8), 10)
    ctx = make_ctx(model, x, y, 10, (3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in NORM_BOUNDS:
        res = REGISTRY[name].func(ctx)
        assert isinstance(res, BoundResult) and res.status == "not-applicable" and res.value is None
        assert "residual" in res.reason and "layer1.0" in res.reason
    # Jiang's weight measures only read the (BatchNorm-folded) weights: they are computed
    for name in ("jiang_param_norm", "jiang_prod_of_spec", "jiang_spec_orig", "jiang_path_norm", "jiang_params"):
        res = REGISTRY[name].func(ctx)
        assert res.status == "predictor" and math.isfinite(res.value), name
        if name != "jiang_params":
            assert res.inputs["plain_chain"] is False
    res = REGISTRY["jiang_param_norm"].func(ctx)
    assert res.inputs["depth"] == 21 and "layer2.0.downsample.1" in res.inputs["batchnorm_folded"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ closed forms


def _cost(k: int) -> float:
    return math.log(2 * (abs(k) + 1) * (abs(k) + 2))


def _ramp(margins, gamma):
    return float(np.mean(np.clip(1 - margins / gamma, 0, 1)))


def linear_model_ctx(seed=0, m=200, d=5, K=3):
    torch.manual_seed(seed)
    model = MLP(input_dim=d, num_classes=K, depth=0, bias=False).eval()
    x, y = random_data(m, (d,), K, seed)
    y = np.asarray(copy.deepcopy(model).double()(torch.as_tensor(x)).argmax(1))  # mostly positive margins
    y[: m // 10] = (y[: m // 10] + 1) % K
    return model, make_ctx(model, x, y, K, (d,)), x


def test_golowich_closed_form_one_linear_layer():
    model, ctx, x = linear_model_ctx()
    res = norm_margin.golowich2018(ctx)
    assert res.status == "certificate"
    W = model.fc.weight.detach().double()
    m, K, delta = len(x), 3, ctx.options.delta
    P = float(W.norm())  # ‖W‖_F
    xn = float(np.sqrt((x**2).sum()))
    c = math.sqrt(2 * math.log(2) * 1) + 1

    def value(k):
        r = 2 ** (k / 4)
        gamma = P / r
        return _ramp(ctx.train.margins, gamma) + 2 * (2 * K * r * c * xn / m) + 3 * math.sqrt((math.log(2 / delta) + _cost(k)) / (2 * m))

    k = res.details["grid_index"]
    assert res.details["gamma"] == pytest.approx(P / 2 ** (k / 4), rel=1e-12)
    assert res.details["product_of_frobenius"] == pytest.approx(P, rel=1e-12)
    assert res.value == pytest.approx(value(k), rel=1e-12)
    lo, hi = res.details["grid_range"]
    assert all(res.value <= value(kk) + 1e-12 for kk in range(max(lo, k - 8), min(hi, k + 8) + 1))


def test_bartlett_closed_form_one_linear_layer():
    model, ctx, x = linear_model_ctx()
    res = norm_margin.bartlett2017(ctx)
    assert res.status == "up-to-constants" and res.inputs["reference"] == "zero"
    W = model.fc.weight.detach().double()
    m, K, d, delta = len(x), 3, 5, ctx.options.delta
    s = float(torch.linalg.matrix_norm(W, 2))
    b = float(W.norm(dim=1).sum())  # Σ over output units of the incoming-weight ℓ2 norms
    k_u = math.ceil(4 * math.log2(b / s))
    u = 2 ** (k_u / 4)
    assert u >= b / s > 2 ** ((k_u - 1) / 4)
    xn = float(np.sqrt((x**2).sum()))

    def value(k):
        r = 2 ** (k / 4)
        rad = 4 / m + 12 * math.log(m) / math.sqrt(m) * math.sqrt(math.log(2 * d * K)) * 4 * xn / math.sqrt(m) * r * u
        conf = 3 * math.sqrt((math.log(2 / delta) + _cost(k_u) + _cost(k)) / (2 * m))
        return _ramp(ctx.train.margins, s / r) + 2 * rad + conf

    k = res.details["grid_index"]
    assert res.details["W_bar"] == d * K
    assert res.details["gamma"] == pytest.approx(s / 2 ** (k / 4), rel=1e-12)
    assert res.value == pytest.approx(value(k), rel=1e-12)
    lo, hi = res.details["grid_range"]
    assert all(res.value <= value(kk) + 1e-12 for kk in range(max(lo, k - 8), min(hi, k + 8) + 1))


def test_rescaling_last_layer_leaves_bartlett_and_golowich_unchanged():
    x, y = random_data(300, (8,), 4, seed=3)
    torch.manual_seed(3)
    model = MLP(input_dim=8, num_classes=4, width=12, depth=2, bias=False).double().eval()
    y = np.asarray(copy.deepcopy(model).double()(torch.as_tensor(x)).argmax(1))
    y[:20] = (y[:20] + 1) % 4
    ctx = make_ctx(model, x, y, 4, (8,))
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.fc.weight.mul_(3.7)
    ctx2 = make_ctx(scaled, x, y, 4, (8,))
    assert np.allclose(ctx2.train.margins, 3.7 * ctx.train.margins, rtol=1e-12)
    for f in (norm_margin.bartlett2017, norm_margin.golowich2018):
        a, b = f(ctx), f(ctx2)
        assert a.value == pytest.approx(b.value, rel=1e-9), a.name
        assert b.details["gamma"] == pytest.approx(3.7 * a.details["gamma"], rel=1e-9)
    # more data norm -> larger complexity (monotonicity)
    ctx3 = make_ctx(model, x, y, 4, (8,))
    ctx3.input_norms = dict(ctx.input_norms, sum_sq=4 * ctx.input_norms["sum_sq"])
    assert norm_margin.golowich2018(ctx3).details["complexity_term"] == pytest.approx(
        2 * norm_margin.golowich2018(ctx).details["complexity_term"], rel=1e-12)


# ------------------------------------------------------------------------------------------------ bounds on a trained model


def test_norm_bounds_on_trained_digits_mlp(digits_mlp):
    model, init_state, (x, y, xt, yt) = digits_mlp
    ctx = make_ctx(model, x, y, 10, (64,), xt=xt, yt=yt)
    train_err = ctx.train.error_rate
    expected = {"bartlett2017": "up-to-constants", "golowich2018": "certificate", "neyshabur2018": "plug-in"}
    for name, status in expected.items():
        res = REGISTRY[name].func(ctx)
        assert res.status == status and res.bounds == "population 0-1 error of the network", name
        assert res.value >= train_err and math.isfinite(res.value) and res.delta == ctx.options.delta
        assert res.inputs["norm_methods"] == ["exact-svd"] * 3 and "gamma_rule" in res.inputs
        assert {"gamma", "complexity_term"} <= set(res.details)
        assert res.inputs["bias_handling"] != "no biases"
    # with a bound on every input's norm Neyshabur et al.'s bound is a certificate; a too small one is refused
    big = make_ctx(model, x, y, 10, (64,), bound={"neyshabur2018": {"input_norm_bound": 16.0 * 8}})
    assert REGISTRY["neyshabur2018"].func(big).status == "certificate"
    small = make_ctx(model, x, y, 10, (64,), bound={"neyshabur2018": {"input_norm_bound": 1.0}})
    assert REGISTRY["neyshabur2018"].func(small).status == "not-applicable"
    # reference matrices at initialization
    res = norm_margin.bartlett2017(make_ctx(model, x, y, 10, (64,), init_state=init_state))
    assert res.inputs["reference"] == "init" and math.isfinite(res.value)


def test_bounds_on_conv_nets_are_finite():
    torch.manual_seed(0)
    x, y = random_data(60, (1, 8, 8), 10)
    ctx = make_ctx(LeNet5(input_size=8), x, y, 10, (1, 8, 8))
    assert math.isfinite(norm_margin.bartlett2017(ctx).value) and math.isfinite(norm_margin.neyshabur2018(ctx).value)
    gol = norm_margin.golowich2018(ctx)
    assert gol.status == "not-applicable" and "element-wise" in gol.reason  # max pooling
    x1, y1 = random_data(60, (40,), 10)
    ctx1 = make_ctx(CNN1D(channels=8), x1, y1, 10, (40,))
    for name in NORM_BOUNDS:
        res = REGISTRY[name].func(ctx1)
        assert res.value is not None and math.isfinite(res.value), name
    assert norm_margin.golowich2018(ctx1).details["layers"][3]["pool_factor_in"] == pytest.approx(1 / math.sqrt(10))


def test_missing_inputs_give_not_applicable_never_an_exception(digits_mlp):
    model, _, (x, y, _, _) = digits_mlp
    base = make_ctx(model, x, y, 10, (64,))
    variants = {
        "no model": dict(model=None),
        "no margins": dict(train=SplitSummary(base.train.n, None, None, base.train.stats, None, {})),
        "no input shape": dict(input_shape=()),
        "no input norms": dict(input_norms={}),
    }
    for label, change in variants.items():
        ctx = copy.copy(base)
        for k, v in change.items():
            setattr(ctx, k, v)
        for name in NORM_BOUNDS:
            res = REGISTRY[name].func(ctx)
            assert res.status == "not-applicable" and res.reason, (label, name)
        if label in ("no model", "no input shape"):
            for name in JIANG[2:]:
                assert REGISTRY[name].func(ctx).status == "not-applicable", (label, name)


# ------------------------------------------------------------------------------------------------ Jiang et al. measures


def test_registry_entries():
    for name in NORM_BOUNDS:
        assert REGISTRY[name].group == "norm-margin"
    for name in JIANG:
        spec = REGISTRY[name]
        assert spec.group == "jiang" and spec.status == "predictor" and spec.bounds == "correlate of the generalization gap"
        assert spec.func.__doc__ and "Jiang et al. 2020" in spec.func.__doc__


def test_jiang_params_equals_parameter_count(digits_mlp):
    model, _, (x, y, _, _) = digits_mlp
    res = jiang_norms.jiang_params(make_ctx(model, x, y, 10, (64,)))
    assert res.value == sum(p.numel() for p in model.parameters()) == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10


def test_jiang_measures_normalizations(digits_mlp):
    model, init_state, (x, y, _, _) = digits_mlp
    ctx = make_ctx(model, x, y, 10, (64,), init_state=init_state)
    m = len(x)
    Ws = [model.features[0].weight, model.features[2].weight, model.fc.weight]
    Ws = [w.detach().double() for w in Ws]
    W0 = [init_state[k].double() for k in ("features.0.weight", "features.2.weight", "fc.weight")]
    spec = np.array([float(torch.linalg.matrix_norm(w, 2)) for w in Ws])
    fro = np.array([float(w.norm()) for w in Ws])
    gamma = abs(float(np.percentile(ctx.train.margins, 10)))
    dist_f = np.array([float((w - w0).norm()) for w, w0 in zip(Ws, W0, strict=True)])
    dist_s = np.array([float(torch.linalg.matrix_norm(w - w0, 2)) for w, w0 in zip(Ws, W0, strict=True)])
    log_prod = float(np.sum(np.log(spec**2)))
    expected = {
        "jiang_inverse_margin": math.sqrt(1 / gamma**2 / m),
        "jiang_param_norm": math.sqrt(np.sum(fro**2) / m),
        "jiang_fro_dist": math.sqrt(np.sum(dist_f**2) / m),
        "jiang_dist_spec_init": math.sqrt(np.sum(dist_s**2) / m),
        "jiang_prod_of_spec": 0.5 * (log_prod - math.log(m)),
        "jiang_sum_of_spec": 0.5 * (math.log(3) + log_prod / 3 - math.log(m)),
        "jiang_prod_of_fro": 0.5 * (float(np.sum(np.log(fro**2))) - math.log(m)),
        "jiang_spec_orig": 0.5 * (log_prod - 2 * math.log(gamma) + math.log(np.sum(fro**2 / spec**2)) - math.log(m)),
        "jiang_spec_init": 0.5 * (log_prod - 2 * math.log(gamma) + math.log(np.sum(dist_f**2 / spec**2)) - math.log(m)),
    }
    for name, value in expected.items():
        res = REGISTRY[name].func(ctx)
        assert res.status == "predictor" and res.value == pytest.approx(value, rel=1e-10), name
    reshaped = make_ctx(model, x, y, 10, (64,), bound={"jiang": {"spectral_norm": "reshaped"}})
    assert jiang_norms.jiang_prod_of_spec(reshaped).value == pytest.approx(expected["jiang_prod_of_spec"], rel=1e-10)


def test_init_measures_need_init(digits_mlp):
    model, _, (x, y, _, _) = digits_mlp
    ctx = make_ctx(model, x, y, 10, (64,))
    for name in NEEDS_INIT:
        res = REGISTRY[name].func(ctx)
        assert res.status == "not-applicable" and res.value is None and "initialization" in res.reason
    for name in set(JIANG) - set(NEEDS_INIT):
        assert REGISTRY[name].func(ctx).status == "predictor", name
    wrong = make_ctx(model, x, y, 10, (64,), init_state={"fc.weight": torch.zeros(10, 32)})
    res = jiang_norms.jiang_fro_dist(wrong)
    assert res.status == "not-applicable" and "does not fit" in res.reason


def test_path_norm_equals_sum_over_paths():
    torch.manual_seed(0)
    model = MLP(input_dim=3, num_classes=2, width=4, depth=1, bias=False).eval()
    W1, W2 = model.features[0].weight.detach().double(), model.fc.weight.detach().double()
    brute = sum(float(W2[k, j] ** 2 * W1[j, i] ** 2) for i in range(3) for j in range(4) for k in range(2))
    x, y = random_data(50, (3,), 2)
    ctx = make_ctx(model, x, y, 2, (3,))
    res = jiang_norms.jiang_path_norm(ctx)
    assert res.details["measure"] == pytest.approx(brute, rel=1e-12)
    assert res.value == pytest.approx(math.sqrt(brute / 50), rel=1e-12)
    # with biases: every parameter squared, f = W2²(W1²·1 + b1²) + b2² summed over outputs
    torch.manual_seed(1)
    biased = MLP(input_dim=3, num_classes=2, width=4, depth=1).eval()
    p = {k: v.double() for k, v in biased.state_dict().items()}
    hidden = p["features.0.weight"] ** 2 @ torch.ones(3, dtype=torch.float64) + p["features.0.bias"] ** 2
    expected = float((p["fc.weight"] ** 2 @ hidden + p["fc.bias"] ** 2).sum())
    assert jiang_norms.jiang_path_norm(make_ctx(biased, x, y, 2, (3,))).details["measure"] == pytest.approx(expected, rel=1e-12)


def test_path_norm_folds_batchnorm_and_leaves_model_untouched():
    model = conv_bn_chain()
    before = copy.deepcopy(model.state_dict())
    net = extract_network(model, (2, 6, 6))
    value = jiang_norms.path_norm(model, net)
    h = torch.ones(1, 2, 6, 6, dtype=torch.float64)
    for op in net.ops:  # the folded chain with squared weights and biases
        h = h.reshape((1, *op.input_shape))
        h = op.apply(h, op.weight**2, op.bias**2 if op.bias is not None else None) if hasattr(op, "weight") else op.module(h)
    assert value == pytest.approx(float(h.sum()), rel=1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(not mod._forward_hooks for mod in model.modules())
    assert type(model[1]) is nn.BatchNorm2d
