"""fedrec ServerApp: build the strategy, run the rounds, log, checkpoint, report."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.config import FedConfig
from fedrec_app.server.run import run_server

__all__ = ["app", "make_server_app"]


def make_server_app(run_config: dict | None = None, results: list | None = None, *,
                    plan=None) -> ServerApp:
    """A ServerApp; ``run_config`` overrides Flower's; the run summary is appended
    to ``results`` when given; ``plan``: the federation plan the server reads instead
    of the dataset (:func:`fedrec.federation.write_plan`)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        rc = run_config if run_config is not None else dict(context.run_config)
        summary = run_server(grid, FedConfig.from_run_config(rc).resolved(), context, plan=plan)
        if results is not None:
            results.append(summary)

    return server


app = make_server_app()
