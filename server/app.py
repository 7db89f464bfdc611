"""fedrec ServerApp: build the strategy, run the rounds, log, checkpoint, report."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved
from fedrec_app.server.run import run_server

__all__ = ["app", "make_server_app"]


def make_server_app(run_config: dict | None = None, results: list | None = None, *,
                    plan=None) -> ServerApp:
    """A ServerApp; ``run_config`` overrides Flower's; the run summary is appended
    to ``results`` when given; ``plan``: the federation plan the server reads instead
    of the dataset (:func:`fedrec.federated.federation.write_plan`)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        rc = run_config if run_config is not None else dict(context.run_config)
        cfg = FedConfig.from_run_config(rc)
        if cfg.privacy_unit:  # never a run that names a privacy unit and applies no mechanism
            raise ValueError("privacy-unit: the mechanism for a unit and an epsilon is chosen by `fedrec simulate` or "
                             "`fedrec deploy` (they pass its settings); with `flwr run`, give the mechanism's own "
                             "settings (fedrec/presets/presets.toml)")
        summary = run_server(grid, resolved(cfg), context, plan=plan)
        if results is not None:
            results.append(summary)

    return server


app = make_server_app()
