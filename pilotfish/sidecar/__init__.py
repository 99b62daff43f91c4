"""The Docker sidecar: containers registered from Docker events on one heartbeated lease."""
