"""Image input/output with exact physical geometry (LPS mm).

NIfTI is read as nibabel and the NIfTI convention place it; NRRD/MetaImage
and DICOM series through SimpleITK. Every reader checks the header before
it allocates and refuses, in one line, what it cannot trust
(:class:`ImageReadError`).
"""

from ._case_folders import (check_mask_name, in_case_folder, in_case_folders,
                            is_label_map_name)
from ._checks import (ImageReadError, available_memory, display_name, input_path_error,
                      names_withheld, reason_text, withhold_names)
from ._dicom import (damaged_files_text, dicom_source, folders_below_text, list_series,
                     read_dicom_series, read_image, read_scan, series_folder, series_folders)
from ._dicom_seg import is_dicom_seg, write_dicom_seg
from ._files import detached_data_files, image_files, image_sha256
from ._nifti import affine_ras
from ._rtstruct import (find_structure_sets, is_rtstruct_file, list_structures, read_rtstruct,
                        referenced_series, scan_frame_of_reference, scan_of_structure_set,
                        series_named_by, structure_title, write_structure_set)
from ._volume import (VOLUME_SUFFIXES, Volume, as_label_map, edge_name, geometry_difference,
                      read_file, read_geometry, read_label_map, read_volume, volume_suffix,
                      write_label)

__all__ = ["Volume", "read_volume", "read_file", "read_label_map", "as_label_map",
           "read_image", "read_scan", "read_dicom_series", "list_series", "write_label",
           "affine_ras",
           "ImageReadError", "available_memory", "display_name", "input_path_error",
           "names_withheld", "withhold_names", "reason_text",
           "image_files", "detached_data_files", "image_sha256", "read_geometry", "edge_name",
           "write_dicom_seg", "is_dicom_seg", "VOLUME_SUFFIXES", "volume_suffix",
           "geometry_difference", "series_folder", "series_folders", "folders_below_text",
           "in_case_folder", "in_case_folders", "check_mask_name",
           "is_label_map_name", "read_rtstruct", "list_structures",
           "scan_frame_of_reference", "find_structure_sets", "scan_of_structure_set",
           "referenced_series", "series_named_by", "write_structure_set", "dicom_source",
           "is_rtstruct_file",
           "structure_title", "damaged_files_text"]
