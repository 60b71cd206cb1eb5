"""Models, shared by every stage after prepare: the backbone `registry` (name → timm/torchvision model),
model `files` (safetensors + meta.json, hashed), the `predictor`, the recorded `preprocessing`, the one
`inference` path (bytes → model outputs), and the referral statistics (`feature_distance`,
`field_stats`)."""
