"""Planning and running are separate: a node trains and evaluates from its own data
file (its users' rows only) exactly as it does from the whole federation, and it
takes the privacy mechanism the server resolved instead of calibrating again."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.federated import node
from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved
from fedrec.federated.federation import init_global_params, load_federation, load_node_data, write_node_data


@pytest.mark.parametrize("settings", [
    dict(model="mf", noise_multiplier=1.0, sample_rate=0.5, reproducible_noise=True),  # the same draws to compare
    dict(model="two-tower", cold_items=0.2),  # item features and the held-out item views
])
def test_node_file_gives_the_same_training_and_evaluation(tmp_path, settings):
    cfg = resolved(FedConfig(data="synthetic:40x30:3", dim=4, users_per_node=15, **settings))
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    paths = write_node_data(fed, tmp_path)
    assert [p.name for p in paths] == [f"node-{p}.npz" for p in range(fed.n_nodes)] and fed.n_nodes == 3
    with np.load(paths[0]) as z:  # no federation-wide statistic of the interactions
        assert "item_popularity" not in z.files
    for p, path in enumerate(paths):
        view, part = load_node_data(str(path))
        assert part == p
        users = fed.cohorts[p]
        np.testing.assert_array_equal(view.cohorts[p], users)
        assert all(len(c) == 0 for q, c in enumerate(view.cohorts) if q != p)  # no other node's users
        for stage in ("train", "valid", "test"):  # only its users' rows hold data, and exactly theirs
            mine, full = getattr(view.split, stage), getattr(fed.split, stage)
            assert mine.nnz == full[users].nnz
            assert (mine[users] != full[users]).nnz == 0
        st = node.load_state({}, fed, p, cfg)
        u1, m1, s1 = node.train_round(cfg, fed, p, st, global_params=params, server_round=2)
        u2, m2, s2 = node.train_round(cfg, view, p, node.load_state({}, view, p, cfg), global_params=params,
                                      server_round=2)
        for k in u1:
            np.testing.assert_array_equal(u1[k], u2[k])
        assert m1 == m2
        e1 = node.evaluate_round(cfg, fed, p, s1, global_params=params)
        e2 = node.evaluate_round(cfg, view, p, s2, global_params=params)
        assert e1.keys() == e2.keys()
        for k in e1:
            np.testing.assert_allclose(e1[k], e2[k], rtol=1e-12, err_msg=k)
        # the ordered histories (sequential models only) are read from the file when first asked for
        from fedrec.federated.federation import histories

        assert "history" not in dict(view._node_eval)
        for stage in ("test", "train"):
            mine, full = histories(view, stage), histories(fed, stage)
            for u in users.tolist():
                np.testing.assert_array_equal(mine.of(u), full.of(u))


def test_node_file_size_grows_with_its_own_users(tmp_path):
    fed = load_federation(FedConfig(data="synthetic:200x50:1", users_per_node=20))
    paths = write_node_data(fed, tmp_path)
    view, p = load_node_data(str(paths[0]))
    own = sum(getattr(view.split, s).nnz for s in ("train", "valid", "test"))
    total = sum(getattr(fed.split, s).nnz for s in ("train", "valid", "test"))
    assert own == sum(getattr(fed.split, s)[fed.cohorts[0]].nnz for s in ("train", "valid", "test"))
    assert own < total / 5


def test_setup_reads_the_data_file_and_the_servers_mechanism(tmp_path, monkeypatch):
    import fedrec.privacy.accounting as acc

    rc = FedConfig(data="synthetic:40x30:3", users_per_node=15, target_epsilon=4.0).to_run_config()
    fed = load_federation(FedConfig.from_run_config(rc))
    path = write_node_data(fed, tmp_path, partitions=[1])[0]

    def no_calibration(**kw):
        raise AssertionError("the node calibrated the noise itself")

    monkeypatch.setattr(acc, "calibrate_noise", no_calibration)
    cfg, view, part = node.setup(rc, {"data-file": str(path), "partition-id": 1},
                                 {"noise-multiplier": 1.25, "user-noise-multiplier": 0.0})
    assert part == 1 and cfg.noise_multiplier == 1.25 and cfg.target_epsilon == 0
    np.testing.assert_array_equal(view.cohorts[1], fed.cohorts[1])
    with pytest.raises(ValueError, match="holds partition 1, not partition-id=0"):
        node.setup(rc, {"data-file": str(path), "partition-id": 0}, {"noise-multiplier": 1.25})


def test_unreadable_node_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "node-0.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"node data file {bad}: not readable"):
        load_node_data(str(bad))


def test_simulation_client_reads_its_node_file_not_the_dataset(tmp_path, monkeypatch):
    """In a simulation the ClientApp reads node P's file from the directory the driver
    wrote (as a SuperNode of a deployment does): it never loads the dataset, and it
    replies exactly what a client that loads the whole federation replies."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import fedrec.federated.node as node_mod
    from fedrec_app.clients.app import array_record, make_client_app

    for attr in ("_task_id", "_run_id", "_node_id"):  # the identity a server process would have
        monkeypatch.setattr(TaskIdentity, attr, 1)

    cfg = FedConfig(data="synthetic:40x30:3", dim=4, users_per_node=15, noise_multiplier=1.0, sample_rate=0.5,
                    reproducible_noise=True)  # the same draws in both apps, to compare their replies
    rc = cfg.to_run_config()
    fed = load_federation(resolved(cfg))
    write_node_data(fed, tmp_path)
    params = init_global_params(cfg, fed)

    def reply(app, p):
        content = RecordDict({"arrays": array_record(params), "config": ConfigRecord(
            {"server-round": 1, "mechanism/noise-multiplier": 1.0, "mechanism/user-noise-multiplier": 0.0})})
        msg = Message(content=content, dst_node_id=p + 1, message_type=MessageType.TRAIN)
        ctx = Context(run_id=1, node_id=p + 1, node_config={"partition-id": p, "num-partitions": fed.n_nodes},
                      state=RecordDict(), run_config=rc)
        out = app(msg, ctx).content
        return {k: v.numpy() for k, v in out["arrays"].items()}, dict(out["metrics"])

    whole = [reply(make_client_app(rc), p) for p in range(fed.n_nodes)]

    def no_dataset(*a, **k):
        raise AssertionError("a simulation node loaded the dataset")

    monkeypatch.setattr(node_mod, "load_federation", no_dataset)
    own = [reply(make_client_app(rc, node_data=str(tmp_path)), p) for p in range(fed.n_nodes)]
    for (u1, m1), (u2, m2) in zip(whole, own):
        assert u1.keys() == u2.keys() and m1 == m2
        for k in u1:
            np.testing.assert_array_equal(u1[k], u2[k])


def test_the_client_app_travels_as_its_recipe_and_answers_alike(tmp_path, monkeypatch):
    """Flower's engine pickles the ClientApp into every actor call: fedrec's pickles as its
    run config and node-data path, not as its handlers' code; unpickled in
    a process that has not built it, it is built once and answers as the original does."""
    import ray.cloudpickle as cloudpickle
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedrec_app.clients import app as client_module

    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    cfg = FedConfig(data="synthetic:40x30:3", dim=4, users_per_node=15, noise_multiplier=1.0, sample_rate=0.5,
                    reproducible_noise=True)  # the same draws in both apps, to compare their replies
    rc = cfg.to_run_config()
    fed = load_federation(resolved(cfg))
    write_node_data(fed, tmp_path / "nodes")
    params = init_global_params(cfg, fed)

    def reply(app, p, state_dir):
        content = RecordDict({"arrays": client_module.array_record(params), "config": ConfigRecord(
            {"server-round": 1, "mechanism/noise-multiplier": 1.0, "mechanism/user-noise-multiplier": 0.0})})
        msg = Message(content=content, dst_node_id=p + 1, message_type=MessageType.TRAIN)
        ctx = Context(run_id=1, node_id=p + 1, node_config={"partition-id": p, "num-partitions": fed.n_nodes,
                                                            "state-dir": str(state_dir)},
                      state=RecordDict(), run_config=rc)
        out = app(msg, ctx).content
        return {k: v.numpy() for k, v in out["arrays"].items()}, dict(out["metrics"])

    original = client_module.make_client_app(rc, node_data=str(tmp_path / "nodes"))
    load_app = lambda: original  # noqa: E731 - as Flower's engine wraps the app it sends
    data = cloudpickle.dumps(load_app)
    # the recipe is the run config (2.4 KB pickled) and a path; the handlers' code was 6 KB more
    assert len(cloudpickle.dumps(original)) < len(cloudpickle.dumps(rc)) + 300
    assert cloudpickle.loads(data)() is original  # this process: the same app
    monkeypatch.setattr(client_module, "_SHARED_APPS", {})  # another process: none built yet
    rebuilt = cloudpickle.loads(data)()
    assert isinstance(rebuilt, client_module.SharedClientApp) and rebuilt is not original
    assert cloudpickle.loads(data)() is rebuilt  # built once per process
    for p in range(fed.n_nodes):
        (u1, m1), (u2, m2) = reply(original, p, tmp_path / "a"), reply(rebuilt, p, tmp_path / "b")
        assert u1.keys() == u2.keys() and m1 == m2
        for k in u1:
            np.testing.assert_array_equal(u1[k], u2[k])
