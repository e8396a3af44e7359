"""config.pbtxt: our writer's text is what Triton's own proto (tritonclient's model_config_pb2) parses, our parser
reads Triton-style hand-written configs, and malformed or rule-breaking configs are refused with one clear line."""

import re

import pytest

from vwt_export.errors import VWTError
from vwt_export.serving import pbtxt
from vwt_export.serving.pbtxt import Enum, parameter

CONFIG = {
    "name": "vwt_python", "backend": "python", "max_batch_size": 32,
    "dynamic_batching": {"preferred_batch_size": [8, 16, 32], "max_queue_delay_microseconds": 2000,
                         "preserve_ordering": False},
    "input": [{"name": "pixels", "data_type": Enum("TYPE_FP32"), "dims": [3, 224, 224]}],
    "output": [{"name": "logits", "data_type": Enum("TYPE_FP32"), "dims": [1000]},
               {"name": "x", "data_type": Enum("TYPE_INT64"), "dims": [-1]}],
    "instance_group": [{"kind": Enum("KIND_CPU"), "count": 2}],
    "model_operations": {"op_library_filename": ["/opt/lib/libvwt ops.so"]},
    "parameters": [parameter("model_file", 'a "quoted"\\path\n\tü'), parameter("threads", 4)],
}


def test_round_trip():
    text = pbtxt.dumps(CONFIG, header="why\nthese values")
    assert text.startswith("# why\n# these values\n")
    assert pbtxt.loads(text) == CONFIG
    assert pbtxt.parameters_of(pbtxt.loads(text))["threads"] == "4"


def test_triton_own_proto_reads_our_text():
    """The independent reference: Triton's ModelConfig message parses our text to the same values."""
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from google.protobuf import text_format

    proto = text_format.Parse(pbtxt.dumps(CONFIG), mc.ModelConfig())
    assert proto.name == "vwt_python" and proto.backend == "python" and proto.max_batch_size == 32
    assert list(proto.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert proto.input[0].data_type == mc.TYPE_FP32 and list(proto.input[0].dims) == [3, 224, 224]
    assert list(proto.output[1].dims) == [-1] and proto.output[1].data_type == mc.TYPE_INT64
    assert proto.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and proto.instance_group[0].count == 2
    assert list(proto.model_operations.op_library_filename) == ["/opt/lib/libvwt ops.so"]
    assert proto.parameters["model_file"].string_value == 'a "quoted"\\path\n\tü'
    # and back: Triton's own text of the same config parses with ours to the same dict
    assert pbtxt.loads(text_format.MessageToString(proto)) == {**CONFIG, "dynamic_batching": {
        k: v for k, v in CONFIG["dynamic_batching"].items() if k != "preserve_ordering"}}


HAND_WRITTEN = """
# Triton documentation style: repeated fields one by one, <> delimiters, commas, single quotes
name: "ens"   platform: "ensemble"
max_batch_size: 8
input { name: 'IN' data_type: TYPE_FP32 dims: 3 dims: 224, dims: 224 }
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 10 ] } ]
ensemble_scheduling {
  step [
    { model_name: "tok" model_version: -1 input_map { key: "pixels" value: "IN" } output_map < key: "t" value: "T" > },
    { model_name: "trunk" model_version: -1 input_map { key: "t" value: "T" }
      output_map { key: "logits" value: "OUT" } }
  ]
}
"""


def test_parses_triton_style_text():
    config = pbtxt.loads(HAND_WRITTEN)
    assert config["input"] == [{"name": "IN", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}]
    assert config["output"][0]["dims"] == [10]
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["tok", "trunk"]
    assert steps[0]["output_map"] == [{"key": "t", "value": "T"}] and steps[0]["model_version"] == -1
    pbtxt.check_model_config(config, folder_name="ens")


@pytest.mark.parametrize("text, message", [
    ('name: "a"\nbackend: "python"\nmax_batch_sise: 4', "line 3: unknown field 'max_batch_sise'"),
    ('name "a"', "expected ':' after 'name'"),
    ('input { name: "x" data_type: TYPE_FP32', "missing '}'"),
    ('input [ { name: "x" } { name: "y" } ]', "expected ',' or ']'"),
    ("input { data_type: TYPE_FLOAT }", "takes one of"),
    ('max_batch_size: "8"', "takes an integer"),
    ("max_batch_size: 8.5", "takes an integer"),
    ("name: model", "takes a quoted string"),
    ("max_batch_size: [ 1, 2 ]", "not a repeated field"),
    ('name: "a" name: "b"', "given twice"),
    ('name: "a\\q"', "unknown escape"),
    ("dynamic_batching { preserve_ordering: maybe }", "true or false"),
    ("name: @", "unexpected character '@'"),
])
def test_malformed_text_is_refused(text, message):
    with pytest.raises(VWTError, match=re.escape(message)):
        pbtxt.loads(text, "m/config.pbtxt")


def _config(**changes):
    config = pbtxt.loads(pbtxt.dumps(CONFIG))
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize("changes, message", [
    ({"dynamic_batching": {"preferred_batch_size": [64]}}, "outside 1..max_batch_size"),
    ({"max_batch_size": 0}, "dynamic_batching needs max_batch_size > 0"),
    ({"platform": "onnxruntime_onnx"}, "exactly one of backend"),
    ({"backend": None}, "exactly one of backend"),
    ({"backend": "onnxrt"}, "unknown backend"),
    ({"input": [{"name": "p", "data_type": Enum("TYPE_FP32"), "dims": [3, 0]}]}, "each is a size"),
    ({"input": [{"name": "p", "data_type": Enum("TYPE_FP32"), "dims": [3]}] * 2}, "declared twice"),
    ({"output": [{"name": "o", "dims": [3]}]}, "has no data_type"),
    ({"instance_group": [{"kind": Enum("KIND_CPU"), "count": 0}]}, "count 0 < 1"),
    ({"instance_group": [{"kind": Enum("KIND_CPU"), "gpus": [0]}]}, "cannot list gpus"),
    ({"ensemble_scheduling": {"step": [{"model_name": "a"}]}}, "belongs to platform"),
])
def test_rule_breaking_configs_are_refused(changes, message):
    with pytest.raises(VWTError, match=message):
        pbtxt.check_model_config(_config(**changes), "m/config.pbtxt", "vwt_python")


def test_name_must_match_folder_and_ensemble_tensors_must_flow():
    with pytest.raises(VWTError, match="differs from its folder"):
        pbtxt.check_model_config(pbtxt.loads(pbtxt.dumps(CONFIG)), folder_name="other")
    broken = HAND_WRITTEN.replace('input_map { key: "t" value: "T" }', 'input_map { key: "t" value: "TT" }')
    with pytest.raises(VWTError, match="reads 'TT'"):
        pbtxt.check_model_config(pbtxt.loads(broken))
