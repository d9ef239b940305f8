"""One training loop (Lightning Fabric), its per-batch steps and staged unfreezing."""
