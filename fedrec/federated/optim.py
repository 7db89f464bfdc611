"""Server optimisers over the aggregated update (FedOpt: Reddi et al. 2021).

Pure functions over dicts of numpy arrays.  ``update`` is the aggregated client
pseudo-gradient in the *ascent* direction (clients send ``-gradient`` or
``new - old``); ``sgd`` with ``lr=1`` is plain FedAvg.

Why not Flower's ``FedAdam``/``FedYogi``/``FedAvgM`` (``flwr.serverapp.strategy``):
those are strategies that average *and* step in one ``aggregate_train``.
Flower's DP wrappers (``DifferentialPrivacy*Clipping``) wrap a strategy and add
their Gaussian noise to what the wrapped strategy returns
(``dp_fixed_clipping.py``: ``self.strategy.aggregate_train(...)`` then
``_add_noise_to_aggregated_arrays``).  Wrapping ``FedAdam`` would put the noise
*after* the optimiser: Adam's moments, and with them every later parameter,
would be computed from the un-noised sum, which no epsilon covers.  fedrec wraps
a plain sum (``SumOfUpdates``) with Flower's wrapper and applies this optimiser
to the noised sum, so the optimiser is post-processing of the DP release.  The
same step also serves item-wise scaling, frozen cold-item rows, the checkpoint
of its moments on resume, and SecAgg+.  ``tests/test_strategy.py`` checks it
against ``torch.optim.Adam``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["OptState", "server_step"]


@dataclass
class OptState:
    """Moments of the server optimiser (empty for SGD) and its step count."""

    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    t: int = 0


def server_step(
    params: dict[str, np.ndarray],
    update: dict[str, np.ndarray],
    state: OptState,
    *,
    opt: str,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[dict[str, np.ndarray], OptState]:
    """Apply one server step; returns new params and new state (inputs untouched).

    ``adam`` and ``yogi`` use bias-corrected moments (Adam: Kingma & Ba 2015;
    Yogi: Zaheer et al. 2018); ``sgd`` is ``params + lr * update``; ``none`` leaves the
    parameters (a frozen global model) and the state as they are.
    """
    if set(update) != set(params):
        raise KeyError(f"update keys {sorted(update)} do not match parameters {sorted(params)}")
    if opt == "none":
        return {k: x.copy() for k, x in params.items()}, state
    t = state.t + 1
    new_params, m, v = {}, {}, {}
    for k, x in params.items():
        d = update[k].astype(x.dtype, copy=False)
        if opt == "sgd":
            new_params[k] = x + lr * d
            continue
        mk = state.m.get(k, np.zeros_like(x))
        vk = state.v.get(k, np.zeros_like(x))
        mk = beta1 * mk + (1 - beta1) * d
        d2 = d * d
        if opt == "adam":
            vk = beta2 * vk + (1 - beta2) * d2
        elif opt == "yogi":
            vk = vk - (1 - beta2) * d2 * np.sign(vk - d2)
        else:
            raise ValueError(f"unknown server optimiser {opt!r}; choose 'adam', 'yogi', 'sgd' or 'none'")
        m_hat = mk / (1 - beta1**t)
        v_hat = vk / (1 - beta2**t)
        new_params[k] = x + lr * m_hat / (np.sqrt(v_hat) + eps)
        m[k], v[k] = mk, vk
    return new_params, OptState(m=m, v=v, t=t)
