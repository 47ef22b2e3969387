//! Property tests of the JSON writer: arbitrary `FeedMessage`s (strings with control characters,
//! quotes, backslashes, non-ASCII and U+2028; every class of float; 64-bit extremes; empty,
//! absent and nested fields) go through `write_feed`, `write_entity` and `transcode_feed`, are
//! parsed by serde_json and read back into prost values that must equal the originals.
//!
//! The reader below is independent of src/json.rs: it knows only the JSON contract (README). It
//! refuses any key it does not consume, an empty list, a non-canonical integer string, and an
//! enum name the proto does not define, so "omitted" means exactly "unset" in both directions.

use std::fmt::Debug;

use gtfs_rt_kafka::decode::transit_realtime::{
    alert, feed_header, stop, translated_image, translated_string, trip_descriptor,
    trip_modifications, trip_update, vehicle_descriptor, vehicle_position, Alert, EntitySelector,
    FeedEntity, FeedHeader, FeedMessage, Position, ReplacementStop, Shape, Stop, StopSelector,
    TimeRange, TranslatedImage, TranslatedString, TripDescriptor, TripModifications, TripUpdate,
    VehicleDescriptor, VehiclePosition,
};
use gtfs_rt_kafka::json::{transcode_feed, write_entity, write_feed, Envelope, FieldNames};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use prost::Message as _;
use serde_json::{Map, Value};
use trip_update::stop_time_update::{self, stop_time_properties, StopTimeProperties};
use trip_update::{StopTimeEvent, StopTimeUpdate, TripProperties};

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // A failure is shrunk to a small feed; keep that search bounded too.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn write_feed_round_trips(feed in feed_message(), camel in any::<bool>(), envelope in envelope()) {
        let names = if camel { FieldNames::Camel } else { FieldNames::Proto };
        let mut out = Vec::new();
        write_feed(&mut out, &feed, names, Some(&envelope.as_envelope()));
        let mut doc = parse(&out)?;
        let back_envelope = read_envelope(&mut doc);
        let back = read(doc, camel, feed_message_from);
        same(&back, &feed)?;
        same(&back_envelope, &envelope)?;
    }

    #[test]
    fn write_entity_round_trips(
        header in feed_header_strategy(),
        entity in feed_entity(),
        camel in any::<bool>(),
    ) {
        let names = if camel { FieldNames::Camel } else { FieldNames::Proto };
        let mut out = Vec::new();
        write_entity(&mut out, &header, &entity, names, None);
        let mut doc = Obj::new(parse(&out)?, camel);
        let back_header = doc.message("header", feed_header_from);
        let back_entity = doc.message("entity", feed_entity_from);
        doc.done();
        same(&back_header, &Some(header))?;
        same(&back_entity, &Some(entity))?;
    }

    /// The streaming path writes exactly what the whole-feed path writes, for the same bytes.
    #[test]
    fn transcode_feed_equals_write_feed(
        mut feed in feed_message(),
        header in feed_header_strategy(),
        camel in any::<bool>(),
    ) {
        feed.header.get_or_insert(header);
        let names = if camel { FieldNames::Camel } else { FieldNames::Proto };
        let mut expected = Vec::new();
        write_feed(&mut expected, &feed, names, None);
        let mut streamed = Vec::new();
        let n = transcode_feed(&mut streamed, &feed.encode_to_vec(), names, None);
        prop_assert_eq!(n.ok(), Some(feed.entity.len()));
        prop_assert_eq!(String::from_utf8_lossy(&streamed), String::from_utf8_lossy(&expected));
    }

    /// Any number in any enum field: written by name if the proto defines it, else left out.
    #[test]
    fn undefined_enum_numbers_are_omitted(
        v in prop_oneof![3 => -2..40i32, 1 => any::<i32>()],
        camel in any::<bool>(),
    ) {
        let names = if camel { FieldNames::Camel } else { FieldNames::Proto };
        let feed = every_enum(v);
        let mut out = Vec::new();
        write_feed(&mut out, &feed, names, None);
        let back = read(parse(&out)?, camel, feed_message_from);
        let expected = every_enum_expected(v);
        same(&back, &expected)?;
    }
}

/// Equal values, floats compared bit-exactly but with every NaN equal: prost's `Debug` prints
/// each float in its shortest round-trip form and NaN as "NaN".
fn same<T: Debug>(back: &T, original: &T) -> Result<(), TestCaseError> {
    if format!("{back:?}") != format!("{original:?}") {
        return Err(TestCaseError::fail(format!(
            "read back:\n{back:#?}\noriginal:\n{original:#?}"
        )));
    }
    Ok(())
}

fn parse(out: &[u8]) -> Result<Value, TestCaseError> {
    serde_json::from_slice(out).map_err(|e| {
        TestCaseError::fail(format!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
    })
}

// Strategies.

/// Text that needs escaping, and text that must not be escaped.
fn text() -> BoxedStrategy<String> {
    let ch = prop_oneof![
        4 => proptest::char::range(' ', '~'),
        2 => proptest::char::range('\0', '\x1f'),
        2 => select(vec![
            '"', '\\', '/', '\x7f', '\u{80}', '\u{9f}', '\u{a0}', 'é', '日', '😀', '\u{2028}',
            '\u{2029}', '\u{feff}', '\u{fffd}', '\u{ffff}', '\u{10ffff}',
        ]),
        1 => any::<char>(),
    ];
    vec(ch, 0..12).prop_map(String::from_iter).boxed()
}

fn string() -> impl Strategy<Value = Option<String>> {
    opt(text())
}

/// Set with probability 0.6, so both sides of every field are common.
fn opt<T: Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.6, s)
}

fn boxed<T: Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<Box<T>>> {
    opt(s).prop_map(|m| m.map(Box::new))
}

fn list<T: Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    vec(s, 0..3)
}

fn f32s() -> BoxedStrategy<f32> {
    prop_oneof![
        // Every class: normal, subnormal, zero, infinite, NaN, both signs.
        2 => any::<f32>(),
        2 => -180.0f32..180.0,
        1 => select(vec![
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x007f_ffff),
            f32::EPSILON,
            1e-5,
            1e16,
            0.1,
            35.6812,
            139.7671,
            16_777_217.0,
        ]),
    ]
    .boxed()
}

fn f64s() -> BoxedStrategy<f64> {
    prop_oneof![
        2 => any::<f64>(),
        2 => 0.0f64..1e7,
        1 => select(vec![
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            f64::EPSILON,
            1e-5,
            1e16,
            0.1,
            9_007_199_254_740_993.0,
        ]),
    ]
    .boxed()
}

fn u64s() -> impl Strategy<Value = Option<u64>> {
    opt(prop_oneof![
        any::<u64>(),
        select(vec![0, 1, u64::MAX, 1 << 53, (1 << 53) + 1, 1_732_442_398]),
    ])
}

fn i64s() -> impl Strategy<Value = Option<i64>> {
    opt(prop_oneof![
        any::<i64>(),
        select(vec![
            0,
            -1,
            i64::MIN,
            i64::MAX,
            -(1 << 53) - 1,
            1_732_442_398
        ]),
    ])
}

fn i32s() -> impl Strategy<Value = Option<i32>> {
    opt(prop_oneof![
        any::<i32>(),
        select(vec![0, -1, i32::MIN, i32::MAX])
    ])
}

fn u32s() -> impl Strategy<Value = Option<u32>> {
    opt(prop_oneof![any::<u32>(), select(vec![0, u32::MAX])])
}

/// Only numbers the enum defines (see `undefined_enum_numbers_are_omitted` for the others).
fn enum_of(defined: fn(i32) -> bool) -> impl Strategy<Value = Option<i32>> {
    let values: Vec<i32> = (-1..64).filter(|v| defined(*v)).collect();
    opt(select(values))
}

macro_rules! defined {
    ($enum:ty) => {
        |v| <$enum>::try_from(v).is_ok()
    };
}

fn feed_message() -> BoxedStrategy<FeedMessage> {
    (opt(feed_header_strategy()), vec(feed_entity(), 0..4))
        .prop_map(|(header, entity)| FeedMessage { header, entity })
        .boxed()
}

fn feed_header_strategy() -> BoxedStrategy<FeedHeader> {
    (
        string(),
        enum_of(defined!(feed_header::Incrementality)),
        u64s(),
        string(),
    )
        .prop_map(
            |(gtfs_realtime_version, incrementality, timestamp, feed_version)| FeedHeader {
                gtfs_realtime_version,
                incrementality,
                timestamp,
                feed_version,
            },
        )
        .boxed()
}

fn feed_entity() -> BoxedStrategy<FeedEntity> {
    (
        string(),
        opt(any::<bool>()),
        boxed(trip_update_strategy()),
        boxed(vehicle_position_strategy()),
        boxed(alert_strategy()),
        boxed(shape_strategy()),
        boxed(stop_strategy()),
        boxed(trip_modifications_strategy()),
    )
        .prop_map(
            |(id, is_deleted, trip_update, vehicle, alert, shape, stop, trip_modifications)| {
                FeedEntity {
                    id,
                    is_deleted,
                    trip_update,
                    vehicle,
                    alert,
                    shape,
                    stop,
                    trip_modifications,
                }
            },
        )
        .boxed()
}

fn trip_update_strategy() -> BoxedStrategy<TripUpdate> {
    (
        opt(trip_descriptor_strategy()),
        opt(vehicle_descriptor_strategy()),
        list(stop_time_update_strategy()),
        u64s(),
        i32s(),
        opt(trip_properties_strategy()),
    )
        .prop_map(
            |(trip, vehicle, stop_time_update, timestamp, delay, trip_properties)| TripUpdate {
                trip,
                vehicle,
                stop_time_update,
                timestamp,
                delay,
                trip_properties,
            },
        )
        .boxed()
}

fn stop_time_event_strategy() -> BoxedStrategy<StopTimeEvent> {
    (i32s(), i64s(), i32s(), i64s())
        .prop_map(|(delay, time, uncertainty, scheduled_time)| StopTimeEvent {
            delay,
            time,
            uncertainty,
            scheduled_time,
        })
        .boxed()
}

fn stop_time_update_strategy() -> BoxedStrategy<StopTimeUpdate> {
    (
        u32s(),
        string(),
        opt(stop_time_event_strategy()),
        opt(stop_time_event_strategy()),
        enum_of(defined!(vehicle_position::OccupancyStatus)),
        enum_of(defined!(stop_time_update::ScheduleRelationship)),
        boxed(stop_time_properties_strategy()),
    )
        .prop_map(
            |(
                stop_sequence,
                stop_id,
                arrival,
                departure,
                departure_occupancy_status,
                schedule_relationship,
                stop_time_properties,
            )| StopTimeUpdate {
                stop_sequence,
                stop_id,
                arrival,
                departure,
                departure_occupancy_status,
                schedule_relationship,
                stop_time_properties,
            },
        )
        .boxed()
}

fn stop_time_properties_strategy() -> BoxedStrategy<StopTimeProperties> {
    let pickup = || enum_of(defined!(stop_time_properties::DropOffPickupType));
    (string(), string(), pickup(), pickup())
        .prop_map(
            |(assigned_stop_id, stop_headsign, pickup_type, drop_off_type)| StopTimeProperties {
                assigned_stop_id,
                stop_headsign,
                pickup_type,
                drop_off_type,
            },
        )
        .boxed()
}

fn trip_properties_strategy() -> BoxedStrategy<TripProperties> {
    (string(), string(), string(), string(), string(), string())
        .prop_map(
            |(trip_id, start_date, start_time, shape_id, trip_headsign, trip_short_name)| {
                TripProperties {
                    trip_id,
                    start_date,
                    start_time,
                    shape_id,
                    trip_headsign,
                    trip_short_name,
                }
            },
        )
        .boxed()
}

fn vehicle_position_strategy() -> BoxedStrategy<VehiclePosition> {
    (
        (
            opt(trip_descriptor_strategy()),
            opt(vehicle_descriptor_strategy()),
            opt(position_strategy()),
            u32s(),
            string(),
            enum_of(defined!(vehicle_position::VehicleStopStatus)),
        ),
        (
            u64s(),
            enum_of(defined!(vehicle_position::CongestionLevel)),
            enum_of(defined!(vehicle_position::OccupancyStatus)),
            u32s(),
            list(carriage_details_strategy()),
        ),
    )
        .prop_map(
            |(
                (trip, vehicle, position, current_stop_sequence, stop_id, current_status),
                (
                    timestamp,
                    congestion_level,
                    occupancy_status,
                    occupancy_percentage,
                    multi_carriage_details,
                ),
            )| VehiclePosition {
                trip,
                vehicle,
                position,
                current_stop_sequence,
                stop_id,
                current_status,
                timestamp,
                congestion_level,
                occupancy_status,
                occupancy_percentage,
                multi_carriage_details,
            },
        )
        .boxed()
}

fn carriage_details_strategy() -> BoxedStrategy<vehicle_position::CarriageDetails> {
    (
        string(),
        string(),
        enum_of(defined!(vehicle_position::OccupancyStatus)),
        i32s(),
        u32s(),
    )
        .prop_map(
            |(id, label, occupancy_status, occupancy_percentage, carriage_sequence)| {
                vehicle_position::CarriageDetails {
                    id,
                    label,
                    occupancy_status,
                    occupancy_percentage,
                    carriage_sequence,
                }
            },
        )
        .boxed()
}

fn alert_strategy() -> BoxedStrategy<Alert> {
    let ts = || opt(translated_string_strategy());
    (
        (
            list(time_range_strategy()),
            list(time_range_strategy()),
            list(time_range_strategy()),
            list(entity_selector_strategy()),
            enum_of(defined!(alert::Cause)),
            enum_of(defined!(alert::Effect)),
        ),
        (ts(), ts(), ts(), ts(), ts()),
        (
            enum_of(defined!(alert::SeverityLevel)),
            opt(translated_image_strategy()),
            ts(),
            ts(),
            ts(),
        ),
    )
        .prop_map(
            |(
                (
                    active_period,
                    communication_period,
                    impact_period,
                    informed_entity,
                    cause,
                    effect,
                ),
                (url, header_text, description_text, tts_header_text, tts_description_text),
                (severity_level, image, image_alternative_text, cause_detail, effect_detail),
            )| Alert {
                active_period,
                communication_period,
                impact_period,
                informed_entity,
                cause,
                effect,
                url,
                header_text,
                description_text,
                tts_header_text,
                tts_description_text,
                severity_level,
                image,
                image_alternative_text,
                cause_detail,
                effect_detail,
            },
        )
        .boxed()
}

fn time_range_strategy() -> BoxedStrategy<TimeRange> {
    (u64s(), u64s())
        .prop_map(|(start, end)| TimeRange { start, end })
        .boxed()
}

fn position_strategy() -> BoxedStrategy<Position> {
    (
        opt(f32s()),
        opt(f32s()),
        opt(f32s()),
        opt(f64s()),
        opt(f32s()),
    )
        .prop_map(|(latitude, longitude, bearing, odometer, speed)| Position {
            latitude,
            longitude,
            bearing,
            odometer,
            speed,
        })
        .boxed()
}

fn trip_descriptor_strategy() -> BoxedStrategy<TripDescriptor> {
    (
        string(),
        string(),
        u32s(),
        string(),
        string(),
        enum_of(defined!(trip_descriptor::ScheduleRelationship)),
        boxed(modified_trip_selector_strategy()),
    )
        .prop_map(
            |(
                trip_id,
                route_id,
                direction_id,
                start_time,
                start_date,
                schedule_relationship,
                modified_trip,
            )| TripDescriptor {
                trip_id,
                route_id,
                direction_id,
                start_time,
                start_date,
                schedule_relationship,
                modified_trip,
            },
        )
        .boxed()
}

fn modified_trip_selector_strategy() -> BoxedStrategy<trip_descriptor::ModifiedTripSelector> {
    (string(), string(), string(), string())
        .prop_map(
            |(modifications_id, affected_trip_id, start_time, start_date)| {
                trip_descriptor::ModifiedTripSelector {
                    modifications_id,
                    affected_trip_id,
                    start_time,
                    start_date,
                }
            },
        )
        .boxed()
}

fn vehicle_descriptor_strategy() -> BoxedStrategy<VehicleDescriptor> {
    (
        string(),
        string(),
        string(),
        enum_of(defined!(vehicle_descriptor::WheelchairAccessible)),
    )
        .prop_map(
            |(id, label, license_plate, wheelchair_accessible)| VehicleDescriptor {
                id,
                label,
                license_plate,
                wheelchair_accessible,
            },
        )
        .boxed()
}

fn entity_selector_strategy() -> BoxedStrategy<EntitySelector> {
    (
        string(),
        string(),
        i32s(),
        opt(trip_descriptor_strategy()),
        string(),
        u32s(),
    )
        .prop_map(
            |(agency_id, route_id, route_type, trip, stop_id, direction_id)| EntitySelector {
                agency_id,
                route_id,
                route_type,
                trip,
                stop_id,
                direction_id,
            },
        )
        .boxed()
}

fn translated_string_strategy() -> BoxedStrategy<TranslatedString> {
    list(
        (string(), string())
            .prop_map(|(text, language)| translated_string::Translation { text, language }),
    )
    .prop_map(|translation| TranslatedString { translation })
    .boxed()
}

fn translated_image_strategy() -> BoxedStrategy<TranslatedImage> {
    list(
        (string(), string(), string()).prop_map(|(url, media_type, language)| {
            translated_image::LocalizedImage {
                url,
                media_type,
                language,
            }
        }),
    )
    .prop_map(|localized_image| TranslatedImage { localized_image })
    .boxed()
}

fn shape_strategy() -> BoxedStrategy<Shape> {
    (string(), string())
        .prop_map(|(shape_id, encoded_polyline)| Shape {
            shape_id,
            encoded_polyline,
        })
        .boxed()
}

fn stop_strategy() -> BoxedStrategy<Stop> {
    let ts = || opt(translated_string_strategy());
    (
        (string(), ts(), ts(), ts(), ts(), opt(f32s()), opt(f32s())),
        (
            string(),
            ts(),
            string(),
            string(),
            enum_of(defined!(stop::WheelchairBoarding)),
            string(),
            ts(),
        ),
    )
        .prop_map(
            |(
                (stop_id, stop_code, stop_name, tts_stop_name, stop_desc, stop_lat, stop_lon),
                (
                    zone_id,
                    stop_url,
                    parent_station,
                    stop_timezone,
                    wheelchair_boarding,
                    level_id,
                    platform_code,
                ),
            )| Stop {
                stop_id,
                stop_code,
                stop_name,
                tts_stop_name,
                stop_desc,
                stop_lat,
                stop_lon,
                zone_id,
                stop_url,
                parent_station,
                stop_timezone,
                wheelchair_boarding,
                level_id,
                platform_code,
            },
        )
        .boxed()
}

fn trip_modifications_strategy() -> BoxedStrategy<TripModifications> {
    let selected = (list(text()), string())
        .prop_map(|(trip_ids, shape_id)| trip_modifications::SelectedTrips { trip_ids, shape_id });
    let stop_selector = || {
        (u32s(), string()).prop_map(|(stop_sequence, stop_id)| StopSelector {
            stop_sequence,
            stop_id,
        })
    };
    let replacement =
        (i32s(), string()).prop_map(|(travel_time_to_stop, stop_id)| ReplacementStop {
            travel_time_to_stop,
            stop_id,
        });
    let modification = (
        opt(stop_selector()),
        opt(stop_selector()),
        i32s(),
        list(replacement),
        string(),
        u64s(),
    )
        .prop_map(
            |(
                start_stop_selector,
                end_stop_selector,
                propagated_modification_delay,
                replacement_stops,
                service_alert_id,
                last_modified_time,
            )| trip_modifications::Modification {
                start_stop_selector,
                end_stop_selector,
                propagated_modification_delay,
                replacement_stops,
                service_alert_id,
                last_modified_time,
            },
        );
    (
        list(selected),
        list(text()),
        list(text()),
        list(modification),
    )
        .prop_map(
            |(selected_trips, start_times, service_dates, modifications)| TripModifications {
                selected_trips,
                start_times,
                service_dates,
                modifications,
            },
        )
        .boxed()
}

#[derive(Debug)]
struct OwnedEnvelope {
    producer_timestamp: f64,
    source_id: String,
    event_type: String,
}

impl OwnedEnvelope {
    fn as_envelope(&self) -> Envelope<'_> {
        Envelope {
            producer_timestamp: self.producer_timestamp,
            source_id: &self.source_id,
            event_type: &self.event_type,
        }
    }
}

fn envelope() -> BoxedStrategy<OwnedEnvelope> {
    (0.0f64..4e9, text(), text())
        .prop_map(
            |(producer_timestamp, source_id, event_type)| OwnedEnvelope {
                producer_timestamp,
                source_id,
                event_type,
            },
        )
        .boxed()
}

/// A feed with `v` in every enum field of every message type.
fn every_enum(v: i32) -> FeedMessage {
    let v = Some(v);
    let trip = TripDescriptor {
        schedule_relationship: v,
        ..Default::default()
    };
    let vehicle = VehicleDescriptor {
        wheelchair_accessible: v,
        ..Default::default()
    };
    FeedMessage {
        header: Some(FeedHeader {
            incrementality: v,
            ..Default::default()
        }),
        entity: vec![FeedEntity {
            trip_update: Some(Box::new(TripUpdate {
                trip: Some(trip.clone()),
                vehicle: Some(vehicle.clone()),
                stop_time_update: vec![StopTimeUpdate {
                    departure_occupancy_status: v,
                    schedule_relationship: v,
                    stop_time_properties: Some(Box::new(StopTimeProperties {
                        pickup_type: v,
                        drop_off_type: v,
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            vehicle: Some(Box::new(VehiclePosition {
                trip: Some(trip),
                vehicle: Some(vehicle),
                current_status: v,
                congestion_level: v,
                occupancy_status: v,
                multi_carriage_details: vec![vehicle_position::CarriageDetails {
                    occupancy_status: v,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            alert: Some(Box::new(Alert {
                cause: v,
                effect: v,
                severity_level: v,
                ..Default::default()
            })),
            stop: Some(Box::new(Stop {
                wheelchair_boarding: v,
                ..Default::default()
            })),
            ..Default::default()
        }],
    }
}

/// `every_enum(v)` with each field that v is not a defined number for left unset.
fn every_enum_expected(v: i32) -> FeedMessage {
    fn keep(v: i32, defined: fn(i32) -> bool) -> Option<i32> {
        Some(v).filter(|v| defined(*v))
    }
    let mut feed = every_enum(v);
    let header = feed.header.as_mut().unwrap();
    header.incrementality = keep(v, defined!(feed_header::Incrementality));
    let entity = &mut feed.entity[0];
    let tu = entity.trip_update.as_mut().unwrap();
    let stu = &mut tu.stop_time_update[0];
    stu.departure_occupancy_status = keep(v, defined!(vehicle_position::OccupancyStatus));
    stu.schedule_relationship = keep(v, defined!(stop_time_update::ScheduleRelationship));
    let props = stu.stop_time_properties.as_mut().unwrap();
    props.pickup_type = keep(v, defined!(stop_time_properties::DropOffPickupType));
    props.drop_off_type = keep(v, defined!(stop_time_properties::DropOffPickupType));
    let vp = entity.vehicle.as_mut().unwrap();
    vp.current_status = keep(v, defined!(vehicle_position::VehicleStopStatus));
    vp.congestion_level = keep(v, defined!(vehicle_position::CongestionLevel));
    vp.occupancy_status = keep(v, defined!(vehicle_position::OccupancyStatus));
    vp.multi_carriage_details[0].occupancy_status =
        keep(v, defined!(vehicle_position::OccupancyStatus));
    for (trip, vehicle) in [
        (tu.trip.as_mut(), tu.vehicle.as_mut()),
        (vp.trip.as_mut(), vp.vehicle.as_mut()),
    ] {
        trip.unwrap().schedule_relationship =
            keep(v, defined!(trip_descriptor::ScheduleRelationship));
        vehicle.unwrap().wheelchair_accessible =
            keep(v, defined!(vehicle_descriptor::WheelchairAccessible));
    }
    let al = entity.alert.as_mut().unwrap();
    al.cause = keep(v, defined!(alert::Cause));
    al.effect = keep(v, defined!(alert::Effect));
    al.severity_level = keep(v, defined!(alert::SeverityLevel));
    entity.stop.as_mut().unwrap().wheelchair_boarding = keep(v, defined!(stop::WheelchairBoarding));
    feed
}

// The reader: JSON back to prost values, by the README's contract alone.

/// An object whose members are consumed one by one; `done` fails on any member left over.
struct Obj {
    map: Map<String, Value>,
    camel: bool,
}

fn read<T>(value: Value, camel: bool, f: fn(&mut Obj) -> T) -> T {
    let mut obj = Obj::new(value, camel);
    let out = f(&mut obj);
    obj.done();
    out
}

/// protobuf's json_name: underscores dropped, the letter after each one upper-cased.
fn lower_camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

impl Obj {
    fn new(value: Value, camel: bool) -> Obj {
        match value {
            Value::Object(map) => Obj { map, camel },
            other => panic!("expected an object, got {other}"),
        }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        let key = if self.camel {
            lower_camel(name)
        } else {
            name.to_owned()
        };
        let value = self.map.remove(&key);
        if self.camel && key != name {
            assert!(
                !self.map.contains_key(name),
                "proto name {name} under camel names"
            );
        }
        value
    }

    fn done(self) {
        assert!(self.map.is_empty(), "unexpected members: {:?}", self.map);
    }

    fn string(&mut self, name: &str) -> Option<String> {
        self.take(name).map(|v| match v {
            Value::String(s) => s,
            other => panic!("{name}: expected a string, got {other}"),
        })
    }

    fn boolean(&mut self, name: &str) -> Option<bool> {
        self.take(name).map(|v| {
            v.as_bool()
                .unwrap_or_else(|| panic!("{name}: expected a bool, got {v}"))
        })
    }

    /// 64-bit integers are strings, in canonical decimal.
    fn int_string<T: std::str::FromStr + ToString>(&mut self, name: &str) -> Option<T> {
        let s = self.string(name)?;
        let n: T = s
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {s:?} is not an integer"));
        assert_eq!(n.to_string(), s, "{name}: not canonical");
        Some(n)
    }

    fn u64(&mut self, name: &str) -> Option<u64> {
        self.int_string(name)
    }

    fn i64(&mut self, name: &str) -> Option<i64> {
        self.int_string(name)
    }

    /// 32-bit integers are numbers.
    fn u32(&mut self, name: &str) -> Option<u32> {
        self.take(name).map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or_else(|| panic!("{name}: expected a u32 number, got {v}"))
        })
    }

    fn i32(&mut self, name: &str) -> Option<i32> {
        self.take(name).map(|v| {
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or_else(|| panic!("{name}: expected an i32 number, got {v}"))
        })
    }

    /// A number, or one of the strings "NaN", "Infinity", "-Infinity".
    fn f64(&mut self, name: &str) -> Option<f64> {
        self.take(name).map(|v| match &v {
            Value::Number(n) => n.as_f64().unwrap(),
            Value::String(s) if s == "NaN" => f64::NAN,
            Value::String(s) if s == "Infinity" => f64::INFINITY,
            Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
            other => panic!("{name}: expected a float, got {other}"),
        })
    }

    /// The printed digits must read back, through f64, as the same f32.
    fn f32(&mut self, name: &str) -> Option<f32> {
        self.f64(name).map(|v| v as f32)
    }

    fn enumeration<E: Into<i32>>(
        &mut self,
        name: &str,
        from_name: fn(&str) -> Option<E>,
    ) -> Option<i32> {
        self.string(name).map(|s| {
            from_name(&s)
                .unwrap_or_else(|| panic!("{name}: {s:?} is not a name the proto defines"))
                .into()
        })
    }

    fn message<T>(&mut self, name: &str, f: fn(&mut Obj) -> T) -> Option<T> {
        let camel = self.camel;
        self.take(name).map(|v| read(v, camel, f))
    }

    fn boxed<T>(&mut self, name: &str, f: fn(&mut Obj) -> T) -> Option<Box<T>> {
        self.message(name, f).map(Box::new)
    }

    /// Absent means empty; present must not be empty.
    fn array(&mut self, name: &str) -> Vec<Value> {
        match self.take(name) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                assert!(!items.is_empty(), "{name}: empty list written");
                items
            }
            Some(other) => panic!("{name}: expected a list, got {other}"),
        }
    }

    fn list<T>(&mut self, name: &str, f: fn(&mut Obj) -> T) -> Vec<T> {
        let camel = self.camel;
        self.array(name)
            .into_iter()
            .map(|v| read(v, camel, f))
            .collect()
    }

    fn strings(&mut self, name: &str) -> Vec<String> {
        self.array(name)
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => panic!("{name}: expected a string, got {other}"),
            })
            .collect()
    }
}

/// Envelope keys are ours: the same under both namings. Removed so the rest reads as a feed.
fn read_envelope(doc: &mut Value) -> OwnedEnvelope {
    let map = doc.as_object_mut().expect("document is an object");
    let mut take = |key: &str| map.remove(key).unwrap_or_else(|| panic!("{key} missing"));
    OwnedEnvelope {
        producer_timestamp: take("producer_timestamp").as_f64().unwrap(),
        source_id: take("source_id").as_str().unwrap().to_owned(),
        event_type: take("event_type").as_str().unwrap().to_owned(),
    }
}

fn feed_message_from(o: &mut Obj) -> FeedMessage {
    FeedMessage {
        header: o.message("header", feed_header_from),
        entity: o.list("entity", feed_entity_from),
    }
}

fn feed_header_from(o: &mut Obj) -> FeedHeader {
    FeedHeader {
        gtfs_realtime_version: o.string("gtfs_realtime_version"),
        incrementality: o.enumeration("incrementality", feed_header::Incrementality::from_str_name),
        timestamp: o.u64("timestamp"),
        feed_version: o.string("feed_version"),
    }
}

fn feed_entity_from(o: &mut Obj) -> FeedEntity {
    FeedEntity {
        id: o.string("id"),
        is_deleted: o.boolean("is_deleted"),
        trip_update: o.boxed("trip_update", trip_update_from),
        vehicle: o.boxed("vehicle", vehicle_position_from),
        alert: o.boxed("alert", alert_from),
        shape: o.boxed("shape", |o| Shape {
            shape_id: o.string("shape_id"),
            encoded_polyline: o.string("encoded_polyline"),
        }),
        stop: o.boxed("stop", stop_from),
        trip_modifications: o.boxed("trip_modifications", trip_modifications_from),
    }
}

fn trip_update_from(o: &mut Obj) -> TripUpdate {
    TripUpdate {
        trip: o.message("trip", trip_descriptor_from),
        vehicle: o.message("vehicle", vehicle_descriptor_from),
        stop_time_update: o.list("stop_time_update", stop_time_update_from),
        timestamp: o.u64("timestamp"),
        delay: o.i32("delay"),
        trip_properties: o.message("trip_properties", |o| TripProperties {
            trip_id: o.string("trip_id"),
            start_date: o.string("start_date"),
            start_time: o.string("start_time"),
            shape_id: o.string("shape_id"),
            trip_headsign: o.string("trip_headsign"),
            trip_short_name: o.string("trip_short_name"),
        }),
    }
}

fn stop_time_event_from(o: &mut Obj) -> StopTimeEvent {
    StopTimeEvent {
        delay: o.i32("delay"),
        time: o.i64("time"),
        uncertainty: o.i32("uncertainty"),
        scheduled_time: o.i64("scheduled_time"),
    }
}

fn stop_time_update_from(o: &mut Obj) -> StopTimeUpdate {
    StopTimeUpdate {
        stop_sequence: o.u32("stop_sequence"),
        arrival: o.message("arrival", stop_time_event_from),
        departure: o.message("departure", stop_time_event_from),
        stop_id: o.string("stop_id"),
        schedule_relationship: o.enumeration(
            "schedule_relationship",
            stop_time_update::ScheduleRelationship::from_str_name,
        ),
        stop_time_properties: o.boxed("stop_time_properties", |o| StopTimeProperties {
            assigned_stop_id: o.string("assigned_stop_id"),
            stop_headsign: o.string("stop_headsign"),
            pickup_type: o.enumeration(
                "pickup_type",
                stop_time_properties::DropOffPickupType::from_str_name,
            ),
            drop_off_type: o.enumeration(
                "drop_off_type",
                stop_time_properties::DropOffPickupType::from_str_name,
            ),
        }),
        departure_occupancy_status: o.enumeration(
            "departure_occupancy_status",
            vehicle_position::OccupancyStatus::from_str_name,
        ),
    }
}

fn vehicle_position_from(o: &mut Obj) -> VehiclePosition {
    VehiclePosition {
        trip: o.message("trip", trip_descriptor_from),
        position: o.message("position", |o| Position {
            latitude: o.f32("latitude"),
            longitude: o.f32("longitude"),
            bearing: o.f32("bearing"),
            odometer: o.f64("odometer"),
            speed: o.f32("speed"),
        }),
        current_stop_sequence: o.u32("current_stop_sequence"),
        current_status: o.enumeration(
            "current_status",
            vehicle_position::VehicleStopStatus::from_str_name,
        ),
        timestamp: o.u64("timestamp"),
        congestion_level: o.enumeration(
            "congestion_level",
            vehicle_position::CongestionLevel::from_str_name,
        ),
        stop_id: o.string("stop_id"),
        vehicle: o.message("vehicle", vehicle_descriptor_from),
        occupancy_status: o.enumeration(
            "occupancy_status",
            vehicle_position::OccupancyStatus::from_str_name,
        ),
        occupancy_percentage: o.u32("occupancy_percentage"),
        multi_carriage_details: o.list("multi_carriage_details", |o| {
            vehicle_position::CarriageDetails {
                id: o.string("id"),
                label: o.string("label"),
                occupancy_status: o.enumeration(
                    "occupancy_status",
                    vehicle_position::OccupancyStatus::from_str_name,
                ),
                occupancy_percentage: o.i32("occupancy_percentage"),
                carriage_sequence: o.u32("carriage_sequence"),
            }
        }),
    }
}

fn alert_from(o: &mut Obj) -> Alert {
    Alert {
        active_period: o.list("active_period", time_range_from),
        communication_period: o.list("communication_period", time_range_from),
        impact_period: o.list("impact_period", time_range_from),
        informed_entity: o.list("informed_entity", entity_selector_from),
        cause: o.enumeration("cause", alert::Cause::from_str_name),
        effect: o.enumeration("effect", alert::Effect::from_str_name),
        url: o.message("url", translated_string_from),
        header_text: o.message("header_text", translated_string_from),
        description_text: o.message("description_text", translated_string_from),
        tts_header_text: o.message("tts_header_text", translated_string_from),
        tts_description_text: o.message("tts_description_text", translated_string_from),
        severity_level: o.enumeration("severity_level", alert::SeverityLevel::from_str_name),
        image: o.message("image", |o| TranslatedImage {
            localized_image: o.list("localized_image", |o| translated_image::LocalizedImage {
                url: o.string("url"),
                media_type: o.string("media_type"),
                language: o.string("language"),
            }),
        }),
        image_alternative_text: o.message("image_alternative_text", translated_string_from),
        cause_detail: o.message("cause_detail", translated_string_from),
        effect_detail: o.message("effect_detail", translated_string_from),
    }
}

fn time_range_from(o: &mut Obj) -> TimeRange {
    TimeRange {
        start: o.u64("start"),
        end: o.u64("end"),
    }
}

fn trip_descriptor_from(o: &mut Obj) -> TripDescriptor {
    TripDescriptor {
        trip_id: o.string("trip_id"),
        start_time: o.string("start_time"),
        start_date: o.string("start_date"),
        schedule_relationship: o.enumeration(
            "schedule_relationship",
            trip_descriptor::ScheduleRelationship::from_str_name,
        ),
        route_id: o.string("route_id"),
        direction_id: o.u32("direction_id"),
        modified_trip: o.boxed("modified_trip", |o| trip_descriptor::ModifiedTripSelector {
            modifications_id: o.string("modifications_id"),
            affected_trip_id: o.string("affected_trip_id"),
            start_time: o.string("start_time"),
            start_date: o.string("start_date"),
        }),
    }
}

fn vehicle_descriptor_from(o: &mut Obj) -> VehicleDescriptor {
    VehicleDescriptor {
        id: o.string("id"),
        label: o.string("label"),
        license_plate: o.string("license_plate"),
        wheelchair_accessible: o.enumeration(
            "wheelchair_accessible",
            vehicle_descriptor::WheelchairAccessible::from_str_name,
        ),
    }
}

fn entity_selector_from(o: &mut Obj) -> EntitySelector {
    EntitySelector {
        agency_id: o.string("agency_id"),
        route_id: o.string("route_id"),
        route_type: o.i32("route_type"),
        trip: o.message("trip", trip_descriptor_from),
        stop_id: o.string("stop_id"),
        direction_id: o.u32("direction_id"),
    }
}

fn translated_string_from(o: &mut Obj) -> TranslatedString {
    TranslatedString {
        translation: o.list("translation", |o| translated_string::Translation {
            text: o.string("text"),
            language: o.string("language"),
        }),
    }
}

fn stop_from(o: &mut Obj) -> Stop {
    Stop {
        stop_id: o.string("stop_id"),
        stop_code: o.message("stop_code", translated_string_from),
        stop_name: o.message("stop_name", translated_string_from),
        tts_stop_name: o.message("tts_stop_name", translated_string_from),
        stop_desc: o.message("stop_desc", translated_string_from),
        stop_lat: o.f32("stop_lat"),
        stop_lon: o.f32("stop_lon"),
        zone_id: o.string("zone_id"),
        stop_url: o.message("stop_url", translated_string_from),
        parent_station: o.string("parent_station"),
        stop_timezone: o.string("stop_timezone"),
        wheelchair_boarding: o.enumeration(
            "wheelchair_boarding",
            stop::WheelchairBoarding::from_str_name,
        ),
        level_id: o.string("level_id"),
        platform_code: o.message("platform_code", translated_string_from),
    }
}

fn trip_modifications_from(o: &mut Obj) -> TripModifications {
    fn stop_selector_from(o: &mut Obj) -> StopSelector {
        StopSelector {
            stop_sequence: o.u32("stop_sequence"),
            stop_id: o.string("stop_id"),
        }
    }
    TripModifications {
        selected_trips: o.list("selected_trips", |o| trip_modifications::SelectedTrips {
            trip_ids: o.strings("trip_ids"),
            shape_id: o.string("shape_id"),
        }),
        start_times: o.strings("start_times"),
        service_dates: o.strings("service_dates"),
        modifications: o.list("modifications", |o| trip_modifications::Modification {
            start_stop_selector: o.message("start_stop_selector", stop_selector_from),
            end_stop_selector: o.message("end_stop_selector", stop_selector_from),
            propagated_modification_delay: o.i32("propagated_modification_delay"),
            replacement_stops: o.list("replacement_stops", |o| ReplacementStop {
                travel_time_to_stop: o.i32("travel_time_to_stop"),
                stop_id: o.string("stop_id"),
            }),
            service_alert_id: o.string("service_alert_id"),
            last_modified_time: o.u64("last_modified_time"),
        }),
    }
}
