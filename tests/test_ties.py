"""Ties in time carry no information: the file's row order never changes a split, the
histories sequential models read or any metric; the order inside a tie is drawn from
the split's seed; the last-group protocol holds out every item of the last timestamp."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec import baselines
from fedrec.data import leave_last_group_out, load_dataset, make_split, tie_groups
from fedrec.data.dataset import Dataset
from fedrec.data.sequences import stage_histories
from fedrec.federated.federation import build_model

EV = dict(sampled_negatives=0, seed=0)


def _bursts(n_users=40, n_items=60, seed=0):
    """Rows (user, item, timestamp) with many ties: each user rates in bursts of 1-4
    items at one timestamp, the items of a burst consecutive ids (as in MovieLens, where
    a burst's rows run in increasing movie id)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        t, seen = 1_000_000, set()
        for _ in range(rng.integers(3, 7)):
            start = int(rng.integers(1, n_items - 4))
            burst = [i for i in range(start, start + int(rng.integers(1, 5))) if i not in seen]
            seen.update(burst)
            rows += [(u, i, t) for i in burst]
            t += int(rng.integers(1, 5)) * 3600
    return rows


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},5.0,{t}\n" for u, i, t in rows))
    return str(path)


def _orders(rows, seed=1):
    """The same rows as written in four orders: as made, shuffled across and within
    ties, each tie group sorted by item id ascending, and descending."""
    rng = np.random.default_rng(seed)
    by_time = sorted(rows, key=lambda r: (r[0], r[2]))
    return {"as-made": rows,
            "shuffled": [rows[j] for j in rng.permutation(len(rows))],
            "ascending": sorted(by_time, key=lambda r: (r[0], r[2], r[1])),
            "descending": sorted(by_time, key=lambda r: (r[0], r[2], -r[1]))}


def _same_split(a, b):
    for stage in ("train", "valid", "test"):
        x, y = getattr(a, stage), getattr(b, stage)
        assert (x != y).nnz == 0, stage


@pytest.mark.parametrize("kind", ["leave-last-out", "leave-last-group-out", "temporal-ratio"])
def test_row_order_changes_no_split_and_no_history(tmp_path, kind):
    rows = _bursts()
    splits = {name: (ds := load_dataset(_write(tmp_path / name / "ratings.csv", r)),
                     make_split(ds, kind=kind, tie_seed=3))
              for name, r in _orders(rows).items()}
    ref_ds, ref = splits["as-made"]
    assert tie_groups(ref_ds)["tied_last"] > 0.3  # the data has the ties the test is about
    for name, (ds, sp_) in splits.items():
        _same_split(ref, sp_)
        for stage in ("train", "valid", "test"):
            h, g = stage_histories(ref_ds, ref, stage), stage_histories(ds, sp_, stage)
            np.testing.assert_array_equal(h.indptr, g.indptr)
            np.testing.assert_array_equal(h.items, g.items, err_msg=f"{name} {stage}")


def test_the_tie_order_is_drawn_from_the_seed(tmp_path):
    ds = load_dataset(_write(tmp_path / "r" / "ratings.csv", _bursts()))
    a, b, c = (make_split(ds, tie_seed=s) for s in (0, 0, 1))
    _same_split(a, b)
    assert (a.test != c.test).nnz > 0  # another seed, another draw inside ties
    # and the draw is not the item order: about half the tied test targets are the largest id of their tie
    order = np.lexsort((ds.item, ds.timestamp, ds.user))
    u, i, t = ds.user[order], ds.item[order], ds.timestamp[order]
    largest = {}
    for uu, ii, tt in zip(u.tolist(), i.tolist(), t.tolist()):
        largest[(uu, tt)] = ii
    last_t = {uu: tt for uu, tt in zip(u.tolist(), t.tolist())}
    tied = [(uu, a.test.indices[a.test.indptr[uu]]) for uu in range(ds.n_users)
            if a.test.indptr[uu + 1] > a.test.indptr[uu] and np.sum((u == uu) & (t == last_t[uu])) > 1]
    share = np.mean([largest[(uu, last_t[uu])] == ii for uu, ii in tied])
    assert len(tied) > 10 and share < 0.8


def test_metrics_do_not_depend_on_the_row_order(tmp_path):
    """MostPop, EASE and a sequential model (SASRec, one epoch) score the same on the
    file written in any order; with the file's order as tie-break (the order a reader
    gives) they would not."""
    results = {}
    for name, r in _orders(_bursts(n_users=60)).items():
        ds = load_dataset(_write(tmp_path / name / "ratings.csv", r))
        sp_ = make_split(ds, tie_seed=0)
        hist = {s: stage_histories(ds, sp_, s) for s in ("train", "valid", "test")}
        model = build_model("sasrec", ds, dim=8, seed=0, max_len=10)
        results[name] = (baselines.fit_most_popular(sp_, **EV).test.metrics,
                         baselines.fit_ease(sp_, lambdas=(10.0,), **EV).test.metrics,
                         baselines.fit_sequential(model, sp_, hist, epochs=1, batch_size=32, **EV).test.metrics)
    for name in results:
        for ref, got in zip(results["as-made"], results[name]):
            assert ref == pytest.approx(got, abs=1e-12), name


def test_next_ids_heuristic_gains_nothing_from_the_file_order(tmp_path):
    """The heuristic that exploits how MovieLens files were assembled ("the unseen items
    with the next ids above the last one in the history") scores exactly the same on a
    file whose ties run in increasing id as on a shuffled one; with the file's order as
    tie-break it scored far better on the sorted file."""

    from fedrec_app.simulations.studies.ties import next_ids_ndcg  # split None: the file's order as tie-break

    orders = _orders(_bursts(n_users=200, n_items=200, seed=2))
    got = {}
    for name in ("ascending", "shuffled"):
        ds = load_dataset(_write(tmp_path / name / "ratings.csv", orders[name]))
        got[name] = next_ids_ndcg(ds, make_split(ds, tie_seed=0))
        got[name + "/file-order"] = next_ids_ndcg(ds, None)
    assert got["ascending"] == got["shuffled"]
    assert got["ascending/file-order"] > 1.5 * got["shuffled/file-order"]  # the leak the file's order was


def test_leave_last_group_out_holds_out_every_item_of_the_last_timestamp():
    # user 0: t=1 {0}, t=2 {1, 2}, t=3 {3, 4, 5}; user 1: t=1 {0}, t=2 {1} (two groups: train only)
    user = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    item = np.array([5, 0, 2, 1, 4, 3, 0, 1])
    ts = np.array([3, 1, 2, 2, 3, 3, 1, 2])
    ds = Dataset(user=user, item=item, timestamp=ts, n_users=2, n_items=6, user_ids=np.arange(2),
                 item_ids=np.arange(6))
    sp_ = leave_last_group_out(ds)
    assert sp_.test[0].indices.tolist() == [3, 4, 5] and sp_.valid[0].indices.tolist() == [1, 2]
    assert sp_.train[0].indices.tolist() == [0] and sp_.train[1].indices.tolist() == [0, 1]
    assert sp_.test[1].nnz == 0 and sp_.valid[1].nnz == 0


def test_tie_groups_counts_hand_checked():
    # user 0: times 1, 1, 2 (two tied; its last is not tied); user 1: times 5, 5 (both tied, last tied)
    ds = Dataset(user=np.array([0, 1, 0, 0, 1]), item=np.array([0, 1, 2, 3, 4]), timestamp=np.array([1, 5, 1, 2, 5]),
                 n_users=2, n_items=5, user_ids=np.arange(2), item_ids=np.arange(5))
    assert tie_groups(ds) == {"interactions": 5, "tied_interactions": 0.8, "users": 2, "tied_last": 0.5}


@pytest.mark.parametrize("model", ["mf", "sasrec"])
def test_a_federation_is_the_same_for_every_row_order(tmp_path, model):
    """Everything a federated run's nodes and server read (the node files and the plan)
    is identical, array for array, whatever the row order of the file: federated runs of
    one seed on the two files are the same run."""
    from fedrec.config import FedConfig
    from fedrec.federated.federation import load_federation, write_node_data, write_plan

    files = {}
    for name, r in _orders(_bursts()).items():
        if name not in ("as-made", "descending"):
            continue
        path = _write(tmp_path / name / "ratings.csv", r)
        fed = load_federation(FedConfig(data=path, model=model, users_per_node=15, seed=4))
        files[name] = write_node_data(fed, tmp_path / name / "nodes") + [write_plan(fed, tmp_path / name / "nodes")]
    for a, b in zip(files["as-made"], files["descending"]):
        with np.load(a) as x, np.load(b) as y:
            assert sorted(x.files) == sorted(y.files)
            for k in x.files:
                if k != "name":  # the dataset's name is its directory
                    np.testing.assert_array_equal(x[k], y[k], err_msg=f"{a.name} {k}")
