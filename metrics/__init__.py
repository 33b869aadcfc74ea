"""torchmetrics Metrics and pure functions shared by papers. Imports nothing of ours."""
