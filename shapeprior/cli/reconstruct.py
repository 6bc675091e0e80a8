"""``shapeprior reconstruct``: SSC for a folder of shapes in correspondence."""

from __future__ import annotations

from ._common import Parser, add_mesh_format, add_prior, status_code


def main(argv):
    """Explain many shapes in correspondence with the model by SSC (population studies)."""
    from ..ssc import RECONSTRUCTION_METHODS

    ap = Parser(
        prog="shapeprior reconstruct",
        description="Fit the SSC shape prior to every shape in correspondence with the model "
                    "(meshes whose vertex i is the model's vertex i and whose triangles are "
                    "the model's, e.g. written by segment, refine or export-model; or a .npy "
                    "array of shapes (M, N, 3)). Each shape "
                    "is aligned by a similarity transform and explained as D x + e; vertices "
                    "the prior overrode are reported. Writes reconstructions.npz, one mesh per "
                    "input mesh (point data gross_error_mm, overridden; in the input's frame), "
                    "summary.csv, report.json and manifest.json.",
        epilog="Exit codes: 0 done (suspect shapes too, unless --strict); 1 bad input (no "
               "usable shape) or an error; 3 when a shape failed (a mesh that cannot be read "
               "or is not in correspondence: the others are reconstructed and summary.csv "
               "says why), or with --strict when one is suspect.")
    ap.add_argument("input", help="folder of meshes (vtk, vtp, ply, obj; searched "
                                  "recursively), one mesh, or a .npy array (M, N, 3)")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--model", required=True, help="model file from build-model")
    ap.add_argument("--method", choices=RECONSTRUCTION_METHODS, default="auto",
                    help="hybrid (a robust first solve finds the gross errors, then SSC-L1 "
                         "fits the inliers: trimmed OMP first with the training shapes as "
                         "prior, strongly sparse SSC-L1 first with a learned dictionary; "
                         "the most accurate on the held-out tuning splits, see "
                         "bench/README.md), l1, l0 (trimmed OMP alone), or auto (default: "
                         "hybrid)")
    ap.add_argument("--refit", type=float, default=None,
                    help="fraction of the first solve's (automatic) lambda1 for the fit of "
                         "the inliers (hybrid: default 0.03 with the training shapes, 0.01 "
                         "with a dictionary; with l1 or l0, a second fit of the first one's "
                         "inliers; default: none)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="parallel solver threads (-1: every core; default 1)")
    ap.add_argument("--scheduler", default=None,
                    help="address of a dask.distributed scheduler to solve on instead")
    add_mesh_format(ap)
    add_prior(ap)
    ap.add_argument("--side", choices=("auto", "left", "right"), default="auto",
                    help="a model of one side of a paired organ (build-model --split-sides: "
                         "right organs mirrored onto the left): the side of the shapes; "
                         "auto (default): each shape fitted as given and mirrored, the "
                         "closer fit kept (summary.csv names the side)")
    ap.add_argument("--force", action="store_true",
                    help="replace a previous shapeprior output (never an input or a foreign file)")
    ap.add_argument("--deidentify", action="store_true",
                    help="name shapes shape_00000, ... in input order: no input file name or "
                         "path reaches the outputs or an error message")
    ap.add_argument("--strict", action="store_true", help="exit 3 when a shape is suspect")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.jobs < 1 and a.jobs != -1:
        raise ValueError(f"--jobs={a.jobs} must be a positive number of processes or -1")
    if a.refit is not None and not 0 < a.refit <= 1:
        raise ValueError(f"--refit={a.refit} must be in (0, 1]")

    from .._outputs import show_path
    from ..model import load_model
    from ..pipeline import reconstruct_shapes

    model = load_model(a.model)
    client = None
    if a.scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise RuntimeError("--scheduler needs dask.distributed: "
                               "pip install 'shapeprior[dist]'") from None
        client = Client(a.scheduler, timeout=30)
    try:
        rep = reconstruct_shapes(a.input, a.output, model, a.model, prior=a.prior,
                                 method=a.method, refit=a.refit, n_jobs=a.jobs,
                                 mesh_format=a.mesh_format, force=a.force,
                                 progress=not a.quiet, argv=argv, client=client,
                                 deidentify=a.deidentify, side=a.side)
    finally:
        if client is not None:
            client.close()
    c = rep["status_counts"]
    sides = {k: n for k, n in rep["side"]["counts"].items() if n and k != "none"}
    print(f"{rep['n_shapes']} shapes: {c['ok']} ok, {c['suspect']} suspect"
          + (f", {c['failed']} failed" if c["failed"] else "") + "; "
          + "".join(f"{n} {k}, " for k, n in sides.items())
          + f"{rep['shapes_per_s']:.1f} shapes/s")
    for status in ("failed", "suspect"):
        for s in rep[status][:20]:
            print(f"  {status}: {s['name']}: {s['reasons']}")
        if len(rep[status]) > 20:
            print(f"  ... {len(rep[status]) - 20} more {status}: see summary.csv")
    print(f"wrote {show_path(a.output)}")
    return status_code([s for s in ("failed", "suspect") if c[s]], a.strict)
