// Newton systems of the batched SSC-L1 solve, one shape per block row:
//   H[m] = G[S_m, S_m] - sum_r w[O_mr] D[O_mr, S_m]^T D[O_mr, S_m]   (s x s)
//   bc[m] = sum_r v[m, r] D[O_mr, S_m]                                 (s)
// O padded with n (no row), S padded with K (no atom: H gets 1 on its
// diagonal and 0 elsewhere, bc 0). Grid (M, ceil(s*s / blockDim)); each
// thread owns one (a, b) entry; the rows of O are read in tiles of TR rows
// (their s entries) through shared memory; blocks with blockIdx.y == 0 also
// sum bc. Reference: kernels/outlier_hessian.py (xp), Numba twin there.
#define TR 16
#define MAX_S_PER_THREAD 4

extern "C" __global__ void outlier_hessian(
    const double* __restrict__ D, const double* __restrict__ G,
    const double* __restrict__ w, const long long* __restrict__ Oidx,
    const long long* __restrict__ Sidx, const double* __restrict__ v,
    double* __restrict__ H, double* __restrict__ bc, int n, int K, int o, int s)
{
    extern __shared__ double tile[];            // TR * s
    __shared__ double wt[TR];
    __shared__ double vt[TR];
    const int m = blockIdx.x;
    const int p = blockIdx.y * blockDim.x + threadIdx.x;
    const long long* Om = Oidx + (long long)m * o;
    const long long* Sm = Sidx + (long long)m * s;
    const bool valid = p < s * s;
    const int a = valid ? p / s : 0;
    const int b = valid ? p % s : 0;
    const bool first = blockIdx.y == 0;
    double acc = 0.0;
    double accb[MAX_S_PER_THREAD] = {0.0, 0.0, 0.0, 0.0};
    for (int r0 = 0; r0 < o; r0 += TR) {
        for (int q = threadIdx.x; q < TR * s; q += blockDim.x) {
            const int t = q / s, c = q % s, r = r0 + t;
            const long long row = r < o ? Om[r] : n;
            const long long col = Sm[c];
            tile[q] = (row < n && col < K) ? D[row * K + col] : 0.0;
        }
        for (int t = threadIdx.x; t < TR; t += blockDim.x) {
            const int r = r0 + t;
            const long long row = r < o ? Om[r] : n;
            wt[t] = row < n ? w[row] : 0.0;
            vt[t] = r < o ? v[(long long)m * o + r] : 0.0;
        }
        __syncthreads();
        if (valid) {
            for (int t = 0; t < TR; ++t) acc += wt[t] * tile[t * s + a] * tile[t * s + b];
        }
        if (first) {
            for (int k = 0; k < MAX_S_PER_THREAD; ++k) {
                const int c = threadIdx.x + k * blockDim.x;
                if (c < s) {
                    for (int t = 0; t < TR; ++t) accb[k] += tile[t * s + c] * vt[t];
                }
            }
        }
        __syncthreads();
    }
    if (valid) {
        const long long ca = Sm[a], cb = Sm[b];
        H[((long long)m * s + a) * s + b] =
            (ca < K && cb < K) ? G[ca * K + cb] - acc : (a == b ? 1.0 : 0.0);
    }
    if (first) {
        for (int k = 0; k < MAX_S_PER_THREAD; ++k) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c < s) bc[(long long)m * s + c] = accb[k];
        }
    }
}
