"""The federated runtime: what crosses the wire between the server and the nodes
(:mod:`fedrec.federated.protocol`), the users' local state a node keeps
(:mod:`fedrec.federated.state`), how a node trains its users
(:mod:`fedrec.federated.algorithms`), the node's round
(:mod:`fedrec.federated.node`), the data and cohorts shared by the server and the
nodes (:mod:`fedrec.federated.federation`) and the server's optimiser
(:mod:`fedrec.federated.optim`)."""

from fedrec.federated import protocol

__all__ = ["protocol"]
