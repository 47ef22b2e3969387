//! SASL for Kafka, bytes in and bytes out: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802,
//! RFC 7677) as client state machines, and the SaslHandshake + SaslAuthenticate exchange that
//! runs one on a new connection or on one whose session is about to expire (KIP-368). Never
//! touches a socket and never logs a message body: the producer moves the frames.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use ring::{digest, hmac, pbkdf2};

use super::config::{Sasl, SaslMechanism};
use super::error::KafkaError;
use super::response;
use super::versions::Versions;
use super::wire::{self, EncodedRequest, RequestEncoder};
use super::Secret;

// UNSUPPORTED_SASL_MECHANISM: the handshake answer that lists what the broker offers instead.
use super::codes::UNSUPPORTED_SASL_MECHANISM;

/// SCRAM iteration counts we accept from a server. Kafka itself allows 4096..=16384; a lower
/// count from an impostor would make our proof cheap to brute-force, a much higher one would
/// make us spin.
const SCRAM_MIN_ITERATIONS: u32 = 4096;
const SCRAM_MAX_ITERATIONS: u32 = 65_536;

/// Server challenges one exchange may take before we call the server confused (SCRAM needs 2).
const MAX_ROUNDS: u32 = 4;

/// The hash under a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    /// Only for RFC 5802's own test vector; Kafka has no SCRAM-SHA-1.
    #[cfg(test)]
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            #[cfg(test)]
            Hash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            #[cfg(test)]
            Hash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            #[cfg(test)]
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha512 => &digest::SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// A SCRAM client (RFC 5802 without channel binding, as Kafka speaks it).
///
/// `client_first` → server-first → `client_final` → server-final → `verify`. The password is
/// used as its UTF-8 bytes without SASLprep, like Kafka's Java client and librdkafka.
#[derive(Debug)]
pub(crate) struct Scram {
    hash: Hash,
    password: Secret,
    client_nonce: String,
    client_first_bare: String,
}

/// What `client_final` leaves to check in the server's last message.
#[derive(Debug)]
pub(crate) struct AwaitingServerFinal {
    server_signature: Vec<u8>,
}

impl Scram {
    fn new(hash: Hash, username: &str, password: &Secret, client_nonce: String) -> Scram {
        let client_first_bare = format!("n={},r={client_nonce}", saslname(username));
        Scram {
            hash,
            password: password.clone(),
            client_nonce,
            client_first_bare,
        }
    }

    /// The client-first message: no channel binding (`n`), no authorization id.
    pub(crate) fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first message with the client-final message (proof included).
    pub(crate) fn client_final(
        &self,
        server_first: &str,
    ) -> Result<(String, AwaitingServerFinal), String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for (i, attr) in server_first.split(',').enumerate() {
            match attr.split_once('=') {
                Some(("m", _)) if i == 0 => {
                    return Err("server requires an unsupported SCRAM extension".to_owned())
                }
                Some(("e", e)) => return Err(format!("server error: {e}")),
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                _ => {} // Extensions we don't use (RFC 5802 allows them after i=).
            }
        }
        let nonce = nonce.ok_or("server-first message has no nonce (r=)")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() <= self.client_nonce.len() {
            return Err("server nonce does not extend ours".to_owned());
        }
        if nonce.contains(|c: char| !c.is_ascii_graphic()) {
            return Err("server nonce is not printable".to_owned());
        }
        let salt = b64::decode(salt.ok_or("server-first message has no salt (s=)")?)
            .ok_or("server salt is not base64")?;
        let iterations: u32 = iterations
            .ok_or("server-first message has no iteration count (i=)")?
            .parse()
            .map_err(|_| "server iteration count is not a number".to_owned())?;
        if !(SCRAM_MIN_ITERATIONS..=SCRAM_MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "server asks for {iterations} iterations, outside {SCRAM_MIN_ITERATIONS}..={SCRAM_MAX_ITERATIONS}"
            ));
        }
        let iterations = NonZeroU32::new(iterations).ok_or("iteration count 0")?;

        let mut salted = vec![0u8; self.hash.len()];
        pbkdf2::derive(
            self.hash.pbkdf2(),
            iterations,
            &salt,
            self.password.expose().as_bytes(),
            &mut salted,
        );
        let salted = hmac::Key::new(self.hash.hmac(), &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), client_key.as_ref());
        // "biws" is base64("n,,"): the GS2 header of the client-first message.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), server_key.as_ref()),
            auth_message.as_bytes(),
        );
        Ok((
            format!("{without_proof},p={}", b64::encode(&proof)),
            AwaitingServerFinal {
                server_signature: server_signature.as_ref().to_vec(),
            },
        ))
    }
}

impl AwaitingServerFinal {
    /// Checks the server-final message: the server proves it knows the password too.
    pub(crate) fn verify(&self, server_final: &str) -> Result<(), String> {
        let first = server_final.split(',').next().unwrap_or_default();
        if let Some(e) = first.strip_prefix("e=") {
            return Err(format!("server error: {e}"));
        }
        let v = first
            .strip_prefix("v=")
            .ok_or("server-final message has no verifier (v=)")?;
        let got = b64::decode(v).ok_or("server verifier is not base64")?;
        // Constant time: a mismatch says nothing about where.
        let same = got.len() == self.server_signature.len()
            && got
                .iter()
                .zip(&self.server_signature)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(
                "server signature does not match: the broker does not know this user's \
                 password (impostor or misconfigured broker)"
                    .to_owned(),
            )
        }
    }
}

/// RFC 5802 saslname: ',' and '=' escaped.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// A fresh client nonce: 24 random bytes, base64 (printable, no ',').
fn nonce() -> Result<String, String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random source failed".to_owned())?;
    Ok(b64::encode(&bytes))
}

/// Standard base64 with padding (RFC 4648 section 4), the only form SCRAM uses; a few lines
/// instead of a crate.
mod b64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                out.push(if i <= chunk.len() {
                    char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize])
                } else {
                    '='
                });
            }
        }
        out
    }

    /// Strict: whole quads, padding only at the very end, nothing outside the alphabet.
    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        if bytes.len() % 4 != 0 {
            return None;
        }
        let quads = bytes.len() / 4;
        let mut out = Vec::with_capacity(quads * 3);
        for (i, quad) in bytes.chunks(4).enumerate() {
            let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && i + 1 < quads) {
                return None;
            }
            let mut n = 0u32;
            for &c in &quad[..4 - pad] {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    _ => return None,
                };
                n = n << 6 | u32::from(v);
            }
            n <<= 6 * pad;
            out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
        }
        Some(out)
    }
}

/// One mechanism's client side: a first message, then an answer per server challenge.
#[derive(Debug)]
enum Client {
    /// PLAIN: one message, `\0user\0password`; the broker answers with nothing.
    Plain {
        sent: bool,
    },
    /// SCRAM before and after the server-first message.
    Scram(Scram),
    ScramFinal(AwaitingServerFinal),
    Done,
}

/// Where the exchange stands.
#[derive(Debug)]
enum Step {
    /// SaslHandshake to send.
    Handshake,
    /// SaslAuthenticate with these bytes to send.
    Authenticate(Vec<u8>),
    /// A request is out; its response must come before anything else.
    Awaiting {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    Done,
}

/// SaslHandshake then SaslAuthenticate rounds until the mechanism is satisfied, at the versions
/// negotiated by ApiVersions. `next_request` → send → receive → `on_response`, until
/// `next_request` returns `None`.
#[derive(Debug)]
pub(crate) struct Exchange {
    broker: String,
    mechanism: SaslMechanism,
    username: String,
    password: Secret,
    client: Client,
    step: Step,
    handshake_version: i16,
    authenticate_version: i16,
    rounds: u32,
    session_lifetime_ms: i64,
}

impl Exchange {
    /// Starts an exchange on a connection whose ApiVersions gave `versions`.
    pub(crate) fn start(
        broker: &str,
        sasl: &Sasl,
        versions: &Versions,
    ) -> Result<Exchange, KafkaError> {
        let nonce = match sasl.mechanism {
            SaslMechanism::Plain => String::new(),
            _ => nonce().map_err(|detail| KafkaError::Authentication {
                broker: broker.to_owned(),
                mechanism: sasl.mechanism.name(),
                username: sasl.username.clone(),
                detail,
            })?,
        };
        Exchange::with_nonce(broker, sasl, versions, nonce)
    }

    fn with_nonce(
        broker: &str,
        sasl: &Sasl,
        versions: &Versions,
        nonce: String,
    ) -> Result<Exchange, KafkaError> {
        let unsupported = |api: ApiKey, ours: (i16, i16)| KafkaError::UnsupportedVersion {
            broker: broker.to_owned(),
            api: wire::api_name(api),
            ours,
            theirs: None,
        };
        let handshake_version = versions
            .sasl_handshake
            .ok_or_else(|| unsupported(ApiKey::SaslHandshake, super::versions::SASL_HANDSHAKE))?;
        let authenticate_version = versions.sasl_authenticate.ok_or_else(|| {
            unsupported(ApiKey::SaslAuthenticate, super::versions::SASL_AUTHENTICATE)
        })?;
        let client = match sasl.mechanism {
            SaslMechanism::Plain => Client::Plain { sent: false },
            SaslMechanism::ScramSha256 => Client::Scram(Scram::new(
                Hash::Sha256,
                &sasl.username,
                &sasl.password,
                nonce,
            )),
            SaslMechanism::ScramSha512 => Client::Scram(Scram::new(
                Hash::Sha512,
                &sasl.username,
                &sasl.password,
                nonce,
            )),
        };
        Ok(Exchange {
            broker: broker.to_owned(),
            mechanism: sasl.mechanism,
            username: sasl.username.clone(),
            password: sasl.password.clone(),
            client,
            step: Step::Handshake,
            handshake_version,
            authenticate_version,
            rounds: 0,
            session_lifetime_ms: 0,
        })
    }

    /// How long the broker keeps this authentication valid (KIP-368), if it said.
    pub(crate) fn session_lifetime(&self) -> Option<Duration> {
        u64::try_from(self.session_lifetime_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    fn auth_error(&self, detail: String) -> KafkaError {
        KafkaError::Authentication {
            broker: self.broker.clone(),
            mechanism: self.mechanism.name(),
            username: self.username.clone(),
            detail,
        }
    }

    /// The next request to send, or `None` when authenticated.
    pub(crate) fn next_request(
        &mut self,
        encoder: &mut RequestEncoder,
    ) -> Result<Option<EncodedRequest>, KafkaError> {
        let encode_err = |detail: String| KafkaError::Encode {
            topic: "-".to_owned(),
            detail,
        };
        let (api, version, request) = match std::mem::replace(&mut self.step, Step::Done) {
            Step::Done => return Ok(None),
            Step::Awaiting { .. } => {
                return Err(KafkaError::Config {
                    setting: "sasl",
                    reason: "exchange driven out of order".to_owned(),
                })
            }
            Step::Handshake => {
                let body = SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(self.mechanism.name()));
                let v = self.handshake_version;
                (
                    ApiKey::SaslHandshake,
                    v,
                    encoder
                        .encode(ApiKey::SaslHandshake, v, &body)
                        .map_err(encode_err)?,
                )
            }
            Step::Authenticate(bytes) => {
                let body = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
                let v = self.authenticate_version;
                (
                    ApiKey::SaslAuthenticate,
                    v,
                    encoder
                        .encode(ApiKey::SaslAuthenticate, v, &body)
                        .map_err(encode_err)?,
                )
            }
        };
        self.step = Step::Awaiting {
            api,
            version,
            correlation_id: request.correlation_id,
        };
        Ok(Some(request))
    }

    /// Feeds the response to the request `next_request` returned last.
    pub(crate) fn on_response(&mut self, frame: Bytes) -> Result<(), KafkaError> {
        let Step::Awaiting {
            api,
            version,
            correlation_id,
        } = self.step
        else {
            return Err(KafkaError::Config {
                setting: "sasl",
                reason: "response without a request".to_owned(),
            });
        };
        let malformed = |detail: String| KafkaError::Malformed {
            broker: self.broker.clone(),
            api: wire::api_name(api),
            detail,
        };
        match api {
            ApiKey::SaslHandshake => {
                let r = wire::parse_response(
                    api,
                    version,
                    correlation_id,
                    frame,
                    response::sasl_handshake,
                )
                .map_err(malformed)?;
                match r.error_code {
                    0 => {}
                    UNSUPPORTED_SASL_MECHANISM => {
                        return Err(KafkaError::MechanismNotOffered {
                            broker: self.broker.clone(),
                            mechanism: self.mechanism.name(),
                            offered: r.mechanisms,
                        })
                    }
                    code => {
                        return Err(self.auth_error(format!(
                            "SaslHandshake refused: {} (is this listener SASL_PLAINTEXT or \
                             SASL_SSL? check security.protocol)",
                            super::error::error_code_name(code)
                        )))
                    }
                }
                let first = self.first_message()?;
                self.step = Step::Authenticate(first);
            }
            _ => {
                let r = wire::parse_response(
                    api,
                    version,
                    correlation_id,
                    frame,
                    response::sasl_authenticate,
                )
                .map_err(malformed)?;
                if r.error_code != 0 {
                    let mut detail = super::error::error_code_name(r.error_code);
                    if let Some(m) = r.error_message.filter(|m| !m.is_empty()) {
                        detail = format!("{detail}: {m}");
                    }
                    return Err(self.auth_error(detail));
                }
                self.session_lifetime_ms = r.session_lifetime_ms;
                self.rounds += 1;
                if self.rounds > MAX_ROUNDS {
                    return Err(self.auth_error("broker keeps challenging".to_owned()));
                }
                self.step = match self.on_challenge(&r.auth_bytes)? {
                    Some(reply) => Step::Authenticate(reply),
                    None => Step::Done,
                };
            }
        }
        Ok(())
    }

    fn first_message(&mut self) -> Result<Vec<u8>, KafkaError> {
        match &mut self.client {
            Client::Plain { sent } => {
                *sent = true;
                let mut m = Vec::with_capacity(self.username.len() + 64);
                m.push(0);
                m.extend_from_slice(self.username.as_bytes());
                m.push(0);
                m.extend_from_slice(self.password.expose().as_bytes());
                Ok(m)
            }
            Client::Scram(s) => Ok(s.client_first().into_bytes()),
            _ => Err(self.auth_error("mechanism restarted".to_owned())),
        }
    }

    /// The answer to a server challenge, or `None` when the mechanism is complete.
    fn on_challenge(&mut self, challenge: &[u8]) -> Result<Option<Vec<u8>>, KafkaError> {
        let text = std::str::from_utf8(challenge)
            .map_err(|_| self.auth_error("server message is not UTF-8".to_owned()))?;
        match std::mem::replace(&mut self.client, Client::Done) {
            Client::Plain { sent: true } => Ok(None),
            Client::Scram(s) => {
                let (reply, awaiting) = s.client_final(text).map_err(|e| self.auth_error(e))?;
                self.client = Client::ScramFinal(awaiting);
                Ok(Some(reply.into_bytes()))
            }
            Client::ScramFinal(awaiting) => {
                awaiting.verify(text).map_err(|e| self.auth_error(e))?;
                Ok(None)
            }
            Client::Plain { sent: false } | Client::Done => {
                Err(self.auth_error("unexpected server message".to_owned()))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kafka::wire::tests::broker_frame;
    use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};

    fn scram_exchange(hash: Hash, user: &str, password: &str, nonce: &str) -> Scram {
        Scram::new(hash, user, &Secret::new(password), nonce.to_owned())
    }

    /// (hash, client nonce, server-first, client-final, server-final) for user "user",
    /// password "pencil".
    const VECTORS: &[(Hash, &str, &str, &str, &str)] = &[
        // RFC 5802 section 5 (SCRAM-SHA-1).
        (
            Hash::Sha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        ),
        // RFC 7677 section 3 (SCRAM-SHA-256).
        (
            Hash::Sha256,
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        ),
        // SCRAM-SHA-512 has no RFC example; this one was computed with Python's hashlib and
        // hmac (an independent implementation) from the RFC 7677 inputs.
        (
            Hash::Sha512,
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            SHA512_CLIENT_FINAL,
            SHA512_SERVER_FINAL,
        ),
    ];
    const SHA512_CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        p=gMGXRcevScNtxZ6/8lQYpGtnsNAc3mGcmNomv+xnoOMw+3R2xNJdMNnzMlTN8PPC6wdp6dybEmDYXYTxwnYPJQ==";
    const SHA512_SERVER_FINAL: &str =
        "v=ZQnYEgWQMFmmsM8aQMF0nDDCy/AgCzkwk8CmMZYcMg0vSVlKDanekLtifDSeVGT4+5ZxXnJq199RVG2rR7N7Zw==";

    #[test]
    fn rfc_test_vectors() {
        for &(hash, nonce, server_first, client_final, server_final) in VECTORS {
            let s = scram_exchange(hash, "user", "pencil", nonce);
            assert_eq!(s.client_first(), format!("n,,n=user,r={nonce}"), "{hash:?}");
            let (reply, awaiting) = s.client_final(server_first).unwrap();
            assert_eq!(reply, client_final, "{hash:?}");
            awaiting.verify(server_final).unwrap();
            // A signature off by one bit is refused.
            let mut sig = b64::decode(server_final.strip_prefix("v=").unwrap()).unwrap();
            sig[0] ^= 1;
            let err = awaiting
                .verify(&format!("v={}", b64::encode(&sig)))
                .unwrap_err();
            assert!(err.contains("does not match"), "{err}");
        }
    }

    #[test]
    fn hostile_or_broken_server_messages() {
        let s = scram_exchange(Hash::Sha256, "user", "pencil", "abc");
        let check = |server_first: &str, expected: &str| {
            let err = s.client_final(server_first).unwrap_err();
            assert!(err.contains(expected), "{server_first}: {err}");
        };
        check("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096", "does not extend ours");
        check("r=abc,s=QSXCR+Q6sek8bf92,i=4096", "does not extend ours");
        check("r=abcdef,s=!!!,i=4096", "not base64");
        check("r=abcdef,s=QSXCR+Q6sek8bf92,i=lots", "not a number");
        check("r=abcdef,s=QSXCR+Q6sek8bf92", "no iteration count");
        check("m=ext,r=abcdef,s=QSXCR+Q6sek8bf92,i=4096", "extension");
        check("e=unknown-user", "unknown-user");
        check("", "no nonce");
        let (_, awaiting) = s
            .client_final("r=abcdef,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap();
        assert!(awaiting
            .verify("e=invalid-proof")
            .unwrap_err()
            .contains("invalid-proof"));
        assert!(awaiting.verify("x=1").is_err());
        assert!(awaiting.verify("v=%%%").is_err());
    }

    #[test]
    fn base64_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64::encode(plain.as_bytes()), encoded);
            assert_eq!(b64::decode(encoded).unwrap(), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        for n in 0..all.len() {
            assert_eq!(b64::decode(&b64::encode(&all[..n])).unwrap(), &all[..n]);
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v\n", "Zm9-", "=m9v", "Zm=v"] {
            assert_eq!(b64::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn usernames_are_escaped() {
        let s = scram_exchange(Hash::Sha256, "a=b,c", "p", "n");
        assert_eq!(s.client_first(), "n,,n=a=3Db=2Cc,r=n");
        let n1 = nonce().unwrap();
        assert_ne!(n1, nonce().unwrap());
        assert!(n1.len() >= 32 && !n1.contains(','), "{n1}");
    }

    fn sasl(mechanism: SaslMechanism) -> Sasl {
        Sasl {
            mechanism,
            username: "user".to_owned(),
            password: Secret::new("pencil"),
        }
    }

    fn versions() -> Versions {
        Versions {
            produce: 12,
            metadata: 12,
            init_producer_id: Some(5),
            create_topics: None,
            api_versions: 4,
            sasl_handshake: Some(1),
            sasl_authenticate: Some(2),
        }
    }

    /// A scripted broker answer: (request version, correlation id) → response frame.
    type Answer = Box<dyn Fn(i16, i32) -> Bytes>;

    /// Runs `ex` against scripted broker answers; returns the auth bytes it sent.
    fn drive(ex: &mut Exchange, answers: Vec<Answer>) -> Result<Vec<Vec<u8>>, KafkaError> {
        let mut enc = RequestEncoder::new("t");
        let mut sent = Vec::new();
        let mut answers = answers.into_iter();
        while let Some(req) = ex.next_request(&mut enc)? {
            let mut frame = req.frame.to_bytes();
            bytes::Buf::advance(&mut frame, 4);
            let header =
                kafka_protocol::protocol::decode_request_header_from_buffer(&mut frame).unwrap();
            if header.request_api_key == ApiKey::SaslAuthenticate as i16 {
                use kafka_protocol::protocol::Decodable;
                let body = SaslAuthenticateRequest::decode(&mut frame, header.request_api_version)
                    .unwrap();
                sent.push(body.auth_bytes.to_vec());
            }
            let answer = answers.next().expect("more requests than scripted answers");
            ex.on_response(answer(header.request_api_version, req.correlation_id))?;
        }
        Ok(sent)
    }

    fn handshake_ok(mechanisms: &'static [&'static str], code: i16) -> Answer {
        Box::new(move |v, id| {
            let body = SaslHandshakeResponse::default()
                .with_error_code(code)
                .with_mechanisms(
                    mechanisms
                        .iter()
                        .map(|m| StrBytes::from_static_str(m))
                        .collect(),
                );
            broker_frame(ApiKey::SaslHandshake, v, id, &body)
        })
    }

    fn authenticate(
        code: i16,
        message: Option<&'static str>,
        bytes: &'static [u8],
        lifetime_ms: i64,
    ) -> Answer {
        Box::new(move |v, id| {
            let body = SaslAuthenticateResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_static_str))
                .with_auth_bytes(Bytes::from_static(bytes))
                .with_session_lifetime_ms(lifetime_ms);
            broker_frame(ApiKey::SaslAuthenticate, v, id, &body)
        })
    }

    #[test]
    fn plain_exchange_and_session_lifetime() {
        for authenticate_version in 0..=2 {
            let mut v = versions();
            v.sasl_authenticate = Some(authenticate_version);
            let mut ex = Exchange::start("b:1", &sasl(SaslMechanism::Plain), &v).unwrap();
            let sent = drive(
                &mut ex,
                vec![
                    handshake_ok(&["PLAIN", "SCRAM-SHA-512"], 0),
                    authenticate(0, None, b"", 60_000),
                ],
            )
            .unwrap();
            assert_eq!(sent, [b"\0user\0pencil".to_vec()]);
            // v0 has no session lifetime field.
            let expected = (authenticate_version > 0).then(|| Duration::from_secs(60));
            assert_eq!(ex.session_lifetime(), expected, "v{authenticate_version}");
        }
    }

    #[test]
    fn scram_exchange_against_the_rfc_server() {
        let (_, nonce, server_first, client_final, server_final) = VECTORS[1];
        let mut ex = Exchange::with_nonce(
            "b:1",
            &sasl(SaslMechanism::ScramSha256),
            &versions(),
            nonce.to_owned(),
        )
        .unwrap();
        let sent = drive(
            &mut ex,
            vec![
                handshake_ok(&["SCRAM-SHA-256"], 0),
                authenticate(0, None, server_first.as_bytes(), 0),
                authenticate(0, None, server_final.as_bytes(), 0),
            ],
        )
        .unwrap();
        assert_eq!(
            sent,
            [
                format!("n,,n=user,r={nonce}").into_bytes(),
                client_final.as_bytes().to_vec()
            ]
        );
        assert_eq!(ex.session_lifetime(), None);
    }

    #[test]
    fn failures_are_one_line_naming_mechanism_and_user_never_the_password() {
        let cases: Vec<(SaslMechanism, Vec<Answer>, &str)> = vec![
            (
                SaslMechanism::ScramSha512,
                vec![handshake_ok(&["PLAIN", "SCRAM-SHA-256"], 33)],
                "SASL mechanism SCRAM-SHA-512 is not enabled on the broker; it offers PLAIN, SCRAM-SHA-256",
            ),
            (
                SaslMechanism::Plain,
                vec![
                    handshake_ok(&["PLAIN"], 0),
                    authenticate(58, Some("Invalid username or password"), b"", 0),
                ],
                "kafka broker b:1: SASL authentication failed (PLAIN, user user): \
                 SASL_AUTHENTICATION_FAILED: Invalid username or password",
            ),
            (
                SaslMechanism::Plain,
                vec![handshake_ok(&[], 34)],
                "ILLEGAL_SASL_STATE",
            ),
            (
                SaslMechanism::ScramSha256,
                vec![
                    handshake_ok(&["SCRAM-SHA-256"], 0),
                    authenticate(0, None, b"r=elsewhere,s=QSXCR+Q6sek8bf92,i=4096", 0),
                ],
                "(SCRAM-SHA-256, user user): server nonce does not extend ours",
            ),
        ];
        for (mechanism, answers, expected) in cases {
            let mut ex = Exchange::start("b:1", &sasl(mechanism), &versions()).unwrap();
            let err = drive(&mut ex, answers).unwrap_err();
            let line = err.to_string();
            assert!(line.contains(expected), "{line}");
            assert!(line.contains("b:1"), "{line}");
            assert!(!line.contains("pencil") && !line.contains('\n'), "{line}");
            assert!(!err.is_retriable(), "{line}");
        }
    }

    #[test]
    fn broker_without_sasl_apis() {
        let mut v = versions();
        v.sasl_handshake = None;
        let err = Exchange::start("b:1", &sasl(SaslMechanism::Plain), &v).unwrap_err();
        assert!(err.to_string().contains("SaslHandshake"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let ex = Exchange::start("b:1", &sasl(SaslMechanism::ScramSha512), &versions()).unwrap();
        let debug = format!("{ex:?}");
        assert!(!debug.contains("pencil"), "{debug}");
    }
}
