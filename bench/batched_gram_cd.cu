// Batched coordinate descent for Lasso problems on explicit Gram matrices.
// One thread block solves one problem:
//   min_x 0.5 x^T H_b x - b_b^T x + lam_b ||x||_1,   H_b: n x n, symmetric.
// The block keeps x and the gradient g = H x - b in shared memory; after each
// coordinate update every thread adds its share of H[j, :] * delta to g.
// Reference: kernels/batched_cd.py (NumPy), Numba twin in the same file.
extern "C" __global__
void batched_gram_cd(const double* __restrict__ H, const double* __restrict__ b,
                     const double* __restrict__ lam, double* __restrict__ x,
                     int* __restrict__ sweeps_done, const int n, const int max_sweeps,
                     const double tol)
{
    extern __shared__ double sh[];
    double* g = sh;            // n
    double* xs = sh + n;       // n
    __shared__ double delta;
    __shared__ double maxdelta;
    __shared__ double maxabs;
    const int p = blockIdx.x;
    const double* Hp = H + (size_t)p * n * n;
    const double* bp = b + (size_t)p * n;
    double* xp = x + (size_t)p * n;
    const double lp = lam[p];

    for (int i = threadIdx.x; i < n; i += blockDim.x) xs[i] = xp[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double acc = -bp[i];
        for (int j = 0; j < n; ++j) acc += Hp[(size_t)i * n + j] * xs[j];
        g[i] = acc;
    }
    __syncthreads();
    int sweep = 0;
    for (sweep = 0; sweep < max_sweeps; ++sweep) {
        if (threadIdx.x == 0) { maxdelta = 0.0; maxabs = 0.0; }
        __syncthreads();
        for (int j = 0; j < n; ++j) {
            if (threadIdx.x == 0) {
                const double hjj = Hp[(size_t)j * n + j];
                double dlt = 0.0;
                if (hjj > 0.0) {
                    const double old = xs[j];
                    const double z = old - g[j] / hjj;
                    const double t = lp / hjj;
                    const double nw = (z > t) ? z - t : ((z < -t) ? z + t : 0.0);
                    dlt = nw - old;
                    xs[j] = nw;
                    maxabs = fmax(maxabs, fabs(nw));
                }
                delta = dlt;
                maxdelta = fmax(maxdelta, fabs(dlt));
            }
            __syncthreads();
            const double dl = delta;
            if (dl != 0.0) {
                const double* row = Hp + (size_t)j * n;   // H symmetric: column j == row j
                for (int i = threadIdx.x; i < n; i += blockDim.x) g[i] += row[i] * dl;
            }
            __syncthreads();
        }
        // every thread reads the flag before thread 0 resets maxdelta for the
        // next sweep (without this barrier a slow warp could see the reset
        // value, leave the loop alone and desynchronise the block)
        const bool done = maxdelta <= tol * fmax(maxabs, 1e-300);
        __syncthreads();
        if (done) { ++sweep; break; }
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) xp[i] = xs[i];
    if (threadIdx.x == 0) sweeps_done[p] = sweep;
}
