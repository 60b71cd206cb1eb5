"""Stage `prepare`: the catalogue (`catalog`), the leakage-free `split`, RUN/manifest.parquet (`manifest`)."""
