// Every path fills its table from its parts; compiled once per path like ops.cpp.
#include "../../core/kernel_table.h"

namespace corelm::CORELM_ISA_NS {

void fill_matmul(KernelTable& t);
void fill_attention(KernelTable& t);
void fill_ops(KernelTable& t);
void fill_decoded(KernelTable& t);

void fill(KernelTable& t) {
    fill_decoded(t);  // first: a path's own fill_matmul may replace these with faster ones
    fill_matmul(t);
    fill_attention(t);
    fill_ops(t);
}

}  // namespace corelm::CORELM_ISA_NS
