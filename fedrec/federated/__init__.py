"""The federated runtime: what crosses the wire between the server and the nodes
(:mod:`fedrec.federated.protocol`) and the users' local state a node keeps
(:mod:`fedrec.federated.state`)."""

from fedrec.federated import protocol

__all__ = ["protocol"]
