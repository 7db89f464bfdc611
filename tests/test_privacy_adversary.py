"""The guarantees against the party they claim to protect from, tested by playing that party.

Each test acts as the server (or anyone who reads a run's files) with everything it knows:
the configuration and its seed, the round, the partition, the shapes, the global
parameters, every reply.  Where the noise is reproducible from the seed
(``reproducible-noise``, which is how every draw was made before secret randomness) the
same attack succeeds: that is the check that each test can fail.
"""

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedrec.federated import node
from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved, steps_per_round
from fedrec.engine import LocalConfig, cohort_samples, train_cohort
from fedrec.federated.federation import init_global_params, load_federation
from fedrec.models import FEDERATED_MODELS, build_federated_model
from fedrec.privacy.ledger import ledger_entries, warm_start_problem

#: The interaction-level preset as a device runs it, one user per node.
PRIVATE = dict(data="synthetic:12x300:0", dim=8, users_per_node=1, noise_multiplier=1.0, sample_rate=0.5,
               max_grad_norm=0.5, negatives=1)


def _with_row(fed, user: int, items) -> "node.Federation":
    """``fed`` with ``user``'s training row replaced by ``items`` (the attacker's stand-in)."""
    train = fed.split.train.tolil(copy=True)
    train.rows[user], train.data[user] = sorted(int(i) for i in items), [1.0] * len(items)
    split = dataclasses.replace(fed.split, train=sp.csr_matrix(train, dtype=np.float32))
    return dataclasses.replace(fed, split=split)


def _attack(reproducible: bool) -> tuple[float, float]:
    """Play the server against every one-user node: rerun the node's round on a stand-in
    history (one interaction) with everything public, subtract, and read the residual.
    Returns (the largest residual on a row neither history touched, the mean recall of the
    user's positives among the rows of largest residual)."""
    # every sample in the step (q = 1), so that every positive is in the release to be found
    cfg = resolved(FedConfig(**{**PRIVATE, "sample_rate": 1.0}, reproducible_noise=reproducible))
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    untouched_max, recalls = 0.0, []
    for p in range(fed.n_nodes):
        user = int(fed.cohorts[p][0])
        positives = set(fed.split.train[user].indices.tolist())
        real, _, _ = node.train_round(cfg, fed, p, node.load_state({}, fed, p, cfg), global_params=params,
                                      server_round=1)
        stand_in = _with_row(fed, user, [max(positives) + 1])
        fake, _, _ = node.train_round(cfg, stand_in, p, node.load_state({}, stand_in, p, cfg), global_params=params,
                                      server_round=1)
        residual = np.abs(real["item_embedding"] - fake["item_embedding"]).sum(1)
        touched = np.zeros(len(residual), dtype=bool)
        for f in (fed, stand_in):  # positives and their negatives (keyed by the public seed)
            _, _, items = cohort_samples(f.split.train, np.array([user]), cfg.negatives, seed=cfg.seed,
                                         server_round=1, exclude_positives=False)
            touched[items.ravel()] = True
        untouched_max = max(untouched_max, float(residual[~touched].max()))
        top = np.argsort(-residual)[: 2 * len(positives) + 2]  # the real and the stand-in's samples' rows
        recalls.append(len(positives & set(top.tolist())) / len(positives))
    return untouched_max, float(np.mean(recalls))


def test_the_server_cannot_regenerate_a_devices_noise():
    """With secret randomness, a residual is noise on every row and the user's positives are
    found at the base rate; with noise derived from the seed the server strips it exactly
    (a noise-free residual on every untouched row) and finds every positive."""
    leak, recall = _attack(reproducible=True)
    assert leak < 1e-6 and recall > 0.95
    noise, recall = _attack(reproducible=False)
    assert noise > 1e-3
    base = (2 * 8 + 2) / 300  # the rows the attacker picks over the catalogue, for ~8 positives
    assert recall < base + 0.25


def test_two_runs_of_one_dp_configuration_release_different_noise_unless_reproducible():
    cfg = resolved(FedConfig(**PRIVATE))
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    st = node.load_state({}, fed, 0, cfg)
    a, _, _ = node.train_round(cfg, fed, 0, st, global_params=params, server_round=1)
    b, _, _ = node.train_round(cfg, fed, 0, st, global_params=params, server_round=1)
    assert np.abs(a["item_embedding"] - b["item_embedding"]).min() > 0
    rep = dataclasses.replace(cfg, reproducible_noise=True)
    a, _, _ = node.train_round(rep, fed, 0, st, global_params=params, server_round=1)
    b, _, _ = node.train_round(rep, fed, 0, st, global_params=params, server_round=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("stored", ["directory", "memory"])
def test_a_repeated_round_is_answered_with_the_same_release(tmp_path, stored):
    """A resumed server asks for a round again: the node answers with what it released
    (the difference of the two replies is zero, not noise-free signal) and accounts the
    round once; a round it answered whose release is no longer kept is refused."""
    cfg = resolved(FedConfig(**{**PRIVATE, "users_per_node": 4}))
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    directory = tmp_path / "node-0" if stored == "directory" else None
    kept = None

    def ask(r):
        nonlocal kept
        st = node.state_for_round(kept, fed, 0, cfg, directory=directory, server_round=r)
        update, metrics, st = node.train_round(cfg, fed, 0, st, global_params=params, server_round=r)
        kept = node.save_state(st, directory=directory, server_round=r)
        return update, metrics, st

    first, m1, s1 = ask(1)
    again, m2, s2 = ask(1)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    assert m1 == m2 and list(s2.dp_steps) == list(s1.dp_steps) == [steps_per_round(cfg)] * 4
    for r in range(2, 6):
        ask(r)
    _, _, s5 = ask(5)  # the round last answered: still the same, still counted once
    assert list(s5.dp_steps) == [5 * steps_per_round(cfg)] * 4
    with pytest.raises(ValueError, match="round 1 was released before"):
        ask(1)


def test_the_release_noise_carries_no_information_about_the_users_count():
    """One interaction changes a user's count n_u; the release is divided by the public
    q B, so its noise scale is the same for a user with 5 interactions as for one with 80
    (it used to be sigma C / (q n_u), from which one release gave n_u away)."""
    n_items, dim = 2000, 8
    rows = [np.arange(5), np.arange(80)]
    train = sp.csr_matrix((np.ones(85, np.float32), (np.repeat([0, 1], [5, 80]), np.concatenate(rows))),
                          shape=(2, n_items))
    cfg = LocalConfig(user_steps=0, item_steps=1, sample_rate=0.5, noise_multiplier=2.0, max_grad_norm=0.5)
    stds = {}
    for name in ("mf", "mlp"):
        model = build_federated_model(name, n_items, dim=dim, seed=0)
        params = {k: torch.as_tensor(v) for k, v in model.global_params().items()}
        for user in (0, 1):
            local = {k: torch.as_tensor(v) for k, v in model.init_local(np.array([user]), seed=0).items()}
            res = train_cohort(model, local, params, train, np.array([user]), cfg, seed=0, server_round=1)
            rel = res.update[model.table_names()[0]].numpy()
            stds[name, user] = float(rel[200:].std())  # rows no sample of either user touched
        expected = 2.0 * 0.5 / (0.5 * cfg.interaction_cap)
        for user in (0, 1):
            assert stds[name, user] == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
def test_removing_an_interior_interaction_changes_only_its_own_sample(name):
    """Samples are keyed by (user, positive item): without one interior interaction every
    other sample keeps its negatives and its Poisson inclusion, so the coupled releases
    (same secret key, same noise) differ by at most one clipped sample over q B."""
    n_items, user = 60, 3
    items = np.arange(0, 40, 3)  # 14 interactions; remove the 6th
    full = sp.csr_matrix((np.ones(len(items), np.float32), (np.full(len(items), user), items)), shape=(5, n_items))
    less = sp.csr_matrix((np.ones(len(items) - 1, np.float32), (np.full(len(items) - 1, user), np.delete(items, 5))),
                         shape=(5, n_items))
    cfg = LocalConfig(user_steps=0, item_steps=1, negatives=2, sample_rate=0.7, noise_multiplier=1.0,
                      max_grad_norm=0.05, interaction_cap=10)
    _, _, a = cohort_samples(full, np.array([user]), 2, seed=1, server_round=4, exclude_positives=False)
    _, _, b = cohort_samples(less, np.array([user]), 2, seed=1, server_round=4, exclude_positives=False)
    np.testing.assert_array_equal(np.delete(a, 5, axis=0), b)
    feats = np.random.default_rng(1).random((n_items, 5)).astype(np.float32)  # the two-tower's public features
    model = build_federated_model(name, n_items, item_features=feats, dim=4, layers=(8, 4), seed=0).double()
    g = torch.Generator().manual_seed(7)  # random values, so every parameter carries gradient
    params = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.3
              for k, v in model.global_params().items()}
    local = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in model.init_local(np.array([user]), seed=0).items()}
    out = []
    for train in (full, less):
        res = train_cohort(model, local, params, train, np.array([user]), cfg, seed=1, server_round=4, generic=True,
                           dp_key=99, generator=torch.Generator().manual_seed(5))
        out.append(np.concatenate([res.update[k].numpy().ravel() for k in sorted(params)]))
    diff = float(np.linalg.norm(out[0] - out[1])) * cfg.sample_rate * cfg.interaction_cap
    assert diff <= cfg.max_grad_norm * (1 + 1e-6)


def test_private_user_sampling_is_poisson_at_its_rate_and_secret():
    """Under user-level DP a node samples its users with a secret key: the rate the
    accountant assumes, and a set independent of the one the public seed gives."""
    from fedrec.device import LocalState
    from fedrec.privacy.randomness import DPRandomness
    from fedrec.rng import hash_uniform

    cfg = FedConfig(users_per_node=1, user_dp="client", user_noise_multiplier=1.0, user_sample_rate=0.3)
    n = 20000
    st = LocalState(np.arange(n), {}, np.zeros(n, np.int64), np.zeros(n, np.int64))
    take, _ = node.active_users(cfg, st, 1, DPRandomness.secret())
    assert abs(take.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    public = hash_uniform(cfg.seed, 1, st.users, 0, 77) < 0.3  # what the seed would have given
    assert abs((take == public).mean() - (0.3**2 + 0.7**2)) < 0.02  # as for independent draws
    with pytest.raises(ValueError, match="needs the node's DP randomness"):
        node.active_users(cfg, st, 1)


def test_a_warm_start_from_rounds_no_accountant_covers_is_refused():
    """A checkpoint carries its privacy ledger; a private run refuses to continue one
    without a ledger, one with non-private rounds, or one under another mechanism, and
    composes a user-level DP-FedAvg history into its epsilon."""
    user = FedConfig(users_per_node=1, user_dp="server", user_noise_multiplier=1.0)
    plain = FedConfig()
    assert "no privacy ledger" in warm_start_problem(None, user)
    assert "without DP" in warm_start_problem(ledger_entries(plain, 2), user)
    dpsgd = FedConfig(noise_multiplier=1.0)
    assert "accounted under dp-sgd" in warm_start_problem(ledger_entries(dpsgd, 2, max_steps=4), user)
    assert "fedrec composes a warm start only" in warm_start_problem(ledger_entries(dpsgd, 2, max_steps=4), dpsgd)
    ok = ledger_entries(user, 3, user_segments=[[1.0, 1.0, 3]])
    assert warm_start_problem(ok, user) is None
    assert warm_start_problem(None, plain) is None  # a non-private run claims no epsilon


def test_a_warm_start_from_a_non_private_checkpoint_is_refused_or_reported_infinite(tmp_path):
    """Through the server's warm start: a private run refuses a checkpoint whose rounds
    were not private, names the flag that continues it, and with that flag reports
    every epsilon as infinite; a user-level history is composed."""
    from fedrec.federated.optim import OptState
    from fedrec_app.server.checkpoint import save_checkpoint
    from fedrec_app.server.run import RunLog, _warm_start
    from fedrec_app.server.strategy import FedRecStrategy

    shapes = {"item_embedding": (6, 2), "item_bias": (6,)}
    params = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
    plain = FedConfig(data="synthetic:12x6:0", dim=2, users_per_node=1)
    save_checkpoint(tmp_path / "plain", cfg=plain, server_round=2, params=params, opt_state=OptState(), best=None,
                    extra={"ledger": ledger_entries(plain, 2)})
    old = tmp_path / "old"  # a checkpoint written without a ledger
    save_checkpoint(old, cfg=plain, server_round=2, params=params, opt_state=OptState(), best=None)
    user = dict(data="synthetic:12x6:0", dim=2, users_per_node=1, user_dp="server", user_noise_multiplier=1.0,
                num_server_rounds=5)
    for ck, why in ((tmp_path / "plain", "without DP"), (old, "no privacy ledger")):
        cfg = FedConfig(**user, warm_start=str(ck))
        with pytest.raises(ValueError, match=f"{why}.*--warm-start-unaccounted"):
            _warm_start(cfg, FedRecStrategy(cfg, shapes=shapes, n_nodes=12), params, RunLog(cfg, None))
    cfg = FedConfig(**user, warm_start=str(tmp_path / "plain"), warm_start_unaccounted=True)
    log = RunLog(cfg, None)
    _, start = _warm_start(cfg, FedRecStrategy(cfg, shapes=shapes, n_nodes=12), params, log)
    assert start == 2 and log.unaccounted
    private = FedConfig(**user)
    save_checkpoint(tmp_path / "private", cfg=private, server_round=2, params=params, opt_state=OptState(), best=None,
                    extra={"ledger": ledger_entries(private, 2, user_segments=[[1.0, 1.0, 2]]),
                           "user_segments": [[1.0, 1.0, 2]]})
    cfg = FedConfig(**user, warm_start=str(tmp_path / "private"))
    strategy, log = FedRecStrategy(cfg, shapes=shapes, n_nodes=12), RunLog(cfg, None)
    _warm_start(cfg, strategy, params, log)
    assert not log.unaccounted and strategy.user_earlier == ((1.0, 1.0, 2),)


@pytest.mark.slow
def test_two_runs_through_flower_differ_with_dp_and_agree_without(tmp_path):
    """Through Flower's simulation engine: two runs of one DP configuration and seed train
    different models (the noise is secret, drawn anew), and two non-private runs of one seed
    train bit-identical models (replies are summed in the nodes' order, not as they arrive)."""
    from fedrec_app.simulations.simulate import simulate

    base = dict(data="synthetic:40x30:2", dim=4, users_per_node=10, num_server_rounds=2, eval_every=0, patience=0)

    def model(name, **kw):
        simulate(FedConfig(**base, **kw, out=str(tmp_path / name)), num_cpus=2)
        with np.load(tmp_path / name / "checkpoint" / "checkpoint.npz") as z:
            return z["param/item_embedding"].copy()

    a, b = model("dp-a", noise_multiplier=1.0, sample_rate=0.5), model("dp-b", noise_multiplier=1.0, sample_rate=0.5)
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_array_equal(model("plain-a"), model("plain-b"))


def test_secret_randomness_never_travels_and_reproducible_randomness_does():
    """Secret DP randomness cannot be pickled into a message, checkpoint or actor call, and
    its repr (what a log would show) holds no entropy; seed-derived randomness reproduces."""
    import pickle

    from fedrec.privacy.randomness import DPRandomness

    secret = DPRandomness.secret()
    with pytest.raises(TypeError, match="never leaves the party"):
        pickle.dumps(secret)
    assert repr(secret) == "DPRandomness(secret)" and str(secret.key) not in repr(secret)
    assert secret.key != DPRandomness.secret().key
    a, b = DPRandomness.from_seed(3, 1, 13), pickle.loads(pickle.dumps(DPRandomness.from_seed(3, 1, 13)))
    assert b.reproducible and a.key == b.key and np.array_equal(a.legacy_seed(), b.legacy_seed())
    assert a.key != DPRandomness.from_seed(3, 2, 13).key
    x, y = a.torch_generator(), b.torch_generator()
    assert torch.equal(torch.randn(4, generator=x), torch.randn(4, generator=y))


def test_the_prior_is_collected_from_the_nodes_and_noised_by_the_server(monkeypatch):
    """Federated analytics: each node answers the popularity query from its own users only,
    their contributions add up to the statistic over every user, and the server's release
    is the sum of what the nodes sent plus its own noise (here reproducible, to compare):
    it never reads the interactions."""
    from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

    from fedrec.privacy.prior import noisy_popularity, popularity_sum
    from fedrec.privacy.randomness import DPRandomness
    from fedrec_app.server.analytics import collect_popularity

    cfg = FedConfig(data="synthetic:30x25:1", users_per_node=10, prior_noise=2.0, reproducible_noise=True)
    fed = load_federation(cfg)
    parts = [node.analytics_round(fed, p, "popularity")["popularity"] for p in range(fed.n_nodes)]
    np.testing.assert_allclose(sum(parts), popularity_sum(fed.split.train), atol=1e-12)
    with pytest.raises(ValueError, match="analytics query 'counts'"):
        node.analytics_round(fed, 0, "counts")

    class Grid:  # what the server sees: the nodes' replies, nothing else
        def get_node_ids(self):
            return [11, 12, 13]

        def send_and_receive(self, messages, timeout=None):
            out = []
            for m, part in zip(messages, [np.ones(25), 2 * np.ones(25), np.full(24, 9.0)]):  # node 13: malformed
                assert m.metadata.message_type == MessageType.QUERY and m.content["config"]["analytics"] == "popularity"
                reply = RecordDict({"arrays": ArrayRecord({"popularity": Array(part)}),
                                    "metrics": MetricRecord({"num-examples": 10})})
                out.append(Message(content=reply, reply_to=m))
            return out

    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):  # the identity a server process would have
        monkeypatch.setattr(TaskIdentity, attr, 1)
    release = collect_popularity(Grid(), cfg, n_nodes=3, n_items=25)
    expected = 3.0 + DPRandomness.from_seed(cfg.seed, 21).numpy().normal(0.0, 2.0, size=25)
    np.testing.assert_allclose(release, expected, atol=1e-12)
    direct = noisy_popularity(fed.split.train, noise=2.0, randomness=DPRandomness.from_seed(cfg.seed, 21))
    assert not np.allclose(release, direct)  # the nodes' sums, not the server's own reading of the data


@pytest.mark.slow
def test_the_server_reads_the_federation_plan_never_the_interactions(tmp_path, monkeypatch):
    """The ServerApp runs from the federation plan written with the node files: with every
    way to the dataset closed in the server's process it trains and evaluates a model
    identical (same seed, no DP) to a server that derives its view from the dataset, and
    the plan holds nothing computed from the interactions unless it is a simulation's
    measurement."""
    import fedrec_app.server.run as server_run
    import fedrec_app.simulations.simulate as sim
    from fedrec.federated.federation import load_plan, write_plan

    base = dict(data="synthetic:40x30:2", dim=4, users_per_node=10, num_server_rounds=2, eval_every=1, patience=0)
    fed = load_federation(FedConfig(**base))
    view, popularity = load_plan(write_plan(fed, tmp_path / "deploy"))
    assert popularity is None and view.split.train.nnz == 0 and view.n_users == fed.n_users
    assert all(np.array_equal(a, b) for a, b in zip(view.cohorts, fed.cohorts))

    def run(name):
        summary = sim.simulate(FedConfig(**base, out=str(tmp_path / name)), num_cpus=2)
        with np.load(tmp_path / name / "checkpoint" / "checkpoint.npz") as z:
            return summary, z["param/item_embedding"].copy()

    def no_dataset(*a, **k):
        raise AssertionError("the server opened the interactions")

    with monkeypatch.context() as m:
        m.setattr(server_run, "load_federation", no_dataset)
        planned, planned_items = run("plan")
    with monkeypatch.context() as m:
        m.setattr(sim, "write_plan", lambda *a, **k: None)  # no plan: the server reads the dataset
        whole, whole_items = run("whole")
    np.testing.assert_array_equal(planned_items, whole_items)
    assert planned["test"] == whole["test"] and "novelty@10" in planned["test"]
    recorded = json.loads((tmp_path / "plan" / "config.json").read_text())
    assert recorded["dataset"]["source"].startswith("federation plan") and "interactions" not in recorded["dataset"]
