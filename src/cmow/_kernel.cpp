// cmow._kernel: the pooled CMOW features of a batch in one call, on the CPU (optional; see setup.py).
//
// For each text (a row of token ids with a mask; no mask: every position counts) it writes [cbow; fw - I; bw - I] into
// one row of a float32 output: the sum or mean of the CBOW vectors and of the vectors of the text's hashed n-grams
// (if the model has them), and for each matrix table the ordered product of the token matrices (backward table: in
// reverse order), rescaled to Frobenius norm sqrt(d), minus the identity. Masked positions are skipped (the identity)
// and no n-gram spans one; a text with no unmasked position gives zeros. It is the compiled twin of the torch path
// in modeling_cmow.py (`CMOWEncoder.forward` without token states), called through `compiled_pooled_features`
// there, which checks every argument; call it only through that function.
//
// Numerics: float32 throughout (fp16 and bf16 tables are widened on load). One text's product is a tree reduction,
// like the torch path's (see `chain`); every partial product is rescaled to norm sqrt(d) before it is multiplied
// again (folded into that product's store), so no intermediate is larger than max(sqrt(d), ||E||)^2 and the result
// is the direction P * sqrt(d) / ||P||_F of the true product. N-gram buckets are the torch path's exactly (the same
// integer hash, see `ngram_rows`).
//
// Speed: the gather, the mask, the n-gram hash, the products, the rescaling, the bag and the identity offset are
// fused; rows are shared among threads. The product of two d x d matrices (d <= 32) uses AVX-512 (d > 16, jobs of
// 512 products or more) or AVX2/FMA when the CPU has them (chosen at run time; rows padded to a multiple of 8 floats,
// register-blocked), else portable loops the compiler vectorises. The .so runs on any x86-64: only functions marked
// for an ISA use it.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define CMOW_HAVE_AVX2 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define CMOW_HAVE_AVX2 0
#endif

namespace {

constexpr int kMaxD = 32;
// The version of `pooled`'s arguments, exported as `api`: 1 without n-grams (16 arguments, still accepted), 2 with
// the n-gram table, its dtype, buckets and orders (20). cmow.modeling_cmow uses a kernel of its own version or newer.
constexpr int kApi = 2;
constexpr int kMaxStride = 32;            // row stride of the padded working matrices: d rounded up to 8
constexpr float kNormEps = 1e-20f;        // as _NORM_EPS in modeling_cmow.py
constexpr int64_t kProductsPerThread = 512;  // a thread costs tens of microseconds: spawn one per ~100 us of work
// Below this many products a job runs the AVX2 code even where AVX-512 is best: at batch 1 (~50 products) the AVX-512
// code made cmow.encode 4-7% slower (the 512-bit units' warm-up and clock change outlast so short a call), at batch
// 256 it made the encoder 1.07-1.18x faster.
constexpr int64_t kAvx512MinProducts = 512;
constexpr int64_t kMatricesAhead = 2;         // token matrices requested ahead of their product
// N-gram vectors requested ahead of their sum. A text's first ones are requested as soon as it is hashed, before its
// token vectors are summed: n-gram rows miss the caches more often than token rows (at the defaults the table has 8x
// the vocabulary's rows, each hit less often), and on SST-2 batches a window of 64 rows was faster than one of 2.
constexpr int64_t kNgramsAhead = 64;

// The n-gram hash, as NGRAM_HASH_MODULUS, NGRAM_HASH_MULTIPLIER and NGRAM_HASH_MIX in modeling_cmow.py.
constexpr int64_t kHashModulus = 2147483647;  // 2**31 - 1
constexpr int64_t kHashMultiplier = 1540483477;
constexpr int64_t kHashMix = 668265263;

enum Dtype { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Job {
    float* out;
    int64_t out_stride;
    const int64_t* ids;
    const uint8_t* mask;  // null: no position is masked
    int64_t batch, seq;
    int d;
    const void* tables[2];  // forward, backward (either may be null)
    int matrix_dtype;
    const void* cbow;
    int64_t cbow_size;
    int cbow_dtype;
    bool cbow_mean;
    const void* ngrams;  // the n-gram table, rows of cbow_size (null: no n-grams; then is_order is empty)
    int ngram_dtype;
    int64_t ngram_buckets;       // rows the hash picks from: [0, ngram_buckets)
    std::vector<bool> is_order;  // is_order[n]: n-grams of order n join the bag (n <= seq: longer ones never fit)
    int64_t orders = 0;          // the orders in is_order: a text has at most seq * orders n-grams
    std::atomic<int64_t> next_row{0};   // the next row to claim
    std::atomic<int64_t> done_rows{0};  // rows finished
};

// One thread's working memory: the stack of partial products of the tree reduction (padded d x stride matrices,
// zero-initialised so that their padding columns are zero), a buffer to widen half-precision rows into, and the
// n-gram table rows of a text.
struct Workspace {
    explicit Workspace(const Job& job)
        : size(job.d * padded(job.d)),
          depth(2),
          flat(static_cast<size_t>(job.d) * job.d),
          ngram_rows(static_cast<size_t>(job.seq * job.orders)) {
        while ((int64_t{1} << (depth - 2)) < job.seq) ++depth;  // the stack never holds more than log2(seq) + 2
        storage.assign(static_cast<size_t>(depth) * size + 8, 0.0f);
        level.resize(depth);
        scale.resize(depth);
    }
    float* matrix(int index) {  // 32-byte aligned
        float* base = storage.data() + (8 - reinterpret_cast<uintptr_t>(storage.data()) / sizeof(float) % 8) % 8;
        return base + static_cast<size_t>(index) * size;
    }
    static int padded(int d) { return (d + 7) / 8 * 8; }

    int size, depth;
    std::vector<float> storage, flat, scale;
    std::vector<int> level;
    std::vector<int64_t> ngram_rows;
};

inline int padded(int d) { return Workspace::padded(d); }

// Asks for a table row (into L2) ahead of its use: rows of random tokens are cache misses, and products hide their
// latency. With the tables out of cache (after tokenizing a batch), asking for the next text's rows too made the
// kernel 10-20% faster on SST-2 batches; into L2 rather than L1 was no slower.
inline void prefetch(const void* table, int dtype, int64_t offset, int64_t n) {
#if defined(__GNUC__) || defined(__clang__)
    const int element = dtype == kFloat32 ? 4 : 2;
    const char* start = static_cast<const char*>(table) + offset * element;
    for (int64_t byte = 0; byte < n * element; byte += 64) __builtin_prefetch(start + byte, 0, 2);
#else
    (void)table, (void)dtype, (void)offset, (void)n;
#endif
}

inline float bf16_to_float(uint16_t bits) {
    uint32_t word = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &word, sizeof value);
    return value;
}

inline float fp16_to_float(uint16_t bits) {
    uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    uint32_t exponent = (bits >> 10) & 0x1fu;
    uint32_t mantissa = bits & 0x3ffu;
    uint32_t word;
    if (exponent == 0x1f) {
        word = sign | 0x7f800000u | (mantissa << 13);  // inf, nan
    } else if (exponent != 0) {
        word = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        word = sign;
    } else {  // subnormal: normalise the mantissa
        int shift = 0;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            ++shift;
        }
        word = sign | ((113 - shift) << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float value;
    std::memcpy(&value, &word, sizeof value);
    return value;
}

// --- portable path: plain loops (auto-vectorised by the compiler for the baseline ISA) ---

struct Generic {
    static void widen(const void* table, int dtype, int64_t offset, int64_t n, float* dst) {
        if (dtype == kFloat32) {
            std::memcpy(dst, static_cast<const float*>(table) + offset, n * sizeof(float));
        } else {
            const uint16_t* src = static_cast<const uint16_t*>(table) + offset;
            for (int64_t i = 0; i < n; ++i) dst[i] = dtype == kFloat16 ? fp16_to_float(src[i]) : bf16_to_float(src[i]);
        }
    }

    static void accumulate(const void* table, int dtype, int64_t offset, int64_t n, float* acc) {
        if (dtype == kFloat32) {
            const float* src = static_cast<const float*>(table) + offset;
            for (int64_t i = 0; i < n; ++i) acc[i] += src[i];
        } else {
            const uint16_t* src = static_cast<const uint16_t*>(table) + offset;
            for (int64_t i = 0; i < n; ++i) acc[i] += dtype == kFloat16 ? fp16_to_float(src[i]) : bf16_to_float(src[i]);
        }
    }

    // The d x d matrix `src` into rows of `stride` floats (the padding columns of `dst` are left as they are: zero).
    static void pad_rows(const float* src, int d, int stride, float* dst) {
        for (int r = 0; r < d; ++r) std::memcpy(dst + r * stride, src + r * d, d * sizeof(float));
    }

    // C = scale * (P @ E) on d rows of `stride` floats (E's padding columns are zero, so C's are too); returns ||C||^2.
    // C may be P: each row of C is written after the row of P it comes from was read.
    static float matmul(const float* P, const float* E, float* C, int d, int stride, float scale) {
        float squares = 0.0f;
        float row[kMaxStride];
        for (int i = 0; i < d; ++i) {
            for (int j = 0; j < stride; ++j) row[j] = 0.0f;
            for (int k = 0; k < d; ++k) {
                const float p = P[i * stride + k];
                const float* e = E + k * stride;
                for (int j = 0; j < stride; ++j) row[j] += p * e[j];
            }
            for (int j = 0; j < stride; ++j) {
                const float c = row[j] * scale;
                C[i * stride + j] = c;
                squares += c * c;
            }
        }
        return squares;
    }
};

// --- AVX2/FMA path ---

#if CMOW_HAVE_AVX2
// Compiled for AVX2/FMA/F16C whatever the compiler's baseline; called only where the CPU has them. An attribute on
// each function rather than `#pragma GCC target`, which clang ignores.
#define CMOW_AVX2 __attribute__((target("avx2,fma,f16c")))


struct Avx2 {
    CMOW_AVX2 static void widen(const void* table, int dtype, int64_t offset, int64_t n, float* dst) {
        if (dtype == kFloat32) {
            std::memcpy(dst, static_cast<const float*>(table) + offset, n * sizeof(float));
            return;
        }
        const uint16_t* src = static_cast<const uint16_t*>(table) + offset;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src + i, dtype));
        for (; i < n; ++i) dst[i] = dtype == kFloat16 ? fp16_to_float(src[i]) : bf16_to_float(src[i]);
    }

    CMOW_AVX2 static void accumulate(const void* table, int dtype, int64_t offset, int64_t n, float* acc) {
        int64_t i = 0;
        if (dtype == kFloat32) {
            const float* src = static_cast<const float*>(table) + offset;
            for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), _mm256_loadu_ps(src + i)));
            for (; i < n; ++i) acc[i] += src[i];
            return;
        }
        const uint16_t* src = static_cast<const uint16_t*>(table) + offset;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), load8(src + i, dtype)));
        for (; i < n; ++i) acc[i] += dtype == kFloat16 ? fp16_to_float(src[i]) : bf16_to_float(src[i]);
    }

    CMOW_AVX2 static void pad_rows(const float* src, int d, int stride, float* dst) {
        const int full = d / 8 * 8;
        const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(d - full), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int r = 0; r < d; ++r, src += d, dst += stride) {
            for (int c = 0; c < full; c += 8) _mm256_store_ps(dst + c, _mm256_loadu_ps(src + c));
            if (full < d) _mm256_store_ps(dst + full, _mm256_maskload_ps(src + full, tail));  // zeros past d
        }
    }

    CMOW_AVX2 static inline __m256 load8(const uint16_t* src, int dtype) {
        __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        if (dtype == kFloat16) return _mm256_cvtph_ps(half);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
    }

    // Rows [0, RB) of C = scale * (P @ E), NV vectors of 8 floats per row, all in registers (RB * NV <= 12);
    // returns squares + the squares of those rows. (d >= 1: a loop that may run zero times makes GCC keep the
    // accumulators in memory.)
    template <int NV, int RB>
    CMOW_AVX2 static inline __m256 block(const float* P, const float* E, float* C, int d, __m256 scale, __m256 squares) {
        constexpr int S = 8 * NV;
        __m256 acc[RB][NV];
        for (int r = 0; r < RB; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
        int k = 0;
        do {
            __m256 e[NV];
            for (int v = 0; v < NV; ++v) e[v] = _mm256_load_ps(E + k * S + 8 * v);
            for (int r = 0; r < RB; ++r) {
                const __m256 p = _mm256_broadcast_ss(P + r * S + k);
                for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(p, e[v], acc[r][v]);
            }
        } while (++k < d);
        for (int r = 0; r < RB; ++r)
            for (int v = 0; v < NV; ++v) {
                const __m256 c = _mm256_mul_ps(acc[r][v], scale);
                _mm256_store_ps(C + r * S + 8 * v, c);
                squares = _mm256_fmadd_ps(c, c, squares);
            }
        return squares;
    }

    // The last `rows` (< RB) rows, by the largest smaller block first.
    template <int NV, int RB>
    CMOW_AVX2 static inline __m256 tail(const float* P, const float* E, float* C, int d, int rows, __m256 scale, __m256 sq) {
        if constexpr (RB > 1) {
            constexpr int S = 8 * NV;
            if (rows >= RB - 1) {
                sq = block<NV, RB - 1>(P, E, C, d, scale, sq);
                return tail<NV, RB - 1>(P + (RB - 1) * S, E, C + (RB - 1) * S, d, rows - (RB - 1), scale, sq);
            }
            return tail<NV, RB - 1>(P, E, C, d, rows, scale, sq);
        }
        return sq;
    }

    template <int NV>
    CMOW_AVX2 static float matmul_nv(const float* P, const float* E, float* C, int d, float scale) {
        constexpr int S = 8 * NV;
        constexpr int RB = NV == 1 ? 8 : NV == 2 ? 5 : NV == 3 ? 4 : 3;
        const __m256 factor = _mm256_set1_ps(scale);
        __m256 squares = _mm256_setzero_ps();
        int r = 0;
        for (; r + RB <= d; r += RB) squares = block<NV, RB>(P + r * S, E, C + r * S, d, factor, squares);
        squares = tail<NV, RB>(P + r * S, E, C + r * S, d, d - r, factor, squares);
        return sum8(squares);
    }

    // The sum of the 8 lanes of `v`.
    CMOW_AVX2 static float sum8(__m256 v) {
        __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
        sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
        return _mm_cvtss_f32(sum);
    }

    CMOW_AVX2 static float matmul(const float* P, const float* E, float* C, int d, int stride, float scale) {
        switch (stride) {
            case 8: return matmul_nv<1>(P, E, C, d, scale);
            case 16: return matmul_nv<2>(P, E, C, d, scale);
            case 24: return matmul_nv<3>(P, E, C, d, scale);
            default: return matmul_nv<4>(P, E, C, d, scale);
        }
    }
};

// --- AVX-512 path: the product only (the lookups and the bag are memory-bound; they stay on the AVX2 code) ---

// A row of 24 floats (d = 17..24) is one 16-float and one 8-float vector: 2 FMAs per row and k where AVX2 needs 3
// (d = 20: products 1.18-1.29x faster on this project's Xeon); 32 floats are two 16-float vectors (1.23-1.26x). Rows
// of 16 floats gained nothing over AVX2 (the CPU there runs half as many 16-float FMAs per cycle as 8-float ones),
// so d <= 16 stays on the AVX2 code.
#define CMOW_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"  // inside GCC 12's own _mm512_castps512_ps256 (GCC bug 105593)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

struct Avx512 : Avx2 {
    // Rows [0, RB) of C = scale * (P @ E) with NZ 16-float and NY (0 or 1) 8-float vectors per row, all in registers;
    // adds the squares of those rows to sq16 and sq8. Rows are 32-byte aligned, so 16-float accesses are unaligned.
    template <int NZ, int NY, int RB>
    CMOW_AVX512 static inline void block(const float* P, const float* E, float* C, int d, __m512 scale, __m512& sq16,
                                         __m256& sq8) {
        constexpr int S = 16 * NZ + 8 * NY;
        __m512 wide[RB][NZ];
        __m256 narrow[RB][NY > 0 ? NY : 1];
        for (int r = 0; r < RB; ++r) {
            for (int v = 0; v < NZ; ++v) wide[r][v] = _mm512_setzero_ps();
            if constexpr (NY > 0) narrow[r][0] = _mm256_setzero_ps();
        }
        int k = 0;
        do {
            __m512 e[NZ];
            for (int v = 0; v < NZ; ++v) e[v] = _mm512_loadu_ps(E + k * S + 16 * v);
            __m256 e8 = _mm256_setzero_ps();
            if constexpr (NY > 0) e8 = _mm256_load_ps(E + k * S + 16 * NZ);
            for (int r = 0; r < RB; ++r) {
                const __m512 p = _mm512_set1_ps(P[r * S + k]);
                for (int v = 0; v < NZ; ++v) wide[r][v] = _mm512_fmadd_ps(p, e[v], wide[r][v]);
                if constexpr (NY > 0) narrow[r][0] = _mm256_fmadd_ps(_mm512_castps512_ps256(p), e8, narrow[r][0]);
            }
        } while (++k < d);
        for (int r = 0; r < RB; ++r) {
            for (int v = 0; v < NZ; ++v) {
                const __m512 c = _mm512_mul_ps(wide[r][v], scale);
                _mm512_storeu_ps(C + r * S + 16 * v, c);
                sq16 = _mm512_fmadd_ps(c, c, sq16);
            }
            if constexpr (NY > 0) {
                const __m256 c = _mm256_mul_ps(narrow[r][0], _mm512_castps512_ps256(scale));
                _mm256_store_ps(C + r * S + 16 * NZ, c);
                sq8 = _mm256_fmadd_ps(c, c, sq8);
            }
        }
    }

    // The last `rows` (< RB) rows, by the largest smaller block first.
    template <int NZ, int NY, int RB>
    CMOW_AVX512 static inline void tail(const float* P, const float* E, float* C, int d, int rows, __m512 scale,
                                        __m512& sq16, __m256& sq8) {
        if constexpr (RB > 1) {
            constexpr int S = 16 * NZ + 8 * NY;
            if (rows >= RB - 1) {
                block<NZ, NY, RB - 1>(P, E, C, d, scale, sq16, sq8);
                P += (RB - 1) * S, C += (RB - 1) * S, rows -= RB - 1;
            }
            tail<NZ, NY, RB - 1>(P, E, C, d, rows, scale, sq16, sq8);
        }
    }

    template <int NZ, int NY>
    CMOW_AVX512 static float matmul_nv(const float* P, const float* E, float* C, int d, float scale) {
        constexpr int S = 16 * NZ + 8 * NY;
        constexpr int RB = NZ == 2 ? 12 : 10;  // accumulators + E's vectors + the broadcast: at most 32 registers
        const __m512 factor = _mm512_set1_ps(scale);
        __m512 sq16 = _mm512_setzero_ps();
        __m256 sq8 = _mm256_setzero_ps();
        int r = 0;
        for (; r + RB <= d; r += RB) block<NZ, NY, RB>(P + r * S, E, C + r * S, d, factor, sq16, sq8);
        tail<NZ, NY, RB>(P + r * S, E, C + r * S, d, d - r, factor, sq16, sq8);
        const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sq16), 1));  // AVX-512F only
        return Avx2::sum8(_mm256_add_ps(sq8, _mm256_add_ps(_mm512_castps512_ps256(sq16), high)));
    }

    CMOW_AVX512 static float matmul(const float* P, const float* E, float* C, int d, int stride, float scale) {
        switch (stride) {
            case 24: return matmul_nv<1, 1>(P, E, C, d, scale);
            case 32: return matmul_nv<2, 0>(P, E, C, d, scale);
            default: return Avx2::matmul(P, E, C, d, stride, scale);  // d <= 16: as many FMAs, no faster here
        }
    }
};

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#undef CMOW_AVX512
#undef CMOW_AVX2
#endif

// --- one text, shared by both paths ---

template <class Ops>
void load_matrix(const Job& job, const void* table, int64_t id, float* dst, Workspace& work) {
    const int d = job.d, stride = padded(d);
    const int64_t offset = id * d * d;
    const float* src;
    if (job.matrix_dtype == kFloat32) {
        src = static_cast<const float*>(table) + offset;
    } else {
        Ops::widen(table, job.matrix_dtype, offset, static_cast<int64_t>(d) * d, work.flat.data());
        src = work.flat.data();
    }
    Ops::pad_rows(src, d, stride, dst);
}

// The rescaled product of the unmasked positions' matrices, minus the identity, into out[0, d*d).
//
// The product is a tree reduction, as in the torch path, not a left-to-right loop: in a loop every step's rounding
// error moves the product's left singular vectors for good (only later factors multiply it, from the right), and
// over 16k tokens the error grows to 1e-3; along a tree only log2(n) products lie on any path. The tree is built as
// a binary counter on a stack: each entry holds the product of 2^level consecutive positions, and two entries of
// the same level merge (left times right) as soon as they meet; at the end the stack is merged right to left.
template <class Ops>
void chain(const Job& job, const void* table, bool reverse, const int64_t* ids, const uint8_t* mask, float* out,
           Workspace& work) {
    const int d = job.d, stride = padded(d);
    const float target = std::sqrt(static_cast<float>(d));
    int top = 0;  // entries on the stack
    auto merge = [&]() {  // the top two entries into one, in place of the left one; rescaled via `scale`
        float* left = work.matrix(top - 2);
        const float squares =
            Ops::matmul(left, work.matrix(top - 1), left, d, stride, work.scale[top - 2] * work.scale[top - 1]);
        work.scale[top - 2] = target / std::max(std::sqrt(squares), kNormEps);
        work.level[top - 2] += 1;
        --top;
    };
    const int64_t matrix = static_cast<int64_t>(d) * d;
    auto position_of = [&](int64_t step) { return reverse ? job.seq - 1 - step : step; };
    for (int64_t step = 0; step < std::min<int64_t>(kMatricesAhead, job.seq); ++step)
        prefetch(table, job.matrix_dtype, ids[position_of(step)] * matrix, matrix);
    for (int64_t step = 0; step < job.seq; ++step) {
        const int64_t position = position_of(step);
        if (step + kMatricesAhead < job.seq)
            prefetch(table, job.matrix_dtype, ids[position_of(step + kMatricesAhead)] * matrix, matrix);
        if (mask != nullptr && !mask[position]) continue;
        load_matrix<Ops>(job, table, ids[position], work.matrix(top), work);
        work.scale[top] = 1.0f;  // a token's matrix enters unscaled: products of two stay far from overflow
        work.level[top] = 0;
        ++top;
        while (top >= 2 && work.level[top - 1] == work.level[top - 2]) merge();
    }
    if (top == 0) {  // nothing unmasked: the identity, minus the identity
        std::fill(out, out + d * d, 0.0f);
        return;
    }
    while (top >= 2) merge();
    const float* product = work.matrix(0);
    float squares = 0.0f;
    for (int r = 0; r < d; ++r)
        for (int c = 0; c < d; ++c) squares += product[r * stride + c] * product[r * stride + c];
    const float scale = target / std::max(std::sqrt(squares), kNormEps);
    for (int r = 0; r < d; ++r)
        for (int c = 0; c < d; ++c) out[r * d + c] = product[r * stride + c] * scale - (r == c ? 1.0f : 0.0f);
}

// The n-gram table rows of one text into `rows`; returns how many. As in modeling_cmow.ngram_bucket_ids: an n-gram
// ends at each position whose last n positions are all unmasked, and is hashed newest token first, so one pass back
// from its end serves every order: h = 0; h = ((h xor (t + 1)) * A) mod P for t = t_n, ..., t_1; then it is mixed
// with its order n and the bucket is the result mod buckets. Every factor is below 2^31 (h < P = 2^31 - 1, and token
// ids were checked against the vocabulary size, far below that), so products stay below 2^62, in int64, as in torch.
int64_t ngram_rows(const Job& job, const int64_t* ids, const uint8_t* mask, int64_t* rows) {
    const int64_t longest = static_cast<int64_t>(job.is_order.size()) - 1;
    int64_t count = 0, run = 0;  // run: unmasked positions that end at `position`
    for (int64_t position = 0; position < job.seq; ++position) {
        run = mask == nullptr || mask[position] ? run + 1 : 0;
        int64_t hash = 0;
        for (int64_t n = 1; n <= std::min(run, longest); ++n) {
            hash = (hash ^ (ids[position - n + 1] + 1)) * kHashMultiplier % kHashModulus;
            if (!job.is_order[n]) continue;
            int64_t mixed = hash ^ n;
            mixed = (mixed ^ (mixed >> 16)) * kHashMix % kHashModulus;
            rows[count++] = (mixed ^ (mixed >> 13)) % job.ngram_buckets;
        }
    }
    return count;
}

// Adds the n-gram vectors of `count` rows into acc[0, cbow_size); the first kNgramsAhead were requested already.
template <class Ops>
void sum_ngrams(const Job& job, const int64_t* rows, int64_t count, float* acc) {
    const int64_t size = job.cbow_size;
    for (int64_t i = 0; i < count; ++i) {
        if (i + kNgramsAhead < count) prefetch(job.ngrams, job.ngram_dtype, rows[i + kNgramsAhead] * size, size);
        Ops::accumulate(job.ngrams, job.ngram_dtype, rows[i] * size, size, acc);
    }
}

template <class Ops>
void encode_row(const Job& job, int64_t row, Workspace& work) {
    const int64_t* ids = job.ids + row * job.seq;
    const uint8_t* mask = job.mask != nullptr ? job.mask + row * job.seq : nullptr;
    float* out = job.out + row * job.out_stride;
    const int64_t ngrams = job.ngrams != nullptr ? ngram_rows(job, ids, mask, work.ngram_rows.data()) : 0;
    for (int64_t i = 0; i < std::min(ngrams, kNgramsAhead); ++i)
        prefetch(job.ngrams, job.ngram_dtype, work.ngram_rows[i] * job.cbow_size, job.cbow_size);
    if (row + 1 < job.batch) {  // the next text's rows, while this one is encoded
        const int64_t* next_ids = ids + job.seq;
        const uint8_t* next_mask = mask != nullptr ? mask + job.seq : nullptr;
        const int64_t matrix = static_cast<int64_t>(job.d) * job.d;
        for (int64_t position = 0; position < job.seq; ++position) {
            if (next_mask != nullptr && !next_mask[position]) continue;
            if (job.cbow) prefetch(job.cbow, job.cbow_dtype, next_ids[position] * job.cbow_size, job.cbow_size);
            for (int t = 0; t < 2; ++t)
                if (job.tables[t]) prefetch(job.tables[t], job.matrix_dtype, next_ids[position] * matrix, matrix);
        }
    }
    if (job.cbow != nullptr) {
        std::fill(out, out + job.cbow_size, 0.0f);
        int64_t count = 0;
        constexpr int64_t kAhead = 2;
        for (int64_t position = 0; position < std::min(kAhead, job.seq); ++position)
            prefetch(job.cbow, job.cbow_dtype, ids[position] * job.cbow_size, job.cbow_size);
        for (int64_t position = 0; position < job.seq; ++position) {
            if (position + kAhead < job.seq)
                prefetch(job.cbow, job.cbow_dtype, ids[position + kAhead] * job.cbow_size, job.cbow_size);
            if (mask != nullptr && !mask[position]) continue;
            Ops::accumulate(job.cbow, job.cbow_dtype, ids[position] * job.cbow_size, job.cbow_size, out);
            ++count;
        }
        sum_ngrams<Ops>(job, work.ngram_rows.data(), ngrams, out);  // into the same sum: a mean counts tokens only
        if (job.cbow_mean) {
            const float denominator = static_cast<float>(std::max<int64_t>(count, 1));
            for (int64_t i = 0; i < job.cbow_size; ++i) out[i] /= denominator;
        }
        out += job.cbow_size;
    }
    for (int t = 0; t < 2; ++t) {
        if (job.tables[t] == nullptr) continue;
        chain<Ops>(job, job.tables[t], t == 1, ids, mask, out, work);
        out += job.d * job.d;
    }
}

template <class Ops>
void work(Job& job, Workspace& workspace) {
    for (int64_t row; (row = job.next_row.fetch_add(1)) < job.batch;) {
        encode_row<Ops>(job, row, workspace);
        job.done_rows.fetch_add(1, std::memory_order_release);
    }
}

// Rows are claimed one at a time by this thread and by helpers it starts (threads - 1 of them, fewer for small
// jobs). It then waits only for rows that helpers claimed and have not finished. A helper the OS starts late, as on
// a busy machine, finds no row left and exits without touching the inputs (its shared_ptr keeps the job alive), so
// this call never waits for a thread to be scheduled: joining the helpers instead made 2 threads 2.7x slower than 1
// on a loaded 2-core machine.
template <class Ops>
void run(const std::shared_ptr<Job>& job, int threads) {
    Workspace workspace(*job);  // before any helper starts: if this throws, nothing runs
    const int64_t tables = (job->tables[0] != nullptr) + (job->tables[1] != nullptr);
    const int64_t products = job->batch * std::max<int64_t>(job->seq * tables, 1);
    const int64_t helpers = std::min<int64_t>({threads, job->batch, 1 + products / kProductsPerThread}) - 1;
    for (int64_t i = 0; i < helpers; ++i) {
        try {
            std::thread([job] {
                try {
                    Workspace own(*job);  // allocated before claiming a row
                    work<Ops>(*job, own);
                } catch (...) {  // out of memory: this helper claimed nothing, the others do the work
                }
            }).detach();
        } catch (const std::system_error&) {  // no more threads: fewer helpers
            break;
        }
    }
    work<Ops>(*job, workspace);
    while (job->done_rows.load(std::memory_order_acquire) < job->batch) std::this_thread::yield();
}

enum Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};
Isa isa = kGeneric;
int64_t avx512_min_products = kAvx512MinProducts;  // 0 once set_isa chose AVX-512: every job runs it (tests)

#if CMOW_HAVE_AVX2
// Whether the OS saves the register state in `mask` of XCR0 (0x6: SSE and AVX; 0xE6: also AVX-512's). Checked here
// rather than trusted to __builtin_cpu_supports, which compilers before GCC 8 answer from CPUID alone.
bool os_saves(unsigned mask) {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return false;  // OSXSAVE: XGETBV usable
    unsigned low, high;
    __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
    return (low & mask) == mask;
}
#endif

// The best code this CPU and OS run.
Isa best_isa() {
#if CMOW_HAVE_AVX2
    __builtin_cpu_init();
    unsigned eax, ebx, ecx, edx;  // F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports lacks it
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c && os_saves(0x6))) return kGeneric;
    return __builtin_cpu_supports("avx512f") && os_saves(0xE6) ? kAvx512 : kAvx2;
#else
    return kGeneric;
#endif
}

// job.is_order and job.orders from the tuple `orders` of n-gram orders; false with a Python error if one is not an
// integer >= 1.
bool set_orders(Job& job, PyObject* orders) {
    std::vector<long long> values;
    for (Py_ssize_t i = 0; orders != nullptr && i < PyTuple_GET_SIZE(orders); ++i) {
        const long long n = PyLong_AsLongLong(PyTuple_GET_ITEM(orders, i));
        if (n == -1 && PyErr_Occurred()) return false;
        if (n < 1) {
            PyErr_Format(PyExc_ValueError, "cmow._kernel.pooled: n-gram order %lld is not >= 1.", n);
            return false;
        }
        values.push_back(n);
    }
    job.is_order.clear();
    if (job.ngrams == nullptr || values.empty()) return true;
    const long long longest = std::min<long long>(*std::max_element(values.begin(), values.end()), job.seq);
    job.is_order.assign(static_cast<size_t>(longest) + 1, false);
    for (long long n : values)
        if (n <= longest) job.is_order[n] = true;
    job.orders = std::count(job.is_order.begin(), job.is_order.end(), true);
    return true;
}

PyObject* pooled(PyObject*, PyObject* args) {
    unsigned long long out, ids, mask, forward, backward, cbow, ngrams;
    Py_ssize_t out_stride, batch, seq, vocab, cbow_size, ngram_buckets;
    int d, matrix_dtype, cbow_dtype, cbow_mean, ngram_dtype, threads;
    PyObject* orders;
    if (PyTuple_GET_SIZE(args) == 16) {
        // The call of kApi 1, without n-grams: the remote code of checkpoints saved by older cmow versions makes it
        // (and adds their n-grams itself), and must keep working against a newer kernel.
        ngrams = 0, ngram_dtype = 0, ngram_buckets = 0, orders = nullptr;
        if (!PyArg_ParseTuple(args, "KnKKnnniKKiKnipi", &out, &out_stride, &ids, &mask, &batch, &seq, &vocab, &d,
                              &forward, &backward, &matrix_dtype, &cbow, &cbow_size, &cbow_dtype, &cbow_mean,
                              &threads))
            return nullptr;
    } else if (!PyArg_ParseTuple(args, "KnKKnnniKKiKnipKinO!i", &out, &out_stride, &ids, &mask, &batch, &seq, &vocab,
                                 &d, &forward, &backward, &matrix_dtype, &cbow, &cbow_size, &cbow_dtype, &cbow_mean,
                                 &ngrams, &ngram_dtype, &ngram_buckets, &PyTuple_Type, &orders, &threads)) {
        return nullptr;
    }
    if (d < 1 || d > kMaxD || matrix_dtype < 0 || matrix_dtype > 2 || cbow_dtype < 0 || cbow_dtype > 2 ||
        ngram_dtype < 0 || ngram_dtype > 2) {
        PyErr_Format(PyExc_ValueError, "cmow._kernel.pooled: matrix size %d or a table dtype is not supported.", d);
        return nullptr;
    }
    if (ngrams != 0 && ngram_buckets < 1) {
        PyErr_Format(PyExc_ValueError, "cmow._kernel.pooled: %zd n-gram buckets; there must be at least one.",
                     ngram_buckets);
        return nullptr;
    }
    const int64_t* id_data = reinterpret_cast<const int64_t*>(ids);
    for (int64_t i = 0; i < static_cast<int64_t>(batch) * seq; ++i) {
        if (id_data[i] < 0 || id_data[i] >= vocab) {
            PyErr_Format(PyExc_ValueError, "Token id %lld is outside [0, %zd): the tokenizer does not match the model.",
                         static_cast<long long>(id_data[i]), vocab);
            return nullptr;
        }
    }
    auto job = std::make_shared<Job>();
    job->out = reinterpret_cast<float*>(out);
    job->out_stride = out_stride;
    job->ids = id_data;
    job->mask = reinterpret_cast<const uint8_t*>(mask);
    job->batch = batch;
    job->seq = seq;
    job->d = d;
    job->tables[0] = reinterpret_cast<const void*>(forward);
    job->tables[1] = reinterpret_cast<const void*>(backward);
    job->matrix_dtype = matrix_dtype;
    job->cbow = reinterpret_cast<const void*>(cbow);
    job->cbow_size = cbow_size;
    job->cbow_dtype = cbow_dtype;
    job->cbow_mean = cbow_mean != 0;
    job->ngrams = cbow != 0 ? reinterpret_cast<const void*>(ngrams) : nullptr;  // they join the bag: none without
    job->ngram_dtype = ngram_dtype;
    job->ngram_buckets = ngram_buckets;
    try {
        if (!set_orders(*job, orders)) return nullptr;
    } catch (const std::bad_alloc&) {
        return PyErr_NoMemory();
    }
    bool out_of_memory = false;
    Py_BEGIN_ALLOW_THREADS
    try {
#if CMOW_HAVE_AVX2
        const int64_t products = static_cast<int64_t>(batch) * seq * ((forward != 0) + (backward != 0));
        if (isa == kAvx512 && products >= avx512_min_products)
            run<Avx512>(job, std::max(threads, 1));
        else if (isa >= kAvx2)
            run<Avx2>(job, std::max(threads, 1));
        else
#endif
            run<Generic>(job, std::max(threads, 1));
    } catch (const std::bad_alloc&) {
        out_of_memory = true;
    }
    Py_END_ALLOW_THREADS
    if (out_of_memory) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyObject* set_isa(PyObject* module, PyObject* arg) {
    const char* name = PyUnicode_AsUTF8(arg);
    if (name == nullptr) return nullptr;
    const Isa best = best_isa();
    for (int i = kGeneric; i <= best; ++i) {
        if (std::strcmp(name, kIsaNames[i]) != 0) continue;
        isa = static_cast<Isa>(i);
        avx512_min_products = 0;
        if (PyModule_AddStringConstant(module, "isa", name) < 0) return nullptr;
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_ValueError, "ISA %R is not available here; use one of cmow._kernel.isas.", arg);
    return nullptr;
}

PyMethodDef methods[] = {
    {"pooled", pooled, METH_VARARGS,
     "pooled(out, out_stride, ids, mask, batch, seq, vocab, d, forward, backward, matrix_dtype, cbow, cbow_size, "
     "cbow_dtype, cbow_mean, ngrams, ngram_dtype, ngram_buckets, ngram_orders, threads), or without the four n-gram "
     "arguments (api 1): the pooled "
     "[cbow; fw - I; bw - I] features of a batch, written into `out`. Arguments named after tensors are their data "
     "pointers (0: no such table; no mask: every position counts); dtypes: 0 float32, 1 float16, 2 bfloat16; "
     "`ngrams` has rows [0, ngram_buckets) of cbow_size, the orders are a tuple of ints. Private: call it through "
     "cmow.modeling_cmow.compiled_pooled_features, which checks them."},
    {"set_isa", set_isa, METH_O,
     "set_isa(name): run the code of one of `isas` from now on, for every job (for tests; by default jobs of fewer "
     "than 512 products run the AVX2 code where AVX-512 is best)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_kernel", "CMOW's compiled pooled-product kernel (optional).", -1,
                          methods};

}  // namespace

PyMODINIT_FUNC PyInit__kernel() {
    PyObject* module = PyModule_Create(&module_def);
    if (module == nullptr) return nullptr;
    isa = best_isa();
    PyObject* isas = PyTuple_New(isa + 1);  // the ISAs set_isa accepts, the best last
    for (int i = kGeneric; isas != nullptr && i <= isa; ++i) {
        PyObject* name = PyUnicode_FromString(kIsaNames[i]);
        if (name == nullptr) Py_CLEAR(isas);
        else PyTuple_SET_ITEM(isas, i, name);
    }
    if (isas == nullptr || PyModule_AddObject(module, "isas", isas) < 0 ||
        PyModule_AddStringConstant(module, "isa", kIsaNames[isa]) < 0 ||
        PyModule_AddIntConstant(module, "max_matrix_size", kMaxD) < 0 ||
        PyModule_AddIntConstant(module, "api", kApi) < 0) {
        Py_XDECREF(isas);
        Py_DECREF(module);
        return nullptr;
    }
    return module;
}
