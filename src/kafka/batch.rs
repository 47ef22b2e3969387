//! Record batch v2 building with pure-Rust codecs (gzip = flate2/miniz_oxide, snappy = snap in
//! xerial framing, lz4 = lz4_flex frames, zstd = the C library at level 3) and the idempotent producer fields.
//! Bytes out; never does I/O and never picks partitions.

use std::io::{self, Write};

use bytes::{BufMut, Bytes};
#[cfg(test)]
use kafka_protocol::records::Record as WireRecord;
use kafka_protocol::records::{
    Compression as Codec, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};

use super::config::Compression;

/// Producer identity stamped on a batch; [`Identity::NONE`] for a plain (non-idempotent) producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record in its partition.
    pub base_sequence: i32,
}

impl Identity {
    pub(crate) const NONE: Identity = Identity {
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        base_sequence: NO_SEQUENCE,
    };
}

/// One record as the batch builder sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub timestamp_ms: i64,
}

/// An encoded batch plus the numbers an error message needs.
#[derive(Debug, Clone)]
pub(crate) struct EncodedBatch {
    pub bytes: Bytes,
    pub largest_record_bytes: usize,
    /// The codec's setting name (`none`, `gzip`, …), for error messages.
    pub compression: &'static str,
}

/// Bytes of a record batch v2 before its records: baseOffset … recordCount.
const BATCH_HEADER_LEN: usize = 61;
/// Where the CRC-32C'd part starts (attributes), and where the CRC itself sits.
const CRC_START: usize = 21;
const CRC_AT: usize = 17;

/// Encodes `records` as one record batch v2 (offset deltas 0..n, creation timestamps).
///
/// Written here rather than with kafka-protocol's `RecordBatchEncoder`, which takes records
/// as owned `Bytes` and stages them in growing buffers: for one 8 MB document that was five
/// copies of it (ARCHITECTURE.md "Dependencies"). Here each value is copied once, into a
/// buffer sized exactly (uncompressed), or into the codec's input and then its output. The
/// tests decode every batch with kafka-protocol's decoder.
pub(crate) fn encode_batch(
    records: &[BatchRecord<'_>],
    compression: Compression,
    identity: Identity,
) -> Result<EncodedBatch, String> {
    let too_large = || {
        format!(
            "a batch of {} records is too large to encode",
            records.len()
        )
    };
    let count = i32::try_from(records.len()).map_err(|_| too_large())?;
    let base_ts = records.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let mut plain_len = 0usize;
    for (i, r) in records.iter().enumerate() {
        let body = record_body_len(r, i, base_ts).ok_or_else(too_large)?;
        plain_len = plain_len
            .checked_add(varint_len(i64::from(body)) + body as usize)
            .ok_or_else(too_large)?;
    }
    let codec = compression.to_protocol();
    // The batch is built in one Vec handed to `Bytes` without a copy: the header's room, then
    // the records, or the codec's output written straight after it.
    let mut buf = match codec {
        Codec::None => {
            let mut buf = Vec::with_capacity(BATCH_HEADER_LEN + plain_len);
            buf.resize(BATCH_HEADER_LEN, 0);
            put_records(&mut buf, records, base_ts);
            buf
        }
        _ => {
            let mut plain = Vec::with_capacity(plain_len);
            put_records(&mut plain, records, base_ts);
            let mut buf = vec![0; BATCH_HEADER_LEN];
            compress(codec, &plain, &mut buf)
                .map_err(|e| format!("{}: {e}", compression.name()))?;
            buf
        }
    };
    let batch_len = i32::try_from(buf.len() - 12).map_err(|_| too_large())?;
    let mut header = &mut buf[..BATCH_HEADER_LEN];
    header.put_i64(0); // base offset
    header.put_i32(batch_len);
    header.put_i32(NO_PARTITION_LEADER_EPOCH);
    header.put_i8(2); // magic
    header.put_u32(0); // CRC, below
    header.put_i16(codec as i16); // attributes: the codec; not transactional, not control
    header.put_i32(count - 1); // last offset delta
    header.put_i64(base_ts);
    header.put_i64(max_ts);
    header.put_i64(identity.producer_id);
    header.put_i16(identity.producer_epoch);
    header.put_i32(identity.base_sequence);
    header.put_i32(count);
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(EncodedBatch {
        compression: compression.name(),
        bytes: Bytes::from(buf),
        largest_record_bytes: records
            .iter()
            .map(|r| r.key.map_or(0, <[u8]>::len) + r.value.len())
            .max()
            .unwrap_or(0),
    })
}

/// The length of a record after its own length prefix, or None past what an i32 holds.
fn record_body_len(r: &BatchRecord<'_>, offset_delta: usize, base_ts: i64) -> Option<i32> {
    let key_len = r.key.map_or(0, <[u8]>::len);
    let key_prefix = match r.key {
        Some(k) => varint_len(i64::try_from(k.len()).ok()?),
        None => 1, // -1
    };
    let len = 1 // attributes
        + varint_len(r.timestamp_ms.wrapping_sub(base_ts))
        + varint_len(i64::try_from(offset_delta).ok()?)
        + key_prefix
        + key_len
        + varint_len(i64::try_from(r.value.len()).ok()?)
        + r.value.len()
        + 1; // no headers
    i32::try_from(len).ok()
}

/// Appends the records section (uncompressed) for `records`.
fn put_records(out: &mut impl BufMut, records: &[BatchRecord<'_>], base_ts: i64) {
    for (i, r) in records.iter().enumerate() {
        // Lengths were checked by `record_body_len` before anything was written.
        let body = record_body_len(r, i, base_ts).unwrap_or(0);
        put_varint(out, i64::from(body));
        out.put_i8(0); // attributes
        put_varint(out, r.timestamp_ms.wrapping_sub(base_ts));
        put_varint(out, i as i64);
        match r.key {
            Some(k) => {
                put_varint(out, k.len() as i64);
                out.put_slice(k);
            }
            None => put_varint(out, -1),
        }
        put_varint(out, r.value.len() as i64);
        out.put_slice(r.value);
        put_varint(out, 0); // header count
    }
}

/// Kafka's zig-zag varint (varlong for 64-bit values), the record format's integers.
fn put_varint(out: &mut impl BufMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

/// The xerial snappy-java stream header the Java client writes (and reads, with a raw fallback).
const XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Uncompressed bytes per xerial block, as snappy-java's `SnappyOutputStream`.
const XERIAL_BLOCK: usize = 32 * 1024;

/// Compresses the records section of a batch with the codec named in its attributes, appending
/// to `out`.
///
/// Each codec is its own never-inlined function: their encoders keep tables of tens of KiB on
/// the stack, and inlined together they would make every batch encode (even an uncompressed
/// one) touch all of them — stack pages that then stay resident in every feed thread.
fn compress(codec: Codec, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    match codec {
        Codec::None => out.extend_from_slice(plain), // not called for None by encode_batch
        Codec::Gzip => gzip(plain, out)?,
        Codec::Snappy => snappy(plain, out)?,
        Codec::Lz4 => lz4(plain, out)?,
        Codec::Zstd => zstd(plain, out)?,
    }
    Ok(())
}

#[inline(never)]
fn gzip(plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    enc.write_all(plain)?;
    enc.finish().map(|_| ())
}

#[inline(never)]
fn snappy(plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    // Same framing as the Java client, so every broker and consumer reads it.
    out.reserve(XERIAL_MAGIC.len() + plain.len() / 2 + 64);
    out.extend_from_slice(XERIAL_MAGIC);
    let mut enc = snap::raw::Encoder::new();
    for block in plain.chunks(XERIAL_BLOCK) {
        let compressed = enc.compress_vec(block).map_err(io::Error::other)?;
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
    }
    Ok(())
}

/// An LZ4 frame as Kafka's `KafkaLZ4BlockOutputStream` writes it: independent blocks of at
/// most 64 KiB, no checksums, no content size, then the end mark. Written here over
/// lz4_flex's block compressor, straight into the batch, grown once: its frame encoder
/// allocated and zeroed two 64 KiB block buffers and grew its output per call, more than the
/// compression itself on an 84 kB document (BENCHMARKS.md "What moved").
#[inline(never)]
fn lz4(plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    // Each block's worst case (the last one is shorter), its size word, the end mark.
    let bound = LZ4_FRAME_HEADER.len()
        + plain
            .chunks(LZ4_BLOCK)
            .map(|block| 4 + lz4_flex::block::get_maximum_output_size(block.len()))
            .sum::<usize>()
        + 4;
    let start = out.len();
    extend_zeroed(out, bound);
    let out_frame = &mut out[start..];
    out_frame[..LZ4_FRAME_HEADER.len()].copy_from_slice(&LZ4_FRAME_HEADER);
    let mut at = LZ4_FRAME_HEADER.len();
    for block in plain.chunks(LZ4_BLOCK) {
        let (size, body) = out_frame[at..].split_at_mut(4);
        let n = lz4_flex::block::compress_into(block, body).map_err(io::Error::other)?;
        // A block that does not shrink is stored as is, flagged by the size's high bit.
        let stored = if n < block.len() {
            n as u32
        } else {
            body[..block.len()].copy_from_slice(block);
            block.len() as u32 | 0x8000_0000
        };
        size.copy_from_slice(&stored.to_le_bytes());
        at += 4 + (stored & 0x7fff_ffff) as usize;
    }
    out_frame[at..at + 4].copy_from_slice(&0u32.to_le_bytes()); // end mark
    out.truncate(start + at + 4);
    Ok(())
}

/// Appends `n` zero bytes. `Vec::resize(_, 0)` is a byte-at-a-time loop at opt-level "z" (a
/// third of an lz4 batch's CPU); copying from a block of zeros is a memcpy.
fn extend_zeroed(out: &mut Vec<u8>, n: usize) {
    const ZEROS: [u8; 1024] = [0; 1024];
    out.reserve(n);
    let mut left = n;
    while left > 0 {
        let k = left.min(ZEROS.len());
        out.extend_from_slice(&ZEROS[..k]);
        left -= k;
    }
}

const LZ4_BLOCK: usize = 64 * 1024;
/// Magic, FLG (version 01, independent blocks, nothing else), BD (64 KiB blocks), and the
/// header checksum (the second byte of xxh32 over FLG and BD) — what lz4_flex's and Kafka's
/// frame writers put there for these settings (tested).
const LZ4_FRAME_HEADER: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82];

/// Level 3, the level of the Java client and librdkafka (their default), with the reference
/// C library: a pure-Rust encoder (ruzstd) had only its fastest level, twice the bytes at
/// seven times the time.
#[inline(never)]
fn zstd(plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let idle = ZSTD_CONTEXTS.lock().ok().and_then(|mut idle| idle.pop());
    let mut context = match idle {
        Some(context) => context,
        None => zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
    };
    let compressed = context.compress(plain);
    if let Ok(mut idle) = ZSTD_CONTEXTS.lock() {
        if idle.len() < ZSTD_IDLE_CONTEXTS {
            idle.push(context);
        }
    }
    out.extend_from_slice(&compressed?);
    Ok(())
}

/// Idle zstd contexts, shared by every feed of the process: making one per batch (tables
/// allocated and faulted in, the CPU probed with `cpuid`, which traps in a VM) cost more than
/// compressing an 84 kB document. Bounded by compressions at once, not by feeds: at most
/// `ZSTD_IDLE_CONTEXTS` stay (~0.8 MiB each at level 3 on large documents).
static ZSTD_CONTEXTS: std::sync::Mutex<Vec<zstd::bulk::Compressor<'static>>> =
    std::sync::Mutex::new(Vec::new());
const ZSTD_IDLE_CONTEXTS: usize = 2;

const ZSTD_LEVEL: i32 = 3;

/// Inverse of [`compress`], for tests and the in-memory broker.
#[cfg(test)]
pub(crate) fn decompress(codec: Codec, data: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    match codec {
        Codec::None => out.extend_from_slice(data),
        Codec::Gzip => {
            flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
        }
        Codec::Snappy => match data.strip_prefix(&XERIAL_MAGIC[..]) {
            Some(mut rest) => {
                while !rest.is_empty() {
                    let (len, tail) = rest
                        .split_at_checked(4)
                        .ok_or_else(|| io::Error::other("short block length"))?;
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    let (block, tail) = tail
                        .split_at_checked(len)
                        .ok_or_else(|| io::Error::other("short block"))?;
                    out.extend_from_slice(
                        &snap::raw::Decoder::new()
                            .decompress_vec(block)
                            .map_err(io::Error::other)?,
                    );
                    rest = tail;
                }
            }
            None => {
                out = snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(io::Error::other)?
            }
        },
        Codec::Lz4 => {
            lz4_flex::frame::FrameDecoder::new(data).read_to_end(&mut out)?;
        }
        Codec::Zstd => {
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(io::Error::other)?
                .read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// Decodes batches the way a broker would, with our decompressors.
#[cfg(test)]
pub(crate) fn decode_batches(mut bytes: Bytes) -> Vec<WireRecord> {
    use kafka_protocol::records::RecordBatchDecoder;
    let decompressor = |data: &mut Bytes, codec: Codec| Ok(Bytes::from(decompress(codec, data)?));
    RecordBatchDecoder::decode_with_custom_compression(&mut bytes, Some(decompressor))
        .expect("decodable batch")
        .records
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// `compress` behind a batch header's worth of bytes it must leave alone; its output only.
    fn compressed(codec: Codec, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0xee; BATCH_HEADER_LEN];
        compress(codec, plain, &mut out).unwrap();
        assert_eq!(
            out[..BATCH_HEADER_LEN],
            [0xee; BATCH_HEADER_LEN],
            "{codec:?}"
        );
        out.split_off(BATCH_HEADER_LEN)
    }

    fn sample(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let key = (i % 3 != 0).then(|| format!("key-{i}").into_bytes());
                let value = format!(
                    "{{\"entity\":{i},\"text\":\"{}\"}}",
                    "x".repeat(i * 37 % 500)
                )
                .into_bytes();
                (key, value, 1_700_000_000_000 + i as i64 * 3)
            })
            .collect()
    }

    type Sample = (Option<Vec<u8>>, Vec<u8>, i64);

    fn batch_records(data: &[Sample]) -> Vec<BatchRecord<'_>> {
        data.iter()
            .map(|(k, v, t)| BatchRecord {
                key: k.as_deref(),
                value: v,
                timestamp_ms: *t,
            })
            .collect()
    }

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn round_trip_every_codec() {
        for n in [1, 2, 50, 700] {
            let data = sample(n);
            let records = batch_records(&data);
            for codec in ALL {
                let batch = encode_batch(&records, codec, Identity::NONE).unwrap();
                // The attributes' low bits name the codec.
                assert_eq!(
                    i16::from_be_bytes([batch.bytes[21], batch.bytes[22]]) & 7,
                    codec.to_protocol() as i16
                );
                let decoded = decode_batches(batch.bytes.clone());
                assert_eq!(decoded.len(), n, "{codec:?} n={n}");
                for (i, (rec, (k, v, t))) in decoded.iter().zip(&data).enumerate() {
                    assert_eq!(rec.offset, i as i64);
                    assert_eq!(rec.key.as_deref(), k.as_deref());
                    assert_eq!(rec.value.as_deref(), Some(&v[..]));
                    assert_eq!(rec.timestamp, *t);
                    assert_eq!(rec.producer_id, -1);
                    assert_eq!(rec.sequence, -1 + i as i32);
                }
            }
        }
    }

    /// The same batch through kafka-protocol's own encoder: the byte-for-byte oracle.
    fn reference_encode(records: &[BatchRecord<'_>], identity: Identity) -> Bytes {
        use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        let wire: Vec<WireRecord> = records
            .iter()
            .enumerate()
            .map(|(i, r)| WireRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: identity.producer_id,
                producer_epoch: identity.producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: identity.base_sequence.wrapping_add(i as i32),
                timestamp: r.timestamp_ms,
                key: r.key.map(Bytes::copy_from_slice),
                value: Some(Bytes::copy_from_slice(r.value)),
                headers: Default::default(),
            })
            .collect();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Codec::None,
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, &wire, &options).unwrap();
        buf.freeze()
    }

    #[test]
    fn uncompressed_batches_equal_kafka_protocols_byte_for_byte() {
        // Keys absent and present, empty and 200-byte values, timestamps out of order (the
        // base is the smallest), offsets past one varint byte.
        for n in [1, 2, 3, 64, 65, 300] {
            let data: Vec<Sample> = (0..n)
                .map(|i| {
                    let key = (i % 4 != 0).then(|| vec![b'k'; i % 7]);
                    let value = vec![b'v'; (i * 131) % 260];
                    let ts = 1_700_000_000_000 + ((i * 7919) % 1000) as i64 - 500;
                    (key, value, ts)
                })
                .collect();
            let records = batch_records(&data);
            for identity in [
                Identity::NONE,
                Identity {
                    producer_id: 77,
                    producer_epoch: 2,
                    base_sequence: i32::MAX - 5,
                },
            ] {
                let ours = encode_batch(&records, Compression::None, identity).unwrap();
                assert_eq!(ours.bytes, reference_encode(&records, identity), "n={n}");
            }
        }
    }

    #[test]
    fn plain_producer_batch_header() {
        let r = [BatchRecord {
            key: None,
            value: b"v",
            timestamp_ms: 5,
        }];
        let b = encode_batch(&r, Compression::None, Identity::NONE)
            .unwrap()
            .bytes;
        // baseOffset 0, magic 2 at byte 16, producerId -1, epoch -1, baseSequence -1, count 1.
        assert_eq!(&b[..8], &[0; 8]);
        assert_eq!(b[16], 2);
        assert_eq!(&b[43..51], &(-1i64).to_be_bytes());
        assert_eq!(&b[51..53], &(-1i16).to_be_bytes());
        assert_eq!(&b[53..57], &(-1i32).to_be_bytes());
        assert_eq!(&b[57..61], &1i32.to_be_bytes());
    }

    #[test]
    fn idempotent_batch_carries_identity() {
        let data = sample(5);
        let records = batch_records(&data);
        let id = Identity {
            producer_id: 4242,
            producer_epoch: 3,
            base_sequence: 17,
        };
        let batch = encode_batch(&records, Compression::Lz4, id).unwrap();
        let decoded = decode_batches(batch.bytes.clone());
        assert_eq!(decoded.len(), 5);
        for (i, r) in decoded.iter().enumerate() {
            assert_eq!(
                (r.producer_id, r.producer_epoch, r.sequence),
                (4242, 3, 17 + i as i32)
            );
        }
    }

    #[test]
    fn codecs_compress_repetitive_data() {
        let plain = b"{\"trip\":\"abc\",\"stop\":\"def\"}".repeat(2000);
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let c = compressed(codec, &plain);
            assert!(
                c.len() < plain.len() / 4,
                "{codec:?}: {} of {}",
                c.len(),
                plain.len()
            );
            assert_eq!(decompress(codec, &c).unwrap(), plain, "{codec:?}");
        }
        // Multi-block xerial stream (> 32 KiB) and the raw-snappy fallback.
        assert!(plain.len() > XERIAL_BLOCK);
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(decompress(Codec::Snappy, &raw).unwrap(), plain);
    }

    #[test]
    fn our_lz4_frames_read_back_and_start_like_lz4_flexs() {
        use std::io::Read;
        let reference = {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            enc.write_all(b"x").unwrap();
            enc.finish().unwrap()
        };
        assert_eq!(
            reference[..7],
            LZ4_FRAME_HEADER,
            "header checksum and flags"
        );
        // Empty, one byte, incompressible, exactly one block, several blocks and a tail.
        let noise: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let json = "{\"trip_id\":\"A20\",\"stop\":1}"
            .repeat(9_000)
            .into_bytes();
        for plain in [
            &b""[..],
            b"x",
            &noise[..],
            &json[..65_536],
            &json[..],
            &noise[..65_537],
        ] {
            let frame = compressed(Codec::Lz4, plain);
            let mut back = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&frame[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, plain, "{} bytes", plain.len());
        }
        assert!(compressed(Codec::Lz4, &json).len() < json.len() / 10);
    }

    #[test]
    fn lz4_frame_header_is_kafka_compatible() {
        let c = compressed(Codec::Lz4, b"hello hello hello");
        assert_eq!(&c[..4], &[0x04, 0x22, 0x4d, 0x18]); // LZ4 frame magic
        let flg = c[4];
        assert_eq!(flg >> 6, 1, "version 01");
        assert_ne!(flg & 0x20, 0, "independent blocks");
        assert_eq!(flg & 0x08, 0, "no content size");
        assert_eq!((c[5] >> 4) & 7, 4, "64 KiB blocks");
    }
}
