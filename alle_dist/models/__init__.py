"""Models, shared by every stage after prepare: the backbone `registry` (name → timm/torchvision model),
model files (`persistence`: safetensors + meta.json, hashed), what a model was made from (`provenance`),
the recorded `preprocessing`, the `predictor`, the one `inference` path (bytes → model outputs), and the
referral statistics (`feature_distance`, `field_stats`)."""
