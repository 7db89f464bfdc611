"""Recommendation models; each declares its local and global parameters."""

from fedrec.models.base import Recommender
from fedrec.models.losses import LOSSES, bce_loss, bpr_loss
from fedrec.models.mf import MF
from fedrec.models.ncf import GMF, MLP, NeuMF

__all__ = ["Recommender", "MF", "GMF", "MLP", "NeuMF", "bpr_loss", "bce_loss", "LOSSES", "build_model", "MODELS"]

MODELS = {"mf": MF, "gmf": GMF, "mlp": MLP, "neumf": NeuMF}


def build_model(name: str, n_users: int, n_items: int, **kwargs) -> Recommender:
    """Instantiate a model by name (``mf``, ``gmf``, ``mlp``, ``neumf``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return cls(n_users, n_items, **kwargs)
