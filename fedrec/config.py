"""One validated, frozen configuration of a federated run.

Built once from Flower's run config (``[tool.flwr.app.config]`` or the dict the
CLI passes) by :func:`FedConfig.from_run_config`.  Keys use dashes, as in Flower.
Every value is checked; errors name the key and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from fedrec.engine.cohort import LocalConfig, steps_per_round

__all__ = ["FedConfig", "DEFAULTS"]


@dataclass(frozen=True)
class FedConfig:
    """Settings of a federated run.  Defaults are the tuned ML-100K settings."""

    # data
    data: str = "ml-100k"
    format: str = "auto"
    min_rating: float = 0.0  # 0: every rating is a positive
    kcore: int = 0
    split: str = "leave-last-out"
    cold_users: float = 0.0  # fraction of users held out of training (user cold-start; fixed split seed)
    cold_items: float = 0.0  # fraction of items held out of training (item cold-start; fixed split seed)
    # model
    model: str = "mf"  # mf | gmf | mlp | neumf | two-tower | path/to/file.py:ClassName
    dim: int = 64
    init_std: float = 0.1
    engine: str = "auto"  # auto: a model's registered fast path where it has one | generic: always torch.func
    # federation
    num_server_rounds: int = 500  # the most rounds (a guard: training stops on validation, see patience)
    users_per_node: int = 64
    fraction_train: float = 1.0
    seed: int = 0
    # local training
    user_lr: float = 1.0
    user_steps: int = 1
    item_steps: int = 1
    negatives: int = 1
    user_l2: float = 0.0
    # interaction-level DP (Opacus mechanism, per user)
    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0  # > 0: calibrate noise_multiplier for the planned rounds
    max_grad_norm: float = 1.0
    sample_rate: float = 1.0
    delta: float = 1e-5
    prior_noise: float = 0.0  # > 0: item biases start from a DP popularity prior with this noise (both units)
    budget_epsilon: float = 0.0  # > 0: a user declines a round that would take it past this (interaction-level)
    # user-level DP (whole per-user update clipped, Gaussian noise on the sum before the server optimiser)
    user_dp: str = "off"  # off | client (clip on the client) | server (Flower server-side clipping) | adaptive
    user_noise_multiplier: float = 0.0
    user_target_epsilon: float = 0.0  # > 0: calibrate user_noise_multiplier for the planned rounds
    user_clip: float = 0.1
    user_sample_rate: float = 1.0  # Poisson probability that a user takes part in a round
    user_clip_quantile: float = 0.5  # adaptive clipping target quantile
    # server
    aggregation: str = "fedavg"  # fedavg | itemwise
    server_opt: str = "adam"  # adam | yogi | sgd
    server_lr: float = 5e-3
    beta1: float = 0.9
    beta2: float = 0.999
    server_eps: float = 1e-8
    # evaluation
    min_replies: int = 1  # fewer valid replies: the round leaves the global parameters unchanged
    round_timeout: float = 600.0  # seconds the server waits for replies (bounded waits)
    dropout_rate: float = 0.0  # simulated: probability that a node fails in a round
    resume: bool = False  # continue from OUT/checkpoint (same config) instead of starting over
    state_dir: str = ""  # where nodes keep users' local state ("": OUT/client-state, or memory)
    # evaluation
    eval_every: int = 10
    patience: int = 5  # > 0: stop after this many evaluations without a better validation metric (0: never)
    ties: str = "pessimistic"
    select_metric: str = "ndcg@10"
    # outputs
    out: str = ""

    def __post_init__(self):
        def bad(key, why):
            raise ValueError(f"config {key.replace('_', '-')}={getattr(self, key)!r}: {why}")

        for key in ("dim", "num_server_rounds", "users_per_node", "item_steps", "negatives", "eval_every", "min_replies"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        for key in ("user_steps", "kcore", "min_rating", "user_l2", "patience", "noise_multiplier", "target_epsilon",
                    "budget_epsilon", "user_noise_multiplier", "user_target_epsilon", "prior_noise"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        for key in ("init_std", "user_lr", "server_lr", "max_grad_norm", "user_clip", "round_timeout"):
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        if not 0 < self.fraction_train <= 1:
            bad("fraction_train", "must be in (0, 1]")
        if not 0 < self.sample_rate <= 1:
            bad("sample_rate", "must be in (0, 1]")
        if not 0 < self.user_sample_rate <= 1:
            bad("user_sample_rate", "must be in (0, 1]")
        if not 0 <= self.dropout_rate < 1:
            bad("dropout_rate", "must be in [0, 1)")
        if not 0 < self.user_clip_quantile < 1:
            bad("user_clip_quantile", "must be in (0, 1)")
        if self.user_dp not in ("off", "client", "server", "adaptive"):
            bad("user_dp", "choose 'off', 'client', 'server' or 'adaptive'")
        if self.user_dp == "off" and (self.user_noise_multiplier > 0 or self.user_target_epsilon > 0):
            bad("user_dp", "user-noise-multiplier/user-target-epsilon given but user-dp is 'off'")
        if self.user_dp != "off" and not (self.user_noise_multiplier > 0 or self.user_target_epsilon > 0):
            bad("user_noise_multiplier", "user-level DP needs user-noise-multiplier > 0 or user-target-epsilon > 0")
        if self.user_noise_multiplier > 0 and self.user_target_epsilon > 0:
            bad("user_target_epsilon", "give user-noise-multiplier or user-target-epsilon, not both")
        if self.user_dp in ("server", "adaptive") and self.users_per_node != 1:
            bad("user_dp", "server-side clipping clips whole node replies: it is user-level only with users-per-node=1 "
                "(use user-dp='client' for cohorts of users per node)")
        if self.user_dp != "off" and self.aggregation == "itemwise":
            bad("aggregation", "item-wise averaging is not valid with user-level DP")
        if self.user_dp != "off" and self.fraction_train < 1:
            bad("fraction_train", "with user-level DP users are sampled by user-sample-rate (Poisson), not by node")
        if self.budget_epsilon > 0 and not self.dp:
            bad("budget_epsilon", "a client budget needs interaction-level DP (noise-multiplier or target-epsilon)")
        if not 0 < self.delta < 1:
            bad("delta", "must be in (0, 1)")
        from fedrec.models import wants_item_features

        try:
            feature_aware = wants_item_features(self.model)
        except ValueError as e:
            raise ValueError(f"config {e}") from None
        for key in ("cold_users", "cold_items"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)")
        if self.cold_items > 0 and not feature_aware:
            bad("cold_items", "held-out items can only be ranked by a feature-aware model: use model='two-tower'")
        if self.aggregation not in ("fedavg", "itemwise"):
            bad("aggregation", "choose 'fedavg' or 'itemwise'")
        if self.aggregation == "itemwise" and self.dp:
            bad("aggregation", "item-wise averaging needs sparse, un-noised rows: not valid with DP")
        if self.server_opt not in ("adam", "yogi", "sgd"):
            bad("server_opt", "choose 'adam', 'yogi' or 'sgd'")
        if self.split not in ("leave-last-out", "temporal-ratio"):
            bad("split", "choose 'leave-last-out' or 'temporal-ratio'")
        if self.engine not in ("auto", "generic"):
            bad("engine", "choose 'auto' (fast paths where registered) or 'generic'")
        if self.ties not in ("pessimistic", "random"):
            bad("ties", "choose 'pessimistic' or 'random'")
        if self.noise_multiplier > 0 and self.target_epsilon > 0:
            bad("target_epsilon", "give noise-multiplier or target-epsilon, not both")

    @property
    def dp(self) -> bool:
        return self.noise_multiplier > 0 or self.target_epsilon > 0

    @property
    def prior(self) -> tuple:
        """The DP popularity prior's mechanism for the accountant (``()``: none)."""
        from fedrec.privacy.prior import prior_mechanism

        return prior_mechanism(self.prior_noise)

    @property
    def user_level(self) -> bool:
        return self.user_dp != "off"

    @property
    def local(self) -> LocalConfig:
        return LocalConfig(
            user_lr=self.user_lr,
            user_steps=self.user_steps,
            item_steps=self.item_steps,
            negatives=self.negatives,
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            user_l2=self.user_l2,
            update_clip=self.user_clip if self.user_dp in ("client",) else 0.0,
        )

    @property
    def steps_per_round(self) -> int:
        return steps_per_round(self.local)

    def planned_steps(self) -> int:
        """DP-SGD steps of a user who takes part in every round."""
        return self.num_server_rounds * self.steps_per_round

    def resolved(self) -> "FedConfig":
        """Calibrate ``noise_multiplier`` from ``target_epsilon`` (Opacus RDP accountant)
        for a user taking part in every planned round; returns a new config."""
        from fedrec.privacy.accounting import calibrate_noise

        out = self
        if self.target_epsilon > 0:
            sigma = calibrate_noise(
                target_epsilon=self.target_epsilon,
                delta=self.delta,
                sample_rate=self.sample_rate,
                steps=self.planned_steps(),
                extra=self.prior,
            )
            out = dataclasses.replace(out, noise_multiplier=sigma, target_epsilon=0.0)
        if self.user_target_epsilon > 0:
            sigma = calibrate_noise(
                target_epsilon=self.user_target_epsilon,
                delta=self.delta,
                sample_rate=self.user_sample_rate,
                steps=self.num_server_rounds,
                extra=self.prior,
            )
            out = dataclasses.replace(out, user_noise_multiplier=sigma, user_target_epsilon=0.0)
        return out

    @classmethod
    def from_run_config(cls, run_config: dict) -> "FedConfig":
        """Build from a Flower run config (dashed keys).  Unknown keys are an error."""
        names = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in dict(run_config).items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"unknown config key {key!r}; known: {sorted(k.replace('_', '-') for k in names)}")
            default = names[name].default
            try:
                if isinstance(default, bool):
                    if isinstance(value, str):
                        if value.lower() not in ("true", "false", "1", "0"):
                            raise ValueError
                        value = value.lower() in ("true", "1")
                    else:
                        value = bool(value)
                elif isinstance(default, int):
                    if float(value) != int(float(value)):
                        raise ValueError
                    value = int(float(value))
                elif isinstance(default, float):
                    value = float(value)
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise ValueError(f"config {key}={value!r}: expected {type(default).__name__}") from None
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"config {key}=nan: not a number")
            kwargs[name] = value
        return cls(**kwargs)

    def to_run_config(self) -> dict:
        """Flower run config (dashed keys, scalar values)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


DEFAULTS = FedConfig()
