"""fedrec ClientApp: one Flower node hosts one user (or a cohort of users).

Handlers are thin: read the config, call :mod:`fedrec.node` (pure functions),
reply.  Users' embeddings and privacy accounting (:class:`fedrec.device.LocalState`)
are kept on the node — in files under ``state-dir`` (so they survive a SuperNode
restart and a server resume) or in ``context.state`` — and never appear in a reply.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec import node

__all__ = ["app", "make_client_app", "stored_state", "array_record", "STATE_KEY"]

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


def make_client_app(run_config: dict | None = None) -> ClientApp:
    """A ClientApp; ``run_config`` overrides Flower's (``run_simulation`` passes none)."""
    client = ClientApp()

    def _setup(context: Context, msg: Message):
        config = msg.content["config"]
        mechanism = {k.split("/", 1)[1]: v for k, v in config.items() if k.startswith("mechanism/")}
        cfg, fed, partition = node.setup(run_config if run_config is not None else context.run_config,
                                         context.node_config, mechanism)
        return cfg, fed, partition, node.state_dir(cfg, partition, context.node_config)

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        cfg, fed, partition, directory = _setup(context, msg)
        server_round = int(msg.content["config"]["server-round"])
        node.maybe_fail(cfg, partition, server_round)  # simulated dropouts (dropout-rate)
        # the state as of the previous round (a resumed server repeats rounds)
        state = node.load_state(stored_state(context), fed, partition, cfg, directory=directory,
                                at_most_round=server_round - 1)
        update, metrics, state = node.train_round(
            cfg, fed, partition, state,
            global_params={k: v.numpy() for k, v in msg.content["arrays"].items()},
            server_round=server_round,
        )
        kept = node.save_state(state, directory=directory, server_round=server_round)
        if kept is not None:
            context.state[STATE_KEY] = array_record(kept)
        content = RecordDict({"arrays": array_record(update), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg, fed, partition, directory = _setup(context, msg)
        server_round = int(msg.content["config"]["server-round"])
        state = node.load_state(stored_state(context), fed, partition, cfg, directory=directory, at_most_round=server_round)
        metrics = node.evaluate_round(
            cfg, fed, partition, state,
            global_params={k: v.numpy() for k, v in msg.content["arrays"].items()},
        )
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return client


app = make_client_app()
