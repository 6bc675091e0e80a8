"""Image input/output with exact physical geometry (SimpleITK)."""

from ._dicom import list_series, read_dicom_series, read_image
from ._volume import Volume, read_label_map, read_volume

__all__ = ["Volume", "read_volume", "read_label_map", "read_image", "read_dicom_series",
           "list_series"]
