"""Per-round checkpoint: global parameters, server-optimiser state, round, best round.

Written atomically (temporary file, then rename) so a server killed mid-write
leaves the previous checkpoint intact.  :func:`load_checkpoint` refuses a
corrupt checkpoint or one from a different configuration with a clear error.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from fedrec.config import FedConfig, flat_run_config

__all__ = ["save_checkpoint", "load_checkpoint", "config_fingerprint", "CheckpointError"]

# Settings that change what a checkpoint means (not e.g. the round count or out dir).
_IGNORED = {"num-server-rounds", "out", "eval-every", "patience", "resume", "round-timeout", "state-dir",
            "federation-plan", "keep-replies"}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: corrupt, or made for another configuration."""


def _meaningful(cfg: FedConfig) -> dict:
    # keys without their section: checkpoints written before sections keep their fingerprint
    return dict(_meaningful_items(cfg))


@functools.lru_cache(maxsize=16)
def _meaningful_items(cfg: FedConfig) -> tuple:
    # computed once per config (a frozen dataclass), not at every round's checkpoint
    return tuple((k, v) for k, v in flat_run_config(cfg.to_run_config()).items() if k not in _IGNORED)


@functools.lru_cache(maxsize=16)
def config_fingerprint(cfg: FedConfig) -> str:
    return hashlib.sha256(json.dumps(_meaningful(cfg), sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(directory: Path, *, cfg: FedConfig, server_round: int, params: dict, opt_state, best: dict | None,
                    extra: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": v for k, v in params.items()}
    st = opt_state
    arrays.update({f"m/{k}": v for k, v in st.m.items()})
    arrays.update({f"v/{k}": v for k, v in st.v.items()})
    meta = {"round": server_round, "opt_t": st.t, "fingerprint": config_fingerprint(cfg), "config": _meaningful(cfg),
            "best": best, "extra": extra or {}}
    tmp = directory / "checkpoint.tmp.npz"
    final = directory / "checkpoint.npz"
    try:
        _full_disk_point(tmp, server_round)
        np.savez(tmp, meta=np.frombuffer(json.dumps(meta, default=float).encode(), dtype=np.uint8), **arrays)
        tmp.replace(final)
    except OSError as e:  # a full disk, a quota, a removed directory: the last complete checkpoint stays
        tmp.unlink(missing_ok=True)
        kept = f"the checkpoint in {final} is still the last complete one" if final.exists() else "no checkpoint yet"
        raise CheckpointError(f"checkpoint of round {server_round}: cannot write {tmp} ({e.strerror or e}); {kept}: "
                              "free the space and run the same command with --resume") from None
    return final


def _full_disk_point(tmp: Path, server_round: int) -> None:
    """Fault injection for tests: ``FEDREC_FULL_DISK_AT_ROUND=N`` makes round N's checkpoint
    write fail as a full disk does (part of the file written, then ``ENOSPC``)."""
    import errno
    import os

    if os.environ.get("FEDREC_FULL_DISK_AT_ROUND") == str(server_round):
        tmp.write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def load_checkpoint(directory: Path, cfg: FedConfig, *, same_config: bool = True) -> dict:
    """Read ``checkpoint.npz``; raise :class:`CheckpointError` if unusable.  With
    ``same_config=False`` (a warm start) a checkpoint of another configuration is read
    too; the caller checks its parameters' names and shapes."""
    path = Path(directory) / "checkpoint.npz"
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            data = {k: z[k] for k in z.files if k != "meta"}
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure: truncated, garbage, not ours
        raise CheckpointError(f"checkpoint {path} is not a readable fedrec checkpoint ({type(e).__name__}): "
                              "remove it, or run without --resume and with --overwrite to start over") from None
    if same_config and meta.get("fingerprint") != config_fingerprint(cfg):
        theirs, ours = meta.get("config") or {}, _meaningful(cfg)
        diff = [f"{k}={theirs.get(k)!r} there, {ours.get(k)!r} here" for k in sorted(set(theirs) | set(ours))
                if theirs.get(k) != ours.get(k)] if theirs else []
        raise CheckpointError(f"checkpoint {path} was made with another configuration"
                              + (f" ({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''})" if diff else "")
                              + ": refusing to resume")
    out = {"round": meta["round"], "opt_t": meta["opt_t"], "best": meta.get("best"), "extra": meta.get("extra", {})}
    for prefix in ("param", "m", "v"):
        out[prefix] = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(prefix + "/")}
    return out
