"""Exact linear sum assignment (the Hungarian problem) for every backend.

Choice: the assignment is solved on the host by ``scipy.optimize.linear_sum_assignment`` (the
shortest augmenting path method, exact), reached through :func:`kzoo.ops.host_call.host_call`:
a direct call when eager, ``jax.pure_callback`` under ``jax.jit`` and ``tf.numpy_function`` under
``tf.function``. An in-graph solver would avoid the device-to-host copy, but an exact one is a
data-dependent loop of up to T augmentations, each a Q-long scan, which compiles to slow
sequential code on every backend; DETR's cost matrices are small (100 x a few dozen per image),
so the copy is cheap. The measured cost per DETR training step is recorded in
``docs/benchmarks.md`` (DETR, "Matching").
"""

import numpy as np
from keras import ops

from kzoo.ops.host_call import host_call


def _static_dims(cost):
    shape = tuple(cost.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"linear_sum_assignment expects a cost matrix (Q, T) or a batch of them (B, Q, T); "
            f"got shape {shape}."
        )
    q, t = shape[-2], shape[-1]
    if q is not None and t is not None and t > q:
        raise ValueError(
            f"linear_sum_assignment needs T <= Q (at most as many columns as rows, as for "
            f"targets <= queries); got cost shape {shape}. Transpose the cost matrix."
        )
    return shape


def solve_numpy(cost):
    """The numpy solver: ``cost (..., Q, T)`` -> ``rows, cols`` (``(..., T)`` int32 each).

    Per matrix, ``rows`` is ascending and ``cols[i]`` is the column assigned to ``rows[i]``, as
    scipy returns them. Raises ``ValueError`` for NaN or infinite costs.
    """
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    cost = np.asarray(cost)
    if cost.shape[-1] > cost.shape[-2]:
        raise ValueError(f"linear_sum_assignment needs T <= Q; got cost shape {cost.shape}.")
    if not np.isfinite(cost).all():
        raise ValueError(
            "The assignment cost matrix contains NaN or infinite entries; the predictions or "
            "targets it was computed from are not finite."
        )
    batch = cost.shape[:-2]
    flat = cost.reshape((int(np.prod(batch)),) + cost.shape[-2:])
    t = cost.shape[-1]
    rows = np.empty((flat.shape[0], t), np.int32)
    cols = np.empty((flat.shape[0], t), np.int32)
    for i, c in enumerate(flat):
        rows[i], cols[i] = scipy_lsa(c)
    return rows.reshape(batch + (t,)), cols.reshape(batch + (t,))


def linear_sum_assignment(cost):
    """Minimum-cost assignment of the T columns of ``cost`` to distinct rows (T <= Q).

    Works eagerly and inside ``jax.jit``, ``tf.function`` and keras ``model.fit`` on every
    backend (see the module docstring for how). No gradient flows through it.

    Args:
        cost: ``(Q, T)``, or a batch ``(B, Q, T)`` solved matrix by matrix, with ``T <= Q``.

    Returns:
        ``(rows, cols)``, int32 tensors of shape ``(T,)`` (or ``(B, T)``): like
        ``scipy.optimize.linear_sum_assignment``, ``rows`` ascending and ``cols[i]`` the column
        assigned to row ``rows[i]``.

    Example:

    ```python
    import numpy as np
    import kzoo
    cost = np.array([[4.0, 1.0], [2.0, 0.0], [3.0, 2.0]])
    rows, cols = kzoo.ops.linear_sum_assignment(cost)  # rows [0, 1], cols [1, 0]
    ```
    """
    shape = _static_dims(cost)
    cost = ops.stop_gradient(ops.convert_to_tensor(cost, "float32"))
    out_shape = shape[:-2] + (shape[-1],)
    return host_call(solve_numpy, [cost], [out_shape, out_shape], ["int32", "int32"])
