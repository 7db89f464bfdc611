"""The wire protocol: every key of a message between the server and the nodes, and its
codec, in one place.  Nothing else in fedrec, the app or the experiments spells a key.

Server -> node (the message's ``config`` record):

* :data:`SERVER_ROUND` - the round the message is for (rounds count on across a resume).
* :data:`MECHANISM_PREFIX` + name - the mechanism the server resolved once (the noise
  multipliers), so that no node calibrates on its own (:func:`mechanism_config`,
  :func:`mechanism_of`).
* :data:`TRAINED_ITEMS` - DP-FEST's trained items, bit-packed (:func:`trained_items_config`,
  :func:`trained_items_of`); absent when every item is trained.
* :data:`DDP_FIELD` - distributed DP: the field the server sized (the fewest and the most
  users in a sum, the bits), which a node cannot size from its own users
  (:func:`distributed_config`, :func:`distributed_of`).
* :data:`LEGACY`, :data:`PARAM_KEYS` - a message of Flower's legacy (SecAgg+) workflow,
  whose parameters travel as a list in :data:`PARAM_KEYS` order.
* :data:`ANALYTICS` - a federated-analytics query (Flower ``QUERY`` message) and the
  statistic asked for; :data:`READY` (a ``QUERY`` before round 1): start, read your
  data and answer, so that the engine's start is timed apart from round 1.

Node -> server (the reply's ``metrics`` record):

* :data:`NUM_EXAMPLES` - users trained or evaluated (a reply's weight; 0: nothing to add),
* :data:`NOISE_SHARES` - distributed DP: users whose noise shares the node's vector holds
  (its cohort, public); the server unmasks a round only over enough of them,
* :data:`DECLINED` - users out of budget, :data:`TRAIN_LOSS` (non-private runs only),
  :data:`EPSILON` - each user's interaction-level epsilon so far,
* evaluation: ``<stage>/<metric>`` sums, ``<stage>-count``, :data:`TEST_TOPK`, and
  :data:`EXPOSURE_PREFIX` + group.

Arrays: the model's global parameters by name, and :data:`ITEM_COUNTS` (item-wise
aggregation's per-item share of users); with distributed DP one array, :data:`DDP_SUM` (the
node's users' vectors summed in the field, on SecAgg+'s quantisation grid).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SERVER_ROUND", "MECHANISM_PREFIX", "MECHANISM_KEYS", "TRAINED_ITEMS", "LEGACY", "PARAM_KEYS", "ANALYTICS",
    "ANALYTICS_QUERIES", "READY", "NUM_EXAMPLES", "DECLINED", "TRAIN_LOSS", "EPSILON", "TEST_TOPK", "EXPOSURE_PREFIX",
    "ITEM_COUNTS", "NOISE_SHARES", "DDP_SUM", "DDP_FIELD", "distributed_config", "distributed_of", "ddp_order",
    "mechanism_config", "mechanism_of", "trained_items_config", "trained_items_of",
]

SERVER_ROUND = "server-round"
MECHANISM_PREFIX = "mechanism/"
MECHANISM_KEYS = ("noise-multiplier", "user-noise-multiplier")
TRAINED_ITEMS = "trained-items"
DDP_FIELD = "ddp-field"
LEGACY = "legacy"
PARAM_KEYS = "param-keys"
ANALYTICS = "analytics"
ANALYTICS_QUERIES = ("popularity",)
READY = "ready"

NUM_EXAMPLES = "num-examples"
DECLINED = "declined"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"
TEST_TOPK = "test-topk"
EXPOSURE_PREFIX = "exposure-"

NOISE_SHARES = "noise-shares"

ITEM_COUNTS = "item_counts"
DDP_SUM = "ddp-sum"


def mechanism_config(cfg) -> dict[str, float]:
    """The message-config entries of the mechanism ``cfg`` resolved (its noise multipliers)."""
    return {MECHANISM_PREFIX + k: float(getattr(cfg, k.replace("-", "_"))) for k in MECHANISM_KEYS}


def mechanism_of(message_config: dict) -> dict:
    """The mechanism the server resolved, from a message's config."""
    return {k[len(MECHANISM_PREFIX):]: v for k, v in message_config.items() if k.startswith(MECHANISM_PREFIX)}


def ddp_order(names) -> list[str]:
    """The order in which :data:`DDP_SUM` flattens the global parameters (node and server)."""
    return sorted(names)


def distributed_config(*, min_users: int, max_users: int, bits: int) -> dict:
    """Message-config entry of distributed DP's field, as the server sized it."""
    return {DDP_FIELD: f"{int(min_users)},{int(max_users)},{int(bits)}"}


def distributed_of(message_config: dict) -> dict | None:
    """Distributed DP's field from a message's config (``None``: not sent)."""
    raw = message_config.get(DDP_FIELD)
    if raw is None:
        return None
    lo, hi, bits = (int(x) for x in str(raw).split(","))
    return {"min_users": lo, "max_users": hi, "bits": bits}


def trained_items_config(mask: np.ndarray | None) -> dict:
    """Message-config entry of the items the server trains (``train-head``), bit-packed;
    empty when every item is trained."""
    return {} if mask is None else {TRAINED_ITEMS: np.packbits(np.asarray(mask, dtype=bool)).tobytes()}


def trained_items_of(message_config: dict) -> np.ndarray | None:
    """The items the server trains, from a message's config (``None``: every item)."""
    raw = message_config.get(TRAINED_ITEMS)
    return None if raw is None else np.unpackbits(np.frombuffer(bytes(raw), dtype=np.uint8)).astype(bool)
