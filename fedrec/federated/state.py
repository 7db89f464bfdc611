"""The local state of the users a node or a device hosts, and its store.

:class:`LocalState` is the local state of one user (a phone) or of a cohort of
simulated users (one Flower node): their embeddings, the DP steps each has
taken (their interaction-level accountant) and the rounds they took part in.
It never leaves the device.  :func:`save_local_state` / :func:`load_local_state`
keep it in a directory, one file per round with the last few rounds kept, so a
restarted SuperNode continues where it stopped and a resumed server (which
repeats the rounds after its last checkpoint) finds the state *as of* that
checkpoint, not a later one.  The node's round (:mod:`fedrec.federated.node`) and the
on-device recommender (:mod:`fedrec.device`) both build on it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["LocalState", "save_local_state", "load_local_state", "latest_saved_round", "KEEP_ROUNDS"]

KEEP_ROUNDS = 3
_FILE = re.compile(r"^round-(\d+)\.npz$")


@dataclass
class LocalState:
    """Local state of the users hosted on one device or node (never sent).

    A private round's release is kept with the state it left (``release_round``,
    ``release``, ``release_metrics``): a node asked for the same round again answers
    with what it released then, never with a second draw of noise over the same data
    (:func:`fedrec.federated.node.train_round`)."""

    users: np.ndarray  # (k,) global user ids
    local: dict[str, np.ndarray]  # the model's local state, (k, ...) per name (e.g. "user": embeddings)
    dp_steps: np.ndarray  # (k,) int64 steps of the subsampled Gaussian mechanism taken
    rounds: np.ndarray  # (k,) rounds taken part in
    release_round: int = 0  # the private round whose release is kept below (0: none)
    release: dict[str, np.ndarray] = field(default_factory=dict)  # what the node sent in that round
    release_metrics: dict = field(default_factory=dict)  # ... and the metrics it sent with it

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"users": self.users, "dp_steps": self.dp_steps, "rounds": self.rounds}
        out.update({f"local/{k}": v for k, v in self.local.items()})
        if self.release_round:
            out["release_round"] = np.asarray(self.release_round, dtype=np.int64)
            out["release_metrics"] = np.frombuffer(json.dumps(self.release_metrics).encode(), np.uint8)
            out.update({f"release/{k}": v for k, v in self.release.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "LocalState":
        """Inverse of :meth:`arrays` (``user_emb`` of older files is the local ``user``)."""
        keys = list(arrays.keys())
        local = {k.split("/", 1)[1]: np.asarray(arrays[k]) for k in keys if k.startswith("local/")}
        if "user_emb" in keys:
            local["user"] = np.asarray(arrays["user_emb"])
        out = cls(np.asarray(arrays["users"]), local, np.asarray(arrays["dp_steps"]), np.asarray(arrays["rounds"]))
        if "release_round" in keys:
            out.release_round = int(np.asarray(arrays["release_round"]))
            out.release_metrics = json.loads(bytes(np.asarray(arrays["release_metrics"])).decode())
            out.release = {k.split("/", 1)[1]: np.asarray(arrays[k]) for k in keys if k.startswith("release/")}
        return out


def save_local_state(directory: str | Path, state: LocalState, *, server_round: int) -> Path:
    """Write ``state`` as it is after ``server_round`` (atomically); keep the last
    :data:`KEEP_ROUNDS` rounds' files."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"round-{int(server_round):08d}.npz"
    tmp = d / f".round-{int(server_round):08d}.{os.getpid()}.tmp.npz"
    arrays = state.arrays()
    np.savez(tmp, **arrays)
    tmp.replace(final)
    _remember(d, final, arrays)
    for old in sorted(_rounds(d))[:-KEEP_ROUNDS]:
        (d / f"round-{old:08d}.npz").unlink(missing_ok=True)
    return final


#: The state file this process last wrote in each directory, with its arrays: a node that
#: reads back the file it wrote the round before (every round of a simulation's actor or a
#: long-lived SuperNode) takes them from memory. Reading the file cost 1-2 ms of a 50 ms round.
_WRITTEN: dict[str, tuple[tuple, dict[str, np.ndarray]]] = {}


def _identity(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path), st.st_ino, st.st_mtime_ns, st.st_size


def _remember(d: Path, path: Path, arrays: dict[str, np.ndarray]) -> None:
    ident = _identity(path)
    if ident is not None:
        _WRITTEN[str(d.resolve())] = ident, {k: np.array(v, copy=True) for k, v in arrays.items()}


def _remembered(d: Path, path: Path) -> dict[str, np.ndarray] | None:
    """Copies of the arrays this process wrote to ``path``, if the file is still the one it
    wrote (same inode, modification time and size: a file another process wrote, or
    rewrote, is read from disk)."""
    kept = _WRITTEN.get(str(d.resolve()))
    if kept is None or kept[0] != _identity(path):
        return None
    return {k: v.copy() for k, v in kept[1].items()}


def _rounds(d: Path) -> list[int]:
    if not d.is_dir():
        return []
    return [int(m.group(1)) for p in d.iterdir() if (m := _FILE.match(p.name))]


def latest_saved_round(directory: str | Path) -> int:
    """The latest round whose state is saved in ``directory`` (0: none)."""
    return max(_rounds(Path(directory)), default=0)


def load_local_state(directory: str | Path, *, at_most_round: int | None = None) -> tuple[LocalState, int] | None:
    """The latest saved state of a round ``<= at_most_round`` and its round, or ``None``.

    Raises ``ValueError`` naming the file if it cannot be read.
    """
    d = Path(directory)
    rounds = [r for r in _rounds(d) if at_most_round is None or r <= at_most_round]
    if not rounds:
        return None
    r = max(rounds)
    path = d / f"round-{r:08d}.npz"
    kept = _remembered(d, path)
    if kept is not None:
        return LocalState.from_arrays(kept), r
    try:
        with np.load(path) as z:
            st = LocalState.from_arrays(z)
    except Exception as e:  # noqa: BLE001 - any decoding failure
        raise ValueError(f"local state file {path} is unreadable: {e}") from e
    return st, r
