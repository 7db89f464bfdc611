"""Data: readers, the implicit-feedback dataset, splits, negatives, partitions, synthetic data."""

from fedrec.data.dataset import Dataset, build_dataset, kcore_mask
from fedrec.data.negatives import is_positive, sample_negatives
from fedrec.data.partition import partition_users
from fedrec.data.readers import DataFormatError, RawData, bundled_path, interactions_file, read_interactions
from fedrec.data.splits import (
    Split,
    hold_out_items,
    hold_out_users,
    subsample_users,
    leave_last_group_out,
    leave_last_out,
    parse_window,
    tie_groups,
    temporal_ratio,
    time_window,
)
from fedrec.data.synthetic import synthetic_dataset

__all__ = [
    "Dataset",
    "DataFormatError",
    "RawData",
    "Split",
    "build_dataset",
    "bundled_path",
    "hold_out_items",
    "interactions_file",
    "hold_out_users",
    "subsample_users",
    "is_positive",
    "kcore_mask",
    "leave_last_group_out",
    "leave_last_out",
    "load_dataset",
    "make_split",
    "partition_users",
    "read_interactions",
    "sample_negatives",
    "synthetic_dataset",
    "parse_window",
    "temporal_ratio",
    "tie_groups",
    "time_window",
]


def load_dataset(
    data: str,
    *,
    format: str = "auto",
    min_rating: float | None = None,
    kcore: int = 0,
    **reader_options,
) -> Dataset:
    """Read and prepare a dataset.

    ``data`` is ``"ml-latest-small"`` (bundled), the name of a fetched dataset
    (:mod:`fedrec.data.registry`), ``"synthetic:USERSxITEMS[:SEED]"`` or a path
    readable by :func:`read_interactions`.
    """
    if data.startswith("synthetic"):
        return _cached_synthetic(data)
    raw = read_interactions(data, format=format, **reader_options)
    return build_dataset(raw, min_rating=min_rating, kcore=kcore)


def _parse_synthetic(spec: str) -> dict:
    """``synthetic:USERSxITEMS[:SEED[:PER_USER]]`` -> generator arguments."""
    parts = spec.split(":")
    try:
        users, items = (int(x) for x in (parts[1] if len(parts) > 1 else "200x300").split("x"))
        seed = int(parts[2]) if len(parts) > 2 else 0
        per_user = float(parts[3]) if len(parts) > 3 else 20.0
    except ValueError:
        raise ValueError(f"bad synthetic spec {spec!r}; expected synthetic:USERSxITEMS[:SEED[:PER_USER]]") from None
    return {"n_users": users, "n_items": items, "seed": seed, "interactions_per_user": min(per_user, items / 2)}


def _cached_synthetic(spec: str) -> Dataset:
    """Large synthetic populations are generated once and cached on disk
    (``$FEDREC_CACHE`` or ``~/.cache/fedrec``): every simulation process reads them."""
    import os
    from pathlib import Path

    import numpy as np

    kw = _parse_synthetic(spec)
    if kw["n_users"] * kw["interactions_per_user"] < 1_000_000:
        return synthetic_dataset(**kw)
    cache = Path(os.environ.get("FEDREC_CACHE", Path.home() / ".cache" / "fedrec"))
    path = cache / (spec.replace(":", "_") + ".npz")
    if path.exists():
        z = np.load(path)
        return Dataset(user=z["user"], item=z["item"], timestamp=z["timestamp"], n_users=kw["n_users"],
                       n_items=kw["n_items"], user_ids=np.arange(kw["n_users"]), item_ids=np.arange(kw["n_items"]),
                       item_genres=z["genres"], genre_names=tuple(f"g{j}" for j in range(z["genres"].shape[1])),
                       item_year=z["year"], name=spec, info={"format": "synthetic", "seed": kw["seed"]})
    ds = synthetic_dataset(**kw)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, user=ds.user, item=ds.item, timestamp=ds.timestamp, genres=ds.item_genres, year=ds.item_year)
    tmp.replace(path)
    return ds


def make_split(ds: Dataset, *, kind: str = "leave-last-out", valid: float = 0.1, test: float = 0.1,
               tie_seed: int = 0) -> Split:
    """Split by name: ``leave-last-out`` (default), ``leave-last-group-out`` (the last
    tie group in time is the test set), ``temporal-ratio``, or ``window:START:END``
    (:func:`time_window`: one step of a stream).  ``tie_seed`` draws the order inside
    ties in time (:mod:`fedrec.data.splits`); the file's row order never matters."""
    if kind == "leave-last-out":
        return leave_last_out(ds, tie_seed=tie_seed)
    if kind == "leave-last-group-out":
        return leave_last_group_out(ds, tie_seed=tie_seed)
    if kind == "temporal-ratio":
        return temporal_ratio(ds, valid=valid, test=test, tie_seed=tie_seed)
    window = parse_window(kind)
    if window is not None:
        return time_window(ds, *window, tie_seed=tie_seed)
    raise ValueError(f"unknown split {kind!r}; choose 'leave-last-out', 'leave-last-group-out', 'temporal-ratio' "
                     "or 'window:START:END'")
