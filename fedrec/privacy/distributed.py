"""Distributed DP: each user adds its share of the noise, secure aggregation releases only the sum.

Two mechanisms, one encoding: the distributed discrete Gaussian (Kairouz, Liu & Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021) and the Skellam mechanism (Agarwal, Kairouz & Liu, "The Skellam
Mechanism for Differentially Private Federated Learning", NeurIPS 2021), whose noise (the
difference of two Poisson draws) is closed under summation: a sum of users' Skellam shares
is one Skellam draw, so a node that hosts many users draws their noise at once, exactly as
its users would.  Each user, on its own device:

1. clips its release (a flat vector of ``dim`` values) to L2 norm ``clip``;
2. pads it to ``D`` (a power of two) and rotates it with a random sign flip and the
   normalised Walsh-Hadamard transform (the signs are public, one draw per round): the
   rotation spreads the vector's norm over every coordinate, so the sum fits the field;
3. divides it by the granularity ``gamma`` and rounds each coordinate stochastically to
   an integer, drawing the rounding again while the rounded norm exceeds its bound
   (conditional randomised rounding: the bound is the sensitivity the accountant uses);
4. adds integer noise of variance ``(local_std / gamma)**2`` per coordinate (Skellam or
   discrete Gaussian), from the device's secret randomness;
5. reduces the result modulo ``2**bits``, the field secure aggregation sums in.

Secure aggregation (Flower's SecAgg+) releases to the server only the sum modulo
``2**bits`` of the users' vectors; the server maps it back to signed integers, multiplies
by ``gamma`` and undoes the rotation (:meth:`DistributedDP.decode`).  The
server never sees one user's vector, and the noise in the sum was drawn by the users:
the guarantee holds against the server, as long as at least ``min_users`` users' noise
shares are in the sum (the round is not unmasked otherwise).  Every user of a round
adds its noise share; each takes part with its data with probability ``sample_rate``,
decided by its own secret coin, so the server does not learn who was sampled.

Accounting (per round, Poisson-subsampled, composed over rounds by Rényi DP): the sum of
``n`` Skellam shares of variance ``s**2`` is a Skellam of variance ``n s**2``, whose Rényi
divergence Agarwal et al.'s Theorem 3.5 bounds with the rounded vector's L2 and L1
sensitivities (:func:`skellam_rdp`); the sum of ``n`` discrete Gaussians is close to a
discrete Gaussian of variance ``n s**2``, and Kairouz et al.'s Proposition 14 bounds it
with the same sensitivities and the term ``tau`` (:func:`ddg_rdp`).  Subsampling is
accounted with Zhu & Wang's general upper bound for Poisson-subsampled RDP (ICML 2019,
Theorem 6; :func:`subsampled_rdp`).  The RDP is computed at Opacus's orders
(a fractional order takes the value of the next integer order, an upper bound since RDP
grows with the order) and converted to ``(epsilon, delta)`` by Opacus
(:func:`fedrec.privacy.accounting.epsilon_of_rdp`), so it composes with the
Gaussian releases of a run (the popularity prior).

When the noise grows large against the rounding (``tau -> 0``, ``gamma -> 0``), either
accountant is the continuous Gaussian's: ``tests/test_distributed_dp.py`` checks the limit
against Opacus.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

__all__ = ["DistributedDP", "NOISES", "discrete_gaussian", "skellam", "skellam_rdp", "rotate", "unrotate",
           "rotation_signs", "ddg_rdp",
           "subsampled_rdp", "rounded_l2_bound", "to_flower_grid", "from_flower_sum", "auto_quantization_range",
           "distributed_mechanism", "SECAGG_CLIP"]

#: SecAgg+'s clipping range in a distributed-DP round: a power of two, so that the field's
#: integers written on Flower's quantisation grid come back exactly (:func:`to_flower_grid`).
SECAGG_CLIP = 1.0
MODULUS_RANGE = 2**32  # Flower's SecAgg+ modulus
#: The integer noises a user's share may draw.
NOISES = ("skellam", "discrete-gaussian")


def auto_quantization_range(n_nodes: int, modulus_range: int = MODULUS_RANGE) -> int:
    """Largest power of two ``Q <= 2**30`` with ``n_nodes * Q < modulus_range``: the sum of
    ``n_nodes`` values in ``[0, Q]`` cannot wrap around SecAgg+'s modulus."""
    k = int(math.log2(modulus_range)) - math.ceil(math.log2(max(n_nodes, 1) + 1))
    return 2 ** max(1, min(30, k))


def distributed_mechanism(cfg, *, n_users: int = 0, n_nodes: int = 0, dim: int,
                          field: dict | None = None) -> "DistributedDP":
    """The distributed discrete Gaussian of a run (``cfg``: a resolved
    :class:`fedrec.config.FedConfig` with ``user-dp='distributed'``) over a federation of
    ``n_users`` users on ``n_nodes`` nodes, for a release of ``dim`` values: the field is
    SecAgg+'s quantisation range (``secagg-quantization``, or the automatic one).
    ``field`` (``min_users``, ``max_users``, ``bits``; what the server sized and sent)
    replaces the sizing: a node knows only its own users."""
    if field is None:
        q_range = int(cfg.secagg_quantization) or auto_quantization_range(n_nodes)
        _check_power_of_two("secagg-quantization", q_range)
        m = float(cfg.ddp_min_users)
        min_users = int(math.ceil(m * n_users - 1e-9)) if m <= 1 else int(m)
        if min_users > n_users:
            raise ValueError(f"ddp-min-users={cfg.ddp_min_users}: the federation has {n_users} users")
        field = {"min_users": max(1, min_users), "max_users": int(n_users), "bits": int(math.log2(q_range))}
    return DistributedDP(
        noise_multiplier=float(cfg.user_noise_multiplier), clip=float(cfg.user_clip),
        sample_rate=float(cfg.user_sample_rate), dim=int(dim), delta=float(cfg.delta), noise=str(cfg.ddp_noise),
        **field)


def discrete_gaussian(rng: np.random.Generator, sigma: float, size: int) -> np.ndarray:
    """``size`` draws of the discrete Gaussian ``N_Z(0, sigma**2)`` (probability of ``x``
    proportional to ``exp(-x**2 / (2 sigma**2))`` on the integers).

    Canonne, Kamath & Steinke (NeurIPS 2020), Algorithm 3, vectorised: a discrete Laplace
    proposal of scale ``t = floor(sigma) + 1`` (the difference of two geometric draws),
    accepted with probability ``exp(-(|y| - sigma**2 / t)**2 / (2 sigma**2))``.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0; got {sigma}")
    out = np.empty(int(size), dtype=np.int64)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)
    filled = 0
    while filled < size:
        want = size - filled
        n = int(want * 1.6) + 16
        y = rng.geometric(p, n) - rng.geometric(p, n)
        keep = rng.random(n) < np.exp(-((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma))
        got = y[keep][:want]
        out[filled:filled + len(got)] = got
        filled += len(got)
    return out


def skellam(rng: np.random.Generator, variance: float, size: int) -> np.ndarray:
    """``size`` draws of the symmetric Skellam of ``variance``: ``Poisson(variance / 2) -
    Poisson(variance / 2)``.  A sum of independent Skellams is a Skellam of the summed
    variance."""
    if variance <= 0:
        raise ValueError(f"variance must be > 0; got {variance}")
    lam = variance / 2
    return rng.poisson(lam, int(size)).astype(np.int64) - rng.poisson(lam, int(size)).astype(np.int64)


def skellam_rdp(order: int, *, l2: float, l1: float, variance: float) -> float:
    """RDP at integer ``order`` of the Skellam mechanism (no sampling): Agarwal, Kairouz &
    Liu, Theorem 3.5, ``a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))``
    with the integer sensitivities ``D2 = l2``, ``D1 = l1`` and the noise's variance ``mu``."""
    a, mu = float(order), float(variance)
    return a * l2 * l2 / (2 * mu) + min(((2 * a - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu), 3 * l1 / (2 * mu))


@functools.lru_cache(maxsize=8)
def _sylvester(d: int) -> np.ndarray:
    """The ``d x d`` Sylvester Hadamard matrix (``d`` a power of two), read-only."""
    h = np.ones((1, 1))
    while len(h) < d:
        h = np.block([[h, h], [h, -h]])
    h.setflags(write=False)
    return h


def _fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform along the last axis (a power of two long).

    ``H_D`` is the Kronecker product of Hadamard matrices of order ``f <= 32``.  Each stage
    applies one of them to the last ``log2 f`` bits of the index by one matrix product
    (``D * f`` multiply-adds) and moves those bits to the front; after every stage the
    bits are back in their order."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    lead = x.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    k = d.bit_length() - 1
    y = x.reshape(n, d)
    for bits in [5] * (k // 5) + ([k % 5] if k % 5 else []):
        f = 1 << bits
        y = (y.reshape(-1, f) @ _sylvester(f)).reshape(n, d // f, f)
        y = np.ascontiguousarray(y.transpose(0, 2, 1)).reshape(n, d)
    return y.reshape(lead + (d,))


def rotation_signs(seed: int, server_round: int, padded_dim: int) -> np.ndarray:
    """The round's public random signs of the rotation (``+-1``, ``padded_dim`` of them).
    They need no secrecy: the rotation only spreads each vector over the coordinates."""
    return np.random.default_rng([int(seed), int(server_round), 0xD15D]).integers(0, 2, padded_dim) * 2.0 - 1.0


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``H diag(signs) x / sqrt(D)`` for each row of ``x`` (zero-padded to ``D = len(signs)``)."""
    d = len(signs)
    pad = np.zeros(x.shape[:-1] + (d,))
    pad[..., : x.shape[-1]] = x
    return _fwht(pad * signs) / math.sqrt(d)


def unrotate(y: np.ndarray, signs: np.ndarray, dim: int) -> np.ndarray:
    """The inverse of :func:`rotate` (the first ``dim`` coordinates)."""
    return (_fwht(y) / math.sqrt(len(signs)) * signs)[..., :dim]


def rounded_l2_bound(l2: float, beta: float, padded_dim: int) -> float:
    """L2 norm bound after conditional stochastic rounding of a vector of norm ``l2``
    (Kairouz et al., Theorem 1 / Proposition 22): ``min(l2 + sqrt(D), sqrt(l2**2 + D/4 +
    sqrt(2 log(1/beta)) (l2 + sqrt(D)/2)))``, the second only for ``beta > 0``."""
    b1 = l2 + math.sqrt(padded_dim)
    if beta <= 0:
        return b1
    b2 = math.sqrt(l2 * l2 + padded_dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (l2 + math.sqrt(padded_dim) / 2))
    return min(b1, b2)


def ddg_rdp(order: int, *, l2_scale: float, l1_scale: float, tau: float, dim: int) -> float:
    """RDP at integer ``order`` of the sum of the users' discrete Gaussians (no sampling):
    Kairouz et al., Proposition 14, with the sensitivities in units of the sum's standard
    deviation (``l2_scale = Delta_2 / (sqrt(n) s)``, likewise ``l1_scale``) and ``tau``
    from their Theorem 1 (0 for one discrete Gaussian)."""
    a = float(order)
    return min(a / 2 * l2_scale ** 2 + tau * dim,
               a / 2 * (l2_scale ** 2 + 2 * l1_scale * tau + tau ** 2 * dim),
               a / 2 * (l2_scale + math.sqrt(dim) * tau) ** 2)


def subsampled_rdp(order: int, q: float, rdp) -> float:
    """Zhu & Wang's general upper bound (ICML 2019, Theorem 6) on the RDP at integer
    ``order >= 2`` of a mechanism run on a Poisson sample of rate ``q``, given its RDP
    function ``rdp(order)``; never more than ``rdp(order)`` itself."""
    a = int(order)
    if a != order or a < 2:
        raise ValueError(f"order must be an integer >= 2; got {order}")
    if q >= 1:
        return float(rdp(a))
    if q <= 0:
        return 0.0
    terms = [0.0, float(rdp(2))]
    weights = [(1 - q) ** (a - 1) * (a * q - q + 1), special.comb(a, 2) * q * q * (1 - q) ** (a - 2)]
    for ell in range(3, a + 1):
        log_comb = special.gammaln(a + 1) - special.gammaln(ell + 1) - special.gammaln(a - ell + 1)
        terms.append((ell - 1) * float(rdp(ell)) + log_comb + (a - ell) * math.log1p(-q) + ell * math.log(q))
        weights.append(3.0)
    return float(min(special.logsumexp(terms, b=weights) / (a - 1), rdp(a)))


def to_flower_grid(values: np.ndarray, *, clipping_range: float, quantization_range: int) -> np.ndarray:
    """Integers in ``[0, quantization_range)`` as the floats that Flower's SecAgg+
    quantisation maps back to exactly those integers: ``v * 2C / Q - C``.  With ``C`` and
    ``Q`` powers of two the arithmetic is exact in float64 and Flower's stochastic rounding
    has nothing to round (the node's weight must be the workflow's ``max_weight``)."""
    v = np.asarray(values, dtype=np.float64)
    return v * (2.0 * clipping_range / quantization_range) - clipping_range


def from_flower_sum(aggregate: np.ndarray, *, n_nodes: int, clipping_range: float, quantization_range: int
                    ) -> np.ndarray:
    """The integer sum modulo ``quantization_range`` of the nodes' :func:`to_flower_grid`
    values, from what Flower's SecAgg+ workflow hands the strategy
    (``(S 2C/Q - n C) / n`` for the sum ``S`` over ``n`` nodes, each of weight 1)."""
    s = (np.asarray(aggregate, dtype=np.float64) * n_nodes + n_nodes * clipping_range) * (
        quantization_range / (2.0 * clipping_range))
    return np.mod(np.rint(s).astype(np.int64), quantization_range)


def _check_power_of_two(name: str, x: float) -> None:
    m, _ = math.frexp(x)
    if x <= 0 or m != 0.5:
        raise ValueError(f"{name} must be a power of two; got {x}")


@dataclass(frozen=True)
class DistributedDP:
    """The distributed discrete Gaussian as data (see the module docstring).

    Parameters
    ----------
    noise_multiplier
        ``z``: the sum of ``min_users`` noise shares has standard deviation ``z * clip``
        per coordinate (more shares, more noise).
    clip
        L2 bound of each user's release.
    sample_rate
        Probability that a user takes part in a round with its data (its own secret coin).
    min_users
        The fewest noise shares a round's sum may carry: a round with fewer is not unmasked.
    max_users
        The most users whose vectors one sum holds (the field is sized for them).
    dim
        Length of a user's release.
    bits
        The field is ``2**bits``.
    delta
        The ``delta`` epsilon is reported at.
    beta
        Conditional rounding: probability bound of a redraw (Kairouz et al.'s ``beta``).
    k_stddevs
        The granularity keeps ``k_stddevs`` standard deviations of the sum's coordinates
        inside the field (Kairouz et al., Section 4.4).
    noise
        ``"skellam"`` (closed under summation) or ``"discrete-gaussian"``.
    """

    noise_multiplier: float
    clip: float
    sample_rate: float
    min_users: int
    max_users: int
    dim: int
    bits: int
    delta: float
    beta: float = math.exp(-0.5)
    k_stddevs: float = 4.0
    noise: str = "skellam"

    unit = "user-level"
    protects = "everything one user contributes (all of its interactions, every round)"
    against = "the server and anyone who sees the model: it sees only the noisy sum"

    @property
    def name(self) -> str:
        return "distributed Skellam" if self.noise == "skellam" else "distributed discrete Gaussian"

    def __post_init__(self):
        if self.noise_multiplier <= 0 or self.clip <= 0:
            raise ValueError(f"noise_multiplier and clip must be > 0; got {self.noise_multiplier}, {self.clip}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1]; got {self.sample_rate}")
        if not 1 <= self.min_users <= self.max_users:
            raise ValueError(f"need 1 <= min_users <= max_users; got {self.min_users}, {self.max_users}")
        if not 2 <= self.bits <= 30:
            raise ValueError(f"bits must be in [2, 30] (Flower quantises to int32); got {self.bits}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}; got {self.noise!r}")
        if 2.0 ** (2 * self.bits) <= self.max_users * self.k_stddevs ** 2:
            raise ValueError(f"bits={self.bits} cannot hold {self.max_users} users' sum at k={self.k_stddevs}")

    # --- derived ---------------------------------------------------------
    @property
    def modulus(self) -> int:
        return 2 ** self.bits

    @property
    def padded_dim(self) -> int:
        return 1 << max(0, int(self.dim - 1).bit_length())

    @property
    def local_std(self) -> float:
        """Each user's noise standard deviation (in the release's units)."""
        return self.noise_multiplier * self.clip / math.sqrt(self.min_users)

    @functools.cached_property
    def gamma(self) -> float:
        """The granularity: ``k_stddevs`` standard deviations of a coordinate of the sum of
        ``max_users`` rotated vectors (each of norm ``clip``, all aligned) and their noise
        fit in the field (Kairouz et al., Section 4.4, with flatness 1)."""
        n, k, d = self.max_users, self.k_stddevs, self.padded_dim
        return 2 * k * math.sqrt(self.clip ** 2 * n * n / d + n * self.local_std ** 2) / math.sqrt(
            4.0 ** self.bits - n * k * k)

    @property
    def local_std_int(self) -> float:
        """Each user's noise standard deviation on the integer grid."""
        return self.local_std / self.gamma

    @property
    def l2_bound_int(self) -> float:
        """A user's rounded vector's L2 sensitivity on the integer grid."""
        return rounded_l2_bound(self.clip / self.gamma, self.beta, self.padded_dim)

    # --- accounting ------------------------------------------------------
    def rdp(self, order: int) -> float:
        """RDP of one round at integer ``order`` (subsampled)."""
        return subsampled_rdp(order, self.sample_rate, self._rdp_one)

    @functools.cached_property
    def _tau(self) -> float:
        s2 = self.local_std_int ** 2
        return 10 * sum(math.exp(-2 * math.pi ** 2 * s2 * k / (k + 1)) for k in range(1, self.min_users))

    def _rdp_one(self, order: int) -> float:
        sd = math.sqrt(self.min_users) * self.local_std_int
        l2 = self.l2_bound_int
        l1 = l2 * min(math.sqrt(self.padded_dim), l2)
        if self.noise == "skellam":
            return skellam_rdp(order, l2=l2, l1=l1, variance=sd * sd)
        return ddg_rdp(order, l2_scale=l2 / sd, l1_scale=l1 / sd, tau=self._tau, dim=self.padded_dim)

    @functools.cached_property
    def rdp_per_round(self) -> np.ndarray:
        """One round's RDP at Opacus's orders (a fractional order: the next integer's)."""
        from fedrec.privacy.accounting import rdp_orders

        cache: dict[int, float] = {}
        out = []
        for a in rdp_orders():
            k = max(2, math.ceil(a))
            if k not in cache:
                cache[k] = self.rdp(k)
            out.append(cache[k])
        arr = np.array(out)
        arr.setflags(write=False)
        return arr

    def epsilon(self, rounds: int, extra: tuple = ()) -> float:
        """Epsilon after ``rounds`` rounds, composed with ``extra`` Gaussian releases
        ``(noise, rate, steps)`` (the popularity prior)."""
        from fedrec.privacy.accounting import epsilon_of_rdp, rdp_of

        if rounds <= 0 and not extra:
            return 0.0
        return epsilon_of_rdp(self.rdp_per_round * int(rounds) + rdp_of(extra), self.delta)

    def calibrated(self, target_epsilon: float, rounds: int) -> "DistributedDP":
        """This mechanism with the smallest noise multiplier (to 1e-3 relative) whose
        epsilon after ``rounds`` rounds is at most ``target_epsilon`` (bisection)."""
        import dataclasses

        if target_epsilon <= 0 or rounds < 1:
            raise ValueError(f"need target_epsilon > 0 and rounds >= 1; got {target_epsilon}, {rounds}")

        def eps(z: float) -> float:
            return dataclasses.replace(self, noise_multiplier=z).epsilon(rounds)

        lo, hi = 1e-2, 1.0
        while eps(hi) > target_epsilon:
            lo, hi = hi, hi * 2
            if hi > 1e4:
                raise ValueError(f"epsilon {target_epsilon} cannot be reached in {rounds} rounds")
        while hi - lo > 1e-3 * hi:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
        return dataclasses.replace(self, noise_multiplier=hi)

    def to_dict(self) -> dict:
        return {"unit": self.unit, "mechanism": self.name, **asdict(self),
                "gamma": self.gamma, "local_std": self.local_std}

    # --- the device's and the server's parts -----------------------------
    def encode(self, releases: np.ndarray, *, signs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each user's vector in the field: clipped, rotated, scaled, rounded, noised,
        reduced.  ``releases``: ``(users, dim)``; ``rng``: the device's secret randomness.
        Returns ``(users, padded_dim)`` integers in ``[0, 2**bits)``."""
        x = np.atleast_2d(np.asarray(releases, dtype=np.float64))
        if x.shape[-1] != self.dim or len(signs) != self.padded_dim:
            raise ValueError(f"releases of length {x.shape[-1]} and {len(signs)} signs; expected {self.dim} and "
                             f"{self.padded_dim}")
        out = self.rounded(x, signs=signs, rng=rng)
        for j in range(len(out)):
            out[j] += self.noise_sum(1, rng)
        return np.mod(out, self.modulus)

    def noise_sum(self, users: int, rng: np.random.Generator) -> np.ndarray:
        """The sum of ``users`` users' noise shares (``padded_dim`` integers): one Skellam
        draw of the summed variance, or each user's discrete Gaussian drawn and summed."""
        d = self.padded_dim
        if users <= 0:
            return np.zeros(d, dtype=np.int64)
        if self.noise == "skellam":
            return skellam(rng, users * self.local_std_int ** 2, d)
        out = np.zeros(d, dtype=np.int64)
        for lo in range(0, users, 64):
            b = min(64, users - lo)
            out += discrete_gaussian(rng, self.local_std_int, b * d).reshape(b, d).sum(axis=0)
        return out

    def rounded(self, releases: np.ndarray, *, signs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Steps 1-3 of :meth:`encode`: each user's vector clipped, rotated, scaled and
        rounded to integers whose L2 norm is at most :attr:`l2_bound_int`."""
        x = np.atleast_2d(np.asarray(releases, dtype=np.float64))
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x * np.minimum(1.0, self.clip / np.maximum(norm, 1e-300))
        y = rotate(x, signs)
        y *= 1.0 / self.gamma
        out = np.empty(y.shape, dtype=np.int64)
        todo = np.arange(len(y))
        bound2 = self.l2_bound_int ** 2
        while len(todo):
            # floor(y + u), u uniform on [0, 1): y's ceiling with probability frac(y), its floor otherwise
            r = rng.random(y[todo].shape)
            r += y[todo]
            np.floor(r, out=r)
            ok = np.einsum("ij,ij->i", r, r) <= bound2
            out[todo[ok]] = r[ok]
            todo = todo[~ok]
        return out

    def decode(self, total: np.ndarray, *, signs: np.ndarray) -> np.ndarray:
        """The sum of the users' releases (noised) from the field's sum of their vectors."""
        m = self.modulus
        v = np.mod(np.asarray(total, dtype=np.int64) + m // 2, m) - m // 2
        return unrotate(v * self.gamma, signs, self.dim)
