//! GTFS-Realtime → JSON bytes, the same document Python's `json_format.MessageToDict` gives; pure, no I/O.
//!
//! The bytes equal `json.dumps(MessageToDict(msg, preserving_proto_field_name=True), ensure_ascii=False,
//! separators=(",", ":"))`, which the golden tests check byte for byte:
//! - keys in field-number order, proto names or (`FieldNames::Camel`) the json_name lowerCamelCase;
//! - unset fields and empty repeated fields omitted; extensions and unknown fields dropped;
//! - enums by name; a number the proto does not define is dropped, as Python's closed proto2 enums
//!   keep it among the unknown fields;
//! - 64-bit integers as strings, 32-bit ones as numbers;
//! - `float` rounded like protobuf's `ToShortestFloat` (the fewest digits, at least 6, that read
//!   back as the same f32), `double` as the shortest round trip; both printed like Python's float
//!   repr (`35.0`, `1e-05`, `1e+16`); NaN and ±infinity as the strings "NaN", "Infinity", "-Infinity";
//! - strings escaped like Python's `json.dumps`: `"` `\` and control characters only, the rest as UTF-8.
//!
//! Writers append to the caller's buffer: no intermediate tree, no allocation per field.
//! `transcode_feed` is the fast path from protobuf bytes: it decodes and writes one entity at a
//! time (`decode::FeedEntities`) and gives the same bytes as `decode_feed` + `write_feed`.

use std::fmt::Write as _;

use crate::decode::transit_realtime::{
    alert, feed_header, stop, translated_image, translated_string, trip_descriptor,
    trip_modifications, trip_update, vehicle_descriptor, vehicle_position, Alert, EntitySelector,
    FeedEntity, FeedHeader, FeedMessage, Position, ReplacementStop, Shape, Stop, StopSelector,
    TimeRange, TranslatedImage, TranslatedString, TripDescriptor, TripModifications, TripUpdate,
    VehicleDescriptor, VehiclePosition,
};
use crate::decode::{decode_entities, DecodeError, FeedEntities};
use trip_update::stop_time_update::{self, stop_time_properties, StopTimeProperties};
use trip_update::{StopTimeEvent, StopTimeUpdate, TripProperties};

/// Which names the JSON keys of protobuf fields get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldNames {
    /// The .proto field names (`trip_update`), as `preserving_proto_field_name=True`.
    Proto,
    /// lowerCamelCase json_name (`tripUpdate`), MessageToDict's default.
    Camel,
}

/// Fields we add to each document, after the protobuf ones. Their keys are the same under both
/// `FieldNames`: they are ours, not protobuf's.
pub struct Envelope<'a> {
    /// Seconds since the Unix epoch, printed like a Python float (`1732470000.123456`).
    pub producer_timestamp: f64,
    pub source_id: &'a str,
    pub event_type: &'a str,
}

/// Rough JSON sizes, to reserve the buffer in one go rather than grow it by copies.
const BYTES_PER_ENTITY: usize = 384;
const BYTES_PER_STOP_TIME_UPDATE: usize = 140;
const BYTES_PER_ALERT: usize = 2048;
/// Our fixtures' JSON is 2.5 to 3.5 times their protobuf; reserving more costs address space only.
const JSON_BYTES_PER_PROTOBUF_BYTE: usize = 4;

/// The whole feed as one document; envelope fields appended after "header"/"entity" in this order: producer_timestamp, source_id, event_type.
pub fn write_feed(
    out: &mut Vec<u8>,
    feed: &FeedMessage,
    names: FieldNames,
    envelope: Option<&Envelope<'_>>,
) {
    out.reserve(256 + feed.entity.iter().map(estimated_len).sum::<usize>());
    let mut w = Writer::new(out, names);
    w.open(b'{');
    w.message(&HEADER, feed.header.as_ref(), header);
    w.list(&ENTITY, &feed.entity, entity);
    w.finish(envelope);
}

/// Decodes a GTFS-Realtime body and writes the document `write_feed` would, one entity at a time
/// (see `decode::FeedEntities`): the same bytes, with far less memory and time on a big feed.
/// Returns the number of entities. On a decode error, the error is `decode_feed`'s and `out` is
/// left as it was.
pub fn transcode_feed(
    out: &mut Vec<u8>,
    body: &[u8],
    names: FieldNames,
    envelope: Option<&Envelope<'_>>,
) -> Result<usize, DecodeError> {
    match transcode_feed_within(out, body, names, envelope, usize::MAX) {
        Ok(n) => Ok(n),
        Err(WriteError::Decode(e)) => Err(e),
        // Unreachable without a limit; an empty document is the safe answer.
        Err(WriteError::TooLarge { .. }) => Ok(0),
    }
}

/// Why a document was not written.
#[derive(Debug)]
pub enum WriteError {
    Decode(DecodeError),
    /// The JSON of the feed's `entities` would be larger than `limit` bytes.
    TooLarge {
        limit: usize,
        entities: usize,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Decode(e) => e.fmt(f),
            WriteError::TooLarge { limit, entities } => write!(
                f,
                "the JSON of this feed ({entities} entities) would pass MAX_DOCUMENT_BYTES \
                 ({limit} bytes); refused"
            ),
        }
    }
}

/// `transcode_feed` with a bound on the document: writing stops (and `out` is left as it
/// was) as soon as the document would pass `max_bytes`, so memory never follows a feed that
/// amplifies (a 150 KB feed can make 1 GB of JSON).
pub fn transcode_feed_within(
    out: &mut Vec<u8>,
    body: &[u8],
    names: FieldNames,
    envelope: Option<&Envelope<'_>>,
    max_bytes: usize,
) -> Result<usize, WriteError> {
    let feed = decode_entities(body).map_err(WriteError::Decode)?;
    let start = out.len();
    out.reserve(
        body.len()
            .saturating_mul(JSON_BYTES_PER_PROTOBUF_BYTE)
            .min(max_bytes),
    );
    let limit = start.saturating_add(max_bytes);
    let mut w = Writer::new(out, names).with_limit(limit);
    if let Err(err) = write_document_body(&mut w, &feed, |_| true) {
        // The staged bytes of `w` are dropped with it: they belong to the abandoned document too.
        out.truncate(start);
        return Err(WriteError::Decode(err));
    }
    if !w.finish(envelope) {
        out.truncate(start);
        return Err(WriteError::TooLarge {
            limit: max_bytes,
            entities: feed.len(),
        });
    }
    Ok(feed.len())
}

/// `{"header":{…},"entity":[…]` of a feed read entity by entity (the envelope and the closing
/// brace are `Writer::finish`'s). After each entity `after_entity` may move bytes on; once it
/// returns false, or the writer is over its limit, the remaining entities are still decoded
/// (so a malformed one is reported) but no longer written.
fn write_document_body(
    w: &mut Writer<'_>,
    feed: &FeedEntities<'_>,
    mut after_entity: impl FnMut(&mut Writer<'_>) -> bool,
) -> Result<(), DecodeError> {
    w.open(b'{');
    w.message(&HEADER, Some(feed.header()), header);
    if !feed.is_empty() {
        w.key(&ENTITY);
        w.open(b'[');
        let mut writing = true;
        feed.try_for_each(|msg| {
            if writing && !w.over {
                w.object(msg, entity);
                writing = after_entity(w);
            }
        })?;
        w.close(b']');
        w.end_member();
    }
    Ok(())
}

/// Why `stream_feed` stopped.
#[derive(Debug)]
pub enum StreamError {
    Decode(DecodeError),
    Write(std::io::Error),
}

/// Pieces of the streamed document are about this big: the document is never whole in memory.
const STREAM_CHUNK: usize = 64 * 1024;

/// `transcode_feed` into `sink`, in pieces of about 64 KiB (`convert`): the same bytes, without
/// holding (and page-faulting in) a document of several times the body. Returns the number of
/// entities. A decode error found in an entity after the first piece went out leaves a cut-short
/// document in `sink`; errors in the feed's structure are found before anything is written.
pub fn stream_feed(
    sink: &mut impl std::io::Write,
    body: &[u8],
    names: FieldNames,
    envelope: Option<&Envelope<'_>>,
) -> Result<usize, StreamError> {
    let feed = decode_entities(body).map_err(StreamError::Decode)?;
    let mut out = Vec::with_capacity(STREAM_CHUNK + STAGE_LEN);
    let mut w = Writer::new(&mut out, names);
    let mut write_error = None;
    write_document_body(&mut w, &feed, |w| {
        if w.out.len() >= STREAM_CHUNK {
            write_error = w.drain_into(sink).err();
        }
        write_error.is_none()
    })
    .map_err(StreamError::Decode)?;
    w.finish(envelope);
    match write_error {
        Some(e) => Err(StreamError::Write(e)),
        None => sink
            .write_all(&out)
            .map(|()| feed.len())
            .map_err(StreamError::Write),
    }
}

/// One entity as {"header":{...},"entity":{...}, envelope...} (per-entity mode, used later).
pub fn write_entity(
    out: &mut Vec<u8>,
    header_msg: &FeedHeader,
    entity_msg: &FeedEntity,
    names: FieldNames,
    envelope: Option<&Envelope<'_>>,
) {
    write_entity_within(out, header_msg, entity_msg, names, envelope, usize::MAX);
}

/// `write_entity`, never growing `out` past `limit` bytes in all; false (and `out` partly
/// written) when it would have.
pub fn write_entity_within(
    out: &mut Vec<u8>,
    header_msg: &FeedHeader,
    entity_msg: &FeedEntity,
    names: FieldNames,
    envelope: Option<&Envelope<'_>>,
    limit: usize,
) -> bool {
    let room = limit.saturating_sub(out.len());
    out.reserve((256 + estimated_len(entity_msg)).min(room));
    let mut w = Writer::new(out, names).with_limit(limit);
    w.open(b'{');
    w.key(&HEADER);
    w.object(header_msg, header);
    w.key(&ENTITY);
    w.object(entity_msg, entity);
    w.finish(envelope)
}

fn estimated_len(entity: &FeedEntity) -> usize {
    let n_stop_time_updates = entity
        .trip_update
        .as_ref()
        .map_or(0, |tu| tu.stop_time_update.len());
    let alert = if entity.alert.is_some() {
        BYTES_PER_ALERT
    } else {
        0
    };
    BYTES_PER_ENTITY + n_stop_time_updates * BYTES_PER_STOP_TIME_UPDATE + alert
}

// One function per message, each listing its fields in field-number order.

fn header(w: &mut Writer<'_>, m: &FeedHeader) {
    w.string(&GTFS_REALTIME_VERSION, &m.gtfs_realtime_version);
    w.enumeration(&INCREMENTALITY, m.incrementality, |v| {
        feed_header::Incrementality::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    w.uint64(&TIMESTAMP, m.timestamp);
    w.string(&FEED_VERSION, &m.feed_version);
}

fn entity(w: &mut Writer<'_>, m: &FeedEntity) {
    w.string(&ID, &m.id);
    w.boolean(&IS_DELETED, m.is_deleted);
    w.message(&TRIP_UPDATE, m.trip_update.as_deref(), trip_update);
    w.message(&VEHICLE, m.vehicle.as_deref(), vehicle_position);
    w.message(&ALERT, m.alert.as_deref(), alert);
    w.message(&SHAPE, m.shape.as_deref(), shape);
    w.message(&STOP, m.stop.as_deref(), stop);
    w.message(
        &TRIP_MODIFICATIONS,
        m.trip_modifications.as_deref(),
        trip_modifications,
    );
}

fn trip_update(w: &mut Writer<'_>, m: &TripUpdate) {
    w.message(&TRIP, m.trip.as_ref(), trip_descriptor);
    w.list(&STOP_TIME_UPDATE, &m.stop_time_update, stop_time_update);
    w.message(&VEHICLE, m.vehicle.as_ref(), vehicle_descriptor);
    w.uint64(&TIMESTAMP, m.timestamp);
    w.int32(&DELAY, m.delay);
    w.message(
        &TRIP_PROPERTIES,
        m.trip_properties.as_ref(),
        trip_properties,
    );
}

fn stop_time_event(w: &mut Writer<'_>, m: &StopTimeEvent) {
    w.int32(&DELAY, m.delay);
    w.int64(&TIME, m.time);
    w.int32(&UNCERTAINTY, m.uncertainty);
    w.int64(&SCHEDULED_TIME, m.scheduled_time);
}

fn stop_time_update(w: &mut Writer<'_>, m: &StopTimeUpdate) {
    w.uint32(&STOP_SEQUENCE, m.stop_sequence);
    w.message(&ARRIVAL, m.arrival.as_ref(), stop_time_event);
    w.message(&DEPARTURE, m.departure.as_ref(), stop_time_event);
    w.string(&STOP_ID, &m.stop_id);
    w.enumeration(&SCHEDULE_RELATIONSHIP, m.schedule_relationship, |v| {
        stop_time_update::ScheduleRelationship::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    w.message(
        &STOP_TIME_PROPERTIES,
        m.stop_time_properties.as_deref(),
        stop_time_properties,
    );
    w.enumeration(
        &DEPARTURE_OCCUPANCY_STATUS,
        m.departure_occupancy_status,
        occupancy_status_name,
    );
}

fn stop_time_properties(w: &mut Writer<'_>, m: &StopTimeProperties) {
    w.string(&ASSIGNED_STOP_ID, &m.assigned_stop_id);
    w.string(&STOP_HEADSIGN, &m.stop_headsign);
    w.enumeration(&PICKUP_TYPE, m.pickup_type, drop_off_pickup_type_name);
    w.enumeration(&DROP_OFF_TYPE, m.drop_off_type, drop_off_pickup_type_name);
}

fn trip_properties(w: &mut Writer<'_>, m: &TripProperties) {
    w.string(&TRIP_ID, &m.trip_id);
    w.string(&START_DATE, &m.start_date);
    w.string(&START_TIME, &m.start_time);
    w.string(&SHAPE_ID, &m.shape_id);
    w.string(&TRIP_HEADSIGN, &m.trip_headsign);
    w.string(&TRIP_SHORT_NAME, &m.trip_short_name);
}

fn vehicle_position(w: &mut Writer<'_>, m: &VehiclePosition) {
    w.message(&TRIP, m.trip.as_ref(), trip_descriptor);
    w.message(&POSITION, m.position.as_ref(), position);
    w.uint32(&CURRENT_STOP_SEQUENCE, m.current_stop_sequence);
    w.enumeration(&CURRENT_STATUS, m.current_status, |v| {
        vehicle_position::VehicleStopStatus::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    w.uint64(&TIMESTAMP, m.timestamp);
    w.enumeration(&CONGESTION_LEVEL, m.congestion_level, |v| {
        vehicle_position::CongestionLevel::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    w.string(&STOP_ID, &m.stop_id);
    w.message(&VEHICLE, m.vehicle.as_ref(), vehicle_descriptor);
    w.enumeration(&OCCUPANCY_STATUS, m.occupancy_status, occupancy_status_name);
    w.uint32(&OCCUPANCY_PERCENTAGE, m.occupancy_percentage);
    w.list(
        &MULTI_CARRIAGE_DETAILS,
        &m.multi_carriage_details,
        carriage_details,
    );
}

fn carriage_details(w: &mut Writer<'_>, m: &vehicle_position::CarriageDetails) {
    w.string(&ID, &m.id);
    w.string(&LABEL, &m.label);
    w.enumeration(&OCCUPANCY_STATUS, m.occupancy_status, occupancy_status_name);
    w.int32(&OCCUPANCY_PERCENTAGE, m.occupancy_percentage);
    w.uint32(&CARRIAGE_SEQUENCE, m.carriage_sequence);
}

fn alert(w: &mut Writer<'_>, m: &Alert) {
    w.list(&ACTIVE_PERIOD, &m.active_period, time_range);
    w.list(&COMMUNICATION_PERIOD, &m.communication_period, time_range);
    w.list(&IMPACT_PERIOD, &m.impact_period, time_range);
    w.list(&INFORMED_ENTITY, &m.informed_entity, entity_selector);
    w.enumeration(&CAUSE, m.cause, |v| {
        alert::Cause::try_from(v).ok().map(|e| e.as_str_name())
    });
    w.enumeration(&EFFECT, m.effect, |v| {
        alert::Effect::try_from(v).ok().map(|e| e.as_str_name())
    });
    w.message(&URL, m.url.as_ref(), translated_string);
    w.message(&HEADER_TEXT, m.header_text.as_ref(), translated_string);
    w.message(
        &DESCRIPTION_TEXT,
        m.description_text.as_ref(),
        translated_string,
    );
    w.message(
        &TTS_HEADER_TEXT,
        m.tts_header_text.as_ref(),
        translated_string,
    );
    w.message(
        &TTS_DESCRIPTION_TEXT,
        m.tts_description_text.as_ref(),
        translated_string,
    );
    w.enumeration(&SEVERITY_LEVEL, m.severity_level, |v| {
        alert::SeverityLevel::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    w.message(&IMAGE, m.image.as_ref(), translated_image);
    w.message(
        &IMAGE_ALTERNATIVE_TEXT,
        m.image_alternative_text.as_ref(),
        translated_string,
    );
    w.message(&CAUSE_DETAIL, m.cause_detail.as_ref(), translated_string);
    w.message(&EFFECT_DETAIL, m.effect_detail.as_ref(), translated_string);
}

fn time_range(w: &mut Writer<'_>, m: &TimeRange) {
    w.uint64(&START, m.start);
    w.uint64(&END, m.end);
}

fn position(w: &mut Writer<'_>, m: &Position) {
    w.float(&LATITUDE, m.latitude);
    w.float(&LONGITUDE, m.longitude);
    w.float(&BEARING, m.bearing);
    w.double(&ODOMETER, m.odometer);
    w.float(&SPEED, m.speed);
}

fn trip_descriptor(w: &mut Writer<'_>, m: &TripDescriptor) {
    w.string(&TRIP_ID, &m.trip_id);
    w.string(&START_TIME, &m.start_time);
    w.string(&START_DATE, &m.start_date);
    w.enumeration(&SCHEDULE_RELATIONSHIP, m.schedule_relationship, |v| {
        trip_descriptor::ScheduleRelationship::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    w.string(&ROUTE_ID, &m.route_id);
    w.uint32(&DIRECTION_ID, m.direction_id);
    w.message(
        &MODIFIED_TRIP,
        m.modified_trip.as_deref(),
        modified_trip_selector,
    );
}

fn modified_trip_selector(w: &mut Writer<'_>, m: &trip_descriptor::ModifiedTripSelector) {
    w.string(&MODIFICATIONS_ID, &m.modifications_id);
    w.string(&AFFECTED_TRIP_ID, &m.affected_trip_id);
    w.string(&START_TIME, &m.start_time);
    w.string(&START_DATE, &m.start_date);
}

fn vehicle_descriptor(w: &mut Writer<'_>, m: &VehicleDescriptor) {
    w.string(&ID, &m.id);
    w.string(&LABEL, &m.label);
    w.string(&LICENSE_PLATE, &m.license_plate);
    w.enumeration(&WHEELCHAIR_ACCESSIBLE, m.wheelchair_accessible, |v| {
        vehicle_descriptor::WheelchairAccessible::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
}

fn entity_selector(w: &mut Writer<'_>, m: &EntitySelector) {
    w.string(&AGENCY_ID, &m.agency_id);
    w.string(&ROUTE_ID, &m.route_id);
    w.int32(&ROUTE_TYPE, m.route_type);
    w.message(&TRIP, m.trip.as_ref(), trip_descriptor);
    w.string(&STOP_ID, &m.stop_id);
    w.uint32(&DIRECTION_ID, m.direction_id);
}

fn translated_string(w: &mut Writer<'_>, m: &TranslatedString) {
    w.list(&TRANSLATION, &m.translation, translation);
}

fn translation(w: &mut Writer<'_>, m: &translated_string::Translation) {
    w.string(&TEXT, &m.text);
    w.string(&LANGUAGE, &m.language);
}

fn translated_image(w: &mut Writer<'_>, m: &TranslatedImage) {
    w.list(&LOCALIZED_IMAGE, &m.localized_image, localized_image);
}

fn localized_image(w: &mut Writer<'_>, m: &translated_image::LocalizedImage) {
    w.string(&URL, &m.url);
    w.string(&MEDIA_TYPE, &m.media_type);
    w.string(&LANGUAGE, &m.language);
}

fn shape(w: &mut Writer<'_>, m: &Shape) {
    w.string(&SHAPE_ID, &m.shape_id);
    w.string(&ENCODED_POLYLINE, &m.encoded_polyline);
}

fn stop(w: &mut Writer<'_>, m: &Stop) {
    w.string(&STOP_ID, &m.stop_id);
    w.message(&STOP_CODE, m.stop_code.as_ref(), translated_string);
    w.message(&STOP_NAME, m.stop_name.as_ref(), translated_string);
    w.message(&TTS_STOP_NAME, m.tts_stop_name.as_ref(), translated_string);
    w.message(&STOP_DESC, m.stop_desc.as_ref(), translated_string);
    w.float(&STOP_LAT, m.stop_lat);
    w.float(&STOP_LON, m.stop_lon);
    w.string(&ZONE_ID, &m.zone_id);
    w.message(&STOP_URL, m.stop_url.as_ref(), translated_string);
    w.string(&PARENT_STATION, &m.parent_station);
    w.string(&STOP_TIMEZONE, &m.stop_timezone);
    w.enumeration(&WHEELCHAIR_BOARDING, m.wheelchair_boarding, |v| {
        stop::WheelchairBoarding::try_from(v)
            .ok()
            .map(|e| e.as_str_name())
    });
    w.string(&LEVEL_ID, &m.level_id);
    w.message(&PLATFORM_CODE, m.platform_code.as_ref(), translated_string);
}

fn trip_modifications(w: &mut Writer<'_>, m: &TripModifications) {
    w.list(&SELECTED_TRIPS, &m.selected_trips, selected_trips);
    w.strings(&START_TIMES, &m.start_times);
    w.strings(&SERVICE_DATES, &m.service_dates);
    w.list(&MODIFICATIONS, &m.modifications, modification);
}

fn modification(w: &mut Writer<'_>, m: &trip_modifications::Modification) {
    w.message(
        &START_STOP_SELECTOR,
        m.start_stop_selector.as_ref(),
        stop_selector,
    );
    w.message(
        &END_STOP_SELECTOR,
        m.end_stop_selector.as_ref(),
        stop_selector,
    );
    w.int32(
        &PROPAGATED_MODIFICATION_DELAY,
        m.propagated_modification_delay,
    );
    w.list(&REPLACEMENT_STOPS, &m.replacement_stops, replacement_stop);
    w.string(&SERVICE_ALERT_ID, &m.service_alert_id);
    w.uint64(&LAST_MODIFIED_TIME, m.last_modified_time);
}

fn selected_trips(w: &mut Writer<'_>, m: &trip_modifications::SelectedTrips) {
    w.strings(&TRIP_IDS, &m.trip_ids);
    w.string(&SHAPE_ID, &m.shape_id);
}

fn stop_selector(w: &mut Writer<'_>, m: &StopSelector) {
    w.uint32(&STOP_SEQUENCE, m.stop_sequence);
    w.string(&STOP_ID, &m.stop_id);
}

fn replacement_stop(w: &mut Writer<'_>, m: &ReplacementStop) {
    w.int32(&TRAVEL_TIME_TO_STOP, m.travel_time_to_stop);
    w.string(&STOP_ID, &m.stop_id);
}

fn occupancy_status_name(v: i32) -> Option<&'static str> {
    vehicle_position::OccupancyStatus::try_from(v)
        .ok()
        .map(|e| e.as_str_name())
}

fn drop_off_pickup_type_name(v: i32) -> Option<&'static str> {
    stop_time_properties::DropOffPickupType::try_from(v)
        .ok()
        .map(|e| e.as_str_name())
}

/// A JSON object key, pre-rendered with its quotes and colon under both naming schemes.
struct Key {
    proto: KeyText,
    camel: KeyText,
}

/// Longest rendered key: 29-byte field name plus `"":`.
const KEY_CAPACITY: usize = 32;

/// Key text zero-padded to a fixed size (see `Writer::fixed`).
struct KeyText {
    bytes: [u8; KEY_CAPACITY],
    len: usize,
}

impl KeyText {
    const fn new(text: &str) -> KeyText {
        let text = text.as_bytes();
        assert!(text.len() <= KEY_CAPACITY, "key longer than KEY_CAPACITY");
        let mut bytes = [0u8; KEY_CAPACITY];
        let mut i = 0;
        while i < text.len() {
            bytes[i] = text[i];
            i += 1;
        }
        KeyText {
            bytes,
            len: text.len(),
        }
    }
}

/// `key!("trip_id", "tripId")` renders `"trip_id":` and `"tripId":` at compile time.
macro_rules! key {
    ($proto:literal, $camel:literal) => {
        Key {
            proto: KeyText::new(concat!("\"", $proto, "\":")),
            camel: KeyText::new(concat!("\"", $camel, "\":")),
        }
    };
}

/// Bytes staged in the writer before they move to `out` in one copy.
const STAGE_LEN: usize = 8192;
/// The most a single `reserve` asks for: a chunk of string input, escaped, in quotes (see `str_value`).
const MAX_PIECE: usize = STAGE_LEN / 2;
/// Escaping turns one input byte into at most six (`\u00XX`).
const MAX_ESCAPED_LEN: usize = 6;

/// Appends members to `out`. Every member is written with a trailing comma, and `close` turns the
/// last one into the closing bracket, so no per-object "first member" state is needed.
///
/// Bytes are staged in a fixed array and moved to `out` a few KiB at a time: most pieces (keys,
/// digits, short ids) are a few bytes, and into an array they are copied inline, where each
/// `Vec::extend_from_slice` would be a capacity check and a call to memcpy. `finish` flushes.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    camel: bool,
    stage: [u8; STAGE_LEN],
    staged: usize,
    /// `out` never grows past this; what would is dropped and `over` set, so a hostile feed
    /// that amplifies can't take more memory than the bound (the caller refuses the result).
    limit: usize,
    over: bool,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut Vec<u8>, names: FieldNames) -> Self {
        Writer {
            out,
            camel: names == FieldNames::Camel,
            stage: [0; STAGE_LEN],
            staged: 0,
            limit: usize::MAX,
            over: false,
        }
    }

    fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Appends to `out` within the limit.
    fn put(&mut self, bytes: &[u8]) {
        if self.over || self.out.len().saturating_add(bytes.len()) > self.limit {
            self.over = true;
            return;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Writes all but the last byte of `out` to `sink` (`close` may still turn a trailing
    /// ',' into a bracket) and keeps that byte.
    fn drain_into(&mut self, sink: &mut impl std::io::Write) -> std::io::Result<()> {
        self.flush();
        let done = self.out.len().saturating_sub(1);
        sink.write_all(&self.out[..done])?;
        self.out.drain(..done);
        Ok(())
    }

    // Staging.

    fn flush(&mut self) {
        let staged = self.staged;
        self.staged = 0;
        if self.over || self.out.len().saturating_add(staged) > self.limit {
            self.over = true;
            return;
        }
        self.out.extend_from_slice(&self.stage[..staged]);
    }

    /// Makes room for `n <= STAGE_LEN` more staged bytes.
    #[inline]
    fn reserve(&mut self, n: usize) {
        if self.staged + n > STAGE_LEN {
            self.flush();
        }
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.reserve(1);
        self.stage[self.staged] = b;
        self.staged += 1;
    }

    /// Writes the first `len` bytes of `bytes`. Copying all N of a fixed-size array compiles to a few
    /// register moves; the bytes past `len` are overwritten by what comes next.
    #[inline]
    fn fixed<const N: usize>(&mut self, bytes: &[u8; N], len: usize) {
        self.reserve(N);
        self.stage[self.staged..self.staged + N].copy_from_slice(bytes);
        self.staged += len;
    }

    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.len() > MAX_PIECE {
            self.flush();
            self.put(bytes);
            return;
        }
        self.reserve(bytes.len());
        self.stage[self.staged..self.staged + bytes.len()].copy_from_slice(bytes);
        self.staged += bytes.len();
    }

    /// The last byte written, staged or already in `out`.
    #[inline]
    fn last_mut(&mut self) -> Option<&mut u8> {
        match self.staged {
            0 => self.out.last_mut(),
            n => Some(&mut self.stage[n - 1]),
        }
    }

    // Structure.

    #[inline]
    fn open(&mut self, bracket: u8) {
        self.byte(bracket);
    }

    #[inline]
    fn close(&mut self, bracket: u8) {
        // No value ends in ',', so a trailing ',' is the separator after the last member.
        match self.last_mut() {
            Some(last) if *last == b',' => *last = bracket,
            _ => self.byte(bracket),
        }
    }

    #[inline]
    fn key(&mut self, key: &Key) {
        let text = if self.camel { &key.camel } else { &key.proto };
        self.fixed(&text.bytes, text.len);
    }

    #[inline]
    fn end_member(&mut self) {
        self.byte(b',');
    }

    /// Appends the envelope, if any, closes the document and moves the last staged bytes to
    /// `out`. False when the document went over the writer's limit (and is incomplete).
    fn finish(mut self, envelope: Option<&Envelope<'_>>) -> bool {
        if let Some(envelope) = envelope {
            self.envelope(envelope);
        }
        self.close(b'}');
        self.flush();
        !self.over
    }

    fn envelope(&mut self, envelope: &Envelope<'_>) {
        self.bytes(b"\"producer_timestamp\":");
        push_f64(self, envelope.producer_timestamp);
        self.bytes(b",\"source_id\":");
        self.str_value(envelope.source_id);
        self.bytes(b",\"event_type\":");
        self.str_value(envelope.event_type);
        self.end_member();
    }

    // Members, one method per kind of field; each writes nothing for an unset field.

    fn object<T>(&mut self, msg: &T, fields: fn(&mut Self, &T)) {
        self.open(b'{');
        fields(self, msg);
        self.close(b'}');
        self.end_member();
    }

    fn message<T>(&mut self, key: &Key, msg: Option<&T>, fields: fn(&mut Self, &T)) {
        if let Some(msg) = msg {
            self.key(key);
            self.object(msg, fields);
        }
    }

    fn list<T>(&mut self, key: &Key, items: &[T], fields: fn(&mut Self, &T)) {
        if items.is_empty() {
            return;
        }
        self.key(key);
        self.open(b'[');
        for item in items {
            self.object(item, fields);
        }
        self.close(b']');
        self.end_member();
    }

    fn strings(&mut self, key: &Key, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.key(key);
        self.open(b'[');
        for item in items {
            self.str_value(item);
            self.end_member();
        }
        self.close(b']');
        self.end_member();
    }

    fn string(&mut self, key: &Key, value: &Option<String>) {
        if let Some(value) = value {
            self.key(key);
            self.str_value(value);
            self.end_member();
        }
    }

    fn boolean(&mut self, key: &Key, value: Option<bool>) {
        if let Some(value) = value {
            self.key(key);
            self.bytes(if value { b"true" } else { b"false" });
            self.end_member();
        }
    }

    fn uint32(&mut self, key: &Key, value: Option<u32>) {
        if let Some(value) = value {
            self.key(key);
            self.u64_value(u64::from(value));
            self.end_member();
        }
    }

    fn int32(&mut self, key: &Key, value: Option<i32>) {
        if let Some(value) = value {
            self.key(key);
            self.i64_value(i64::from(value));
            self.end_member();
        }
    }

    /// 64-bit integers are JSON strings, so consumers with f64 numbers keep every digit.
    fn uint64(&mut self, key: &Key, value: Option<u64>) {
        if let Some(value) = value {
            self.key(key);
            self.byte(b'"');
            self.u64_value(value);
            self.byte(b'"');
            self.end_member();
        }
    }

    fn int64(&mut self, key: &Key, value: Option<i64>) {
        if let Some(value) = value {
            self.key(key);
            self.byte(b'"');
            self.i64_value(value);
            self.byte(b'"');
            self.end_member();
        }
    }

    fn float(&mut self, key: &Key, value: Option<f32>) {
        if let Some(value) = value {
            self.key(key);
            push_f32(self, value);
            self.end_member();
        }
    }

    fn double(&mut self, key: &Key, value: Option<f64>) {
        if let Some(value) = value {
            self.key(key);
            push_f64(self, value);
            self.end_member();
        }
    }

    /// Writes the value's name; a number the enum does not define is left out, like Python does.
    fn enumeration(
        &mut self,
        key: &Key,
        value: Option<i32>,
        name: fn(i32) -> Option<&'static str>,
    ) {
        if let Some(name) = value.and_then(name) {
            self.key(key);
            self.byte(b'"');
            self.bytes(name.as_bytes());
            self.byte(b'"');
            self.end_member();
        }
    }

    // Values.

    /// Writes `s` as a JSON string, escaped like Python's `json.dumps(ensure_ascii=False)`.
    fn str_value(&mut self, s: &str) {
        self.byte(b'"');
        // Chunks small enough that their escaped form always fits the stage.
        for chunk in s.as_bytes().chunks(MAX_PIECE / MAX_ESCAPED_LEN) {
            self.reserve(chunk.len() * MAX_ESCAPED_LEN);
            let mut at = self.staged;
            for &b in chunk {
                let escape = ESCAPES[usize::from(b)];
                if escape == 0 {
                    self.stage[at] = b;
                    at += 1;
                } else if escape == b'u' {
                    let escaped = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xf)],
                    ];
                    self.stage[at..at + 6].copy_from_slice(&escaped);
                    at += 6;
                } else {
                    self.stage[at..at + 2].copy_from_slice(&[b'\\', escape]);
                    at += 2;
                }
            }
            self.staged = at;
        }
        self.byte(b'"');
    }

    #[inline]
    fn u64_value(&mut self, n: u64) {
        // Digits go straight to their place: built elsewhere and then copied, the copy would wait
        // on the small stores that built them.
        let len = decimal_len(n);
        self.reserve(len);
        write_digits(n, &mut self.stage[self.staged..self.staged + len]);
        self.staged += len;
    }

    #[inline]
    fn i64_value(&mut self, n: i64) {
        if n < 0 {
            self.byte(b'-');
        }
        self.u64_value(n.unsigned_abs());
    }
}

/// Where float text goes: the writer, or a plain Vec in tests.
trait ByteSink {
    fn put(&mut self, bytes: &[u8]);
}

impl ByteSink for Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.bytes(bytes);
    }
}

impl ByteSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

// Strings.

/// For each byte: 0 if it goes out as is, else the character after the backslash
/// (`u` meaning `\u00XX`). The same set and spelling as Python's `json.dumps`.
const ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Standard base64 with padding, as MessageToDict writes `bytes` fields. gtfs-realtime.proto has no
/// `bytes` field today; this is here, tested, for the day one is added.
#[cfg_attr(not(test), allow(dead_code))]
fn push_base64(out: &mut impl ByteSink, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.put(b"\"");
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let mut quad = [b'='; 4];
        for (i, out_byte) in quad.iter_mut().enumerate().take(chunk.len() + 1) {
            *out_byte = ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize];
        }
        out.put(&quad);
    }
    out.put(b"\"");
}

// Integers.

const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

#[inline]
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().unwrap_or(0) as usize + 1
}

/// Fills `digits`, which is `decimal_len(n)` long, with `n` in decimal.
#[inline]
fn write_digits(mut n: u64, digits: &mut [u8]) {
    let mut pos = digits.len();
    while n >= 100 && pos >= 2 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        pos -= 2;
        digits[pos..pos + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 && pos >= 2 {
        let pair = n as usize * 2;
        digits[pos - 2..pos].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else if pos >= 1 {
        digits[pos - 1] = b'0' + (n % 10) as u8;
    }
}

// Floating point.

/// An f32 as protobuf Python prints it: `ToShortestFloat` (`'%.{p}g'` for p = 6, 7, ... until the
/// text reads back, through f64, as the same f32), then Python's repr of that value.
fn push_f32(out: &mut impl ByteSink, value: f32) {
    if !value.is_finite() {
        return push_non_finite(out, value.is_nan(), value < 0.0);
    }
    let wide = f64::from(value);
    let mut text = SciBuf::default();
    // Nine significant digits always identify an f32, so the loop ends by p = 9 at the latest.
    for precision in 6..=17 {
        text.clear();
        text.format_rounded(wide, precision);
        if text.as_str().parse::<f64>().map(|v| v as f32) == Ok(value) {
            break;
        }
    }
    push_python_repr(out, text.as_str());
}

/// An f64 as Python's repr: the shortest text that reads back as the same f64.
fn push_f64(out: &mut impl ByteSink, value: f64) {
    if !value.is_finite() {
        return push_non_finite(out, value.is_nan(), value < 0.0);
    }
    let mut shortest = SciBuf::default();
    shortest.format_shortest(value);
    // When two candidates of that length are equally near, Rust's shortest mode takes the upper one and
    // Python the even one, which is what the correctly rounded (ties-to-even) text of that length gives.
    let mut nearest = SciBuf::default();
    nearest.format_rounded(value, shortest.n_digits());
    let text = if nearest.as_str().parse::<f64>() == Ok(value) {
        &nearest
    } else {
        &shortest
    };
    push_python_repr(out, text.as_str());
}

fn push_non_finite(out: &mut impl ByteSink, nan: bool, negative: bool) {
    let text: &[u8] = match (nan, negative) {
        (true, _) => b"\"NaN\"",
        (false, false) => b"\"Infinity\"",
        (false, true) => b"\"-Infinity\"",
    };
    out.put(text);
}

/// Lays out Rust scientific text (`-1.2345e-5`, `3e0`) the way Python's float repr does: positional
/// with at least one fractional digit for 1e-4 <= |x| < 1e16, else `d.ddde±XX`.
fn push_python_repr(out: &mut impl ByteSink, sci: &str) {
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci, "0"));
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    // Rust never writes an exponent past ±324, so this parse cannot fail on its own text.
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let mut digits = [0u8; 24];
    let mut n_digits = 0;
    for &b in mantissa.as_bytes().iter().filter(|b| b.is_ascii_digit()) {
        if n_digits < digits.len() {
            digits[n_digits] = b;
            n_digits += 1;
        }
    }
    while n_digits > 1 && digits[n_digits - 1] == b'0' {
        n_digits -= 1;
    }
    let digits = &digits[..n_digits.max(1)];
    if negative {
        out.put(b"-");
    }
    // Python's rule: positional when the decimal point falls within -4 < decpt <= 16.
    let decpt = exponent + 1;
    if -4 < decpt && decpt <= 16 {
        push_positional(out, digits, decpt);
    } else {
        push_exponential(out, digits, exponent);
    }
}

const ZEROS: &[u8; 16] = b"0000000000000000";

fn push_positional(out: &mut impl ByteSink, digits: &[u8], decpt: i32) {
    // decpt is within -3..=16 and digits has at most 17 elements, so every zero run is < 16.
    let n = digits.len() as i32;
    if decpt <= 0 {
        out.put(b"0.");
        out.put(&ZEROS[..(-decpt) as usize]);
        out.put(digits);
    } else if decpt >= n {
        out.put(digits);
        out.put(&ZEROS[..(decpt - n) as usize]);
        out.put(b".0");
    } else {
        let (int_part, frac_part) = digits.split_at(decpt as usize);
        out.put(int_part);
        out.put(b".");
        out.put(frac_part);
    }
}

fn push_exponential(out: &mut impl ByteSink, digits: &[u8], exponent: i32) {
    out.put(&digits[..1]);
    if digits.len() > 1 {
        out.put(b".");
        out.put(&digits[1..]);
    }
    out.put(if exponent < 0 { b"e-" } else { b"e+" });
    let magnitude = u64::from(exponent.unsigned_abs());
    let mut text = [0u8; 20];
    let text = &mut text[..decimal_len(magnitude)];
    write_digits(magnitude, text);
    if magnitude < 10 {
        out.put(b"0");
    }
    out.put(text);
}

/// Stack buffer for Rust's scientific formatting of one float (at most 25 bytes: `-d.<16 digits>e-324`).
#[derive(Default)]
struct SciBuf {
    bytes: [u8; 32],
    len: usize,
}

impl SciBuf {
    fn clear(&mut self) {
        self.len = 0;
    }

    /// `value` correctly rounded (ties to even) to `precision` significant digits, like C's `%.{p-1}e`.
    fn format_rounded(&mut self, value: f64, precision: usize) {
        // Writing into SciBuf only fails on overflow, which 32 bytes rule out for any f64.
        let _ = write!(self, "{:.*e}", precision.saturating_sub(1), value);
    }

    /// The fewest digits that read back as `value`.
    fn format_shortest(&mut self, value: f64) {
        let _ = write!(self, "{value:e}");
    }

    /// Significant digits written, e.g. 3 for `-1.25e-7`.
    fn n_digits(&self) -> usize {
        let text = self.as_str();
        let mantissa = text.split_once('e').map_or(text, |(m, _)| m);
        mantissa.bytes().filter(u8::is_ascii_digit).count()
    }

    fn as_str(&self) -> &str {
        // Only `fmt::Write::write_str` fills the buffer, always with whole &str pieces.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("0e0")
    }
}

impl std::fmt::Write for SciBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dest = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

// JSON keys, proto name and json_name.
const ACTIVE_PERIOD: Key = key!("active_period", "activePeriod");
const AFFECTED_TRIP_ID: Key = key!("affected_trip_id", "affectedTripId");
const AGENCY_ID: Key = key!("agency_id", "agencyId");
const ALERT: Key = key!("alert", "alert");
const ARRIVAL: Key = key!("arrival", "arrival");
const ASSIGNED_STOP_ID: Key = key!("assigned_stop_id", "assignedStopId");
const BEARING: Key = key!("bearing", "bearing");
const CARRIAGE_SEQUENCE: Key = key!("carriage_sequence", "carriageSequence");
const CAUSE: Key = key!("cause", "cause");
const CAUSE_DETAIL: Key = key!("cause_detail", "causeDetail");
const COMMUNICATION_PERIOD: Key = key!("communication_period", "communicationPeriod");
const CONGESTION_LEVEL: Key = key!("congestion_level", "congestionLevel");
const CURRENT_STATUS: Key = key!("current_status", "currentStatus");
const CURRENT_STOP_SEQUENCE: Key = key!("current_stop_sequence", "currentStopSequence");
const DELAY: Key = key!("delay", "delay");
const DEPARTURE: Key = key!("departure", "departure");
const DEPARTURE_OCCUPANCY_STATUS: Key =
    key!("departure_occupancy_status", "departureOccupancyStatus");
const DESCRIPTION_TEXT: Key = key!("description_text", "descriptionText");
const DIRECTION_ID: Key = key!("direction_id", "directionId");
const DROP_OFF_TYPE: Key = key!("drop_off_type", "dropOffType");
const EFFECT: Key = key!("effect", "effect");
const EFFECT_DETAIL: Key = key!("effect_detail", "effectDetail");
const ENCODED_POLYLINE: Key = key!("encoded_polyline", "encodedPolyline");
const END: Key = key!("end", "end");
const END_STOP_SELECTOR: Key = key!("end_stop_selector", "endStopSelector");
const ENTITY: Key = key!("entity", "entity");
const FEED_VERSION: Key = key!("feed_version", "feedVersion");
const GTFS_REALTIME_VERSION: Key = key!("gtfs_realtime_version", "gtfsRealtimeVersion");
const HEADER: Key = key!("header", "header");
const HEADER_TEXT: Key = key!("header_text", "headerText");
const ID: Key = key!("id", "id");
const IMAGE: Key = key!("image", "image");
const IMAGE_ALTERNATIVE_TEXT: Key = key!("image_alternative_text", "imageAlternativeText");
const IMPACT_PERIOD: Key = key!("impact_period", "impactPeriod");
const INCREMENTALITY: Key = key!("incrementality", "incrementality");
const INFORMED_ENTITY: Key = key!("informed_entity", "informedEntity");
const IS_DELETED: Key = key!("is_deleted", "isDeleted");
const LABEL: Key = key!("label", "label");
const LANGUAGE: Key = key!("language", "language");
const LAST_MODIFIED_TIME: Key = key!("last_modified_time", "lastModifiedTime");
const LATITUDE: Key = key!("latitude", "latitude");
const LEVEL_ID: Key = key!("level_id", "levelId");
const LICENSE_PLATE: Key = key!("license_plate", "licensePlate");
const LOCALIZED_IMAGE: Key = key!("localized_image", "localizedImage");
const LONGITUDE: Key = key!("longitude", "longitude");
const MEDIA_TYPE: Key = key!("media_type", "mediaType");
const MODIFICATIONS: Key = key!("modifications", "modifications");
const MODIFICATIONS_ID: Key = key!("modifications_id", "modificationsId");
const MODIFIED_TRIP: Key = key!("modified_trip", "modifiedTrip");
const MULTI_CARRIAGE_DETAILS: Key = key!("multi_carriage_details", "multiCarriageDetails");
const OCCUPANCY_PERCENTAGE: Key = key!("occupancy_percentage", "occupancyPercentage");
const OCCUPANCY_STATUS: Key = key!("occupancy_status", "occupancyStatus");
const ODOMETER: Key = key!("odometer", "odometer");
const PARENT_STATION: Key = key!("parent_station", "parentStation");
const PICKUP_TYPE: Key = key!("pickup_type", "pickupType");
const PLATFORM_CODE: Key = key!("platform_code", "platformCode");
const POSITION: Key = key!("position", "position");
const PROPAGATED_MODIFICATION_DELAY: Key = key!(
    "propagated_modification_delay",
    "propagatedModificationDelay"
);
const REPLACEMENT_STOPS: Key = key!("replacement_stops", "replacementStops");
const ROUTE_ID: Key = key!("route_id", "routeId");
const ROUTE_TYPE: Key = key!("route_type", "routeType");
const SCHEDULE_RELATIONSHIP: Key = key!("schedule_relationship", "scheduleRelationship");
const SCHEDULED_TIME: Key = key!("scheduled_time", "scheduledTime");
const SELECTED_TRIPS: Key = key!("selected_trips", "selectedTrips");
const SERVICE_ALERT_ID: Key = key!("service_alert_id", "serviceAlertId");
const SERVICE_DATES: Key = key!("service_dates", "serviceDates");
const SEVERITY_LEVEL: Key = key!("severity_level", "severityLevel");
const SHAPE: Key = key!("shape", "shape");
const SHAPE_ID: Key = key!("shape_id", "shapeId");
const SPEED: Key = key!("speed", "speed");
const START: Key = key!("start", "start");
const START_DATE: Key = key!("start_date", "startDate");
const START_STOP_SELECTOR: Key = key!("start_stop_selector", "startStopSelector");
const START_TIME: Key = key!("start_time", "startTime");
const START_TIMES: Key = key!("start_times", "startTimes");
const STOP: Key = key!("stop", "stop");
const STOP_CODE: Key = key!("stop_code", "stopCode");
const STOP_DESC: Key = key!("stop_desc", "stopDesc");
const STOP_HEADSIGN: Key = key!("stop_headsign", "stopHeadsign");
const STOP_ID: Key = key!("stop_id", "stopId");
const STOP_LAT: Key = key!("stop_lat", "stopLat");
const STOP_LON: Key = key!("stop_lon", "stopLon");
const STOP_NAME: Key = key!("stop_name", "stopName");
const STOP_SEQUENCE: Key = key!("stop_sequence", "stopSequence");
const STOP_TIME_PROPERTIES: Key = key!("stop_time_properties", "stopTimeProperties");
const STOP_TIME_UPDATE: Key = key!("stop_time_update", "stopTimeUpdate");
const STOP_TIMEZONE: Key = key!("stop_timezone", "stopTimezone");
const STOP_URL: Key = key!("stop_url", "stopUrl");
const TEXT: Key = key!("text", "text");
const TIME: Key = key!("time", "time");
const TIMESTAMP: Key = key!("timestamp", "timestamp");
const TRANSLATION: Key = key!("translation", "translation");
const TRAVEL_TIME_TO_STOP: Key = key!("travel_time_to_stop", "travelTimeToStop");
const TRIP: Key = key!("trip", "trip");
const TRIP_HEADSIGN: Key = key!("trip_headsign", "tripHeadsign");
const TRIP_ID: Key = key!("trip_id", "tripId");
const TRIP_IDS: Key = key!("trip_ids", "tripIds");
const TRIP_MODIFICATIONS: Key = key!("trip_modifications", "tripModifications");
const TRIP_PROPERTIES: Key = key!("trip_properties", "tripProperties");
const TRIP_SHORT_NAME: Key = key!("trip_short_name", "tripShortName");
const TRIP_UPDATE: Key = key!("trip_update", "tripUpdate");
const TTS_DESCRIPTION_TEXT: Key = key!("tts_description_text", "ttsDescriptionText");
const TTS_HEADER_TEXT: Key = key!("tts_header_text", "ttsHeaderText");
const TTS_STOP_NAME: Key = key!("tts_stop_name", "ttsStopName");
const UNCERTAINTY: Key = key!("uncertainty", "uncertainty");
const URL: Key = key!("url", "url");
const VEHICLE: Key = key!("vehicle", "vehicle");
const WHEELCHAIR_ACCESSIBLE: Key = key!("wheelchair_accessible", "wheelchairAccessible");
const WHEELCHAIR_BOARDING: Key = key!("wheelchair_boarding", "wheelchairBoarding");
const ZONE_ID: Key = key!("zone_id", "zoneId");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::transit_realtime::translated_string::Translation;

    fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).expect("UTF-8 output")
    }

    /// What `write` puts through a Writer, flushed.
    fn render(write: impl FnOnce(&mut Writer<'_>)) -> String {
        text(|out| {
            let mut w = Writer::new(out, FieldNames::Proto);
            write(&mut w);
            w.flush();
        })
    }

    /// One message as an object with proto names, without the member separator.
    fn render_object<T>(msg: &T, fields: fn(&mut Writer<'_>, &T)) -> String {
        let mut text = render(|w| w.object(msg, fields));
        assert_eq!(text.pop(), Some(','));
        text
    }

    fn check_f32(value: f32, expected: &str) {
        assert_eq!(text(|o| push_f32(o, value)), expected, "f32 {value:e}");
    }

    fn check_f64(value: f64, expected: &str) {
        assert_eq!(text(|o| push_f64(o, value)), expected, "f64 {value:e}");
    }

    #[test]
    #[allow(clippy::excessive_precision)] // literals written as the exact values under test
    fn float_as_to_shortest_float_then_python_repr() {
        check_f32(0.1, "0.1");
        check_f32(0.9, "0.9");
        check_f32(35.0, "35.0");
        check_f32(52.379189, "52.37919");
        check_f32(4.899431, "4.899431");
        check_f32(13.8, "13.8");
        check_f32(0.0, "0.0");
        check_f32(-0.0, "-0.0");
        check_f32(1e-4, "0.0001");
        check_f32(1e-5, "1e-05");
        check_f32(-1.5e-7, "-1.5e-07");
        check_f32(16777216.0, "16777216.0");
        check_f32(123456789.0, "123456790.0");
        check_f32(1e15, "1000000000000000.0");
        check_f32(1e16, "1e+16");
        check_f32(f32::MAX, "3.4028235e+38");
        check_f32(f32::MIN_POSITIVE, "1.1754944e-38");
        check_f32(f32::from_bits(1), "1.4013e-45");
    }

    #[test]
    #[allow(clippy::excessive_precision)] // literals written as the exact values under test
    fn double_as_python_repr() {
        check_f64(0.1 + 0.2, "0.30000000000000004");
        check_f64(123456.789, "123456.789");
        check_f64(1732470000.123456, "1732470000.123456");
        check_f64(35.0, "35.0");
        check_f64(-0.0, "-0.0");
        check_f64(1e-4, "0.0001");
        check_f64(1e-5, "1e-05");
        check_f64(1e15, "1000000000000000.0");
        check_f64(1e16, "1e+16");
        check_f64(1.2345678901234567e17, "1.2345678901234566e+17");
        check_f64(1e22, "1e+22");
        check_f64(f64::MAX, "1.7976931348623157e+308");
        check_f64(5e-324, "5e-324");
        // Two 17-digit candidates equally near: Python takes the even one, Rust's shortest mode the upper.
        check_f64(-1592328815482731.25, "-1592328815482731.2");
        check_f64(183588150707098.625, "183588150707098.62");
    }

    #[test]
    fn nan_and_infinities_as_strings() {
        check_f32(f32::NAN, "\"NaN\"");
        check_f32(f32::INFINITY, "\"Infinity\"");
        check_f32(f32::NEG_INFINITY, "\"-Infinity\"");
        check_f64(-f64::NAN, "\"NaN\"");
        check_f64(f64::INFINITY, "\"Infinity\"");
        check_f64(f64::NEG_INFINITY, "\"-Infinity\"");
    }

    fn check_str(input: &str, expected: &str) {
        let written = render(|w| w.str_value(input));
        assert_eq!(written, expected, "escaping {input:?}");
        let parsed: String = serde_json::from_str(&written).expect("valid JSON string");
        assert_eq!(parsed, input, "round trip of {input:?}");
    }

    #[test]
    fn strings_escaped_like_python_json_dumps() {
        check_str("", r#""""#);
        check_str("plain id_1", r#""plain id_1""#);
        check_str("say \"hi\"", r#""say \"hi\"""#);
        check_str(r"C:\path", r#""C:\\path""#);
        check_str("a/b", r#""a/b""#);
        check_str("\u{8}\t\n\u{c}\r", r#""\b\t\n\f\r""#);
        check_str("\u{0}\u{1}\u{1b}\u{1f}", r#""\u0000\u0001\u001b\u001f""#);
        check_str("\u{7f}", "\"\u{7f}\"");
        check_str("Łódź ż 東京 🚋", "\"Łódź ż 東京 🚋\"");
        // Valid raw in JSON (RFC 8259); Python's json.dumps(ensure_ascii=False) leaves them raw too.
        check_str("line\u{2028}para\u{2029}", "\"line\u{2028}para\u{2029}\"");
    }

    #[test]
    fn long_strings_cross_stage_flushes_intact() {
        // Every byte class, repeated past several stage sizes: the same escaping as serde_json's,
        // which spells escapes as Python does.
        let unit = "ab\"\\\n\u{1}\u{1f}é東🚋\u{2028}x";
        let long: String = unit.repeat(3000);
        let expected = serde_json::to_string(&long).expect("serializable");
        let written = render(|w| {
            w.bytes(b"[");
            w.str_value(&long);
            w.bytes(b",");
            w.str_value(unit);
            w.bytes(b"]");
        });
        let unit_json = serde_json::to_string(unit).expect("serializable");
        assert_eq!(written, format!("[{expected},{unit_json}]"));
    }

    #[test]
    fn transcode_failure_leaves_the_buffer_as_it_was() {
        let mut out = b"kept".to_vec();
        let bad = [0x0a, 0x02, 0x0a, 0x00, 0x12, 0x03, 0x0a, 0x05];
        let err = transcode_feed(&mut out, &bad, FieldNames::Proto, None).expect_err("truncated");
        assert_eq!(out, b"kept");
        assert_eq!(Err(err), crate::decode::decode_feed(&bad).map(|_| ()));
    }

    #[test]
    fn integers_64_bit_quoted_32_bit_bare() {
        let header = FeedHeader {
            timestamp: Some(u64::MAX),
            ..Default::default()
        };
        assert_eq!(
            render_object(&header, super::header),
            r#"{"timestamp":"18446744073709551615"}"#
        );
        let event = StopTimeEvent {
            delay: Some(i32::MIN),
            time: Some(i64::MAX),
            uncertainty: Some(0),
            scheduled_time: Some(i64::MIN),
        };
        assert_eq!(
            render_object(&event, stop_time_event),
            r#"{"delay":-2147483648,"time":"9223372036854775807","uncertainty":0,"scheduled_time":"-9223372036854775808"}"#
        );
        for (n, expected) in [(0u64, "0"), (9, "9"), (10, "10"), (99, "99"), (100, "100")] {
            assert_eq!(render(|w| w.u64_value(n)), expected);
        }
        assert_eq!(render(|w| w.i64_value(i64::MIN)), "-9223372036854775808");
    }

    #[test]
    fn enum_value_outside_the_proto_is_dropped() {
        let header = FeedHeader {
            gtfs_realtime_version: Some("2.0".into()),
            incrementality: Some(7),
            ..Default::default()
        };
        assert_eq!(
            render_object(&header, super::header),
            r#"{"gtfs_realtime_version":"2.0"}"#
        );
        let trip = TripDescriptor {
            schedule_relationship: Some(1),
            ..Default::default()
        };
        assert_eq!(
            render_object(&trip, trip_descriptor),
            r#"{"schedule_relationship":"ADDED"}"#
        );
    }

    #[test]
    fn bytes_as_padded_standard_base64() {
        for (input, expected) in [
            (&b""[..], r#""""#),
            (b"f", r#""Zg==""#),
            (b"fo", r#""Zm8=""#),
            (b"foo", r#""Zm9v""#),
            (b"foobar", r#""Zm9vYmFy""#),
            (&[0xfb, 0xff, 0xfe], r#""+//+""#),
        ] {
            assert_eq!(text(|o| push_base64(o, input)), expected, "{input:?}");
        }
    }

    #[test]
    fn unset_and_empty_repeated_fields_are_omitted() {
        let update = TripUpdate {
            trip: Some(TripDescriptor::default()),
            ..Default::default()
        };
        assert_eq!(render_object(&update, trip_update), r#"{"trip":{}}"#);
        let alert = Alert {
            header_text: Some(TranslatedString {
                translation: vec![Translation::default()],
            }),
            description_text: Some(TranslatedString::default()),
            ..Default::default()
        };
        assert_eq!(
            render_object(&alert, super::alert),
            r#"{"header_text":{"translation":[{}]},"description_text":{}}"#
        );
    }

    fn sample_feed() -> FeedMessage {
        FeedMessage {
            header: Some(FeedHeader {
                gtfs_realtime_version: Some("2.0".into()),
                ..Default::default()
            }),
            entity: vec![FeedEntity {
                id: Some("e1".into()),
                is_deleted: Some(false),
                ..Default::default()
            }],
        }
    }

    const ENVELOPE: Envelope<'static> = Envelope {
        producer_timestamp: 1732470000.123456,
        source_id: "ovapi \"nl\"",
        event_type: "trip_update",
    };

    #[test]
    fn envelope_follows_header_and_entity() {
        let feed = sample_feed();
        let envelope_json = r#""producer_timestamp":1732470000.123456,"source_id":"ovapi \"nl\"","event_type":"trip_update"}"#;
        let cases = [
            (
                FieldNames::Proto,
                None,
                r#"{"header":{"gtfs_realtime_version":"2.0"},"entity":[{"id":"e1","is_deleted":false}]}"#
                    .to_string(),
            ),
            (
                FieldNames::Proto,
                Some(&ENVELOPE),
                format!(
                    r#"{{"header":{{"gtfs_realtime_version":"2.0"}},"entity":[{{"id":"e1","is_deleted":false}}],{envelope_json}"#
                ),
            ),
            (
                FieldNames::Camel,
                Some(&ENVELOPE),
                format!(
                    r#"{{"header":{{"gtfsRealtimeVersion":"2.0"}},"entity":[{{"id":"e1","isDeleted":false}}],{envelope_json}"#
                ),
            ),
        ];
        for (names, envelope, expected) in cases {
            assert_eq!(text(|o| write_feed(o, &feed, names, envelope)), expected);
        }
        let entity = text(|o| {
            write_entity(
                o,
                feed.header.as_ref().expect("header"),
                &feed.entity[0],
                FieldNames::Proto,
                Some(&ENVELOPE),
            )
        });
        assert_eq!(
            entity,
            format!(
                r#"{{"header":{{"gtfs_realtime_version":"2.0"}},"entity":{{"id":"e1","is_deleted":false}},{envelope_json}"#
            )
        );
    }

    #[test]
    fn empty_feed_and_appending_to_a_used_buffer() {
        let mut out = b"prefix ".to_vec();
        write_feed(&mut out, &FeedMessage::default(), FieldNames::Proto, None);
        assert_eq!(out, b"prefix {}");
    }
}
