"""Models through the real Flower engine: a user's own model (examples/my_model.py) with
interaction-level DP, a shipped model with user-level DP and early stopping; model
specs and their one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import FedConfig
from fedrec.federated.algorithms import check_run
from fedrec.models import build_federated_model, federated_model_class

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "my_model.py")


@pytest.mark.slow
def test_bring_your_own_model_through_flower_with_dp(tmp_path):
    from fedrec_app.simulations.simulate import simulate

    out = tmp_path / "byom"
    # the example as it ships, importable from any directory
    cfg = FedConfig(data="synthetic:40x50:2", model="fedrec_app.examples.my_model:Bilinear", dim=8, num_server_rounds=3,
                    users_per_node=10, eval_every=1, noise_multiplier=1.0, sample_rate=0.5, out=str(out))
    summary = simulate(cfg, num_cpus=2)
    assert summary["selected_round"] in (1, 2, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["privacy"]["unit"] == "interaction-level" and metrics["privacy"]["epsilon_max"] > 0
    with np.load(out / "checkpoint" / "checkpoint.npz") as z:
        params = {k.split("/", 1)[1] for k in z.files if k.startswith("param/")}
        mixing = z["param/mixing"]
    assert params == {"item_embedding", "item_bias", "mixing"}  # the model's global parameters, nothing local
    assert not np.allclose(mixing, np.eye(8))  # the dense layer was trained through the aggregate


@pytest.mark.slow
def test_neumf_user_level_dp_and_early_stopping(tmp_path):
    from fedrec_app.simulations.simulate import simulate

    out = tmp_path / "neumf"
    cfg = FedConfig(data="synthetic:40x50:2", model="neumf", dim=8, num_server_rounds=40, users_per_node=10,
                    eval_every=1, patience=2, user_dp="client", user_noise_multiplier=1.0, user_clip=0.5,
                    server_opt="sgd", server_lr=1e-4, out=str(out))
    summary = simulate(cfg, num_cpus=2)
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    best = summary["selected_round"]
    assert len(rows) == best + 2 < 40  # stopped 2 evaluations after the best one
    assert all(r["user-epsilon"] > 0 for r in rows)
    assert json.loads((out / "metrics.json").read_text())["stopped_early"] is True


def test_model_specs_and_errors(tmp_path):
    assert federated_model_class(f"{EXAMPLE}:Bilinear").__name__ == "Bilinear"
    for spec, words in [("nope", "choose one of"), (f"{tmp_path}/missing.py:X", "no file"),
                        (f"{EXAMPLE}:Missing", "no FederatedModel subclass named 'Missing'")]:
        with pytest.raises(ValueError, match=words):
            federated_model_class(spec)
    shipped = federated_model_class("fedrec_app.examples.my_model:Bilinear")
    assert shipped.__name__ == "Bilinear" and shipped.__module__ == "fedrec_app.examples.my_model"
    for spec, words in [("fedrec_app.examples.nothing:X", "importing fedrec_app.examples.nothing failed"),
                        ("fedrec_app.examples.my_model:Missing", "no FederatedModel subclass named 'Missing'")]:
        with pytest.raises(ValueError, match=words):
            federated_model_class(spec)
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="importing .* failed: RuntimeError: boom"):
        federated_model_class(f"{bad}:X")
    with pytest.raises(ValueError, match="config model.model='nope': choose one of"):
        check_run(FedConfig(model="nope"))
    with pytest.raises(ValueError, match="cold-items.*two-tower"):
        check_run(FedConfig(model="mf", cold_items=0.1))
    with pytest.raises(ValueError, match="two-tower needs item features"):
        build_federated_model("two-tower", 10)


def test_every_model_scores_all_items_and_declares_its_state():
    feats = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    for name in ("mf", "gmf", "mlp", "neumf", "two-tower", f"{EXAMPLE}:Bilinear"):
        m = build_federated_model(name, 20, item_features=feats, dim=4)
        local = {k: __import__("torch").as_tensor(v) for k, v in m.init_local(np.arange(3), seed=0).items()}
        params = {k: __import__("torch").as_tensor(v) for k, v in m.global_params().items()}
        s = m.score_users(local, params)
        assert tuple(s.shape) == (3, 20)
        assert set(m.item_tables) <= set(params) | set(m.constants())
        # local state is a function of (seed, user) only
        np.testing.assert_array_equal(m.init_local(np.array([2]), seed=0)[next(iter(local))][0],
                                      m.init_local(np.arange(3), seed=0)[next(iter(local))][2])


def test_tower_full_ranking_equals_the_per_user_score(monkeypatch):
    """MLP and NeuMF rank all items with the first layer split into user and item
    halves, a few users at a time: equal to scoring each user with ``score``."""
    import torch

    import fedrec.models.federated as fm
    from fedrec.models.protocol import FederatedModel

    monkeypatch.setattr(fm, "_ACTIVATIONS_PER_CHUNK", 2 * 30 * 16)  # chunks of 2 users: 7 = 2+2+2+1
    for name in ("mlp", "neumf"):
        m = build_federated_model(name, 30, dim=6, layers=(16, 8, 4)).double()
        g = torch.Generator().manual_seed(1)
        params = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in m.named_parameters()}
        local = {k: torch.randn((7, *s), generator=g, dtype=torch.float64) for k, s in m.local_shapes.items()}
        fast = m.score_users(local, params)
        per_user = FederatedModel.score_users(m, local, params)
        torch.testing.assert_close(fast, per_user, rtol=1e-12, atol=1e-12)
        assert fast.shape == (7, 30)
        assert m.score_users({k: v[:0] for k, v in local.items()}, params).shape == (0, 30)


@pytest.mark.slow
def test_models_sweep_writes_table_plot_and_report(tmp_path, monkeypatch):
    import csv

    import fedrec_app.simulations.studies.models as sm

    monkeypatch.setattr(sm, "CENTRAL", dict(sm.CENTRAL, epochs=2))
    cells = sm.models_cells("synthetic:40x50:2", models=("gmf",), rounds=2)  # the private cells exist ...
    assert [c.name for c in cells] == ["gmf-non-private", "gmf-interaction-eps8", "gmf-user-eps8"]
    assert cells[1].cfg.target_epsilon == 8 and cells[2].cfg.user_target_epsilon == 8
    # ... and run like any simulation (tested elsewhere): run the non-private one here
    said = []
    report = sm.run_models(tmp_path, data="synthetic:40x50:2", seeds=1, rounds=2, models=("gmf",), private=False,
                           command="test", say=said.append)
    assert any(m.startswith("centralized gmf seed 0: epoch") for m in said)  # the fit's progress reaches the log
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    cells = {r["cell"] for r in rows}
    assert cells == {"gmf-non-private", "gmf-centralized", "MostPop-baseline", "EASE-baseline"}
    text = report.read_text()
    assert (tmp_path / "models.png").stat().st_size > 1000
    line = next(x for x in text.splitlines() if x.startswith("| gmf |"))
    fed = next(r for r in rows if r["cell"] == "gmf-non-private")
    cen = next(r for r in rows if r["cell"] == "gmf-centralized")
    assert f"{float(fed['test_ndcg@10']):.4f}" in line and f"{float(cen['test_ndcg@10']):.4f}" in line
    assert f"{100 * float(fed['test_ndcg@10']) / float(cen['test_ndcg@10']):.1f}%" in line


def test_throttled_progress_says_at_most_once_per_interval():
    from fedrec_app.simulations.studies.models import throttled

    now, said = [0.0], []
    put = throttled(said.append, seconds=60, clock=lambda: now[0])
    for t, msg in ((0, "a"), (30, "b"), (59.9, "c"), (60, "d"), (61, "e"), (200, "f")):
        now[0] = t
        put(msg)
    assert said == ["a", "d", "f"]
