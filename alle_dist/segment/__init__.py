"""Stage `segment`: HSV-segmented copies of an image store, on Ray Data (core: alle_dist.imaging.hsv)."""
