"""Stage `classify`: bulk classification of image stores into a Delta table: `resolve` (check the models)
→ `listing` → `planning` (against the table) → `pipeline` (Ray Data) → `commit` → `store`; `run` drives it."""
