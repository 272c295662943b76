"""How good predictions are: one module per task (``segmentation``, ``edges`` for edges and skeletons),
for evaluation and training alike."""
