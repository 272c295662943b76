"""Training: one loop for every task (``trainer``), its settings, state, run folder, optimiser and losses."""
