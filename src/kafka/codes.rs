//! Kafka error codes by name: the ones this client decides on. Numbers only; what each means
//! for a call is `produce::classify`'s, `attempt`'s and `KafkaError`'s to say. Names as in
//! Kafka's `Errors` (checked against kafka-protocol's below).

pub(crate) const NONE: i16 = 0;
pub(crate) const CORRUPT_MESSAGE: i16 = 2;
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub(crate) const LEADER_NOT_AVAILABLE: i16 = 5;
pub(crate) const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub(crate) const REQUEST_TIMED_OUT: i16 = 7;
pub(crate) const MESSAGE_TOO_LARGE: i16 = 10;
pub(crate) const NETWORK_EXCEPTION: i16 = 13;
pub(crate) const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub(crate) const RECORD_LIST_TOO_LARGE: i16 = 18;
pub(crate) const NOT_ENOUGH_REPLICAS: i16 = 19;
pub(crate) const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
pub(crate) const INVALID_REQUIRED_ACKS: i16 = 21;
pub(crate) const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub(crate) const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub(crate) const INVALID_TIMESTAMP: i16 = 32;
pub(crate) const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub(crate) const UNSUPPORTED_VERSION: i16 = 35;
pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
pub(crate) const NOT_CONTROLLER: i16 = 41;
pub(crate) const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
pub(crate) const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub(crate) const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
pub(crate) const INVALID_PRODUCER_EPOCH: i16 = 47;
pub(crate) const KAFKA_STORAGE_ERROR: i16 = 56;
pub(crate) const UNKNOWN_PRODUCER_ID: i16 = 59;
pub(crate) const FENCED_LEADER_EPOCH: i16 = 74;
pub(crate) const UNKNOWN_LEADER_EPOCH: i16 = 75;
pub(crate) const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
pub(crate) const INVALID_RECORD: i16 = 87;
pub(crate) const UNKNOWN_TOPIC_ID: i16 = 100;
pub(crate) const INCONSISTENT_TOPIC_ID: i16 = 103;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::error::error_code_name;

    #[test]
    fn every_name_is_kafkas_for_its_number() {
        let named = [
            (NONE, "NONE"),
            (CORRUPT_MESSAGE, "CORRUPT_MESSAGE"),
            (UNKNOWN_TOPIC_OR_PARTITION, "UNKNOWN_TOPIC_OR_PARTITION"),
            (LEADER_NOT_AVAILABLE, "LEADER_NOT_AVAILABLE"),
            (NOT_LEADER_OR_FOLLOWER, "NOT_LEADER_OR_FOLLOWER"),
            (REQUEST_TIMED_OUT, "REQUEST_TIMED_OUT"),
            (MESSAGE_TOO_LARGE, "MESSAGE_TOO_LARGE"),
            (NETWORK_EXCEPTION, "NETWORK_EXCEPTION"),
            (INVALID_TOPIC_EXCEPTION, "INVALID_TOPIC_EXCEPTION"),
            (RECORD_LIST_TOO_LARGE, "RECORD_LIST_TOO_LARGE"),
            (NOT_ENOUGH_REPLICAS, "NOT_ENOUGH_REPLICAS"),
            (
                NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
            ),
            (INVALID_REQUIRED_ACKS, "INVALID_REQUIRED_ACKS"),
            (TOPIC_AUTHORIZATION_FAILED, "TOPIC_AUTHORIZATION_FAILED"),
            (CLUSTER_AUTHORIZATION_FAILED, "CLUSTER_AUTHORIZATION_FAILED"),
            (INVALID_TIMESTAMP, "INVALID_TIMESTAMP"),
            (UNSUPPORTED_SASL_MECHANISM, "UNSUPPORTED_SASL_MECHANISM"),
            (UNSUPPORTED_VERSION, "UNSUPPORTED_VERSION"),
            (TOPIC_ALREADY_EXISTS, "TOPIC_ALREADY_EXISTS"),
            (NOT_CONTROLLER, "NOT_CONTROLLER"),
            (
                UNSUPPORTED_FOR_MESSAGE_FORMAT,
                "UNSUPPORTED_FOR_MESSAGE_FORMAT",
            ),
            (OUT_OF_ORDER_SEQUENCE_NUMBER, "OUT_OF_ORDER_SEQUENCE_NUMBER"),
            (DUPLICATE_SEQUENCE_NUMBER, "DUPLICATE_SEQUENCE_NUMBER"),
            (INVALID_PRODUCER_EPOCH, "INVALID_PRODUCER_EPOCH"),
            (KAFKA_STORAGE_ERROR, "KAFKA_STORAGE_ERROR"),
            (UNKNOWN_PRODUCER_ID, "UNKNOWN_PRODUCER_ID"),
            (FENCED_LEADER_EPOCH, "FENCED_LEADER_EPOCH"),
            (UNKNOWN_LEADER_EPOCH, "UNKNOWN_LEADER_EPOCH"),
            (UNSUPPORTED_COMPRESSION_TYPE, "UNSUPPORTED_COMPRESSION_TYPE"),
            (INVALID_RECORD, "INVALID_RECORD"),
            (UNKNOWN_TOPIC_ID, "UNKNOWN_TOPIC_ID"),
            (INCONSISTENT_TOPIC_ID, "INCONSISTENT_TOPIC_ID"),
        ];
        for (code, name) in named {
            assert_eq!(error_code_name(code), name, "code {code}");
        }
    }
}
