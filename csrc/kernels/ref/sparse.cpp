// The sparse layouts (formats.h): Q8_0_S16 (any zeros left out), Q8_0_24 (2:4) and Q8_0_B16 (whole
// blocks left out). Encoding from and decoding to Q8_0_X16 groups, and the bounds check a file's
// Q8_0_S16 and Q8_0_B16 groups must pass.
#include <cstddef>
#include <cstring>
#include <vector>

#include "../../core/kernel_table.h"

namespace corelm::ref {

namespace {
constexpr int kSlices = kQK / 4;  // 64-byte slices per block: 4 elements of 16 rows each
constexpr uint8_t kZeroCode = 0x80;  // code 0, stored +128

// ---- Q8_0_S16: a bitmask per slice and the codes it keeps ----

size_t unstructured_bytes(const block_q8_0x16* group, int64_t k) {
    const int64_t nb = k / kQK;
    size_t codes = 0;
    for (int64_t b = 0; b < nb; ++b)
        for (const uint8_t u : group[b].qs) codes += u != kZeroCode;
    return size_t(nb) * sizeof(block_q8_0s16) + codes + kSparsePad;
}

void encode_unstructured(const block_q8_0x16* group, int64_t k, uint8_t* out) {
    const int64_t nb = k / kQK;
    for (int64_t b = 0; b < nb; ++b) {
        uint8_t* head = out;
        uint8_t* codes = out + sizeof(block_q8_0s16);
        block_q8_0s16 h{};
        std::memcpy(h.d, group[b].d, sizeof(h.d));
        for (int j = 0; j < kSlices; ++j)
            for (int i = 0; i < 64; ++i) {
                const uint8_t u = group[b].qs[64 * j + i];
                if (u == kZeroCode) continue;
                h.mask[j] |= uint64_t(1) << i;
                *codes++ = u;
            }
        std::memcpy(head, &h, sizeof(h));
        out = codes;
    }
    std::memset(out, 0, kSparsePad);
}

void decode_unstructured(const uint8_t* group, int64_t k, size_t group_bytes, block_q8_0x16* out) {
    const int64_t nb = k / kQK;
    const uint8_t* end = group + group_bytes - kSparsePad;  // the stored codes end by here
    for (int64_t b = 0; b < nb; ++b) {
        block_q8_0s16 h{};
        if (group + sizeof(h) <= end) std::memcpy(&h, group, sizeof(h));
        const uint8_t* codes = group + sizeof(h);
        std::memcpy(out[b].d, h.d, sizeof(h.d));
        for (int j = 0; j < kSlices; ++j)
            for (int i = 0; i < 64; ++i) {
                const bool stored = h.mask[j] >> i & 1;
                out[b].qs[64 * j + i] = stored && codes < end ? *codes : kZeroCode;
                codes += stored;
            }
        group = codes;
    }
}

// Loading a model runs this over every group: the popcnt instruction where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("popcnt", "default")))
#endif
int64_t unstructured_codes(const uint8_t* group, int64_t k, size_t group_bytes) {
    const int64_t nb = k / kQK;
    size_t at = 0;  // the next block's header
    for (int64_t b = 0; b < nb; ++b) {
        if (at + sizeof(block_q8_0s16) + kSparsePad > group_bytes) return -1;
        const uint8_t* masks = group + at + offsetof(block_q8_0s16, mask);
        at += sizeof(block_q8_0s16);
        for (int j = 0; j < kSlices; ++j) {
            uint64_t m;
            std::memcpy(&m, masks + 8 * j, 8);
            at += size_t(__builtin_popcountll(m));
        }
    }
    if (at + kSparsePad > group_bytes) return -1;
    return int64_t(at) - nb * int64_t(sizeof(block_q8_0s16));
}


// ---- Q8_0_24: two kept codes of every four, and their positions ----

// Row r's codes of elements 8t..8t+7 (signed) in a Q8_0_X16 block.
int8_t x16_code(const block_q8_0x16& b, int r, int i) { return int8_t(b.qs[64 * (i / 4) + 4 * r + i % 4] ^ kZeroCode); }

// Whether every row keeps at most 2 of each 4 consecutive codes.
bool is_two_of_four(const block_q8_0x16* group, int64_t k) {
    for (int64_t b = 0; b < k / kQK; ++b)
        for (int r = 0; r < kPackRows; ++r)
            for (int g = 0; g < kQK / 4; ++g) {
                int kept = 0;
                for (int e = 0; e < 4; ++e) kept += x16_code(group[b], r, 4 * g + e) != 0;
                if (kept > 2) return false;
            }
    return true;
}

void encode_two_of_four(const block_q8_0x16* group, int64_t k, uint8_t* out) {
    auto* blocks = reinterpret_cast<block_q8_0x16_24*>(out);
    for (int64_t b = 0; b < k / kQK; ++b) {
        block_q8_0x16_24 o{};
        std::memcpy(o.d, group[b].d, sizeof(o.d));
        for (int t = 0; t < kQK / 8; ++t)
            for (int r = 0; r < kPackRows; ++r)
                for (int half = 0; half < 2; ++half) {
                    // The kept positions of elements 8t+4half.., padded with the first unkept ones.
                    int pos[2], n = 0;
                    for (int e = 0; e < 4 && n < 2; ++e)
                        if (x16_code(group[b], r, 8 * t + 4 * half + e) != 0) pos[n++] = e;
                    for (int e = 0; e < 4 && n < 2; ++e)
                        if (x16_code(group[b], r, 8 * t + 4 * half + e) == 0 && (n == 0 || pos[0] != e)) pos[n++] = e;
                    for (int j = 0; j < 2; ++j) {
                        o.qs[t][4 * r + 2 * half + j] = x16_code(group[b], r, 8 * t + 4 * half + pos[j]);
                        o.meta[t][r] |= uint8_t(pos[j] << (2 * (2 * half + j)));
                    }
                }
        std::memcpy(&blocks[b], &o, sizeof(o));
    }
}

void decode_two_of_four(const uint8_t* group, int64_t k, block_q8_0x16* out) {
    for (int64_t b = 0; b < k / kQK; ++b) {
        block_q8_0x16_24 in;
        std::memcpy(&in, group + b * sizeof(in), sizeof(in));
        std::memcpy(out[b].d, in.d, sizeof(in.d));
        std::memset(out[b].qs, kZeroCode, sizeof(out[b].qs));
        for (int t = 0; t < kQK / 8; ++t)
            for (int r = 0; r < kPackRows; ++r)
                for (int e = 0; e < 4; ++e) {
                    // A position repeated in a corrupted file: the later code wins (no read or write outside).
                    const int i = 8 * t + 4 * (e / 2) + (in.meta[t][r] >> (2 * e) & 3);
                    if (in.qs[t][4 * r + e] != 0) out[b].qs[64 * (i / 4) + 4 * r + i % 4] = uint8_t(in.qs[t][4 * r + e]) ^ kZeroCode;
                }
    }
}

// ---- Q8_0_B16: a map of the blocks stored, and those blocks ----

bool all_zero(const block_q8_0x16& b) {
    for (const uint8_t u : b.qs)
        if (u != kZeroCode) return false;
    return true;
}

size_t blocks_bytes(const block_q8_0x16* group, int64_t k) {
    size_t stored = 0;
    for (int64_t b = 0; b < k / kQK; ++b) stored += !all_zero(group[b]);
    return block_map_bytes(k / kQK) + stored * sizeof(block_q8_0x16);
}

void encode_blocks(const block_q8_0x16* group, int64_t k, uint8_t* out) {
    const int64_t nb = k / kQK;
    std::vector<uint64_t> map(block_map_bytes(nb) / 8);
    uint8_t* stored = out + block_map_bytes(nb);
    for (int64_t b = 0; b < nb; ++b) {
        if (all_zero(group[b])) continue;
        map[size_t(b / 64)] |= uint64_t(1) << (b % 64);
        std::memcpy(stored, &group[b], sizeof(block_q8_0x16));
        stored += sizeof(block_q8_0x16);
    }
    std::memcpy(out, map.data(), block_map_bytes(nb));
}

void decode_blocks(const uint8_t* group, int64_t k, size_t group_bytes, block_q8_0x16* out) {
    const int64_t nb = k / kQK;
    size_t at = block_map_bytes(nb);  // the next stored block
    for (int64_t b = 0; b < nb; ++b) {
        const bool stored = block_map_word(group, nb, b / 64) >> (b % 64) & 1;
        if (stored && at + sizeof(block_q8_0x16) <= group_bytes) {
            std::memcpy(&out[b], group + at, sizeof(block_q8_0x16));
        } else {  // left out, or past the group in a corrupted one: zero
            std::memset(out[b].d, 0, sizeof(out[b].d));
            std::memset(out[b].qs, kZeroCode, sizeof(out[b].qs));
        }
        at += stored ? sizeof(block_q8_0x16) : 0;
    }
}

int64_t blocks_codes(const uint8_t* group, int64_t k, size_t group_bytes) {
    const int64_t nb = k / kQK;
    if (block_map_bytes(nb) > group_bytes) return -1;
    int64_t stored = 0;
    for (int64_t word = 0; word < int64_t(block_map_bytes(nb) / 8); ++word) {
        uint64_t bits;
        std::memcpy(&bits, group + 8 * word, 8);
        if (bits != block_map_word(group, nb, word)) return -1;  // a block past k
        stored += __builtin_popcountll(bits);
    }
    if (block_map_bytes(nb) + size_t(stored) * sizeof(block_q8_0x16) > group_bytes) return -1;
    return stored * kPackRows * kQK;
}

}  // namespace

int64_t sparse_group_bytes(WeightType t, const block_q8_0x16* group, int64_t k) {
    if (t == WeightType::Q8_0_24) return is_two_of_four(group, k) ? int64_t(kPackRows * row_bytes(t, k)) : -1;
    if (t == WeightType::Q8_0_B16) return int64_t(blocks_bytes(group, k));
    return int64_t(unstructured_bytes(group, k));
}

void encode_sparse_group(WeightType t, const block_q8_0x16* group, int64_t k, uint8_t* out) {
    if (t == WeightType::Q8_0_24) encode_two_of_four(group, k, out);
    else if (t == WeightType::Q8_0_B16) encode_blocks(group, k, out);
    else encode_unstructured(group, k, out);
}

void decode_sparse_group(WeightType t, const uint8_t* group, int64_t k, size_t group_bytes, block_q8_0x16* out) {
    if (t == WeightType::Q8_0_24) decode_two_of_four(group, k, out);
    else if (t == WeightType::Q8_0_B16) decode_blocks(group, k, group_bytes, out);
    else decode_unstructured(group, k, group_bytes, out);
}

int64_t sparse_group_codes(WeightType t, const uint8_t* group, int64_t k, size_t group_bytes) {
    if (t == WeightType::Q8_0_24) return kPackRows * k / 2;
    if (t == WeightType::Q8_0_B16) return blocks_codes(group, k, group_bytes);
    return unstructured_codes(group, k, group_bytes);
}

}  // namespace corelm::ref
