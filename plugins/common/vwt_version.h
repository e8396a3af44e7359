// The version table shared by every implementation of the vwt ops.
//
//   op domain "vwt", opset 1: WordLabels(features, vocab; threshold) -> labels
//                             TokenMerge(tokens, labels; num_prefix) -> merged, sizes
//   library version: bumped when a binary's behaviour changes; the Python side refuses a library whose
//   version differs from the one it was built with (vwt_export/plugins.py).
#pragma once

#define VWT_OPS_DOMAIN "vwt"
#define VWT_OPS_OPSET 1
#define VWT_LIBRARY_VERSION "0.1.0"
