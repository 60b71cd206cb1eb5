"""alle_dist: distributed ALL blood-smear classification on Ray."""
__version__ = "0.1.0"
