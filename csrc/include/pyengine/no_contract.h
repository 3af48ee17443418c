// Included FIRST by the CPU translation units whose decisions must round like the float32 PyTorch
// reference (one rounding per operation, no a * b + c fused into an FMA): before any other
// include, so that every function of the unit, inlined or not, is compiled without contraction.
// The device side gets the same from the rn_* intrinsics of pyengine/common.h.
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
