"""The replication study: what Nexus changes at matched pretraining loss, and why (README.md)."""
