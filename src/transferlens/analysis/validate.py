"""Validation of activation matrices, shared by the representation analyses.

An activation matrix is ``n × p``: rows are examples, columns features; numpy arrays and torch
tensors of any real dtype are accepted. Every check raises one ``ValueError`` line that names
the argument (``"X"``, ``"A[3]"``) and, when given, the data (a site such as
``"resid_post.3"``).
"""

from __future__ import annotations

import warnings
from typing import TypeAlias

import numpy as np
import torch

ArrayLike: TypeAlias = "np.ndarray | torch.Tensor"

__all__ = ["ArrayLike", "as_features", "check_all_finite", "check_pair"]


def _where(name: str | None) -> str:
    return f"{name}: " if name else ""


def _to_tensor(x: ArrayLike, arg: str, name: str | None) -> tuple[torch.Tensor, bool]:
    """The tensor, and whether it shares memory that must not be written (a read-only array,
    such as a memory-mapped activation store)."""
    read_only = False
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.float64)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(
                f"{_where(name)}{arg} has dtype {arr.dtype}; pass a numeric array of activations"
            )
        arr = np.ascontiguousarray(arr)
        read_only = not arr.flags.writeable
        with warnings.catch_warnings():  # torch warns about read-only arrays; handled below
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr)
    if t.is_complex():
        raise ValueError(f"{_where(name)}{arg} is complex; pass real-valued activations")
    return t, read_only


def as_features(
    x: ArrayLike,
    *,
    arg: str = "X",
    name: str | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    check_finite: bool = True,
    copy_read_only: bool = True,
) -> torch.Tensor:
    """Validate an ``n × p`` activation matrix and return it as a detached tensor.

    Args:
        x: ``n × p`` array or tensor (rows = examples).
        arg: what the caller calls this argument (``"X"``, ``"A[3]"``), used in messages.
        name: optional label of the data (a site such as ``"resid_post.3"``) put in front of
            every error message.
        dtype: floating dtype of the returned tensor.
        device: device of the returned tensor; ``None`` keeps a tensor's device (numpy -> CPU).
        check_finite: check for NaN/inf (callers that sum every value anyway pass ``False``
            and call :func:`check_all_finite` with that sum).
        copy_read_only: copy read-only memory (a memory-mapped store) that the conversion
            would otherwise hand out as is; callers that only read the tensor pass ``False``.

    Returns:
        ``n × p`` tensor of ``dtype``.

    Raises:
        ValueError: not 2-D, fewer than 2 rows or no columns, non-numeric, or containing
            NaN/inf (the message gives the count).
    """
    t, read_only = _to_tensor(x, arg, name)
    if t.ndim != 2:
        raise ValueError(
            f"{_where(name)}{arg} must be 2-D (examples × features); got shape {tuple(t.shape)}"
        )
    if t.shape[0] < 2 or t.shape[1] < 1:
        raise ValueError(
            f"{_where(name)}{arg} has shape {tuple(t.shape)}; need at least 2 examples (rows) "
            "and 1 feature (column)"
        )
    src = t.data_ptr()
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    if copy_read_only and read_only and t.data_ptr() == src:  # no writable view of it
        t = t.clone()
    if check_finite:
        check_all_finite(t, arg, name)
    return t


def check_all_finite(
    t: torch.Tensor, arg: str, name: str | None, total: torch.Tensor | None = None
) -> None:
    """Raise the one-line non-finite error for ``t`` if it holds NaN/inf.

    ``total`` is a sum over ``t`` the caller has already computed (in float64); if it is
    finite, so is every value, and ``t`` is not read again.
    """
    if total is not None and bool(torch.isfinite(total).all()):
        return
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(
            f"{_where(name)}{arg} has {bad} non-finite values (NaN or inf) out of {t.numel()}; "
            "drop or repair those examples before comparing representations"
        )


def _check_not_constant(t: torch.Tensor, arg: str, name: str | None) -> None:
    if t.shape[0] > 1 and bool((t[1] != t[0]).any()):  # the usual case, decided at once
        return
    if bool((t == t[:1]).all()):
        raise ValueError(
            f"{_where(name)}{arg} is constant (all {t.shape[0]} examples have the same vector); "
            "CKA is undefined for a representation with no variance"
        )


def check_pair(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    name: str | None = None,
    min_n: int = 2,
    why: str = "",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    constant_ok: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two representations of the same examples; return them as tensors.

    Args:
        X: ``n × p1`` array or tensor.
        Y: ``n × p2`` array or tensor.
        name: label of the data for error messages (e.g. ``"resid_post.3"``).
        min_n: the fewest examples the measure needs.
        why: what needs ``min_n`` (put in the message).
        dtype: dtype of the returned tensors.
        device: device; ``None`` uses X's device (Y follows X).
        constant_ok: skip the "whole matrix is constant" check.

    Returns:
        ``(X, Y)`` as tensors of ``dtype`` on one device.

    Raises:
        ValueError: bad shape, NaN/inf, different numbers of rows, too few rows, or a constant
            matrix.
    """
    Xt = as_features(X, arg="X", name=name, dtype=dtype, device=device)
    Yt = as_features(Y, arg="Y", name=name, dtype=dtype, device=Xt.device)
    if Xt.shape[0] != Yt.shape[0]:
        raise ValueError(
            f"{_where(name)}X has {Xt.shape[0]} rows (examples) but Y has {Yt.shape[0]}; both "
            "must hold the same examples in the same order"
        )
    if Xt.shape[0] < min_n:
        raise ValueError(
            f"{_where(name)}{why or 'this measure'} needs at least {min_n} examples; got "
            f"n={Xt.shape[0]}"
        )
    if not constant_ok:
        _check_not_constant(Xt, "X", name)
        _check_not_constant(Yt, "Y", name)
    return Xt, Yt
