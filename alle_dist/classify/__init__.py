"""Stage `classify`: bulk classification of image stores (`plan` → `pipeline` → the output `parts`)."""
