"""Linear probes: ``LinearProbe``, a scikit-learn estimator for L2-regularised multinomial
logistic regression on standardised activations, and the label encoding shared by the probing
methods. The objective and the batched solver are described in
:mod:`~transferlens.analysis.logreg` (re-exported here: ``fit_logistic``, ``LogisticFit``,
``PreparedLayers``, ``check_finite``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from transferlens.analysis.logreg import (
    LogisticFit,
    PreparedLayers,
    _as_stack,
    _site,
    check_finite,
    fit_logistic,
)

__all__ = [
    "LinearProbe",
    "LogisticFit",
    "PreparedLayers",
    "check_finite",
    "encode_labels",
    "fit_logistic",
]


def _is_missing(y: np.ndarray, missing_label: Any) -> np.ndarray:
    if y.dtype.kind == "f":
        miss = np.isnan(y)
    elif y.dtype.kind == "O":
        miss = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in y], bool)
    else:
        miss = np.zeros(y.shape, bool)
    if missing_label is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eq = y == missing_label
        miss |= np.asarray(eq, bool)
    return miss


def encode_labels(
    y: Any,
    *,
    missing_label: Any = None,
    drop_missing: bool = False,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode class labels as integer codes, finding missing labels.

    ``None`` and NaN always mean "missing"; ``missing_label`` (for example ``-1``) adds a value.

    Args:
        y: labels, shape ``(n,)``.
        missing_label: an extra label value that marks a row without a label.
        drop_missing: if False (default), any missing label raises ``ValueError``.
        name: the site, for messages.

    Returns:
        ``(codes, classes, keep)``: codes in ``[0, K)`` for the kept rows, the sorted class
        values, and a boolean mask of kept rows over the input.

    Raises:
        ValueError: missing labels (unless dropped), or fewer than two classes.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{_site(name)}: labels must be one-dimensional, got shape {arr.shape}")
    miss = _is_missing(arr, missing_label)
    if miss.any() and not drop_missing:
        raise ValueError(
            f"{_site(name)}: {int(miss.sum())} of {arr.size} rows have a missing label "
            "(None/NaN" + (f"/{missing_label!r}" if missing_label is not None else "") + "); "
            "remove them or pass drop_missing=True"
        )
    keep = ~miss
    kept = arr[keep]
    if kept.dtype.kind == "O":
        kept = kept.astype(type(kept[0])) if kept.size else kept
    classes, codes = np.unique(kept, return_inverse=True)
    if classes.size < 2:
        raise ValueError(
            f"{_site(name)}: labels have {classes.size} class; a probe needs at least 2 classes"
        )
    return codes.astype(np.int64), classes, keep


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic-regression probe on standardised inputs (scikit-learn estimator).

    At equal ``C`` its predicted probabilities equal scikit-learn's
    ``make_pipeline(StandardScaler(), LogisticRegression(C=C))`` up to the solvers' tolerance.

    Args:
        C: inverse L2 regularisation strength (scikit-learn's convention).
        max_iter: L-BFGS iterations.
        tol: stopping tolerance on max |gradient| of the mean-loss objective.
        standardize: standardise features with the training rows' mean and std.
        random_state: accepted for API compatibility; the fit is deterministic (starts at 0).
        missing_label: a label value meaning "no label" besides None/NaN (e.g. ``-1``).
        drop_missing: drop rows with a missing label instead of raising ``ValueError``.
        name: the site being probed, used in error messages.

    Attributes:
        classes_: class labels. coef_: ``(K, d)`` weights on standardised inputs
        (``(1, d)`` for two classes, as scikit-learn). intercept_. mean_, scale_: the
        standardisation. n_iter_, converged_, n_features_in_.
    """

    def __init__(
        self,
        C: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-6,
        standardize: bool = True,
        random_state: int | None = 0,
        missing_label: Any = None,
        drop_missing: bool = False,
        name: str | None = None,
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.random_state = random_state
        self.missing_label = missing_label
        self.drop_missing = drop_missing
        self.name = name

    def _check_params(self) -> None:
        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise ValueError(f"C must be a positive number, got {self.C!r}")
        if not (isinstance(self.max_iter, int) and self.max_iter > 0):
            raise ValueError(f"max_iter must be a positive int, got {self.max_iter!r}")

    def _prepare(self, X: Any, y: Any, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        X = validate_data(
            self, X, reset=reset, dtype=np.float64, ensure_all_finite=False, ensure_min_samples=2
        )
        check_finite(X, self.name)
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        codes, classes, keep = encode_labels(
            y, missing_label=self.missing_label, drop_missing=self.drop_missing, name=self.name
        )
        check_classification_targets(y[keep])
        self.classes_ = classes
        return X[keep], codes

    def _store(self, fit: LogisticFit, li: int, K: int) -> None:
        W = fit.coef[li, 0].numpy().T.copy()  # (K, d)
        b = fit.intercept[li, 0].numpy().copy()
        if K == 2:  # scikit-learn's binomial parametrisation: one vector, logit of class 1
            W, b = W[1:] - W[:1], b[1:] - b[:1]
        self.coef_, self.intercept_ = W, b
        self.mean_ = fit.mean[li, 0].numpy().copy()
        self.scale_ = fit.scale[li, 0].numpy().copy()
        self.n_iter_ = int(fit.n_iter[li, 0])
        self.converged_ = bool(fit.converged[li, 0])
        if not self.converged_:
            warnings.warn(
                f"{_site(self.name)}: L-BFGS did not converge in {self.max_iter} "
                "iterations; increase max_iter",
                ConvergenceWarning,
                stacklevel=3,
            )

    def fit(self, X: Any, y: Any) -> LinearProbe:
        """Fit on ``X`` ``(n, d)`` and labels ``y`` ``(n,)``; returns self."""
        self._check_params()
        Xk, codes = self._prepare(X, y, reset=True)
        fit = fit_logistic(
            Xk,
            codes,
            n_classes=len(self.classes_),
            C=float(self.C),
            standardize=self.standardize,
            tol=self.tol,
            max_iter=self.max_iter,
            name=self.name,
        )
        self._store(fit, 0, len(self.classes_))
        return self

    def fit_layers(self, X: Any, y: Any) -> list[LinearProbe]:
        """Fit one probe per layer of ``X`` (``L × n × d``) in one batched solve.

        Returns:
            ``L`` fitted copies of this estimator, equal to fitting each layer alone.
        """
        from sklearn.base import clone

        self._check_params()
        X = _as_stack(X)
        first = clone(self)
        _, codes = first._prepare(np.asarray(X[0]), y, reset=True)
        keep = encode_labels(
            np.asarray(y),
            missing_label=self.missing_label,
            drop_missing=self.drop_missing,
            name=self.name,
        )[2]
        stack = [np.asarray(X[i], dtype=np.float64)[keep] for i in range(len(X))]
        for i, x in enumerate(stack):
            check_finite(x, f"{self.name or 'layer'} {i}")
        K = len(first.classes_)
        fit = fit_logistic(
            stack,
            codes,
            n_classes=K,
            C=float(self.C),
            standardize=self.standardize,
            tol=self.tol,
            max_iter=self.max_iter,
            name=self.name,
        )
        out = []
        for li in range(len(stack)):
            est = clone(self)
            est.classes_ = first.classes_
            est.n_features_in_ = first.n_features_in_
            est._store(fit, li, K)
            out.append(est)
        return out

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(n, K)``; ``(n,)`` (logit of class 1) for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite=False)
        check_finite(X, self.name)
        Z = ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        return Z[:, 0] if Z.shape[1] == 1 else Z

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities ``(n, K)``, columns in ``classes_`` order."""
        Z = self.decision_function(X)
        if Z.ndim == 1:
            Z = np.stack([np.zeros_like(Z), Z], axis=1)
        Z = Z - Z.max(1, keepdims=True)
        return Z - np.log(np.exp(Z).sum(1, keepdims=True))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, K)``, columns in ``classes_`` order."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class for each row."""
        Z = self.decision_function(X)
        idx = (Z > 0).astype(int) if Z.ndim == 1 else Z.argmax(1)
        return self.classes_[idx]
