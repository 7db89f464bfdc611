"""Recommendation models.

Federated models implement :class:`FederatedModel` (local state, global
parameters, a score function) and go through the cohort engine
(:mod:`fedrec.engine`): the shipped ones are in :data:`FEDERATED_MODELS`, and
``path/to/file.py:ClassName`` names a user's own.  One family serves both settings:
:class:`Centralized` makes any of them the centralized baseline of ``fedrec baseline``
(the same score function, every user's local state in one table).
"""

from __future__ import annotations

import inspect

import numpy as np

from fedrec.models.base import Recommender
from fedrec.models.centralized import Centralized
from fedrec.models.federated import FEDERATED_MODELS, FedGMF, FedMF, FedMLP, FedNeuMF, TwoTower
from fedrec.models.losses import LOSSES, bce_loss, bpr_loss
from fedrec.models.protocol import FederatedModel
from fedrec.models.sequential import SEQUENTIAL_MODELS, GRU4Rec, SASRec, SequentialModel, is_sequential
from fedrec.plugins import load_class

__all__ = ["Recommender", "Centralized", "bpr_loss", "bce_loss", "LOSSES",
           "FederatedModel", "FEDERATED_MODELS", "FedMF", "FedGMF", "FedMLP", "FedNeuMF", "TwoTower",
           "federated_model_class", "build_federated_model", "wants_item_features",
           "SequentialModel", "SASRec", "GRU4Rec", "SEQUENTIAL_MODELS", "is_sequential", "SHIPPED_MODELS"]

#: every shipped model of the federated path: scored from local vectors, or from histories
SHIPPED_MODELS = {**FEDERATED_MODELS, **SEQUENTIAL_MODELS}


def federated_model_class(spec: str) -> type[FederatedModel]:
    """The class named by ``spec``: a shipped name (``mf``, ``gmf``, ``mlp``, ``neumf``,
    ``two-tower``, ``sasrec``, ``gru4rec``), ``path/to/file.py:ClassName`` (a user's own
    model) or ``package.module:ClassName`` (an importable one, such as the shipped example
    ``fedrec_app.examples.my_model:Bilinear``)."""
    return load_class(spec, what="model", shipped=SHIPPED_MODELS, base=FederatedModel)


def wants_item_features(spec: str) -> bool:
    """Whether the model named by ``spec`` ranks items through their features
    (its constructor takes ``item_features``)."""
    return "item_features" in inspect.signature(federated_model_class(spec).__init__).parameters


def build_federated_model(spec: str, n_items: int, *, item_features: np.ndarray | None = None,
                          **kwargs) -> FederatedModel:
    """Instantiate a federated model; keyword arguments the class does not accept are
    left out (``item_features`` goes only to models that take it)."""
    cls = federated_model_class(spec)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = dict(kwargs)
    if item_features is not None:
        kw["item_features"] = item_features
    if not takes_any:
        kw = {k: v for k, v in kw.items() if k in params}
    try:
        model = cls(n_items, **kw)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"model {spec!r}: building it failed: {type(e).__name__}: {e}") from None
    model.check()
    return model
