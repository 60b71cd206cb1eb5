"""Stage `export`: a trained ensemble as a versioned, hashed model bundle with a model card (alle_dist.bundle
owns the layout): contents.py (pure: metadata.json), onnx_export.py (ONNX + parity), stage.py (writes it)."""
