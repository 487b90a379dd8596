"""Skeleton layouts as data (built-in and custom): see ``skelmae_reference.layouts``, which both
the reference models and these share, so a layout means the same graph on both paths."""

from skelmae_reference.layouts import (  # noqa: F401
    BUILTIN_LAYOUTS,
    PART_NAMES,
    Layout,
    get_layout,
    layout_from_dict,
)

__all__ = ["BUILTIN_LAYOUTS", "PART_NAMES", "Layout", "get_layout", "layout_from_dict"]
