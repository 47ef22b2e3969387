//! An in-memory Kafka cluster for unit tests of the producer; speaks the wire protocol through the broker-side codecs, never opens a socket.
