"""``fedrec deploy``: run the fedrec Flower app on Flower's deployment engine, locally.

Starts one ``flower-superlink`` and N ``flower-supernode`` processes on
127.0.0.1 (ports picked free), binds SuperNode ``P`` to cohort ``P`` of the
users through its node config (``partition-id=P num-partitions=N``), submits
the app with ``flwr run APP fedrec-deploy --run-config RUN.toml --stream``,
waits for the run to finish and then stops every process it started, also on
errors, on Ctrl-C and on SIGTERM.

Secure by default:

* TLS: a fresh CA and a server certificate for ``127.0.0.1``/``localhost``
  signed by it (``cryptography``); the SuperLink serves its Control, Fleet and
  Runtime APIs over HTTPS with them; SuperNodes and the ``flwr`` CLI verify it
  with the CA (``--root-certificates`` / ``root-certificates``); each
  SuperNode's local Runtime API (towards its ClientApp processes) is TLS too.
* SuperNode authentication: the SuperLink runs with
  ``--enable-supernode-auth``; one EC P-384 key pair per SuperNode; every
  public key is registered with ``flwr supernode register`` before the node
  starts with ``--auth-supernode-private-key``.  A node whose key is not
  registered is refused.

``--insecure`` (plain HTTP, no authentication) is for local tests only.

Processes.  Every process is started in its own session, with a unique tag
(``FEDREC_DEPLOY_ID``) in its environment that Flower's own children
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``) inherit, even
those started in a new session.  Shutdown: SIGTERM to every started process
group and every tagged process (found in ``/proc``), then SIGKILL after a
grace period; finally ``/proc`` is scanned again and any survivor is reported
(exit status 1).  See ``docs/deploy.md``.

Modules
-------
certificates
    The CA, the server certificate and the SuperNodes' key pairs.
processes
    Free ports, Flower's processes in ``/proc``, and the :class:`Supervisor` that
    starts, tracks and stops them.
appdir
    The Flower app directory ``flwr run`` submits, and the TOML a deployment writes.
orchestrate
    :func:`deploy`: one deployment from the run config to the last process stopped.
cli
    The ``fedrec deploy`` command line (``python -m fedrec_app.deploy`` is the same).
"""

from __future__ import annotations

from .appdir import COMPONENTS, write_app_dir
from .certificates import CertPaths, generate_certificates, generate_node_keys
from .cli import build_parser, main, run
from .errors import DeployError
from .orchestrate import CONNECTION, DeployResult, deploy, plan_nodes
from .processes import FLOWER_PROGRAMS, HOST, TAG_ENV, Supervisor, flower_processes, free_ports

__all__ = [
    "main",
    "run",
    "build_parser",
    "deploy",
    "DeployError",
    "DeployResult",
    "Supervisor",
    "CertPaths",
    "generate_certificates",
    "generate_node_keys",
    "write_app_dir",
    "COMPONENTS",
    "free_ports",
    "plan_nodes",
    "flower_processes",
    "FLOWER_PROGRAMS",
    "TAG_ENV",
    "HOST",
    "CONNECTION",
]
