"""Server side: aggregation oracles (np.average), reply validation, server optimisers."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved
from fedrec.privacy.randomness import DPRandomness
from fedrec.federated.optim import OptState, server_step
import fedrec_app.server.strategy as st
from fedrec_app.server.strategy import (FedRecStrategy, aggregate_train_metrics, evaluation_means, sample_nodes,
                                        validate_reply)

N_ITEMS, DIM = 6, 3
SHAPES = {"item_embedding": (N_ITEMS, DIM), "item_bias": (N_ITEMS,)}


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def _reply(node, emb, bias, n, extra=None, metrics=None):
    out = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    arrays = {"item_embedding": Array(np.asarray(emb, dtype=np.float32)),
              "item_bias": Array(np.asarray(bias, dtype=np.float32))}
    arrays.update(extra or {})
    m = {"num-examples": n, "train-loss": 0.5}
    m.update(metrics or {})
    return Message(content=RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(m)}), reply_to=out)


def _strategy(**kw):
    cfg = FedConfig(server_opt="sgd", server_lr=1.0, users_per_node=10, **kw)
    s = FedRecStrategy(cfg, shapes=SHAPES, n_nodes=3, item_tables=("item_embedding", "item_bias"))
    s.optimizer.current = {"item_embedding": np.zeros((N_ITEMS, DIM), np.float32),
                           "item_bias": np.zeros(N_ITEMS, np.float32)}
    return s


def test_fedavg_equals_np_average():
    rng = np.random.default_rng(0)
    ups = [rng.normal(size=(N_ITEMS, DIM)) for _ in range(3)]
    bs = [rng.normal(size=N_ITEMS) for _ in range(3)]
    ns = [3, 7, 1]
    s = _strategy()
    arrays, metrics = s.aggregate_train(1, [_reply(i + 1, u, b, n) for i, (u, b, n) in enumerate(zip(ups, bs, ns))])
    np.testing.assert_allclose(arrays["item_embedding"].numpy(), np.average(ups, axis=0, weights=ns),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["item_bias"].numpy(), np.average(bs, axis=0, weights=ns), rtol=1e-5, atol=1e-6)
    assert metrics["users"] == 11


def test_the_mean_does_not_depend_on_the_order_replies_arrive_in():
    """Replies are summed in an order of their content (``reply_order``), so two runs of
    one seed give bit-identical models whatever order Flower delivers the replies in."""
    rng = np.random.default_rng(1)
    replies = [(i + 1, rng.normal(size=(N_ITEMS, DIM)) * 10.0 ** rng.integers(-3, 3), rng.normal(size=N_ITEMS),
                int(rng.integers(1, 10))) for i in range(12)]
    out = []
    ids = rng.permutation(np.arange(100, 112))  # the ids a node gets change from run to run too
    for order, renamed in ((range(12), False), (rng.permutation(12), False), (rng.permutation(12), True)):
        s = _strategy()
        arrays, _ = s.aggregate_train(1, [_reply(int(ids[j]) if renamed else replies[j][0], *replies[j][1:])
                                          for j in order])
        out.append(arrays["item_embedding"].numpy())
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])


@pytest.mark.parametrize("bad,reason", [
    (lambda: _reply(9, np.full((N_ITEMS, DIM), np.nan), np.zeros(N_ITEMS), 2), "non-finite"),
    (lambda: _reply(9, np.zeros((N_ITEMS + 1, DIM)), np.zeros(N_ITEMS), 2), "shape"),
    (lambda: _reply(9, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), -1), "num-examples"),
    (lambda: _reply(9, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), 2.5), "num-examples"),
    (lambda: _reply(9, np.full((N_ITEMS, DIM), np.inf), np.zeros(N_ITEMS), 2), "non-finite"),
    (lambda: _reply(9, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), 10**9), "num-examples"),
    (lambda: _reply(9, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), 2,
                    extra={"user_emb": Array(np.zeros((2, DIM)))}), "keys"),
])
def test_malformed_replies_are_rejected_and_do_not_touch_the_aggregate(bad, reason):
    rng = np.random.default_rng(1)
    good = [_reply(i + 1, rng.normal(size=(N_ITEMS, DIM)), rng.normal(size=N_ITEMS), 2) for i in range(2)]
    s = _strategy()
    clean, _ = s.aggregate_train(1, good)
    s = _strategy()
    arrays, _ = s.aggregate_train(1, good + [bad()])
    np.testing.assert_allclose(arrays["item_embedding"].numpy(), clean["item_embedding"].numpy())
    assert len(s.rejected) == 1 and reason in s.rejected[0][2]
    assert s.round_info[1]["replies"] == 2 and s.round_info[1]["rejected"] == 1


def test_error_replies_are_dropped_and_no_valid_reply_keeps_parameters():
    s = _strategy(node_errors="continue")
    out = Message(content=RecordDict(), dst_node_id=4, message_type=MessageType.TRAIN)
    arrays, metrics = s.aggregate_train(1, [Message(Error(code=0, reason="node died"), reply_to=out)])
    assert arrays is None and metrics is None  # Flower keeps the previous global parameters
    assert "node died" in s.rejected[0][2]


def test_itemwise_divides_each_row_by_the_users_that_trained_it():
    # node A: 2 users, touched rows 0,1 (fraction 1.0, 0.5); node B: 1 user touched row 0 only
    ua = np.zeros((N_ITEMS, DIM)); ua[0] = 1.0; ua[1] = 0.5
    ub = np.zeros((N_ITEMS, DIM)); ub[0] = 4.0
    ca = np.array([1.0, 0.5, 0, 0, 0, 0]); cb = np.array([1.0, 0, 0, 0, 0, 0])
    s = _strategy(aggregation="itemwise")
    arrays, _ = s.aggregate_train(1, [_reply(1, ua, np.zeros(N_ITEMS), 2,
                                             {"item_counts": Array(ca.astype(np.float32))}),
                                      _reply(2, ub, np.zeros(N_ITEMS), 1,
                                             {"item_counts": Array(cb.astype(np.float32))})])
    e = arrays["item_embedding"].numpy()
    # row 0: users' updates sum 2*1 + 4 = 6 over 3 users that touched it -> 2; row 1: 2*0.5 / 1 user -> 1
    np.testing.assert_allclose(e[0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(e[1], 1.0, rtol=1e-6)
    assert np.all(e[2:] == 0)


def test_train_metrics_epsilon_distribution():
    recs = [_reply(1, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), 2, metrics={"epsilon": [1.0, 3.0]}).content,
            _reply(2, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), 1, metrics={"epsilon": [2.0]}).content]
    m = aggregate_train_metrics(recs, "num-examples")
    assert (m["epsilon-min"], m["epsilon-median"], m["epsilon-max"]) == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_server_optimiser_matches_torch(opt):
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(4, 3)).astype(np.float64)
    p = torch.nn.Parameter(torch.tensor(x0))
    tor = torch.optim.Adam([p], lr=0.01) if opt == "adam" else torch.optim.SGD([p], lr=0.01)
    params, state = {"w": x0.copy()}, OptState()
    for _ in range(5):
        upd = rng.normal(size=(4, 3))
        p.grad = torch.tensor(-upd)  # the update is a descent direction: -gradient
        tor.step()
        params, state = server_step(params, {"w": upd}, state, opt=opt, lr=0.01)
    np.testing.assert_allclose(params["w"], p.detach().numpy(), rtol=1e-6, atol=1e-9)


def test_validate_reply_accepts_good_reply():
    assert validate_reply(_reply(1, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), 3).content, SHAPES, 3) is None


def test_seeded_sampling_is_reproducible():
    ids = list(range(10, 30))
    assert sample_nodes(0, 4, ids, 0.5) == sample_nodes(0, 4, list(reversed(ids)), 0.5)
    assert sample_nodes(0, 4, ids, 0.5) != sample_nodes(0, 5, ids, 0.5)
    assert sample_nodes(0, 4, ids, 0.5) != sample_nodes(1, 4, ids, 0.5)
    assert len(sample_nodes(0, 4, ids, 0.5)) == 10 and len(set(sample_nodes(0, 4, ids, 0.5))) == 10


def _error(node, reason="node died"):
    out = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(Error(code=0, reason=reason), reply_to=out)


def test_dropouts_leave_fedavg_over_the_valid_replies():
    rng = np.random.default_rng(3)
    ups = [rng.normal(size=(N_ITEMS, DIM)) for _ in range(3)]
    ns = [4, 1, 2]
    replies = [_reply(i + 1, u, np.zeros(N_ITEMS), n) for i, (u, n) in enumerate(zip(ups, ns))]
    replies += [_error(7), _reply(8, np.full((N_ITEMS, DIM), np.nan), np.zeros(N_ITEMS), 2)]
    s = _strategy(min_replies=3, node_errors="continue")
    arrays, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["item_embedding"].numpy(), np.average(ups, axis=0, weights=ns),
                               rtol=1e-5, atol=1e-6)
    assert s.round_info[1]["failed"] == 1 and s.round_info[1]["rejected"] == 1 and s.round_info[1]["contributing"] == 3


def test_fewer_than_min_replies_keeps_parameters():
    s = _strategy(min_replies=2, node_errors="continue")
    arrays, _ = s.aggregate_train(1, [_reply(1, np.ones((N_ITEMS, DIM)), np.zeros(N_ITEMS), 2), _error(2)])
    assert arrays is None and s.round_info[1]["skipped"] == 1


#: Error replies as Flower's simulation engine writes them (a ClientApp's exception, a dead actor).
RAISED = ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
          "Message: node data file /tmp/x/node-1.npz: not readable (ValueError)'>")
DIED = ("<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing this task.\n"
        "The actor is dead because its worker process has died.'>")
DROPPED = ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
           "Message: simulated dropout of node 3 in round 2'>")


def test_a_node_error_is_one_line():
    assert st.error_reason(RAISED) == "node data file /tmp/x/node-1.npz: not readable (ValueError)"
    assert st.error_reason(DIED) == "ActorDiedError: The actor died unexpectedly before finishing this task."
    assert st.error_reason("node died") == "node died"


def test_a_node_error_stops_the_run_before_its_round_is_aggregated_unless_told_to_continue():
    good = _reply(1, np.ones((N_ITEMS, DIM)), np.zeros(N_ITEMS), 2)
    s = _strategy()
    arrays, _ = s.aggregate_train(1, [good, _error(2, DROPPED)])  # a simulated dropout is the run's design
    assert arrays is not None and s.round_info[1]["failed"] == 1
    gone = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node unavailable"), reply_to=Message(
        content=RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN))  # a device that left
    arrays, _ = s.aggregate_train(2, [good, gone])
    assert arrays is not None and s.round_info[2]["failed"] == 1
    for reason, said in ((RAISED, "node-1.npz: not readable"), (DIED, "ActorDiedError")):
        s = _strategy()
        with pytest.raises(st.NodeFailure, match=f"^round 2: a node failed \\(.*{said}.*--resume continues it"):
            s.aggregate_train(2, [good, _error(2, reason)])
        assert 2 not in s.round_info or "replies" not in s.round_info[2]  # nothing of the round was counted
        s = _strategy(node_errors="continue")
        arrays, _ = s.aggregate_train(2, [good, _error(2, reason)])
        assert arrays is not None and s.round_info[2]["failed"] == 1


def test_nodes_without_trained_users_carry_no_weight():
    s = _strategy()
    arrays, metrics = s.aggregate_train(1, [_reply(1, np.ones((N_ITEMS, DIM)), np.zeros(N_ITEMS), 3),
                                            _reply(2, np.zeros((N_ITEMS, DIM)), np.zeros(N_ITEMS), 0,
                                                   metrics={"declined": 4})])
    np.testing.assert_allclose(arrays["item_embedding"].numpy(), 1.0)
    assert s.round_info[1]["contributing"] == 1


@pytest.mark.parametrize("mode", ["client", "server"])
def test_user_level_noise_is_on_before_the_server_optimiser(mode, monkeypatch):
    """The server optimiser (and its state) only ever sees the noised sum: capture
    what reaches ``server_step`` and rebuild it from Flower's noise draw (reproducible
    noise: the draw the seed gives)."""
    import fedrec_app.server.strategy as st

    seen = {}

    def spy(params, update, state, **kw):
        seen["update"] = {k: np.array(v) for k, v in update.items()}
        return server_step(params, update, state, **kw)

    monkeypatch.setattr(st, "server_step", spy)
    cfg = FedConfig(server_opt="adam", server_lr=0.1, users_per_node=1, user_dp=mode, user_noise_multiplier=2.0,
                    user_clip=0.5, user_sample_rate=0.5, seed=3, reproducible_noise=True)
    s = FedRecStrategy(cfg, shapes=SHAPES, n_nodes=4, n_users=4)
    cur = {"item_embedding": np.full((N_ITEMS, DIM), 0.25, np.float32), "item_bias": np.zeros(N_ITEMS, np.float32)}
    s.optimizer.current = dict(cur)
    s.user_dp.current_arrays = ArrayRecord({k: Array(v) for k, v in cur.items()})
    s.valid.inner.summer.current = dict(cur)
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=(N_ITEMS, DIM)) * 0.01 for _ in range(2)]  # norms < clip: clipping is a no-op
    replies = [_reply(i + 1, cur["item_embedding"] + d, cur["item_bias"], 1) for i, d in enumerate(deltas)]
    s.aggregate_train(1, replies)
    # Flower's noise: numpy's global generator, seeded per round by the strategy
    np.random.seed(DPRandomness.from_seed(cfg.seed, 1, 13).legacy_seed())
    sigma = s.user_dp.noise_multiplier
    used_clip = s.user_dp.clipping_norm
    noise = [np.random.normal(0, sigma * used_clip, size=a.shape) for a in (cur["item_embedding"], cur["item_bias"])]
    expected = (sum(deltas) + noise[0]) / (0.5 * 4)
    np.testing.assert_allclose(seen["update"]["item_embedding"], expected, rtol=1e-4, atol=1e-6)
    unnoised = sum(deltas) / 2
    assert np.abs(seen["update"]["item_embedding"] - unnoised).max() > 0.1
    assert "users" not in s.record.train[1]  # who took part is what user sampling keeps secret


def test_user_level_noise_is_secret_by_default():
    """Without reproducible-noise the server's noise comes from OS entropy: the same
    replies aggregated twice in the same round get different noise, and none of it is
    the draw the seed would give."""
    cfg = FedConfig(server_opt="sgd", server_lr=1.0, users_per_node=1, user_dp="server", user_noise_multiplier=2.0,
                    user_clip=0.5, seed=3)
    cur = {"item_embedding": np.zeros((N_ITEMS, DIM), np.float32), "item_bias": np.zeros(N_ITEMS, np.float32)}
    out = []
    for _ in range(2):
        s = FedRecStrategy(cfg, shapes=SHAPES, n_nodes=2, n_users=2)
        s.optimizer.current = dict(cur)
        s.user_dp.current_arrays = ArrayRecord({k: Array(v) for k, v in cur.items()})
        s.valid.inner.summer.current = dict(cur)
        arrays, _ = s.aggregate_train(1, [_reply(i + 1, cur["item_embedding"] + 1e-3, cur["item_bias"], 1)
                                          for i in range(2)])
        out.append(arrays["item_embedding"].numpy())
    assert np.abs(out[0] - out[1]).min() > 0
    np.random.seed(DPRandomness.from_seed(cfg.seed, 1, 13).legacy_seed())
    seeded = 2e-3 + np.random.normal(0, 2.0 * 0.5, size=(N_ITEMS, DIM))  # the sum the seed's noise would give
    assert not np.allclose(out[0] * 2, seeded, atol=1e-3)


def test_adaptive_clipping_is_refused_and_flowers_wrapper_is_still_under_noised():
    """fedrec refuses user-dp='adaptive'.  Why, as a check on Flower: its adaptive wrapper
    updates the clip before it noises the sum, so the noise is its (effective) multiplier
    times the next round's clip; with every update clipped the clip shrinks (Flower counts
    the clipped updates where Andrew et al. count the unclipped ones), and the sum is
    under-noised for the clip it applied (Andrew et al. calibrate to the clip
    applied).  When an upgrade of Flower noises at the applied clip, this test fails and
    the refusal can be lifted."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping

    from fedrec.config import ConfigError

    with pytest.raises(ConfigError, match="adaptive clipping is refused"):
        FedConfig(users_per_node=1, user_dp="adaptive", user_noise_multiplier=1.0)
    cfg = FedConfig(server_opt="sgd", server_lr=1.0, users_per_node=1)
    record = st.RunRecord()
    summer = st.SumOfUpdates(cfg, record, n_nodes=20, keys=tuple(SHAPES))
    sigma, clip = 1.0, 0.5
    wrapper = DifferentialPrivacyServerSideAdaptiveClipping(summer, noise_multiplier=sigma, num_sampled_clients=1,
                                                            initial_clipping_norm=clip, target_clipped_quantile=0.5,
                                                            clip_norm_lr=0.2, clipped_count_stddev=1.0)
    cur = {"item_embedding": np.zeros((N_ITEMS, DIM), np.float32), "item_bias": np.zeros(N_ITEMS, np.float32)}
    summer.current = dict(cur)
    wrapper.current_arrays = ArrayRecord({k: Array(v) for k, v in cur.items()})
    big = np.full((N_ITEMS, DIM), 10.0, np.float32)  # every update far above the clip: all clipped
    replies = [_reply(i + 1, big, cur["item_bias"], 1) for i in range(20)]
    np.random.seed(0)
    applied = wrapper.clipping_norm
    noised, _ = wrapper.aggregate_train(1, replies)
    signal = 20 * applied * big / np.sqrt((big**2).sum())  # the sum of the twenty clipped updates
    realised = float((noised["item_embedding"].numpy() - signal).std())
    assert wrapper.clipping_norm < applied  # the clip moved before the noise was drawn
    assert wrapper.noise_multiplier > sigma  # Flower's own target for the sum: sigma_eff >= sigma
    assert realised < 0.95 * wrapper.noise_multiplier * applied


def _robust(n_nodes, **kw):
    cfg = FedConfig(server_opt="sgd", server_lr=1.0, users_per_node=10, **kw)
    s = FedRecStrategy(cfg, shapes=SHAPES, n_nodes=n_nodes, item_tables=("item_embedding", "item_bias"))
    s.optimizer.current = {"item_embedding": np.zeros((N_ITEMS, DIM), np.float32),
                           "item_bias": np.zeros(N_ITEMS, np.float32)}
    return s


def _flat(u, b):
    return np.r_[np.ravel(u), np.ravel(b)]


def _krum_scores(vecs, f):
    """Krum's score by hand: the summed squared distances to the n - f - 2 nearest others."""
    n = len(vecs)
    d = np.array([[np.sum((a - b) ** 2) for b in vecs] for a in vecs])
    return np.array([np.sort(np.delete(d[i], i))[: max(1, n - f - 2)].sum() for i in range(n)])


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum", "multikrum", "bulyan"])
def test_robust_rules_equal_their_oracles(rule):
    """Flower's robust strategies aggregate the nodes' updates as their definitions say
    (hand-computed: np.median; a sorted, trimmed np.mean; Krum's scores; MultiKrum's
    weighted mean of the n - f best; Bulyan of identical honest updates and an outlier),
    and a node's inflated num-examples moves no coordinate-wise rule."""
    rng = np.random.default_rng(4)
    n = 7
    ups = [rng.normal(size=(N_ITEMS, DIM)) for _ in range(n)]
    bs = [rng.normal(size=N_ITEMS) for _ in range(n)]
    ups[6], bs[6] = ups[6] + 50.0, bs[6] - 50.0  # one malicious node, far away
    ns = [3, 7, 1, 4, 4, 2, 10]
    if rule == "bulyan":
        ups = [np.full((N_ITEMS, DIM), 0.25)] * 6 + [ups[6]]
        bs = [np.full(N_ITEMS, -0.5)] * 6 + [bs[6]]
    s = _robust(n, aggregation=rule, byzantine_nodes=1, trim_beta=0.2)
    arrays, _ = s.aggregate_train(1, [_reply(i + 1, u, b, k) for i, (u, b, k) in enumerate(zip(ups, bs, ns))])
    got = _flat(arrays["item_embedding"].numpy(), arrays["item_bias"].numpy())
    vecs = [_flat(u, b) for u, b in zip(ups, bs)]
    if rule == "median":
        want = np.median(vecs, axis=0)
    elif rule == "trimmed-mean":
        cut = int(0.2 * n)
        want = np.sort(vecs, axis=0)[cut : n - cut].mean(0)
    elif rule == "krum":
        want = vecs[int(np.argmin(_krum_scores(vecs, 1)))]
    elif rule == "multikrum":
        best = np.argsort(_krum_scores(vecs, 1))[: n - 1]
        want = np.average([vecs[i] for i in best], axis=0, weights=[ns[i] for i in best])
        assert 6 not in best
    else:
        want = vecs[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(got).max() < 10  # the far node moved nothing far
    if rule in ("median", "trimmed-mean", "bulyan"):  # weights do not enter: inflating a count gains nothing
        s = _robust(n, aggregation=rule, byzantine_nodes=1, trim_beta=0.2)
        inflated, _ = s.aggregate_train(1, [_reply(i + 1, u, b, 10 if i == 6 else k)
                                            for i, (u, b, k) in enumerate(zip(ups, bs, ns))])
        np.testing.assert_array_equal(inflated["item_embedding"].numpy(), arrays["item_embedding"].numpy())


@pytest.mark.parametrize("rule,nodes", [("krum", 4), ("multikrum", 4), ("bulyan", 6)])
def test_robust_rules_refuse_too_few_nodes(rule, nodes):
    with pytest.raises(ValueError, match=f"aggregation={rule} with byzantine-nodes=1 needs at least"):
        _robust(nodes, aggregation=rule, byzantine_nodes=1)


@pytest.mark.parametrize("other", [dict(user_dp="client", user_noise_multiplier=1.0), dict(secure_aggregation=True),
                                   dict(als=True)])
def test_robust_rules_refuse_what_sums_the_updates(other):
    with pytest.raises(ValueError, match="needs each node's update"):
        resolved(FedConfig(aggregation="median", **other))


def test_each_round_steps_from_the_parameters_it_sent():
    """The optimiser steps from the parameters of the round's messages: those it returned the
    round before (kept, not converted again), or any others Flower sends (a resumed or
    warm-started run), and an epsilon distribution over every node's users."""
    class _Grid:
        def get_node_ids(self):
            return [1, 2, 3]

    s = _strategy()
    zero = {"item_embedding": np.zeros((N_ITEMS, DIM), np.float32), "item_bias": np.zeros(N_ITEMS, np.float32)}
    s.configure_train(1, ArrayRecord({k: Array(v) for k, v in zero.items()}), _config(), _Grid())
    up = [_reply(1, np.ones((N_ITEMS, DIM)), np.ones(N_ITEMS), 2, metrics={"epsilon": [0.5, 2.0]}),
          _reply(2, np.ones((N_ITEMS, DIM)), np.ones(N_ITEMS), 1, metrics={"epsilon": [1.0]})]
    first, metrics = s.aggregate_train(1, up)
    assert (metrics["epsilon-min"], metrics["epsilon-median"], metrics["epsilon-max"]) == (0.5, 1.0, 2.0)
    s.configure_train(2, first, _config(), _Grid())  # what Flower sends next: the record returned
    second, _ = s.aggregate_train(2, up)
    np.testing.assert_allclose(second["item_embedding"].numpy(), 2.0)  # sgd, lr 1: 0 + 1 + 1
    other = ArrayRecord({k: Array(v + 5) for k, v in zero.items()})  # e.g. a checkpoint's parameters
    s.configure_train(3, other, _config(), _Grid())
    third, _ = s.aggregate_train(3, up)
    np.testing.assert_allclose(third["item_embedding"].numpy(), 6.0)
    np.testing.assert_allclose(third["item_bias"].numpy(), 6.0)


def _config():
    from flwr.app import ConfigRecord

    return ConfigRecord()


def test_the_servers_novelty_and_arp_from_top10_counts_equal_the_mean_over_users():
    """Nodes send how many of their users' top-10 lists each item is in; with the
    server's popularity this gives exactly the mean over users of each list's novelty and
    ARP (full lists), so no node needs the federation's item popularity."""
    from fedrec.metrics.beyond import list_novelty_and_popularity, per_user_novelty, per_user_popularity

    rng = np.random.default_rng(3)
    n_items, n_users = 200, 57
    lists = np.stack([rng.choice(n_items, size=10, replace=False) for _ in range(n_users)])
    pop = rng.integers(0, 40, size=n_items).astype(np.float64)
    counts = np.bincount(lists.ravel(), minlength=n_items)
    half = [{"test-topk": np.bincount(lists[:30].ravel(), minlength=n_items).tolist(), "test/ndcg@10": 1.0,
             "test-count": 30},
            {"test-topk": np.bincount(lists[30:].ravel(), minlength=n_items).tolist(), "test/ndcg@10": 2.0,
             "test-count": 27}]
    out = evaluation_means(half, item_popularity=pop, n_users=943)
    assert out["test/novelty@10"] == pytest.approx(per_user_novelty(lists, pop, 943).mean(), rel=1e-12)
    assert out["test/arp@10"] == pytest.approx(per_user_popularity(lists, pop).mean(), rel=1e-12)
    assert list_novelty_and_popularity(counts, pop, 943) == (pytest.approx(out["test/novelty@10"]),
                                                              pytest.approx(out["test/arp@10"]))
    assert "test/novelty@10" not in evaluation_means(half)  # without the server's popularity: none
