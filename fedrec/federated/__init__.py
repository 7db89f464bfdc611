"""The federated runtime: what crosses the wire between the server and the nodes
(:mod:`fedrec.federated.protocol`)."""

from fedrec.federated import protocol

__all__ = ["protocol"]
