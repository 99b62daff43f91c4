"""pilotfish: service discovery and load balancing for containers."""

__version__ = "0.1.0"
