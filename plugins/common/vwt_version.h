// The version table shared by every implementation of the vwt ops.
//
//   op domain "vwt", opset 2: TokenMerge(tokens T[B,P+N,D], keys i64[B,N]; num_prefix, grid_w = 0)
//                               -> merged T[B,P+M,D], sizes f32[B,P+M], length i64 [] (= P + M)
//                             BlockMerge(tokens f32[B,T,D], metric f32[B,T,C], sizes f32[B,T]; num_prefix, r, r_den = 0)
//                               -> merged f32[B,T',D], merged_sizes f32[B,T']   (library 0.3.0 on)
//                             (opset 1 had WordLabels and a two-output TokenMerge on dense labels: gone; the ONNX
//                             Runtime op declares opset 2 only, so a v1 graph finds no kernel instead of running)
//   library version: bumped when a binary's behaviour changes; the Python side refuses a library whose
//   version differs from the one it was built with (vwt_export/plugins.py LIBRARY_VERSION).
#pragma once

#define VWT_OPS_DOMAIN "vwt"
#define VWT_OPS_OPSET 2
#define VWT_LIBRARY_VERSION "0.3.0"
