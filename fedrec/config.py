"""One validated, frozen configuration of a federated run.

Built once from Flower's run config (``[tool.flwr.app.config]`` or the dict the
CLI passes) by :func:`FedConfig.from_run_config`.  The run config is nested in
sections, one TOML table each (``[tool.flwr.app.config.interaction-level]``),
which Flower flattens to ``<section>.<key>`` (``interaction-level.noise-multiplier``);
keys use dashes, as in Flower.  A key without its section (``noise-multiplier``)
is read too: run directories and checkpoints written before sections hold those.
Every value is checked, each section by its own check (:data:`SECTION_CHECKS`), then
the rules that join sections; errors name the key and the bad value.  The configuration
is settings only: it imports nothing of the engine, the models or the accountants.  What
a target epsilon means in noise is :func:`fedrec.privacy.calibration.resolved`; what a
model or a training algorithm cannot run is refused where a run starts
(:func:`fedrec.federated.algorithms.check_run`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from fedrec.errors import ConfigError

__all__ = ["FedConfig", "DEFAULTS", "ConfigError", "SECTIONS", "SECTION_TABLES", "SECTION_CHECKS", "options",
           "run_key", "flat_run_config", "nested_run_config", "sectioned_run_config", "parse_overrides"]

#: Sections of the configuration, in the order ``--help`` shows them.
SECTIONS = ("data", "model", "federation", "privacy", "local training", "interaction-level DP", "user-level DP",
            "private ALS", "server", "fault tolerance", "evaluation", "outputs")

#: Each section's table in ``[tool.flwr.app.config]``: run-config keys are ``<table>.<key>``.
SECTION_TABLES = {"data": "data", "model": "model", "federation": "federation", "privacy": "privacy",
                  "local training": "local",
                  "interaction-level DP": "interaction-level", "user-level DP": "user-level", "private ALS": "als",
                  "server": "server",
                  "fault tolerance": "fault-tolerance", "evaluation": "evaluation", "outputs": "outputs"}


def _opt(default, section: str, help: str, *, choices: tuple | None = None, flag: str | None = None):
    """A config field: its one default, its section, its help text, its choices and (if not
    ``--key``) its command-line flag.  The CLI and ``[tool.flwr.app.config]`` come from these."""
    assert section in SECTIONS, section
    return field(default=default, metadata={"section": section, "help": help, "choices": choices, "flag": flag})


@dataclass(frozen=True)
class FedConfig:
    """Settings of a federated run.  Defaults are the tuned ML-100K settings."""

    # data
    data: str = _opt("ml-latest-small", "data", "'ml-latest-small' (bundled), a fetched dataset ('ml-100k', "
                     "'ml-1m', ...: `fedrec data list`), 'synthetic:USERSxITEMS[:SEED]', or a path to an ML-100K/ML-1M "
                     "directory, a MovieLens ratings.csv, or a generic CSV/TSV/Parquet file")
    format: str = _opt("auto", "data", "input format (auto: detected from the file names and header)",
                       choices=("auto", "ml-100k", "ml-1m", "ml-csv", "generic"))
    user_col: str = _opt("", "data", "generic files: user id column (default: user)")
    item_col: str = _opt("", "data", "generic files: item id column (default: item)")
    rating_col: str = _opt("", "data", "generic files: rating column (default: one named rating or score, if any)")
    timestamp_col: str = _opt("", "data", "generic files: timestamp column (default: one named timestamp, time or ts; "
                              "else the row order is the time order)")
    sep: str = _opt("", "data", "generic files: field separator (default: sniffed)")
    duplicates: str = _opt("error", "data", "repeated (user, item) pairs: refuse, or keep the first or last",
                           choices=("error", "first", "last"))
    min_rating: float = _opt(0.0, "data", "positives = ratings >= this (0: every rating is a positive)")
    kcore: int = _opt(0, "data", "iterative k-core filter (0: none)")
    split: str = _opt("leave-last-out", "data", "chronological split: leave-last-out (valid = 2nd-to-last, test = "
                      "last; the order inside a timestamp tie is drawn from --seed, never the file's), "
                      "leave-last-group-out (test = every item of the last timestamp, valid = the one before), "
                      "temporal-ratio, or window:START:END (train = before START, test = [START, END), unix "
                      "seconds: one step of a stream, see `fedrec sweep stream`)")
    cold_users: float = _opt(0.0, "data", "fraction of users held out of training (user cold-start; fixed split seed)")
    cold_items: float = _opt(0.0, "data", "fraction of items held out of training, ranked through item features "
                             "(needs a feature-aware model such as two-tower)")
    max_users: int = _opt(0, "data", "keep this many users with training data, drawn with a fixed seed (nested: a "
                          "smaller population is a subset of a larger one; the catalogue is unchanged); 0: all")
    federation_plan: str = _opt("", "data", "the server's public view of the federation (catalogue, cohorts, held-out "
                                "items), written beside the node files: a server given one never reads the "
                                "interactions (fedrec deploy sets it)")
    # model
    model: str = _opt("mf", "model", "mf, gmf, mlp, neumf, two-tower, the sequential sasrec and gru4rec, or your "
                      "own: path/to/file.py:ClassName (a fedrec.models.FederatedModel; see examples/my_model.py)")
    dim: int = _opt(64, "model", "embedding dimension")
    init_std: float = _opt(0.1, "model", "std of the initial parameters")
    seq_len: int = _opt(50, "model", "sequential models: the last N items of the history they read (a training "
                        "window's length)")
    engine: str = _opt("auto", "model", "auto: a model's registered fast path where it has one (MF); generic: the "
                       "torch.func engine for every model", choices=("auto", "generic"))
    device: str = _opt("cpu", "model", "where local training and evaluation compute: cpu, cuda or cuda:N (a GPU "
                       "PyTorch sees; samples and noise are drawn on the CPU, so results equal a CPU run's within "
                       "float tolerance)")
    # federation
    num_server_rounds: int = _opt(500, "federation", "the most server rounds (a guard: training stops on validation, "
                                  "see --patience)", flag="--rounds")
    users_per_node: int = _opt(64, "federation", "users simulated by one SuperNode, each with its own state and DP")
    fraction_train: float = _opt(1.0, "federation", "fraction of nodes asked to train per round")
    seed: int = _opt(0, "federation", "seed of initialisation, splits, negatives and non-private sampling "
                     "(counter-based: runs reproduce); DP noise and DP sampling are secret unless --reproducible-noise")
    reproducible_noise: bool = _opt(False, "federation", "simulations only: derive DP noise, Poisson sampling and "
                                    "private user sampling from --seed, so a rerun is bit-exact; the guarantees then "
                                    "hold against no one who knows the seed (refused by fedrec deploy and the device)")
    # privacy: say the unit and the epsilon, get the mechanism chosen for the data
    privacy_unit: str = _opt("", "privacy", "privacy unit of a run whose mechanism fedrec chooses for the data "
                             "(fedrec/presets/presets.toml): user-level or interaction-level, with --epsilon; flags "
                             "given override the chosen preset", choices=("user-level", "interaction-level"),
                             flag="--privacy")
    epsilon: float = _opt(0.0, "privacy", "target epsilon of --privacy (the run's epsilon in that unit, every "
                          "release composed)")
    # local training
    algorithm: str = _opt("auto", "local training", "how a node trains its users: auto (als with --als, sequential "
                          "for sasrec/gru4rec, cohort-sgd otherwise), cohort-sgd, sequential, als, or your own "
                          "TrainingAlgorithm as package.module:ClassName or path/to/file.py:ClassName")
    user_lr: float = _opt(1.0, "local training", "SGD rate of the local user state")
    user_steps: int = _opt(1, "local training", "local-state-only steps before the released steps")
    item_steps: int = _opt(1, "local training", "steps whose gradients of global parameters are released")
    negatives: int = _opt(1, "local training", "distinct negatives per positive, all in the positive's one clipped "
                          "sample")
    user_l2: float = _opt(0.0, "local training", "L2 penalty on the local state")
    weighting: str = _opt("user", "local training", "how a node's users weigh in its release of global gradients: "
                          "user (each user's mean gradient, every user alike) or interaction (users weigh by their "
                          "training interactions, sequential models by their training positions, as centralized "
                          "training weighs them; non-private runs only)",
                          choices=("user", "interaction"))
    # interaction-level DP (Opacus mechanism, per user)
    noise_multiplier: float = _opt(0.0, "interaction-level DP", "DP-SGD noise multiplier (0: no DP)")
    target_epsilon: float = _opt(0.0, "interaction-level DP", "> 0: calibrate the noise multiplier for this epsilon "
                                 "over the planned rounds (Opacus RDP accountant)")
    max_grad_norm: float = _opt(1.0, "interaction-level DP", "per-sample clipping norm (one sample = one interaction "
                                "with its negatives)")
    sample_rate: float = _opt(1.0, "interaction-level DP", "Poisson sampling rate of a user's samples per step")
    interaction_cap: int = _opt(100, "interaction-level DP", "public normaliser B: a user's noisy gradient sum is "
                                "divided by the expected batch sample-rate x B, a public constant, never by the "
                                "user's own interaction count (which adding or removing one interaction changes)")
    delta: float = _opt(1e-5, "interaction-level DP", "delta of both units")
    prior_noise: float = _opt(0.0, "interaction-level DP", "> 0: start item biases from a DP popularity prior with "
                              "this noise (composed into both units' epsilon)")
    train_head: float = _opt(0.0, "interaction-level DP", "> 0: train only this fraction of items, those with the "
                             "largest counts in the DP popularity prior's release (DP-FEST; either unit): the other "
                             "items' rows are frozen at zero (ranked by the prior) and never enter a clipped sample")
    budget_epsilon: float = _opt(0.0, "interaction-level DP", "> 0: a user declines a round that would take its "
                                 "interaction-level epsilon past this")
    # user-level DP (whole per-user update clipped, Gaussian noise on the sum before the server optimiser)
    user_dp: str = _opt("off", "user-level DP", "where users' updates are clipped and noised: clipped on the node "
                        "per user (client) or by the server (server; one user per node), noised by the server; or "
                        "clipped and noised by each user with secure aggregation, the server seeing only the noisy "
                        "sum (distributed: the distributed discrete Gaussian over SecAgg+)",
                        choices=("off", "client", "server", "distributed"))
    user_noise_multiplier: float = _opt(0.0, "user-level DP", "noise multiplier on the sum of clipped user updates")
    user_target_epsilon: float = _opt(0.0, "user-level DP", "> 0: calibrate the user-level noise for this epsilon "
                                      "over the planned rounds")
    user_clip: float = _opt(0.1, "user-level DP", "clip of one user's update")
    user_sample_rate: float = _opt(1.0, "user-level DP", "Poisson probability that a user takes part in a round")
    ddp_min_users: float = _opt(0.8, "user-level DP", "distributed: the fewest users whose noise shares a round's sum "
                                "must hold (<= 1: a fraction of the federation's users); each user's share is sized "
                                "for it, and a round with fewer is not unmasked")
    ddp_noise: str = _opt("skellam", "user-level DP", "distributed: each user's integer noise share, skellam (a sum of "
                          "shares is one Skellam draw) or discrete-gaussian", choices=("skellam", "discrete-gaussian"))
    # private ALS (user-level DP by sufficient statistics; fedrec.als)
    als: bool = _opt(False, "private ALS", "train MF by alternating least squares instead of SGD: users solve their "
                     "vectors on the device; the server solves item vectors from noisy per-item sums")
    als_passes: int = _opt(3, "private ALS", "ALS passes (one server round each, after one round of item counts)")
    als_cap: int = _opt(50, "private ALS", "most items a user contributes to the released statistics (a random "
                        "subset of its training items, fixed per run)")
    als_pass_cap: int = _opt(20, "private ALS", "most items a user's vector is added to in each pass: a random "
                             "subset of its training items among the trained ones (the head), fixed per run")
    als_clip: float = _opt(0.05, "private ALS", "norm a user vector is clipped to before it is released in a sum")
    als_head: float = _opt(0.1, "private ALS", "fraction of items trained: those with the largest noisy counts; the "
                           "others are ranked below them by noisy count")
    als_alpha: float = _opt(0.2, "private ALS", "weight of every (user, item) pair toward 0 (implicit ALS)")
    als_reg: float = _opt(0.03, "private ALS", "item-solve ridge, in units of als-clip^2 x users")
    als_user_reg: float = _opt(1.0, "private ALS", "user-solve ridge (on the device)")
    als_noise_multiplier: float = _opt(0.0, "private ALS", "noise multiplier of every release (counts and passes; "
                                       "0: no DP)")
    als_target_epsilon: float = _opt(0.0, "private ALS", "> 0: calibrate als-noise-multiplier for this epsilon "
                                     "over the counts and all passes (Opacus RDP accountant), in als-unit")
    als_unit: str = _opt("user-level", "private ALS", "unit of als-target-epsilon: user-level, or interaction-level "
                         "(one interaction's own sensitivities; the run reports both epsilons)",
                         choices=("user-level", "interaction-level"))
    # server
    aggregation: str = _opt("fedavg", "server", "fedavg, itemwise (each item row averaged over the users who "
                            "touched it; no DP), or one of Flower's robust strategies over the nodes' updates: "
                            "median (FedMedian), trimmed-mean (FedTrimmedAvg), krum, multikrum, bulyan",
                            choices=("fedavg", "itemwise", "median", "trimmed-mean", "krum", "multikrum", "bulyan"))
    trim_beta: float = _opt(0.2, "server", "trimmed-mean: fraction of the nodes' values cut at each end of every "
                            "coordinate")
    byzantine_nodes: int = _opt(1, "server", "krum, multikrum, bulyan: malicious nodes the rule tolerates (f; "
                                "multikrum averages the n - f nodes Krum scores best)")
    server_opt: str = _opt("adam", "server", "server optimiser over the mean update (FedOpt); none: the global "
                           "parameters stay as they start (a frozen model; nodes still train their local state)",
                           choices=("adam", "yogi", "sgd", "none"))
    server_lr: float = _opt(5e-3, "server", "server learning rate")
    beta1: float = _opt(0.9, "server", "first-moment decay of adam/yogi")
    beta2: float = _opt(0.999, "server", "second-moment decay of adam/yogi")
    server_eps: float = _opt(1e-8, "server", "epsilon of adam/yogi (numerical, not privacy)")
    secure_aggregation: bool = _opt(False, "server", "sum the nodes' updates with Flower's SecAgg+: the server sees "
                                    "only each round's sum (2+ nodes per round; not with user-level DP)")
    secagg_clip: float = _opt(1.0, "server", "SecAgg+: each node's weighted update is clipped to [-C, C] before "
                              "quantisation (nodes count the values that would be; the run warns)")
    secagg_quantization: int = _opt(0, "server", "SecAgg+: quantisation range (0: the largest power of two whose "
                                    "sum over the nodes cannot wrap around the modulus)")
    secagg_shares: float = _opt(1.0, "server", "SecAgg+: neighbours of each node (<= 1: a fraction of the sampled "
                                "nodes; 1: every node, plain SecAgg)")
    secagg_threshold: float = _opt(0.67, "server", "SecAgg+: shares that reconstruct a secret (<= 1: a fraction of "
                                   "the shares)")
    row_norm: float = _opt(0.0, "server", "robustness: each item row of one user's update (all tables' rows of the "
                           "item) is clipped to this L2 norm before the mean (0: off; not with interaction-level DP)")
    max_rows: int = _opt(0, "server", "robustness: one user's update keeps at most this many item rows, those of "
                         "largest norm (0: off; not with interaction-level DP)")
    # fault tolerance
    min_replies: int = _opt(1, "fault tolerance", "fewer contributing replies leave the round's parameters unchanged")
    round_timeout: float = _opt(600.0, "fault tolerance", "seconds the server waits for replies")
    dropout_rate: float = _opt(0.0, "fault tolerance", "simulated probability that a node fails in a round")
    node_errors: str = _opt("stop", "fault tolerance", "a node that is broken (its ClientApp raised, e.g. on data it "
                            "cannot read, or its process died): stop ends the run before that round is aggregated, "
                            "keeping the finished rounds for --resume; continue counts it as failed and goes on "
                            "without it (a node that is gone, or a simulated dropout, is counted either way)",
                            choices=("stop", "continue"))
    resume: bool = _opt(False, "fault tolerance", "continue the run in OUT from its last checkpoint, with the "
                        "configuration it recorded (fedrec simulate reads OUT/config.json; flags given again "
                        "must agree)")
    state_dir: str = _opt("", "fault tolerance", "where nodes keep users' local state (default OUT/client-state)")
    warm_start: str = _opt("", "fault tolerance", "start from this checkpoint directory of an earlier run of the same "
                           "model (its global parameters and server-optimiser state; no prior is added), e.g. the "
                           "previous window of a stream; rounds count on from the checkpoint's, up to --rounds); "
                           "its privacy ledger is composed into this run's epsilon")
    warm_start_unaccounted: bool = _opt(False, "fault tolerance", "accept a warm start from a checkpoint whose "
                                        "history is not private or carries no privacy ledger: the run's epsilon is "
                                        "then reported as infinite")
    # evaluation
    eval_every: int = _opt(10, "evaluation", "federated evaluation every N rounds (0: off; the model is then the "
                           "last round's, and nodes release no metrics)")
    patience: int = _opt(5, "evaluation", "stop after N evaluations without a better validation metric; --rounds "
                         "is then the most rounds (0: run every round)")
    ties: str = _opt("pessimistic", "evaluation", "tie rule of full ranking; ties never favour the model",
                     choices=("pessimistic", "random"))
    rank_consumed: bool = _opt(False, "evaluation", "rank the user's consumed items too (not masked), for domains "
                               "where repeat consumption is legitimate; by default only unseen items compete")
    select_metric: str = _opt("ndcg@10", "evaluation", "validation metric that picks the round")
    exposure_items: str = _opt("", "evaluation", "comma-separated item indices whose exposure (ER@5, ER@10: the "
                               "share of users, among those who have not seen the item, with it in their "
                               "full-ranking top-K) is reported; attack studies")
    # outputs
    out: str = _opt("", "outputs", "run directory (config.json, rounds.csv, metrics.json, checkpoint/)")
    mlflow: str = _opt("", "outputs", "MLflow tracking URI (e.g. sqlite:///runs/mlflow.db, a local file): the "
                       "finished run is logged there (config, per-round metrics, privacy, artefacts; needs mlflow)")
    mlflow_experiment: str = _opt("fedrec", "outputs", "MLflow experiment of the run (with --mlflow)")
    tensorboard: str = _opt("", "outputs", "TensorBoard log directory: the finished run's per-round metrics, the "
                            "selected round's metrics and the privacy spent are written under DIR/<run name> as "
                            "scalars (needs tensorboard)")
    keep_replies: bool = _opt(False, "outputs", "audits: write every node's valid train reply of every round to "
                              "OUT/replies/round-R/ (what an honest-but-curious server sees; the one-run audit reads "
                              "them)")

    def __post_init__(self):
        for check in SECTION_CHECKS.values():
            check(self)
        _check_across_sections(self)

    @property
    def exposure_targets(self) -> tuple[int, ...]:
        """The items of ``exposure_items``."""
        return tuple(int(x) for x in self.exposure_items.split(",") if x.strip())

    @property
    def dp(self) -> bool:
        return self.noise_multiplier > 0 or self.target_epsilon > 0

    @property
    def user_level(self) -> bool:
        return self.user_dp != "off"

    @property
    def robust_aggregation(self) -> bool:
        """Whether one of Flower's robust strategies aggregates the nodes' updates."""
        return self.aggregation not in ("fedavg", "itemwise")

    @property
    def als_private(self) -> bool:
        return self.als and (self.als_noise_multiplier > 0 or self.als_target_epsilon > 0)

    @classmethod
    def from_run_config(cls, run_config: dict) -> "FedConfig":
        """Build from a Flower run config: ``<section>.<key>`` keys as Flower flattens
        ``[tool.flwr.app.config]``, nested tables, or keys without their section.
        Unknown keys, a key under another section and a key given twice are errors."""
        kwargs = {}
        for key, value in _leaves(run_config):
            name = _field_name(key, _FIELDS)
            if name in kwargs:
                raise ConfigError(key, value, "given twice", message=f"config key {run_key(name)!r} is given twice "
                                  f"(with and without its section?)")
            kwargs[name] = _typed(key, value, _FIELDS[name].default)
        return cls(**kwargs)

    def to_run_config(self) -> dict:
        """Flower run config: ``<section>.<key>`` keys (dashed), scalar values, in the
        order of the sections (what Flower makes of ``[tool.flwr.app.config]``)."""
        return {run_key(f.name): getattr(self, f.name) for f in fields(self)}



# Validation: one function per section, reading only its section's fields (a test holds them to
# it), then the rules that join sections.  None of them knows the engine, the models or the
# privacy accountants: what a model or an algorithm cannot run is refused where the run starts
# (fedrec.federated.algorithms.check_run).

def _bad(c: FedConfig, key: str, why: str):
    raise ConfigError(run_key(key), getattr(c, key), why)


def _check_fields(c: FedConfig, section: str, *, at_least_1=(), at_least_0=(), positive=(), fractions=()) -> None:
    """The section's choices and ranges: ``fractions`` maps a key to ``(low, high, low_open, high_open)``."""
    for f in _SECTION_FIELDS[section]:
        choices = f.metadata.get("choices")
        if choices and getattr(c, f.name) not in choices and getattr(c, f.name) != f.default:
            _bad(c, f.name, "choose " + ", ".join(repr(x) for x in choices))
    for key in at_least_1:
        if getattr(c, key) < 1:
            _bad(c, key, "must be >= 1")
    for key in at_least_0:
        if getattr(c, key) < 0:
            _bad(c, key, "must be >= 0")
    for key in positive:
        if not getattr(c, key) > 0:
            _bad(c, key, "must be > 0")
    for key, (lo, hi, lo_open, hi_open) in dict(fractions).items():
        v = getattr(c, key)
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            _bad(c, key, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def _check_data(c: FedConfig) -> None:
    _check_fields(c, "data", at_least_0=("max_users", "kcore", "min_rating"),
                  fractions={"cold_users": (0, 1, False, True), "cold_items": (0, 1, False, True)})
    if c.split not in ("leave-last-out", "leave-last-group-out", "temporal-ratio"):
        from fedrec.data.splits import parse_window

        try:
            if parse_window(c.split) is None:
                raise ValueError("choose 'leave-last-out', 'leave-last-group-out', 'temporal-ratio' or "
                                 "'window:START:END'")
        except ValueError as e:
            _bad(c, "split", str(e).split(": ", 1)[-1] if str(e).startswith("split ") else str(e))


def _check_model(c: FedConfig) -> None:
    _check_fields(c, "model", at_least_1=("dim", "seq_len"), positive=("init_std",))
    if not re.fullmatch(r"cpu|cuda(:\d+)?", c.device):
        _bad(c, "device", "choose 'cpu', 'cuda' or 'cuda:N'")


def _check_federation(c: FedConfig) -> None:
    _check_fields(c, "federation", at_least_1=("num_server_rounds", "users_per_node"),
                  fractions={"fraction_train": (0, 1, True, False)})


def _check_privacy(c: FedConfig) -> None:
    _check_fields(c, "privacy", at_least_0=("epsilon",))
    if c.privacy_unit and not c.epsilon > 0:
        _bad(c, "privacy_unit", "needs --epsilon > 0, the target the mechanism is chosen for")
    if c.epsilon > 0 and not c.privacy_unit:
        _bad(c, "epsilon", "needs --privacy user-level or interaction-level (the unit the epsilon is in)")


def _check_local(c: FedConfig) -> None:
    _check_fields(c, "local training", at_least_1=("item_steps", "negatives"), at_least_0=("user_steps", "user_l2"),
                  positive=("user_lr",))


def _check_interaction_level(c: FedConfig) -> None:
    _check_fields(c, "interaction-level DP", at_least_1=("interaction_cap",),
                  at_least_0=("noise_multiplier", "target_epsilon", "budget_epsilon", "prior_noise"),
                  positive=("max_grad_norm",),
                  fractions={"sample_rate": (0, 1, True, False), "delta": (0, 1, True, True)})
    if not 0 <= c.train_head <= 1:
        _bad(c, "train_head", "must be in [0, 1] (0: every item trained)")
    if c.noise_multiplier > 0 and c.target_epsilon > 0:
        _bad(c, "target_epsilon", "give noise-multiplier or target-epsilon, not both")
    if c.budget_epsilon > 0 and not c.dp:
        _bad(c, "budget_epsilon", "a client budget needs interaction-level DP (noise-multiplier or target-epsilon)")
    if c.train_head > 0 and c.prior_noise <= 0:
        _bad(c, "train_head", "the trained items are chosen by the DP popularity prior's release: set prior-noise > 0")


def _check_user_level(c: FedConfig) -> None:
    if c.user_dp == "adaptive":
        _bad(c, "user_dp", "adaptive clipping is refused: Flower's DifferentialPrivacyServerSideAdaptiveClipping "
             "noises the sum at the next round's clip, below the clip it applied (an effective noise multiplier "
             "of about 0.93 where 1 is accounted); use user-dp='client' or 'server' (fixed clipping)")
    _check_fields(c, "user-level DP", at_least_0=("user_noise_multiplier", "user_target_epsilon"),
                  positive=("user_clip",), fractions={"user_sample_rate": (0, 1, True, False)})
    if c.user_dp == "off" and (c.user_noise_multiplier > 0 or c.user_target_epsilon > 0):
        _bad(c, "user_dp", "user-noise-multiplier/user-target-epsilon given but user-dp is 'off'")
    if c.user_dp != "off" and not (c.user_noise_multiplier > 0 or c.user_target_epsilon > 0):
        _bad(c, "user_noise_multiplier", "user-level DP needs user-noise-multiplier > 0 or user-target-epsilon > 0")
    if c.user_noise_multiplier > 0 and c.user_target_epsilon > 0:
        _bad(c, "user_target_epsilon", "give user-noise-multiplier or user-target-epsilon, not both")
    if c.ddp_min_users <= 0 or (c.ddp_min_users > 1 and c.ddp_min_users != int(c.ddp_min_users)):
        _bad(c, "ddp_min_users", "must be a fraction in (0, 1] or a whole number of users")


def _check_als(c: FedConfig) -> None:
    _check_fields(c, "private ALS", at_least_1=("als_cap", "als_pass_cap"),
                  at_least_0=("als_reg", "als_user_reg", "als_noise_multiplier", "als_target_epsilon"),
                  positive=("als_clip", "als_alpha"))
    if c.als_passes < 0:
        _bad(c, "als_passes", "must be >= 0 (0: the item counts only, private MostPop)")
    if not 0 <= c.als_head <= 1:
        _bad(c, "als_head", "must be in [0, 1] (0: nothing trained, items ranked by their noisy counts)")
    if c.als_noise_multiplier > 0 and c.als_target_epsilon > 0:
        _bad(c, "als_target_epsilon", "give als-noise-multiplier or als-target-epsilon, not both")
    if not c.als and (c.als_noise_multiplier > 0 or c.als_target_epsilon > 0):
        _bad(c, "als", "als-noise-multiplier/als-target-epsilon given but als is off")


def _check_server(c: FedConfig) -> None:
    _check_fields(c, "server", at_least_0=("byzantine_nodes", "row_norm", "max_rows"),
                  positive=("server_lr", "secagg_clip", "secagg_shares", "secagg_threshold"),
                  fractions={"trim_beta": (0, 0.5, False, True)})
    if c.secagg_quantization < 0:
        _bad(c, "secagg_quantization", "must be >= 0 (0: automatic)")


def _check_fault_tolerance(c: FedConfig) -> None:
    _check_fields(c, "fault tolerance", at_least_1=("min_replies",), positive=("round_timeout",),
                  fractions={"dropout_rate": (0, 1, False, True)})


def _check_evaluation(c: FedConfig) -> None:
    _check_fields(c, "evaluation", at_least_0=("patience", "eval_every"))
    try:
        targets = c.exposure_targets
    except ValueError:
        _bad(c, "exposure_items", "must be comma-separated item indices")
    if any(t < 0 for t in targets):
        _bad(c, "exposure_items", "item indices must be >= 0")


def _check_outputs(c: FedConfig) -> None:
    _check_fields(c, "outputs")
    if c.mlflow and not c.out:
        _bad(c, "mlflow", "MLflow logs the run directory: give --out too")
    if c.tensorboard and not c.out:
        _bad(c, "tensorboard", "TensorBoard logs the run directory: give --out too")


#: Each section's validation (it reads only that section's fields), in the order of :data:`SECTIONS`.
SECTION_CHECKS = {"data": _check_data, "model": _check_model, "federation": _check_federation,
                  "privacy": _check_privacy, "local training": _check_local,
                  "interaction-level DP": _check_interaction_level, "user-level DP": _check_user_level,
                  "private ALS": _check_als, "server": _check_server, "fault tolerance": _check_fault_tolerance,
                  "evaluation": _check_evaluation, "outputs": _check_outputs}


def _check_across_sections(c: FedConfig) -> None:
    """The rules that join two or more sections."""
    if c.split.startswith("window:") and c.patience > 0:
        _bad(c, "patience", "a window split has no validation to stop on: pass --patience 0 (the model "
             "evaluated is the last round's)")
    if c.user_dp == "server" and c.users_per_node != 1:
        _bad(c, "user_dp", "server-side clipping clips whole node replies: it is user-level only with users-per-node=1 "
             "(use user-dp='client' for cohorts of users per node)")
    if c.user_dp != "off" and c.aggregation == "itemwise":
        _bad(c, "aggregation", "item-wise averaging is not valid with user-level DP")
    if c.robust_aggregation and (c.user_dp != "off" or c.secure_aggregation or c.als):
        _bad(c, "aggregation", f"{c.aggregation} needs each node's update: not with user-level DP (a noised sum), "
             "secure aggregation (a sum) or private ALS")
    if c.user_dp != "off" and c.fraction_train < 1:
        _bad(c, "fraction_train", "with user-level DP users are sampled by user-sample-rate (Poisson), not by node")
    if c.als and c.device != "cpu":
        _bad(c, "device", "private ALS solves on the CPU only (numpy): use device='cpu'")
    if c.weighting == "interaction":
        why = ("interaction-level DP" if c.dp else "user-level DP" if c.user_level else "ALS" if c.als
               else "row bounds" if c.row_norm > 0 or c.max_rows > 0
               else "item-wise aggregation" if c.aggregation == "itemwise" else "")
        if why:
            _bad(c, "weighting", f"weighting users by their interactions is built for non-private SGD training, "
                 f"not with {why}: use weighting='user'")
    if c.secure_aggregation and c.user_dp in ("client", "server"):
        _bad(c, "secure_aggregation", "SecAgg+ hides single replies, which central user-level DP clips on the server "
             "or sums with the current parameters: use user-dp='distributed' (each user noises its share) or "
             "interaction-level DP with secure aggregation")
    if c.user_dp == "distributed":
        if not c.secure_aggregation:
            _bad(c, "user_dp", "'distributed' adds each user's noise share under secure aggregation: set "
                 "secure-aggregation")
        if c.dp:
            _bad(c, "user_dp", "'distributed' is user-level DP alone: leave interaction-level DP off")
        if c.prior_noise > 0 or c.train_head > 0:
            _bad(c, "user_dp", "'distributed' has no distributed popularity prior yet: leave prior-noise and "
                 "train-head off")
        if c.row_norm > 0 or c.max_rows > 0:
            _bad(c, "user_dp", "'distributed' clips each user's whole update: leave row-norm and max-rows off")
        if c.warm_start:
            _bad(c, "warm_start", "a warm start composes DP-FedAvg's Gaussian rounds: not with user-dp='distributed'")
    if (c.row_norm > 0 or c.max_rows > 0) and c.dp:
        _bad(c, "row_norm" if c.row_norm > 0 else "max_rows", "row bounds need each user's un-noised rows: not "
             "with interaction-level DP (they compose with user-level DP)")
    if (c.row_norm > 0 or c.max_rows > 0) and c.als:
        _bad(c, "als", "ALS releases sufficient statistics, not updates: leave row-norm and max-rows off")
    if c.aggregation == "itemwise" and c.dp:
        _bad(c, "aggregation", "item-wise averaging needs sparse, un-noised rows: not valid with DP")
    if c.privacy_unit and (c.dp or c.user_level or c.als_private):
        _bad(c, "privacy_unit", "chooses the mechanism itself: give --privacy/--epsilon, or a mechanism's own "
             "target epsilon or noise, not both")
    if c.als:
        if c.model != "mf":
            _bad(c, "model", "ALS trains matrix factorisation: use model='mf' with als")
        for key, off in (("dp", "noise-multiplier/target-epsilon"), ("user_level", "user-dp"),
                         ("secure_aggregation", "secure-aggregation"), ("prior_noise", "prior-noise"),
                         ("budget_epsilon", "budget-epsilon")):
            if getattr(c, key):
                _bad(c, "als", f"ALS is its own user-level mechanism: leave {off} off")
        if c.fraction_train < 1 or c.user_sample_rate < 1:
            _bad(c, "als", "ALS's accounting has every user in every pass: leave fraction-train and "
                 "user-sample-rate at 1")
        if c.resume:
            _bad(c, "resume", "ALS runs are a few rounds and are not resumed")


def run_key(name: str) -> str:
    """The run-config key of a field or of a key with or without its section:
    ``noise_multiplier`` -> ``interaction-level.noise-multiplier``.  ``KeyError``
    for no field, or a key under another section."""
    table, _, bare = name.rpartition(".")
    bare = bare.replace("_", "-")
    f = _FIELDS.get(bare.replace("-", "_"))
    if f is None or (table and table != SECTION_TABLES[f.metadata["section"]]):
        raise KeyError(name)
    return f"{SECTION_TABLES[f.metadata['section']]}.{bare}"


def flat_run_config(run_config: dict) -> dict:
    """A run config (sectioned, nested or flat) with keys without their section
    (``noise-multiplier``): the form fedrec's records compare and read."""
    return {key.split(".")[-1]: value for key, value in _leaves(run_config)}


def sectioned_run_config(run_config: dict) -> dict:
    """A run config (sectioned, nested or flat) with ``<section>.<key>`` keys, as Flower
    flattens ``[tool.flwr.app.config]``; keys that are no config field are kept as given."""
    out = {}
    for key, value in _leaves(run_config):
        try:
            out[run_key(key)] = value
        except KeyError:
            out[key] = value
    return out


def nested_run_config(run_config: dict) -> dict:
    """A run config as nested tables, one per section (the TOML of ``[tool.flwr.app.config]``)."""
    out: dict = {}
    for key, value in _leaves(run_config):
        table, _, leaf = run_key(key).partition(".")
        out.setdefault(table, {})[leaf] = value
    return out


def _leaves(run_config: dict, prefix: str = ""):
    """(key, value) of a run config, nested tables flattened to dotted keys."""
    for key, value in dict(run_config).items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _field_name(key: str, names: dict) -> str:
    """The field a run-config key names, or a :class:`ConfigError` that says which key is meant."""
    table, _, bare = key.rpartition(".")
    name = bare.replace("-", "_")
    f = names.get(name)
    if f is not None and (not table or SECTION_TABLES[f.metadata["section"]] == table):
        return name
    if f is not None:
        raise ConfigError(key, None, "under another section", message=f"unknown config key {key!r}: "
                          f"{bare!r} is in section {SECTION_TABLES[f.metadata['section']]!r} ({run_key(name)!r})")
    known = [run_key(k) for k in names]
    raise ConfigError(key, None, "unknown key", message=f"unknown config key {key!r}; known: {known}")


def _typed(key: str, value, default):
    """``value`` (a string from a command line or TOML's scalar) as the type of the field's
    ``default``; a :class:`ConfigError` naming ``key`` if it is not one."""
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
        raise ConfigError(key, value, f"expected {type(default).__name__}") from None
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(key, value, "not a number")
    return value


def parse_overrides(pairs) -> dict:
    """``KEY=VALUE`` strings (a sweep's ``--set``; keys as in the run config, with or without
    their section) as ``{field name: typed value}``.  A missing ``=``, an unknown key, a key
    given twice, a key the sweep sets itself or a value of the wrong type is a ``ValueError``
    in one line that quotes the ``--set`` as given."""
    out = {}
    for pair in pairs or ():
        key, eq, value = str(pair).partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise ValueError(f"--set {pair}: expected KEY=VALUE, e.g. --set server-lr=1e-3")
        try:
            name = _field_name(key, _FIELDS)
        except ConfigError as e:
            why = str(e).partition(": ")[2] if e.why == "under another section" else "unknown key"
            raise ValueError(f"--set {pair}: {why}; `fedrec simulate --help` lists the keys") from None
        if name in out:
            raise ValueError(f"--set {pair}: {run_key(name)!r} is given twice")
        if name in ("data", "seed", "out"):
            raise ValueError(f"--set {pair}: the sweep sets {key!r} itself (--data, --seeds, --out)")
        try:
            out[name] = _typed(key, value, _FIELDS[name].default)
        except ConfigError as e:
            raise ValueError(f"--set {pair}: {e.why}") from None
    return out


_FIELDS = {f.name: f for f in fields(FedConfig)}
_SECTION_FIELDS = {s: [f for f in fields(FedConfig) if f.metadata["section"] == s] for s in SECTIONS}


def options() -> list:
    """The config's fields with their metadata (default, section, help, choices,
    flag), without building a config (no model is loaded: ``--help`` stays fast)."""
    return list(fields(FedConfig))


#: The defaults, validated (building a configuration imports nothing of the engine or the models).
DEFAULTS = FedConfig()
