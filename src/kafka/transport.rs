//! The only module holding a `TcpStream`: connect with a timeout (then the TLS handshake when
//! configured), write a frame, read one size-prefixed frame within a deadline. Never parses a
//! message or retries.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::{ClientConnection, StreamOwned};

use super::error::{KafkaError, Phase};
use super::tls::{self, Tls};
use super::wire;

/// An open connection to one broker. After any error the connection is unusable (a frame may be
/// half written or half read) and the caller drops it.
pub(crate) trait Transport: Send {
    /// Writes a whole frame (size prefix included), its pieces in order.
    fn send(&mut self, frame: &wire::Frame, timeout: Duration) -> Result<(), KafkaError>;
    /// Reads one frame and returns it without its size prefix.
    fn recv(&mut self, timeout: Duration) -> Result<Bytes, KafkaError>;
}

/// Opens connections; the producer holds one, tests swap in an in-memory broker.
pub(crate) trait Connector: Send {
    fn connect(&mut self, addr: &str, timeout: Duration) -> Result<Box<dyn Transport>, KafkaError>;
}

/// Plain TCP.
#[derive(Debug, Default)]
pub(crate) struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&mut self, addr: &str, timeout: Duration) -> Result<Box<dyn Transport>, KafkaError> {
        let stream = tcp_connect(addr, timeout)?;
        Ok(Box::new(StreamTransport {
            addr: addr.to_owned(),
            stream,
        }))
    }
}

/// TLS over TCP; the connect timeout covers both.
#[derive(Debug)]
pub(crate) struct TlsConnector(pub(crate) Tls);

impl Connector for TlsConnector {
    fn connect(&mut self, addr: &str, timeout: Duration) -> Result<Box<dyn Transport>, KafkaError> {
        let deadline = Instant::now() + timeout;
        let sock = tcp_connect(addr, timeout)?;
        let stream = self.0.handshake(addr, sock, deadline)?;
        Ok(Box::new(StreamTransport {
            addr: addr.to_owned(),
            stream,
        }))
    }
}

fn tcp_connect(addr: &str, timeout: Duration) -> Result<TcpStream, KafkaError> {
    let io_err = |detail: String| KafkaError::Io {
        broker: addr.to_owned(),
        phase: Phase::Connect,
        detail,
    };
    if timeout.is_zero() {
        return Err(KafkaError::Timeout {
            broker: addr.to_owned(),
            phase: Phase::Connect,
        });
    }
    // Name resolution has no timeout in std; brokers are usually IPs or /etc/hosts names.
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| io_err(format!("resolve: {e}")))?
        .collect();
    let mut last = io_err("name resolved to no address".to_owned());
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(stream) => {
                // Requests are written whole; don't let Nagle hold the last segment back.
                stream
                    .set_nodelay(true)
                    .map_err(|e| io_err(e.to_string()))?;
                log::debug!("kafka {addr}: connected to {sa}");
                return Ok(stream);
            }
            Err(e) if is_timeout(&e) => {
                last = KafkaError::Timeout {
                    broker: addr.to_owned(),
                    phase: Phase::Connect,
                }
            }
            Err(e) => last = io_err(format!("{sa}: {e}")),
        }
    }
    Err(last)
}

/// The byte stream under a connection: a socket, or TLS over one. Timeouts go to the socket.
trait Stream: Read + Write + Send {
    fn socket(&self) -> &TcpStream;
}

impl Stream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Stream for StreamOwned<ClientConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

struct StreamTransport<S> {
    addr: String,
    stream: S,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S: Stream> StreamTransport<S> {
    fn error(&self, phase: Phase, e: io::Error) -> KafkaError {
        if let Some(tls) = tls::from_io(&self.addr, &e) {
            return tls;
        }
        if is_timeout(&e) {
            return KafkaError::Timeout {
                broker: self.addr.clone(),
                phase,
            };
        }
        let detail = match e.kind() {
            io::ErrorKind::UnexpectedEof => "connection closed by broker".to_owned(),
            _ => e.to_string(),
        };
        KafkaError::Io {
            broker: self.addr.clone(),
            phase,
            detail,
        }
    }

    /// Fills `buf` before `deadline`, however the peer slices its writes.
    fn read_full(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), KafkaError> {
        let mut filled = 0;
        while filled < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KafkaError::Timeout {
                    broker: self.addr.clone(),
                    phase: Phase::Read,
                });
            }
            self.stream
                .socket()
                .set_read_timeout(Some(left))
                .map_err(|e| self.error(Phase::Read, e))?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => return Err(self.error(Phase::Read, io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(Phase::Read, e)),
            }
        }
        Ok(())
    }
}

/// Writes every piece, in order, with as few system calls as the socket allows.
fn write_all_vectored(out: &mut impl Write, pieces: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = pieces
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A TLS record header (alert 0x15 or handshake 0x16, version 3.x) where a Kafka size prefix
/// should be: the port speaks TLS and we don't.
fn looks_like_tls(prefix: [u8; 4]) -> bool {
    matches!(prefix, [0x15 | 0x16, 0x03, 0..=0x04, _])
}

impl<S: Stream> Transport for StreamTransport<S> {
    fn send(&mut self, frame: &wire::Frame, timeout: Duration) -> Result<(), KafkaError> {
        if timeout.is_zero() {
            return Err(KafkaError::Timeout {
                broker: self.addr.clone(),
                phase: Phase::Write,
            });
        }
        self.stream
            .socket()
            .set_write_timeout(Some(timeout))
            .map_err(|e| self.error(Phase::Write, e))?;
        // One vectored write for the pieces: written one by one, each went out as a segment
        // of its own (nodelay) and the broker waited for the last few bytes of the frame.
        // flush: TLS holds the last record until asked; a socket's flush does nothing.
        write_all_vectored(&mut self.stream, frame.pieces())
            .and_then(|()| self.stream.flush())
            .map_err(|e| self.error(Phase::Write, e))
    }

    fn recv(&mut self, timeout: Duration) -> Result<Bytes, KafkaError> {
        let deadline = Instant::now() + timeout;
        let mut prefix = [0u8; 4];
        self.read_full(&mut prefix, deadline)?;
        if &prefix == b"HTTP" {
            return Err(KafkaError::Malformed {
                broker: self.addr.clone(),
                api: "response",
                detail: "the address answered in HTTP: a web server, not a Kafka broker \
                         (check KAFKA_BROKER)"
                    .to_owned(),
            });
        }
        let len = wire::frame_len(prefix).map_err(|detail| {
            if looks_like_tls(prefix) {
                KafkaError::Tls {
                    broker: self.addr.clone(),
                    detail: "the broker answered with TLS: this listener needs security.protocol \
                             SSL or SASL_SSL (KAFKA_SECURITY_PROTOCOL)"
                        .to_owned(),
                }
            } else {
                KafkaError::Malformed {
                    broker: self.addr.clone(),
                    api: "response",
                    detail,
                }
            }
        })?;
        // Grow with the bytes that actually arrive instead of trusting the announced length.
        let mut body = Vec::with_capacity(len.min(64 * 1024));
        let mut chunk = [0u8; 16 * 1024];
        while body.len() < len {
            let n = (len - body.len()).min(chunk.len());
            self.read_full(&mut chunk[..n], deadline)?;
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(Bytes::from(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn pair() -> (Box<dyn Transport>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client = TcpConnector.connect(&addr, Duration::from_secs(5)).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn frames_cross_a_real_socket_in_pieces() {
        let (mut client, mut server) = pair();
        client
            .send(
                &wire::Frame::from_pieces(vec![
                    Bytes::from_static(b"\x00\x00\x00\x03a"),
                    Bytes::from_static(b"bc"),
                ]),
                Duration::from_secs(5),
            )
            .unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x00\x00\x00\x03abc");
        let writer = thread::spawn(move || {
            for piece in [&b"\x00\x00"[..], b"\x00\x05he", b"llo"] {
                server.write_all(piece).unwrap();
                thread::sleep(Duration::from_millis(20));
            }
            server
        });
        assert_eq!(&client.recv(Duration::from_secs(5)).unwrap()[..], b"hello");
        drop(writer.join().unwrap());
        let err = client.recv(Duration::from_secs(5)).unwrap_err();
        assert!(
            err.to_string().contains("connection closed by broker"),
            "{err}"
        );
        assert!(err.is_retriable());
    }

    /// Takes at most 3 bytes per call, and says so once with Interrupted.
    struct Trickle {
        got: Vec<u8>,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls == 2 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(3 - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == 3 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_vectored_write_resumes_mid_piece_until_all_is_written() {
        let pieces = [
            Bytes::from_static(b"\x00\x00\x00\x07ab"),
            Bytes::new(),
            Bytes::from_static(b"cdefg"),
            Bytes::from_static(b"h"),
        ];
        let mut out = Trickle {
            got: Vec::new(),
            calls: 0,
        };
        write_all_vectored(&mut out, &pieces).unwrap();
        assert_eq!(out.got, b"\x00\x00\x00\x07abcdefgh");
        // 12 bytes, 3 at a time, plus the interrupted call.
        assert_eq!(out.calls, 5);
    }

    #[test]
    fn hostile_length_and_silence() {
        let (mut client, mut server) = pair();
        server.write_all(&[0x7f, 0xff, 0xff, 0xff]).unwrap();
        let err = client.recv(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, KafkaError::Malformed { .. }), "{err}");

        let (mut client, _server) = pair();
        let started = Instant::now();
        let err = client.recv(Duration::from_millis(100)).unwrap_err();
        assert!(
            matches!(
                err,
                KafkaError::Timeout {
                    phase: Phase::Read,
                    ..
                }
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_tls_answer_on_a_plain_connection_says_so() {
        let (mut client, mut server) = pair();
        // A TLS alert record (fatal, protocol_version), as a TLS listener sends to our request.
        server
            .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])
            .unwrap();
        let err = client.recv(Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("security.protocol SSL"), "{err}");
    }

    #[test]
    fn tls_to_a_plain_listener_fails_in_the_handshake_naming_the_broker() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Like a Kafka PLAINTEXT port: reads the ClientHello as a (huge) frame, hangs up.
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
        });
        let tls = Tls::new(tls::TlsFiles::default()).unwrap();
        let err = TlsConnector(tls)
            .connect(&addr, Duration::from_secs(5))
            .map(|_| ())
            .unwrap_err();
        server.join().unwrap();
        assert!(err.to_string().contains(&addr), "{err}");
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[test]
    fn refused_connection_names_the_broker() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = TcpConnector
            .connect(&addr, Duration::from_secs(2))
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains(&addr), "{err}");
        assert!(err.is_retriable());
        let err = TcpConnector
            .connect("no-port-here", Duration::from_secs(2))
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("resolve"), "{err}");
    }
}
