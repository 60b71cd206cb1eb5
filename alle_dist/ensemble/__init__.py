"""The weighted threshold ensemble that tune fits and evaluate and classify apply: `weighted` (the decision),
`split_probs` (a split's cached model outputs) and `lineage` (what an ensemble.json was tuned on)."""
