"""One package per study of Nexus; each runs as ``python -m studies.<name>`` (its README.md)."""
