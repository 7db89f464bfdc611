"""The distributed discrete Gaussian: the sampler, the rotation, the encoding through Flower's
SecAgg+ arithmetic, and the accountant against the papers' formulas and Opacus."""

import math

import numpy as np
import pytest
from scipy.linalg import hadamard

from fedrec.privacy.accounting import epsilon, epsilon_of_rdp, rdp_of, rdp_orders
from fedrec.privacy.distributed import (
    DistributedDP,
    _fwht,
    ddg_rdp,
    discrete_gaussian,
    from_flower_sum,
    skellam,
    skellam_rdp,
    rotate,
    rotation_signs,
    rounded_l2_bound,
    subsampled_rdp,
    to_flower_grid,
    unrotate,
)


def mech(**kw):
    base = dict(noise_multiplier=1.0, clip=1.0, sample_rate=1.0, min_users=8, max_users=10, dim=40, bits=20,
                delta=1e-5)
    return DistributedDP(**{**base, **kw})


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0])
def test_the_sampler_draws_the_discrete_gaussian(sigma):
    n = 200_000
    x = discrete_gaussian(np.random.default_rng(1), sigma, n)
    support = np.arange(-12 * math.ceil(sigma), 12 * math.ceil(sigma) + 1)
    pmf = np.exp(-support ** 2 / (2 * sigma ** 2))
    pmf /= pmf.sum()
    freq = np.array([(x == v).sum() for v in support]) / n
    # every probability within 5 standard errors, and nothing outside the support
    assert np.all(np.abs(freq - pmf) <= 5 * np.sqrt(pmf * (1 - pmf) / n) + 1e-12)
    assert np.isin(x, support).all()
    assert x.dtype == np.int64


def test_the_sampler_has_the_variance_of_a_wide_discrete_gaussian():
    x = discrete_gaussian(np.random.default_rng(2), 300.0, 400_000)
    assert abs(x.mean()) < 5 * 300 / math.sqrt(400_000)
    assert x.std() == pytest.approx(300.0, rel=0.01)


def test_the_skellam_sampler_and_a_sum_of_shares_is_one_skellam():
    rng = np.random.default_rng(8)
    x = skellam(rng, 50.0, 400_000)
    assert x.dtype == np.int64 and abs(x.mean()) < 5 * math.sqrt(50 / 400_000)
    assert x.var() == pytest.approx(50.0, rel=0.01)
    m = mech(noise="skellam", dim=2000, bits=24)
    shares = np.array([m.noise_sum(7, rng) for _ in range(40)])
    assert shares.var() == pytest.approx(7 * m.local_std_int ** 2, rel=0.02)
    dg = mech(noise="discrete-gaussian", dim=2000, bits=24)
    shares = np.array([dg.noise_sum(7, rng) for _ in range(40)])
    assert shares.var() == pytest.approx(7 * dg.local_std_int ** 2, rel=0.02)


def test_the_skellam_bound_is_theorem_three_five_by_hand():
    a, l2, l1, mu = 4, 30.0, 200.0, 5000.0
    by_hand = 4 * 900 / (2 * 5000) + min((7 * 900 + 6 * 200) / (4 * 5000 ** 2), 3 * 200 / (2 * 5000))
    assert skellam_rdp(a, l2=l2, l1=l1, variance=mu) == pytest.approx(by_hand)
    m = mech(noise="skellam")
    sd = math.sqrt(m.min_users) * m.local_std_int
    l2 = m.l2_bound_int
    assert m._rdp_one(5) == pytest.approx(skellam_rdp(5, l2=l2, l1=l2 * min(8.0, l2), variance=sd * sd))


def test_the_rotation_is_the_normalised_hadamard_transform_and_inverts():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 13))
    signs = rotation_signs(7, 2, 16)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    pad = np.zeros((3, 16))
    pad[:, :13] = x
    np.testing.assert_allclose(_fwht(pad), pad @ hadamard(16).T)
    y = rotate(x, signs)
    np.testing.assert_allclose(y, (pad * signs) @ hadamard(16).T / 4)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(unrotate(y, signs, 13), x, atol=1e-12)
    # public and per round: the same seed and round give the same signs, another round others
    np.testing.assert_array_equal(signs, rotation_signs(7, 2, 16))
    assert not np.array_equal(rotation_signs(7, 2, 1024), rotation_signs(7, 3, 1024))


def test_the_rounded_norm_bound_is_theorem_one():
    l2, beta, d = 50.0, math.exp(-0.5), 64
    by_hand = math.sqrt(50 ** 2 + 64 / 4 + math.sqrt(2 * 0.5) * (50 + 8 / 2))
    assert rounded_l2_bound(l2, beta, d) == pytest.approx(min(50 + 8, by_hand))
    assert rounded_l2_bound(l2, 0.0, d) == pytest.approx(58.0)


def test_rounding_keeps_every_user_within_the_bound_the_accountant_uses():
    m = mech(dim=40, bits=12, max_users=10)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 40))
    r = m.rounded(x, signs=rotation_signs(0, 1, m.padded_dim), rng=rng)
    assert r.dtype == np.int64
    assert (np.linalg.norm(r, axis=1) <= m.l2_bound_int + 1e-9).all()
    # and it is the clipped, rotated, scaled vector up to the rounding
    clipped = x / np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True))
    y = rotate(clipped, rotation_signs(0, 1, m.padded_dim)) / m.gamma
    assert np.abs(r - y).max() < 1


def test_the_proposition_fourteen_terms_by_hand():
    a, l2, l1, tau, d = 3, 0.8, 5.0, 1e-3, 64
    t1 = 3 / 2 * 0.64 + 1e-3 * 64
    t2 = 3 / 2 * (0.64 + 2 * 5 * 1e-3 + 1e-6 * 64)
    t3 = 3 / 2 * (0.8 + 8 * 1e-3) ** 2
    assert ddg_rdp(a, l2_scale=l2, l1_scale=l1, tau=tau, dim=d) == pytest.approx(min(t1, t2, t3))
    assert ddg_rdp(a, l2_scale=l2, l1_scale=l1, tau=0.0, dim=d) == pytest.approx(3 * 0.64 / 2)


def test_the_subsampling_bound_by_hand_and_against_opacus():
    from opacus.accountants.analysis.rdp import compute_rdp

    z, q = 1.2, 0.1

    def gauss(a):
        return a / (2 * z * z)

    # order 3 by hand: Zhu & Wang's general upper bound
    w0 = (1 - q) ** 2 * (3 * q - q + 1)
    w2 = 3 * q * q * (1 - q)
    w3 = 3 * q ** 3 * math.exp(2 * gauss(3))
    assert subsampled_rdp(3, q, gauss) == pytest.approx(min(math.log(w0 + w2 * math.exp(gauss(2)) + w3) / 2, gauss(3)))
    assert subsampled_rdp(5, 1.0, gauss) == pytest.approx(gauss(5))
    # never below the tight subsampled Gaussian (Opacus), and not far above it
    for a in (2, 4, 8, 16, 32):
        tight = float(compute_rdp(q=q, noise_multiplier=z, steps=1, orders=[a])[0])
        ours = subsampled_rdp(a, q, gauss)
        assert tight <= ours * (1 + 1e-9)
        assert ours <= 3.5 * tight
    with pytest.raises(ValueError, match="integer"):
        subsampled_rdp(2.5, q, gauss)


@pytest.mark.parametrize("noise", ["skellam", "discrete-gaussian"])
def test_in_the_continuous_limit_the_accountant_is_opacus_gaussian(noise):
    """Fine granularity (30 bits, few users) and wide noise: no rounding inflation to
    speak of, tau 0, no sampling: each integer order's RDP is the Gaussian's of Opacus,
    and the epsilon is Opacus's within the cost of integer orders."""
    from opacus.accountants.analysis.rdp import compute_rdp

    m = mech(noise_multiplier=1.5, min_users=4, max_users=4, dim=16, bits=30, noise=noise)
    assert m._tau == 0.0
    orders = np.array(rdp_orders())
    ints = np.flatnonzero(orders == np.round(orders))
    ref = compute_rdp(q=1.0, noise_multiplier=1.5, steps=1, orders=list(orders[ints]))
    np.testing.assert_allclose(m.rdp_per_round[ints], ref, rtol=1e-4)
    ours, opacus = m.epsilon(10), epsilon(noise_multiplier=1.5, sample_rate=1.0, steps=10, delta=1e-5)
    assert opacus <= ours <= opacus * 1.02


def test_epsilon_composes_rounds_and_the_prior():
    m = mech(sample_rate=0.3)
    prior = ((3.0, 1.0, 1),)
    assert m.epsilon(0) == 0.0
    assert m.epsilon(20) == pytest.approx(epsilon_of_rdp(20 * m.rdp_per_round, 1e-5))
    assert m.epsilon(20, prior) == pytest.approx(epsilon_of_rdp(20 * m.rdp_per_round + rdp_of(prior), 1e-5))
    assert m.epsilon(20) < m.epsilon(20, prior) < m.epsilon(40)
    # fewer guaranteed noise shares, less noise in the sum: a larger epsilon
    assert mech(min_users=2, sample_rate=0.3).epsilon(20) > m.epsilon(20)


@pytest.mark.parametrize("noise", ["skellam", "discrete-gaussian"])
def test_the_decoded_sum_is_the_clipped_sum_plus_noise_of_the_stated_variance(noise):
    m = mech(noise_multiplier=0.5, clip=1.0, min_users=20, max_users=20, dim=50, bits=24, noise=noise)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 50)) * 0.3
    x[0] *= 100  # one user far over the clip
    clipped = x / np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True))
    signs = rotation_signs(1, 1, m.padded_dim)
    errs = []
    for _ in range(200):
        enc = m.encode(x, signs=signs, rng=rng)
        assert enc.min() >= 0 and enc.max() < m.modulus
        errs.append(m.decode(enc.sum(axis=0) % m.modulus, signs=signs) - clipped.sum(axis=0))
    err = np.array(errs)
    # the noise of 20 shares: std z * clip (rounding adds at most gamma / 2 per user and coordinate)
    assert abs(err.mean()) < 5 * 0.5 / math.sqrt(err.size)
    rounding = math.sqrt(20 * m.gamma ** 2 / 4)
    assert 0.5 * 0.98 <= err.std() <= math.sqrt(0.5 ** 2 + rounding ** 2) * 1.02


def test_a_users_vector_wraps_around_the_field_and_the_sum_still_decodes():
    m = mech(noise_multiplier=1e-3, min_users=2, max_users=2, dim=8, bits=20)
    x = np.array([[-0.5] + [0.0] * 7, [0.2] + [0.0] * 7])
    signs = np.ones(m.padded_dim)
    enc = m.encode(x, signs=signs, rng=np.random.default_rng(6))
    assert (enc > m.modulus // 2).any()  # negative coordinates wrapped to the top of the field
    got = m.decode(enc.sum(axis=0) % m.modulus, signs=signs)
    np.testing.assert_allclose(got, x.sum(axis=0), atol=1e-2)


def test_the_field_values_survive_flowers_secagg_arithmetic_exactly():
    """The nodes' integers, written on Flower's quantisation grid, come back from Flower's
    own quantise, mask-free modular sum and dequantise as their sum modulo the field."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, factor_extract, parameters_mod
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    clip, q_range, mod_range, n = 8.0, 2 ** 20, 2 ** 32, 5
    rng = np.random.default_rng(7)
    values = [rng.integers(0, q_range, size=300) for _ in range(n)]
    total = np.zeros(301, dtype=np.int64)
    for v in values:
        quantized = quantize([to_flower_grid(v, clipping_range=clip, quantization_range=q_range)], clip, q_range)
        np.testing.assert_array_equal(quantized[0], v)  # nothing left to round
        vec = factor_combine(q_range, quantized)  # weight 1: Flower's q_ratio is Q
        total = total + np.concatenate([np.ravel(a) for a in vec])
    total = parameters_mod([total], mod_range)[0]
    q_total, rest = factor_extract([total[:1], total[1:]])
    aggregate = dequantize(rest, clip, q_range)[0]
    aggregate = (aggregate - (n - 1) * clip) * (q_range / q_total)  # the workflow's last step
    got = from_flower_sum(aggregate, n_nodes=n, clipping_range=clip, quantization_range=q_range)
    np.testing.assert_array_equal(got, np.sum(values, axis=0) % q_range)


def test_calibration_finds_the_least_noise_for_a_target():
    m = mech(sample_rate=0.5).calibrated(4.0, 30)
    assert m.epsilon(30) <= 4.0 < mech(sample_rate=0.5, noise_multiplier=m.noise_multiplier * 0.99).epsilon(30)
    with pytest.raises(ValueError, match="rounds"):
        m.calibrated(4.0, 0)


def test_bad_settings_are_refused_in_one_line():
    for kw, msg in [(dict(min_users=0), "min_users"), (dict(min_users=11), "min_users"),
                    (dict(bits=31), "bits"), (dict(sample_rate=0.0), "sample_rate"),
                    (dict(noise_multiplier=0.0), "noise_multiplier"), (dict(noise="laplace"), "noise")]:
        with pytest.raises(ValueError, match=msg):
            mech(**kw)
    with pytest.raises(ValueError, match="cannot hold"):
        mech(bits=2, max_users=10)


@pytest.mark.parametrize("model", ["mf", "sasrec"])
def test_a_nodes_field_sum_decodes_to_its_users_clipped_updates(model):
    """A node's distributed release decodes to the sum of its users' clipped updates (what
    central DP-FedAvg's node sends, less the global parameters) plus the noise of its
    shares: through the cohort engine and the sequential one."""
    from dataclasses import replace

    from fedrec.config import FedConfig
    from fedrec.federated import node, protocol
    from fedrec.federated.federation import federated_model, load_federation
    from fedrec.privacy.distributed import SECAGG_CLIP, distributed_mechanism

    extra = dict(model="sasrec", seq_len=4, negatives=2) if model == "sasrec" else {}
    central = FedConfig(data="synthetic:30x40:2", users_per_node=30, dim=4, user_dp="client", user_clip=0.05,
                        user_noise_multiplier=1e-4, reproducible_noise=True, seed=3, **extra)
    ddp = replace(central, user_dp="distributed", secure_aggregation=True, ddp_min_users=1.0)
    fed = load_federation(central)
    params = federated_model(central, fed).global_params()
    sent, _, _ = node.train_round(central, fed, 0, node.load_state({}, fed, 0, central), global_params=params,
                                  server_round=1)
    summed = np.concatenate([(np.asarray(sent[k], np.float64) - params[k]).ravel() for k in sorted(params)])
    release, metrics, _ = node.train_round(ddp, fed, 0, node.load_state({}, fed, 0, ddp), global_params=params,
                                           server_round=1)
    mech = distributed_mechanism(ddp, n_users=fed.n_users, n_nodes=fed.n_nodes, dim=summed.size)
    ints = from_flower_sum(release[protocol.DDP_SUM], n_nodes=1, clipping_range=SECAGG_CLIP,
                           quantization_range=mech.modulus)
    got = mech.decode(ints, signs=rotation_signs(ddp.seed, 1, mech.padded_dim))
    assert metrics[protocol.NOISE_SHARES] == 30 and protocol.NUM_EXAMPLES in metrics
    assert np.abs(summed).max() > 1e-3  # the users did train
    # the noise: std 1e-4 * clip (30 shares); float32 replies and rounding add far less than the tolerance
    np.testing.assert_allclose(got, summed, atol=5e-5)
