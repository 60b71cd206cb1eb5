"""Referral: when an image goes to a haematologist instead of getting a label (rule: the unfamiliar-
image signals and their fitted thresholds)."""
