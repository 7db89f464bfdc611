"""The in-memory interaction dataset every other part of fedrec works on.

A :class:`Dataset` holds interactions with *contiguous integer ids*
(``0..n_users-1``, ``0..n_items-1``), the mapping back to the raw ids of the
source file, and optional side information (item genres and year, user gender
and age).  It is built from a :class:`~fedrec.data.readers.RawData` by
:func:`build_dataset`, which converts ratings to implicit feedback, applies an
optional k-core filter and remaps ids.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fedrec.data.readers import RawData
from fedrec.errors import ConfigError

__all__ = ["Dataset", "build_dataset", "kcore_mask"]


@dataclass(frozen=True)
class Dataset:
    """Implicit-feedback interactions with contiguous ids.

    Attributes
    ----------
    user, item : np.ndarray
        ``int64`` arrays of equal length, ids in ``[0, n_users)`` / ``[0, n_items)``.
    timestamp : np.ndarray
        ``int64`` times (file order where the source had none).
    n_users, n_items : int
        Sizes of the id spaces.
    user_ids, item_ids : np.ndarray
        Raw id of each contiguous id (``user_ids[u]`` is the file's id of user ``u``).
    item_genres : np.ndarray or None
        ``(n_items, n_genres)`` multi-hot float32 matrix.
    genre_names : tuple of str
        Names of the genre columns.
    item_year : np.ndarray or None
        ``(n_items,)`` float release year, NaN when unknown.
    user_gender : np.ndarray or None
        ``(n_users,)`` strings such as ``"M"``/``"F"``.
    user_age : np.ndarray or None
        ``(n_users,)`` ints.
    name : str
        Where the data came from (for reports).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_genres: np.ndarray | None = None
    genre_names: tuple[str, ...] = ()
    item_year: np.ndarray | None = None
    user_gender: np.ndarray | None = None
    user_age: np.ndarray | None = None
    name: str = ""
    info: dict = field(default_factory=dict)

    @property
    def n_interactions(self) -> int:
        return int(self.user.shape[0])

    def matrix(self) -> sp.csr_matrix:
        """Binary user x item CSR matrix of all interactions."""
        data = np.ones(self.n_interactions, dtype=np.float32)
        m = sp.csr_matrix((data, (self.user, self.item)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def item_popularity(self) -> np.ndarray:
        """Number of interactions per item."""
        return np.bincount(self.item, minlength=self.n_items)

    def save_id_maps(self, directory: str | Path) -> Path:
        """Write the raw-id mapping (``id_map.json``) so results can be traced back."""
        path = Path(directory) / "id_map.json"
        path.write_text(
            json.dumps(
                {
                    "users": [_jsonable(x) for x in self.user_ids.tolist()],
                    "items": [_jsonable(x) for x in self.item_ids.tolist()],
                }
            )
        )
        return path

    def summary(self) -> dict:
        density = self.n_interactions / max(1, self.n_users * self.n_items)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": round(density, 6),
            **self.info,
        }


def _jsonable(x):
    return x.item() if hasattr(x, "item") else x


def kcore_mask(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the interactions kept by iterative k-core filtering.

    Users and items with fewer than ``k`` interactions are removed until every
    remaining user and item has at least ``k``.
    """
    keep = np.ones(user.shape[0], dtype=bool)
    if k <= 1:
        return keep
    while True:
        u, i = user[keep], item[keep]
        _, uinv, ucnt = np.unique(u, return_inverse=True, return_counts=True)
        _, iinv, icnt = np.unique(i, return_inverse=True, return_counts=True)
        ok = (ucnt[uinv] >= k) & (icnt[iinv] >= k)
        if ok.all():
            return keep
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False
        if not keep.any():
            return keep


def tie_counts(user: np.ndarray, timestamp: np.ndarray) -> dict:
    """How common ties in time are: the fraction of interactions that share their user
    and timestamp with another one (``tied_interactions``), and of users' last
    interactions (leave-last-out's test targets) that share their timestamp with the
    interaction before them (``tied_last``)."""
    order = np.lexsort((timestamp, user))
    u, t = np.asarray(user)[order], np.asarray(timestamp)[order]
    if not len(u):
        return {"interactions": 0, "tied_interactions": 0.0, "users": 0, "tied_last": 0.0}
    same_prev = np.r_[False, (u[1:] == u[:-1]) & (t[1:] == t[:-1])]
    tied = same_prev | np.r_[same_prev[1:], False]
    last = np.r_[u[1:] != u[:-1], True]
    return {"interactions": int(len(u)), "tied_interactions": float(tied.mean()), "users": int(last.sum()),
            "tied_last": float(same_prev[last].mean())}


def _notes(raw: RawData, item_ids: np.ndarray, item: np.ndarray, user: np.ndarray,
           timestamp: np.ndarray) -> list[str]:
    """One line for each thing kept or dropped that a reader of the results should know."""
    notes = []
    if raw.item_info is not None:
        listed = np.isin(item_ids, raw.item_info.item_ids)
        rated = np.bincount(item, minlength=len(item_ids)) > 0
        if (~listed).any():
            notes.append(f"{int((~listed).sum())} interacted item(s) are not in the item metadata: kept, "
                         f"without genres or year")
        if (~rated).any():
            notes.append(f"{int((~rated).sum())} item(s) of the item metadata have no interaction: kept in the "
                         f"ranked catalogue (they can be recommended, never hit)")
    ties = tie_counts(user, timestamp)
    if ties["tied_interactions"] > 0:
        notes.append(f"{ties['tied_interactions']:.1%} of interactions share their user and timestamp with another "
                     f"({ties['tied_last']:.1%} of users' last ones tie with the one before): the order inside a tie "
                     f"is drawn from the run's seed, never taken from the file")
    few = int((np.bincount(user) < 3).sum())
    if few:
        notes.append(f"{few} user(s) have fewer than 3 interactions: kept in training, not evaluated "
                     f"(leave-last-out needs 3)")
    return notes


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """Log a data note once per process (``logging`` warning: shown by default, one line)."""
    if line not in _SAID:
        _SAID.add(line)
        logging.getLogger("fedrec.data").warning(line)


def build_dataset(
    raw: RawData,
    *,
    min_rating: float | None = None,
    kcore: int = 0,
) -> Dataset:
    """Turn raw ratings into an implicit-feedback :class:`Dataset`.

    Parameters
    ----------
    raw
        What a reader returned.
    min_rating
        Keep only interactions with ``rating >= min_rating``; ``None`` keeps all
        (every rating counts as a positive interaction).
    kcore
        Iterative k-core filter (0 or 1: none).

    Raises
    ------
    ValueError
        If nothing is left after filtering, or ``min_rating`` is given for data
        without ratings.
    """
    keep = np.ones(raw.user.shape[0], dtype=bool)
    if min_rating is not None:
        if np.isnan(raw.rating).all():
            raise ConfigError("min-rating", min_rating, f"{raw.source} has no ratings (a rating column is read "
                              "when it is named rating or score, or given with rating-col)")
        keep &= raw.rating >= min_rating
    if kcore and kcore > 1:
        sub = np.flatnonzero(keep)
        m = kcore_mask(raw.user[sub], raw.item[sub], kcore)
        keep[:] = False
        keep[sub[m]] = True
    if not keep.any():
        raise ValueError(
            f"no interactions left in {raw.source} after min-rating {min_rating} and kcore {kcore}"
        )
    user_ids, user = np.unique(raw.user[keep], return_inverse=True)
    if raw.item_info is not None and not kcore and min_rating is None:
        # Keep the whole catalogue (items nobody interacted with are still rankable).
        item_ids = np.union1d(np.unique(raw.item[keep]), raw.item_info.item_ids)
        item = np.searchsorted(item_ids, raw.item[keep])
    else:
        item_ids, item = np.unique(raw.item[keep], return_inverse=True)
    timestamp = raw.timestamp[keep].astype(np.int64)
    notes = _notes(raw, item_ids, item, user, timestamp)
    for note in notes:
        _say_once(f"{raw.source}: {note}")

    genres = genre_names = year = None
    if raw.item_info is not None:
        info = raw.item_info
        pos = {rid: j for j, rid in enumerate(info.item_ids.tolist())}
        rows = np.array([pos.get(r, -1) for r in item_ids.tolist()])
        if info.genres is not None:
            genres = np.zeros((len(item_ids), info.genres.shape[1]), dtype=np.float32)
            genres[rows >= 0] = info.genres[rows[rows >= 0]]
            genre_names = tuple(info.genre_names)
        if info.year is not None:
            year = np.full(len(item_ids), np.nan)
            year[rows >= 0] = info.year[rows[rows >= 0]]
    gender = age = None
    if raw.user_info is not None:
        info = raw.user_info
        pos = {rid: j for j, rid in enumerate(info.user_ids.tolist())}
        rows = np.array([pos.get(r, -1) for r in user_ids.tolist()])
        if info.gender is not None:
            gender = np.array(
                [info.gender[r] if r >= 0 else "unknown" for r in rows], dtype=object
            )
        if info.age is not None:
            age = np.array([info.age[r] if r >= 0 else -1 for r in rows], dtype=np.int64)
    return Dataset(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        timestamp=timestamp,
        n_users=len(user_ids),
        n_items=len(item_ids),
        user_ids=user_ids,
        item_ids=item_ids,
        item_genres=genres,
        genre_names=genre_names or (),
        item_year=year,
        user_gender=gender,
        user_age=age,
        name=raw.name,
        info={"min_rating": min_rating, "kcore": kcore, "format": raw.format,
              "ties": tie_counts(user, timestamp), **({"notes": notes} if notes else {})},
    )
