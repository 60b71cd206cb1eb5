"""Stage `review`: referred images (and a blind audit sample) to a haematologist, decisions back into DST."""
