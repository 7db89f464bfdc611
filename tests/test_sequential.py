"""Sequential models (SASRec, GRU4Rec): histories, samples, engine, privacy refusal, Flower."""

import json

import numpy as np
import pytest
import torch

from fedrec.config import ConfigError, FedConfig
from fedrec.data.dataset import Dataset
from fedrec.data.sequences import Histories, last_items, stage_histories, training_windows
from fedrec.data.splits import leave_last_out
from fedrec.engine.cohort import LocalConfig
from fedrec.engine.sequence import train_sequences, trainable_users
from fedrec.models import GRU4Rec, SASRec, build_federated_model, is_sequential


def _tiny() -> Dataset:
    """3 users; timestamps deliberately out of file order."""
    user = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    item = np.array([5, 1, 2, 3, 4, 0, 7, 6, 5, 1, 3, 2, 0])
    ts = np.array([60, 10, 20, 30, 40, 50, 3, 2, 1, 4, 1, 3, 2])
    return Dataset(user=user, item=item, timestamp=ts, n_users=3, n_items=8, user_ids=np.arange(3),
                   item_ids=np.arange(8))


def test_histories_follow_time_and_never_hold_the_stage_items():
    ds = _tiny()
    split = leave_last_out(ds)
    train, valid, test = (stage_histories(ds, split, s) for s in ("train", "valid", "test"))
    # user 0 in time: 1 2 3 4 0 5 -> valid 0, test 5; user 1: 5 6 7; user 2: 3 0 2 1
    assert train.of(0).tolist() == [1, 2, 3, 4] and valid.of(0).tolist() == [1, 2, 3, 4]
    assert test.of(0).tolist() == [1, 2, 3, 4, 0]
    assert train.of(1).tolist() == [5] and test.of(1).tolist() == [5, 6]
    assert train.of(2).tolist() == [3, 0] and test.of(2).tolist() == [3, 0, 2]
    for u in range(3):  # the oracle: no validation or test item in the training history
        held = set(split.valid[u].indices) | set(split.test[u].indices)
        assert not held & set(train.of(u).tolist())
        assert not set(split.test[u].indices) & set(test.of(u).tolist())


def test_training_windows_by_hand_and_no_held_out_item_enters_training():
    h = Histories(np.array([0, 5, 6, 9]), np.array([10, 11, 12, 13, 14, 20, 30, 31, 32]))
    owner, inputs, targets, position = training_windows(h, np.array([0, 1, 2]), 3)
    assert owner.tolist() == [0, 0, 2]  # user 1 (one item) has no sample
    assert inputs.tolist() == [[-1, -1, 10], [11, 12, 13], [-1, 30, 31]]
    assert targets.tolist() == [[-1, -1, 11], [12, 13, 14], [-1, 31, 32]]
    assert position.tolist() == [[-1, -1, 1], [2, 3, 4], [-1, 1, 2]]
    # on a dataset: training samples only ever hold the user's training items
    ds = _tiny()
    split = leave_last_out(ds)
    train = stage_histories(ds, split, "train")
    owner, inputs, targets, _ = training_windows(train, np.arange(3), 2)
    for w, u in enumerate(owner.tolist()):
        seen = set(inputs[w][inputs[w] >= 0].tolist()) | set(targets[w][targets[w] >= 0].tolist())
        assert seen <= set(split.train[u].indices.tolist())
    assert last_items(h, np.array([0, 1, 2]), 3).tolist() == [[12, 13, 14], [-1, -1, 20], [30, 31, 32]]


@pytest.mark.parametrize("cls", [SASRec, GRU4Rec])
def test_states_are_causal_and_ignore_padding(cls):
    torch.manual_seed(0)
    m = cls(20, dim=8, max_len=6, dropout=0.0)
    dense = {d: p for d, p in m.named_parameters() if d != "item_embedding"}
    rows = torch.randn(6, 8)
    mask = torch.tensor([False, False, True, True, True, True])
    h = m.encode(rows * mask[:, None], mask, dense)
    rows2 = rows.clone()
    rows2[4:] = torch.randn(2, 8)  # change later inputs: earlier states stay
    h2 = m.encode(rows2 * mask[:, None], mask, dense)
    assert torch.allclose(h[:4], h2[:4], atol=1e-6) and not torch.allclose(h[4:], h2[4:])
    rows3 = rows.clone()
    rows3[:2] = 5.0  # whatever sits under the padding (it is zeroed and masked)
    h3 = m.encode(rows3 * mask[:, None], mask, dense)
    assert torch.allclose(h[2:], h3[2:], atol=1e-6)


def test_fused_gru_equals_the_step_by_step_recurrence():
    """torch.gru over the present items moved to the front keeps the recurrence's state over
    padding, holes and empty windows (values and every gradient); transforms take the recurrence."""
    from fedrec.models.sequential import _GRUEncoder, _transformed

    torch.manual_seed(0)
    enc = _GRUEncoder(8, 0.0, torch.Generator().manual_seed(1)).double()
    rows = torch.randn(3, 5, 6, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 5, 6) < 0.6
    mask[0, 0], mask[0, 1], mask[0, 2] = False, True, torch.tensor([False, False, True, True, True, True])
    step, fused = enc.recurrence(rows, mask), enc.fused(rows, mask)
    assert torch.allclose(step, fused, atol=1e-12) and (fused[0, 0] == 0).all()
    assert not torch.allclose(step[..., 1:, :], step[..., :-1, :])  # the states move
    grads = [torch.autograd.grad(h.square().sum(), [rows, *enc.parameters()]) for h in (step, fused)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12)
    assert not _transformed()
    assert torch.func.vmap(lambda x: torch.tensor(float(_transformed())) + 0 * x)(torch.zeros(2)).tolist() == [1.0, 1.0]


def _setup(cls, users=12):
    from fedrec.data import load_dataset, make_split

    ds = load_dataset("synthetic:40x50:3")
    split = make_split(ds)
    hist = stage_histories(ds, split, "train")
    u = np.flatnonzero(trainable_users(hist, np.arange(ds.n_users)))[:users]
    torch.manual_seed(1)
    m = cls(ds.n_items, dim=6, max_len=4, dropout=0.0).double()
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    return m, params, hist, split, u


@pytest.mark.parametrize("cls", [SASRec, GRU4Rec])
def test_engine_per_user_clipping_matches_single_users(cls):
    m, params, hist, split, users = _setup(cls)
    kw = dict(seed=0, server_round=3)
    free = train_sequences(m, params, hist, split.train, users, LocalConfig(negatives=2), **kw)
    loose = train_sequences(m, params, hist, split.train, users, LocalConfig(negatives=2, update_clip=1e9), **kw)
    for n in params:  # the per-window vmap path equals one backward when nothing is clipped
        assert torch.allclose(free.update[n], loose.update[n], atol=1e-12)
    clip = 0.01
    both = train_sequences(m, params, hist, split.train, users, LocalConfig(negatives=2, update_clip=clip), **kw)
    singles = [train_sequences(m, params, hist, split.train, users[j:j + 1], LocalConfig(negatives=2), **kw)
               for j in range(len(users))]
    for n in params:  # oracle: the mean of each user's own release, clipped by hand
        want = torch.zeros_like(params[n])
        for s in singles:
            norm = float(sum((v ** 2).sum() for v in s.update.values()).sqrt())
            want += s.update[n] * min(1.0, clip / norm)
        assert torch.allclose(both.update[n], want / len(users), atol=1e-12)
    assert free.loss == pytest.approx(np.mean([s.loss for s in singles]))


def test_engine_update_is_the_gradient_of_the_users_mean_loss():
    m, params, hist, split, users = _setup(SASRec, users=1)
    res = train_sequences(m, params, hist, split.train, users, LocalConfig(negatives=3), seed=0, server_round=1)
    cand, mask = _assert_release_is_minus_the_mean_position_gradient(res, m, params, hist, split, users, server_round=1)
    assert set(cand[mask][:, 1:].reshape(-1).tolist()).isdisjoint(split.train[users[0]].indices.tolist())


def _assert_release_is_minus_the_mean_position_gradient(res, m, params, hist, split, users, *, server_round):
    """Oracle: one autograd call on the loss averaged over every position of ``users`` (3 negatives)."""
    from fedrec.engine.sequence import sequence_samples

    _, inp, cand, mask = (torch.as_tensor(x) for x in sequence_samples(hist, split.train, users, 4, 3, seed=0,
                                                                       server_round=server_round))
    leaves = {n: v.clone().requires_grad_(True) for n, v in params.items()}
    e = leaves["item_embedding"]
    loss = m.window_loss(e[inp], e[cand], mask, {n: v for n, v in leaves.items() if n != "item_embedding"}).sum()
    (loss / mask.sum()).backward()
    for n, v in leaves.items():
        assert torch.allclose(res.update[n], -v.grad, atol=1e-12)
    return cand, mask


def test_position_weighting_releases_the_gradient_of_the_mean_over_positions():
    """weighting='interaction' for a sequential model: users weigh by their training positions,
    so the release is -gradient of the loss averaged over every position (centralized
    training's objective), through the node's chunks as through one call."""
    from dataclasses import replace

    from fedrec.federated import node
    from fedrec.engine.sequence import position_weights
    from fedrec.federated.federation import init_global_params, load_federation

    m, params, hist, split, users = _setup(SASRec, users=9)
    w = position_weights(hist, users)
    assert w.mean() == pytest.approx(1.0) and w.std() > 0.1  # users of unequal histories
    res = train_sequences(m, params, hist, split.train, users, LocalConfig(negatives=3), seed=0, server_round=2,
                          user_weights=w)
    _assert_release_is_minus_the_mean_position_gradient(res, m, params, hist, split, users, server_round=2)
    with pytest.raises(ValueError, match="user-level clipping"):
        train_sequences(m, params, hist, split.train, users, LocalConfig(negatives=3, update_clip=1.0), seed=0,
                        server_round=2, user_weights=w)

    cfg = FedConfig(data="synthetic:40x50:3", model="sasrec", dim=4, seq_len=4, negatives=2, users_per_node=40,
                    weighting="interaction")
    fed = load_federation(cfg)
    gp = init_global_params(cfg, fed)
    st = node.load_state({}, fed, 0, cfg)
    whole, _, _ = node.train_round(cfg, fed, 0, st, global_params=gp, server_round=1)
    plain, _, _ = node.train_round(replace(cfg, weighting="user"), fed, 0, st, global_params=gp, server_round=1)
    assert not np.allclose(whole["item_embedding"], plain["item_embedding"], atol=1e-6)  # wired through


def test_interaction_level_dp_is_refused_with_the_reason():
    from fedrec.federated.algorithms import check_run

    with pytest.raises(ConfigError, match="up to seq-len \\+ 1 samples"):
        check_run(FedConfig(data="synthetic:20x60:1", model="sasrec", noise_multiplier=1.0))
    with pytest.raises(ConfigError, match="no item bias"):
        check_run(FedConfig(data="synthetic:20x60:1", model="gru4rec", prior_noise=1.0, user_dp="client",
                            user_noise_multiplier=1.0))
    m, params, hist, split, users = _setup(GRU4Rec)
    with pytest.raises(ValueError, match="use user-level DP"):
        train_sequences(m, params, hist, split.train, users, LocalConfig(noise_multiplier=1.0), seed=0, server_round=1)
    assert is_sequential(build_federated_model("sasrec", 10)) and not is_sequential(build_federated_model("mf", 10))
    check_run(FedConfig(data="synthetic:20x60:1", model="sasrec", user_dp="client", user_noise_multiplier=1.0))


def test_node_files_carry_the_histories(tmp_path):
    from fedrec.federated.federation import histories, load_federation, load_node_data, write_node_data

    fed = load_federation(FedConfig(data="synthetic:30x40:2", users_per_node=10))
    paths = write_node_data(fed, tmp_path)
    for p, path in enumerate(paths):
        node, part = load_node_data(str(path))
        for stage in ("train", "valid", "test"):
            mine, full = histories(node, stage), histories(fed, stage)
            for u in fed.cohorts[p].tolist():
                assert mine.of(u).tolist() == full.of(u).tolist()
            other = fed.cohorts[(p + 1) % len(paths)][0]
            assert len(mine.of(int(other))) == 0  # nobody else's history


@pytest.mark.slow
def test_flower_run_of_a_sequential_model_with_user_level_dp(tmp_path):
    from fedrec_app.simulations.simulate import simulate

    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:30x40:1", model="sasrec", dim=8, seq_len=5, num_server_rounds=2,
                    users_per_node=15, eval_every=1, user_dp="client", user_target_epsilon=8.0, user_clip=0.5,
                    user_sample_rate=0.5, server_opt="sgd", server_lr=1.0, out=str(out))
    simulate(cfg, num_cpus=2)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["privacy"]["unit"] == "user-level" and 0 < doc["privacy"]["epsilon"] <= 8.0 + 1e-6
    assert 0 <= doc["test"]["ndcg@10"] <= 1
    rows = (out / "rounds.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "train-loss" not in rows[0].split(",")  # a private run releases no loss


def test_centralized_counterpart_selects_its_epoch_on_validation():
    from fedrec.baselines import fit_sequential
    from fedrec.federated.federation import histories, load_federation

    fed = load_federation(FedConfig(data="synthetic:40x50:3"))
    m = GRU4Rec(fed.dataset.n_items, dim=8, max_len=5)
    res = fit_sequential(m, fed.split, {s: histories(fed, s) for s in ("train", "valid", "test")}, epochs=3,
                         batch_size=16, n_negatives=2, patience=5)
    best = max(res.history, key=lambda h: h["valid_ndcg@10"])
    assert res.selected["epoch"] == best["epoch"] and len(res.history) == 3
    assert res.valid.metrics["ndcg@10"] == pytest.approx(best["valid_ndcg@10"])  # the best epoch restored
    assert 0 <= res.test.metrics["ndcg@10"] <= 1
