"""Data: readers, the implicit-feedback dataset, splits, negatives, partitions, synthetic data."""

from fedrec.data.dataset import Dataset, build_dataset, kcore_mask
from fedrec.data.negatives import is_positive, sample_negatives
from fedrec.data.partition import partition_users
from fedrec.data.readers import DataFormatError, RawData, bundled_path, read_interactions
from fedrec.data.splits import (
    Split,
    hold_out_items,
    hold_out_users,
    leave_last_out,
    temporal_ratio,
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
    "hold_out_users",
    "is_positive",
    "kcore_mask",
    "leave_last_out",
    "load_dataset",
    "make_split",
    "partition_users",
    "read_interactions",
    "sample_negatives",
    "synthetic_dataset",
    "temporal_ratio",
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

    ``data`` is ``"ml-100k"`` (bundled), ``"synthetic:USERSxITEMS[:SEED]"`` or a path
    readable by :func:`read_interactions`.
    """
    if data.startswith("synthetic"):
        spec = data.split(":")
        users, items = (int(x) for x in (spec[1] if len(spec) > 1 else "200x300").split("x"))
        seed = int(spec[2]) if len(spec) > 2 else 0
        return synthetic_dataset(n_users=users, n_items=items, seed=seed)
    raw = read_interactions(data, format=format, **reader_options)
    return build_dataset(raw, min_rating=min_rating, kcore=kcore)


def make_split(ds: Dataset, *, kind: str = "leave-last-out", valid: float = 0.1, test: float = 0.1) -> Split:
    """Split by name: ``leave-last-out`` (default) or ``temporal-ratio``."""
    if kind == "leave-last-out":
        return leave_last_out(ds)
    if kind == "temporal-ratio":
        return temporal_ratio(ds, valid=valid, test=test)
    raise ValueError(f"unknown split {kind!r}; choose 'leave-last-out' or 'temporal-ratio'")
