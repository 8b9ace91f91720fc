"""Guards at the model's output, shared by ``run`` and the offline path.

A value the decoder accepts (any finite float32) can still overflow in scaling or in the
reconstruction error: a point of 3e38 on a series around 10 gives an error of inf. Such a
score must not reach a decision method (one inf or NaN poisons a key's tail statistics for
a whole history) nor an event. Callers drop those windows before deciding and count them.
"""

from __future__ import annotations

import numpy as np


def finite_rows(scores: np.ndarray) -> np.ndarray | None:
    """Indices of the finite entries of ``scores`` (N,), or None when all are finite.

    None is the common case and costs one pass, no copy. Use it as
    ``keep = finite_rows(scores)``, then, when ``keep is not None``, decide on
    ``scores[keep]`` (and the matching keys and windows) only.
    """
    ok = np.isfinite(scores)
    if ok.all():
        return None
    return np.flatnonzero(ok)
