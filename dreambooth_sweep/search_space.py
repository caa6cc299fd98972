"""Moved to :mod:`dreambooth_sweep.sweep.search_space`; this alias goes once no module imports it."""

from __future__ import annotations

from dreambooth_sweep.sweep.search_space import format_value, grid_search_space, parse_search_space

__all__ = ["format_value", "grid_search_space", "parse_search_space"]
