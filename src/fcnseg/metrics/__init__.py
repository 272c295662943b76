"""How good predictions are: one module per task (``segmentation``), for evaluation and training alike."""
