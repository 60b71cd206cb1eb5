"""Pixels: the paper's HSV segmentation (`hsv`) and the one model input every stage builds (`model_input`)."""
