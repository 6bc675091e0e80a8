"""Public SSC inference: validation, penalties, and the alternation of the
similarity transform beta with the sparse solve."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._validation import check_choice, check_number
from ..align import Transform, generalized_procrustes, procrustes
from ..backend import on_one_blas_thread, to_numpy
from ._dictionary import ShapeDictionary
from ._l0 import solve_l0
from ._l1 import outlier_free_lasso, solve_l1

METHODS = ("l1", "l0")
#: what a user may ask a reconstruction for: the solver methods, 'hybrid', and
#: 'auto' (the hybrid)
RECONSTRUCTION_METHODS = ("auto", "hybrid", "l1", "l0")
#: atoms trimmed OMP may use (``n_nonzero='auto'``, at most the dictionary's atoms):
#: chosen on the tuning split of bench/bench_robustness.py (held-out KiTS kidneys
#: outside its report set) among 10 / 20 / 30 / 40 / 60 for the hybrid, by the mean
#: surface error over clean, 30 % displaced and 50 % missing shapes (the refit's
#: criterion): 1.077 / 1.044 / 0.982 / 0.976 / 0.981 mm; on the synthetic
#: validation seeds of bench/bench_l0_start.py 20 / 40 left 3 / 0 of 40 shapes
#: above 1 mm. It was 10 (20 in the benchmarks that chose the hybrid)
L0_NONZERO = 40
#: a vertex weight that is not 0 lies within this range: its square, and the
#: weighted sums of squares of millimetre residuals, stay ordinary doubles
WEIGHT_RANGE = (1e-100, 1e100)
#: where the alignment rounds start without a ``transform0``
#: (:func:`sparse_shape_composition`'s ``start``)
STARTS = ("auto", "mean", "l1")
#: the hybrid's refit: trimmed OMP (L0) finds the gross errors, then SSC-L1 with
#: this fraction of the automatic lambda1 fits its inliers. Chosen on the tuning
#: split of held-out KiTS kidneys (bench_robustness.py: lowest mean error over
#: clean, 30 % displaced and 50 % missing, 1.04 mm against 1.59 for L1 with a
#: refit and 2.10 for plain L1)
HYBRID_REFIT = 0.03
#: the hybrid from a learned dictionary: SSC-L1 with this relative weight on x
#: (30 x ALPHA1) finds the gross errors, then SSC-L1 with DICTIONARY_HYBRID_REFIT
#: times its lambda1 (0.3 x the default weight) fits the inliers. Chosen on the
#: tuning halves of bench/bench_online.py --methods-only (1,150 AdrenalMNIST3D
#: shapes, 96 deviation atoms; 280 KiTS kidneys, 128 shape atoms): the lowest
#: mean error ratio to plain SSC-L1 over both sets and the three corruptions
#: among the settings never worse than it on any of them. Report halves, plain
#: L1 -> hybrid (clean / 30 % displaced / 50 % missing, mm): adrenal 0.680 /
#: 5.835 / 1.202 -> 0.625 / 0.697 / 1.183, KiTS 2.415 / 5.972 / 2.989 -> 2.144 /
#: 4.937 / 2.591
DICTIONARY_HYBRID_ALPHA1 = 0.03
DICTIONARY_HYBRID_REFIT = 0.01


def solver_options(method, refit=None, prior="shapes", alpha1=None):
    """The solver settings of :func:`sparse_shape_composition` for a reconstruction
    method: a dict with ``method``, ``refit`` and ``alpha1``.

    'hybrid': a robust first stage finds the gross errors, then SSC-L1 fits the
    inliers. From the training shapes (``prior='shapes'``) the first stage is
    trimmed OMP ('l0') and the refit uses ``refit`` (default
    :data:`HYBRID_REFIT`) times the automatic lambda1. From a learned
    dictionary (``prior='dictionary'``) it is SSC-L1 with the relative weight
    :data:`DICTIONARY_HYBRID_ALPHA1`, which keeps so few atoms that they cannot
    follow a displaced patch (e takes it), and the refit uses ``refit``
    (default :data:`DICTIONARY_HYBRID_REFIT`) times that first stage's lambda1.
    'l1' and 'l0' pass through with ``refit`` as given. 'auto' is the hybrid.
    An ``alpha1`` that is given replaces the method's (None: the method's).
    """
    check_choice("method", method, RECONSTRUCTION_METHODS)
    check_choice("prior", prior, ("shapes", "dictionary"))
    if method in ("auto", "hybrid"):
        if prior == "shapes":
            return {"method": "l0", "refit": HYBRID_REFIT if refit is None else refit,
                    "alpha1": alpha1}
        return {"method": "l1",
                "alpha1": DICTIONARY_HYBRID_ALPHA1 if alpha1 is None else alpha1,
                "refit": DICTIONARY_HYBRID_REFIT if refit is None else refit}
    return {"method": method, "refit": refit, "alpha1": alpha1}


#: up to this many alignment rounds (``max_align_iter``), SSC-L1 computes each
#: round's ``D^T W z`` by its own matrix-vector pass over D; beyond, from the
#: shape's moments (:meth:`ShapeDictionary.moments`: one pass of d*d + d = 12
#: columns in 3-D for every round). A 12-column pass took 4.3 times a 1-column
#: one on a kidney dictionary (7686 x 280, one core)
DIRECT_ROUNDS = 3

#: default alignment tolerance (``align_tol``): the rounds stop once the aligned
#: vertices move less than this many RMS radii of the dictionary's mean (0.04 mm
#: on a kidney). Chosen on the tuning split of held-out KiTS kidneys
#: (``bench/bench_align_tol.py``): the largest of 1e-4 / 1e-3 / 3e-3 / 1e-2 whose
#: mean error stays within 1 % of 1e-4's for SSC-L1, its refit, SSC-L0 and the
#: hybrid, clean, displaced and missing. Trimmed OMP's set changes from round to
#: round, so its rounds rarely settle below a few thousandths of a radius: at
#: 1e-4 they ran out at 20 on half-visible kidneys
ALIGN_TOL = 1e-3
#: with trimmed OMP (L0) the rounds stop after this many consecutive rounds
#: under the tolerance: its trimmed set changes from round to round, and on a
#: synthetic shape a second round that moved 5e-4 radii was followed by 13
#: rounds of up to 1e-2 that took the mean error from 2.2 to 0.17 mm
L0_SETTLED_ROUNDS = 2
#: the hybrid's first stage (trimmed OMP, and the SSC-L1 solve it starts from)
#: runs at most this many alignment rounds: it only has to find the gross errors,
#: and the refit of the inliers aligns again (``max_align_iter`` rounds). Chosen on
#: the tuning split of held-out KiTS kidneys (bench/bench_hybrid_rounds.py): the
#: fewest of 2 / 4 / 6 / 8 / 10 / 12 whose mean error stays within 1 % of 20's on
#: each condition; trimmed OMP's rounds rarely settle (its trimmed set changes
#: from round to round) and ran out at 20 on half-visible kidneys
HYBRID_FIRST_ROUNDS = 8
#: True: trimmed OMP started from an SSC-L1 solve's pose (``start='l1'``) starts
#: the trimming of every alignment round from that solve's gross errors instead of
#: from no vertex. Off: on the tuning split of bench/bench_hybrid_rounds.py it made
#: the hybrid 1.09-1.14x faster at the same or lower mean error, but on the report
#: split the displaced rows lost 0.3-2.3 %, and on a synthetic shape with 40 of
#: 400 vertices scattered 15 mm off, the L1 solve flagged 126 vertices, which
#: stayed trimmed (the fit without them does not come back to them): mean error
#: 0.17 -> 0.79 mm, one vertex 6 mm off (tests/test_ssc.py, test_refit_keeps_detail)
L0_TRIM_FROM_START = False

#: the SSC-L1 solve trimmed OMP starts from (``start='l1'``): at most this many
#: alignment rounds (None: as many as trimmed OMP may), with this many reweighting
#: rounds. Fewer of either (4, 2 or 1 rounds; 1 or 0 reweightings) were tried on
#: the tuning split (bench/bench_l0_start_rounds.py, results/l0_start_rounds.json):
#: none kept SSC-L0's mean error within 1 % on half-missing kidneys (+1.8-2.3 %),
#: and the time saved was at most 12 % averaged over the conditions (trimmed OMP
#: takes more rounds from a rougher pose)
L0_START_ROUNDS = None
L0_START_REWEIGHT = 3

#: SSC-L0's alignment rounds (more than :data:`DIRECT_ROUNDS`) take each round's
#: ``D^T W z`` from the shape's moments, the pass over D that the SSC-L1 solve it
#: starts from has already made (:meth:`ShapeDictionary.moments` keeps its last
#: result), instead of a pass over D per round: median time per held-out kidney
#: shape 1-12 % lower on one core, the same reconstructions to 1e-10 mm
#: (``bench/results/l0.json``). False: a pass per round (the benchmark's baseline).
L0_SHARED_MOMENTS = True

#: default relative L1 weight on x: lam1 = 2 * ALPHA1 * max|D^T W z|
ALPHA1 = 1e-3
#: default gross-error threshold, in robust standard deviations of the residual
OUTLIER_SIGMAS = 3.0
#: lower bound of the residual scale, relative to the shape's size (RMS coordinate
#: spread; 0.2 mm for a kidney): a shape the dictionary reproduces almost exactly
#: (a training shape) would otherwise get a threshold of the size of the L1
#: shrinkage, and e, nearly free, would absorb the whole shape
SIGMA_FLOOR = 1e-2


@dataclass
class SSCResult:
    """Result of :func:`sparse_shape_composition`.

    Attributes
    ----------
    x : ndarray, shape (K,)
        Sparse coefficients of the dictionary atoms.
    error : ndarray, shape (N, d)
        Gross-error term e in the model frame (model units).
    error_norm : ndarray, shape (N,)
        ``|e_i|`` mapped back to the input's units (e.g. mm).
    overridden : ndarray of bool, shape (N,)
        Vertices where e is nonzero: the prior overrode the observation.
    visible : ndarray of bool, shape (N,)
        Vertices with weight > 0.
    transform : Transform
        beta: maps the input shape into the model frame.
    aligned : ndarray, shape (N, d)
        ``transform(shape)``: the input in the model frame.
    reconstruction : ndarray, shape (N, d)
        ``transform^{-1}(D x)``: the prior's shape in the input's frame.
    objective : float
        Final objective value in the model frame (stated units).
    lambda1, lambda2 : float
        Penalties used (after 'auto'); lambda2 is nan for method 'l0'.
    n_iter : int
        Sparse-solver iterations in the last alignment round.
    n_align_iter : int
    converged : bool
        The sparse solve converged and the alignment rounds settled (within
        ``align_tol``, or at a cycle for L0).
    method : str
    info : dict
        Solver details: ``solver_converged`` (the last sparse solve alone),
        ``alignment_move`` (the last round's move, RMS over vertices, in RMS
        radii of the dictionary's mean: how far from settled the alignment
        stopped), and per method ``kkt``, ``reweight``, ``threshold``,
        ``cycled``, ``trimming_capped``, ``alignment_cycle``, ``refit``.
    """

    x: np.ndarray
    error: np.ndarray
    error_norm: np.ndarray
    overridden: np.ndarray
    visible: np.ndarray
    transform: Transform
    aligned: np.ndarray
    reconstruction: np.ndarray
    objective: float
    lambda1: float
    lambda2: float
    n_iter: int
    n_align_iter: int
    converged: bool
    method: str
    info: dict = field(default_factory=dict)

    @property
    def outlier_fraction(self) -> float:
        """Fraction of visible vertices the prior overrode."""
        nv = int(self.visible.sum())
        return float(self.overridden[self.visible].sum()) / nv if nv else 0.0

    def __repr__(self):
        """One line: the solve's outcome, never the arrays."""
        return (f"SSCResult(method={self.method!r}, vertices={len(self.visible)}, "
                f"visible={int(np.count_nonzero(self.visible))}, "
                f"atoms_used={int(np.count_nonzero(self.x))}, "
                f"outlier_fraction={self.outlier_fraction:.3f}, "
                f"scale={float(self.transform.scale):.4g}, objective={self.objective:.4g}, "
                f"alignment_rounds={self.n_align_iter}, converged={self.converged})")


@dataclass
class CompositionResult:
    """Result of :func:`sparse_composition` (a shape already in the model frame).

    Attributes
    ----------
    x : ndarray, shape (K,)
        Sparse coefficients of the dictionary atoms.
    e : ndarray, shape (N, d)
        Gross error per vertex (model units).
    residual : ndarray, shape (N, d)
        ``z - D x`` (model units).
    objective : float
    lambda1, lambda2 : float
        Penalties used (NaN for 'l0').
    n_iter : int
    converged : bool
    info : dict
        Solver details: KKT residual and reweighting rounds ('l1'), trimming
        threshold ('l0').
    """

    x: np.ndarray
    e: np.ndarray
    residual: np.ndarray
    objective: float
    lambda1: float
    lambda2: float
    n_iter: int
    converged: bool
    info: dict = field(default_factory=dict)


def _positive(name, value, allow_auto=True):
    if allow_auto and isinstance(value, str) and value == "auto":
        return value
    try:
        return check_number(name, value, 0, low_open=True)
    except ValueError:
        allowed = "'auto' or a finite number > 0" if allow_auto else "a finite number > 0"
        raise ValueError(f"{name}={value!r} is invalid: expected {allowed}") from None


def _check_shape(shape, dic):
    y = np.asarray(shape, dtype=np.float64)
    want = (dic.n_points, dic.n_dims)
    if y.shape != want:
        raise ValueError(f"shape has shape {y.shape}, but the dictionary expects {want}")
    if not np.all(np.isfinite(y)):
        raise ValueError("shape contains NaN or infinite coordinates")
    return y


def _check_vertex_weights(weights, n_points):
    if weights is None:
        return np.ones(n_points)
    s = np.asarray(weights, dtype=np.float64)
    if s.shape != (n_points,):
        raise ValueError(f"weights must have shape ({n_points},), got {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("weights must be finite and >= 0")
    pos = s[s > 0]
    if pos.size and (pos.min() < WEIGHT_RANGE[0] or pos.max() > WEIGHT_RANGE[1]):
        raise ValueError(f"weights must be 0 or within [{WEIGHT_RANGE[0]:g}, "
                         f"{WEIGHT_RANGE[1]:g}] (their squares weigh the residuals), got "
                         f"{pos.min():.3g} to {pos.max():.3g}")
    if np.count_nonzero(s) < 3:
        raise ValueError(f"at least 3 vertices need weight > 0, got {np.count_nonzero(s)}")
    return s


def _auto_lambda1(dic, z, w, c=None, alpha1=ALPHA1):
    xp = dic.xp
    if c is None:
        c = dic.DF.T @ (w * z)
    return 2.0 * alpha1 * float(xp.max(xp.abs(c)))


def _size(z, xp):
    """RMS distance of the shape's coordinates from their mean (> 0)."""
    return float(xp.sqrt(xp.mean((z - xp.mean(z)) ** 2))) + 1e-300


def _robust_sigma(r, w, xp):
    a = xp.abs(r[w > 0])
    return 1.4826 * float(xp.median(a)) if a.size else 0.0


def _auto_lambda2(dic, z, w, lam1, x0, c, reweight=0, tol=1e-10, max_iter=100):
    """lam2 such that the gross-error threshold is OUTLIER_SIGMAS robust
    standard deviations of the residual (two robust rounds, so that gross
    errors do not inflate the scale). Per unit weight, tau = lam2 / 2. The
    second round's solve carries the ``reweight`` reweighted solves."""
    xp = dic.xp
    wmax = float(xp.max(w))
    # round 1: the scale of a plain lasso's residual (that lasso is also where a
    # cold robust solve starts: it is handed over instead of being solved again)
    x = outlier_free_lasso(dic, w, lam1, c)
    sigma = max(_robust_sigma(z - dic.matvec(x), w, xp), SIGMA_FLOOR * _size(z, xp))
    handed = x0 is None and bool(xp.any(x != 0))
    sol = solve_l1(dic, z, w, lam1, 2.0 * OUTLIER_SIGMAS * sigma * wmax,
                   x0=x if handed else x0, c=c, settled=False if handed else None)
    # round 2: the scale of that robust solve's residual, started from its optimum
    sigma = max(_robust_sigma(sol.residual, w, xp), SIGMA_FLOOR * _size(z, xp))
    lam2 = 2.0 * OUTLIER_SIGMAS * sigma * wmax
    sol = solve_l1(dic, z, w, lam1, lam2, x0=sol.x, tol=tol, max_iter=max_iter, c=c,
                   reweight=reweight)
    return lam2, sol


def sparse_composition(aligned_shape, dictionary, weights=None, *, method="l1",
                       lambda1="auto", lambda2="auto", n_nonzero="auto",
                       outlier_threshold=None, reweight=0, x0=None, tol=1e-10,
                       max_iter=100, alpha1=None):
    """Sparse solve for a shape already in the model frame (no alignment).

    Parameters
    ----------
    aligned_shape : array_like, shape (N, d)
    dictionary : ShapeDictionary
    weights : array_like, shape (N,), optional
        Per-vertex visibility/confidence s_i >= 0 (the S of the objective).
    method : {'l1', 'l0'}
    lambda1, lambda2 : float or 'auto'
        Penalties of ``sum s^2 (z - Dx - e)^2 + lambda1 |x|_1 + lambda2 |e|_1``
        ('l1' only). 'auto': lambda1 = 2 alpha1 max|D^T S^2 z| (2e-3 max|D^T S^2 z|
        by default) and lambda2 so that coordinates more than 3 robust sigmas off
        are gross errors.
    n_nonzero : int or 'auto'
        Atoms allowed by 'l0'. 'auto': :data:`L0_NONZERO` (40), or every atom of a
        smaller dictionary.
    outlier_threshold : float, optional
        'l0' only: per-vertex residual norm (model units) above which a vertex
        is trimmed; default 2.5 x the median residual norm.
    reweight : int
        'l1' only: rounds of reweighted L1 on e (Candes, Wakin & Boyd 2008)
        after the convex solve: lambda2_j <- lambda2 * max(tau / (|e_j| + tau),
        REWEIGHT_FLOOR = 0.05). Each round is an exact warm-started solve; large gross
        errors then stop pulling x (0 = the plain convex objective).
    x0 : array_like, shape (K,), optional
        Warm start ('l1').
    alpha1 : float > 0, optional
        Relative weight of an automatic lambda1 (default :data:`ALPHA1`); a
        larger one keeps fewer atoms.

    Returns
    -------
    CompositionResult
    """
    dic = dictionary
    if not isinstance(dic, ShapeDictionary):
        raise TypeError(f"dictionary must be a ShapeDictionary, got {type(dic).__name__}")
    check_choice("method", method, METHODS)
    y = _check_shape(aligned_shape, dic)
    s = _check_vertex_weights(weights, dic.n_points)
    check_number("reweight", reweight, 0, integer=True)
    alpha1 = _alpha1(alpha1)
    return _sparse_composition(dic, y, s, method, lambda1, lambda2, n_nonzero,
                               outlier_threshold, reweight, x0, tol, max_iter, alpha1=alpha1)


def _alpha1(alpha1):
    """``alpha1`` checked: None (the default :data:`ALPHA1`) or a finite number > 0."""
    return ALPHA1 if alpha1 is None else _positive("alpha1", alpha1, False)


def _sparse_composition(dic, y, s, method, lambda1, lambda2, n_nonzero,
                        outlier_threshold, reweight, x0, tol, max_iter, c=None, alpha1=ALPHA1,
                        trimmed0=None):
    xp = dic.xp
    z = xp.asarray(y.ravel())
    w = xp.asarray(np.repeat(s * s, dic.n_dims))
    if x0 is not None:
        x0 = xp.asarray(np.asarray(to_numpy(x0), dtype=np.float64))
        if x0.shape != (dic.n_atoms,):
            raise ValueError(f"x0 must have shape ({dic.n_atoms},), got {x0.shape}")
    if method == "l1":
        lam1 = _positive("lambda1", lambda1)
        lam2 = _positive("lambda2", lambda2)
        if c is None:                   # one pass over D serves every solve of this z
            c = dic.DF.T @ (w * z)
        if lam1 == "auto":
            lam1 = _auto_lambda1(dic, z, w, c, alpha1)
        # the reweighted solves run inside the kernel call of the last solve
        if lam2 == "auto":
            lam2, sol = _auto_lambda2(dic, z, w, lam1, x0, c, reweight, tol, max_iter)
        else:
            sol = solve_l1(dic, z, w, lam1, lam2, x0=x0, tol=tol, max_iter=max_iter, c=c,
                           reweight=reweight)
        info = {"kkt": sol.kkt, "reweight": int(reweight)}
    else:
        if isinstance(n_nonzero, str) and n_nonzero == "auto":
            n_nonzero = min(L0_NONZERO, dic.n_atoms)
        check_number("n_nonzero", n_nonzero, 1, dic.n_atoms, integer=True)
        if outlier_threshold is not None:
            outlier_threshold = _positive("outlier_threshold", outlier_threshold, False)
        sol = solve_l0(dic, z, w, int(n_nonzero), outlier_threshold, max_iter=max_iter,
                       outliers_init=trimmed0, c=c)
        lam1, lam2 = float("nan"), float("nan")
        info = {"threshold": sol.threshold, "cycled": sol.cycled,
                "trimming_capped": sol.capped}
    N, d = dic.n_points, dic.n_dims
    return CompositionResult(
        x=to_numpy(sol.x), e=to_numpy(sol.e).reshape(N, d),
        residual=to_numpy(sol.residual).reshape(N, d), objective=sol.objective,
        lambda1=float(lam1), lambda2=float(lam2), n_iter=sol.n_iter,
        converged=sol.converged, info=info)


@on_one_blas_thread
def sparse_shape_composition(shape, dictionary, weights=None, *, method="l1",
                             lambda1="auto", lambda2="auto", n_nonzero="auto",
                             outlier_threshold=None, reweight=3,
                             alignment="similarity", max_align_iter=20,
                             align_tol=ALIGN_TOL, x0=None, tol=1e-10, max_iter=100,
                             refit=None, transform0=None, alpha1=None, start="auto"):
    """Explain an observed shape by a sparse composition of training shapes.

    Alternates the alignment beta (weighted Procrustes of the shape onto the
    current reconstruction, gross-error vertices excluded) with the sparse
    solve of :func:`sparse_composition`.

    Parameters
    ----------
    shape : array_like, shape (N, d)
        Observed vertices in correspondence with the dictionary, in any frame
        (e.g. mm in patient space).
    dictionary : ShapeDictionary
    weights : array_like, shape (N,), optional
        Per-vertex visibility/confidence s_i >= 0; 0 marks a missing vertex.
    method, lambda1, lambda2, n_nonzero, outlier_threshold, reweight, x0, tol, max_iter
        See :func:`sparse_composition`. lambda values are in model units.
        Here ``reweight`` defaults to 3 (robust to gross errors); 0 gives the
        plain convex objective in every alignment round.
    alignment : {'similarity', 'rigid', 'affine', 'none'}
        Family of beta. 'none' assumes the shape is already in the model frame.
    max_align_iter : int
    align_tol : float
        Stop when aligned vertices move (RMS) less than ``align_tol`` times the
        RMS radius of the dictionary's mean between rounds (default
        :data:`ALIGN_TOL`, 1e-3: 0.04 mm on a kidney; it was 1e-4, which took
        up to four times the rounds at the same error). With ``method='l0'`` it takes
        :data:`L0_SETTLED_ROUNDS` (2) such rounds in a row: the trimmed set
        changes from round to round, and one small move can be followed by
        larger ones. L0's rounds also stop when a round's trimmed set and
        support come back from two or more rounds before (a cycle;
        ``info['alignment_cycle']`` gives its
        length), and the answer is then the cycle's round with the least
        median residual norm over the visible vertices (least median of
        squares). Without a fixed point or a cycle within ``max_align_iter``
        the last round is returned, as with L1 (a caller that iterates, such
        as segmentation, continues from it).
    refit : float in (0, 1], optional
        After the robust solve, fit again by SSC-L1 on its inliers alone (the
        vertices it found to be gross errors get weight 0 and stay fully
        overridden in e) with ``refit`` times the automatic (or given)
        ``lambda1``: the robust solve finds the gross errors, the refit keeps
        the detail a large L1 weight shrinks away. With ``method='l0'`` this
        is the hybrid "trimmed OMP finds the gross errors, a dense L1 fit of
        the inliers" (lambda2 as given, 'auto': from the inliers' residual);
        its first stage then runs at most :data:`HYBRID_FIRST_ROUNDS` (8)
        alignment rounds, the refit ``max_align_iter``.
        ``None``: one solve.
    transform0 : Transform, optional
        The first round's beta (e.g. the previous call's ``transform`` when
        the same organ is fitted again, as in the iterations of a
        segmentation: the rounds then start near their fixed point). Default:
        see ``start``. Ignored with ``alignment='none'``.
    start : {'auto', 'mean', 'l1'}
        The first round's beta when no ``transform0`` is given: 'mean', the
        Procrustes of the whole shape onto the dictionary's mean; 'l1', the
        pose of an SSC-L1 solve of the shape (its reweighted gross errors keep
        the leaks out of the pose). 'auto' (default): 'l1' for ``method='l0'``,
        'mean' for 'l1'. Trimming is discrete, and from a pose that the gross
        errors pulled off, trimmed OMP's rounds settle on (or cycle among)
        trimmed sets that hold part of the leak: on synthetic shapes with 15 %
        of the vertices displaced in patches and a random similarity, the
        hybrid from the mean's pose reconstructed 9 of 40 validation shapes
        with a mean error above 1 mm, from SSC-L1's pose none
        (``bench/results/l0_start.json``). Each of trimmed OMP's rounds starts
        trimming from no vertex (see :data:`L0_TRIM_FROM_START`).
    alpha1 : float > 0, optional
        Relative weight of an automatic ``lambda1`` (see :func:`sparse_composition`;
        default :data:`ALPHA1`). With ``refit``, a large ``alpha1`` makes the first
        stage keep few atoms, so that it cannot follow a displaced patch and leaves
        it to e, and a small ``refit`` fits the inliers closely: the dictionary's
        hybrid (:func:`solver_options`).

    Returns
    -------
    SSCResult
    """
    dic = dictionary
    if not isinstance(dic, ShapeDictionary):
        raise TypeError(f"dictionary must be a ShapeDictionary, got {type(dic).__name__}")
    check_choice("method", method, METHODS)
    check_choice("alignment", alignment, ("similarity", "rigid", "affine", "none"))
    check_number("max_align_iter", max_align_iter, 1, integer=True)
    check_number("reweight", reweight, 0, integer=True)
    check_choice("start", start, STARTS)
    if refit is not None:
        check_number("refit", refit, 0.0, 1.0, low_open=True)
    alpha1 = _alpha1(alpha1)
    y = _check_shape(shape, dic)
    s = _check_vertex_weights(weights, dic.n_points)
    visible = s > 0
    w_align = s * s
    trimmed0 = None         # L0: the vertices each round's trimming starts from
    # this solve's alignment rounds (the hybrid's first stage: fewer, its refit realigns)
    n_rounds = min(max_align_iter, HYBRID_FIRST_ROUNDS) if method == "l0" and refit is not None \
        else max_align_iter
    if alignment == "none":
        beta = Transform.identity(dic.n_dims)
        started = "none"
    elif transform0 is not None:
        if not isinstance(transform0, Transform) or transform0.ndim != dic.n_dims:
            raise ValueError(f"transform0 must be a {dic.n_dims}-D Transform, "
                             f"got {transform0!r}")
        beta = transform0
        started = "transform0"
    elif start == "l1" or (start == "auto" and method == "l0"):
        started = "l1"
        first = sparse_shape_composition(
            y, dic, s, method="l1", alignment=alignment,
            max_align_iter=min(n_rounds, L0_START_ROUNDS or n_rounds),
            align_tol=align_tol, tol=tol, max_iter=max_iter, reweight=L0_START_REWEIGHT)
        beta = first.transform
        if method == "l0" and L0_TRIM_FROM_START:   # where each round's trimming starts
            trimmed0 = first.overridden
    else:
        started = "mean"
        beta = procrustes(y, dic.mean, w_align, kind=alignment)
    size = dic.mean_size
    # D^T W z of a round's z = beta(y), given beta and z: for many rounds
    # every round's from one pass over D (z is linear in y; SSC-L0 shares that
    # pass with the SSC-L1 solve it starts from); without alignment the one
    # round needs only D^T W y (one column instead of twelve)
    if method != "l1" and (alignment == "none" or n_rounds <= DIRECT_ROUNDS
                           or not L0_SHARED_MOMENTS):
        def correlation(beta, z):      # trimmed OMP makes its one pass
            return None
    elif alignment == "none":
        c_aligned = dic.correlation_aligned(y, w_align)

        def correlation(beta, z):
            return c_aligned
    elif n_rounds > DIRECT_ROUNDS or dic._lookup(False, y, w_align) is not None:
        moments = dic.moments(y, w_align)

        def correlation(beta, z):
            return dic.correlation(moments, beta)
    else:
        # few rounds: a matrix-vector pass per round costs less than the
        # moments' d*d + d columns (a segmentation iteration: 2 or 3 rounds)
        def correlation(beta, z):
            return dic.correlation_aligned(z, w_align)
    lam1, lam2 = lambda1, lambda2
    sol = None
    converged_align = alignment == "none"
    rounds = []         # L0: (trimmed set and support, LMedS score, beta, solution) per round
    radius = size / np.sqrt(dic.n_points)   # RMS radius of the mean: the unit of a move
    last_move = None    # the last round's move, in radii
    calm = 0            # consecutive rounds that moved at most align_tol
    need = L0_SETTLED_ROUNDS if method == "l0" else 1
    k = 0
    z = beta.apply(y)       # the round's aligned shape, carried from the move that made it
    for k in range(1, n_rounds + 1):
        sol = _sparse_composition(dic, z, s, method, lam1, lam2, n_nonzero,
                                  outlier_threshold, reweight, x0, tol, max_iter,
                                  c=correlation(beta, z), alpha1=alpha1, trimmed0=trimmed0)
        if method == "l0" and alignment != "none":
            # trimming is discrete: the rounds can go round a cycle of trimmed
            # sets (seen on held-out kidneys: alignments 6 mm apart, period 6)
            # instead of settling; then the round whose trimmed fit has the
            # least median residual (LMedS) among the cycle's is the answer
            key = (np.any(sol.e != 0, axis=1)[visible].tobytes(), (sol.x != 0).tobytes())
            score = float(np.median(np.linalg.norm(sol.residual, axis=1)[visible]))
            earlier = [i for i, r in enumerate(rounds) if r[0] == key]
            rounds.append((key, score, beta, sol))
            if earlier and earlier[-1] < len(rounds) - 2:
                cycle = rounds[earlier[-1]:]
                _, _, beta, sol = min(cycle, key=lambda r: r[1])
                z = beta.apply(y)
                sol.info["alignment_cycle"] = len(cycle) - 1
                converged_align = True
                break
        # (warm-starting the L0 trimmed set across rounds was tried: vertices
        # trimmed under an early, poor alignment then stay trimmed; each round
        # restarts the trimming instead; from the SSC-L1 start's gross errors, a
        # set fixed before the rounds, it was faster but stuck to the start's
        # false alarms, L0_TRIM_FROM_START. Warm-starting only the
        # rounds after a move under 3e-3 radii was tried too, 2026-12-04: 1.5-2x
        # faster, better on the tuning split, but on the report split one kidney
        # at 30 % displaced went from 1.19 to 4.24 mm, bench/README.md)
        if method == "l1":  # keep penalties fixed after the first 'auto' round
            lam1, lam2 = sol.lambda1, sol.lambda2
        x0 = sol.x if method == "l1" else None
        if alignment == "none":
            break
        recon = _compose(dic, sol.x)
        # fix the gauge: beta's scale and the size of D x trade off freely
        # (and the L1 term rewards shrinking both), so the Procrustes target
        # is D x rescaled to the model's centroid size, as in ASM
        rc = recon.mean(axis=0)
        rsize = float(np.sqrt(np.sum((recon - rc) ** 2)))
        if rsize > 0:
            recon = rc + (recon - rc) * (size / rsize)
        inlier = visible & ~np.any(sol.e != 0, axis=1)
        wk = np.where(inlier, w_align, 0.0)
        if np.count_nonzero(wk) < dic.n_dims + 1:
            wk = w_align
        new_beta = procrustes(y, recon, wk, kind=alignment)
        z_new = new_beta.apply(y)
        move = np.sqrt(np.mean(np.sum((z_new - z) ** 2, axis=1)))
        last_move = float(move / radius)
        beta, z = new_beta, z_new
        calm = calm + 1 if last_move <= align_tol else 0
        if calm >= need:
            converged_align = True
            sol = _sparse_composition(dic, z, s, method, lam1, lam2, n_nonzero,
                                      outlier_threshold, reweight, x0, tol, max_iter,
                                      c=correlation(beta, z), alpha1=alpha1,
                                      trimmed0=trimmed0)
            break
    recon_model = _compose(dic, sol.x)
    e = sol.e
    overridden = np.any(e != 0, axis=1) & visible
    if refit is not None and np.count_nonzero(visible & ~overridden) > dic.n_dims:
        res = _refit_inliers(y, dic, s, overridden, sol, beta, method, refit, lambda2, reweight,
                             alignment, max_align_iter, align_tol, tol, max_iter, alpha1)
        res.info["start"] = started
        return res
    inv = beta.inverse()
    info = {**sol.info, "solver_converged": bool(sol.converged), "start": started}
    if last_move is not None:
        info["alignment_move"] = last_move
    return SSCResult(
        x=sol.x, error=e, error_norm=np.linalg.norm(e, axis=1) / beta.scale,
        overridden=overridden, visible=visible, transform=beta, aligned=z,
        reconstruction=inv.apply(recon_model), objective=sol.objective,
        lambda1=sol.lambda1, lambda2=sol.lambda2, n_iter=sol.n_iter,
        n_align_iter=k, converged=bool(sol.converged and converged_align),
        method=method, info=info,
    )


def _compose(dic, x):
    """``D x`` as an (N, d) shape on the host, from x's nonzero atoms only."""
    return to_numpy(dic.matvec(dic.xp.asarray(x))).reshape(dic.n_points, dic.n_dims)


def _refit_inliers(y, dic, s, outliers, sol, beta0, method, refit, lambda2, reweight,
                   alignment, max_align_iter, align_tol, tol, max_iter, alpha1=ALPHA1):
    """Second stage of ``refit``: SSC-L1 on the first stage's inliers with a
    smaller lambda1, its alignment rounds started from the first stage's
    ``beta0``; the first stage's gross errors stay in e (their residual)."""
    s2 = np.where(outliers, 0.0, s)
    if method == "l1":              # an L1 first stage: its penalties
        lam1, lam2 = sol.lambda1 * refit, sol.lambda2
    else:                           # L0 (trimming): lambda1 automatic on the inliers
        z = procrustes(y, dic.mean, s2 * s2, kind=alignment).apply(y) \
            if alignment != "none" else y
        w = dic.xp.asarray(np.repeat(s2 * s2, dic.n_dims))
        lam1, lam2 = _auto_lambda1(dic, dic.xp.asarray(z.ravel()), w, None, alpha1) * refit, lambda2
    res = sparse_shape_composition(
        y, dic, s2, method="l1", lambda1=lam1, lambda2=lam2, reweight=reweight,
        alignment=alignment, max_align_iter=max_align_iter, align_tol=align_tol,
        x0=sol.x if method == "l1" else None, tol=tol, max_iter=max_iter, transform0=beta0)
    beta, z = res.transform, res.aligned
    recon_model = _compose(dic, res.x)
    e = np.where(outliers[:, None], z - recon_model, res.error)
    visible = s > 0
    return SSCResult(
        x=res.x, error=e, error_norm=np.linalg.norm(e, axis=1) / beta.scale,
        overridden=(outliers | res.overridden) & visible, visible=visible,
        transform=beta, aligned=z, reconstruction=res.reconstruction,
        objective=res.objective, lambda1=res.lambda1, lambda2=res.lambda2,
        n_iter=sol.n_iter + res.n_iter, n_align_iter=res.n_align_iter,
        converged=res.converged, method=method,
        info={**res.info, "refit": float(refit),
              "first_stage_outliers": int(np.count_nonzero(outliers)),
              "trimming_capped": bool(sol.info.get("trimming_capped", False))})


class SparseShapeComposition:
    """Estimator facade: ``fit`` training shapes, ``transform`` observations.

    Parameters
    ----------
    method, lambda1, lambda2, n_nonzero, outlier_threshold, reweight, alignment, refit, alpha1
        As in :func:`sparse_shape_composition`.
    warm_start : bool
        Reuse the previous x as the starting point (e.g. across the
        iterations of a segmentation).
    backend : {'auto', 'numpy', 'numba', 'cupy'}, optional

    Attributes
    ----------
    dictionary_ : ShapeDictionary
    gpa_ : GPAResult
    """

    def __init__(self, method="l1", lambda1="auto", lambda2="auto", n_nonzero="auto",
                 outlier_threshold=None, reweight=3, alignment="similarity",
                 warm_start=False, backend=None, refit=None, alpha1=None):
        self.method = method
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.n_nonzero = n_nonzero
        self.outlier_threshold = outlier_threshold
        self.reweight = reweight
        self.alignment = alignment
        self.warm_start = warm_start
        self.backend = backend
        self.refit = refit
        self.alpha1 = alpha1

    def fit(self, shapes, weights=None):
        """Align training shapes (M, N, d) by GPA and build the dictionary."""
        gpa = generalized_procrustes(shapes, weights,
                                     kind="similarity" if self.alignment == "none" else self.alignment)
        self.gpa_ = gpa
        self.dictionary_ = ShapeDictionary(gpa.aligned, gpa.mean, backend=self.backend)
        self._x = None
        return self

    def transform(self, shape, weights=None):
        """Return the :class:`SSCResult` for one observed shape (N, d)."""
        if not hasattr(self, "dictionary_"):
            raise RuntimeError("call fit() before transform()")
        res = sparse_shape_composition(
            shape, self.dictionary_, weights, method=self.method, lambda1=self.lambda1,
            lambda2=self.lambda2, n_nonzero=self.n_nonzero,
            outlier_threshold=self.outlier_threshold, reweight=self.reweight,
            alignment=self.alignment, refit=self.refit, alpha1=self.alpha1,
            x0=self._x if self.warm_start else None)
        if self.warm_start and self.method == "l1":
            self._x = res.x
        return res
