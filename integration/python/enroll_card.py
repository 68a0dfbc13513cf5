#!/usr/bin/python3
"""Calls EnrollmentService/EnrollCard with grpcio, optionally under integration/service-config.json.

An integrator's sketch and a CI check at once (tests/integration/service_config.rs runs it): it
uses an independent gRPC implementation (grpcio, gRPC core: Debian's python3-grpcio) to show
that the service config's retry policy retries an UNAVAILABLE EnrollCard by itself, resending
the same request, hence the same idempotency key.

No generated stubs: the messages are built at run time from a FileDescriptorSet (the contract's,
e.g. `buf build proto -o c2p.binpb`, or `protoc --include_imports --descriptor_set_out=...`;
the test writes the one the crate embeds), and the call goes through grpcio's generic
`channel.unary_unary`. With generated code (`grpc_tools.protoc`) the channel options are the
same.

Prints one JSON line: {"ok": true, "state": ..., "replayed": ..., "seconds": ...} or
{"ok": false, "code": "UNAVAILABLE", "reason": "UPSTREAM_UNAVAILABLE", "message": ...}.
Exit code 0 either way (the caller judges); 2 on bad usage.
"""

import argparse
import json
import sys
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "c2p.enrollment.v1.EnrollmentService"


def load_pool(paths):
    """A descriptor pool holding every file of the given FileDescriptorSets (imports first)."""
    files = {}
    for path in paths:
        with open(path, "rb") as f:
            for proto in descriptor_pb2.FileDescriptorSet.FromString(f.read()).file:
                files.setdefault(proto.name, proto)
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        proto = files.get(name)
        if proto is None:
            # A well-known type the set does not carry: take the runtime's own copy.
            proto = well_known(name)
        for dependency in proto.dependency:
            add(dependency)
        pool.Add(proto)
        added.add(name)

    for name in list(files):
        add(name)
    return pool


def well_known(name):
    from google.protobuf import (
        any_pb2,
        descriptor_pb2 as descriptor_module,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    )

    modules = {
        module.DESCRIPTOR.name: module
        for module in (
            any_pb2,
            descriptor_module,
            duration_pb2,
            empty_pb2,
            field_mask_pb2,
            struct_pb2,
            timestamp_pb2,
            wrappers_pb2,
        )
    }
    if name not in modules:
        raise SystemExit(f"the descriptor sets lack {name}")
    proto = descriptor_pb2.FileDescriptorProto()
    modules[name].DESCRIPTOR.CopyToProto(proto)
    return proto


def message_class(pool, full_name):
    descriptor = pool.FindMessageTypeByName(full_name)
    get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    if get is not None:
        return get(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def error_reason(pool, trailing_metadata):
    """The ErrorInfo reason in `grpc-status-details-bin`, when the sets know google.rpc."""
    try:
        status_class = message_class(pool, "google.rpc.Status")
        info_class = message_class(pool, "google.rpc.ErrorInfo")
    except KeyError:
        return None
    for key, value in trailing_metadata or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_class.FromString(value).details:
            if detail.type_url.endswith("/google.rpc.ErrorInfo"):
                return info_class.FromString(detail.value).reason
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the service (plaintext)")
    parser.add_argument(
        "--descriptor-set",
        action="append",
        required=True,
        help="a FileDescriptorSet with the contract (repeatable: add google.rpc's to decode errors)",
    )
    parser.add_argument("--service-config", help="a gRPC service config JSON file")
    parser.add_argument("--idempotency-key", required=True)
    parser.add_argument("--card-contract-id", type=int, default=70001)
    args = parser.parse_args()

    pool = load_pool(args.descriptor_set)
    request_class = message_class(pool, "c2p.enrollment.v1.EnrollCardRequest")
    response_class = message_class(pool, "c2p.enrollment.v1.EnrollCardResponse")
    state_enum = pool.FindEnumTypeByName("c2p.enrollment.v1.EnrollmentState")

    options = [
        ("grpc.enable_retries", 1),
        # Only the target named: never an http_proxy from the environment.
        ("grpc.enable_http_proxy", 0),
    ]
    if args.service_config:
        with open(args.service_config, encoding="utf-8") as f:
            # The whole JSON document, as the channel option takes it.
            options.append(("grpc.service_config", f.read()))

    request = request_class()
    request.idempotency_key = args.idempotency_key
    request.card_contract_id = args.card_contract_id
    request.consumer.email = "jane.doe@example.com"
    request.consumer.country_code = "US"
    request.consumer.language_code = "en_US"
    request.cardholder_full_name = "Jane Doe"

    started = time.monotonic()
    with grpc.insecure_channel(args.target, options=options) as channel:
        enroll_card = channel.unary_unary(
            f"/{SERVICE}/EnrollCard",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            # No timeout here: the service config's applies (without one, the call has none
            # and the server's grpc.limits.default_deadline bounds it).
            response = enroll_card(request)
        except grpc.RpcError as error:
            print(
                json.dumps(
                    {
                        "ok": False,
                        "code": error.code().name,
                        "reason": error_reason(pool, error.trailing_metadata()),
                        "message": error.details(),
                        "seconds": round(time.monotonic() - started, 3),
                    }
                )
            )
            return 0
    print(
        json.dumps(
            {
                "ok": True,
                "state": state_enum.values_by_number[response.enrollment.state].name,
                "replayed": response.replayed,
                "seconds": round(time.monotonic() - started, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
