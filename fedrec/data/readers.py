"""Readers for interaction files: MovieLens 100K / 1M / CSV family and generic files.

INTERFACE STUB — to be implemented (see the docstrings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataFormatError",
    "ItemInfo",
    "UserInfo",
    "RawData",
    "read_interactions",
    "bundled_path",
]


class DataFormatError(ValueError):
    """A data file is malformed.  The message names the file, the line and the problem."""


@dataclass(frozen=True)
class ItemInfo:
    item_ids: np.ndarray  # raw ids, same dtype as RawData.item
    genres: np.ndarray | None  # (n, G) float32 multi-hot
    genre_names: tuple[str, ...]
    year: np.ndarray | None  # (n,) float64, NaN unknown


@dataclass(frozen=True)
class UserInfo:
    user_ids: np.ndarray
    gender: np.ndarray | None  # (n,) object strings
    age: np.ndarray | None  # (n,) int64


@dataclass(frozen=True)
class RawData:
    user: np.ndarray  # raw user ids (int64, or object/str for generic files)
    item: np.ndarray  # raw item ids
    rating: np.ndarray  # float64, NaN where the file has none
    timestamp: np.ndarray  # int64; row order where the file has none
    item_info: ItemInfo | None
    user_info: UserInfo | None
    source: str  # path of the interactions file
    format: str  # "ml-100k" | "ml-1m" | "ml-csv" | "generic"
    name: str  # short name for reports, e.g. "ml-100k"


def bundled_path(name: str = "ml-100k") -> Path:
    """Path of a dataset shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "datasets" / name


def read_interactions(path, *, format: str = "auto", **options) -> RawData:
    raise NotImplementedError
