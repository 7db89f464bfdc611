"""fedrec: privacy-preserving federated recommendation on Flower with Opacus."""

__version__ = "0.1.0"
__all__ = ["__version__"]
