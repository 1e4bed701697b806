"""CKA family, Procrustes, RSA and retrieval against references, golden values and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transferlens.analysis.alignment import (
    procrustes_distance,
    retrieval_accuracy,
    retrieval_hits,
    rsa,
)
from transferlens.analysis.similarity import (
    center_gram,
    cka,
    cka_from_grams,
    gram_linear,
    gram_rbf,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    rbf_cka,
)

# --------------------------------------------------------------------------------------------
# Reference: Kornblith et al.'s public CKA demo code, restated in plain numpy.


def ref_gram_linear(x):
    return x.dot(x.T)


def ref_gram_rbf(x, threshold=1.0):
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


def ref_center_gram(gram, unbiased=False):
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def ref_cka(gram_x, gram_y, debiased=False):
    gram_x = ref_center_gram(gram_x, unbiased=debiased)
    gram_y = ref_center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def golden_data():
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def data(seed, n, p1, p2, related=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p1))
    Y = rng.standard_normal((n, p2))
    if related:
        Y = Y + X @ rng.standard_normal((p1, p2)) / np.sqrt(p1)
    return X, Y


shapes = st.tuples(
    st.integers(0, 10_000), st.integers(6, 40), st.integers(1, 12), st.integers(1, 12)
)
prop = settings(max_examples=25, deadline=None)

# --------------------------------------------------------------------------------------------
# Golden values (Kornblith et al. demo)


def test_golden_values_to_1e5():
    X, Y = golden_data()
    assert linear_cka(X, Y) == pytest.approx(0.55761, abs=1e-5)
    assert rbf_cka(X, Y, threshold=0.5) == pytest.approx(0.65483, abs=1e-5)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(0.51346, abs=1e-5)
    # and the restated reference code agrees with itself on the same numbers
    assert ref_cka(ref_gram_linear(X), ref_gram_linear(Y)) == pytest.approx(0.55761, abs=1e-5)
    assert ref_cka(ref_gram_rbf(X, 0.5), ref_gram_rbf(Y, 0.5)) == pytest.approx(0.65483, abs=1e-5)


def test_golden_values_match_reference_code_to_rounding():
    X, Y = golden_data()
    for debiased in (False, True):
        ref = ref_cka(ref_gram_linear(X), ref_gram_linear(Y), debiased=debiased)
        assert linear_cka(X, Y, debiased=debiased, form="features") == pytest.approx(ref, abs=1e-12)
        assert linear_cka(X, Y, debiased=debiased, form="gram") == pytest.approx(ref, abs=1e-12)
        for thr in (0.5, 1.0, 2.0):
            ref = ref_cka(ref_gram_rbf(X, thr), ref_gram_rbf(Y, thr), debiased=debiased)
            assert rbf_cka(X, Y, threshold=thr, debiased=debiased) == pytest.approx(ref, abs=1e-12)


def test_rbf_gram_matches_reference_bandwidth_convention():
    X, _ = golden_data()
    np.testing.assert_allclose(gram_rbf(X, 0.5), ref_gram_rbf(X, 0.5), atol=1e-12)
    # the median is over the full n×n matrix (zero diagonal included): using the
    # off-diagonal entries only gives a different bandwidth and a different kernel
    d = -2 * X @ X.T + (X**2).sum(1)[:, None] + (X**2).sum(1)[None, :]
    off = np.median(d[~np.eye(len(X), dtype=bool)])
    assert not np.allclose(gram_rbf(X, 0.5), np.exp(-d / (2 * 0.25 * off)), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Identities between forms and estimators


@prop
@given(shapes)
def test_feature_form_equals_gram_form(s):
    X, Y = data(*s)
    for debiased in (False, True):
        ref = ref_cka(ref_gram_linear(X), ref_gram_linear(Y), debiased=debiased)
        feat = linear_cka(X, Y, debiased=debiased, form="features")
        gram = cka_from_grams(gram_linear(X), gram_linear(Y), debiased=debiased)
        assert feat == pytest.approx(ref, abs=1e-10)
        assert gram == pytest.approx(ref, abs=1e-10)


@prop
@given(shapes)
def test_hsic_estimators_match_their_formulas(s):
    X, Y = data(*s)
    n = X.shape[0]
    K, L = ref_gram_rbf(X), ref_gram_linear(Y)
    H = np.eye(n) - np.ones((n, n)) / n
    assert hsic_biased(K, L) == pytest.approx(np.trace(K @ H @ L @ H) / (n - 1) ** 2, rel=1e-9)
    # Song et al.'s formula == U-centred inner product / (n(n-3)) (Székely & Rizzo)
    u = (ref_center_gram(K, True) * ref_center_gram(L, True)).sum() / (n * (n - 3))
    assert hsic_unbiased(K, L) == pytest.approx(u, rel=1e-8, abs=1e-12)
    np.testing.assert_allclose(center_gram(K), H @ K @ H, atol=1e-12)


def test_unbiased_hsic_is_unbiased_under_independence():
    # E[HSIC_1] = 0 for independent X, Y; the biased estimator is positive on average
    rng = np.random.default_rng(0)
    u, b = [], []
    for _ in range(300):
        K = ref_gram_linear(rng.standard_normal((8, 3)))
        L = ref_gram_linear(rng.standard_normal((8, 3)))
        u.append(hsic_unbiased(K, L))
        b.append(hsic_biased(K, L))
    assert abs(np.mean(u)) < 3 * np.std(u) / np.sqrt(len(u))
    assert np.mean(b) > 5 * np.std(b) / np.sqrt(len(b))


# --------------------------------------------------------------------------------------------
# Properties


@prop
@given(shapes)
def test_self_similarity_symmetry_and_range(s):
    X, Y = data(*s)
    for kind in ("linear", "rbf"):
        assert cka(X, X, kind=kind) == pytest.approx(1.0, abs=1e-12)
        assert cka(X, X, kind=kind, debiased=True) == pytest.approx(1.0, abs=1e-12)
        for debiased in (False, True):
            xy = cka(X, Y, kind=kind, debiased=debiased)
            assert xy == pytest.approx(cka(Y, X, kind=kind, debiased=debiased), abs=1e-12)
            assert -1 - 1e-12 <= xy <= 1 + 1e-12
        assert 0.0 <= cka(X, Y, kind=kind) <= 1.0 + 1e-12


def _orthogonal(rng, p):
    q, r = np.linalg.qr(rng.standard_normal((p, p)))
    return q * np.sign(np.diag(r))


@prop
@given(shapes)
def test_invariances(s):
    X, Y = data(*s)
    rng = np.random.default_rng(s[0] + 1)
    p1 = X.shape[1]
    transforms = {
        "orthogonal": X @ _orthogonal(rng, p1),
        "isotropic scaling": 3.7 * X,
        "translation": X + rng.standard_normal(p1) * 10,
        "feature permutation": X[:, rng.permutation(p1)],
    }
    for kind in ("linear", "rbf"):
        for debiased in (False, True):
            base = cka(X, Y, kind=kind, debiased=debiased)
            for what, Xt in transforms.items():
                got = cka(Xt, Y, kind=kind, debiased=debiased)
                assert got == pytest.approx(base, abs=1e-9), (kind, debiased, what)


def test_not_invariant_to_general_invertible_linear_map():
    X, Y = golden_data()
    A = np.diag(np.linspace(0.1, 10.0, X.shape[1]))  # invertible, not orthogonal
    A[0, 1] = 3.0
    assert np.linalg.matrix_rank(A) == X.shape[1]
    base, mapped = linear_cka(X, Y), linear_cka(X @ A, Y)
    assert abs(base - mapped) > 0.05


def test_rbf_tends_to_linear_for_wide_bandwidth():
    X, Y = golden_data()
    lin = linear_cka(X, Y)
    gaps = [abs(rbf_cka(X, Y, threshold=t) - lin) for t in (1.0, 10.0, 100.0)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-5
    assert (
        abs(rbf_cka(X, Y, threshold=100.0, debiased=True) - linear_cka(X, Y, debiased=True)) < 1e-5
    )


def test_independent_wide_gaussians_biased_high_debiased_near_zero():
    rng = np.random.default_rng(0)
    biased, debiased = [], []
    for _ in range(5):
        X, Y = rng.standard_normal((64, 2048)), rng.standard_normal((64, 2048))
        biased.append(linear_cka(X, Y))
        debiased.append(linear_cka(X, Y, debiased=True))
    assert np.mean(biased) == pytest.approx(0.97, abs=0.01)
    assert abs(np.mean(debiased)) < 0.02


# --------------------------------------------------------------------------------------------
# Input types and dtypes


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_and_low_precision_inputs(dt):
    X, Y = golden_data()
    Xt, Yt = torch.from_numpy(X).to(dt), torch.from_numpy(Y).to(dt)
    # computed in float64 on the rounded values: same as numpy float64 of those values
    Xr, Yr = Xt.double().numpy(), Yt.double().numpy()
    for debiased in (False, True):
        assert linear_cka(Xt, Yt, debiased=debiased) == pytest.approx(
            ref_cka(ref_gram_linear(Xr), ref_gram_linear(Yr), debiased), abs=1e-12
        )
        assert rbf_cka(Xt, Yt, debiased=debiased) == pytest.approx(
            ref_cka(ref_gram_rbf(Xr), ref_gram_rbf(Yr), debiased), abs=1e-12
        )
    if dt != torch.bfloat16:  # numpy has no bfloat16
        Xn = X.astype(torch.empty(0, dtype=dt).numpy().dtype)
        assert linear_cka(Xn, Yt) == pytest.approx(linear_cka(Xt, Yt), abs=1e-15)
    assert Xt.dtype == dt and not Xt.requires_grad  # inputs untouched


def test_gram_functions_return_the_input_kind():
    X, _ = golden_data()
    assert isinstance(gram_linear(X), np.ndarray)
    assert isinstance(gram_rbf(torch.from_numpy(X)), torch.Tensor)


# --------------------------------------------------------------------------------------------
# Bad input


def test_constant_features_are_fine_but_constant_matrix_is_not():
    X, Y = golden_data()
    Xc = X.copy()
    Xc[:, 3] = 7.0  # one zero-variance feature
    assert 0 < linear_cka(Xc, Y) < 1
    assert 0 < rbf_cka(Xc, Y) < 1
    with pytest.raises(ValueError, match=r"resid_post\.3: X is constant"):
        linear_cka(np.full((10, 4), 2.0), Y[:10], name="resid_post.3")
    with pytest.raises(ValueError, match="Y is constant"):
        rbf_cka(X, np.ones_like(Y))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_counted_and_named(bad):
    X, Y = golden_data()
    Y = Y.copy()
    Y[[1, 5, 9], 2] = bad
    with pytest.raises(ValueError, match=r"mlp_out\.2: Y has 3 non-finite values"):
        linear_cka(X, Y, name="mlp_out.2")
    with pytest.raises(ValueError, match="3 non-finite"):
        rbf_cka(X, Y)


def test_mismatched_rows_names_both_counts():
    X, Y = golden_data()
    with pytest.raises(ValueError, match="X has 100 rows.*Y has 90"):
        linear_cka(X, Y[:90])


def test_debiased_needs_four_examples():
    X, Y = golden_data()
    with pytest.raises(ValueError, match="at least 4 examples; got n=3"):
        linear_cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(ValueError, match="at least 4"):
        rbf_cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(ValueError, match="at least 4"):
        hsic_unbiased(np.eye(3), np.eye(3))
    assert np.isfinite(linear_cka(X[:3], Y[:3]))  # the biased estimator is defined


def test_other_bad_inputs():
    X, Y = golden_data()
    with pytest.raises(ValueError, match="must be 2-D"):
        linear_cka(X[:, 0], Y)
    with pytest.raises(ValueError, match="dtype"):
        linear_cka(np.array([["a", "b"], ["c", "d"]]), Y[:2])
    with pytest.raises(ValueError, match="RBF bandwidth is undefined"):
        rbf_cka(np.repeat(X[:2], [15, 5], axis=0), Y[:20])  # most pairs identical
    with pytest.raises(ValueError, match="not symmetric"):
        cka_from_grams(np.arange(16.0).reshape(4, 4), np.eye(4))
    with pytest.raises(ValueError, match="kind must be"):
        cka(X, Y, kind="cosine")
    with pytest.raises(ValueError, match="needs at least 4 examples; got n=3"):
        center_gram(np.eye(3), unbiased=True)  # was a zero matrix (n=2: NaN), silently


# --------------------------------------------------------------------------------------------
# Procrustes


def test_procrustes_zero_for_rotated_scaled_translated_copy():
    X, _ = golden_data()
    rng = np.random.default_rng(3)
    Y = 2.5 * X @ _orthogonal(rng, 10) + 4.0
    assert procrustes_distance(X, Y) == pytest.approx(0.0, abs=1e-12)
    Z = np.hstack([Y, np.zeros((100, 5))])  # different width: zero padding
    assert procrustes_distance(X, Z) == pytest.approx(0.0, abs=1e-12)


@prop
@given(shapes)
def test_procrustes_equals_least_squares_fit(s):
    X, Y = data(s[0], s[1], s[2], s[2])
    Xc = X - X.mean(0)
    Yc = Y - Y.mean(0)
    Xc, Yc = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    R, _ = scipy.linalg.orthogonal_procrustes(Yc, Xc)  # argmin ‖Yc R − Xc‖
    d = procrustes_distance(X, Y)
    assert d == pytest.approx(np.linalg.norm(Yc @ R - Xc) ** 2, abs=1e-10)
    assert 0.0 <= d <= 2.0


def test_procrustes_wide_features_path_matches_direct():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((20, 60)), rng.standard_normal((20, 50))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xc, Yc = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    direct = 2 - 2 * np.linalg.svd(Xc.T @ Yc, compute_uv=False).sum()
    assert procrustes_distance(X, Y) == pytest.approx(direct, abs=1e-12)


# --------------------------------------------------------------------------------------------
# RSA


def _ref_rsa(X, Y, metric):
    def rdm(A):
        if metric == "correlation":
            D = 1 - np.corrcoef(A)
        else:
            D = np.sqrt(((A[:, None, :] - A[None, :, :]) ** 2).sum(-1))
        return D[np.triu_indices(len(A), 1)]

    rx = scipy.stats.rankdata(rdm(X))
    ry = scipy.stats.rankdata(rdm(Y))
    return np.corrcoef(rx, ry)[0, 1]


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rsa_against_reference_and_identity(metric):
    X, Y = golden_data()
    assert rsa(X, X, metric=metric) == pytest.approx(1.0, abs=1e-12)
    assert rsa(X, Y, metric=metric) == pytest.approx(_ref_rsa(X, Y, metric), abs=1e-10)
    assert 0.2 < rsa(X, Y, metric=metric) < 0.9
    rng = np.random.default_rng(0)
    Z = rng.standard_normal(X.shape)
    assert abs(rsa(X, Z, metric=metric)) < 0.1


def test_rsa_invariances_and_errors():
    X, Y = golden_data()
    rng = np.random.default_rng(0)
    Q = _orthogonal(rng, 10)
    assert rsa(X @ Q * 3 + 1, Y, metric="euclidean") == pytest.approx(rsa(X, Y, metric="euclidean"))
    with pytest.raises(ValueError, match="2 rows of X are constant"):
        Xb = X.copy()
        Xb[[4, 7]] = 1.0
        rsa(Xb, Y)
    with pytest.raises(ValueError, match="metric must be"):
        rsa(X, Y, metric="cosine")


# --------------------------------------------------------------------------------------------
# Retrieval


def test_retrieval_perfect_for_parallel_rows_and_chance_for_independent():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((300, 32))
    # same space, per-language offset and scale, small noise: cosine after centring finds all
    tgt = 2.0 * src + 5.0 + 0.01 * rng.standard_normal((300, 32))
    for direction in ("src_to_tgt", "tgt_to_src", "mean"):
        assert retrieval_accuracy(src, tgt, direction=direction) == 1.0
    indep = rng.standard_normal((300, 32))
    assert retrieval_accuracy(src, indep, direction="mean") < 10 / 300  # chance is 1/300


def test_retrieval_rotated_copy_needs_alignment():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((300, 32))
    tgt = src @ _orthogonal(rng, 32) + 0.01 * rng.standard_normal((300, 32))
    # cosine compares coordinates directly, so a rotation between the two spaces defeats it ...
    assert retrieval_accuracy(src, tgt) < 0.1
    # ... and an orthogonal map fitted on the other folds (out-of-sample) recovers every pair
    for direction in ("src_to_tgt", "tgt_to_src", "mean"):
        assert retrieval_accuracy(src, tgt, direction=direction, align="procrustes") == 1.0
    indep = rng.standard_normal((300, 32))
    assert retrieval_accuracy(src, indep, align="procrustes") < 10 / 300


def test_retrieval_hits_match_brute_force_and_centring_matters():
    rng = np.random.default_rng(1)
    shared = rng.standard_normal((200, 16))
    src = shared + 0.8 * rng.standard_normal((200, 16)) + 5.0  # language offset
    tgt = shared + 0.8 * rng.standard_normal((200, 16)) - 3.0
    for center in (True, False):
        for direction, (q, k) in {"src_to_tgt": (src, tgt), "tgt_to_src": (tgt, src)}.items():
            qq, kk = (q - q.mean(0), k - k.mean(0)) if center else (q, k)
            qq = qq / np.linalg.norm(qq, axis=1, keepdims=True)
            kk = kk / np.linalg.norm(kk, axis=1, keepdims=True)
            ref = (qq @ kk.T).argmax(1) == np.arange(200)
            got = retrieval_hits(src, tgt, direction=direction, center=center, block_size=37)
            np.testing.assert_array_equal(got, ref)
    assert retrieval_accuracy(src, tgt) > retrieval_accuracy(src, tgt, center=False) + 0.1


def test_retrieval_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same space"):
        retrieval_accuracy(rng.standard_normal((10, 4)), rng.standard_normal((10, 5)))
    with pytest.raises(ValueError, match="X_src has 10 rows|X has 10 rows"):
        retrieval_accuracy(rng.standard_normal((10, 4)), rng.standard_normal((9, 4)))
    with pytest.raises(ValueError, match="direction"):
        retrieval_hits(np.eye(3), np.eye(3), direction="both")


@pytest.mark.parametrize("copy", [True, False])
def test_read_only_memmap_is_copied_unless_the_caller_only_reads(tmp_path, copy):
    import warnings

    from transferlens.analysis.validate import as_features

    path = tmp_path / "acts.npy"
    values = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(path, values)
    mm = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about read-only memory either way
        t = as_features(mm, copy_read_only=copy)
    assert np.array_equal(t.numpy(), values)
    assert np.shares_memory(t.numpy(), mm) is not copy
    if copy:
        t += 1.0  # writing to the copy must not touch the read-only store
        assert np.array_equal(np.load(path), values)


@pytest.mark.parametrize("method", ["features", "gram"])
def test_cka_matrix_reads_memmapped_layers_without_writing_them(tmp_path, method):
    from transferlens.analysis.cka_matrix import cka_matrix

    rng = np.random.default_rng(3)
    stack = rng.standard_normal((3, 40, 6)).astype(np.float32) + 5.0  # offsets: centring matters
    path = tmp_path / "layers.npy"
    np.save(path, stack)
    mm = np.load(path, mmap_mode="r")
    got = cka_matrix(list(mm), list(mm[::-1]), method=method, dtype=torch.float32)
    want = cka_matrix(list(stack), list(stack[::-1]), method=method, dtype=torch.float32)
    assert np.array_equal(got, want)
    assert np.array_equal(np.load(path), stack)  # the store is unchanged
