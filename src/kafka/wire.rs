//! Kafka framing: size prefix, request/response headers, correlation ids, leftover-byte checks.
//! Bytes in, bytes out; never touches a socket and never interprets a message body.

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Largest response we accept. A hostile or confused peer cannot make us allocate more.
pub(crate) const MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// The length announced by a frame's 4-byte size prefix, checked against [`MAX_FRAME_BYTES`].
pub(crate) fn frame_len(prefix: [u8; 4]) -> Result<usize, String> {
    let len = i32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME_BYTES => Ok(len),
        Ok(len) => Err(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
        )),
        Err(_) => Err(format!("negative frame length {len}")),
    }
}

/// Short name of an API for logs and errors.
pub(crate) fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "other",
    }
}

/// Per-connection request numbering and header fields.
#[derive(Debug)]
pub(crate) struct RequestEncoder {
    client_id: StrBytes,
    next_correlation_id: i32,
}

/// One encoded request: the bytes to write (size prefix included) and what the response must match.
#[derive(Debug)]
pub(crate) struct EncodedRequest {
    pub correlation_id: i32,
    pub frame: Frame,
}

/// A request frame (size prefix included) in pieces, written to the socket in order: the
/// record batches a Produce request carries are shared, not copied into it.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pieces: Vec<Bytes>,
}

impl Frame {
    pub(crate) fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Bytes in all, size prefix included.
    pub(crate) fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    #[cfg(test)]
    pub(crate) fn from_pieces(pieces: Vec<Bytes>) -> Frame {
        Frame { pieces }
    }

    /// The frame as one buffer (a copy: tests and the in-memory broker).
    #[cfg(test)]
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self.pieces.as_slice() {
            [one] => one.clone(),
            pieces => Bytes::from(pieces.concat()),
        }
    }
}

impl RequestEncoder {
    pub(crate) fn new(client_id: &str) -> RequestEncoder {
        RequestEncoder {
            client_id: StrBytes::from_string(client_id.to_owned()),
            next_correlation_id: 1,
        }
    }

    /// Frames `body` as request `api` v`version` with the header version that API/version needs.
    pub(crate) fn encode<R: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &R,
    ) -> Result<EncodedRequest, String> {
        self.encode_sharing(api, version, body, &[])
    }

    /// `encode`, with each of `shared` (record batches the body carries) going into the frame
    /// as a piece of its own instead of a copy: one 8 MB document is not held a third time.
    pub(crate) fn encode_sharing<R: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &R,
        shared: &[Bytes],
    ) -> Result<EncodedRequest, String> {
        let correlation_id = self.next_correlation_id;
        // Wrapping keeps ids unique within any realistic in-flight window.
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let header_version = api.request_header_version(version);
        let body_error =
            |e: &dyn std::fmt::Display| format!("{} v{version} body: {e:#}", api_name(api));
        let size = header
            .compute_size(header_version)
            .map_err(|e| format!("request header: {e:#}"))?
            + body.compute_size(version).map_err(|e| body_error(&e))?;
        let len =
            i32::try_from(size).map_err(|_| format!("request of {size} bytes is too large"))?;
        let mut buf = Gather::new(shared);
        buf.put_i32(len);
        header
            .encode(&mut buf, header_version)
            .map_err(|e| format!("request header: {e:#}"))?;
        body.encode(&mut buf, version).map_err(|e| body_error(&e))?;
        let frame = buf.finish();
        if frame.len() != 4 + size {
            return Err(format!(
                "{} v{version}: encoded {} bytes where {} were computed",
                api_name(api),
                frame.len() - 4,
                size
            ));
        }
        Ok(EncodedRequest {
            correlation_id,
            frame,
        })
    }
}

/// The encoder's output buffer: bytes go into `head`; a `put_slice` of exactly one of the
/// `shared` buffers ends the current piece and adds that buffer as the next piece.
/// Request encoders only append (they never seek back or fill gaps; a test compares with
/// plain encoding), so `seek`/`range` only need to work within `head`.
struct Gather<'a> {
    pieces: Vec<Bytes>,
    head: BytesMut,
    done: usize,
    shared: &'a [Bytes],
}

impl<'a> Gather<'a> {
    fn new(shared: &'a [Bytes]) -> Gather<'a> {
        Gather {
            pieces: Vec::with_capacity(2 * shared.len() + 1),
            head: BytesMut::with_capacity(256),
            done: 0,
            shared,
        }
    }

    fn finish(mut self) -> Frame {
        if !self.head.is_empty() {
            self.pieces.push(self.head.freeze());
        }
        Frame {
            pieces: self.pieces,
        }
    }
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `head`, a BytesMut, with the caller's guarantees; the
// override of `put_slice` only decides between forwarding and keeping a shared buffer.
unsafe impl BufMut for Gather<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded; the caller initialised `cnt` bytes of `chunk_mut()`, which is
        // `head`'s.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        let shared = self
            .shared
            .iter()
            .find(|b| !b.is_empty() && b.as_ptr() == src.as_ptr() && b.len() == src.len());
        match shared {
            Some(batch) => {
                self.done += self.head.len() + batch.len();
                if !self.head.is_empty() {
                    self.pieces.push(self.head.split().freeze());
                }
                self.pieces.push(batch.clone());
            }
            None => self.head.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for Gather<'_> {
    fn offset(&self) -> usize {
        self.done + self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        self.head.resize(offset.saturating_sub(self.done), 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.done);
        let end = r.end.saturating_sub(self.done);
        &mut self.head[start..end]
    }
}

/// Parses a response frame (size prefix already removed): header, correlation check, then the
/// body with `body` (one of the bounded decoders in `response`), which must use every byte.
pub(crate) fn parse_response<T>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    mut frame: Bytes,
    body: impl FnOnce(&Bytes, i16) -> Result<T, String>,
) -> Result<T, String> {
    check_header(api, version, correlation_id, &mut frame)?;
    body(&frame, version).map_err(|e| format!("{} v{version}: {e}", api_name(api)))
}

/// Consumes the response header from `frame` and checks its correlation id.
pub(crate) fn check_header(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    frame: &mut Bytes,
) -> Result<(), String> {
    // The header holds no arrays, so the crate's decoder cannot be made to over-allocate here.
    let header = ResponseHeader::decode(frame, api.response_header_version(version))
        .map_err(|e| format!("response header: {e:#}"))?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "correlation id {} does not match request {correlation_id}",
            header.correlation_id
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kafka::response::{self, MetadataView};
    use bytes::Buf;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse, ProduceRequest};
    use kafka_protocol::protocol::decode_request_header_from_buffer;

    /// Encodes a response the way a broker would (test side), size prefix removed.
    pub(crate) fn broker_frame<R: Encodable>(
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &R,
    ) -> Bytes {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut buf, api.response_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn frame_len_guards() {
        assert_eq!(frame_len([0, 0, 1, 0]), Ok(256));
        assert_eq!(frame_len([0, 0, 0, 0]), Ok(0));
        assert!(frame_len([0xff, 0xff, 0xff, 0xff])
            .unwrap_err()
            .contains("negative"));
        assert!(frame_len([0x7f, 0xff, 0xff, 0xff])
            .unwrap_err()
            .contains("limit"));
        assert!(frame_len(((MAX_FRAME_BYTES + 1) as i32).to_be_bytes()).is_err());
    }

    #[test]
    fn request_frame_has_size_prefix_header_and_increasing_ids() {
        let mut enc = RequestEncoder::new("cid");
        for (version, header_version) in [(8, 1), (9, 2), (12, 2)] {
            let req = enc
                .encode(ApiKey::Metadata, version, &MetadataRequest::default())
                .unwrap();
            let mut frame = req.frame.to_bytes();
            let len = frame.get_i32() as usize;
            assert_eq!(len, frame.len());
            let header = decode_request_header_from_buffer(&mut frame).unwrap();
            assert_eq!(header.request_api_key, 3);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, req.correlation_id);
            assert_eq!(header.client_id.as_deref(), Some("cid"));
            assert_eq!(
                ApiKey::Metadata.request_header_version(version),
                header_version
            );
            let body = MetadataRequest::decode(&mut frame, version).unwrap();
            assert_eq!(body, MetadataRequest::default());
            assert!(frame.is_empty());
        }
        let a = enc
            .encode(ApiKey::Produce, 9, &ProduceRequest::default())
            .unwrap();
        let b = enc
            .encode(ApiKey::Produce, 9, &ProduceRequest::default())
            .unwrap();
        assert_eq!(b.correlation_id, a.correlation_id + 1);
    }

    fn parse(version: i16, correlation_id: i32, frame: Bytes) -> Result<MetadataView, String> {
        parse_response(
            ApiKey::Metadata,
            version,
            correlation_id,
            frame,
            response::metadata,
        )
    }

    #[test]
    fn response_checks_correlation_and_leftovers() {
        let body = MetadataResponse::default();
        for version in [1, 8, 9, 12] {
            let frame = broker_frame(ApiKey::Metadata, version, 7, &body);
            let parsed = parse(version, 7, frame.clone()).unwrap();
            assert_eq!(parsed, MetadataView::default());

            let err = parse(version, 8, frame.clone()).unwrap_err();
            assert!(
                err.contains("correlation id 7 does not match request 8"),
                "{err}"
            );

            let mut long = BytesMut::from(&frame[..]);
            long.put_u8(0);
            let err = parse(version, 7, long.freeze()).unwrap_err();
            assert!(err.contains("1 bytes left over"), "{err}");

            let short = frame.slice(..frame.len() - 1);
            assert!(parse(version, 7, short).is_err());
        }
    }

    #[test]
    fn truncated_frames_never_panic() {
        let frame = broker_frame(ApiKey::Metadata, 12, 1, &MetadataResponse::default());
        for cut in 0..frame.len() {
            let _ = parse(12, 1, frame.slice(..cut));
        }
    }
}
