"""Local training of a cohort: equivalence across cohortings, DP mechanism checks
against Opacus's per-sample clipping, noise scale."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fedrec.engine import LocalConfig, keyed_negatives, mf_round
from fedrec.privacy.calibration import resolved


def _params(n_items, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_items, dim, generator=g) * 0.3, torch.randn(n_items, generator=g) * 0.1


def _users_emb(users, dim):
    return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(int(u))) * 0.3 for u in users])


@pytest.mark.parametrize("cfg", [LocalConfig(user_lr=0.7, user_steps=2, item_steps=2, negatives=2),
                                 LocalConfig(user_lr=0.5, sample_rate=0.5, noise_multiplier=1e-9, max_grad_norm=0.3)])
def test_cohort_release_equals_mean_of_single_user_releases(tiny_split, cfg):
    """A node with k users sends exactly the mean of what k one-user nodes send."""
    train = tiny_split.train
    q, b = _params(train.shape[1], 4)
    users = np.array([0, 3, 5, 7, 11])
    emb = _users_emb(users, 4)
    # one DP key for all (a node draws one secret key per round; a user's draws depend only on it and the user)
    together = mf_round(emb, q, b, train, users, cfg, seed=1, server_round=3, dp_key=7)
    singles = [mf_round(emb[j : j + 1], q, b, train, users[j : j + 1], cfg, seed=1, server_round=3, dp_key=7)
               for j in range(len(users))]
    for i in (1, 2):  # item and bias updates
        np.testing.assert_allclose(together[i], torch.stack([s[i] for s in singles]).mean(0), atol=1e-6)
    np.testing.assert_allclose(together[0], torch.cat([s[0] for s in singles]), atol=1e-6)


def test_negatives_exclude_only_training_positives(tiny_split):
    train = tiny_split.train
    users = np.repeat(np.arange(train.shape[0]), 50)
    slot = np.tile(np.arange(50), train.shape[0])
    neg = keyed_negatives(train, users, slot, seed=0, server_round=1)
    dense = train.toarray() > 0
    assert not dense[users, neg].any()
    # held-out items are not excluded: the sampler does not know them
    held = (tiny_split.valid + tiny_split.test).toarray() > 0
    assert held[users, neg].any()


class _OneUser(nn.Module):
    """The per-user MF model as Opacus sees it: a (1, d) user embedding and the item tables."""

    def __init__(self, p, q, b):
        super().__init__()
        self.user = nn.Embedding(1, p.shape[0])
        self.item = nn.Embedding(*q.shape)
        self.bias = nn.Embedding(q.shape[0], 1)
        with torch.no_grad():
            self.user.weight.copy_(p[None])
            self.item.weight.copy_(q)
            self.bias.weight.copy_(b[:, None])

    def forward(self, x):
        u, i, j = x[:, 0], x[:, 1], x[:, 2]
        pu = self.user(u)
        return (pu * (self.item(i) - self.item(j))).sum(-1) + (self.bias(i) - self.bias(j)).squeeze(-1)


def test_per_pair_clipping_matches_opacus(tiny_split):
    """One DP-SGD step (noise ~0, full batch) equals Opacus's PrivacyEngine step (its
    mean over the batch: the public normaliser B set to the batch's size)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    train = tiny_split.train
    n_items, dim, user, clip, lr = train.shape[1], 4, 2, 0.05, 0.7
    q, b = _params(n_items, dim, seed=5)
    p = _users_emb([user], dim)
    pos = train.indices[train.indptr[user] : train.indptr[user + 1]].astype(np.int64)
    cfg = LocalConfig(user_lr=lr, user_steps=0, item_steps=1, negatives=1, sample_rate=1.0,
                      noise_multiplier=1e-12, max_grad_norm=clip, interaction_cap=len(pos))
    ours_emb, ours_item, ours_bias, _ = mf_round(p, q, b, train, np.array([user]), cfg, seed=4, server_round=2)
    neg = keyed_negatives(train, np.full(len(pos), user), pos, seed=4, server_round=2)  # keyed by the positive
    x = torch.as_tensor(np.stack([np.zeros(len(pos), dtype=np.int64), pos, neg], 1))
    model = _OneUser(p[0], q, b)
    opt = torch.optim.SGD([{"params": model.user.parameters(), "lr": lr},
                           {"params": list(model.item.parameters()) + list(model.bias.parameters()), "lr": 0.0}])
    loader = DataLoader(TensorDataset(x), batch_size=len(x))
    model, opt, loader = PrivacyEngine().make_private(module=model, optimizer=opt, data_loader=loader,
                                                      noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False)
    (xb,) = next(iter(loader))
    loss = nn.functional.softplus(-model(xb)).mean()
    loss.backward()
    opt.step()
    m = model._module
    np.testing.assert_allclose(-m.item.weight.grad, ours_item, atol=1e-6)
    np.testing.assert_allclose(-m.bias.weight.grad[:, 0], ours_bias, atol=1e-6)
    np.testing.assert_allclose(m.user.weight.detach(), ours_emb, atol=1e-6)
    # clipping was active: some per-pair gradient was larger than the bound
    assert (m.item.weight.grad.abs().sum() > 0)


def test_noise_scale_of_release():
    """With DP the release of a user has per-coordinate std sigma*C/(q*B*sqrt(item_steps)),
    ``B`` the public interaction cap, whatever the user's own count ``n``."""
    import scipy.sparse as sp

    n_items, dim, n = 500, 8, 10
    train = sp.csr_matrix((np.ones(n), (np.zeros(n, dtype=int), np.arange(n))), shape=(1, n_items))
    q = torch.zeros(n_items, dim)
    b = torch.zeros(n_items)
    cfg = LocalConfig(user_lr=0.1, user_steps=0, item_steps=4, sample_rate=0.5, noise_multiplier=2.0, max_grad_norm=1.0)
    _, item_update, _, _ = mf_round(torch.zeros(1, dim), q, b, train, np.array([0]), cfg, seed=0, server_round=1,
                                    generator=torch.Generator().manual_seed(0))
    untouched = item_update[n + 50 :]  # rows no pair touched: pure noise
    expected = 2.0 * 1.0 / (0.5 * cfg.interaction_cap * np.sqrt(4))
    assert abs(float(untouched.std()) / expected - 1) < 0.05


@pytest.mark.parametrize("weighting", ["user", "interaction"])
def test_node_chunks_give_the_same_release_as_one_vectorised_cohort(monkeypatch, weighting):
    """Chunks of users (bounded memory) release what one cohort does, also when users
    weigh by their interactions (the weights are the node's, not a chunk's)."""
    from fedrec.federated import node
    from fedrec.config import FedConfig
    from fedrec.federated.federation import init_global_params, load_federation

    cfg = FedConfig(data="synthetic:60x40:0", dim=4, users_per_node=60, weighting=weighting)
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    st = node.load_state({}, fed, 0, cfg)
    whole, m1, s1 = node.train_round(cfg, fed, 0, st, global_params=params, server_round=1)
    monkeypatch.setattr(node, "MAX_PAIRS", 50)  # many chunks
    assert len(node._chunks(np.arange(60), np.full(60, 20))) > 10
    parts, m2, s2 = node.train_round(cfg, fed, 0, st, global_params=params, server_round=1)
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s2.local["user"], s1.local["user"], rtol=1e-6, atol=1e-7)
    assert m1["train-loss"] == pytest.approx(m2["train-loss"])
    if weighting == "interaction":  # wired through: users weigh differently than by default
        plain, _, _ = node.train_round(replace(cfg, weighting="user"), fed, 0, st, global_params=params, server_round=1)
        assert not np.allclose(plain["item_embedding"], whole["item_embedding"], atol=1e-6)


@pytest.mark.parametrize("kw, why", [
    (dict(noise_multiplier=1.0), "interaction-level DP"),
    (dict(user_dp="client", user_noise_multiplier=1.0), "user-level DP"),
    (dict(als=True), "ALS"),
    (dict(row_norm=0.1), "row bounds"),
    (dict(aggregation="itemwise"), "item-wise aggregation"),
    (dict(model="sasrec", user_dp="client", user_noise_multiplier=1.0), "user-level DP"),
])
def test_interaction_weighting_is_refused_where_it_is_not_built(kw, why):
    from fedrec.config import ConfigError, FedConfig

    with pytest.raises(ConfigError) as e:
        FedConfig(weighting="interaction", **kw)
    assert e.value.key == "weighting" and why in str(e.value) and "\n" not in str(e.value)
    FedConfig(weighting="interaction", negatives=4, secure_aggregation=True)  # non-private SGD: accepted
    FedConfig(weighting="interaction", model="sasrec")  # sequential: by training positions


def test_private_node_releases_no_training_loss():
    """The training loss is computed from every training pair and no mechanism covers it:
    a node releases it only in a run without DP (either unit), and the server's round
    metrics then have none."""
    from fedrec.federated import node
    from fedrec.config import FedConfig
    from fedrec.federated.federation import init_global_params, load_federation
    from fedrec_app.server.strategy import aggregate_train_metrics, validate_metrics

    base = FedConfig(data="synthetic:30x40:0", dim=4, users_per_node=30)
    for cfg, released in ((base, True),
                          (FedConfig(**{**base.__dict__, "noise_multiplier": 1.0, "sample_rate": 0.5}), False),
                          (FedConfig(**{**base.__dict__, "user_dp": "client", "user_noise_multiplier": 1.0}), False)):
        fed = load_federation(cfg)
        _, m, _ = node.train_round(cfg, fed, 0, node.load_state({}, fed, 0, cfg),
                                   global_params=init_global_params(cfg, fed), server_round=1)
        assert ("train-loss" in m) is released, cfg
        assert validate_metrics(m, max_examples=30) is None
        assert ("train-loss" in dict(aggregate_train_metrics([m]))) is released
    assert "not a finite number" in validate_metrics({"num-examples": 3, "train-loss": float("nan")}, max_examples=30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no GPU here (the engine's own device test "
                    "runs on the CPU: tests/test_engine_models.py::test_engine_on_a_device_equals_the_cpu_run)")
@pytest.mark.parametrize("model", ["mf", "mlp", "two-tower"])
def test_node_on_a_gpu_trains_and_ranks_as_on_the_cpu(model):
    """``device=cuda``: a node's DP round (release, local state, epsilons) and its full-ranking
    evaluation equal the CPU's within float tolerance."""
    from dataclasses import replace

    from fedrec.federated import node
    from fedrec.config import FedConfig
    from fedrec.federated.federation import init_global_params, load_federation

    cfg = resolved(FedConfig(data="synthetic:60x40:0", model=model, dim=4, users_per_node=60, noise_multiplier=1.0,
                    sample_rate=0.5))
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    out = {}
    for dev in ("cpu", "cuda"):
        c = replace(cfg, device=dev)
        st = node.load_state({}, fed, 0, c)
        up, m, st = node.train_round(c, fed, 0, st, global_params=params, server_round=1)
        ev = node.evaluate_round(c, fed, 0, st, global_params={k: params[k] - v for k, v in up.items()})
        out[dev] = (up, m, st, ev)
    (up0, m0, st0, ev0), (up1, m1, st1, ev1) = out["cpu"], out["cuda"]
    for k in up0:
        np.testing.assert_allclose(up1[k], up0[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for k in st0.local:
        np.testing.assert_allclose(st1.local[k], st0.local[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert m1["epsilon"] == m0["epsilon"]
    assert ev1["valid/ndcg@10"] == pytest.approx(ev0["valid/ndcg@10"], abs=1e-6)
