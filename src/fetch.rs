//! Getting the feed's bytes: ureq for http(s), the filesystem for file://.
//!
//! Owns timeouts, the body cap, gzip (declared or not), TLS roots (bundled or `HTTP_CA_LOCATION`),
//! the feed's API key (query parameter or header) and URL redaction for logs.
//! It never decodes protobuf; it hands raw feed bytes to `decode`.

use crate::secret::Secret;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What one fetch got: a body, or the server's word that nothing changed (HTTP 304).
#[derive(Debug)]
pub enum Fetch {
    Body(Fetched),
    NotModified,
}

/// CA certificates that HTTPS feeds must chain to instead of the bundled Mozilla roots
/// (`HTTP_CA_LOCATION`), read and checked once at start.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    path: PathBuf,
    /// DER of each certificate in the file.
    certs: Vec<Vec<u8>>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaFile({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

impl CaFile {
    /// Reads a PEM file of one or more certificates; the error is one line for the operator.
    pub fn load(path: &Path) -> Result<CaFile, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // The same PEM reader as Kafka's ssl.ca.location (kafka::tls): one copy in the binary.
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let certs = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(CaFile {
            path: path.to_path_buf(),
            certs,
        })
    }
}

/// Where the feed's API key goes on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlace {
    /// `?name=key` (e.g. ODPT's `acl:consumerKey`); logs show `name=***`.
    Query(String),
    /// A request header (e.g. `x-api-key`); kept only on redirects to the same origin.
    Header(String),
}

/// The feed's API key and where it goes. `Debug` shows `***` for the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedApiKey {
    pub key: Secret,
    pub place: KeyPlace,
}

/// A fetched body and what the server said about it.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    /// Bytes on the wire before any gzip decoding (equals `body.len()` when uncompressed).
    pub wire_bytes: u64,
}

/// Why a fetch failed; `Display` is one log line naming the redacted URL.
#[derive(Debug)]
pub enum FetchError {
    Status {
        url: String,
        status: u16,
        /// `Retry-After` (in seconds) on a 429 or 503.
        retry_after: Option<Duration>,
    },
    Timeout {
        url: String,
        phase: String,
    },
    TooLarge {
        url: String,
        limit: u64,
        announced: Option<u64>,
    },
    Connect {
        url: String,
        cause: String,
    },
    Tls {
        url: String,
        cause: String,
    },
    Redirects {
        url: String,
        cause: String,
    },
    Body {
        url: String,
        cause: String,
    },
    File {
        url: String,
        cause: String,
    },
    Gzip {
        url: String,
        cause: String,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status {
                url,
                status,
                retry_after: Some(d),
            } => write!(
                f,
                "fetch {url}: HTTP status {status}, Retry-After {}s",
                d.as_secs()
            ),
            Self::Status { url, status, .. } => {
                write!(f, "fetch {url}: HTTP status {status}")?;
                f.write_str(match status {
                    401 | 403 => {
                        " (the server refused the credentials: check FEED_API_KEY / \
                         FEED_API_KEY_FILE and where it goes, FEED_API_KEY_PARAM or \
                         FEED_API_KEY_HEADER)"
                    }
                    404 | 410 => " (no feed at that address: check VEHICLE_URL)",
                    _ => "",
                })
            }
            Self::Timeout { url, phase } => write!(f, "fetch {url}: timed out ({phase})"),
            Self::TooLarge {
                url,
                limit,
                announced: Some(n),
            } => write!(
                f,
                "fetch {url}: body of {n} bytes exceeds MAX_BODY_BYTES ({limit}); not read"
            ),
            Self::TooLarge { url, limit, .. } => write!(
                f,
                "fetch {url}: body exceeds MAX_BODY_BYTES ({limit}); stopped reading"
            ),
            Self::Connect { url, cause } => write!(f, "fetch {url}: connection failed: {cause}"),
            Self::Tls { url, cause } => {
                write!(f, "fetch {url}: TLS error: {cause}")?;
                if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
                    f.write_str(" (the server does not speak TLS here: try http://)")?;
                }
                Ok(())
            }
            Self::Redirects { url, cause } => write!(f, "fetch {url}: {cause}"),
            Self::Body { url, cause } if cause.contains("lookup address") => write!(
                f,
                "fetch {url}: DNS lookup of the host failed: {cause} (check the host in \
                 VEHICLE_URL and the resolver)"
            ),
            Self::Body { url, cause } => write!(f, "fetch {url}: reading body failed: {cause}"),
            Self::File { url, cause } => write!(f, "fetch {url}: {cause}"),
            Self::Gzip { url, cause } => write!(f, "fetch {url}: gzip body is corrupt: {cause}"),
        }
    }
}

impl std::error::Error for FetchError {}

impl FetchError {
    /// Whether trying again within the same interval may help: not for a client error the
    /// server will repeat, a body over the cap, or a server that asked us to wait.
    pub fn worth_retrying_soon(&self) -> bool {
        match self {
            Self::Status {
                status,
                retry_after,
                ..
            } => retry_after.is_none() && (*status >= 500 || *status == 408),
            Self::TooLarge { .. } | Self::File { .. } | Self::Redirects { .. } => false,
            _ => true,
        }
    }

    /// How long the server asked us to wait before the next request, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short stable label for counters ("status", "timeout", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::Timeout { .. } => "timeout",
            Self::TooLarge { .. } => "too_large",
            Self::Connect { .. } => "connect",
            Self::Tls { .. } => "tls",
            Self::Redirects { .. } => "redirect",
            Self::Body { .. } => "body",
            Self::File { .. } => "file",
            Self::Gzip { .. } => "gzip",
        }
    }
}

/// Whether `url` is one the HTTP client can request (host, port and brackets well formed);
/// `file://` URLs need only a path.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() >= 7 && url[..7].eq_ignore_ascii_case("file://") {
        return Ok(());
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("is not a valid URL ({e})"))?;
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("has no host".to_string()),
    }
}

/// Where and how one feed is fetched (its part of the feed's settings).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    pub url: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_redirects: u32,
    /// `HTTP_CA_LOCATION`: roots for https feeds instead of the bundled Mozilla ones.
    pub ca: Option<CaFile>,
    /// `FEED_API_KEY` / `FEED_API_KEY_FILE` and where it goes.
    pub api_key: Option<FeedApiKey>,
}

/// Reuses one ureq agent (and its connection pool) across polls.
pub struct Fetcher {
    agent: ureq::Agent,
    /// The URL requested: with a query-parameter key it holds the key, so it is a `Secret`.
    url: Secret,
    redacted: String,
    /// Header name and key, when the key goes in a header.
    key_header: Option<(String, Secret)>,
    max_redirects: u32,
    max_body_bytes: u64,
    /// Send `If-None-Match` / `If-Modified-Since` from the last 200's validators.
    conditional: bool,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// The longest `Retry-After` honoured; a bigger one is capped so a typo can't stop polling.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Buffers of a feed's HTTP connection (response head + body chunks; request head).
const IDLE_INPUT_BUFFER: usize = 32 * 1024;
const IDLE_OUTPUT_BUFFER: usize = 8 * 1024;

impl Fetcher {
    pub fn new(settings: &FetchSettings) -> Fetcher {
        let mut url = settings.url.clone();
        let mut key_header = None;
        match &settings.api_key {
            Some(FeedApiKey {
                key,
                place: KeyPlace::Query(name),
            }) => {
                let (base, fragment) = url.split_once('#').unwrap_or((&url, ""));
                let sep = if base.contains('?') { '&' } else { '?' };
                let mut with_key = format!(
                    "{base}{sep}{}={}",
                    query_escape(name),
                    query_escape(key.expose())
                );
                if !fragment.is_empty() {
                    with_key = format!("{with_key}#{fragment}");
                }
                url = with_key;
            }
            Some(FeedApiKey {
                key,
                place: KeyPlace::Header(name),
            }) => key_header = Some((name.clone(), key.clone())),
            None => {}
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &settings.ca {
            let certs = ca
                .certs
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
                .collect();
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        // A header key must not follow a redirect to another origin: those we follow ourselves.
        let agent_redirects = if key_header.is_some() {
            0
        } else {
            settings.max_redirects
        };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .timeout_connect(Some(settings.connect_timeout))
            .max_redirects(agent_redirects)
            .http_status_as_error(false)
            .user_agent(concat!("gtfs-rt-kafka/", env!("CARGO_PKG_VERSION")))
            .accept("application/x-protobuf, application/octet-stream, */*")
            .tls_config(tls.build())
            // One feed, one server: one kept-alive connection is all a feed reuses. Its
            // buffers stay allocated while it idles between polls, so they are kept small
            // (ureq's defaults are 128 KiB each); response heads up to 32 KiB still fit.
            .max_idle_connections(1)
            .max_idle_connections_per_host(1)
            .input_buffer_size(IDLE_INPUT_BUFFER)
            .output_buffer_size(IDLE_OUTPUT_BUFFER)
            .build();
        Fetcher {
            agent: config.new_agent(),
            redacted: redact_url(&url),
            url: Secret::new(url),
            key_header,
            max_redirects: settings.max_redirects,
            max_body_bytes: settings.max_body_bytes,
            conditional: false,
            etag: None,
            last_modified: None,
        }
    }

    /// Turns conditional GET on: the server's own `ETag` / `Last-Modified` are sent back,
    /// and a 304 comes back as `Fetch::NotModified`.
    pub fn with_conditional_get(mut self, on: bool) -> Fetcher {
        self.conditional = on;
        self
    }

    /// The URL as it may appear in logs: query values masked.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// One GET (or file read), bounded by the configured timeouts and body cap.
    pub fn fetch(&mut self) -> Result<Fetch, FetchError> {
        let fetched = if let Some(path) = file_path(self.url.expose()) {
            self.read_file(path)?
        } else {
            match self.get()? {
                Fetch::Body(fetched) => fetched,
                Fetch::NotModified => return Ok(Fetch::NotModified),
            }
        };
        self.gunzip_undeclared(fetched).map(Fetch::Body)
    }

    fn get(&mut self) -> Result<Fetch, FetchError> {
        let url = &self.redacted;
        let mut response = self.call()?;
        let status = response.status().as_u16();
        if status == 304 && self.conditional {
            return Ok(Fetch::NotModified);
        }
        if !(200..300).contains(&status) {
            let retry_after = matches!(status, 429 | 503)
                .then(|| header(&response, "retry-after"))
                .flatten()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
            return Err(FetchError::Status {
                url: url.clone(),
                status,
                retry_after,
            });
        }
        if self.conditional {
            self.etag = header(&response, "etag");
            self.last_modified = header(&response, "last-modified");
        }
        let body = response.body_mut();
        let announced = body.content_length();
        // Only a body without Content-Encoding can be refused from its announced length:
        // a gzip body's Content-Length is the compressed size.
        let encoded = response
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes() != b"identity");
        if let Some(n) = announced.filter(|n| !encoded && *n > self.max_body_bytes) {
            return Err(FetchError::TooLarge {
                url: url.clone(),
                limit: self.max_body_bytes,
                announced: Some(n),
            });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_body_bytes)
            .read_to_vec()
            .map_err(|e| map_ureq_error(url, e))?;
        let wire_bytes = announced.unwrap_or(body.len() as u64);
        Ok(Fetch::Body(Fetched { body, wire_bytes }))
    }

    /// Sends the GET: the validators of a conditional GET, and the key header to the feed's
    /// own origin (scheme, host, port) only. With a header key, redirects are followed here
    /// rather than by ureq, so the key never goes to a CDN or another site.
    fn call(&self) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
        let url = &self.redacted;
        let origin = origin_of(self.url.expose());
        let mut current = self.url.expose().to_owned();
        let hops = match self.key_header {
            Some(_) => self.max_redirects,
            None => 0,
        };
        for _ in 0..=hops {
            let mut request = self.agent.get(&current);
            if self.conditional {
                if let Some(etag) = &self.etag {
                    request = request.header("If-None-Match", etag);
                }
                if let Some(date) = &self.last_modified {
                    request = request.header("If-Modified-Since", date);
                }
            }
            if let Some((name, key)) = &self.key_header {
                if origin.is_some() && origin_of(&current) == origin {
                    request = request.header(name.as_str(), key.expose());
                }
            }
            let response = request.call().map_err(|e| map_ureq_error(url, e))?;
            let redirected = matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            if self.key_header.is_none() || !redirected {
                return Ok(response);
            }
            let location = header(&response, "location").ok_or_else(|| FetchError::Redirects {
                url: url.clone(),
                cause: "redirect without a usable Location".to_string(),
            })?;
            current = join_location(&current, &location).ok_or_else(|| FetchError::Redirects {
                url: url.clone(),
                cause: format!("redirect to an unusable URL: {}", redact_url(&location)),
            })?;
        }
        Err(FetchError::Redirects {
            url: url.clone(),
            cause: "too many redirects (MAX_REDIRECTS)".to_string(),
        })
    }

    fn read_file(&self, path: &str) -> Result<Fetched, FetchError> {
        let url = &self.redacted;
        let file_err = |e: std::io::Error| FetchError::File {
            url: url.clone(),
            cause: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(file_err)?;
        let announced = file.metadata().map_err(file_err)?.len();
        if announced > self.max_body_bytes {
            return Err(FetchError::TooLarge {
                url: url.clone(),
                limit: self.max_body_bytes,
                announced: Some(announced),
            });
        }
        let body = read_capped(file, self.max_body_bytes).map_err(|e| match e {
            CapError::Io(e) => file_err(e),
            CapError::TooLarge => FetchError::TooLarge {
                url: url.clone(),
                limit: self.max_body_bytes,
                announced: None,
            },
        })?;
        Ok(Fetched {
            wire_bytes: body.len() as u64,
            body,
        })
    }

    /// Some servers send a gzip file without `Content-Encoding`. Protobuf can't start with
    /// 0x1f 0x8b (field 3, wire type 7 does not exist), so the magic is unambiguous.
    fn gunzip_undeclared(&self, fetched: Fetched) -> Result<Fetched, FetchError> {
        if !fetched.body.starts_with(&GZIP_MAGIC) {
            return Ok(fetched);
        }
        let decoder = flate2::read::MultiGzDecoder::new(fetched.body.as_slice());
        let body = read_capped(decoder, self.max_body_bytes).map_err(|e| match e {
            CapError::Io(e) => FetchError::Gzip {
                url: self.redacted.clone(),
                cause: e.to_string(),
            },
            CapError::TooLarge => FetchError::TooLarge {
                url: self.redacted.clone(),
                limit: self.max_body_bytes,
                announced: None,
            },
        })?;
        Ok(Fetched {
            body,
            wire_bytes: fetched.wire_bytes,
        })
    }
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

enum CapError {
    Io(std::io::Error),
    TooLarge,
}

/// Reads at most `limit` bytes; one byte more is an error, so memory stays bounded.
fn read_capped(reader: impl Read, limit: u64) -> Result<Vec<u8>, CapError> {
    let mut body = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(CapError::Io)?;
    if body.len() as u64 > limit {
        return Err(CapError::TooLarge);
    }
    Ok(body)
}

/// `scheme://host[:port]` of an absolute http(s) URL, lowercased scheme and host.
fn origin_of(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // userinfo is not part of the origin; reject it rather than compare it.
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    Some(&url[..scheme.len() + 3 + end])
}

/// The absolute URL a `Location` points to from `base`: absolute, scheme-relative,
/// absolute-path or relative-path references (RFC 3986 without dot-segment removal).
fn join_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if origin_of(location).is_some() {
        return Some(location.to_string());
    }
    let origin = origin_of(base)?;
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = &base[..base.find("://")?];
        return Some(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Some(format!("{origin}{location}"));
    }
    let path_and_query = &base[origin.len()..];
    let path = path_and_query.split(['?', '#']).next().unwrap_or_default();
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    Some(format!("{origin}{dir}{location}"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters and ':' '@' (which a query
/// may hold as they are, as in `acl:consumerKey`).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn file_path(url: &str) -> Option<&str> {
    let lower_prefix = url.get(..7)?.to_ascii_lowercase();
    (lower_prefix == "file://").then(|| &url[7..])
}

fn map_ureq_error(url: &str, e: ureq::Error) -> FetchError {
    let url = url.to_string();
    match e {
        ureq::Error::StatusCode(status) => FetchError::Status {
            url,
            status,
            retry_after: None,
        },
        ureq::Error::Timeout(t) => FetchError::Timeout {
            url,
            phase: timeout_phase(t).to_string(),
        },
        ureq::Error::BodyExceedsLimit(limit) => FetchError::TooLarge {
            url,
            limit,
            announced: None,
        },
        ureq::Error::TooManyRedirects => FetchError::Redirects {
            url,
            cause: "too many redirects (MAX_REDIRECTS)".to_string(),
        },
        ureq::Error::RedirectFailed => FetchError::Redirects {
            url,
            cause: "redirect could not be followed".to_string(),
        },
        // Our own URL was validated at start, so a bad URI here is a redirect's Location.
        ureq::Error::BadUri(cause) => FetchError::Redirects {
            url,
            cause: format!("redirect to an unusable URL: {}", redact_text(&cause)),
        },
        ureq::Error::HostNotFound => FetchError::Connect {
            url,
            cause: "host not found".to_string(),
        },
        ureq::Error::ConnectionFailed => FetchError::Connect {
            url,
            cause: "connection failed".to_string(),
        },
        ureq::Error::Io(io) => io_error(url, io),
        ureq::Error::Tls(msg) => FetchError::Tls {
            url,
            cause: msg.to_string(),
        },
        ureq::Error::Rustls(err) => tls_error(url, &err),
        other => FetchError::Body {
            url,
            cause: redact_text(&other.to_string()),
        },
    }
}

/// A certificate or TLS protocol failure, saying which setting to look at.
fn tls_error(url: String, err: &rustls::Error) -> FetchError {
    let cause = match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (set HTTP_CA_LOCATION to the \
             CA that signed it)"
                .to_string()
        }
        other => other.to_string(),
    };
    FetchError::Tls { url, cause }
}

fn io_error(url: String, io: std::io::Error) -> FetchError {
    use std::io::ErrorKind::*;
    // ureq hands TLS failures that happen while reading over as I/O errors.
    if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return tls_error(url, tls);
    }
    match io.kind() {
        TimedOut | WouldBlock => FetchError::Timeout {
            url,
            phase: "read".to_string(),
        },
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrNotAvailable => FetchError::Connect {
            url,
            cause: io.to_string(),
        },
        UnexpectedEof => FetchError::Body {
            url,
            cause: "connection closed before the whole body arrived (truncated)".to_string(),
        },
        _ => FetchError::Body {
            url,
            cause: io.to_string(),
        },
    }
}

fn timeout_phase(t: ureq::Timeout) -> &'static str {
    match t {
        ureq::Timeout::Global => "HTTP_TIMEOUT, whole request",
        ureq::Timeout::Connect => "HTTP_CONNECT_TIMEOUT, connecting",
        ureq::Timeout::Resolve => "resolving host",
        ureq::Timeout::SendRequest | ureq::Timeout::SendBody => "sending request",
        ureq::Timeout::RecvResponse => "waiting for response headers",
        ureq::Timeout::RecvBody => "receiving body",
        _ => "HTTP_TIMEOUT",
    }
}

/// The feed as start-up logs show it: the request URL with every query value masked (a query
/// key included), and where a header key goes.
pub fn describe_source(settings: &FetchSettings) -> String {
    let mut url = settings
        .url
        .split('#')
        .next()
        .unwrap_or_default()
        .to_string();
    if let Some(FeedApiKey {
        place: KeyPlace::Query(name),
        ..
    }) = &settings.api_key
    {
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}{}=***", query_escape(name));
    }
    let mut out = redact_url(&url);
    if let Some(FeedApiKey {
        place: KeyPlace::Header(name),
        ..
    }) = &settings.api_key
    {
        out.push_str(&format!(" (API key in header {name})"));
    }
    if let Some(ca) = &settings.ca {
        out.push_str(&format!(" (CA {})", ca.path.display()));
    }
    out
}

/// Masks every query value and any userinfo: `https://u:p@h/p?key=s` → `https://h/p?key=***`.
/// Feeds carry API keys in the query string (ODPT's `acl:consumerKey`), so no value is shown.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return "<invalid url>".to_string(),
    };
    let (authority_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority_path = authority_path
        .split_once('#')
        .map_or(authority_path, |(a, _)| a);
    let (authority, path) = match authority_path.find('/') {
        Some(i) => authority_path.split_at(i),
        None => (authority_path, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut out = format!("{scheme}://{host}{path}");
    if let Some(query) = query {
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        out.push('?');
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => pair.to_string(),
            })
            .collect();
        out.push_str(&masked.join("&"));
    }
    out
}

/// Error texts from the HTTP stack may quote the URL; mask anything after a '?'.
fn redact_text(text: &str) -> String {
    match text.split_once('?') {
        Some((head, _)) => format!("{head}?***"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let check = |input: &str, expected: &str| assert_eq!(redact_url(input), expected);
        check(
            "https://api.odpt.org/api/v4/gtfs/realtime/x?acl:consumerKey=SECRET",
            "https://api.odpt.org/api/v4/gtfs/realtime/x?acl:consumerKey=***",
        );
        check(
            "http://u:pw@h:8080/p?a=1&b&c=2#frag",
            "http://h:8080/p?a=***&b&c=***",
        );
        check("file:///tmp/feed.pb", "file:///tmp/feed.pb");
        check("https://host", "https://host");
        check("nonsense", "<invalid url>");
    }

    fn body(fetch: Fetch) -> Vec<u8> {
        match fetch {
            Fetch::Body(f) => f.body,
            Fetch::NotModified => panic!("304 from a file"),
        }
    }

    fn settings(url: &str, max: u64) -> FetchSettings {
        FetchSettings {
            url: url.to_string(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_body_bytes: max,
            max_redirects: 2,
            ca: None,
            api_key: None,
        }
    }

    /// A one-thread HTTP server: answers request n with `answers[n]` (the last repeats) and
    /// keeps each request head. `{other}` in an answer becomes the other server's address.
    fn server(answers: Vec<String>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let n = {
                    let mut heads = seen.lock().unwrap();
                    heads.push(head);
                    heads.len() - 1
                };
                let answer = &answers[n.min(answers.len() - 1)];
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        (addr, heads)
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn redirect(location: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    fn with_key(url: &str, place: KeyPlace) -> FetchSettings {
        FetchSettings {
            api_key: Some(FeedApiKey {
                key: Secret::new("k+y/1"),
                place,
            }),
            ..settings(url, 1000)
        }
    }

    #[test]
    fn api_key_in_the_query_is_escaped_and_masked() {
        let (addr, heads) = server(vec![ok("feed")]);
        let s = with_key(
            &format!("http://{addr}/rt?agency=x#frag"),
            KeyPlace::Query("acl:consumerKey".into()),
        );
        let mut f = Fetcher::new(&s);
        assert_eq!(body(f.fetch().unwrap()), b"feed");
        assert!(
            heads.lock().unwrap()[0]
                .starts_with("GET /rt?agency=x&acl:consumerKey=k%2By%2F1 HTTP/1.1"),
            "{:?}",
            heads.lock().unwrap()
        );
        assert_eq!(
            f.redacted_url(),
            format!("http://{addr}/rt?agency=***&acl:consumerKey=***")
        );
        assert_eq!(
            describe_source(&s),
            format!("http://{addr}/rt?agency=***&acl:consumerKey=***")
        );
    }

    #[test]
    fn a_header_key_goes_only_to_the_feeds_own_origin() {
        let (other, other_heads) = server(vec![ok("elsewhere")]);
        let (addr, heads) = server(vec![
            redirect("/moved/feed.pb"),
            redirect("next.pb"),
            redirect(&format!("http://{other}/cdn/feed.pb")),
        ]);
        let s = FetchSettings {
            max_redirects: 3,
            ..with_key(
                &format!("http://{addr}/rt/feed"),
                KeyPlace::Header("X-Api-Key".into()),
            )
        };
        assert_eq!(
            describe_source(&s),
            format!("http://{addr}/rt/feed (API key in header X-Api-Key)")
        );
        let mut f = Fetcher::new(&s);
        assert_eq!(body(f.fetch().unwrap()), b"elsewhere");
        let heads = heads.lock().unwrap();
        let paths: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "GET /rt/feed HTTP/1.1",
                "GET /moved/feed.pb HTTP/1.1",
                "GET /moved/next.pb HTTP/1.1"
            ]
        );
        assert!(heads
            .iter()
            .all(|h| h.to_ascii_lowercase().contains("x-api-key: k+y/1\r\n")));
        let other_heads = other_heads.lock().unwrap();
        assert_eq!(other_heads.len(), 1);
        assert!(
            !other_heads[0].to_ascii_lowercase().contains("x-api-key"),
            "key sent to another origin: {}",
            other_heads[0]
        );

        // A redirect loop ends at MAX_REDIRECTS (2 here).
        let (addr, _) = server(vec![redirect("/again")]);
        let mut f = Fetcher::new(&with_key(
            &format!("http://{addr}/a"),
            KeyPlace::Header("X-Api-Key".into()),
        ));
        let err = f.fetch().unwrap_err();
        assert_eq!(err.kind(), "redirect", "{err}");
    }

    #[test]
    fn origins_and_locations() {
        assert_eq!(origin_of("https://h:8443/p?q"), Some("https://h:8443"));
        assert_eq!(origin_of("http://h"), Some("http://h"));
        assert_eq!(origin_of("http://u:p@h/"), None);
        assert_eq!(origin_of("file:///x"), None);
        let check = |base: &str, loc: &str, expected: &str| {
            assert_eq!(
                join_location(base, loc).as_deref(),
                Some(expected),
                "{base} + {loc}"
            )
        };
        check("http://h/a/b?x", "c", "http://h/a/c");
        check("http://h/a/b", "/c?d", "http://h/c?d");
        check("https://h/a", "//g/x", "https://g/x");
        check("http://h/a", "https://o:1/z", "https://o:1/z");
        check("http://h", "z", "http://h/z");
    }

    #[test]
    fn ca_files_are_checked_at_load() {
        let dir = std::env::temp_dir().join(format!("grk-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "no certificate here\n").unwrap();
        assert!(CaFile::load(&garbage)
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(CaFile::load(&dir.join("missing.pem"))
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn file_urls_read_capped_and_gunzipped() {
        let dir = std::env::temp_dir().join(format!("grk-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain.pb");
        std::fs::write(&plain, b"\x0a\x03abc").unwrap();
        let url = format!("file://{}", plain.display());
        let got = body(Fetcher::new(&settings(&url, 100)).fetch().unwrap());
        assert_eq!(got, b"\x0a\x03abc");

        let err = Fetcher::new(&settings(&url, 3)).fetch().unwrap_err();
        assert_eq!(err.kind(), "too_large", "{err}");

        let gz = dir.join("feed.pb.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, b"\x0a\x03abc").unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let url = format!("file://{}", gz.display());
        let got = body(Fetcher::new(&settings(&url, 100)).fetch().unwrap());
        assert_eq!(got, b"\x0a\x03abc");

        let bad = dir.join("bad.gz");
        std::fs::write(&bad, b"\x1f\x8b\x08\x00garbage").unwrap();
        let url = format!("file://{}", bad.display());
        let err = Fetcher::new(&settings(&url, 100)).fetch().unwrap_err();
        assert_eq!(err.kind(), "gzip", "{err}");

        let missing = format!("file://{}/missing.pb", dir.display());
        let err = Fetcher::new(&settings(&missing, 100)).fetch().unwrap_err();
        assert_eq!(err.kind(), "file", "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn gzip_bomb_is_capped() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![0u8; 10 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        let dir = std::env::temp_dir().join(format!("grk-bomb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bomb.gz");
        std::fs::write(&path, &bomb).unwrap();
        let url = format!("file://{}", path.display());
        let err = Fetcher::new(&settings(&url, 1 << 20)).fetch().unwrap_err();
        assert_eq!(err.kind(), "too_large", "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn errors_name_the_cause_and_the_fix() {
        let status = |code| FetchError::Status {
            url: "https://x/".into(),
            status: code,
            retry_after: None,
        };
        assert!(status(401).to_string().contains("FEED_API_KEY"));
        assert!(status(403).to_string().contains("FEED_API_KEY_HEADER"));
        assert!(status(404).to_string().contains("check VEHICLE_URL"));
        assert!(!status(500).to_string().contains('('));
        let dns = FetchError::Body {
            url: "https://nowhere.invalid/".into(),
            cause: "failed to lookup address information: Name or service not known".into(),
        };
        assert!(
            dns.to_string().contains("DNS lookup of the host failed"),
            "{dns}"
        );
        let tls = FetchError::Tls {
            url: "https://x/".into(),
            cause: "received corrupt message of type InvalidContentType".into(),
        };
        assert!(tls.to_string().contains("try http://"), "{tls}");
    }
}
