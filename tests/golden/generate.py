#!/usr/bin/env python3
"""Write the golden JSON that tests/json_golden.rs compares src/json.rs against, using Google's Python runtime.

For every tests/fixtures/gtfs-rt/*.pb and every tests/golden/synthetic/*.pb this writes
tests/golden/<stem>.json, and for a few of them tests/golden/<stem>.camel.json, as

    json.dumps(MessageToDict(msg[, preserving_proto_field_name=True]), ensure_ascii=False, separators=(",", ":"))

which is byte for byte what json::write_feed must produce (no envelope).

Which schema parses the fixtures: the message classes are built from OUR proto/gtfs-realtime.proto (compiled by
the protoc that grpcio-tools ships, loaded into a private descriptor pool), because that is the schema the Rust
decoder uses: a field the last gtfs-realtime-bindings release lacks would be an unknown field, dropped, for the
bindings' gtfs_realtime_pb2 while we decode and print it. Every fixture is also parsed with the bindings'
gtfs_realtime_pb2 and the two documents compared; a difference is reported (and expected only for such newer
fields). With gtfs-realtime-bindings 3.0.0 none of the fixtures differs (the two schemas have the same fields).

The synthetic fixtures are made here, deterministically (fixed seed):
- kitchen-sink.pb: every message and field of the proto, enum values the proto does not define, extensions and
  unknown fields, required fields left out, int extremes, float specials, strings with every control character.
- floats.pb: thousands of positions with random f32/f64 bit patterns and GPS-like values, for float formatting.

Needs: pip install protobuf gtfs-realtime-bindings grpcio-tools (versions used: see README.md here)
Run from the repository root or anywhere: python3 tests/golden/generate.py
"""

import json
import math
import pathlib
import random
import struct
import sys
import tempfile
from importlib import metadata

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.transit import gtfs_realtime_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gtfs-rt"
GOLDEN = ROOT / "tests" / "golden"
SYNTHETIC = GOLDEN / "synthetic"
CAMEL = {"mbta-alerts-1", "mbta-vp-1", "kitchen-sink"}


def our_feed_message_class():
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "fds.pb"
        args = ["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={out}", "gtfs-realtime.proto"]
        if protoc.main(args) != 0:
            sys.exit("protoc failed on proto/gtfs-realtime.proto")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("transit_realtime.FeedMessage"))


def dumps(msg, proto_names: bool) -> str:
    d = json_format.MessageToDict(msg, preserving_proto_field_name=proto_names)
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))


# Synthetic fixtures, built with the bindings' classes (same fields as ours).
R = gtfs_realtime_pb2


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def with_raw(msg, raw: bytes):
    """msg plus raw wire bytes, e.g. an out-of-range enum value or an extension, parsed back in."""
    out = type(msg)()
    out.MergeFromString(msg.SerializePartialToString() + raw)
    return out


# Every field number an extension or a stranger may use; the writer must drop them all.
EXTRAS = (
    tag(1000, 2) + varint(3) + b"ext"          # registered extension range
    + tag(9999, 0) + varint(7)                # private extension range
    + tag(99, 5) + b"\x00\x00\x80\x3f"        # unknown fixed32
    + tag(98, 1) + b"\x01" * 8                # unknown fixed64
)

TRICKY = "".join(chr(c) for c in range(0x20)) + "\"\\/\x7f\u2028\u2029 é ż 東京 🚋 \U0010ffff end"


def ts(text: str, language: str = "") -> R.TranslatedString:
    s = R.TranslatedString()
    t = s.translation.add(text=text)
    if language:
        t.language = language
    return s


def f32(x: float) -> float:
    """x rounded to the nearest f32 (infinity past its range), as the f32 field will hold it."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def kitchen_sink() -> R.FeedMessage:
    feed = R.FeedMessage()
    h = feed.header
    h.gtfs_realtime_version = "2.0"
    h.incrementality = R.FeedHeader.DIFFERENTIAL
    h.timestamp = 2**64 - 1
    h.feed_version = "v1 " + TRICKY
    feed.header.CopyFrom(with_raw(h, EXTRAS))

    # Trip update with every field.
    e = feed.entity.add(id="tu-full", is_deleted=False)
    tu = e.trip_update
    tu.trip.trip_id = "t1"
    tu.trip.route_id = "r1"
    tu.trip.direction_id = 4294967295
    tu.trip.start_time = "25:61:00"
    tu.trip.start_date = "20250101"
    tu.trip.schedule_relationship = R.TripDescriptor.NEW
    tu.trip.modified_trip.modifications_id = "m1"
    tu.trip.modified_trip.affected_trip_id = "t0"
    tu.trip.modified_trip.start_time = "08:00:00"
    tu.trip.modified_trip.start_date = "20250102"
    tu.vehicle.id = "v1"
    tu.vehicle.label = "Label \"quoted\""
    tu.vehicle.license_plate = "AB-123"
    tu.vehicle.wheelchair_accessible = R.VehicleDescriptor.WHEELCHAIR_INACCESSIBLE
    u = tu.stop_time_update.add(stop_sequence=0, stop_id="s0")
    u.arrival.delay = -(2**31)
    u.arrival.time = -(2**63)
    u.arrival.uncertainty = 2**31 - 1
    u.arrival.scheduled_time = 2**63 - 1
    u.departure.delay = 0
    u.departure.time = 0
    u.departure_occupancy_status = R.VehiclePosition.NOT_BOARDABLE
    u.schedule_relationship = R.TripUpdate.StopTimeUpdate.UNSCHEDULED
    p = u.stop_time_properties
    p.assigned_stop_id = "s0b"
    p.stop_headsign = "Centrum"
    p.pickup_type = R.TripUpdate.StopTimeUpdate.StopTimeProperties.COORDINATE_WITH_DRIVER
    p.drop_off_type = R.TripUpdate.StopTimeUpdate.StopTimeProperties.REGULAR
    u = tu.stop_time_update.add(stop_sequence=4294967295)
    u.arrival.SetInParent()  # present but empty: {}
    u.schedule_relationship = R.TripUpdate.StopTimeUpdate.SKIPPED
    tu.timestamp = 0
    tu.delay = -1
    tp = tu.trip_properties
    tp.trip_id = "t1-dup"
    tp.start_date = "20250103"
    tp.start_time = "09:00:00"
    tp.shape_id = "sh1"
    tp.trip_headsign = "Airport ✈"
    tp.trip_short_name = "101"

    # Out-of-range enum values: Python keeps them as unknown fields, the writer must omit them.
    e = feed.entity.add(id="tu-unknown-enums")
    e.trip_update.trip.CopyFrom(with_raw(R.TripDescriptor(trip_id="t2"), tag(4, 0) + varint(4)))
    stu = R.TripUpdate.StopTimeUpdate(stop_sequence=1)
    stu = with_raw(stu, tag(5, 0) + varint(99) + tag(7, 0) + varint(-1) + EXTRAS)
    e.trip_update.stop_time_update.append(stu)
    e.trip_update.trip_properties.CopyFrom(with_raw(R.TripUpdate.TripProperties(), EXTRAS))
    e.trip_update.vehicle.CopyFrom(with_raw(R.VehicleDescriptor(id="v2"), tag(4, 0) + varint(17)))

    # Vehicle position with every field.
    e = feed.entity.add(id="vp-full")
    vp = e.vehicle
    vp.trip.trip_id = "t1"
    vp.trip.schedule_relationship = R.TripDescriptor.DUPLICATED
    vp.vehicle.id = "v1"
    vp.position.latitude = f32(52.379189)
    vp.position.longitude = f32(4.899431)
    vp.position.bearing = f32(359.9)
    vp.position.odometer = 123456.789
    vp.position.speed = f32(13.8)
    vp.current_stop_sequence = 7
    vp.stop_id = "s7"
    vp.current_status = R.VehiclePosition.INCOMING_AT
    vp.timestamp = 1732470000
    vp.congestion_level = R.VehiclePosition.SEVERE_CONGESTION
    vp.occupancy_status = R.VehiclePosition.EMPTY
    vp.occupancy_percentage = 0
    c = vp.multi_carriage_details.add(id="c1", label="A", carriage_sequence=1)
    c.occupancy_status = R.VehiclePosition.FULL
    c.occupancy_percentage = -1
    vp.multi_carriage_details.add()  # an empty element: {}
    c = with_raw(R.VehiclePosition.CarriageDetails(id="c3"), tag(3, 0) + varint(42))
    vp.multi_carriage_details.append(c)

    # Position with the required latitude left out, special floats, unknown enum values.
    e = feed.entity.add(id="vp-specials")
    vp = e.vehicle
    pos = R.Position(longitude=float("nan"), bearing=float("inf"), speed=float("-inf"), odometer=float("nan"))
    vp.position.CopyFrom(with_raw(pos, EXTRAS))
    vp.CopyFrom(with_raw(vp, tag(4, 0) + varint(3) + tag(6, 0) + varint(5) + tag(9, 0) + varint(9)))
    e = feed.entity.add(id="vp-odd-floats")
    e.vehicle.position.latitude = -0.0
    e.vehicle.position.longitude = f32(1e-5)
    e.vehicle.position.bearing = f32(3.4028234663852886e38)
    e.vehicle.position.speed = 1.401298464324817e-45
    e.vehicle.position.odometer = 1e16
    e = feed.entity.add(id="vp-odd-floats-2")
    e.vehicle.position.latitude = 35.0
    e.vehicle.position.longitude = f32(0.1)
    e.vehicle.position.bearing = 16777216.0
    e.vehicle.position.speed = f32(1e-4)
    e.vehicle.position.odometer = 5e-324

    # Alert with every field.
    e = feed.entity.add(id="alert-full")
    a = e.alert
    a.active_period.add(start=1, end=2**64 - 1)
    a.active_period.add(start=5)
    a.active_period.add()
    a.communication_period.add(start=10, end=20)
    a.impact_period.add(end=30)
    sel = a.informed_entity.add(agency_id="ag", route_id="r", route_type=-3, stop_id="s", direction_id=1)
    sel.trip.trip_id = "t"
    sel.trip.schedule_relationship = R.TripDescriptor.CANCELED
    a.informed_entity.add(route_type=0)
    a.cause = R.Alert.SPECIAL_EVENT
    a.effect = R.Alert.ACCESSIBILITY_ISSUE
    a.url.CopyFrom(ts("https://example.org/a?b=c&d=e"))
    a.header_text.translation.add(text="Utrudnienia", language="pl")
    a.header_text.translation.add(text="Disruption", language="en")
    a.description_text.CopyFrom(ts(TRICKY, "und"))
    a.tts_header_text.CopyFrom(ts("Disruption"))
    a.tts_description_text.CopyFrom(ts(""))
    a.severity_level = R.Alert.SEVERE
    a.image.localized_image.add(url="https://example.org/i.png", media_type="image/png", language="en")
    a.image.localized_image.add(url="u", media_type="image/svg+xml")
    a.image_alternative_text.CopyFrom(ts("A map"))
    a.cause_detail.CopyFrom(ts("Parade"))
    a.effect_detail.CopyFrom(ts("Detour"))

    # Alert with a Translation missing its required text, enum values the proto lacks.
    e = feed.entity.add(id="alert-partial")
    a = e.alert
    a.header_text.translation.append(with_raw(R.TranslatedString.Translation(language="en"), EXTRAS))
    a.CopyFrom(with_raw(a, tag(6, 0) + varint(0) + tag(7, 0) + varint(12) + tag(14, 0) + varint(5)))
    img = with_raw(R.TranslatedImage.LocalizedImage(media_type="image/png"), b"")
    a.image.localized_image.append(img)

    # Experimental entities.
    e = feed.entity.add(id="shape")
    e.shape.shape_id = "sh1"
    e.shape.encoded_polyline = "_p~iF~ps|U_ulLnnqC_mqNvxq`@"
    e = feed.entity.add(id="stop-full")
    s = e.stop
    s.stop_id = "s1"
    s.stop_code.CopyFrom(ts("1234"))
    s.stop_name.CopyFrom(ts("Dworzec Centralny", "pl"))
    s.tts_stop_name.CopyFrom(ts("Dworzec Centralny"))
    s.stop_desc.CopyFrom(ts("Temporary stop"))
    s.stop_lat = f32(52.2289)
    s.stop_lon = f32(21.0034)
    s.zone_id = "z1"
    s.stop_url.CopyFrom(ts("https://example.org/s1"))
    s.parent_station = "st1"
    s.stop_timezone = "Europe/Warsaw"
    s.wheelchair_boarding = R.Stop.NOT_AVAILABLE
    s.level_id = "L0"
    s.platform_code.CopyFrom(ts("2"))
    e = feed.entity.add(id="stop-unknown-enum")
    e.stop.CopyFrom(with_raw(R.Stop(stop_id="s2", wheelchair_boarding=R.Stop.UNKNOWN), b""))
    e.stop.CopyFrom(with_raw(R.Stop(stop_id="s3"), tag(13, 0) + varint(3)))
    e = feed.entity.add(id="trip-modifications")
    tm = e.trip_modifications
    tm.selected_trips.add(trip_ids=["t1", "t2"], shape_id="sh1")
    tm.selected_trips.add()
    tm.start_times.extend(["08:00:00", ""])
    tm.service_dates.extend(["20250101"])
    m = tm.modifications.add()
    m.start_stop_selector.stop_sequence = 3
    m.end_stop_selector.stop_id = "s9"
    m.propagated_modification_delay = -60
    m.replacement_stops.add(travel_time_to_stop=0, stop_id="s4b")
    m.replacement_stops.add(travel_time_to_stop=120)
    m.service_alert_id = "alert-full"
    m.last_modified_time = 1732470000
    tm.modifications.add(propagated_modification_delay=0)

    # Deletion and bare entities.
    feed.entity.add(id="deleted", is_deleted=True)
    feed.entity.add(id="")
    feed.entity.append(with_raw(R.FeedEntity(), EXTRAS))  # id (required) missing
    e = feed.entity.add(id="empty-messages")
    e.trip_update.trip.SetInParent()
    e = feed.entity.add(id="empty-vehicle")
    e.vehicle.SetInParent()
    return feed


def random_f32(rng: random.Random) -> float:
    return struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0]


def random_f64(rng: random.Random) -> float:
    return struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]


def floats() -> R.FeedMessage:
    """Positions whose floats exercise ToShortestFloat and repr: bit patterns, GPS-like and decimal-ish values."""
    rng = random.Random(20250101)
    feed = R.FeedMessage()
    feed.header.gtfs_realtime_version = "2.0"
    for i in range(3000):
        pos = feed.entity.add(id=str(i)).vehicle.position
        kind = i % 3
        if kind == 0:
            pos.latitude, pos.longitude = random_f32(rng), random_f32(rng)
            pos.bearing, pos.speed = random_f32(rng), random_f32(rng)
            pos.odometer = random_f64(rng)
        elif kind == 1:
            pos.latitude = f32(rng.uniform(-90, 90))
            pos.longitude = f32(rng.uniform(-180, 180))
            pos.bearing = f32(rng.uniform(0, 360))
            pos.speed = f32(rng.uniform(0, 40))
            pos.odometer = rng.uniform(0, 1e7)
        else:
            digits = rng.randint(1, 9)
            pos.latitude = f32(round(rng.uniform(-90, 90), digits))
            pos.longitude = f32(rng.randint(-(10**digits), 10**digits) * 10.0 ** rng.randint(-45, 38))
            pos.bearing = f32(rng.randint(0, 3600) / 10)
            pos.speed = f32(rng.randint(0, 2**24) * 2.0 ** rng.randint(-149, 104))
            pos.odometer = rng.randint(0, 10**17) * 10.0 ** rng.randint(-330, 300)
    return feed


def write_synthetic() -> None:
    SYNTHETIC.mkdir(exist_ok=True)
    for name, feed in (("kitchen-sink", kitchen_sink()), ("floats", floats())):
        (SYNTHETIC / f"{name}.pb").write_bytes(feed.SerializePartialToString())


def main() -> int:
    versions = {p: metadata.version(p) for p in ("protobuf", "gtfs-realtime-bindings", "grpcio-tools")}
    print("using", ", ".join(f"{p} {v}" for p, v in versions.items()), f"python {sys.version.split()[0]}")
    write_synthetic()
    ours = our_feed_message_class()
    inputs = sorted(FIXTURES.glob("*.pb")) + sorted(SYNTHETIC.glob("*.pb"))
    for pb in inputs:
        body = pb.read_bytes()
        msg = ours.FromString(body)
        text = dumps(msg, proto_names=True)
        theirs = dumps(gtfs_realtime_pb2.FeedMessage.FromString(body), proto_names=True)
        if theirs != text:
            print(f"note: {pb.name}: the bindings' gtfs_realtime_pb2 gives another document (fields newer than it?)")
        (GOLDEN / f"{pb.stem}.json").write_text(text + "\n", encoding="utf-8")
        written = [f"{pb.stem}.json"]
        if pb.stem in CAMEL:
            (GOLDEN / f"{pb.stem}.camel.json").write_text(dumps(msg, proto_names=False) + "\n", encoding="utf-8")
            written.append(f"{pb.stem}.camel.json")
        print(f"{pb.relative_to(ROOT)}: {len(msg.entity)} entities -> {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
