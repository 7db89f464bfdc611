"""One validated, frozen configuration of a federated run.

Built once from Flower's run config (``[tool.flwr.app.config]`` or the dict the
CLI passes) by :func:`FedConfig.from_run_config`.  The run config is nested in
sections, one TOML table each (``[tool.flwr.app.config.interaction-level]``),
which Flower flattens to ``<section>.<key>`` (``interaction-level.noise-multiplier``);
keys use dashes, as in Flower.  A key without its section (``noise-multiplier``)
is read too: run directories and checkpoints written before sections hold those.
Every value is checked; errors name the key and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from fedrec.errors import ConfigError

if TYPE_CHECKING:  # the engine (torch) is imported where it is used: `fedrec --help` stays fast
    from fedrec.engine.cohort import LocalConfig

__all__ = ["FedConfig", "DEFAULTS", "ConfigError", "SECTIONS", "SECTION_TABLES", "options", "run_key",
           "flat_run_config", "nested_run_config", "sectioned_run_config", "parse_overrides"]

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
    user_dp: str = _opt("off", "user-level DP", "where users' updates are clipped: on the node per user (client), "
                        "by the server (server; one user per node)",
                        choices=("off", "client", "server"))
    user_noise_multiplier: float = _opt(0.0, "user-level DP", "noise multiplier on the sum of clipped user updates")
    user_target_epsilon: float = _opt(0.0, "user-level DP", "> 0: calibrate the user-level noise for this epsilon "
                                      "over the planned rounds")
    user_clip: float = _opt(0.1, "user-level DP", "clip of one user's update")
    user_sample_rate: float = _opt(1.0, "user-level DP", "Poisson probability that a user takes part in a round")
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
        def bad(key, why):
            raise ConfigError(run_key(key), getattr(self, key), why)

        if self.user_dp == "adaptive":
            bad("user_dp", "adaptive clipping is refused: Flower's DifferentialPrivacyServerSideAdaptiveClipping "
                "noises the sum at the next round's clip, below the clip it applied (an effective noise multiplier "
                "of about 0.93 where 1 is accounted); use user-dp='client' or 'server' (fixed clipping)")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices and getattr(self, f.name) != f.default:
                bad(f.name, "choose " + ", ".join(repr(c) for c in choices))

        for key in ("dim", "num_server_rounds", "users_per_node", "item_steps", "negatives", "min_replies", "seq_len",
                    "interaction_cap"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        for key in ("max_users", "user_steps", "kcore", "min_rating", "user_l2", "patience", "eval_every",
                    "noise_multiplier", "target_epsilon", "budget_epsilon", "user_noise_multiplier",
                    "user_target_epsilon", "prior_noise"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        for key in ("init_std", "user_lr", "server_lr", "max_grad_norm", "user_clip", "round_timeout"):
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        if self.split not in ("leave-last-out", "leave-last-group-out", "temporal-ratio"):
            from fedrec.data.splits import parse_window

            try:
                if parse_window(self.split) is None:
                    raise ValueError("choose 'leave-last-out', 'leave-last-group-out', 'temporal-ratio' or "
                                     "'window:START:END'")
            except ValueError as e:
                bad("split", str(e).split(": ", 1)[-1] if str(e).startswith("split ") else str(e))
            if self.patience > 0:
                bad("patience", "a window split has no validation to stop on: pass --patience 0 (the model "
                                "evaluated is the last round's)")
        if not 0 < self.fraction_train <= 1:
            bad("fraction_train", "must be in (0, 1]")
        if not 0 < self.sample_rate <= 1:
            bad("sample_rate", "must be in (0, 1]")
        if not 0 < self.user_sample_rate <= 1:
            bad("user_sample_rate", "must be in (0, 1]")
        if not 0 <= self.dropout_rate < 1:
            bad("dropout_rate", "must be in [0, 1)")
        if self.user_dp == "off" and (self.user_noise_multiplier > 0 or self.user_target_epsilon > 0):
            bad("user_dp", "user-noise-multiplier/user-target-epsilon given but user-dp is 'off'")
        if self.user_dp != "off" and not (self.user_noise_multiplier > 0 or self.user_target_epsilon > 0):
            bad("user_noise_multiplier", "user-level DP needs user-noise-multiplier > 0 or user-target-epsilon > 0")
        if self.user_noise_multiplier > 0 and self.user_target_epsilon > 0:
            bad("user_target_epsilon", "give user-noise-multiplier or user-target-epsilon, not both")
        if self.user_dp == "server" and self.users_per_node != 1:
            bad("user_dp", "server-side clipping clips whole node replies: it is user-level only with users-per-node=1 "
                "(use user-dp='client' for cohorts of users per node)")
        if self.user_dp != "off" and self.aggregation == "itemwise":
            bad("aggregation", "item-wise averaging is not valid with user-level DP")
        if self.robust_aggregation and (self.user_dp != "off" or self.secure_aggregation or self.als):
            bad("aggregation", f"{self.aggregation} needs each node's update: not with user-level DP (a noised sum), "
                "secure aggregation (a sum) or private ALS")
        if not 0 <= self.trim_beta < 0.5:
            bad("trim_beta", "must be in [0, 0.5)")
        if self.byzantine_nodes < 0:
            bad("byzantine_nodes", "must be >= 0")
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
            raise ConfigError("model.model", self.model, str(e).split(": ", 1)[-1]) from None
        for key in ("cold_users", "cold_items"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)")
        from fedrec.models import federated_model_class, is_sequential

        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            bad("device", "choose 'cpu', 'cuda' or 'cuda:N'")
        if self.als and self.device != "cpu":
            bad("device", "private ALS solves on the CPU only (numpy): use device='cpu'")
        sequential = is_sequential(federated_model_class(self.model))
        if sequential:
            if self.device != "cpu":
                bad("device", "sequential models train on the CPU only (the GPU path covers the cohort engine's "
                    "models: mf, gmf, mlp, neumf, two-tower and your own FederatedModel)")
            if self.prior_noise > 0:
                bad("prior_noise", "sequential models have no item bias to start from a popularity prior")
            if self.dp or self.budget_epsilon > 0:
                bad("model", "interaction-level DP is not available for sequential models: one interaction enters "
                    "up to seq-len + 1 samples (as a target and as the input of later positions); use user-level "
                    "DP (user-dp='client')")
        if self.weighting == "interaction":
            why = ("interaction-level DP" if self.dp else "user-level DP" if self.user_level else "ALS" if self.als
                   else "row bounds" if self.row_norm > 0 or self.max_rows > 0
                   else "item-wise aggregation" if self.aggregation == "itemwise" else "")
            if why:
                bad("weighting", f"weighting users by their interactions is built for non-private SGD training, "
                    f"not with {why}: use weighting='user'")
        if self.mlflow and not self.out:
            bad("mlflow", "MLflow logs the run directory: give --out too")
        if self.tensorboard and not self.out:
            bad("tensorboard", "TensorBoard logs the run directory: give --out too")
        if not 0 <= self.train_head <= 1:
            bad("train_head", "must be in [0, 1] (0: every item trained)")
        if self.train_head > 0 and self.prior_noise <= 0:
            bad("train_head", "the trained items are chosen by the DP popularity prior's release: set prior-noise > 0")
        if self.cold_items > 0 and not feature_aware:
            bad("cold_items", "held-out items can only be ranked by a feature-aware model: use model='two-tower'")
        if self.secure_aggregation and self.user_dp != "off":
            bad("secure_aggregation", "SecAgg+ hides single replies, which user-level DP clips on the server or "
                "sums with the current parameters: use interaction-level DP with secure aggregation")
        for key in ("secagg_clip", "secagg_shares", "secagg_threshold"):
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        if self.secagg_quantization < 0:
            bad("secagg_quantization", "must be >= 0 (0: automatic)")
        try:
            targets = self.exposure_targets
        except ValueError:
            bad("exposure_items", "must be comma-separated item indices")
        if any(t < 0 for t in targets):
            bad("exposure_items", "item indices must be >= 0")
        if self.row_norm < 0 or self.max_rows < 0:
            bad("row_norm" if self.row_norm < 0 else "max_rows", "must be >= 0")
        if (self.row_norm > 0 or self.max_rows > 0) and self.dp:
            bad("row_norm" if self.row_norm > 0 else "max_rows", "row bounds need each user's un-noised rows: not "
                "with interaction-level DP (they compose with user-level DP)")
        if (self.row_norm > 0 or self.max_rows > 0) and self.als:
            bad("als", "ALS releases sufficient statistics, not updates: leave row-norm and max-rows off")
        if self.aggregation == "itemwise" and self.dp:
            bad("aggregation", "item-wise averaging needs sparse, un-noised rows: not valid with DP")
        if self.noise_multiplier > 0 and self.target_epsilon > 0:
            bad("target_epsilon", "give noise-multiplier or target-epsilon, not both")
        if self.als_passes < 0:
            bad("als_passes", "must be >= 0 (0: the item counts only, private MostPop)")
        for key in ("als_cap", "als_pass_cap"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        for key in ("als_clip", "als_alpha"):
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        for key in ("als_reg", "als_user_reg", "als_noise_multiplier", "als_target_epsilon"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        if not 0 <= self.als_head <= 1:
            bad("als_head", "must be in [0, 1] (0: nothing trained, items ranked by their noisy counts)")
        if self.privacy_unit and not self.epsilon > 0:
            bad("privacy_unit", "needs --epsilon > 0, the target the mechanism is chosen for")
        if self.epsilon > 0 and not self.privacy_unit:
            bad("epsilon", "needs --privacy user-level or interaction-level (the unit the epsilon is in)")
        if self.privacy_unit and (self.dp or self.user_level or self.als_private):
            bad("privacy_unit", "chooses the mechanism itself: give --privacy/--epsilon, or a mechanism's own "
                "target epsilon or noise, not both")
        if self.als_noise_multiplier > 0 and self.als_target_epsilon > 0:
            bad("als_target_epsilon", "give als-noise-multiplier or als-target-epsilon, not both")
        if not self.als and (self.als_noise_multiplier > 0 or self.als_target_epsilon > 0):
            bad("als", "als-noise-multiplier/als-target-epsilon given but als is off")
        if self.als:
            if self.model != "mf":
                bad("model", "ALS trains matrix factorisation: use model='mf' with als")
            for key, off in (("dp", "noise-multiplier/target-epsilon"), ("user_level", "user-dp"),
                             ("secure_aggregation", "secure-aggregation"), ("prior_noise", "prior-noise"),
                             ("budget_epsilon", "budget-epsilon")):
                if getattr(self, key):
                    bad("als", f"ALS is its own user-level mechanism: leave {off} off")
            if self.fraction_train < 1 or self.user_sample_rate < 1:
                bad("als", "ALS's accounting has every user in every pass: leave fraction-train and "
                    "user-sample-rate at 1")
            if self.resume:
                bad("resume", "ALS runs are a few rounds and are not resumed")

    @property
    def exposure_targets(self) -> tuple[int, ...]:
        """The items of ``exposure_items``."""
        return tuple(int(x) for x in self.exposure_items.split(",") if x.strip())

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
    def robust_aggregation(self) -> bool:
        """Whether one of Flower's robust strategies aggregates the nodes' updates."""
        return self.aggregation not in ("fedavg", "itemwise")

    @property
    def local(self) -> LocalConfig:
        from fedrec.engine.cohort import LocalConfig

        return LocalConfig(
            user_lr=self.user_lr,
            user_steps=self.user_steps,
            item_steps=self.item_steps,
            negatives=self.negatives,
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            interaction_cap=self.interaction_cap,
            user_l2=self.user_l2,
            update_clip=self.user_clip if self.user_dp in ("client",) else 0.0,
            row_norm=self.row_norm,
            max_rows=self.max_rows,
        )

    @property
    def steps_per_round(self) -> int:
        from fedrec.engine.cohort import steps_per_round

        return steps_per_round(self.local)

    def planned_steps(self) -> int:
        """DP-SGD steps of a user who takes part in every round."""
        return self.num_server_rounds * self.steps_per_round

    def resolved(self) -> "FedConfig":
        """Calibrate ``noise_multiplier`` from ``target_epsilon`` (Opacus RDP accountant)
        for a user taking part in every planned round (and the other units' noise from
        theirs); with ``als``, the rounds are the passes' (``als-passes + 1``); returns a
        new config."""
        out = self
        if self.target_epsilon > 0:
            sigma = _calibrated("target_epsilon", self.target_epsilon,
                                target_epsilon=self.target_epsilon,
                                delta=self.delta,
                                sample_rate=self.sample_rate,
                                steps=self.planned_steps(),
                                extra=self.prior)
            out = dataclasses.replace(out, noise_multiplier=sigma, target_epsilon=0.0)
        if self.user_target_epsilon > 0:
            sigma = _calibrated("user_target_epsilon", self.user_target_epsilon,
                                target_epsilon=self.user_target_epsilon,
                                delta=self.delta,
                                sample_rate=self.user_sample_rate,
                                steps=self.num_server_rounds,
                                extra=self.prior)
            out = dataclasses.replace(out, user_noise_multiplier=sigma, user_target_epsilon=0.0)
        if self.als:  # the counts, then one round per pass, each pass evaluated (the best on validation kept)
            out = dataclasses.replace(out, num_server_rounds=self.als_passes + 1,
                                      eval_every=1 if self.eval_every else 0, patience=0)
        if self.als_target_epsilon > 0 and self.als_unit == "user-level":
            sigma = _calibrated("als_target_epsilon", self.als_target_epsilon, target_epsilon=self.als_target_epsilon,
                                delta=self.delta, sample_rate=1.0, steps=self.als_passes + 1)
            out = dataclasses.replace(out, als_noise_multiplier=sigma, als_target_epsilon=0.0)
        elif self.als_target_epsilon > 0:
            from fedrec.privacy.mechanisms import PrivateALS

            def eps(z: float) -> float:
                return PrivateALS(z, self.als_cap, self.als_pass_cap, self.als_clip, self.als_passes,
                                  self.delta).interaction_epsilon()

            lo, hi = 1e-2, 1.0
            while eps(hi) > self.als_target_epsilon:
                lo, hi = hi, hi * 2
            while hi - lo > 1e-4 * hi:
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if eps(mid) > self.als_target_epsilon else (lo, mid)
            out = dataclasses.replace(out, als_noise_multiplier=hi, als_target_epsilon=0.0)
        return out

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


def _calibrated(key: str, value: float, **kw) -> float:
    """Opacus's noise calibration; its errors name the config key and value."""
    from fedrec.privacy.accounting import calibrate_noise

    try:
        return calibrate_noise(**kw)
    except (ValueError, ArithmeticError) as e:
        why = str(e).strip() or type(e).__name__
        raise ConfigError(run_key(key), value, f"cannot be reached over {kw.get('steps')} steps at sample "
                          f"rate {kw.get('sample_rate')} and delta {kw.get('delta')}: {why}") from None


_FIELDS = {f.name: f for f in fields(FedConfig)}


def options() -> list:
    """The config's fields with their metadata (default, section, help, choices,
    flag), without building a config (no model is loaded: ``--help`` stays fast)."""
    return list(fields(FedConfig))


def __getattr__(name: str):
    if name == "DEFAULTS":  # built on first use: validating a config loads the model's class
        global DEFAULTS
        DEFAULTS = FedConfig()
        return DEFAULTS
    raise AttributeError(name)
