"""Stage `tune`: `stage` (the entry), `search` (Ray Tune over the ensemble weights × γ), `select` (its pure
core: temperatures, metrics, the choice, referral thresholds, guarantees), `training` (--tune-training:
Ray Tune over the training hyperparameters) and `runner` (the one way both run Ray Tune)."""
