"""`fedrec sweep stream`: a federated recommender that lives in time.

The interactions are cut at time points ``c_0 < c_1 < ... < c_W`` (``c_0`` after a
warm-up share of the interactions, then windows of equal interaction counts).  Stage
``w`` is one federated run through Flower on the split ``window:c_w:c_(w+1)``
(:func:`fedrec.data.time_window`): every device trains only on its interactions
before ``c_w``, and then ranks its next interactions, those in ``[c_w, c_(w+1))``,
before it learns them (prequential evaluation, full ranking).  Each stage starts
from the previous stage's global parameters and server-optimiser state (config
``warm-start``) and its users' local state (carried by user; a user who first
appears enters the first stage that starts after its first interaction, with a
fresh local state).  Items are in the catalogue throughout; an item's row learns
from its first training interaction on.

Two models share stage 0: ``continuing`` trains ``rounds`` more rounds in every
stage; ``frozen`` keeps stage 0's global parameters (server optimiser ``none``)
while the devices keep fitting their own local state on their growing history.
Two non-private references are computed centrally on the same splits and users
(labelled as such): MostPop of the previous window, and MostPop of all history.

Drift, per window: the Jensen-Shannon divergence between consecutive windows'
item popularity, exactly (a centralized reference) and from DP releases
(:func:`fedrec.privacy.prior.noisy_popularity` of each window: each user's window
vector has norm 1, Gaussian noise ``drift_noise``; one release per window, composed
over the windows and, in the user-level runs, with the training); and the relative
change of the global item tables between consecutive stages (post-processing of
what the server holds).

Privacy over time: the user-level runs calibrate the noise for epsilon 8 over every
round of every stage (and the prior, released once), so the epsilon reported after
stage ``w`` is what a user present since the start has spent by then; one who
joined later has spent less (fewer rounds).  The ``user-level-window`` runs give
every window its own budget instead (epsilon 8 for the warm-up's rounds and the
prior, epsilon 8 for each later window's rounds, each calibrated alone): the
noise per window is smaller, and the epsilon of a user present since the start
grows with the windows, composed over stages of different noise
(:meth:`fedrec.privacy.mechanisms.UserLevel.epsilon`'s segments, carried from
stage to stage in the checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved

__all__ = ["stream_cutoffs", "carry_local_state", "js_divergence", "genre_profile", "run_stream", "STREAM_PRIVACY",
           "STREAM_SETTINGS", "window_noise"]

#: The privacy settings of a stream: non-private, and user-level DP-FedAvg (the study's
#: preset) at this epsilon over the whole stream (``user-level``) or in each window
#: (``user-level-window``: a budget per window; not in the default set).
STREAM_PRIVACY = ("non-private", "user-level")
STREAM_SETTINGS = STREAM_PRIVACY + ("user-level-window",)
STREAM_EPSILON = 8.0


def stream_cutoffs(timestamps: np.ndarray, *, windows: int, warmup: float) -> np.ndarray:
    """``windows + 1`` increasing cut points (unix seconds): the first after a ``warmup``
    share of the interactions, then windows of equal interaction counts, the last
    after the last interaction."""
    if windows < 1:
        raise ValueError(f"--windows {windows}: must be >= 1")
    if not 0 < warmup < 1:
        raise ValueError(f"--warmup {warmup:g}: must be in (0, 1)")
    ts = np.sort(np.asarray(timestamps, dtype=np.int64))
    qs = warmup + (1 - warmup) * np.arange(windows) / windows
    cuts = [int(ts[min(len(ts) - 1, int(q * len(ts)))]) for q in qs] + [int(ts[-1]) + 1]
    if np.any(np.diff(cuts) <= 0):
        raise ValueError(f"--windows {windows}: after a {warmup:g} warm-up they need more distinct timestamps "
                         f"(cut points {cuts}); use fewer windows")
    return np.asarray(cuts, dtype=np.int64)


def carry_local_state(previous: Path | None, fed, cfg: FedConfig, directory: Path, *, server_round: int = 0) -> dict:
    """Write each node's starting local state for the stage ``fed`` into ``directory``
    (``node-P``, as after ``server_round``, the previous stage's last): a returning user's state as the previous stage's
    nodes left it in ``previous`` (every ``node-*`` there), a new user's fresh.
    Returns ``{"returning": n, "new": m}``."""
    from fedrec.device import LocalState, load_local_state, save_local_state
    from fedrec.federated.federation import init_local_state

    import shutil

    shutil.rmtree(directory, ignore_errors=True)  # what an interrupted attempt left
    old: dict[int, tuple] = {}
    if previous is not None:
        for node in sorted(Path(previous).glob("node-*")):
            found = load_local_state(node)
            if found is None:
                continue
            st = found[0]
            for j, u in enumerate(st.users.tolist()):
                old[u] = (st, j)
    returning = new = 0
    for p, users in enumerate(fed.cohorts):
        users = np.asarray(users, dtype=np.int64)
        local = init_local_state(users, cfg, fed)
        dp_steps = np.zeros(len(users), dtype=np.int64)
        rounds = np.zeros(len(users), dtype=np.int64)
        for j, u in enumerate(users.tolist()):
            if u in old:
                st, k = old[u]
                for name in local:
                    local[name][j] = st.local[name][k]
                dp_steps[j], rounds[j] = st.dp_steps[k], st.rounds[k]
                returning += 1
            else:
                new += 1
        save_local_state(Path(directory) / f"node-{p}", LocalState(users, local, dp_steps, rounds),
                         server_round=server_round)
    return {"returning": returning, "new": new}


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two non-negative weight vectors
    (normalised here; negative entries, e.g. of a noisy release, count as 0)."""
    p = np.maximum(np.asarray(p, dtype=np.float64), 0.0)
    q = np.maximum(np.asarray(q, dtype=np.float64), 0.0)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def genre_profile(window: sp.csr_matrix, genres: np.ndarray, *, noise: float = 0.0) -> np.ndarray:
    """Sum over users of each user's genre histogram in ``window`` scaled to L2 norm 1
    (user-level sensitivity 1), plus Gaussian noise of std ``noise`` per genre from secret
    randomness (0: the exact statistic, a centralized reference)."""
    h = np.asarray((sp.csr_matrix(window, dtype=np.float64) @ np.asarray(genres, dtype=np.float64)))
    norms = np.linalg.norm(h, axis=1)
    total = (h[norms > 0] / norms[norms > 0, None]).sum(axis=0)
    if noise > 0:
        from fedrec.privacy.randomness import DPRandomness

        total = total + DPRandomness.secret().numpy().normal(0.0, noise, size=total.shape)
    return total


def _window_matrix(ds, start: int, end: int) -> sp.csr_matrix:
    inside = (ds.timestamp >= start) & (ds.timestamp < end)
    m = sp.csr_matrix((np.ones(int(inside.sum())), (ds.user[inside], ds.item[inside])), shape=(ds.n_users, ds.n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _mostpop(split, popularity: np.ndarray, ties: str) -> dict:
    from fedrec.metrics import evaluate

    scores = np.asarray(popularity, dtype=np.float64)
    res = evaluate(lambda u: np.broadcast_to(scores, (len(u), len(scores))), split, stage="test", ties=ties,
                   sampled_negatives=0)
    return {"ndcg@10": res.metrics.get("ndcg@10"), "hr@10": res.metrics.get("hr@10")}


def _item_tables(params: dict, n_items: int) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float64).reshape(n_items, -1)
                           for k, v in sorted(params.items()) if v.shape and v.shape[0] == n_items], axis=1)


def _checkpoint_params(run_dir: Path) -> dict:
    with np.load(Path(run_dir) / "checkpoint" / "checkpoint.npz") as z:
        return {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("param/")}


def window_noise(base: FedConfig, rounds: int, *, first: bool) -> float:
    """The user-level noise multiplier that spends :data:`STREAM_EPSILON` on one window's
    ``rounds`` (the first window's with the popularity prior, released once, composed)."""
    cfg = replace(base, user_noise_multiplier=0.0, user_target_epsilon=STREAM_EPSILON, num_server_rounds=rounds,
                  prior_noise=base.prior_noise if first else 0.0)
    return float(resolved(cfg).user_noise_multiplier)


def _stage_config(base: FedConfig, cuts: np.ndarray, w: int, *, last_round: int, out: Path, warm: Path | None,
                  frozen: bool) -> FedConfig:
    """Stage ``w``'s run: rounds count on from the previous stage's (so sampling, noise
    seeds and the accountant see one sequence of rounds), evaluated at its last round."""
    return replace(base, split=f"window:{int(cuts[w])}:{int(cuts[w + 1])}", num_server_rounds=last_round,
                   eval_every=last_round, patience=0, out=str(out), state_dir=str(out / "client-state"),
                   warm_start=str(warm / "checkpoint") if warm is not None else "",
                   server_opt="none" if frozen else base.server_opt)


def run_stream(out, *, data: str, windows: int = 6, warmup: float = 0.5, warmup_rounds: int = 150,
               rounds: int = 20, privacy=STREAM_PRIVACY, seeds: int = 1, drift_noise: float = 5.0,
               command: str = "", say=print) -> Path:
    """Run (or resume: finished stages are kept) the stream study; write ``results.csv``,
    ``results.json``, ``stream.png`` and ``report.md`` in ``out``.  Returns the report."""
    from fedrec.data import load_dataset
    from fedrec.federated.federation import load_federation
    from fedrec.flower_compat import reuse_ray
    from fedrec.privacy.accounting import epsilon as epsilon_of
    from fedrec.privacy.mechanisms import UserLevel
    from fedrec.privacy.prior import noisy_popularity
    from fedrec_app.simulations.simulate import simulate
    from fedrec_app.simulations.studies.study import USER_PRESET, _users_per_node

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in privacy:
        if p not in STREAM_SETTINGS:
            raise ValueError(f"unknown privacy setting {p!r}; choose from {', '.join(STREAM_SETTINGS)}")
    probe = FedConfig(data=data)
    ds = load_dataset(data, format=probe.format, min_rating=probe.min_rating or None)
    cuts = stream_cutoffs(ds.timestamp, windows=windows, warmup=warmup)
    n_stages = len(cuts) - 1
    total_rounds = warmup_rounds + (n_stages - 1) * rounds
    last = load_federation(FedConfig(data=data, split=f"window:{int(cuts[-2])}:{int(cuts[-1])}", patience=0))
    upn = _users_per_node(last.n_users)
    say(f"stream on {data}: {n_stages} windows after a {warmup:g} warm-up, {warmup_rounds} + {rounds}/window rounds "
        f"({total_rounds} in all), privacy {', '.join(privacy)}, {seeds} seed(s)")

    # drift: exact and DP popularity of each window (the window before c_0 has the warm-up's length in interactions)
    ts_sorted = np.sort(ds.timestamp)
    before = int(ts_sorted[int(max(0.0, warmup - (1 - warmup) / windows) * len(ts_sorted))])  # one window's share
    windows_ = [(before, int(cuts[0]))] + [(int(cuts[w]), int(cuts[w + 1])) for w in range(n_stages)]
    mats = [_window_matrix(ds, a, b) for a, b in windows_]
    exact = [np.asarray(m.sum(axis=0)).ravel() for m in mats]
    noisy = [noisy_popularity(m, noise=drift_noise) for m in mats]  # secret noise: one release each
    genres = ds.item_genres if ds.item_genres is not None and ds.item_genres.shape[1] > 1 else None
    if genres is not None:  # the same shift over genres: a coarse histogram that the noise does not swamp
        genre_exact = [genre_profile(m, genres) for m in mats]
        genre_noisy = [genre_profile(m, genres, noise=drift_noise) for m in mats]
    n_releases = len(mats) * (2 if genres is not None else 1)
    drift_release = ((float(drift_noise), 1.0, n_releases),)
    drift_eps = epsilon_of(noise_multiplier=drift_noise, sample_rate=1.0, steps=n_releases, delta=probe.delta)

    rows: list[dict] = []
    with reuse_ray():
        for priv in privacy:
            for seed in range(seeds):
                base = FedConfig(data=data, users_per_node=upn, seed=seed, patience=0)
                if priv == "user-level":
                    base = replace(base, **USER_PRESET, user_target_epsilon=STREAM_EPSILON)
                    z = resolved(replace(base, num_server_rounds=total_rounds))
                    base = replace(base, user_noise_multiplier=z.user_noise_multiplier, user_target_epsilon=0.0)
                elif priv == "user-level-window":
                    base = replace(base, **USER_PRESET, user_noise_multiplier=1.0)  # each stage's noise: below
                dirs = {"continuing": [], "frozen": []}
                segments: list = []  # (noise, rate, rounds) of the stages so far (user-level-window)
                for w in range(n_stages):
                    if priv == "user-level-window":
                        z_w = window_noise(base, warmup_rounds if w == 0 else rounds, first=w == 0)
                        base = replace(base, user_noise_multiplier=z_w)
                    fed = load_federation(replace(base, split=f"window:{int(cuts[w])}:{int(cuts[w + 1])}"))
                    for model in ("continuing", "frozen"):
                        if model == "frozen" and w == 0:
                            dirs["frozen"].append(dirs["continuing"][0])
                            rows.append({**rows[-1], "model": "frozen"})
                            continue
                        run_dir = out / "runs" / f"{priv}-seed{seed}" / f"{model}-stage{w}"
                        prev = dirs[model][-1] if w else None
                        cum = warmup_rounds + w * rounds
                        cfg = _stage_config(base, cuts, w, last_round=cum, out=run_dir, warm=prev,
                                            frozen=model == "frozen")
                        done = run_dir / "metrics.json"
                        if done.exists() and json.loads((run_dir / "stream-stage.json").read_text()).get("cfg") == \
                                cfg.to_run_config():
                            summary = json.loads(done.read_text())
                            entered = json.loads((run_dir / "stream-stage.json").read_text())["users"]
                            say(f"[{priv} seed {seed}] {model} stage {w}: kept")
                        else:
                            entered = carry_local_state(prev / "client-state" if prev else None, fed, cfg,
                                                        run_dir / "client-state", server_round=cum - (
                                                            rounds if w else warmup_rounds))
                            say(f"[{priv} seed {seed}] {model} stage {w}: {fed.n_users} users "
                                f"({entered['new']} new), rounds to {cum}")
                            simulate(cfg, overwrite=True)
                            summary = json.loads(done.read_text())
                            (run_dir / "stream-stage.json").write_text(json.dumps(
                                {"cfg": cfg.to_run_config(), "users": entered}, default=str))
                        dirs[model].append(run_dir)
                        row = {"privacy": priv, "seed": seed, "model": model, "stage": w,
                               "start": int(cuts[w]), "end": int(cuts[w + 1]), "rounds": cum,
                               "users": fed.n_users, "new_users": entered["new"],
                               "test_users": int((np.diff(fed.split.test.indptr) > 0).sum()),
                               "ndcg@10": summary.get("test", {}).get("ndcg@10"),
                               "hr@10": summary.get("test", {}).get("hr@10")}
                        if priv in ("user-level", "user-level-window"):
                            mech = UserLevel.from_config(base)
                            earlier = tuple(tuple(x) for x in segments)
                            before = sum(x[2] for x in earlier)
                            row["epsilon"] = mech.epsilon(cum, earlier)
                            row["noise_multiplier"] = mech.noise_multiplier
                            row["epsilon_with_drift"] = epsilon_of(
                                noise_multiplier=mech.noise_multiplier, sample_rate=mech.sample_rate,
                                steps=cum - before,
                                delta=mech.delta, extra=(((mech.prior_noise, 1.0, 1),) if mech.prior_noise > 0 else ())
                                + earlier + drift_release)
                        if w:
                            a = _item_tables(_checkpoint_params(dirs[model][-2]), ds.n_items)
                            b = _item_tables(_checkpoint_params(run_dir), ds.n_items)
                            row["table_drift"] = float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))
                        rows.append(row)
                    if priv == "user-level-window":  # this stage's rounds, at its noise, for the next stages
                        segments = UserLevel.from_config(base).segments(warmup_rounds + w * rounds,
                                                                        tuple(tuple(x) for x in segments))
    # references and drift per stage (the same splits and users as the federated rows)
    refs = []
    for w in range(n_stages):
        fed = load_federation(FedConfig(data=data, split=f"window:{int(cuts[w])}:{int(cuts[w + 1])}", patience=0))
        hist = np.asarray(fed.split.train.sum(axis=0)).ravel()
        refs.append({"stage": w, "start": int(cuts[w]), "end": int(cuts[w + 1]),
                     "mostpop_window": _mostpop(fed.split, exact[w], probe.ties)["ndcg@10"],
                     "mostpop_history": _mostpop(fed.split, hist, probe.ties)["ndcg@10"],
                     "js_exact": js_divergence(exact[w], exact[w + 1]),
                     "js_dp": js_divergence(noisy[w], noisy[w + 1]),
                     "new_items": int(((exact[w + 1] > 0) & (hist == 0)).sum()),
                     "genre_js_exact": js_divergence(genre_exact[w], genre_exact[w + 1])
                     if genres is not None else None,
                     "genre_js_dp": js_divergence(genre_noisy[w], genre_noisy[w + 1]) if genres is not None else None})
    doc = {"data": data, "cutoffs": cuts.tolist(), "windows": n_stages, "warmup": warmup,
           "warmup_rounds": warmup_rounds, "rounds_per_window": rounds, "seeds": seeds,
           "drift": {"noise": drift_noise, "releases": n_releases, "epsilon_user_level": drift_eps,
                     "delta": probe.delta},
           "rows": rows, "references": refs, "seconds": time.perf_counter() - t0, "command": command}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=float))
    _write_csv(out / "results.csv", rows, refs)
    plot_stream(doc, out / "stream.png")
    return write_stream_report(out, doc)


def _write_csv(path: Path, rows: list[dict], refs: list[dict]) -> None:
    import csv

    by_stage = {r["stage"]: r for r in refs}
    cols = ["privacy", "seed", "model", "stage", "start", "end", "rounds", "users", "new_users", "test_users",
            "ndcg@10", "hr@10", "table_drift", "epsilon", "epsilon_with_drift", "mostpop_window", "mostpop_history",
            "js_exact", "js_dp", "genre_js_exact", "genre_js_dp", "new_items"]
    with path.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({**by_stage[r["stage"]], **r})


def _series(doc: dict, priv: str, model: str, key: str):
    from fedrec_app.simulations.report.plots import mean_sd

    stages = range(doc["windows"])
    return [mean_sd([r.get(key) for r in doc["rows"] if (r["privacy"], r["model"], r["stage"]) == (priv, model, w)])
            for w in stages]


def plot_stream(doc: dict, path: Path) -> Path:
    import datetime as dt

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(range(doc["windows"]))
    labels = [dt.datetime.fromtimestamp(doc["cutoffs"][w], dt.timezone.utc).strftime("%Y-%m-%d") for w in stages]
    privs = list(dict.fromkeys(r["privacy"] for r in doc["rows"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    tags = {"non-private": "non-private", "user-level": f"user-level eps {STREAM_EPSILON:g} over the stream",
            "user-level-window": f"user-level eps {STREAM_EPSILON:g} per window"}
    for priv, style in zip(privs, ("-", "--", "-.")):
        tag = tags[priv]
        for model, color in (("continuing", "C0"), ("frozen", "C1")):
            s = _series(doc, priv, model, "ndcg@10")
            ax.errorbar(stages, [m for m, _ in s], yerr=[sd for _, sd in s], fmt=style, marker="o", color=color,
                        capsize=2, label=f"{model}, {tag}")
    refs = doc["references"]
    ax.plot(stages, [r["mostpop_window"] for r in refs], ":", marker="s", color="C2",
            label="MostPop of the previous window (central reference)")
    ax.plot(stages, [r["mostpop_history"] for r in refs], ":", marker="^", color="C7",
            label="MostPop of all history (central reference)")
    ax.set_xticks(stages, labels, rotation=30, fontsize=7)
    ax.set_ylabel("prequential test NDCG@10 (full ranking)")
    ax.set_title("ranking the window's interactions before learning them", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[1]
    ax.plot(stages, [r["js_exact"] for r in refs], marker="o", label="popularity JS, exact (central)")
    ax.plot(stages, [r["js_dp"] for r in refs], marker="o",
            label=f"popularity JS, DP releases (eps {doc['drift']['epsilon_user_level']:.2f} user-level)")
    if any(r.get("genre_js_exact") is not None for r in refs):
        ax.plot(stages, [r["genre_js_exact"] for r in refs], marker="s", color="C4", label="genre JS, exact (central)")
        ax.plot(stages, [r["genre_js_dp"] for r in refs], marker="s", color="C5", label="genre JS, DP releases")
    for priv, style in zip(privs, ("-", "--", "-.")):
        s = _series(doc, priv, "continuing", "table_drift")
        ax.plot(stages, [m for m, _ in s], style, marker="x", color="C3", label=f"item-table change, {priv}")
    ax.set_yscale("log")
    ax.set_xticks(stages, labels, rotation=30, fontsize=7)
    ax.set_title("drift between consecutive windows", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[2]
    for priv, style in (("user-level", "-"), ("user-level-window", "-.")):
        if priv not in privs:
            continue
        s = _series(doc, priv, "continuing", "epsilon")
        s2 = _series(doc, priv, "continuing", "epsilon_with_drift")
        ax.plot(stages, [m for m, _ in s], style, marker="o", label=f"training + prior ({tags[priv]})")
        ax.plot(stages, [m for m, _ in s2], style, marker="x", label=f"+ drift releases ({tags[priv]})")
        ax.set_ylabel("user-level epsilon spent (a user present since the start)")
        ax.legend(fontsize=6)
    ax.set_xticks(stages, labels, rotation=30, fontsize=7)
    ax.set_title("privacy over time", fontsize=9)
    fig.suptitle(f"Streaming federated MF on {doc['data']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(m, sd=None):
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{m:.4f}" if sd is None else f"{m:.4f} ± {sd:.4f}"


def stream_table(doc: dict) -> list[str]:
    import datetime as dt

    privs = list(dict.fromkeys(r["privacy"] for r in doc["rows"]))
    head = ["window (from)", "users known (new)", "test users", "new items"]
    for priv in privs:
        head += [f"continuing, {priv}", f"frozen, {priv}"]
    genre = any(r.get("genre_js_exact") is not None for r in doc["references"])
    head += ["MostPop prev. window", "MostPop history", "item JS exact", "item JS DP"]
    head += ["genre JS exact", "genre JS DP"] if genre else []
    head += ["table change"]
    eps_privs = [p for p in ("user-level", "user-level-window") if p in privs]
    head += [f"eps spent, {p}" for p in eps_privs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ref in doc["references"]:
        w = ref["stage"]
        first = next(r for r in doc["rows"] if r["stage"] == w)
        cells = [dt.datetime.fromtimestamp(ref["start"], dt.timezone.utc).strftime("%Y-%m-%d"),
                 f"{first['users']} ({first['new_users']})", str(first["test_users"]), str(ref["new_items"])]
        for priv in privs:
            for model in ("continuing", "frozen"):
                m, sd = _series(doc, priv, model, "ndcg@10")[w]
                cells.append(_fmt(m, sd if doc["seeds"] > 1 else None))  # one seed: no spread
        drift = _series(doc, privs[0], "continuing", "table_drift")[w][0]
        cells += [_fmt(ref["mostpop_window"]), _fmt(ref["mostpop_history"]), _fmt(ref["js_exact"]), _fmt(ref["js_dp"])]
        cells += [_fmt(ref.get("genre_js_exact")), _fmt(ref.get("genre_js_dp"))] if genre else []
        cells += [_fmt(drift)]
        for p in eps_privs:
            e = _series(doc, p, "continuing", "epsilon_with_drift")[w][0]
            cells.append("–" if math.isnan(e) else f"{e:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_stream_report(out: Path, doc: dict) -> Path:
    lines = [f"# Streaming federated MF on {doc['data']}", "",
             f"{doc['windows']} windows of equal interaction counts after a {doc['warmup']:g} warm-up; "
             f"{doc['warmup_rounds']} rounds on the warm-up, then {doc['rounds_per_window']} per window; "
             f"{doc['seeds']} seed(s) (mean ± sd); {doc['seconds']:.0f} s.", "",
             "Prequential test NDCG@10 (full ranking): each device ranks the window's interactions with the model "
             "trained on everything before the window, then learns them. `continuing` trains in every window; "
             "`frozen` keeps the warm-up's global parameters (devices still fit their own state). MostPop columns are "
             "centralized, non-private references on the same splits and users. JS: Jensen-Shannon divergence "
             "(base 2) of item popularity (and of genre popularity) between a window and the one before; the DP "
             f"columns use one Gaussian release per window and statistic (noise {doc['drift']['noise']:g}, each user's "
             "window vector of norm 1): "
             f"user-level epsilon {doc['drift']['epsilon_user_level']:.2f} for all {doc['drift']['releases']} "
             f"releases (delta {doc['drift']['delta']:g}). Table change: relative Frobenius change of the item tables "
             "over the window's training. User-level epsilon spent: the training (`user-level`: calibrated for "
             f"{STREAM_EPSILON:g} over the whole stream; `user-level-window`: {STREAM_EPSILON:g} for each window's "
             "rounds, the warm-up's with the prior, composed over windows of different noise), the prior and the "
             "drift releases composed, for a user present since the start.", ""]
    lines += stream_table(doc)
    lines += ["", "![stream](stream.png)", ""]
    if doc.get("command"):
        lines += [f"Command: `{doc['command']}`", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
