"""Tests of ToMe (vwt_export.tome) and its ONNX export."""
