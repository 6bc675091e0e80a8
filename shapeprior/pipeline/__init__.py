"""Runs: one case or a folder of cases, from input files to published outputs.

:func:`refine_case` refines an existing label map with the shape prior;
:func:`reconstruct_shapes` explains a folder of shapes in correspondence by SSC;
:func:`run_case` reads an image (file or DICOM series), segments it and
publishes the outputs atomically (label, mesh, report, QC picture,
manifest); :func:`run_batch` runs many cases sequentially or on
dask.distributed, resumably, and :func:`run_refine_batch` a folder of masks
(:func:`discover_masks`, their images by name: :func:`match_images`);
:func:`discover_cases` turns an input path into safe, unique cases.
"""

from ._batch import case_state, reference_summary, run_batch, write_summary
from ._cases import (Case, Deidentifier, case_key, discover_cases, discover_masks, match_images,
                     match_in_case_folders, match_references, safe_name, scrub, scrub_paths,
                     unique_names)
from ._convert import convert_structure_set, structure_set_cases
from ._reconstruct import reconstruct_shapes
from ._refine import refine_case
from ._refine_batch import run_refine_batch
from ._run import (DICOM_KEEPS_IDENTIFIERS, MESH_FORMATS, OUTPUT_TYPES, input_files,
                   output_kinds, run_case, scrub_argv)

__all__ = ["run_case", "refine_case", "reconstruct_shapes", "run_batch", "discover_cases",
           "Case", "Deidentifier", "case_state", "write_summary", "reference_summary",
           "match_references", "case_key", "safe_name", "unique_names", "scrub", "scrub_paths", "scrub_argv",
           "input_files", "MESH_FORMATS", "OUTPUT_TYPES", "run_refine_batch", "discover_masks",
           "match_images", "match_in_case_folders", "convert_structure_set", "output_kinds",
           "structure_set_cases", "DICOM_KEEPS_IDENTIFIERS"]
