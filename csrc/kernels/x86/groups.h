// The driver of the packed 16-row kernel families (matmul.cpp, matmul_kquant_x16.cpp): a Family
// has tile<C>(a, n, m) computing 16 weight rows x C activation rows.
#pragma once
#include "../../core/kernel_table.h"

namespace corelm::CORELM_ISA_NS {

// Covers y[0:m, n0:n1] (n0, n1 multiples of 16) with tiles of up to 4 activation rows.
template <typename Family>
void matmul_groups(const MatmulArgs& a, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n += kPackRows) {
        int64_t m = 0;
        for (; m + 4 <= a.m; m += 4) Family::template tile<4>(a, n, m);
        switch (a.m - m) {
            case 3: Family::template tile<3>(a, n, m); break;
            case 2: Family::template tile<2>(a, n, m); break;
            case 1: Family::template tile<1>(a, n, m); break;
            default: break;
        }
    }
}

}  // namespace corelm::CORELM_ISA_NS
