"""The on-device API and the local-state files the ClientApp shares with it."""

import numpy as np
import pytest
import torch

from fedrec.federated import node
from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved, steps_per_round
from fedrec.device import DeviceRecommender, LocalState, load_global_params, load_local_state, save_local_state
from fedrec.federated.federation import init_global_params, load_federation
from fedrec.privacy.accounting import epsilon
from fedrec.privacy.policy import PolicyError, PrivacyPolicy
from fedrec_app.server.checkpoint import save_checkpoint
from fedrec.federated.optim import OptState


def _params(n_items=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"item_embedding": rng.normal(size=(n_items, d)).astype(np.float32),
            "item_bias": rng.normal(size=n_items).astype(np.float32) * 0.1}


def test_state_round_trips_and_recommend_excludes_seen(tmp_path):
    dev = DeviceRecommender.create(tmp_path / "me.npz", user=3, dim=4)
    dev.add_interactions([5, 7, 7])
    again = DeviceRecommender.open(tmp_path / "me.npz")
    assert again.items.tolist() == [5, 7, 7] and again.user == 3
    p = _params()
    again.rank_emb = np.ones(4, np.float32)
    ids, scores = again.recommend(p, n=5)
    full = p["item_embedding"] @ np.ones(4) + p["item_bias"]
    full[[5, 7]] = -np.inf
    assert ids.tolist() == np.argsort(-full, kind="stable")[:5].tolist()
    assert np.all(np.diff(scores) <= 0) and not {5, 7} & set(ids.tolist())


def test_unreadable_state_is_a_clear_error(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        DeviceRecommender.open(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="create"):
        DeviceRecommender.open(tmp_path / "missing.npz")


def test_fold_in_finds_the_users_taste_from_a_few_items(tmp_path):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(200, 8)).astype(np.float32)
    p = {"item_embedding": q, "item_bias": np.zeros(200, np.float32)}
    taste = rng.normal(size=8)
    liked = np.argsort(-(q @ taste))[:20]
    dev = DeviceRecommender.create(tmp_path / "new.npz", dim=8)
    dev.fold_in(p, items=liked[:5], steps=200)
    ids, _ = dev.recommend(p, n=15)
    hits = len(set(ids.tolist()) & set(liked[5:].tolist()))
    assert hits >= 8  # chance: 15 * 15 / 195 ~ 1.2


def test_zero_interactions_fall_back_to_a_non_personal_ranking(tmp_path):
    p = _params()
    dev = DeviceRecommender.create(tmp_path / "cold.npz", dim=4)
    dev.fold_in(p)
    ids, _ = dev.recommend(p, n=3)
    assert ids.tolist() == np.argsort(-p["item_bias"], kind="stable")[:3].tolist()


def test_works_from_a_saved_server_checkpoint_without_a_server(tmp_path):
    p = _params()

    save_checkpoint(tmp_path / "checkpoint", cfg=FedConfig(), server_round=7, params=p, opt_state=OptState(), best=None)
    got = load_global_params(tmp_path)
    for k in p:
        np.testing.assert_array_equal(got[k], p[k])


def _node_and_device(tmp_path, policy=None, **privacy):
    """User 7 of a small federation (one user per node), its node state, and a device
    holding the same user's training interactions."""
    cfg = resolved(FedConfig(data="synthetic:60x40:0", dim=4, users_per_node=1, noise_multiplier=1.2, sample_rate=0.5,
                    **privacy))
    fed = load_federation(cfg)
    user = int(fed.cohorts[7][0])
    st = node.load_state({}, fed, 7, cfg)
    dev = DeviceRecommender.create(tmp_path / "u.npz", user=user, dim=4, seed=cfg.seed, policy=policy)
    dev.add_interactions(fed.split.train[user].indices)
    return cfg, fed, user, init_global_params(cfg, fed), st, dev


def test_device_training_is_the_nodes_computation_and_accounts_privacy(tmp_path):
    cfg, fed, user, params, st, dev = _node_and_device(tmp_path, policy=PrivacyPolicy(allow_non_private=True),
                                                       budget_epsilon=100.0)
    np.testing.assert_array_equal(dev.train_emb, st.local["user"][0])
    # with the noise off (a policy that allows it), the release and the new embedding equal the simulated node's
    nonoise = FedConfig(data=cfg.data, dim=4, users_per_node=1)
    up_node, _, st_node = node.train_round(nonoise, fed, 7, st, global_params=params, server_round=1)
    rel = dev.train(params, nonoise, server_round=1)
    for k in up_node:
        np.testing.assert_array_equal(rel[k], up_node[k])
    np.testing.assert_array_equal(dev.train_emb, st_node.local["user"][0])
    assert dev.privacy_spent()["epsilon"] == float("inf")  # a release without DP: no finite epsilon
    # with DP: privacy spent composes every step, and the device's own budget (not the server's
    # budget-epsilon=100) stops training
    dev = DeviceRecommender.create(tmp_path / "v.npz", user=user, dim=4, policy=PrivacyPolicy(max_epsilon=6.0))
    dev.add_interactions(fed.split.train[user].indices)
    released = 0
    for r in range(1, 20):
        if dev.train(params, cfg, server_round=r) is None:
            break
        released += 1
    spent = DeviceRecommender.open(tmp_path / "v.npz").privacy_spent()
    assert spent["epsilon"] == pytest.approx(epsilon(noise_multiplier=1.2, sample_rate=0.5, steps=2 * released,
                                                     delta=1e-5))
    assert spent["epsilon"] <= 6.0 < epsilon(noise_multiplier=1.2, sample_rate=0.5, steps=2 * released + 2, delta=1e-5)
    assert spent["unit"] == "interaction-level"
    with pytest.raises(ValueError, match="differs from the one its"):  # one accountant, one mechanism
        dev.train(params, FedConfig(data=cfg.data, dim=4, users_per_node=1, noise_multiplier=2.0), server_round=30)


def test_device_and_node_report_the_same_epsilon_with_the_prior(tmp_path):
    """A device and the simulated node that trained the same user report the same
    epsilon, the DP popularity prior composed (the device used to leave it out)."""
    cfg, fed, user, params, st, dev = _node_and_device(tmp_path, prior_noise=2.0)
    for r in (1, 2, 3):
        _, m, st = node.train_round(cfg, fed, 7, st, global_params=params, server_round=r)
        assert dev.train(params, cfg, server_round=r) is not None
    spent = DeviceRecommender.open(tmp_path / "u.npz").privacy_spent()
    assert spent["steps"] == int(st.dp_steps[0]) == 6
    assert spent["epsilon"] == pytest.approx(m["epsilon"][0], rel=1e-12)
    assert spent["epsilon"] > epsilon(noise_multiplier=1.2, sample_rate=0.5, steps=6, delta=1e-5)  # prior included
    assert spent["mechanism"]["prior_noise"] == 2.0 and spent["mechanism"]["unit"] == "interaction-level"


def test_local_state_files_keep_recent_rounds_and_load_as_of_a_round(tmp_path):
    users = np.array([4, 9])
    for r in range(1, 6):
        save_local_state(tmp_path, LocalState(users, {"user": np.full((2, 3), r, np.float32)}, np.array([r, r]),
                                              np.array([r, r])),
                         server_round=r)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"round-0000000{r}.npz" for r in (3, 4, 5)]
    st, r = load_local_state(tmp_path, at_most_round=4)
    assert r == 4 and st.local["user"][0, 0] == 4
    assert load_local_state(tmp_path, at_most_round=2) is None


def test_a_device_holds_any_model_and_ranks_with_its_score(tmp_path):
    """The device reads the model's declarations: an MLP device keeps the MLP's local
    vector, ranks with the model's own full ranking, folds in through the engine."""
    from fedrec.models import build_federated_model

    m = build_federated_model("mlp", 30, dim=4, seed=0)
    p = {k: v + 0.05 * np.random.default_rng(1).standard_normal(v.shape).astype(np.float32)
         for k, v in m.global_params().items()}
    dev = DeviceRecommender.create(tmp_path / "mlp.npz", user=2, dim=4, model="mlp",
                                   policy=PrivacyPolicy(allow_non_private=True))
    assert set(dev.train_local) == {"user"} and dev.train_local["user"].shape == (4,)
    np.testing.assert_array_equal(dev.train_local["user"], m.init_local(np.array([2]), seed=0)["user"][0])
    dev.fold_in(p, items=[3, 5, 8], steps=20)
    again = DeviceRecommender.open(tmp_path / "mlp.npz")
    assert again.model == "mlp" and np.abs(again.rank_local["user"]).sum() > 0
    want = m.score_users({"user": torch.as_tensor(again.rank_local["user"])[None]},
                         {k: torch.as_tensor(v) for k, v in p.items()})[0].numpy()
    np.testing.assert_allclose(again.scores(p), want, rtol=1e-6)
    ids, _ = again.recommend(p, n=5)
    assert not {3, 5, 8} & set(ids.tolist())
    with pytest.raises(ValueError, match="holds model 'mlp'"):
        again.train(p, FedConfig(data="synthetic:10x30:0", model="mf", dim=4), server_round=1)


def test_a_sequential_device_ranks_from_its_history_and_trains_as_its_node(tmp_path):
    """SASRec on the device: no local vector; recommendations are the model's scores
    after the device's last items in time order (no training), and a training round
    releases exactly what the simulated node of that user releases."""
    from fedrec.data.sequences import last_items

    cfg = resolved(FedConfig(data="synthetic:30x40:0", model="sasrec", dim=8, seq_len=5, users_per_node=1,
                    user_dp="client", user_noise_multiplier=1e-9, user_clip=10.0))
    fed = load_federation(cfg)
    from fedrec.federated.federation import federated_model, histories

    model = federated_model(cfg, fed)
    params = init_global_params(cfg, fed)
    user = int(fed.cohorts[4][0])
    hist = histories(fed, "train")
    seq = hist.items[hist.indptr[user]:hist.indptr[user + 1]]
    dev = DeviceRecommender.create(tmp_path / "s.npz", user=user, dim=8, model="sasrec", seq_len=5,
                                   policy=PrivacyPolicy(unit="user-level", max_epsilon=float("inf")))  # server noise
    assert dev.train_local == {}
    dev.add_interactions(seq[::-1], times=np.arange(len(seq))[::-1])  # added out of order, ordered by time
    np.testing.assert_array_equal(dev.history(), seq)
    x = torch.as_tensor(last_items(hist, np.array([user]), 5))
    want = model.score_histories(x, {k: torch.as_tensor(v) for k, v in params.items()})[0].detach().numpy()
    np.testing.assert_allclose(dev.scores(params), want, rtol=1e-5, atol=1e-6)
    st = node.load_state({}, fed, 4, cfg)
    up_node, _, _ = node.train_round(cfg, fed, 4, st, global_params=params, server_round=1)
    rel = dev.train(params, cfg, server_round=1)
    for k in up_node:
        np.testing.assert_allclose(rel[k], up_node[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert any(np.abs(rel[k] - params[k]).max() > 0 for k in rel)


def test_a_device_state_written_before_any_model_opens_as_mf(tmp_path):
    import json

    np.savez(tmp_path / "old.npz", meta=np.frombuffer(json.dumps({"user": 1, "dp_steps": 0, "rounds": 0,
                                                                   "privacy": {}}).encode(), np.uint8),
             train_emb=np.ones(4, np.float32), rank_emb=np.full(4, 2.0, np.float32),
             items=np.array([3]), times=np.array([0.0]))
    dev = DeviceRecommender.open(tmp_path / "old.npz")
    assert dev.model == "mf" and dev.model_args["dim"] == 4
    np.testing.assert_array_equal(dev.rank_emb, np.full(4, 2.0))
    p = _params()
    np.testing.assert_allclose(dev.scores(p), p["item_embedding"] @ np.full(4, 2.0) + p["item_bias"], rtol=1e-6)


def test_a_two_tower_device_ranks_through_the_item_tower_and_trains_as_its_node(tmp_path):
    """Two-tower on the device: it keeps the public item metadata the nodes read (genres,
    year), ranks every item through the tower (items nobody trained included), and a
    training round releases exactly what the simulated node of that user releases."""
    from fedrec.federated.federation import federated_model

    cfg = resolved(FedConfig(data="synthetic:30x40:0", model="two-tower", dim=4, users_per_node=1))
    fed = load_federation(cfg)
    ds = fed.dataset
    model = federated_model(cfg, fed)
    g = np.random.default_rng(2)
    params = {k: v + 0.1 * g.standard_normal(v.shape).astype(np.float32)
              for k, v in init_global_params(cfg, fed).items()}
    with pytest.raises(ValueError, match="item_genres= and/or item_year="):
        DeviceRecommender.create(tmp_path / "none.npz", user=0, dim=4, model="two-tower")
    user = int(fed.cohorts[3][0])
    dev = DeviceRecommender.create(tmp_path / "tt.npz", user=user, dim=4, model="two-tower",
                                   item_genres=ds.item_genres, item_year=ds.item_year,
                                   policy=PrivacyPolicy(allow_non_private=True))
    items = fed.split.train[user].indices
    dev.add_interactions(items)
    st = node.load_state({}, fed, 3, cfg)
    up_node, _, _ = node.train_round(cfg, fed, 3, st, global_params=params, server_round=1)
    rel = DeviceRecommender.open(tmp_path / "tt.npz").train(params, cfg, server_round=1)
    for k in up_node:
        np.testing.assert_allclose(rel[k], up_node[k], rtol=1e-5, atol=1e-7, err_msg=k)
    dev = DeviceRecommender.open(tmp_path / "tt.npz")
    dev.refit(params, steps=20)
    want = model.score_users({"user": torch.as_tensor(dev.rank_local["user"])[None]},
                             {k: torch.as_tensor(v) for k, v in params.items()})[0].numpy()
    np.testing.assert_allclose(dev.scores(params), want, rtol=1e-6)
    # an item whose free row is zero (never trained) is still ranked by its features
    cold = {k: v.copy() for k, v in params.items()}
    cold["item_embedding"][:5] = 0.0
    s = dev.scores(cold)[:5]
    assert np.ptp(s) > 0
    with pytest.raises(ValueError, match="holds 40 items|hold 40 items|the device's item metadata 40"):
        dev.scores({k: v[:20] if v.shape[0] == 40 else v for k, v in params.items()})


def test_a_node_reads_back_the_state_it_wrote_from_memory_and_any_other_file_from_disk(tmp_path, monkeypatch):
    """The state file a process wrote last is read back from memory (a copy: changing it
    changes neither the file nor the next read); once the file is not the one it wrote
    (another process rewrote it), it is read from disk."""
    users = np.array([4, 9])
    st = LocalState(users, {"user": np.full((2, 3), 1.5, np.float32)}, np.array([2, 2]), np.array([1, 1]))
    save_local_state(tmp_path, st, server_round=1)
    st.local["user"][:] = 7.0  # the caller's arrays change after the save: the kept copy does not
    disk_load = np.load
    with monkeypatch.context() as m:
        m.setattr(np, "load", lambda *a, **k: pytest.fail("read from disk"))
        got, r = load_local_state(tmp_path)
    assert r == 1 and np.array_equal(got.local["user"], np.full((2, 3), 1.5, np.float32))
    got.local["user"][:] = 9.0
    again, _ = load_local_state(tmp_path)
    assert np.array_equal(again.local["user"], np.full((2, 3), 1.5, np.float32))
    with disk_load(tmp_path / "round-00000001.npz") as z:
        assert np.array_equal(z["local/user"], again.local["user"]) and np.array_equal(z["dp_steps"], again.dp_steps)
    # another process replaces the file (a new inode): its contents are read
    other = tmp_path / "other.npz"
    np.savez(other, users=users, dp_steps=np.array([5, 5]), rounds=np.array([3, 3]),
             **{"local/user": np.zeros((2, 3), np.float32)})
    other.replace(tmp_path / "round-00000001.npz")
    fresh, _ = load_local_state(tmp_path)
    assert np.array_equal(fresh.dp_steps, [5, 5]) and not fresh.local["user"].any()


def test_a_device_holds_its_own_policy_and_refuses_what_breaks_it(tmp_path):
    """The device, not the server, decides: a configuration without DP, with noise from the
    seed, in another unit or below the minimum noise is refused in one line; the budget is
    the policy's.  A default device refuses a non-DP round and releases nothing."""
    cfg, fed, user, params, st, dev = _node_and_device(tmp_path)
    before = dict(np.load(tmp_path / "u.npz"))
    with pytest.raises(PolicyError, match="without DP"):
        dev.train(params, FedConfig(data=cfg.data, dim=4, users_per_node=1), server_round=1)
    with pytest.raises(PolicyError, match="reproducible-noise"):
        dev.train(params, FedConfig(data=cfg.data, dim=4, users_per_node=1, noise_multiplier=1.0,
                                    reproducible_noise=True), server_round=1)
    with pytest.raises(PolicyError, match="requires interaction-level"):
        dev.train(params, FedConfig(data=cfg.data, dim=4, users_per_node=1, user_dp="client",
                                    user_noise_multiplier=1.0), server_round=1)
    strict = DeviceRecommender.create(tmp_path / "w.npz", user=user, dim=4,
                                      policy=PrivacyPolicy(min_noise_multiplier=2.0))
    with pytest.raises(PolicyError, match="below this device's minimum"):
        strict.train(params, cfg, server_round=1)
    after = dict(np.load(tmp_path / "u.npz"))
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert DeviceRecommender.open(tmp_path / "w.npz").policy.min_noise_multiplier == 2.0  # kept in the file


def test_a_device_releases_a_round_once(tmp_path):
    """Asked for the same round twice (a resumed server), the device sends the same release
    and accounts it once; asked for an older round it refuses; two devices (or two rounds)
    draw different noise: nothing is derived from the public seed."""
    cfg, fed, user, params, st, dev = _node_and_device(tmp_path)
    first = dev.train(params, cfg, server_round=1)
    again = DeviceRecommender.open(tmp_path / "u.npz").train(params, cfg, server_round=1)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    spent = DeviceRecommender.open(tmp_path / "u.npz").privacy_spent()
    assert spent["steps"] == steps_per_round(cfg)  # one round accounted, not two
    dev = DeviceRecommender.open(tmp_path / "u.npz")
    dev.train(params, cfg, server_round=2)
    with pytest.raises(PolicyError, match="older than the round it released last"):
        dev.train(params, cfg, server_round=1)
    twin = DeviceRecommender.create(tmp_path / "twin.npz", user=user, dim=4, seed=cfg.seed)
    twin.add_interactions(fed.split.train[user].indices)
    other = twin.train(params, cfg, server_round=1)
    assert all(np.abs(other[k] - first[k]).max() > 1e-4 for k in first)
