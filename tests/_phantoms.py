"""Label-map phantoms with known geometry, written through SimpleITK."""

import numpy as np


def rotation(axis, deg):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    R = np.eye(3)
    R[i, i] = R[j, j] = c
    R[i, j], R[j, i] = -s, s
    return R


def ellipsoid_label_map(path, semi_axes=(30.0, 20.0, 15.0), centre=(10.0, -40.0, 25.0),
                        spacing=(0.8, 0.9, 2.5), size=(110, 90, 40), direction=None,
                        origin=None, label=1, extra=None):
    """Write an ellipsoid (semi-axes along physical x, y, z) as a label map.

    Voxels are labelled by testing their physical centre, so the geometry
    (spacing, origin, direction) is exercised exactly as a reader sees it.
    Returns the SimpleITK image.
    """
    import SimpleITK as sitk

    D = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    sp = np.asarray(spacing, dtype=float)
    size = np.asarray(size)
    if origin is None:  # centre the field of view on the ellipsoid
        origin = np.asarray(centre) - D @ (sp * (size - 1) / 2.0)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    phys = np.asarray(origin) + idx @ (D * sp).T
    inside = np.sum(((phys - centre) / np.asarray(semi_axes)) ** 2, axis=1) <= 1.0
    arr = np.zeros(tuple(size), dtype=np.uint8)
    arr.reshape(-1)[inside] = label
    if extra is not None:
        extra(arr)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing([float(v) for v in sp])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in D.ravel()])
    sitk.WriteImage(img, str(path))
    return img


def ellipsoid_area(a, b, c, p=1.6075):
    """Knud Thomsen's approximation (relative error < 1.1 %)."""
    return 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def write_dicom_series(vol, folder, modality="MR", series_uid="1.2.826.0.1.3680043.2.1125.1"):
    """Write a :class:`~shapeprior.io.Volume` as a DICOM series (one file per
    slice, int16) with exact position/orientation tags, through SimpleITK."""
    import SimpleITK as sitk
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(vol.array)
    D = np.asarray(vol.direction, dtype=float)
    orient = "\\".join(f"{v:.10g}" for v in np.r_[D[:, 0], D[:, 1]])
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(np.round(arr[k:k + 1]).astype(np.int16))
        sl.SetSpacing([float(v) for v in vol.spacing])
        pos = vol.index_to_physical(np.array([[0.0, 0.0, float(k)]]))[0]
        sl.SetOrigin([float(v) for v in pos])
        sl.SetDirection([float(v) for v in D.ravel()])
        tags = {"0008|0060": modality, "0020|000e": series_uid,
                "0020|000d": series_uid + ".0", "0020|0052": series_uid + ".9", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
                "0008|0018": f"{series_uid}.{k + 1}", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.10g}" for v in pos), "0020|0037": orient,
                "0028|0030": f"{vol.spacing[1]:.10g}\\{vol.spacing[0]:.10g}",
                "0018|0050": f"{vol.spacing[2]:.10g}", "0010|0010": "DOE^JOHN"}
        for t, v in tags.items():
            sl.SetMetaData(t, v)
        w.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        w.Execute(sl)
    return folder


def write_paired_phantoms(folder, n_cases, seed=0):
    """Image/label pairs with a paired organ (left and right, mirror images up to
    shape variation) under one label, for ``build-model --split-sides``.

    LPS: +x is the patient's left. Returns ``(images, labels, truth)`` where
    ``truth[name] = {"left": mask, "right": mask}`` on each image's grid.
    """
    from pathlib import Path

    from scipy import ndimage

    from shapeprior.io import Volume, write_label
    from shapeprior.segmentation import voxelize
    from shapeprior.synthetic import ShapePopulation, star_mesh_faces

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pop = ShapePopulation(n_points=642, axes=(9.0, 14.0, 10.0), degree=3, variability=0.1,
                          seed=seed)
    faces = star_mesh_faces(pop.directions)
    spacing = np.array([1.0, 1.0, 1.5])
    size = np.array([96, 52, 36])
    truth = {}
    for i in range(n_cases):
        # fields of view centred about 40 mm off the origin in x: a mirrored
        # organ needs its mirrored field-of-view centre
        origin = rng.uniform(-10, 10, 3) + np.array([-8.0, -26.0, -27.0])
        grid = Volume(np.zeros(size[::-1], np.float32), spacing, origin, np.eye(3))
        c = grid.centre()
        masks = {}
        for side, sx in (("left", 1.0), ("right", -1.0)):
            shape = pop.sample(1, rng)[0] * np.array([sx, 1.0, 1.0])
            f = faces if sx > 0 else faces[:, ::-1]
            v = shape + c + np.array([sx * 24.0, 0.0, 0.0]) + rng.uniform(-2, 2, 3)
            masks[side] = voxelize(v, f, grid).astype(bool)
        label = (masks["left"] | masks["right"]).astype(np.uint8)
        img = 100.0 + 80.0 * label
        img = ndimage.gaussian_filter(img, 1.0) + rng.normal(0, 10.0, img.shape)
        name = f"pair_{i:03d}.nii.gz"
        write_label(grid, label, folder / "labels" / name)
        vol = Volume(img.astype(np.float32), spacing, origin, np.eye(3))
        import SimpleITK as sitk

        sitk.WriteImage(vol.to_sitk(), str(folder / "images" / name))
        truth[name] = masks
    return folder / "images", folder / "labels", truth


def with_status(fit, status, reason):
    """``fit`` (``segment_volume``) wrapped so that its result has ``status``, with
    ``reason`` added: that status whatever the evidence, for the paths that follow it."""
    def wrapped(*a, **k):
        r = fit(*a, **k)
        r.status = status
        r.reasons = r.reasons + [reason]
        return r
    return wrapped


def nifti_description(path) -> str:
    """The NIfTI header's ``descrip`` of ``path`` (what fslhd shows)."""
    import nibabel as nib

    return nib.load(path).header["descrip"].item().decode()


def read_vtk_mesh(path):
    """A .vtk (legacy PolyData) or .vtp mesh read with VTK itself:
    ``(points (N, 3), number of triangles, {point data name: (N,)}, SPACE)``."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOLegacy import vtkPolyDataReader
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    r = vtkXMLPolyDataReader() if str(path).endswith(".vtp") else vtkPolyDataReader()
    r.SetFileName(str(path))
    r.Update()
    poly = r.GetOutput()
    assert poly.GetNumberOfPoints() > 0, f"VTK read no points from {path}"
    pts = vtk_to_numpy(poly.GetPoints().GetData())
    pd = poly.GetPointData()
    data = {pd.GetArrayName(i): vtk_to_numpy(pd.GetArray(i)) for i in range(pd.GetNumberOfArrays())}
    space = poly.GetFieldData().GetAbstractArray("SPACE")
    return pts, poly.GetNumberOfPolys(), data, space.GetValue(0) if space else None


def build_phantom_model(folder, images, labels, n_train, *extra):
    """Build a model (CLI, with appearance, 642 vertices) from the first ``n_train``
    phantom label maps, copied into ``folder/train``; ``extra`` adds options.
    Returns the model file."""
    import shutil

    from shapeprior.cli import main

    train = folder / "train"
    train.mkdir()
    for f in sorted(labels.iterdir())[:n_train]:
        shutil.copy(f, train / f.name)
    model = folder / "model.npz"
    assert main(["build-model", str(train), "-o", str(model), "--images", str(images),
                 "--vertices", "642", "--iso-spacing", "0.75", "--smooth", "0.75",
                 "--quiet", *extra]) == 0
    return model


def ellipsoid_organ():
    """A smooth organ on a 40 x 60 x 60 grid (bool, zyx): an ellipsoid on slices
    8..32 of the first axis, narrowing towards its poles."""
    g = np.ogrid[0:40, 0:60, 0:60]
    return ((g[0] - 20) * 2.0 / 24) ** 2 + ((g[1] - 30) / 20) ** 2 + ((g[2] - 30) / 14) ** 2 <= 1


def leak_at_tip(clean, r_vox=4, gap=3):
    """``clean`` (bool, zyx) with a leak: a ball of ``r_vox`` voxels centred
    ``gap`` voxels beyond the organ's +x end (array axis 2), kept inside the grid."""
    idx = np.argwhere(clean)
    tip = idx[idx[:, 2] == idx[:, 2].max()].mean(0).round().astype(int)
    tip[2] = min(tip[2] + gap, clean.shape[2] - 5)
    g = np.ogrid[tuple(slice(0, n) for n in clean.shape)]
    return clean | (sum((g[k] - tip[k]) ** 2 for k in range(3)) <= r_vox ** 2)


def written_text(root, inputs=(), printed=""):
    """``printed`` followed by everything a run left under ``root`` outside the
    ``inputs`` folders (and ``root``'s own entries, named by the user): folder and
    file names and the files' bytes (as latin-1), for a search for names that
    must not be there."""
    import os
    from pathlib import Path

    text = printed
    skip = [Path(i) for i in inputs]
    for dirpath, dirs, files in os.walk(root):
        d = Path(dirpath)
        if d == Path(root) or any(d.is_relative_to(i) for i in skip):
            continue
        text += " ".join(dirs + files)
        for f in files:
            text += (d / f).read_bytes().decode("latin-1")
    return text


def _new_dataset(sop_class, sop_instance):
    """An empty DICOM data set of that SOP class and instance, with its file meta
    header (explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    return ds


def write_rtstruct(path, grid, structures, frame_of_reference="1.2.826.0.1.3680043.2.1125.1.9",
                   decimals=3, slice_axis=0, series_uid=None):
    """Write an RT Structure Set as a planning system would: each structure
    (``{name: bool mask on grid}``) as closed polygons in LPS mm, one per outline
    on each slice across array axis ``slice_axis`` (outer outlines and holes
    alike, traced with marching squares at 0.5), coordinates to ``decimals``
    places; a structure given as ``None`` has one POINT contour only (an
    isocentre). ``frame_of_reference``: the UID the structures refer to;
    ``series_uid``: the series they were drawn on, named as an RT Referenced
    Series (left out when None)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from skimage.measure import find_contours

    ds = _new_dataset("1.2.840.10008.5.1.4.1.1.481.3", "1.2.826.0.1.3680043.2.1125.77.1")
    ds.Modality, ds.PatientName = "RTSTRUCT", "DOE^JOHN"
    ds.StructureSetLabel = "plan"
    ref = Dataset()
    ref.FrameOfReferenceUID = frame_of_reference
    if series_uid is not None:
        series, study = Dataset(), Dataset()
        series.SeriesInstanceUID = series_uid
        study.RTReferencedSeriesSequence = Sequence([series])
        ref.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    rois, contours = [], []
    for number, (name, mask) in enumerate(structures.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        rois.append(roi)
        items = []
        if mask is None:
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints = "POINT", 1
            c.ContourData = [f"{v:.{decimals}f}" for v in grid.centre()]
            items.append(c)
        else:
            m = np.moveaxis(np.asarray(mask, bool), slice_axis, 0)
            for k in np.flatnonzero(m.any((1, 2))):
                for line in find_contours(np.pad(m[k], 1).astype(float), 0.5):
                    rc = line[:-1] - 1.0                  # closed: the first point repeats
                    zyx = np.insert(rc, slice_axis, float(k), axis=1)
                    pts = grid.index_to_physical(zyx[:, ::-1])
                    c = Dataset()
                    c.ContourGeometricType = "CLOSED_PLANAR"
                    c.NumberOfContourPoints = len(pts)
                    c.ContourData = [f"{v:.{decimals}f}" for v in pts.ravel()]
                    items.append(c)
        rc_ = Dataset()
        rc_.ReferencedROINumber = number
        rc_.ContourSequence = Sequence(items)
        contours.append(rc_)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_enhanced_mr(vol, path, order=None, per_frame=False):
    """Write a :class:`~shapeprior.io.Volume` as one enhanced MR image (a
    multi-frame object: shared orientation and pixel spacing, or with
    ``per_frame`` each frame's own copy of them as a Philips scanner writes
    them; each frame's position of its own), uint16, frames stored in ``order``
    (a permutation of the slices; default as they are), through pydicom."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    arr = np.asarray(vol.array)
    n = arr.shape[0]
    order = np.arange(n) if order is None else np.asarray(order)
    D = np.asarray(vol.direction, dtype=float)
    ds = _new_dataset("1.2.840.10008.5.1.4.1.1.4.1", "1.2.826.0.1.3680043.2.1125.5.1")
    ds.Modality, ds.PatientName, ds.PatientID = "MR", "DOE^JANE", "P0"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.5", \
        "1.2.826.0.1.3680043.2.1125.5.2"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.2.1125.5.9"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = arr.shape[1], arr.shape[2], n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    orient, measures, shared = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [f"{v:.10g}" for v in np.r_[D[:, 0], D[:, 1]]]
    measures.PixelSpacing = [f"{vol.spacing[1]:.10g}", f"{vol.spacing[0]:.10g}"]
    measures.SliceThickness = f"{vol.spacing[2]:.10g}"
    if not per_frame:
        shared.PlaneOrientationSequence = Sequence([orient])
        shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        pos, item = Dataset(), Dataset()
        pos.ImagePositionPatient = [f"{v:.10g}" for v in
                                    vol.index_to_physical(np.array([[0.0, 0.0, float(k)]]))[0]]
        item.PlanePositionSequence = Sequence([pos])
        if per_frame:
            item.PlaneOrientationSequence = Sequence([orient])
            item.PixelMeasuresSequence = Sequence([measures])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.clip(np.round(arr[order]), 0, 65535).astype("<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
