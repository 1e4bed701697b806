"""Second opinions next to CKA, and cross-lingual retrieval on parallel rows.

* :func:`procrustes_distance` — orthogonal Procrustes distance (Ding, Denain & Steinhardt 2021);
* :func:`rsa` — representational similarity analysis: Spearman correlation of the upper
  triangles of the two representational dissimilarity matrices;
* :func:`retrieval_accuracy` / :func:`retrieval_hits` — translation retrieval: row ``i`` of one
  language should find row ``i`` of the other as its nearest neighbour by cosine.

Inputs follow :mod:`transferlens.analysis.similarity`: ``n × p`` arrays or tensors, rows are
examples, computation in float64 by default.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from transferlens.analysis.validate import ArrayLike, _where, check_pair

__all__ = ["procrustes_distance", "retrieval_accuracy", "retrieval_hits", "rsa"]


def _center_unit(t: torch.Tensor) -> torch.Tensor:
    t = t - t.mean(dim=0, keepdim=True)
    return t / torch.linalg.matrix_norm(t)


def procrustes_distance(
    X: ArrayLike, Y: ArrayLike, *, name: str | None = None, dtype: torch.dtype = torch.float64
) -> float:
    """Orthogonal Procrustes distance, Ding et al. (2021) convention.

    Both matrices are column-centred and scaled to unit Frobenius norm; then
    ``d = min_Q ‖X - YQ‖²_F = 2 - 2‖XᵀY‖_*`` over orthogonal ``Q`` (``‖·‖_*`` is the nuclear
    norm, the sum of singular values). With ``p1 != p2`` the narrower matrix is zero-padded to
    the wider one's width first, as in Ding et al.; padding leaves ``‖XᵀY‖_*`` unchanged.
    ``d`` lies in ``[0, 2]``: 0 for representations equal up to rotation, translation and
    isotropic scale. This is the squared distance; its square root is a metric.

    Args:
        X: ``n × p1`` activations.
        Y: ``n × p2`` activations of the same examples.
        name: label of the data for error messages.
        dtype: compute dtype.

    Returns:
        The distance ``d`` (rounding below 0 is clipped to 0).
    """
    Xt, Yt = check_pair(X, Y, name=name, dtype=dtype)
    Xc, Yc = _center_unit(Xt), _center_unit(Yt)
    n, p1 = Xc.shape
    p2 = Yc.shape[1]
    if n < min(p1, p2):
        # XᵀY has rank <= n: with Xᵀ = Q₁R₁ and Yᵀ = Q₂R₂ (thin QR), ‖XᵀY‖_* = ‖R₁R₂ᵀ‖_*.
        r1 = torch.linalg.qr(Xc.T, mode="r").R
        r2 = torch.linalg.qr(Yc.T, mode="r").R
        nuclear = torch.linalg.svdvals(r1 @ r2.T).sum()
    else:
        nuclear = torch.linalg.svdvals(Xc.T @ Yc).sum()
    return max(0.0, float(2.0 - 2.0 * nuclear))


def rsa(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    metric: Literal["correlation", "euclidean"] = "correlation",
    name: str | None = None,
) -> float:
    """Representational similarity analysis (Kriegeskorte et al. 2008).

    Builds each representation's dissimilarity matrix over the ``n`` examples
    (``"correlation"``: 1 − Pearson correlation between two examples' feature vectors;
    ``"euclidean"``: Euclidean distance) and returns the Spearman rank correlation of their
    ``n(n-1)/2`` upper-triangle entries (ties get average ranks). Memory grows as ``n²``:
    subsample rows for ``n`` beyond ~10k.

    Args:
        X: ``n × p1`` activations (``n >= 3``).
        Y: ``n × p2`` activations of the same examples.
        metric: ``"correlation"`` or ``"euclidean"``.
        name: label of the data for error messages.

    Returns:
        Spearman's rho in ``[-1, 1]``.

    Raises:
        ValueError: unknown metric; with ``"correlation"``, examples whose feature vector is
            constant (their correlation is undefined); a dissimilarity matrix with all entries
            equal.
    """
    if metric not in ("correlation", "euclidean"):
        raise ValueError(f"metric must be 'correlation' or 'euclidean'; got {metric!r}")
    Xt, Yt = check_pair(X, Y, name=name, min_n=3, why="RSA")
    rdms = []
    for arg, t in (("X", Xt), ("Y", Yt)):
        a = t.cpu().numpy()
        if metric == "correlation":
            flat = int((a == a[:, :1]).all(axis=1).sum())
            if flat:
                raise ValueError(
                    f"{_where(name)}{flat} rows of {arg} are constant across features, so their "
                    "correlation distance is undefined; use metric='euclidean' or drop them"
                )
        d = pdist(a, metric=metric)
        if np.all(d == d[0]):
            raise ValueError(
                f"{_where(name)}all dissimilarities of {arg} are equal; RSA is undefined"
            )
        rdms.append(d)
    return float(spearmanr(rdms[0], rdms[1]).statistic)


def _unit_rows(t: torch.Tensor, center: bool, arg: str, name: str | None) -> torch.Tensor:
    if center:
        t = t - t.mean(dim=0, keepdim=True)
    norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    zero = int((norms == 0).sum())
    if zero:
        raise ValueError(
            f"{_where(name)}{zero} rows of {arg} are zero"
            f"{' after mean centring' if center else ''}, so their cosine is undefined"
        )
    return t / norms


def _fold_hits(S: torch.Tensor, T: torch.Tensor, queries: torch.Tensor, block_size: int):
    """Hits of query rows ``queries`` of ``S`` (already mapped) against all rows of ``T``."""
    out = torch.empty(queries.numel(), dtype=torch.bool, device=S.device)
    for lo in range(0, queries.numel(), max(1, block_size)):
        q = queries[lo : lo + block_size]
        sim = S[q] @ T.T
        rows = torch.arange(q.numel(), device=S.device)
        own = sim[rows, q].clone()
        sim[rows, q] = -torch.inf
        out[lo : lo + q.numel()] = own > sim.max(dim=1).values
    return out


def retrieval_hits(
    X_src: ArrayLike,
    X_tgt: ArrayLike,
    *,
    direction: Literal["src_to_tgt", "tgt_to_src"] = "src_to_tgt",
    center: bool = True,
    align: Literal["none", "procrustes"] = "none",
    folds: int = 5,
    block_size: int = 1024,
    name: str | None = None,
) -> np.ndarray:
    """Per-row translation retrieval outcome on parallel rows.

    Each matrix is mean-centred over its own rows (per-language centring; ``center=False``
    turns it off), rows are scaled to unit length and query row ``i`` is a hit when its cosine
    with row ``i`` of the other side is strictly greater than with every other row (ties count
    as misses). Cosine retrieval assumes both sides live in one space (two languages in one
    model): it is invariant to per-language offsets and scale, not to a rotation between the
    sides. ``align="procrustes"`` first maps the query side by an orthogonal map fitted on the
    *other* folds' pairs (rows ``i % folds != f`` for fold ``f``), so every row is scored
    out-of-sample; use it for two spaces (e.g. two models) that may differ by a rotation.

    Args:
        X_src: ``n × p`` source-language activations.
        X_tgt: ``n × p`` target-language activations; row ``i`` translates row ``i`` of src.
        direction: ``"src_to_tgt"`` queries with src rows, ``"tgt_to_src"`` with tgt rows.
        center: subtract each language's mean vector first.
        align: ``"none"`` or ``"procrustes"`` (cross-fitted orthogonal alignment).
        folds: number of folds for ``align="procrustes"`` (at least 2).
        block_size: query rows per block of the similarity matrix.
        name: label of the data for error messages.

    Returns:
        Boolean array of length ``n`` (``True`` = row retrieved its translation).
    """
    if direction not in ("src_to_tgt", "tgt_to_src"):
        raise ValueError(f"direction must be 'src_to_tgt' or 'tgt_to_src'; got {direction!r}")
    if align not in ("none", "procrustes"):
        raise ValueError(f"align must be 'none' or 'procrustes'; got {align!r}")
    S, T = check_pair(X_src, X_tgt, name=name, constant_ok=True)
    if S.shape[1] != T.shape[1]:
        raise ValueError(
            f"{_where(name)}X_src has {S.shape[1]} features but X_tgt has {T.shape[1]}; cosine "
            "retrieval needs vectors in the same space"
        )
    S, T = _unit_rows(S, center, "X_src", name), _unit_rows(T, center, "X_tgt", name)
    if direction == "tgt_to_src":
        S, T = T, S
    n = S.shape[0]
    idx = torch.arange(n, device=S.device)
    if align == "none":
        return _fold_hits(S, T, idx, block_size).cpu().numpy()
    if not 2 <= folds <= n // 2:
        raise ValueError(f"folds must be between 2 and n/2 = {n // 2}; got {folds}")
    hits = torch.empty(n, dtype=torch.bool, device=S.device)
    for f in range(folds):
        test, train = idx[idx % folds == f], idx[idx % folds != f]
        u, _, vt = torch.linalg.svd(S[train].T @ T[train], full_matrices=False)
        mapped = S @ (u @ vt)  # argmin_Q ‖S_train Q − T_train‖ over orthogonal Q
        mapped = mapped / torch.linalg.vector_norm(mapped, dim=1, keepdim=True)
        hits[test] = _fold_hits(mapped, T, test, block_size)
    return hits.cpu().numpy()


def retrieval_accuracy(
    X_src: ArrayLike,
    X_tgt: ArrayLike,
    *,
    direction: Literal["src_to_tgt", "tgt_to_src", "mean"] = "src_to_tgt",
    center: bool = True,
    align: Literal["none", "procrustes"] = "none",
    folds: int = 5,
    name: str | None = None,
) -> float:
    """Translation retrieval accuracy on parallel rows (see :func:`retrieval_hits`).

    Chance level is ``1/n``. ``direction="mean"`` averages the two directions.

    Args:
        X_src: ``n × p`` source-language activations.
        X_tgt: ``n × p`` target-language activations, row-aligned with ``X_src``.
        direction: ``"src_to_tgt"``, ``"tgt_to_src"`` or ``"mean"``.
        center: per-language mean centring before the cosine.
        align: ``"none"`` or ``"procrustes"`` (cross-fitted orthogonal map first).
        folds: folds for ``align="procrustes"``.
        name: label of the data for error messages.

    Returns:
        Fraction of rows that retrieve their own translation.
    """
    kw = {"center": center, "align": align, "folds": folds, "name": name}
    if direction == "mean":
        a = retrieval_hits(X_src, X_tgt, direction="src_to_tgt", **kw)
        b = retrieval_hits(X_src, X_tgt, direction="tgt_to_src", **kw)
        return float((a.mean() + b.mean()) / 2)
    return float(retrieval_hits(X_src, X_tgt, direction=direction, **kw).mean())
