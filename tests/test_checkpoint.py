"""Checkpoints: round trip, corrupt and incompatible checkpoints give clear errors."""

import numpy as np
import pytest

from fedrec.config import FedConfig
from fedrec_app.server.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedrec.federated.optim import OptState


class _S:
    def __init__(self):
        self.opt_state = OptState(m={"item_bias": np.ones(3)}, v={"item_bias": np.full(3, 2.0)}, t=4)


def test_round_trip(tmp_path):
    cfg = FedConfig(num_server_rounds=10)
    params = {"item_embedding": np.arange(6, dtype=np.float32).reshape(3, 2), "item_bias": np.zeros(3, np.float32)}
    save_checkpoint(tmp_path, cfg=cfg, server_round=4, params=params, opt_state=_S().opt_state, best={"round": 3})
    # the number of rounds may change on resume (run longer); the meaning of the run may not
    ck = load_checkpoint(tmp_path, FedConfig(num_server_rounds=20))
    assert ck["round"] == 4 and ck["opt_t"] == 4 and ck["best"] == {"round": 3}
    np.testing.assert_array_equal(ck["param"]["item_embedding"], params["item_embedding"])
    np.testing.assert_array_equal(ck["v"]["item_bias"], np.full(3, 2.0))


def test_incompatible_config_is_refused(tmp_path):
    params = {"item_bias": np.zeros(3, np.float32)}
    save_checkpoint(tmp_path, cfg=FedConfig(), server_round=1, params=params, opt_state=_S().opt_state, best=None)
    with pytest.raises(CheckpointError, match=r"another configuration \(server-lr=0.005 there, 0.1 here\)"):
        load_checkpoint(tmp_path, FedConfig(server_lr=0.1))


def test_corrupt_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable fedrec checkpoint") as e:
        load_checkpoint(tmp_path, FedConfig())
    assert "\n" not in str(e.value) and "allow_pickle" not in str(e.value)


def test_background_writes_land_in_round_order_and_their_errors_surface(tmp_path, monkeypatch):
    """The run log writes checkpoints on a background thread: one at a time, in round
    order (the next waits for the previous), the last one on disk once the log is closed,
    and a failed write raises at the next write or at the close instead of being lost."""
    import threading
    import time

    import fedrec_app.server.run as run
    from fedrec_app.server.run import RunLog

    cfg = FedConfig(num_server_rounds=10)
    params = {"item_bias": np.zeros(3, np.float32)}
    real, order, threads = run.save_checkpoint, [], set()

    def slow(**kw):
        time.sleep(0.05)  # slower than the rounds: each write must still finish before the next starts
        order.append(kw["server_round"])
        threads.add(threading.current_thread().name)
        return real(**kw)

    monkeypatch.setattr(run, "save_checkpoint", slow)
    log = RunLog(cfg, server=None)
    for r in (1, 2, 3):
        log._checkpoint(directory=tmp_path, cfg=cfg, server_round=r, params=params, opt_state=_S().opt_state, best=None)
    log.close()
    assert order == [1, 2, 3] and load_checkpoint(tmp_path, cfg)["round"] == 3
    assert threads and all(t.startswith("fedrec-checkpoint") for t in threads)
    bad = RunLog(cfg, server=None)
    (tmp_path / "file").write_text("not a directory")
    bad._checkpoint(directory=tmp_path / "file", cfg=cfg, server_round=1, params=params, opt_state=_S().opt_state,
                    best=None)
    with pytest.raises(OSError):
        bad.close()
