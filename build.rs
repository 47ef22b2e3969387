//! Generates the `transit_realtime` prost types from proto/gtfs-realtime.proto into OUT_DIR; needs no protoc.
//!
//! protox parses the proto into a FileDescriptorSet in pure Rust, we relabel `required` fields as
//! `optional`, and prost-build writes `transit_realtime.rs` from the result.

use protox::prost_reflect::prost_types::field_descriptor_proto::Label;
use protox::prost_reflect::prost_types::DescriptorProto;

// Run as the build script of convert/ (its `build = "../build.rs"`), so paths start one up.
const PROTO_DIR: &str = "../proto";
const PROTO_FILE: &str = "../proto/gtfs-realtime.proto";

/// Optional sub-messages stored as `Option<Box<_>>` rather than inline: a FeedEntity holds one of its six
/// payloads, and StopTimeProperties and ModifiedTripSelector are rare, so inline they would only make
/// every entity, stop time update and trip descriptor bigger (FeedEntity 1720 → ~100 bytes), which costs
/// page faults and copies on a 60k-stop feed.
const BOXED: &[&str] = &[
    ".transit_realtime.FeedEntity.trip_update",
    ".transit_realtime.FeedEntity.vehicle",
    ".transit_realtime.FeedEntity.alert",
    ".transit_realtime.FeedEntity.shape",
    ".transit_realtime.FeedEntity.stop",
    ".transit_realtime.FeedEntity.trip_modifications",
    ".transit_realtime.TripUpdate.StopTimeUpdate.stop_time_properties",
    ".transit_realtime.TripDescriptor.modified_trip",
];

fn main() {
    println!("cargo:rerun-if-changed={PROTO_FILE}");
    println!("cargo:rerun-if-changed=../build.rs");

    let mut fds = match protox::compile([PROTO_FILE], [PROTO_DIR]) {
        Ok(fds) => fds,
        Err(err) => fail(&format!("cannot compile {PROTO_FILE}: {err}")),
    };
    for file in &mut fds.file {
        file.message_type.iter_mut().for_each(relabel_required);
    }
    let mut config = prost_build::Config::new();
    for path in BOXED {
        config.boxed(path);
    }
    if let Err(err) = config.compile_fds(fds) {
        fail(&format!("prost-build failed on {PROTO_FILE}: {err}"));
    }
}

/// Makes every `required` field `optional`, in this message and the ones nested in it.
///
/// prost turns a required scalar into a bare value, so a feed that omits one (Python's protobuf parses
/// such partial messages) would come out as a made-up 0 or "". As `Option` its absence stays visible
/// and the JSON writer omits it, as `MessageToDict` does. The wire format is the same for both labels.
fn relabel_required(message: &mut DescriptorProto) {
    for field in &mut message.field {
        if field.label() == Label::Required {
            field.set_label(Label::Optional);
        }
    }
    message.nested_type.iter_mut().for_each(relabel_required);
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
