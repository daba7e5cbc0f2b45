"""Exports: caches written out in the formats other projects consume."""
