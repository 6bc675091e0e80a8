"""Image input/output with exact physical geometry (SimpleITK)."""

from ._volume import Volume, read_label_map, read_volume

__all__ = ["Volume", "read_volume", "read_label_map"]
