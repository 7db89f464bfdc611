"""fedrec ClientApp: one Flower node hosts one user (or a cohort of users).

Handlers are thin: read the config, call :mod:`fedrec.federated.node` (pure functions),
reply.  With ``secure-aggregation`` the server drives Flower's SecAgg+ workflow,
which speaks Flower's legacy encoding (``fitins``/``fitres``): the same handlers
answer it, and Flower's ``secaggplus_mod`` masks the reply (:func:`secure_aggregation_mod`).
Users' embeddings and privacy accounting (:class:`fedrec.federated.state.LocalState`)
are kept on the node — in files under ``state-dir`` (so they survive a SuperNode
restart and a server resume) or in ``context.state`` — and never appear in a reply.
"""

from __future__ import annotations

import uuid

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.federated import protocol

__all__ = ["app", "make_client_app", "SharedClientApp", "stored_state", "array_record", "secure_aggregation_mod",
           "STATE_KEY"]

SECAGG_CONFIGS = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS

STATE_KEY = "fedrec-users"  # the users' local state in Flower's context state (no state-dir)


def array_record(arrays: dict) -> ArrayRecord:
    """A Flower ArrayRecord of a dict of numpy arrays (a reply's update, or the users' kept state)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def stored_state(context: Context) -> dict | None:
    """The users' state kept in Flower's context state, as numpy arrays (None: none kept)."""
    if STATE_KEY not in context.state:
        return None
    a = context.state[STATE_KEY]
    return {k: a[k].numpy() for k in a.keys()}


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; every other
    message goes straight to the handlers."""
    if msg.metadata.message_type == MessageType.TRAIN and SECAGG_CONFIGS in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _read(msg: Message) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and the global parameters of a message, in either encoding: fedrec's
    (``config``, ``arrays``) or Flower's legacy one (``fitins.*``/``evaluateins.*``, sent by
    the SecAgg+ workflow; the parameters' names come in the config's ``param-keys``)."""
    legacy = next((p for p in ("fitins", "evaluateins") if f"{p}.config" in msg.content.config_records), None)
    if legacy is None:
        return dict(msg.content["config"]), {k: v.numpy() for k, v in msg.content["arrays"].items()}
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    ins = (compat.recorddict_to_fitins(msg.content, keep_input=True) if legacy == "fitins"
           else compat.recorddict_to_evaluateins(msg.content, keep_input=True))
    config = dict(ins.config)
    config[protocol.LEGACY] = True
    return config, dict(zip(str(config[protocol.PARAM_KEYS]).split(","), parameters_to_ndarrays(ins.parameters)))


def _legacy_train_reply(msg: Message, update: dict[str, np.ndarray], metrics: dict, config: dict) -> Message:
    """A train reply in Flower's legacy encoding (what ``secaggplus_mod`` masks): the update
    in float64 (float32 cannot resolve a quantisation step of 2C/Q), lists as bytes."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    arrays = [np.asarray(update[k], dtype=np.float64) for k in update]
    n = int(metrics[protocol.NUM_EXAMPLES])
    if protocol.DDP_SUM in update:  # distributed DP: weight 1 (n = max-weight), so the field's values pass unscaled
        n = int(round(float(config["secagg-max-weight"])))
    # what SecAgg+ would clip: |w * x| > C with w = n / max-weight (Flower clips silently)
    w, clip = n / float(config["secagg-max-weight"]), float(config["secagg-clip"])
    scalars = {k: v for k, v in metrics.items()
               if isinstance(v, (int, float, str, bool)) and k != protocol.NUM_EXAMPLES}
    scalars[protocol.EPSILON] = np.asarray(metrics.get(protocol.EPSILON, []), dtype=np.float64).tobytes()
    scalars["secagg-clipped"] = int(sum(int((np.abs(w * a) > clip).sum()) for a in arrays))
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, scalars)
    return Message(content=compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def _legacy_evaluate_reply(msg: Message, metrics: dict) -> Message:
    from flwr.common import Code, EvaluateRes, Status
    from flwr.compat.common import recorddict_compat as compat

    scalars = {k: (np.asarray(v, dtype=np.int64).tobytes() if isinstance(v, list) else v) for k, v in metrics.items()}
    res = EvaluateRes(Status(Code.OK, ""), 0.0, int(metrics.get("test-count", 0)), scalars)
    return Message(content=compat.evaluateres_to_recorddict(res), reply_to=msg)


#: The ClientApps this process built or received, by key: see :class:`SharedClientApp`.
_SHARED_APPS: dict[str, ClientApp] = {}


class SharedClientApp(ClientApp):
    """A ClientApp that pickles as its recipe (run config, node data), not as its handlers.

    Flower's simulation engine sends the ClientApp with every message (Ray pickles the
    function that returns it into each actor call), and fedrec's handlers are closures,
    so each call carried about 10 KB of pickled code that the driver serialised (0.75 ms
    a node) and the actor rebuilt. Unpickled, it is this process's app for the same key,
    built once: the handlers are the same functions of the same run config (they keep no
    state of their own between messages)."""

    def __init__(self, run_config: dict | None, node_data: str | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._recipe = (uuid.uuid4().hex, run_config, node_data)
        _SHARED_APPS[self._recipe[0]] = self

    def __reduce__(self):
        return _shared_client_app, self._recipe


def _shared_client_app(key: str, run_config: dict | None, node_data: str | None) -> ClientApp:
    """This process's app for ``key`` (a SharedClientApp unpickled), built on first use."""
    app = _SHARED_APPS.get(key)
    if app is None:
        app = make_client_app(run_config, node_data=node_data)
        _SHARED_APPS[key] = _SHARED_APPS.pop(app._recipe[0])
        app._recipe = (key, run_config, node_data)
    return app


def make_client_app(run_config: dict | None = None, *, node_data: str | None = None, malicious=None) -> ClientApp:
    """A ClientApp; ``run_config`` overrides Flower's (the simulation engine, entered by fedrec, passes none).
    ``node_data``: a directory of node files (``node-P.npz``, written by
    :func:`fedrec.federated.federation.write_node_data`) from which node P reads its users' data,
    where its node config names no ``data-file`` (a simulation: as in a deployment, no
    node loads the dataset).

    ``malicious`` (attack studies): an object with ``first_partition`` and
    ``train(run_config, config, global_params, partition) -> (update, metrics)``; the
    nodes from that partition on are its sybils, whose train replies it writes
    (they answer evaluation with nothing)."""
    if malicious is None:  # pickles as a reference (see SharedClientApp)
        client: ClientApp = SharedClientApp(run_config, node_data, mods=[secure_aggregation_mod])
    else:  # an attack's object travels with every call, as Flower pickles it
        client = ClientApp(mods=[secure_aggregation_mod])

    def _is_malicious(context: Context) -> bool:
        return malicious is not None and int(context.node_config.get("partition-id", -1)) >= malicious.first_partition

    def _setup(context: Context, config: dict):
        # fedrec.federated.node (torch, Opacus: ~6 s) is imported by the handlers, not with the app:
        # in a deployment every message starts a ClientApp process, and the SecAgg+ stages
        # that never reach a handler (set-up, key sharing, unmasking) do not need it
        from fedrec.federated import node

        mechanism = protocol.mechanism_of(config)
        node_config = dict(context.node_config)
        if node_data and "data-file" not in node_config:
            node_config["data-file"] = f"{node_data}/node-{int(node_config['partition-id'])}.npz"
        cfg, fed, partition = node.setup(run_config if run_config is not None else context.run_config,
                                         node_config, mechanism)
        return cfg, fed, partition, node.state_dir(cfg, partition, node_config)

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        from fedrec.federated import node

        config, global_params = _read(msg)
        if _is_malicious(context):
            update, metrics = malicious.train(run_config if run_config is not None else context.run_config, config,
                                              global_params, int(context.node_config["partition-id"]))
            return Message(content=RecordDict({"arrays": array_record(update), "metrics": MetricRecord(metrics)}),
                           reply_to=msg)
        cfg, fed, partition, directory = _setup(context, config)
        server_round = int(config[protocol.SERVER_ROUND])
        node.maybe_fail(cfg, partition, server_round)  # simulated dropouts (dropout-rate)
        # the state as of the previous round (a resumed server repeats rounds; a private round
        # already answered is answered again with its kept release)
        state = node.state_for_round(stored_state(context), fed, partition, cfg, directory=directory,
                                     server_round=server_round)
        update, metrics, state = node.train_round(cfg, fed, partition, state, global_params=global_params,
                                                  server_round=server_round,
                                                  trained_items=protocol.trained_items_of(config),
                                                  distributed=protocol.distributed_of(config))
        kept = node.save_state(state, directory=directory, server_round=server_round)
        if kept is not None:
            context.state[STATE_KEY] = array_record(kept)
        if config.get(protocol.LEGACY):
            return _legacy_train_reply(msg, update, metrics, config)
        content = RecordDict({"arrays": array_record(update), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        """Federated analytics (the DP popularity prior): the node's own users' contribution;
        the server adds the noise to the sum over nodes.  A readiness query (before round 1)
        is answered once the node has read its data, with nothing in it."""
        from fedrec.federated import node

        config = dict(msg.content["config"])
        if protocol.READY in config:  # the engine's start: the node is up and has read its data
            if not _is_malicious(context):
                _setup(context, config)
            return Message(content=RecordDict({"metrics": MetricRecord({protocol.NUM_EXAMPLES: 0})}), reply_to=msg)
        if _is_malicious(context):  # sybils contribute nothing to the statistics
            return Message(content=RecordDict({"metrics": MetricRecord({protocol.NUM_EXAMPLES: 0})}), reply_to=msg)
        _, fed, partition, _ = _setup(context, config)
        arrays = node.analytics_round(fed, partition, str(config[protocol.ANALYTICS]))
        content = RecordDict({"arrays": array_record(arrays),
                              "metrics": MetricRecord({protocol.NUM_EXAMPLES: int(len(fed.cohorts[partition]))})})
        return Message(content=content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from fedrec.federated import node

        config, global_params = _read(msg)
        if _is_malicious(context):  # sybils have no held-out items: nothing to report
            return Message(content=RecordDict({"metrics": MetricRecord({protocol.NUM_EXAMPLES: 0})}), reply_to=msg)
        cfg, fed, partition, directory = _setup(context, config)
        server_round = int(config[protocol.SERVER_ROUND])
        state = node.load_state(stored_state(context), fed, partition, cfg, directory=directory,
                                at_most_round=server_round)
        metrics = node.evaluate_round(cfg, fed, partition, state, global_params=global_params)
        if config.get(protocol.LEGACY):
            return _legacy_evaluate_reply(msg, metrics)
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return client


app = make_client_app()
