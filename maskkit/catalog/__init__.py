"""The catalog: tables, opening/upgrading, ingest and counts."""

from .engine import Catalog, open_catalog, resolve_url

__all__ = ["Catalog", "open_catalog", "resolve_url"]
