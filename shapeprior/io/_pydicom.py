"""pydicom, with its read validation off.

pydicom checks each value it reads against its value representation and warns
about one that does not fit, quoting it: a damaged Series Instance UID went to
stderr whole (UIDs are on DICOM's de-identification list), and through pydicom's
logger to any log a program or a dask worker keeps. shapeprior checks what it
uses itself and says it in one line without the value. The setting is pydicom's
and holds for the whole process once a shapeprior reader has imported pydicom, as
does the filter that keeps pydicom's warnings about character sets quiet.
"""

import warnings

import pydicom

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
# pydicom warns on the terminal about a Specific Character Set it does not know or
# corrects, and about text its set cannot decode, at whatever first reads a text
# element: two lines around the run's own. The DICOM outputs say what their set
# became (dicom_charset in _dicom_seg.py)
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.charset")
