"""Stage `audit`: what the reviews say about the production model, as numbers with exact intervals."""
