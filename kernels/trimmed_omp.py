"""Trimmed OMP: the SSC-L0 inner solve.

Alternates, for a shape ``z`` (n = N d coordinates) with row weights ``w``:

1. ``x`` = Batch-OMP with at most ``k`` atoms on the kept rows: the Gram
   ``H = D^T W D - D_O^T W_O D_O`` and ``b = D^T W z - D_O^T W_O z_O`` for the
   trimmed rows O (the coordinates of the trimmed vertices);
2. trimmed vertices = the visible ones whose residual norm exceeds the
   threshold (fixed, or ``threshold_factor`` times the median visible
   residual norm, re-estimated each round), at most
   ``max_outlier_fraction`` of the visible vertices (the largest residuals);

until the trimmed set repeats: the last one (converged) or an earlier one (a
cycle, which further rounds would only go around).

The Gram of the kept rows lives in state arrays that the caller keeps from
call to call (:func:`new_state`; the alignment rounds of a shape end near each
other's sets), in two slots: ``rows`` (2, n) bool, the trimmed rows of each
slot; ``diag`` (2, K), the diagonal of H; ``cols`` (K, K, 2), Fortran order,
the columns of H held so far, marked in ``held`` (2, K) bool; ``slot`` (2,)
int64, the current slot and whether the other one holds a saved set. Moving
to another set updates ``diag`` and the held columns by the rows that joined
and left (``|delta| K`` work per held column). When that is more rows than
starting from ``D^T W D``, the current slot is kept as the saved one and the
other starts from ``D^T W D``; a later set nearer the saved one than the
current one goes back to it (a cold start of the trimming jumps away from the
last round's final set, and its later sets come back near it). A column the
OMP asks for and the slot lacks is computed from the trimmed rows. The values
equal the direct products up to rounding.

Twins (the same arguments and results):

* :func:`trimmed_omp_numpy`: the reference, array code for any namespace
  (NumPy in CI, CuPy on a GPU);
* :func:`trimmed_omp_numba`: the whole alternation compiled (releases the
  GIL). Its OMP solves the selected atoms' system by a Cholesky factor grown
  one atom at a time instead of a fresh solve per step: the same choices and
  coefficients up to rounding.

Both return ``(x, r, trimmed, threshold, n_iter, converged, cycled, capped)``:
the coefficients (K,), the residual ``z - D x`` (n,), the trimmed vertices
(N,) bool, the residual-norm threshold of the last round, the rounds, whether
the set repeated itself, whether it came back to an earlier one, and whether
the last round had more candidates than ``max_outlier_fraction`` allows.
"""

from __future__ import annotations

import numpy as np

from .gram_lasso import _xp

try:
    import numba
except Exception:  # pragma: no cover
    numba = None


# --------------------------------------------------------------------------
# reference (array namespace)
# --------------------------------------------------------------------------

def omp_columns_numpy(column, diag, b, k, atom_tol=1e-12):
    """Batch-OMP given ``column(j) -> H[:, j]`` and ``diag(H)``: greedy
    k-atom least squares (stops early when no atom correlates any more)."""
    xp = _xp(b)
    K = b.shape[0]
    norm = xp.sqrt(xp.maximum(diag, 1e-300))
    scale = float(xp.max(xp.abs(b))) if K else 0.0
    S = []
    HS = xp.empty((K, min(k, K)))                   # the selected columns
    corr = b.copy()
    xs = xp.zeros(0)
    for _ in range(min(k, K)):
        score = xp.abs(corr) / norm
        if S:
            score[xp.asarray(S)] = -1.0
        j = int(xp.argmax(score))
        if float(xp.abs(corr[j])) <= atom_tol * max(scale, 1e-300):
            break
        HS[:, len(S)] = column(j)
        S.append(j)
        Sa = xp.asarray(S)
        H_SS, b_S = HS[Sa, :len(S)], b[Sa]
        try:                # symmetric positive definite unless atoms repeat
            xs = xp.linalg.solve(H_SS, b_S)
            ok = bool(xp.all(xp.isfinite(xs)))
        except np.linalg.LinAlgError:     # (CuPy raises NumPy's too)
            ok = False
        if not ok:
            xs = xp.linalg.lstsq(H_SS, b_S, rcond=None)[0]
        corr = b - HS[:, :len(S)] @ xs
    x = xp.zeros(K)
    if S:
        x[xp.asarray(S)] = xs
    return x


def new_state(n, K, xp=np):
    """Empty state of the kept rows' Gram for n rows and K atoms: ``(rows,
    diag, cols, held, slot)`` (module docstring)."""
    return (xp.zeros((2, n), dtype=bool), xp.zeros((2, K)),
            xp.zeros((K, K, 2), order="F"), xp.zeros((2, K), dtype=bool),
            xp.zeros(2, dtype=np.int64))


def _move_xp(D, w, idx, sign, diag, cols, held, xp):
    """Rows ``idx`` into (sign -1) or out of (sign +1) the trimmed set of one
    slot (``diag`` (K,), ``cols`` (K, K), ``held`` (K,))."""
    if idx.size == 0:
        return
    Dr, wr = D[idx], w[idx]
    diag += sign * xp.sum(wr[:, None] * Dr * Dr, axis=0)
    J = xp.flatnonzero(held)
    if J.size:
        cols[:, J] += sign * (Dr.T @ (wr[:, None] * Dr[:, J]))


def trimmed_gram_set_rows(D, w, GW, trim, rows, diag, cols, held, slot):
    """Make ``trim`` (n,) bool the trimmed set of the kept rows' Gram state
    (module docstring; updated in place)."""
    xp = _xp(diag)
    c = int(slot[0])
    o = 1 - c
    change = int(xp.count_nonzero(trim != rows[c]))
    if change == 0:
        return
    n_new = int(xp.count_nonzero(trim))
    if int(slot[1]) and int(xp.count_nonzero(trim != rows[o])) < min(change, n_new):
        c = o                                   # back near the saved set
    elif change > n_new:                        # cheaper from D^T W D
        if bool(xp.any(rows[c])):               # keep this set's state as the saved one
            slot[1] = 1
            c = o
        rows[c] = False
        diag[c] = xp.diag(GW)
        held[c] = False
    slot[0] = c
    _move_xp(D, w, xp.flatnonzero(trim & ~rows[c]), -1.0, diag[c], cols[:, :, c], held[c], xp)
    _move_xp(D, w, xp.flatnonzero(rows[c] & ~trim), 1.0, diag[c], cols[:, :, c], held[c], xp)
    rows[c] = trim


def trimmed_gram_column(D, w, GW, j, rows, cols, held, slot, trimmed_rows=None):
    """Column ``j`` of the kept rows' Gram (module docstring): held, or
    computed from the trimmed rows and held from now on. ``trimmed_rows``,
    a dict, keeps the trimmed rows of D and w gathered for the next column of
    the same set."""
    c = int(slot[0])
    if not bool(held[c, j]):
        got = None if trimmed_rows is None else trimmed_rows.get("rows")
        if got is None:
            idx = _xp(cols).flatnonzero(rows[c])
            got = (D[idx], w[idx])
            if trimmed_rows is not None:
                trimmed_rows["rows"] = got
        Dr, wr = got
        cols[:, j, c] = GW[:, j] - Dr.T @ (wr * Dr[:, j])
        held[c, j] = True
    return cols[:, j, c]


def trimmed_omp_numpy(D, DF, GW, c, z, w, k, d, threshold, threshold_factor,
                      max_outlier_fraction, max_iter, trimmed0, rows, diag, cols, held, slot):
    """Trimmed OMP; array code for NumPy or CuPy.

    Parameters
    ----------
    D, DF : ndarray, shape (n, K)
        The dictionary in C and Fortran order (the same values).
    GW : ndarray, shape (K, K)
        ``D^T W D``.
    c : ndarray, shape (K,)
        ``D^T W z``.
    z, w : ndarray, shape (n,)
        The shape and its row weights (a vertex is visible when any of its
        ``d`` coordinates has weight > 0).
    k : int
        Atoms at most.
    d : int
        Coordinates per vertex.
    threshold : float
        Residual-norm threshold; NaN re-estimates it each round as
        ``threshold_factor`` times the median visible residual norm.
    threshold_factor, max_outlier_fraction : float
    max_iter : int
    trimmed0 : ndarray of bool, shape (N,)
        The trimmed vertices to start from.
    rows, diag, cols, held, slot : ndarray
        The state of the kept rows' Gram (module docstring, :func:`new_state`),
        updated in place.
    """
    xp = _xp(z)
    n = z.shape[0]
    N = n // d
    wz = w * z
    b_rows = xp.zeros(n, dtype=bool)             # the rows b is computed for
    b = c
    visible = w.reshape(N, d).max(axis=1) > 0
    n_vis = int(xp.count_nonzero(visible))
    out_v = xp.asarray(trimmed0, dtype=bool).copy()
    converged = cycled = capped = False
    seen = {_key(out_v)}                           # the trimmed sets met so far
    thr = float("nan")
    it = 0
    x, r = xp.zeros(GW.shape[0]), z.copy()      # (what no round leaves with max_iter 0)
    for it in range(1, max_iter + 1):
        trim = xp.repeat(out_v & visible, d)
        if bool(xp.any(trim)):
            # b = c - D_O^T (w z)_O, moved with the rows that joined and left
            join = xp.flatnonzero(trim & ~b_rows)
            leave = xp.flatnonzero(b_rows & ~trim)
            if join.size + leave.size > int(xp.count_nonzero(trim)):
                b, join, leave = c, xp.flatnonzero(trim), join[:0]
            if join.size:
                b = b - D[join].T @ wz[join]
            if leave.size:
                b = b + D[leave].T @ wz[leave]
            b_rows = trim
            trimmed_gram_set_rows(D, w, GW, trim, rows, diag, cols, held, slot)
            gathered = {}
            x = omp_columns_numpy(
                lambda j: trimmed_gram_column(D, w, GW, j, rows, cols, held, slot, gathered),
                diag[int(slot[0])], b, k)
        else:
            x = omp_columns_numpy(lambda j: GW[:, j], xp.diag(GW), c, k)
        r = z - DF @ x
        rn = xp.sqrt(xp.sum(r.reshape(N, d) ** 2, axis=1))
        thr = float(threshold_factor * float(xp.median(rn[visible]))) \
            if threshold != threshold else float(threshold)
        cand = visible & (rn > thr)
        cap = int(max_outlier_fraction * n_vis)
        capped = int(xp.count_nonzero(cand)) > cap
        if capped:
            order = xp.argsort(-xp.where(visible, rn, -1.0))
            cand = xp.zeros(N, dtype=bool)
            cand[order[:cap]] = True
        if bool(xp.array_equal(cand, out_v)):
            converged = True
            break
        key = _key(cand)
        if key in seen:             # a cycle: the same sets would come round again
            cycled = True
            break
        seen.add(key)
        out_v = cand
    return x, r, out_v, thr, it, converged, cycled, capped


def _key(v):
    return (v.get() if hasattr(v, "get") else np.asarray(v)).tobytes()


# --------------------------------------------------------------------------
# Numba twin
# --------------------------------------------------------------------------

if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _set_rows_nb(D, w, GW, trim, n_trim, rows, diag, cols, held,
                     slot):  # pragma: no cover - jitted
        n, K = D.shape
        c = slot[0]
        o = 1 - c
        change = 0
        for i in range(n):
            if trim[i] != rows[c, i]:
                change += 1
        if change == 0:
            return
        near_saved = False
        if slot[1] == 1:
            other = 0
            for i in range(n):
                if trim[i] != rows[o, i]:
                    other += 1
            near_saved = other < min(change, n_trim)
        if near_saved:
            c = o
        elif change > n_trim:                   # cheaper from D^T W D
            some = False
            for i in range(n):
                if rows[c, i]:
                    some = True
                    break
            if some:
                slot[1] = 1
                c = o
            for i in range(n):
                rows[c, i] = False
            for a in range(K):
                diag[c, a] = GW[a, a]
                held[c, a] = False
        slot[0] = c
        n_held = 0
        held_idx = np.empty(K, np.int64)
        for a in range(K):
            if held[c, a]:
                held_idx[n_held] = a
                n_held += 1
        # the rows that move, signed and weighted: the held columns take one
        # matrix product (BLAS) instead of a row-by-row update
        moved = np.empty(n, np.int64)
        n_moved = 0
        for i in range(n):
            if trim[i] != rows[c, i]:
                moved[n_moved] = i
                n_moved += 1
            rows[c, i] = trim[i]
        if n_moved == 0:
            return
        Dm = np.empty((n_moved, K))
        Am = np.empty((n_moved, n_held))
        for t in range(n_moved):
            i = moved[t]
            sw = -w[i] if trim[i] else w[i]
            for a in range(K):
                Dm[t, a] = D[i, a]
                diag[c, a] += sw * D[i, a] * D[i, a]
            for h in range(n_held):
                Am[t, h] = sw * D[i, held_idx[h]]
        if n_held:
            U = np.dot(Dm.T, Am)
            for h in range(n_held):
                j = held_idx[h]
                for a in range(K):
                    cols[a, j, c] += U[a, h]

    @numba.njit(cache=True, nogil=True)
    def _column_nb(D, w, GW, trim_idx, j, cols, held, c):  # pragma: no cover - jitted
        K = D.shape[1]
        if not held[c, j]:
            for a in range(K):
                cols[a, j, c] = GW[a, j]
            for t in range(trim_idx.shape[0]):
                i = trim_idx[t]
                f = w[i] * D[i, j]
                if f != 0.0:
                    for a in range(K):
                        cols[a, j, c] -= f * D[i, a]
            held[c, j] = True

    @numba.njit(cache=True, nogil=True)
    def _omp_nb(D, w, GW, trim_idx, trimmed, diag, cols, held, c, b, k,
                atom_tol):  # pragma: no cover - jitted
        """Batch-OMP on the kept rows' Gram (``trimmed``) or on GW, with a
        Cholesky factor of the selected atoms' system grown atom by atom."""
        K = b.shape[0]
        kk = min(k, K)
        norm = np.empty(K)
        scale = 0.0
        for a in range(K):
            norm[a] = np.sqrt(max(diag[a], 1e-300))
            scale = max(scale, abs(b[a]))
        tol = atom_tol * max(scale, 1e-300)
        S = np.empty(kk, np.int64)
        chosen = np.zeros(K, np.bool_)
        HS = np.empty((K, kk))
        L = np.zeros((kk, kk))
        corr = b.copy()
        xs = np.zeros(0)
        chol = True
        s = 0
        for _ in range(kk):
            j = -1
            best = -1.0
            for a in range(K):
                if not chosen[a]:
                    v = abs(corr[a]) / norm[a]
                    if v > best:
                        best, j = v, a
            if j < 0 or abs(corr[j]) <= tol:
                break
            if trimmed:
                _column_nb(D, w, GW, trim_idx, j, cols, held, c)
                for a in range(K):
                    HS[a, s] = cols[a, j, c]
            else:
                for a in range(K):
                    HS[a, s] = GW[a, j]
            S[s] = j
            chosen[j] = True
            s += 1
            bS = np.empty(s)
            for p in range(s):
                bS[p] = b[S[p]]
            if chol:
                # the new row of L: L[:s-1,:s-1] l = H[S[:s-1], j]
                q = s - 1
                for p in range(q):
                    acc = HS[S[p], q]
                    for t in range(p):
                        acc -= L[p, t] * L[q, t]
                    L[q, p] = acc / L[p, p]
                d2 = HS[j, q]
                for t in range(q):
                    d2 -= L[q, t] * L[q, t]
                if d2 > 1e-14 * max(HS[j, q], 1e-300) and np.isfinite(d2):
                    L[q, q] = np.sqrt(d2)
                else:                  # (near) repeated atoms: least squares from now on
                    chol = False
            if chol:
                y = np.empty(s)
                for p in range(s):
                    acc = bS[p]
                    for t in range(p):
                        acc -= L[p, t] * y[t]
                    y[p] = acc / L[p, p]
                xs = np.empty(s)
                for p in range(s - 1, -1, -1):
                    acc = y[p]
                    for t in range(p + 1, s):
                        acc -= L[t, p] * xs[t]
                    xs[p] = acc / L[p, p]
            else:
                H_SS = np.empty((s, s))
                for p in range(s):
                    for t in range(s):
                        H_SS[p, t] = HS[S[p], t]
                xs = np.linalg.lstsq(H_SS, bS)[0]
            for a in range(K):
                acc = b[a]
                for p in range(s):
                    acc -= HS[a, p] * xs[p]
                corr[a] = acc
        x = np.zeros(K)
        for p in range(s):
            x[S[p]] = xs[p]
        return x

    @numba.njit(cache=True, nogil=True)
    def _trimmed_omp_nb(D, DF, GW, c, z, w, k, d, threshold, threshold_factor,
                        max_outlier_fraction, max_iter, trimmed0, rows, diag, cols,
                        held, slot):  # pragma: no cover - jitted
        n, K = D.shape
        N = n // d
        wz = w * z
        visible = np.zeros(N, np.bool_)
        for v in range(N):
            for a in range(d):
                if w[v * d + a] > 0:
                    visible[v] = True
        n_vis = 0
        for v in range(N):
            if visible[v]:
                n_vis += 1
        cap = int(max_outlier_fraction * n_vis)
        out_v = trimmed0.copy()
        seen = np.zeros((max_iter + 1, N), np.bool_)
        seen[0] = out_v
        n_seen = 1
        b = c.copy()
        b_rows = np.zeros(n, np.bool_)
        trim = np.zeros(n, np.bool_)
        diag_gw = np.empty(K)
        for a in range(K):
            diag_gw[a] = GW[a, a]
        x = np.zeros(K)
        r = z.copy()
        rn = np.zeros(N)
        cand = np.zeros(N, np.bool_)
        thr = np.nan
        converged = cycled = capped = False
        it = 0
        for it in range(1, max_iter + 1):
            n_trim = 0
            for i in range(n):
                trim[i] = out_v[i // d] and visible[i // d]
                if trim[i]:
                    n_trim += 1
            if n_trim > 0:
                change = 0
                for i in range(n):
                    if trim[i] != b_rows[i]:
                        change += 1
                if change > n_trim:
                    b[:] = c
                    b_rows[:] = False
                for i in range(n):
                    if trim[i] != b_rows[i]:
                        f = -wz[i] if trim[i] else wz[i]
                        if f != 0.0:
                            for a in range(K):
                                b[a] += f * D[i, a]
                        b_rows[i] = trim[i]
                _set_rows_nb(D, w, GW, trim, n_trim, rows, diag, cols, held, slot)
                trim_idx = np.flatnonzero(trim)
                x = _omp_nb(D, w, GW, trim_idx, True, diag[slot[0]], cols, held, slot[0],
                            b, k, 1e-12)
            else:
                x = _omp_nb(D, w, GW, np.zeros(0, np.int64), False, diag_gw, cols, held, 0,
                            c, k, 1e-12)
            r[:] = z
            for a in range(K):
                if x[a] != 0.0:
                    for i in range(n):
                        r[i] -= x[a] * DF[i, a]
            m = 0
            vis_rn = np.empty(n_vis)
            for v in range(N):
                acc = 0.0
                for a in range(d):
                    acc += r[v * d + a] * r[v * d + a]
                rn[v] = np.sqrt(acc)
                if visible[v]:
                    vis_rn[m] = rn[v]
                    m += 1
            if threshold != threshold:
                thr = threshold_factor * np.median(vis_rn)
            else:
                thr = threshold
            n_cand = 0
            for v in range(N):
                cand[v] = visible[v] and rn[v] > thr
                if cand[v]:
                    n_cand += 1
            capped = n_cand > cap
            if capped:
                key = np.empty(N)
                for v in range(N):
                    key[v] = -rn[v] if visible[v] else 1.0
                order = np.argsort(key)
                cand[:] = False
                for p in range(cap):
                    cand[order[p]] = True
            same = True
            for v in range(N):
                if cand[v] != out_v[v]:
                    same = False
                    break
            if same:
                converged = True
                break
            for q in range(n_seen):
                hit = True
                for v in range(N):
                    if seen[q, v] != cand[v]:
                        hit = False
                        break
                if hit:
                    cycled = True
                    break
            if cycled:
                break
            seen[n_seen] = cand
            n_seen += 1
            out_v[:] = cand
        return x, r, out_v, thr, it, converged, cycled, capped


def trimmed_omp_numba(D, DF, GW, c, z, w, k, d, threshold, threshold_factor,
                      max_outlier_fraction, max_iter, trimmed0, rows, diag, cols, held, slot):
    """Numba twin of :func:`trimmed_omp_numpy` (same arguments and results; the
    state arrays are NumPy arrays as :func:`new_state` makes them)."""
    if numba is None:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    if not (rows.dtype == np.bool_ and held.dtype == np.bool_ and diag.dtype == np.float64
            and cols.dtype == np.float64 and cols.flags.f_contiguous
            and slot.dtype == np.int64):
        raise ValueError("the state arrays must be as new_state makes them (bool rows and "
                         "held, float64 diag, Fortran-ordered float64 cols, int64 slot): "
                         "they are updated in place")
    x, r, out_v, thr, it, conv, cyc, cap = _trimmed_omp_nb(
        np.ascontiguousarray(D, dtype=np.float64), np.asfortranarray(DF, dtype=np.float64),
        np.asarray(GW, dtype=np.float64), np.asarray(c, dtype=np.float64),
        np.asarray(z, dtype=np.float64), np.asarray(w, dtype=np.float64), int(k), int(d),
        float(threshold), float(threshold_factor), float(max_outlier_fraction),
        int(max_iter), np.asarray(trimmed0, dtype=np.bool_), rows, diag, cols, held, slot)
    return x, r, out_v, float(thr), int(it), bool(conv), bool(cyc), bool(cap)
