"""Entrepot: a container image registry that is both a private registry and a pull-through cache."""

__version__ = "0.1.0"
