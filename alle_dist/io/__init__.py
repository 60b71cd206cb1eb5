"""Bytes in and out: local paths and s3:// URIs (`storage`), image bytes ↔ RGB arrays (`images`)."""
