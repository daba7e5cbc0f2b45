"""Re-export of ``cache_specs.config`` (the one config system) for modules that still import it from here."""
from cache_specs.config import build, coerce, to_plain  # noqa: F401
