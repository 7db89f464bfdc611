"""Models: local/global declaration, global state round trip, losses."""

import numpy as np
import pytest
import torch

from fedrec.models import build_model, bce_loss, bpr_loss


@pytest.mark.parametrize("name", ["mf", "gmf", "mlp", "neumf"])
def test_models_declare_local_and_global(name):
    m = build_model(name, 5, 7, dim=4)
    assert all(n.startswith("user_embedding") for n in m.local_names())
    assert m.local_names() and m.global_names()
    assert not set(m.local_names()) & set(m.global_names())
    assert not any("user" in k for k in m.global_state())
    s = m.score_all(torch.tensor([0, 3]))
    assert s.shape == (2, 7)
    np.testing.assert_allclose(s[1, 2].item(), m(torch.tensor([3]), torch.tensor([2])).item(), rtol=1e-5)


def test_global_state_round_trip_and_errors():
    a, b = build_model("mf", 3, 4, dim=2, seed=0), build_model("mf", 3, 4, dim=2, seed=1)
    b.load_global_state(a.global_state())
    np.testing.assert_array_equal(b.item_embedding.weight.detach(), a.item_embedding.weight.detach())
    assert not torch.equal(b.user_embedding.weight, a.user_embedding.weight)  # local stays local
    bad = a.global_state()
    bad["item_bias.weight"] = np.zeros((5, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="item_bias"):
        b.load_global_state(bad)
    with pytest.raises(KeyError):
        b.load_global_state({"item_embedding.weight": bad["item_embedding.weight"]})
    with pytest.raises(ValueError, match="unknown model"):
        build_model("svd", 1, 1)


def test_losses_hand_computed():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # BPR: mean(log(1 + exp(-(2-1))), log(2))
    assert bpr_loss(pos, neg).item() == pytest.approx((np.log1p(np.exp(-1)) + np.log(2)) / 2)
    # BCE: softplus(-pos) + softplus(neg)
    expected = (np.log1p(np.exp(-2)) + np.log1p(np.exp(1)) + 2 * np.log(2)) / 2
    assert bce_loss(pos, neg).item() == pytest.approx(expected)
    assert bpr_loss(pos, torch.stack([neg, neg], 1)).item() == pytest.approx(bpr_loss(pos, neg).item())
