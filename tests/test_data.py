"""Dataset building, splits (no leakage, chronology), negatives, partitions, synthetic data."""

import numpy as np
import pytest
import scipy.sparse as sp

from fedrec.data import (
    Dataset,
    build_dataset,
    hold_out_items,
    hold_out_users,
    kcore_mask,
    leave_last_out,
    load_dataset,
    partition_users,
    sample_negatives,
    synthetic_dataset,
    temporal_ratio,
)
from fedrec.data.readers import RawData


def _ds(rows):
    """rows: (user, item, timestamp)."""
    a = np.array(rows, dtype=np.int64)
    return Dataset(user=a[:, 0], item=a[:, 1], timestamp=a[:, 2], n_users=a[:, 0].max() + 1, n_items=a[:, 1].max() + 1,
                   user_ids=np.arange(a[:, 0].max() + 1), item_ids=np.arange(a[:, 1].max() + 1))


def _items(m, u):
    return set(m.indices[m.indptr[u] : m.indptr[u + 1]].tolist())


def test_leave_last_out_is_chronological():
    # user 0: items 5 (t=3), 1 (t=1), 2 (t=2), 4 (t=9) -> test 4, valid 5, train {1, 2}
    # user 1: two interactions only -> all in train, not evaluated
    ds = _ds([(0, 5, 3), (0, 1, 1), (0, 2, 2), (0, 4, 9), (1, 3, 5), (1, 0, 6)])
    s = leave_last_out(ds)
    assert _items(s.test, 0) == {4} and _items(s.valid, 0) == {5} and _items(s.train, 0) == {1, 2}
    assert _items(s.train, 1) == {0, 3} and not _items(s.valid, 1) and not _items(s.test, 1)


def test_ties_in_time_keep_file_order():
    ds = _ds([(0, 1, 5), (0, 2, 5), (0, 3, 5)])
    s = leave_last_out(ds)
    assert _items(s.test, 0) == {3} and _items(s.valid, 0) == {2}


def test_splits_are_disjoint_and_cover_everything(tiny_ds):
    for s in (leave_last_out(tiny_ds), temporal_ratio(tiny_ds, valid=0.2, test=0.2)):
        tr, va, te = (m.toarray() > 0 for m in (s.train, s.valid, s.test))
        assert not (tr & va).any() and not (tr & te).any() and not (va & te).any()
        assert (tr | va | te).sum() == tiny_ds.n_interactions
    # every held-out item is later than every training item of its user
    s = temporal_ratio(tiny_ds, valid=0.2, test=0.2)
    t = {(u, i): ts for u, i, ts in zip(tiny_ds.user, tiny_ds.item, tiny_ds.timestamp)}
    for u in range(tiny_ds.n_users):
        tr = [t[u, i] for i in _items(s.train, u)]
        held = [t[u, i] for i in _items(s.valid, u) | _items(s.test, u)]
        if tr and held:
            assert max(tr) <= min(held)


def test_hold_out_users_and_items(tiny_ds):
    s = leave_last_out(tiny_ds)
    cu = hold_out_users(s, tiny_ds, fraction=0.2, seed=0)
    assert len(cu.cold_users) == 6
    for u in cu.cold_users:
        assert cu.train[u].nnz == 0 and cu.valid[u].nnz == 0 and cu.test[u].nnz == 0
        assert len(cu.cold_user_items[int(u)]) == (tiny_ds.user == u).sum()
    ci = hold_out_items(s, tiny_ds, fraction=0.1, seed=0)
    assert ci.train[:, ci.cold_items].nnz == 0 and ci.valid[:, ci.cold_items].nnz == 0
    assert ci.test[:, ci.cold_items].nnz == (np.isin(tiny_ds.item, ci.cold_items)).sum()


def test_negatives_are_never_training_positives_and_do_not_know_held_out_items(tiny_split, rng):
    users = np.repeat(np.arange(tiny_split.n_users), 40)
    neg = sample_negatives(tiny_split.train, users, n=3, rng=rng)
    tr = tiny_split.train.toarray() > 0
    assert not tr[users[:, None], neg].any()
    held = (tiny_split.valid + tiny_split.test).toarray() > 0
    assert held[users[:, None], neg].any()  # excluding them would leak the answers


def test_negatives_error_for_full_user():
    train = sp.csr_matrix(np.ones((1, 3)))
    with pytest.raises(ValueError, match="all 3 items"):
        sample_negatives(train, np.array([0]), rng=np.random.default_rng(0))


def test_build_dataset_implicit_threshold_kcore_and_remap():
    raw = RawData(user=np.array([10, 10, 10, 20, 20, 30]), item=np.array([7, 8, 9, 7, 8, 7]),
                  rating=np.array([5.0, 4, 1, 5, 3, 5]), timestamp=np.arange(6), item_info=None, user_info=None,
                  source="x", format="generic", name="x")
    ds = build_dataset(raw, min_rating=4)
    assert ds.n_interactions == 4 and list(ds.user_ids) == [10, 20, 30] and list(ds.item_ids) == [7, 8]
    ds2 = build_dataset(raw, kcore=2)
    assert list(ds2.user_ids) == [10, 20] and list(ds2.item_ids) == [7, 8]
    with pytest.raises(ValueError, match="no interactions left"):
        build_dataset(raw, min_rating=6)


def test_kcore_mask_iterates():
    u = np.array([0, 0, 1, 1, 2])
    i = np.array([0, 1, 0, 1, 2])
    assert kcore_mask(u, i, 2).tolist() == [True, True, True, True, False]


def test_partition_users():
    parts = partition_users(np.arange(10), users_per_node=4)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError):
        partition_users(np.arange(3), users_per_node=0)


def test_synthetic_is_deterministic_and_scales_without_dense_matrices():
    a = synthetic_dataset(n_users=50, n_items=80, seed=1)
    b = synthetic_dataset(n_users=50, n_items=80, seed=1)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.item, b.item)
    pairs = set(zip(a.user.tolist(), a.item.tolist()))
    assert len(pairs) == a.n_interactions  # no duplicate interactions
    pop = np.sort(a.item_popularity())[::-1]
    assert pop[:8].mean() > 2 * np.median(pop)  # skewed (power-law prior) popularity
    big = synthetic_dataset(n_users=20000, n_items=3000, interactions_per_user=5, seed=0)
    assert big.n_users == 20000 and big.item_genres.shape == (3000, 6)


def test_load_bundled_default(caplog):
    with caplog.at_level("WARNING", logger="fedrec.data"):
        ds = load_dataset("ml-latest-small")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (610, 9742, 100836)
    assert ds.item_genres.shape == (9742, 19) and ds.user_gender is None
    # movies.csv lists 18 movies nobody rated: kept in the catalogue, and said so in one line
    assert (ds.item_popularity() == 0).sum() == 18
    assert ds.info["notes"] == ["18 item(s) of the item metadata have no interaction: kept in the ranked "
                                "catalogue (they can be recommended, never hit)",
                                "23.0% of interactions share their user and timestamp with another (15.4% of users' "
                                "last ones tie with the one before): the order inside a tie is drawn from the run's "
                                "seed, never taken from the file"]
    assert ds.info["ties"]["users"] == 610 and round(ds.info["ties"]["tied_last"] * 610) == 94
    s = leave_last_out(ds)
    assert s.valid.nnz == 610 and s.test.nnz == 610 and s.train.nnz == 100836 - 2 * 610


def test_load_ml100k_by_path(shared_data):
    ds = load_dataset(str(shared_data("ml-100k")))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
    assert ds.item_genres.shape == (1682, 19) and ds.user_gender is not None
    s = leave_last_out(ds)
    assert s.valid.nnz == 943 and s.test.nnz == 943 and s.train.nnz == 100000 - 2 * 943


def test_positive_keys_of_some_users_answer_as_the_whole_matrix():
    """``positive_keys`` (computed once per call of the samplers, for the cohort's users only)
    gives the same answers as the keys of the whole matrix, also when the matrix's
    columns are not sorted within rows."""
    import scipy.sparse as sp

    from fedrec.data.negatives import is_positive, positive_keys

    rng = np.random.default_rng(0)
    dense = rng.random((20, 30)) < 0.3
    train = sp.csr_matrix(dense.astype(np.float32))
    shuffled = train.copy()
    for r in range(20):  # unsorted columns within each row
        a, b = shuffled.indptr[r], shuffled.indptr[r + 1]
        shuffled.indices[a:b] = shuffled.indices[a:b][::-1].copy()
    shuffled.has_sorted_indices = False
    users = np.array([3, 7, 7, 12])
    for m in (train, shuffled):
        keys = positive_keys(m, users)
        assert np.all(np.diff(keys) > 0)
        u = np.repeat(users, 30)
        i = np.tile(np.arange(30), len(users))
        np.testing.assert_array_equal(is_positive(m, u, i, keys=keys), dense[u, i])
        np.testing.assert_array_equal(is_positive(m, u, i), dense[u, i])
