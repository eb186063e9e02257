"""Input checks shared by every module: one wording for every error message."""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np
import scipy.sparse
import torch

__all__ = [
    "as_quaternions",
    "back_like",
    "check_finite",
    "check_images",
    "check_volume",
    "is_int",
    "is_real",
    "numpy_edge",
    "to_numpy",
    "to_tensor",
]


def _numeric_array(x, name: str) -> np.ndarray:
    """A real, numeric, writable, contiguous numpy array (or a clear error)."""
    if scipy.sparse.issparse(x):
        raise TypeError(
            f"Expected '{name}' to be a dense array: sparse input is not supported "
            "(images are dense); convert it with .toarray()."
        )
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - numpy raises many types
        raise TypeError(
            f"Expected '{name}' to be an array-like of numbers, got {type(x).__name__}."
        ) from exc
    if np.iscomplexobj(arr):
        raise ValueError(
            f"Complex data not supported: expected '{name}' to be real numbers."
        )
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"Expected '{name}' to be an array of numbers: {exc}"
            ) from exc
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(
            f"Expected '{name}' to be an array of numbers, got dtype {arr.dtype}."
        )
    if not np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.float16:
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # memory-mapped stacks: torch needs a copy
        arr = arr.copy()
    return arr


def to_tensor(x, name: str, *, dtype=None, device=None) -> torch.Tensor:
    """Convert array-likes to a floating torch tensor, naming ``name`` on failure."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(_numeric_array(x, name))
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t


# --------------------------------------------------------------------------------------
# The numpy edge: numpy (or lists) in, numpy out; tensors in, tensors out
# --------------------------------------------------------------------------------------

_ARRAY_LIKE = (np.ndarray, list, tuple)


def to_numpy(x) -> np.ndarray:
    """``x`` as a numpy array; a tensor is detached and copied to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def back_like(result, *originals):
    """Return ``result`` as the caller's input came in: the numpy edge of skpose.

    Parameters
    ----------
    result : torch.Tensor or tuple of torch.Tensor
        What a core function computed (a named tuple keeps its type).
    *originals
        The caller's inputs (arrays, tensors, lists).

    Returns
    -------
    torch.Tensor, numpy.ndarray or tuple of them
        ``result`` unchanged (tensors on their device) when one of ``originals`` is a
        tensor; otherwise its tensors as numpy arrays (:func:`to_numpy`, same dtype).
    """
    if any(isinstance(x, torch.Tensor) for x in originals):
        return result
    if isinstance(result, tuple):
        items = [back_like(r, *originals) for r in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    return to_numpy(result) if isinstance(result, torch.Tensor) else result


def numpy_edge(func):
    """Let a torch function take numpy arrays (or lists) and give numpy back.

    Only positional arguments count: when one is an array, list or tuple and none is a
    tensor, those are converted with :func:`to_tensor` (named after their parameter)
    and the result goes through :func:`back_like`. Otherwise ``func`` runs as is.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if any(isinstance(a, torch.Tensor) for a in args) or not any(
            isinstance(a, _ARRAY_LIKE) for a in args
        ):
            return func(*args, **kwargs)
        names = func.__code__.co_varnames
        tensors = tuple(
            to_tensor(a, name) if isinstance(a, _ARRAY_LIKE) else a
            for a, name in zip(args, names, strict=False)
        )
        return back_like(func(*tensors, **kwargs), *args)

    return wrapper


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` when ``t`` holds NaN or inf."""
    if not torch.isfinite(t).all():
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"Expected '{name}' to be finite, but it holds {n_bad} NaN or inf values."
        )


def as_quaternions(q, name: str = "quaternions", *, normalize: bool = True):
    """Validate ``(..., 4)`` quaternions; reject zero-norm and non-finite rows."""
    t = to_tensor(q, name)
    if t.ndim == 0 or t.shape[-1] != 4:
        raise ValueError(
            f"Expected '{name}' to have shape (..., 4) (w, x, y, z), got "
            f"{tuple(t.shape)}."
        )
    check_finite(t, name)
    norm = torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    if (norm < 1e-12).any():
        raise ValueError(
            f"Expected '{name}' to be non-zero quaternions; some have norm 0."
        )
    return t / norm if normalize else t


def check_images(images, name: str = "images") -> torch.Tensor:
    """Validate a stack of square images ``(n, N, N)``."""
    t = to_tensor(images, name)
    if t.ndim != 3 or t.shape[-1] != t.shape[-2]:
        raise ValueError(
            f"Expected '{name}' to have shape (n, H, W) with H == W, got "
            f"{tuple(t.shape)}."
        )
    check_finite(t, name)
    return t


def check_volume(volume, name: str = "volume") -> torch.Tensor:
    """Validate a cubic volume ``(N, N, N)`` indexed ``[z, y, x]``."""
    t = to_tensor(volume, name)
    if t.ndim != 3 or not (t.shape[0] == t.shape[1] == t.shape[2]):
        raise ValueError(
            f"Expected '{name}' to be a cubic volume of shape (N, N, N), got "
            f"{tuple(t.shape)}."
        )
    check_finite(t, name)
    return t


def is_real(x) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x) -> bool:
    """An integer (not a bool)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)
