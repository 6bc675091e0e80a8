// Trilinear samples along vertex normals, one thread per (vertex, offset).
// p = v_i + t_m n_i (mm); c = A (p - origin) (continuous x, y, z index);
// edge clamping as scipy.ndimage.map_coordinates(order=1, mode='nearest').
// Reference: kernels/normal_sampling.py (NumPy/scipy), Numba twin there.
__device__ __forceinline__ void lerp_axis(double c, int size, int& i, double& f)
{
    if (c <= 0.0) { i = 0; f = 0.0; return; }
    if (c >= size - 1) { i = size - 2; f = 1.0; return; }
    i = (int)floor(c);
    if (i > size - 2) i = size - 2;
    f = c - i;
}

template <typename T>
__device__ void sample_normals(const T* __restrict__ img, const double* __restrict__ v,
                               const double* __restrict__ n, const double* __restrict__ t,
                               const double* __restrict__ geo, double* __restrict__ out,
                               int nx, int ny, int nz, int N, int M)
{
    const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long long)N * M) return;
    const int i = (int)(k / M);
    const int m = (int)(k % M);
    const double p0 = v[3 * i] + t[m] * n[3 * i] - geo[9];
    const double p1 = v[3 * i + 1] + t[m] * n[3 * i + 1] - geo[10];
    const double p2 = v[3 * i + 2] + t[m] * n[3 * i + 2] - geo[11];
    const double cx = geo[0] * p0 + geo[1] * p1 + geo[2] * p2;
    const double cy = geo[3] * p0 + geo[4] * p1 + geo[5] * p2;
    const double cz = geo[6] * p0 + geo[7] * p1 + geo[8] * p2;
    int ix, iy, iz;
    double fx, fy, fz;
    lerp_axis(cx, nx, ix, fx);
    lerp_axis(cy, ny, iy, fy);
    lerp_axis(cz, nz, iz, fz);
    const long long sy = nx, sz = (long long)nx * ny;
    const T* b = img + iz * sz + iy * sy + ix;
    const double c00 = (double)b[0] * (1 - fx) + (double)b[1] * fx;
    const double c01 = (double)b[sy] * (1 - fx) + (double)b[sy + 1] * fx;
    const double c10 = (double)b[sz] * (1 - fx) + (double)b[sz + 1] * fx;
    const double c11 = (double)b[sz + sy] * (1 - fx) + (double)b[sz + sy + 1] * fx;
    const double c0 = c00 * (1 - fy) + c01 * fy;
    const double c1 = c10 * (1 - fy) + c11 * fy;
    out[k] = c0 * (1 - fz) + c1 * fz;
}

extern "C" __global__ void sample_normals_f32(const float* img, const double* v, const double* n,
                                              const double* t, const double* geo, double* out,
                                              int nx, int ny, int nz, int N, int M)
{
    sample_normals<float>(img, v, n, t, geo, out, nx, ny, nz, N, M);
}

extern "C" __global__ void sample_normals_f64(const double* img, const double* v, const double* n,
                                              const double* t, const double* geo, double* out,
                                              int nx, int ny, int nz, int N, int M)
{
    sample_normals<double>(img, v, n, t, geo, out, nx, ny, nz, N, M);
}
