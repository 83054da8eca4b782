"""Tests for ncbounds.weights: certified operator norms of linear/conv layers, BatchNorm folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ncbounds.weights import (
    OperatorNorm,
    circular_conv_singular_values,
    conv_operator_norm_circular,
    conv_operator_norm_upper,
    fold_batchnorm,
    linear_operator_norm,
)

CONV = {1: nn.Conv1d, 2: nn.Conv2d}

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """The dense reference matrices are tiny; multi-threaded BLAS/ATen only adds contention (tens of
    seconds on a loaded 2-core machine). Restored after the module."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limiter = None
    else:
        limiter = threadpool_limits(limits=1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
        if limiter is not None:
            limiter.restore_original_limits()


def dense_conv_matrix(weight, input_shape, stride=1, padding=0, dilation=1, groups=1,
                      padding_mode="zeros"):
    """Materialize x ↦ conv(x) (no bias) as a dense float64 matrix of shape (out_dim, in_dim),
    by applying the PyTorch layer to every vector of the standard basis of the input space."""
    weight = torch.as_tensor(weight, dtype=torch.float64)
    d = weight.ndim - 2
    c_out, c_in = weight.shape[0], weight.shape[1] * groups
    layer = CONV[d](c_in, c_out, tuple(weight.shape[2:]), stride=stride, padding=padding,
                    dilation=dilation, groups=groups, bias=False, padding_mode=padding_mode)
    layer = layer.double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        in_dim = c_in * int(np.prod(input_shape))
        basis = torch.eye(in_dim, dtype=torch.float64).reshape(in_dim, c_in, *input_shape)
        out = layer(basis)
    return out.reshape(in_dim, -1).T.numpy()


def _sigma_max(a: np.ndarray) -> float:
    return float(np.linalg.svd(a, compute_uv=False)[0]) if a.size else 0.0


def _random_cases(n_cases: int, seed: int):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n_cases:
        d = int(rng.integers(1, 3))
        groups = int(rng.choice([1, 2]))
        c_in = groups * int(rng.integers(1, 3))
        c_out = groups * int(rng.integers(1, 3))
        kernel = tuple(int(k) for k in rng.integers(1, 6, size=d))
        dilation = int(rng.choice([1, 2]))
        padding = rng.choice(np.array([0, 1, 2, "same"], dtype=object))
        stride = 1 if padding == "same" else int(rng.choice([1, 2]))
        shape = tuple(int(s) for s in rng.integers(5, 11, size=d))
        pad = 0 if padding == "same" else int(padding)
        if padding != "same" and any(dilation * (k - 1) + 1 > s + 2 * pad
                                     for k, s in zip(kernel, shape, strict=True)):
            continue  # empty output
        w = rng.standard_normal((c_out, c_in // groups) + kernel)
        cases.append(dict(weight=w, input_shape=shape, stride=stride, padding=padding,
                          dilation=dilation, groups=groups))
    return cases


CASES = _random_cases(60, seed=2024)


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_conv_upper_bound_dominates_dense_operator(case):
    dense = dense_conv_matrix(**case)
    true = _sigma_max(dense)
    res = conv_operator_norm_upper(**case)
    assert isinstance(res, OperatorNorm)
    assert res.method == "fft-circular-embedding" and res.exact is False
    assert res.value >= true * (1 - 1e-10)
    # Not absurdly loose: the circular norm is at most Σ_t ‖W[:, :, t]‖₂ (triangle inequality),
    # computed here per group.
    w, g = case["weight"], case["groups"]
    og = w.shape[0] // g
    taps = sum(
        max(_sigma_max(w[i * og:(i + 1) * og][(slice(None), slice(None)) + t])
            for i in range(g))
        for t in np.ndindex(*w.shape[2:])
    )
    assert res.value <= taps * (1 + 1e-9) + 1e-12
    # Any larger grid is also a valid bound.
    totals = ([case["dilation"] * (k - 1) for k in w.shape[2:]] if case["padding"] == "same"
              else [2 * int(case["padding"])] * (w.ndim - 2))
    st = case["stride"]
    bigger = tuple(-(-(s + tot + 3) // st) * st
                   for s, tot in zip(case["input_shape"], totals, strict=True))
    res_big = conv_operator_norm_upper(**case, grid=bigger)
    assert res_big.value >= true * (1 - 1e-10)
    if st > 1:  # the polyphase (strided) bound never exceeds the stride-1 bound on the same grid
        unstrided = conv_operator_norm_upper(**dict(case, stride=1), grid=bigger).value
        assert res_big.value <= unstrided * (1 + 1e-12)


@pytest.mark.parametrize("case", CASES[:30], ids=[f"case{i}" for i in range(30)])
def test_circular_same_stride1_is_exact(case):
    kwargs = dict(case, padding="same", stride=1)
    dense = dense_conv_matrix(**kwargs, padding_mode="circular")
    true = _sigma_max(dense)
    exact = conv_operator_norm_circular(case["weight"], case["input_shape"], case["dilation"],
                                        case["groups"])
    assert exact.exact is True and exact.method == "fft-circular-exact"
    assert exact.value == pytest.approx(true, rel=1e-8)
    assert exact.value >= true * (1 - 1e-10)
    via_upper = conv_operator_norm_upper(**kwargs, padding_mode="circular")
    assert via_upper.exact is True and via_upper.value == exact.value
    # strided circular conv = subsampled rows of the above: exact (polyphase) when 2 divides n,
    # otherwise the stride-1 value as an upper bound
    strided = conv_operator_norm_upper(**dict(kwargs, stride=2), padding_mode="circular")
    sub = dense.reshape((case["weight"].shape[0],) + tuple(case["input_shape"]) + (-1,))
    sub = sub[(slice(None),) + (slice(None, None, 2),) * len(case["input_shape"])]
    true_strided = _sigma_max(sub.reshape(-1, dense.shape[1]))
    assert strided.value >= true_strided * (1 - 1e-10)
    if all(n % 2 == 0 for n in case["input_shape"]):
        assert strided.exact is True and strided.value == pytest.approx(true_strided, rel=1e-8)
    else:
        assert strided.exact is False and strided.value == exact.value


@pytest.mark.parametrize("stride,shape,kernel,groups,dil", [
    (3, (9,), (4,), 2, 1),
    ((2, 1), (6, 5), (3, 2), 1, 2),
    ((3, 2), (9, 8), (2, 3), 2, 1),
    (2, (8,), (5,), 1, 2),
])
def test_strided_polyphase_bound_exact_for_circular_and_valid_for_zeros(stride, shape, kernel,
                                                                         groups, dil):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal((2 * groups, 2) + kernel)
    d = len(shape)
    st = (stride,) * d if isinstance(stride, int) else stride
    dense = dense_conv_matrix(w, shape, padding="same", dilation=dil, groups=groups,
                              padding_mode="circular")
    sub = dense.reshape((w.shape[0],) + shape + (-1,))
    sub = sub[(slice(None),) + tuple(slice(None, None, si) for si in st)]
    res = conv_operator_norm_upper(w, shape, stride=stride, padding="same", dilation=dil,
                                   groups=groups, padding_mode="circular")
    assert res.exact is True
    assert res.value == pytest.approx(_sigma_max(sub.reshape(-1, dense.shape[1])), rel=1e-8)
    pad = tuple(dil * (k - 1) // 2 for k in kernel)
    zero = conv_operator_norm_upper(w, shape, stride=stride, padding=pad, dilation=dil,
                                    groups=groups)
    true = _sigma_max(dense_conv_matrix(w, shape, stride=stride, padding=pad, dilation=dil,
                                        groups=groups))
    assert zero.value >= true * (1 - 1e-10)


def test_circular_singular_values_match_dense_spectrum():
    """Sedghi et al. 2019 Thm 6: the full multiset of singular values, not only the largest."""
    rng = np.random.default_rng(7)
    for groups, shape, kernel, dil in [(1, (7,), (3,), 1), (2, (5, 6), (3, 2), 2),
                                       (1, (4, 4), (5, 5), 1)]:
        w = rng.standard_normal((2 * groups, 3) + kernel)
        sv = circular_conv_singular_values(w, shape, dil, groups)
        assert sv.shape == (groups,) + shape + (min(2, 3),)
        dense = dense_conv_matrix(w, shape, padding="same", dilation=dil, groups=groups,
                                  padding_mode="circular")
        ref = np.sort(np.linalg.svd(dense, compute_uv=False))
        np.testing.assert_allclose(np.sort(sv.ravel()), ref[-sv.size:], rtol=1e-9, atol=1e-9)
        # Parseval: Σσ² = ‖conv‖_F² = N·‖w̃‖_F², w̃ the kernel folded (aliased) onto the grid
        folded = np.zeros(w.shape[:2] + shape)
        for t in np.ndindex(*kernel):
            pos = tuple((ti * dil) % n for ti, n in zip(t, shape, strict=True))
            folded[(slice(None), slice(None)) + pos] += w[(slice(None), slice(None)) + t]
        assert np.sum(sv**2) == pytest.approx(np.prod(shape) * np.sum(folded**2), rel=1e-10)


def test_reshaped_matrix_norm_can_underestimate():
    """Documented failure mode (DESIGN §6): ‖W.reshape(c_out, −1)‖₂ is NOT an upper bound.

    A 3×3 all-ones single-channel kernel has reshaped norm ‖w‖₂ = 3, but on a constant image its
    (circular) conv multiplies by Σw = 9; with zero padding the norm is close to 9 as well."""
    w = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    reshaped = float(torch.linalg.matrix_norm(w.reshape(1, -1), ord=2))
    assert reshaped == pytest.approx(3.0)
    true = _sigma_max(dense_conv_matrix(w, (10, 10), padding=1))
    assert true > 2.5 * reshaped
    assert conv_operator_norm_upper(w, (10, 10), padding=1).value >= true
    assert conv_operator_norm_circular(w, (10, 10)).value == pytest.approx(9.0, rel=1e-12)
    # and in random layers it happens often
    under = 0
    for case in CASES:
        w = case["weight"]
        if case["groups"] != 1:
            continue
        r = _sigma_max(w.reshape(w.shape[0], -1))
        under += r < _sigma_max(dense_conv_matrix(**case)) * (1 - 1e-6)
    assert under >= 1


def test_padding_variants_and_input_shape_forms():
    rng = np.random.default_rng(3)
    w = torch.tensor(rng.standard_normal((3, 2, 4, 3)), dtype=torch.float32)  # float32 accepted
    shape = (6, 7)
    a = conv_operator_norm_upper(w, shape, padding="same").value
    # only the total padding matters: 'same' for k=(4,3) is (1,2),(1,1)
    b = conv_operator_norm_upper(w, (2,) + shape, padding=((1, 2), (1, 1))).value
    assert a == b
    assert a >= _sigma_max(dense_conv_matrix(w, shape, padding="same"))
    v = conv_operator_norm_upper(w, shape, padding="valid").value
    assert v == conv_operator_norm_upper(w, shape, padding=0).value
    assert v >= _sigma_max(dense_conv_matrix(w, shape, padding="valid"))
    t = conv_operator_norm_upper(w, shape, padding=(1, 2), stride=(2, 1)).value
    assert t >= _sigma_max(dense_conv_matrix(w, shape, padding=(1, 2), stride=(2, 1)))


def test_conv_input_validation():
    w = np.ones((2, 1, 3))
    with pytest.raises(ValueError, match="empty"):
        conv_operator_norm_upper(w, (2,), padding=0)
    with pytest.raises(ValueError, match="grid"):
        conv_operator_norm_upper(w, (5,), padding=1, grid=6)
    with pytest.raises(ValueError, match="multiple of the stride"):
        conv_operator_norm_upper(w, (5,), padding=1, stride=2, grid=9)
    with pytest.raises(ValueError, match="padding_mode"):
        conv_operator_norm_upper(w, (5,), padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="circular"):
        conv_operator_norm_upper(w, (5,), padding=0, padding_mode="circular")
    with pytest.raises(ValueError, match="groups"):
        conv_operator_norm_upper(np.ones((3, 1, 3)), (5,), groups=2)
    with pytest.raises(ValueError, match="channels"):
        conv_operator_norm_upper(w, (3, 5))
    with pytest.raises(ValueError):
        conv_operator_norm_upper(np.ones((2, 3)), (5,))
    with pytest.raises(ValueError, match="NaN"):
        conv_operator_norm_upper(np.full((2, 1, 3), np.nan), (5,))


@pytest.mark.parametrize("stride,padding,groups,d", [(2, 0, 1, 2), (2, 1, 2, 2), (1, 0, 1, 1), (3, 0, 2, 1)])
def test_pointwise_conv_bound_is_the_channel_matrix_norm(stride, padding, groups, d):
    """A 1×1 conv (e.g. a ResNet shortcut) applies W_g at every kept position: norm max_g σ_max(W_g)."""
    rng = np.random.default_rng(stride + padding + groups + d)
    w = rng.standard_normal((4 * groups, 3) + (1,) * d)
    shape = (7,) * d
    res = conv_operator_norm_upper(w, shape, stride=stride, padding=padding, groups=groups)
    true = _sigma_max(dense_conv_matrix(w, shape, stride=stride, padding=padding, groups=groups))
    blocks = w.reshape(groups, 4, 3)
    assert true == pytest.approx(max(np.linalg.svd(b, compute_uv=False)[0] for b in blocks), rel=1e-12)
    assert res.value >= true and res.value == pytest.approx(true, rel=1e-10)


def test_large_channel_counts_stay_tight():
    """The Gram/eigvalsh route keeps the certified value within 1e-9 of the SVD value at 256 channels."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((256, 128, 3, 3)) / 30
    res = conv_operator_norm_upper(w, (6, 6), stride=2, padding=1)
    # reference: the polyphase blocks of the 8×8 grid built here with numpy's FFT and full SVDs
    grid, s = 8, 2
    arr = np.zeros((256, 128, grid, grid))
    arr[:, :, :3, :3] = w
    f = np.fft.fft2(arr)  # (o, c, 8, 8)
    m = grid // s
    blocks = []
    for a in range(m):
        for b in range(m):
            cols = [f[:, :, a + ka * m, b + kb * m] for ka in range(s) for kb in range(s)]
            blocks.append(np.concatenate(cols, axis=1) / s)
    ref = max(np.linalg.svd(blk, compute_uv=False)[0] for blk in blocks)
    assert res.value >= ref and res.value == pytest.approx(ref, rel=1e-9)


def test_linear_exact_equals_numpy_svd():
    rng = np.random.default_rng(11)
    for shape in [(1, 1), (3, 7), (10, 4), (64, 33)]:
        w = rng.standard_normal(shape)
        res = linear_operator_norm(torch.tensor(w))
        assert res.exact is True and res.method == "exact-svd"
        assert res.value == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-12)
        assert linear_operator_norm(w).value == res.value
    with pytest.raises(ValueError):
        linear_operator_norm(np.ones((2, 2, 2)))


def _randomize_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
        if bn.affine:
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen))


@pytest.mark.parametrize("kind", ["conv2d", "conv2d-nobias", "conv1d", "linear", "no-affine"])
def test_batchnorm_folding_matches_eval_forward(kind):
    gen = torch.Generator().manual_seed(5)
    if kind.startswith("conv2d"):
        layer = nn.Conv2d(3, 4, 3, padding=1, stride=2, bias=kind == "conv2d")
        bn, x = nn.BatchNorm2d(4), torch.randn(5, 3, 8, 8, generator=gen)
        fn = nn.functional.conv2d
    elif kind == "conv1d":
        layer, bn = nn.Conv1d(2, 3, 5, padding=2), nn.BatchNorm1d(3, eps=1e-3)
        x, fn = torch.randn(4, 2, 9, generator=gen), nn.functional.conv1d
    else:
        layer = nn.Linear(6, 5)
        bn = nn.BatchNorm1d(5, affine=kind == "linear")
        x, fn = torch.randn(7, 6, generator=gen), None
    _randomize_bn(bn, gen)
    model = nn.Sequential(layer, bn).double().eval()
    x = x.double()
    with torch.no_grad():
        expected = model(x)
        w, b = fold_batchnorm(layer.weight, layer.bias, bn)
        assert w.dtype == b.dtype == torch.float64
        if fn is None:
            got = nn.functional.linear(x, w, b)
        else:
            got = fn(x, w, b, stride=layer.stride, padding=layer.padding)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_batchnorm_folding_rejects_bad_inputs():
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="running"):
        fold_batchnorm(torch.ones(4, 3, 3, 3), None, bn)
    with pytest.raises(ValueError, match="features"):
        fold_batchnorm(torch.ones(5, 3, 3, 3), None, nn.BatchNorm2d(4))
    with pytest.raises(TypeError):
        fold_batchnorm(torch.ones(4, 3), None, nn.LayerNorm(4))


def test_network_norms_fall_back_to_the_cpu_when_the_device_fails(monkeypatch):
    """A device without memory or complex eigensolvers must not turn a certified norm into an error."""
    from ncbounds.weights import network as network_module

    layer = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    rng = np.random.default_rng(2)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(rng.standard_normal((4, 3, 3, 3))))
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(4 * 36, 2))
    cpu = network_module.extract_network(model, (3, 6, 6)).layers[0].op_norm
    calls = []
    from ncbounds.weights import layer_norms

    real = layer_norms.conv_operator_norm_upper

    def flaky(*args, device=None, **kwargs):
        calls.append(device)
        if device is not None:
            raise RuntimeError("out of memory on the pretend device")
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(layer_norms, "conv_operator_norm_upper", flaky)
    net = network_module.extract_network(model, (3, 6, 6))
    net.layers[0].norm_device = torch.device("meta")
    again = network_module._operator_norm(net.layers[0], net.layers[0].weight)
    assert calls[-2:] == [torch.device("meta"), None]
    assert again.value == cpu.value
    true = _sigma_max(dense_conv_matrix(layer.weight.detach().numpy(), (6, 6), padding=1))
    assert again.value >= true
