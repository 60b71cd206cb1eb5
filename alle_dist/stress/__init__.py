"""Stage `stress`: the test split under graded, seeded stain and acquisition shifts, through the real
inference path; coverage, accuracy on accepted images and the confident-error rate per shift."""
