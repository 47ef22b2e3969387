//! TLS to brokers with rustls (ring): the client config built once from PEM files (bundled
//! Mozilla roots unless a CA file is named; an optional client certificate for mTLS), the
//! handshake on a connected socket within a deadline, and errors that say what to change.
//! Never opens a socket (transport does) and never turns hostname verification off.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore};

use super::error::{KafkaError, Phase};

/// Where TLS material comes from; every path is a PEM file, as librdkafka's `*.location`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that may sign the broker's certificate (`ssl.ca.location`). `None`: the
    /// bundled Mozilla roots (webpki-roots).
    pub ca: Option<PathBuf>,
    /// Our certificate chain for brokers that require client authentication
    /// (`ssl.certificate.location`).
    pub certificate: Option<PathBuf>,
    /// The certificate's private key, PKCS#8, PKCS#1 or SEC1, unencrypted (`ssl.key.location`).
    /// `None` with a certificate: the key is looked for in the certificate file.
    pub key: Option<PathBuf>,
}

/// A ready TLS client configuration. Cheap to clone; compares by the files it came from.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    files: TlsFiles,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        self.files == other.files
    }
}

impl Tls {
    /// Reads and checks every file. An error names the Kafka setting (`ssl.ca.location`, …) in
    /// `KafkaError::Config`.
    pub fn new(files: TlsFiles) -> Result<Tls, KafkaError> {
        let mut roots = RootCertStore::empty();
        match &files.ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let certs = read_certs(path).map_err(|reason| config("ssl.ca.location", reason))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        config(
                            "ssl.ca.location",
                            format!("{}: not a usable CA certificate: {e}", path.display()),
                        )
                    })?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config("security.protocol", e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&files.certificate, &files.key) {
            (None, None) => builder.with_no_client_auth(),
            (None, Some(_)) => {
                return Err(config(
                    "ssl.certificate.location",
                    "ssl.key.location is set without a certificate".to_owned(),
                ))
            }
            (Some(cert_path), key_path) => {
                let chain = read_certs(cert_path)
                    .map_err(|reason| config("ssl.certificate.location", reason))?;
                let (setting, key_path) = match key_path {
                    Some(k) => ("ssl.key.location", k),
                    None => ("ssl.certificate.location", cert_path),
                };
                let key = read_key(key_path).map_err(|reason| config(setting, reason))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    config(
                        "ssl.key.location",
                        format!("unusable client certificate or key: {e}"),
                    )
                })?
            }
        };
        Ok(Tls {
            config: Arc::new(config),
            files,
        })
    }

    /// Runs the handshake on `sock` (connected to `addr`, `host:port`) before `deadline`. The
    /// broker's certificate must be valid for `host` (SNI carries it unless it is an IP).
    pub(crate) fn handshake(
        &self,
        addr: &str,
        mut sock: TcpStream,
        deadline: Instant,
    ) -> Result<rustls::StreamOwned<ClientConnection, TcpStream>, KafkaError> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            config(
                "bootstrap",
                format!("{host:?} is not a host name TLS can verify"),
            )
        })?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(|e| tls_error(addr, &e))?;
        let io_err = |e: io::Error| handshake_io_error(addr, e);
        while conn.is_handshaking() || conn.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KafkaError::Timeout {
                    broker: addr.to_owned(),
                    phase: Phase::Connect,
                });
            }
            sock.set_read_timeout(Some(left)).map_err(io_err)?;
            sock.set_write_timeout(Some(left)).map_err(io_err)?;
            if conn.wants_write() {
                conn.write_tls(&mut sock).map_err(io_err)?;
                continue;
            }
            if conn.read_tls(&mut sock).map_err(io_err)? == 0 {
                return Err(io_err(io::ErrorKind::UnexpectedEof.into()));
            }
            if let Err(e) = conn.process_new_packets() {
                // Tell the broker why (an alert is queued), then report.
                let _ = conn.write_tls(&mut sock);
                return Err(tls_error(addr, &e));
            }
        }
        log::debug!(
            "kafka {addr}: TLS {:?} {:?}",
            conn.protocol_version(),
            conn.negotiated_cipher_suite().map(|s| s.suite())
        );
        Ok(rustls::StreamOwned::new(conn, sock))
    }
}

fn config(setting: &'static str, reason: String) -> KafkaError {
    KafkaError::Config { setting, reason }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(_) if pem.windows(9).any(|w| w == b"ENCRYPTED") => Err(format!(
            "{}: encrypted private keys are not supported; decrypt it \
             (openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.plain) and protect the file instead",
            path.display()
        )),
        Err(e) => Err(format!(
            "{}: no usable PEM private key: {e}",
            path.display()
        )),
    }
}

/// An I/O error during the handshake: the peer went away (retriable), or rustls refused.
fn handshake_io_error(addr: &str, e: io::Error) -> KafkaError {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return tls_error(addr, tls);
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => KafkaError::Timeout {
            broker: addr.to_owned(),
            phase: Phase::Connect,
        },
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => KafkaError::Io {
            broker: addr.to_owned(),
            phase: Phase::Connect,
            detail: "TLS handshake: connection closed by broker (is this port a TLS listener? \
                     check security.protocol)"
                .to_owned(),
        },
        _ => KafkaError::Io {
            broker: addr.to_owned(),
            phase: Phase::Connect,
            detail: format!("TLS handshake: {e}"),
        },
    }
}

/// The rustls error inside an I/O error from a TLS stream, as a `KafkaError::Tls`.
pub(crate) fn from_io(addr: &str, e: &io::Error) -> Option<KafkaError> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .map(|tls| tls_error(addr, tls))
}

/// A certificate or protocol failure, in words that say which setting to look at.
pub(crate) fn tls_error(addr: &str, e: &rustls::Error) -> KafkaError {
    let host = host_of(addr);
    let detail = match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "the broker's certificate is not signed by a trusted \
                 CA (set ssl.ca.location / KAFKA_SSL_CA_LOCATION to the CA that signed it)"
                .to_owned(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the broker's certificate is not valid for {host} (hostname verification): {cert}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the broker's certificate has expired: {cert}")
            }
            other => format!("the broker's certificate was refused: {other}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied => format!(
                "the broker refused our client certificate (alert {alert:?}): it requires one signed \
                 by a CA it trusts (set ssl.certificate.location and ssl.key.location / \
                 KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION)"
            ),
            other => format!("the broker ended the handshake (alert {other:?})"),
        },
        other => other.to_string(),
    };
    KafkaError::Tls {
        broker: addr.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("kafka:9092"), "kafka");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }

    #[test]
    fn bundled_roots_by_default() {
        let tls = Tls::new(TlsFiles::default()).unwrap();
        assert_eq!(
            format!("{tls:?}"),
            "Tls { files: TlsFiles { ca: None, certificate: None, key: None } }"
        );
    }

    #[test]
    fn unusable_files_name_the_setting() {
        let dir = std::env::temp_dir().join(format!("grk-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        let encrypted = dir.join("enc.pem");
        std::fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let check = |files: TlsFiles, setting: &str, reason: &str| {
            let err = Tls::new(files).unwrap_err();
            match &err {
                KafkaError::Config {
                    setting: s,
                    reason: r,
                } => {
                    assert_eq!(*s, setting, "{err}");
                    assert!(r.contains(reason), "{err}");
                }
                other => panic!("{other}"),
            }
        };
        check(
            TlsFiles {
                ca: Some(dir.join("missing.pem")),
                ..TlsFiles::default()
            },
            "ssl.ca.location",
            "cannot read",
        );
        check(
            TlsFiles {
                ca: Some(garbage.clone()),
                ..TlsFiles::default()
            },
            "ssl.ca.location",
            "no PEM certificate",
        );
        check(
            TlsFiles {
                key: Some(garbage.clone()),
                ..TlsFiles::default()
            },
            "ssl.certificate.location",
            "without a certificate",
        );
        check(
            TlsFiles {
                certificate: Some(garbage.clone()),
                ..TlsFiles::default()
            },
            "ssl.certificate.location",
            "no PEM certificate",
        );
        assert!(read_key(&encrypted).unwrap_err().contains("encrypted"));
        assert!(read_key(&garbage)
            .unwrap_err()
            .contains("no usable PEM private key"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn certificate_errors_in_plain_words() {
        let check = |e: rustls::Error, expected: &str| {
            let err = tls_error("b:9093", &e);
            let line = err.to_string();
            assert!(line.contains(expected) && line.contains("b:9093"), "{line}");
            assert!(!err.is_retriable(), "{line}");
        };
        check(
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "not signed by a trusted CA (set ssl.ca.location",
        );
        check(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            "not valid for b",
        );
        check(
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            "set ssl.certificate.location",
        );
        check(
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
            "HandshakeFailure",
        );
    }
}
