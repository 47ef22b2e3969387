#!/usr/bin/env python3
"""Check proto/gtfs-realtime.proto against the gtfs_realtime_pb2 shipped in PyPI's gtfs-realtime-bindings.

Every message, field, enum value and extension range in the bindings must exist in our proto with the
same name, number, type, type name, label and default: those are the wire (and JSON) contract. What our
proto has beyond the bindings is listed, not failed: the spec may be newer than the last bindings release.

Needs: pip install protobuf gtfs-realtime-bindings grpcio-tools   (grpcio-tools ships protoc)
Run from anywhere: python3 tests/golden/check_proto.py    Exit status 1 on any mismatch.
"""

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.transit import gtfs_realtime_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO_NAME = "gtfs-realtime.proto"


def compile_ours() -> descriptor_pb2.FileDescriptorProto:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "fds.pb"
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", PROTO_NAME])
        if rc != 0:
            sys.exit(f"protoc failed on {PROTO_DIR / PROTO_NAME} (exit {rc})")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def theirs() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    gtfs_realtime_pb2.DESCRIPTOR.CopyToProto(fdp)
    # CopyToProto leaves json_name out; the live descriptors know it (it names the camelCase JSON keys).
    def fill(proto, live):
        for f in proto.field:
            f.json_name = live.fields_by_name[f.name].json_name
        for n in proto.nested_type:
            fill(n, live.nested_types_by_name[n.name])

    for m in fdp.message_type:
        fill(m, gtfs_realtime_pb2.DESCRIPTOR.message_types_by_name[m.name])
    return fdp


def index(fdp: descriptor_pb2.FileDescriptorProto) -> dict:
    """Flatten a file into {path: comparable tuple} for messages, fields, enum values, extension ranges."""
    items = {}

    def enum(prefix, e):
        items[f"enum {prefix}{e.name}"] = ()
        for v in e.value:
            items[f"enum value {prefix}{e.name}.{v.name}"] = (v.number,)

    def message(prefix, m):
        path = f"{prefix}{m.name}"
        items[f"message {path}"] = ()
        for f in m.field:
            items[f"field {path}.{f.name}"] = (
                f.number,
                descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
                f.type_name,
                descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
                f.default_value if f.HasField("default_value") else None,
                f.json_name,
            )
        for r in m.extension_range:
            items[f"extensions {path} {r.start} to {r.end - 1}"] = ()
        for e in m.enum_type:
            enum(f"{path}.", e)
        for n in m.nested_type:
            message(f"{path}.", n)

    items["package"] = (fdp.package, fdp.syntax or "proto2")
    for e in fdp.enum_type:
        enum("", e)
    for m in fdp.message_type:
        message("", m)
    return items


def main() -> int:
    ours, ref = index(compile_ours()), index(theirs())
    problems = []
    for key, want in ref.items():
        if key not in ours:
            problems.append(f"missing in ours: {key} {want}")
        elif ours[key] != want:
            problems.append(f"differs: {key}: ours {ours[key]} bindings {want}")
    extra = sorted(k for k in ours if k not in ref)
    for key in extra:
        print(f"only in ours (newer than the bindings?): {key} {ours[key]}")
    for p in problems:
        print(p)
    print(f"checked {len(ref)} items of the bindings: {len(problems)} problems, {len(extra)} extra in ours")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
