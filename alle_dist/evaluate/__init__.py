"""Stage `evaluate`: test-split metrics (`metrics`, pure), the report a haematologist reads (`report`)."""
