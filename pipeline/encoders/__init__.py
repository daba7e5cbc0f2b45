"""Frozen encoders, loaded through their real loading code (``from_pretrained(id or local path)``)."""
