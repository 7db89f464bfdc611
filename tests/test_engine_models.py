"""The cohort engine for every shipped model: against Opacus's PrivacyEngine, the fast
path against the generic engine, user-level clipping, and bring-your-own models."""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from fedrec.engine import LocalConfig, cohort_samples, train_cohort
from fedrec.engine.cohort import sample_mask
from fedrec.models import FEDERATED_MODELS, build_federated_model

N_USERS, N_ITEMS, DIM = 12, 30, 4


def _train():
    rng = np.random.default_rng(3)
    dense = rng.random((N_USERS, N_ITEMS)) < 0.3
    dense[:, 0] = True  # every user has data
    return sp.csr_matrix(dense.astype(np.float32))


def _model(name, seed=0):
    feats = np.random.default_rng(1).random((N_ITEMS, 5)).astype(np.float32)
    return build_federated_model(name, N_ITEMS, item_features=feats, dim=DIM, layers=(8, 4), seed=seed)


def _params(model):
    # random (not initial) values so every parameter carries gradient
    g = torch.Generator().manual_seed(7)
    return {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in model.global_params().items()}


class _OpacusView(nn.Module):
    """One user's model as Opacus sees it: the user's local vectors and every global
    parameter as direct parameters of one leaf module (per-sample gradients by functorch)."""

    def __init__(self, model, local, params, trainable=None):
        super().__init__()
        self.model = [model]  # not a submodule
        self.local_names, self.global_names = list(local), list(params)
        # frozen item rows (DP-FEST) are constants: only the trained rows are parameters
        self.rows = ({t: torch.as_tensor(np.flatnonzero(trainable)) for t in model.table_names()}
                     if trainable is not None else {})
        self.consts = {}  # a plain dict: Opacus refuses buffers in a module it trains
        for k, v in local.items():
            setattr(self, "local__" + k, nn.Parameter(v.clone()))
        for k, v in params.items():
            name = k.replace(".", "__")
            if k in self.rows:
                self.consts[k] = v.clone()
                v = v[self.rows[k]]
            setattr(self, "global__" + name, nn.Parameter(v.clone()))

    def get(self, k):
        return getattr(self, "global__" + k.replace(".", "__"))

    def table(self, k):
        """Parameter ``k`` as the model reads it (frozen rows filled in from the constants)."""
        if k not in self.rows:
            return self.get(k)
        return self.consts[k].index_put((self.rows[k],), self.get(k))

    def grad(self, k):
        """The gradient of parameter ``k`` in its full shape (zero on frozen rows)."""
        g = self.get(k).grad
        if k not in self.rows:
            return g
        full = torch.zeros_like(self.consts[k])
        full[self.rows[k]] = g
        return full

    def forward(self, items):  # items (B, 1+m) -> per-sample loss (B,)
        m = self.model[0]
        local = {k: getattr(self, "local__" + k) for k in self.local_names}
        params = {k: self.table(k) for k in self.global_names}
        tables, dense = m.split_params(params)

        def one(it):
            return m.sample_loss(m.score(local, {t: v[it] for t, v in tables.items()}, dense))

        return torch.stack([one(it) for it in items])


#: The DP key of the engine's Poisson masks in these comparisons (a device draws a secret one).
KEY = 12345


def _opacus_release(model, local, params, train, user, cfg, *, seed, server_round, noise, trainable=None):
    """Release and new local state of one user by Opacus's PrivacyEngine, with the
    engine's samples and Poisson masks (:data:`KEY`) fed as the batches and the public
    expected batch ``q B`` (``trainable``: the item rows that are parameters; the others
    are constants)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    owner, slot, items = cohort_samples(train, np.array([user]), cfg.negatives, seed=seed, server_round=server_round,
                                        exclude_positives=not cfg.dp)
    n = len(owner)
    view = _OpacusView(model, {k: v[0] for k, v in local.items()}, params, trainable)
    local_p = [getattr(view, "local__" + k) for k in view.local_names]
    global_p = [view.get(k) for k in view.global_names]
    opt = torch.optim.SGD([{"params": local_p, "lr": cfg.user_lr}, {"params": global_p, "lr": 0.0}])
    loader = DataLoader(TensorDataset(torch.as_tensor(items)), batch_size=n)
    view, opt, _ = PrivacyEngine().make_private(module=view, optimizer=opt, data_loader=loader, noise_multiplier=noise,
                                                max_grad_norm=cfg.max_grad_norm, poisson_sampling=False,
                                                loss_reduction="mean", grad_sample_mode="functorch")
    opt.expected_batch_size = cfg.sample_rate * cfg.interaction_cap
    release = {k: torch.zeros_like(v) for k, v in params.items()}
    for step in range(cfg.user_steps + cfg.item_steps):
        mask = sample_mask(KEY, server_round, np.full(n, user), items[:, 0], step, cfg.sample_rate)
        assert mask.any()
        opt.zero_grad()
        view(torch.as_tensor(items[mask])).mean().backward()  # Opacus rescales per-sample grads
        opt.step()
        if step >= cfg.user_steps:
            for k in params:
                release[k] -= view._module.grad(k) / cfg.item_steps
    return release, {k: getattr(view._module, "local__" + k).detach()[None] for k in local}


@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
def test_engine_equals_opacus_privacy_engine(name):
    """Clipped DP-SGD with Poisson masks (q < 1), user-state steps and several release
    steps: the engine's release and local state equal Opacus's (noise off)."""
    train = _train()
    model = _model(name)
    params = _params(model)
    user = 4
    local = {k: torch.as_tensor(v) for k, v in model.init_local(np.array([user]), seed=0).items()}
    cfg = LocalConfig(user_lr=0.5, user_steps=1, item_steps=2, negatives=2, sample_rate=0.7,
                      noise_multiplier=1e-12, max_grad_norm=0.05)
    ours = train_cohort(model, local, params, train, np.array([user]), cfg, seed=2, server_round=5, generic=True,
                        dp_key=KEY)
    ref, ref_local = _opacus_release(model, local, params, train, user, cfg, seed=2, server_round=5, noise=0.0)
    for k in params:
        np.testing.assert_allclose(ours.update[k].numpy(), ref[k].numpy(), atol=2e-6, err_msg=k)
        assert float(ref[k].abs().sum()) > 0 or k.endswith("tower.4.bias"), k  # the comparison is not vacuous
    for k in local:
        np.testing.assert_allclose(ours.local[k].numpy(), ref_local[k].numpy(), atol=2e-6, err_msg=k)


@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
def test_frozen_rows_equal_opacus_with_those_rows_constant(name):
    """DP-FEST (``trainable``): the engine's release and local state equal Opacus's on a
    model whose frozen item rows are constants, so each sample is clipped over the rows
    it trains only; the release is zero on every frozen row."""
    train = _train()
    model = _model(name)
    params = _params(model)
    user = 4
    trainable = np.zeros(N_ITEMS, dtype=bool)
    trainable[::3] = True
    trainable[0] = True
    local = {k: torch.as_tensor(v) for k, v in model.init_local(np.array([user]), seed=0).items()}
    cfg = LocalConfig(user_lr=0.5, user_steps=1, item_steps=2, negatives=2, sample_rate=0.7,
                      noise_multiplier=1e-12, max_grad_norm=0.05)
    ours = train_cohort(model, local, params, train, np.array([user]), cfg, seed=2, server_round=5, generic=True,
                        dp_key=KEY, trainable=torch.as_tensor(trainable))
    unmasked = train_cohort(model, local, params, train, np.array([user]), cfg, seed=2, server_round=5,
                            generic=True, dp_key=KEY)
    ref, ref_local = _opacus_release(model, local, params, train, user, cfg, seed=2, server_round=5, noise=0.0,
                                     trainable=trainable)
    for k in params:
        np.testing.assert_allclose(ours.update[k].numpy(), ref[k].numpy(), atol=2e-6, err_msg=k)
        if k in model.table_names():
            assert float(ours.update[k][~trainable].abs().sum()) == 0, k
            assert float(ours.update[k][trainable].abs().sum()) > 0, k
            assert float(unmasked.update[k][~trainable].abs().sum()) > 0, k  # the user did touch frozen rows
    for k in local:
        np.testing.assert_allclose(ours.local[k].numpy(), ref_local[k].numpy(), atol=2e-6, err_msg=k)


@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
def test_noise_scale_equals_opacus(name):
    """With noise, release - noiseless release has, on every coordinate of every global
    parameter, variance ``(sigma C / (q B))^2 / item_steps`` (``B`` the public
    interaction cap, ``item_steps`` = 2), for the engine and for Opacus alike, over many
    draws; the local state's noise (three noisy steps) matches Opacus's too."""
    train = _train()
    model = _model(name)
    params = _params(model)
    user, sigma, clip, q, draws = 4, 3.0, 0.5, 0.7, 40
    local = {k: torch.as_tensor(v) for k, v in model.init_local(np.array([user]), seed=0).items()}
    cfg = LocalConfig(user_lr=1e-3, user_steps=1, item_steps=2, sample_rate=q, noise_multiplier=sigma,
                      max_grad_norm=clip, interaction_cap=7)
    quiet = replace(cfg, noise_multiplier=1e-12)
    expected = sigma * clip / (q * cfg.interaction_cap)
    b = train_cohort(model, local, params, train, np.array([user]), quiet, seed=2, server_round=5, generic=True,
                     dp_key=KEY)
    rb, rb_local = _opacus_release(model, local, params, train, user, cfg, seed=2, server_round=5, noise=0.0)
    ours, ref, ours_local, ref_local = [], [], [], []
    torch.manual_seed(0)  # Opacus's noise
    for draw in range(draws):
        a = train_cohort(model, local, params, train, np.array([user]), cfg, seed=2, server_round=5, generic=True,
                         dp_key=KEY, generator=torch.Generator().manual_seed(draw))
        ra, ra_local = _opacus_release(model, local, params, train, user, cfg, seed=2, server_round=5, noise=sigma)
        ours.append(torch.cat([(a.update[k] - b.update[k]).reshape(-1) for k in params]))
        ref.append(torch.cat([(ra[k] - rb[k]).reshape(-1) for k in params]))
        ours_local.append(torch.cat([(a.local[k] - b.local[k]).reshape(-1) for k in local]))
        ref_local.append(torch.cat([(ra_local[k] - rb_local[k]).reshape(-1) for k in local]))
    # each coordinate's variance over the draws, in units of the expected variance
    for diff in (torch.stack(ours).double(), torch.stack(ref).double()):
        ratio = (diff.var(0) / (expected**2 / cfg.item_steps)).numpy()
        assert diff.shape[1] > 100
        assert abs(ratio.mean() - 1) < 0.05, ratio.mean()
        # chi-square with 39 degrees of freedom over up to ~2,000 coordinates: every one inside [0.3, 2.4]
        assert 0.3 < ratio.min() and ratio.max() < 2.4, (ratio.min(), ratio.max())
    local_var = 3 * (cfg.user_lr * sigma * clip / (q * cfg.interaction_cap)) ** 2  # three noisy local steps
    for diff in (torch.stack(ours_local).double(), torch.stack(ref_local).double()):
        assert abs(float(diff.var(0).mean()) / local_var - 1) < 0.25


@pytest.mark.parametrize("cfg", [
    LocalConfig(user_lr=0.7, user_steps=2, item_steps=2, negatives=1),
    LocalConfig(negatives=3, user_l2=0.1),
    LocalConfig(sample_rate=0.5, noise_multiplier=0.7, max_grad_norm=0.3),
    LocalConfig(negatives=3, sample_rate=0.6, noise_multiplier=1.0, max_grad_norm=0.2, item_steps=2),
    LocalConfig(update_clip=0.05, negatives=2),
    LocalConfig(sample_rate=0.5, noise_multiplier=0.7, max_grad_norm=0.3, update_clip=0.05),
])
@pytest.mark.parametrize("frozen", [False, True])
def test_mf_fast_path_equals_generic_engine(cfg, frozen):
    """The hand-derived MF path and the generic engine: same release, local state and
    loss, noise included (the same draws in the same order), with and without frozen rows."""
    train = _train()
    model = _model("mf")
    params = _params(model)
    users = np.arange(N_USERS)
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    kw = dict(seed=1, server_round=3)
    if frozen:
        kw["trainable"] = torch.as_tensor(np.arange(N_ITEMS) % 2 == 0)
    fast = train_cohort(model, local, params, train, users, cfg, generator=torch.Generator().manual_seed(5),
                        dp_key=KEY, **kw)
    slow = train_cohort(model, local, params, train, users, cfg, generator=torch.Generator().manual_seed(5),
                        dp_key=KEY, generic=True, **kw)
    for k in params:
        np.testing.assert_allclose(fast.update[k].numpy(), slow.update[k].numpy(), atol=1e-7, err_msg=k)
        assert float(fast.update[k].abs().sum()) > 0
    np.testing.assert_allclose(fast.local["user"].numpy(), slow.local["user"].numpy(), atol=1e-6)
    if cfg.dp:  # a private round computes no loss (the node would release it uncovered)
        assert math.isnan(fast.loss) and math.isnan(slow.loss)
    else:
        assert fast.loss == pytest.approx(slow.loss, abs=1e-6)
    np.testing.assert_array_equal(fast.item_counts, slow.item_counts)


@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
def test_per_sample_path_equals_one_backward_without_clipping(name):
    """Without DP the engine takes one backward; with a clip no sample reaches it takes the
    per-sample path: the two give the same release."""
    train = _train()
    model = _model(name)
    params = _params(model)
    users = np.arange(N_USERS)
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    a = train_cohort(model, local, params, train, users, LocalConfig(negatives=2), seed=0, server_round=1, generic=True)
    b = train_cohort(model, local, params, train, users, LocalConfig(negatives=2, update_clip=1e9), seed=0,
                     server_round=1, generic=True)
    for k in params:
        np.testing.assert_allclose(a.update[k].numpy(), b.update[k].numpy(), atol=1e-7, err_msg=k)
    for k in local:
        np.testing.assert_allclose(a.local[k].numpy(), b.local[k].numpy(), atol=1e-6)


@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_user_level_clip_bounds_every_parameter(name, noise):
    """Each user's whole release (every global parameter, its noise included) is clipped."""
    train = _train()
    model = _model(name)
    params = _params(model)
    for user in range(4):
        local = {k: torch.as_tensor(v) for k, v in model.init_local(np.array([user]), seed=0).items()}
        r = train_cohort(model, local, params, train, np.array([user]),
                         LocalConfig(update_clip=0.01, noise_multiplier=noise, sample_rate=0.5), seed=0, server_round=1,
                         generator=torch.Generator().manual_seed(user), generic=True)
        norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in r.update.values())))
        assert norm == pytest.approx(0.01, rel=1e-5)  # far above the clip before clipping


def test_one_interaction_enters_one_sample_whatever_the_negatives():
    """negatives=m puts the m negatives in the positive's one sample, all distinct."""
    train = _train()
    users = np.arange(N_USERS)
    owner, slot, items = cohort_samples(train, users, 5, seed=0, server_round=1)
    assert len(owner) == train.nnz  # one sample per interaction
    pos = set(zip(owner.tolist(), items[:, 0].tolist()))
    assert len(pos) == train.nnz
    for row, u in zip(items, owner):
        assert len(set(row.tolist())) == 6  # positive + 5 distinct negatives
        assert not train[u, row[1:]].toarray().any()  # negatives are not training positives
    # under interaction-level DP they exclude only the sample's own positive, so removing an
    # interaction leaves every other sample as it was
    _, _, a = cohort_samples(train, users, 5, seed=0, server_round=1, exclude_positives=False)
    assert (a[:, 1:] != a[:, :1]).all() and all(len(set(r.tolist())) == 6 for r in a)
    assert any(train[u, r[1:]].toarray().any() for u, r in zip(owner, a))  # other positives may be drawn
    mine = np.flatnonzero(owner == 0)
    fewer = train.tolil()
    fewer[0, a[mine[-1], 0]] = 0  # remove user 0's last interaction
    fewer = sp.csr_matrix(fewer)
    fewer.eliminate_zeros()
    _, _, b = cohort_samples(fewer, np.array([0]), 5, seed=0, server_round=1, exclude_positives=False)
    np.testing.assert_array_equal(b, a[mine[:-1]])  # the user's other samples are exactly as they were


DEVICE_CONFIGS = [
    LocalConfig(negatives=2),
    LocalConfig(negatives=3, sample_rate=0.6, noise_multiplier=1.0, max_grad_norm=0.2, item_steps=2),
    LocalConfig(sample_rate=0.5, noise_multiplier=0.7, max_grad_norm=0.3, update_clip=0.05),
    LocalConfig(update_clip=0.05, row_norm=0.01, max_rows=5, negatives=2),
]
DEVICES = ["cpu"] + [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="PyTorch sees no GPU here"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", DEVICE_CONFIGS, ids=["plain", "dp", "dp+user-clip", "row-bounds"])
@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
@pytest.mark.parametrize("generic", [False, True])
def test_engine_on_a_device_equals_the_cpu_run(name, cfg, device, generic):
    """``device=``: the engine computes where it is told and returns CPU tensors equal to the
    CPU run's (noise included: drawn on the CPU and moved).

    Every tensor the engine creates must be placed on the requested device explicitly: the
    run happens with PyTorch's default device set to ``meta``, so a tensor created without
    a device (which on a GPU run would be a CPU tensor mixed into GPU arithmetic) is a meta
    tensor that either fails the run or carries no value, and the comparison fails.  This
    catches on a CPU-only machine what a GPU run would; on a machine with a GPU the
    ``cuda`` case runs too."""
    train = _train()
    model = _model(name)
    params = _params(model)
    users = np.arange(N_USERS)
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    trainable = torch.as_tensor(np.arange(N_ITEMS) % 3 != 0)
    kw = dict(seed=1, server_round=3, generic=generic, trainable=None if cfg.row_bounds else trainable, dp_key=KEY)
    ref = train_cohort(model, local, params, train, users, cfg, generator=torch.Generator().manual_seed(5), **kw)
    with torch.device("meta"):
        got = train_cohort(model, local, params, train, users, cfg, generator=torch.Generator().manual_seed(5),
                           device=device, **kw)
    for k in params:
        assert got.update[k].device.type == "cpu"
        np.testing.assert_allclose(got.update[k].numpy(), ref.update[k].numpy(), atol=1e-6, rtol=1e-5, err_msg=k)
    for k in local:
        np.testing.assert_allclose(got.local[k].numpy(), ref.local[k].numpy(), atol=1e-6, rtol=1e-5, err_msg=k)
    assert (math.isnan(got.loss) and math.isnan(ref.loss)) or got.loss == pytest.approx(ref.loss, abs=1e-6)


@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
def test_interaction_weighting_releases_the_mean_gradient_over_interactions(name):
    """With ``user_weights = n_u / mean(n)`` the cohort's release is minus the gradient of
    the mean loss over all of its samples (every interaction alike, as centralized
    training weighs them), computed here by one autograd call on the whole cohort; the
    default (every user alike) is the mean over users of their mean gradients."""
    from fedrec.engine import interaction_weights

    train = _train()
    # unequal users
    train = sp.csr_matrix(train.toarray() * (np.arange(N_USERS)[:, None] % 3 != 0) + np.eye(N_USERS, N_ITEMS))
    model = _model(name)
    params = _params(model)
    users = np.arange(N_USERS)
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    cfg = LocalConfig(user_steps=0, item_steps=1, negatives=2)
    owner, _, items = cohort_samples(train, users, cfg.negatives, seed=0, server_round=1, exclude_positives=True)
    n_u = np.bincount(owner, minlength=N_USERS)
    assert n_u.min() < n_u.max()
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    tables, dense = model.split_params(leaves)
    losses = torch.stack([model.sample_loss(model.score({k: v[o] for k, v in local.items()},
                                                        {t: v[torch.as_tensor(it)] for t, v in tables.items()}, dense))
                          for o, it in zip(owner, items)])
    per_interaction = torch.autograd.grad(losses.mean(), list(leaves.values()), allow_unused=True, retain_graph=True)
    per_user = torch.autograd.grad((losses / torch.as_tensor(n_u[owner], dtype=losses.dtype)).sum() / N_USERS,
                                   list(leaves.values()), allow_unused=True)
    w = interaction_weights(train, users)
    np.testing.assert_allclose(w, np.diff(train.indptr) / np.diff(train.indptr).mean())
    for generic in (True, False):
        weighted = train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, generic=generic,
                                user_weights=w)
        plain = train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, generic=generic)
        for (k, v), gi, gu in zip(params.items(), per_interaction, per_user):
            gi = torch.zeros_like(v) if gi is None else gi
            gu = torch.zeros_like(v) if gu is None else gu
            np.testing.assert_allclose(weighted.update[k].numpy(), -gi.numpy(), atol=1e-6, err_msg=k)
            np.testing.assert_allclose(plain.update[k].numpy(), -gu.numpy(), atol=1e-6, err_msg=k)
        assert not np.allclose(weighted.update[model.table_names()[0]].numpy(),
                               plain.update[model.table_names()[0]].numpy())
        np.testing.assert_allclose(weighted.local[next(iter(local))].numpy(), plain.local[next(iter(local))].numpy(),
                                   rtol=1e-5, atol=1e-6)  # the local steps are not weighted
    with pytest.raises(ValueError, match="not with DP"):
        train_cohort(model, local, params, train, users, LocalConfig(noise_multiplier=1.0), seed=0, server_round=1,
                     user_weights=w)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("name", sorted(FEDERATED_MODELS))
def test_ghost_norms_equal_per_sample_gradients(name, frozen):
    """Interaction-level DP-SGD with the layers' norms from Opacus's ghost norm sampler
    (the shipped models declare batched scoring) equals per-sample gradients by
    torch.func: release and local state, noise included, with and without frozen rows."""
    from fedrec.engine.cohort import GhostNorms

    assert GhostNorms.applies(_model(name))
    train = _train()
    model = _model(name)
    params = _params(model)
    users = np.arange(N_USERS)
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    cfg = LocalConfig(user_lr=0.5, user_steps=1, item_steps=2, negatives=2, sample_rate=0.7, noise_multiplier=0.3,
                      max_grad_norm=0.05)
    kw = dict(seed=2, server_round=5, generic=True, dp_key=KEY)
    if frozen:
        kw["trainable"] = torch.as_tensor(np.arange(N_ITEMS) % 3 == 0)
    ghost = train_cohort(model, local, params, train, users, cfg, generator=torch.Generator().manual_seed(4), **kw)
    plain = train_cohort(model, local, params, train, users, cfg, generator=torch.Generator().manual_seed(4),
                         ghost_norms=False, **kw)
    for k in params:
        np.testing.assert_allclose(ghost.update[k].numpy(), plain.update[k].numpy(), atol=1e-6, err_msg=k)
    for k in local:
        np.testing.assert_allclose(ghost.local[k].numpy(), plain.local[k].numpy(), atol=1e-6, err_msg=k)



def _misused_model(how):
    from torch.func import functional_call

    from fedrec.models.protocol import FederatedModel

    class Misused(FederatedModel):
        batched_score = True

        def __init__(self):
            super().__init__()
            self.n_items, self.local_shapes, self.item_tables = N_ITEMS, {"user": (DIM,)}, ("item_embedding",)
            self.item_embedding = nn.Parameter(torch.randn(N_ITEMS, DIM) * 0.3)
            self.layer = nn.Linear(DIM, DIM)

        def score(self, local, items, dense):
            w = {"weight": dense["layer.weight"], "bias": dense["layer.bias"]}
            h = functional_call(self.layer, w, (items["item_embedding"],))
            if how == "twice":
                h = functional_call(self.layer, w, (h,))
            s = (h * local["user"].unsqueeze(-2)).sum(-1)
            if how == "reuse":
                s = s + (items["item_embedding"] @ dense["layer.weight"]).sum(-1)
            return s

    return Misused()


@pytest.mark.parametrize("how", ["reuse", "twice"])
def test_ghost_norms_refuse_a_layer_used_against_the_declaration(how):
    """A dense weight read outside its layer, or a layer called twice, would escape the
    ghost norm: the engine raises instead of releasing an under-clipped update; the
    same model without the declaration trains."""
    train = _train()
    model = _misused_model(how)
    params = {k: torch.as_tensor(v) for k, v in model.global_params().items()}
    users = np.arange(N_USERS)
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    cfg = LocalConfig(noise_multiplier=1.0, max_grad_norm=0.1, negatives=1)
    with pytest.raises(ValueError, match="batched_score = False"):
        train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1)
    model.batched_score = False
    r = train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1)
    assert all(torch.isfinite(v).all() for v in r.update.values())
