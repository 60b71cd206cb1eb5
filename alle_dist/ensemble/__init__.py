"""Stage `tune` and the weighted threshold ensemble it fits: `rule` (the decision), `probs` (cached
split outputs), `tune` (Ray Tune over weights × γ, temperatures, referral thresholds)."""
