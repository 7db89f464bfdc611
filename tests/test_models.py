"""Models: local/global declaration, global state round trip, losses."""

import numpy as np
import pytest
import torch

from fedrec.models import Centralized, bce_loss, bpr_loss, build_federated_model


def _centralized(name: str, n_users: int, n_items: int, *, dim: int, seed: int = 0) -> Centralized:
    return Centralized(build_federated_model(name, n_items, dim=dim, seed=seed), n_users, seed=seed)


@pytest.mark.parametrize("name", ["mf", "gmf", "mlp", "neumf"])
def test_a_centralized_model_declares_the_users_tables_local_and_scores_as_its_pairs(name):
    m = _centralized(name, 5, 7, dim=4)
    assert m.local_names() and all(n.startswith("user__") for n in m.local_names())
    assert m.global_names() and not set(m.local_names()) & set(m.global_names())
    assert not any(k.startswith("user__") for k in m.global_state())
    s = m.score_all(torch.tensor([0, 3]))
    assert s.shape == (2, 7)
    np.testing.assert_allclose(s[1, 2].item(), m(torch.tensor([3]), torch.tensor([2])).item(), rtol=1e-5)


def test_global_state_round_trip_and_errors():
    a, b = _centralized("mf", 3, 4, dim=2, seed=0), _centralized("mf", 3, 4, dim=2, seed=1)
    b.load_global_state(a.global_state())
    np.testing.assert_array_equal(b.model.item_embedding.detach(), a.model.item_embedding.detach())
    assert not torch.equal(b.user__user, a.user__user)  # local stays local
    bad = a.global_state()
    bad["model.item_bias"] = np.zeros(5, dtype=np.float32)
    with pytest.raises(ValueError, match="item_bias"):
        b.load_global_state(bad)
    with pytest.raises(KeyError):
        b.load_global_state({"model.item_embedding": bad["model.item_embedding"]})


def test_losses_hand_computed():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # BPR: mean(log(1 + exp(-(2-1))), log(2))
    assert bpr_loss(pos, neg).item() == pytest.approx((np.log1p(np.exp(-1)) + np.log(2)) / 2)
    # BCE: softplus(-pos) + softplus(neg)
    expected = (np.log1p(np.exp(-2)) + np.log1p(np.exp(1)) + 2 * np.log(2)) / 2
    assert bce_loss(pos, neg).item() == pytest.approx(expected)
    assert bpr_loss(pos, torch.stack([neg, neg], 1)).item() == pytest.approx(bpr_loss(pos, neg).item())
