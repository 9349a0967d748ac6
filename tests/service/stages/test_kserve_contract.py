"""The KServe v2 client's contract without a server: our proto against Triton's, the metadata
check's verdicts, and the configuration rules of ``inference.backend = "kserve"``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor

from service._proto.kserve.v2 import inference_pb2
from service.bundle import load_bundle
from service.config import ConfigError, load_config
from service.stages.kserve import metadata_problems

Tensor = inference_pb2.ModelMetadataResponse.TensorMetadata


def _triton_service_pb2() -> Any:
    """Triton's own generated grpc_service.proto (tritonclient, the dev extra)."""
    from tritonclient.grpc import service_pb2

    return service_pb2


def _messages(file: descriptor.FileDescriptor) -> dict[str, descriptor.Descriptor]:
    out: dict[str, descriptor.Descriptor] = {}
    todo = list(file.message_types_by_name.values())
    while todo:
        message = todo.pop()
        out[message.full_name] = message
        todo += list(message.nested_types)
    return out


def test_our_proto_is_a_subset_of_tritons_wire_contract() -> None:
    """Every service, method, message and field we declare has Triton's name, number and type."""
    theirs_file = _triton_service_pb2().DESCRIPTOR
    ours_file = inference_pb2.DESCRIPTOR
    assert ours_file.package == theirs_file.package == "inference"
    ours_service = ours_file.services_by_name["GRPCInferenceService"]
    theirs_service = theirs_file.services_by_name["GRPCInferenceService"]
    assert ours_service.full_name == theirs_service.full_name
    for method in ours_service.methods:
        other = theirs_service.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name, method.name
        assert method.output_type.full_name == other.output_type.full_name, method.name
    theirs = _messages(theirs_file)
    checked = 0
    for name, message in _messages(ours_file).items():
        assert name in theirs, f"{name} is not a Triton message"
        for field in message.fields:
            other = theirs[name].fields_by_name[field.name]
            assert (field.number, field.type) == (other.number, other.type), f"{name}.{field.name}"
            assert field.is_repeated == other.is_repeated, f"{name}.{field.name}"
            if field.message_type is not None:
                assert field.message_type.full_name == other.message_type.full_name
            checked += 1
    assert checked >= 40  # the five calls' messages, nested tensors and parameter maps


def test_messages_cross_the_wire_between_the_two_stub_sets() -> None:
    """A request we encode decodes with Triton's stubs to the same values, and back."""
    service_pb2 = _triton_service_pb2()
    ours = inference_pb2.ModelInferRequest(model_name="cxr_triage", model_version="1")
    ours.inputs.add(name="image", datatype="FP32", shape=[2, 1, 4, 4])
    ours.outputs.add(name="p_error")
    ours.raw_input_contents.append(b"\x00" * 128)
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.model_version) == ("cxr_triage", "1")
    assert list(theirs.inputs[0].shape) == [2, 1, 4, 4] and theirs.inputs[0].datatype == "FP32"
    assert theirs.outputs[0].name == "p_error" and theirs.raw_input_contents == [b"\x00" * 128]
    reply = service_pb2.ModelMetadataResponse(name="m", versions=["1"], platform="python")
    reply.outputs.add(name="cams", datatype="FP32", shape=[-1, 4, 2, 2])
    back = inference_pb2.ModelMetadataResponse.FromString(reply.SerializeToString())
    assert back.outputs[0].name == "cams" and list(back.outputs[0].shape) == [-1, 4, 2, 2]


def _metadata(bundle: Path) -> inference_pb2.ModelMetadataResponse:
    """The metadata Triton reports for ``triage export triton``'s repository of ``bundle``."""
    manifest = load_bundle(bundle).manifest
    reply = inference_pb2.ModelMetadataResponse(name="cxr_triage", versions=["1"])
    inp = manifest["input"]
    reply.inputs.add(name=inp["name"], datatype="FP32", shape=[-1, *inp["shape"][1:]])
    for name, spec in manifest["outputs"].items():
        dims = [int(d) for d in spec["shape"][1:]] or [1]  # dims [1] for per-item scalars
        reply.outputs.add(name=name, datatype="FP32", shape=[-1, *dims])
    return reply


def test_matching_metadata_passes(bundle_path: Path) -> None:
    """The exported repository's tensors (scalars as [batch, 1]) match the bundle."""
    assert metadata_problems(load_bundle(bundle_path), _metadata(bundle_path)) == []


def test_each_difference_is_named(bundle_path: Path) -> None:
    """A renamed output, another dtype, other dims and an extra input are each reported."""
    bundle = load_bundle(bundle_path)
    reply = _metadata(bundle_path)
    reply.outputs[3].name = "p_err"  # p_error
    reply.outputs[0].datatype = "FP16"  # probabilities
    del reply.inputs[0].shape[:]
    reply.inputs[0].shape.extend([-1, 1, 32, 32])
    reply.inputs.add(name="mask", datatype="FP32", shape=[-1, 1])
    problems = metadata_problems(bundle, reply)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "output 'p_error' is missing" in text and "'p_err'" in text
    assert "output 'probabilities' is FP16 on the server, FP32 in the bundle" in text
    assert "input 'image' has shape [batch, 1, 32, 32] on the server" in text
    assert "[batch, 1, 64, 64] in the bundle" in text
    assert "inputs the bundle does not feed: ['mask']" in text


def test_fixed_batch_axis_is_refused(bundle_path: Path) -> None:
    """A model that only takes batches of one cannot carry the micro-batches."""
    reply = _metadata(bundle_path)
    reply.inputs[0].shape[0] = 1
    (problem,) = metadata_problems(load_bundle(bundle_path), reply)
    assert problem.startswith("input 'image' has shape [1, 1, 64, 64] on the server")


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"inference.backend": "kserve"}, "inference.kserve_address", "required when"),
        ({"inference.backend": "triton"}, "inference.backend", "must be one of"),
        ({"inference.kserve_tls_ca": __file__}, "inference.kserve_tls_ca", "kserve_tls = true"),
        (
            {"inference.kserve_tls": "true", "inference.kserve_tls_cert": __file__},
            "inference.kserve_tls_key",
            "must be set together",
        ),
        ({"inference.kserve_timeout_seconds": "0"}, "inference.kserve_timeout_seconds", "> 0"),
    ],
)
def test_kserve_configuration_is_checked(
    bundle_path: Path, overrides: dict[str, str], key: str, reason: str
) -> None:
    """A kserve configuration that cannot work is refused naming the key."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={}, overrides={"bundle": str(bundle_path), **overrides})
    line = next(line for line in str(info.value).splitlines() if key in line)
    assert reason in line
