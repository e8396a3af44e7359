"""Triton Python-backend model: serves a vwt-export graph through vwt_export.runtime.

Copied by vwt_export.serving.repository into MODEL/1/model.py; config.pbtxt names the graph in the parameter
"model_file" (relative to this folder). A *.tokenize.onnx file gets the runtime's length-aware batching: the batch
Triton's dynamic batcher forms is tokenized once, then run through the trunk in sub-batches of similar token count.

One execute() call receives every request of the batch Triton formed; they are run as ONE batch (that is the point
of dynamic batching) and the logits are split back per request. An exception answers every request of the batch
with an error response instead of killing the model, so the server keeps serving.

Tensors cross the stub by DLPack, not by as_numpy()/Tensor(name, ndarray): the python backend stub shipped in the
nvidia-pytriton 0.7.0 wheel is built against NumPy 1.x, and under NumPy 2 as_numpy() returns zeros and an output
made from an ndarray arrives empty (measured: tests/serving catches it). DLPack works under both NumPy majors.
The output goes through torch's DLPack export (torch is a vwt-export dependency): NumPy 2's own capsule makes the
stub print a harmless "PyCapsule_GetPointer called with incorrect name" on every request.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from vwt_export import runtime

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, params["model_file"])
        threads = int(params.get("threads", "0")) or None
        kwargs = {}
        if params.get("call_overhead") and path.endswith(runtime.TOKENIZE_SUFFIX):
            kwargs["call_overhead"] = float(params["call_overhead"])
        self.run = runtime.load(path, threads=threads, **kwargs)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.batches = 0  # execute() calls, logged at finalize (the server's statistics count them too)

    def execute(self, requests):
        try:
            arrays = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name)) for r in requests]
            sizes = [len(a) for a in arrays]
            logits = np.ascontiguousarray(self.run(np.concatenate(arrays) if len(arrays) > 1 else arrays[0]),
                                          dtype=np.float32)
        except Exception as e:  # bad input or a runtime failure: answer, do not die
            error = pb_utils.TritonError(f"{type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        self.batches += 1
        responses, start = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse([_tensor(self.output_name, logits[start:start + n])]))
            start += n
        return responses


def _tensor(name, array):
    import torch
    from torch.utils.dlpack import to_dlpack

    return pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(np.ascontiguousarray(array))))
