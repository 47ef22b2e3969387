//! systemd's notify protocol (`Type=notify`): one datagram per message to `$NOTIFY_SOCKET`,
//! written by hand so no libsystemd is linked.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op. Send failures are logged at debug and
//! otherwise ignored: systemd being away must never stop the producer.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    target: Option<(UnixDatagram, String)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (+ `WATCHDOG_PID`) through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Notifier {
        let target = env("NOTIFY_SOCKET")
            .filter(|p| !p.is_empty())
            .and_then(|path| UnixDatagram::unbound().ok().map(|s| (s, path)));
        let for_us = env("WATCHDOG_PID")
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = env("WATCHDOG_USEC")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// How often the loop must ping: half the watchdog timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// `STATUS=` shows in `systemctl status`; newlines would end the field, so they are dropped.
    pub fn status(&self, text: &str) {
        let line: String = text.chars().filter(|c| *c != '\n').collect();
        self.send(&format!("STATUS={line}"));
    }

    fn send(&self, message: &str) {
        let Some((socket, path)) = &self.target else {
            return;
        };
        let sent = match path.strip_prefix('@') {
            Some(name) => send_abstract(socket, name, message),
            None => socket.send_to(message.as_bytes(), path),
        };
        if let Err(e) = sent {
            log::debug!("sd_notify {message:?} to {path}: {e}");
        }
    }
}

/// systemd may hand out an abstract socket ("@name"), which has no path on disk.
fn send_abstract(socket: &UnixDatagram, name: &str, message: &str) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(message.as_bytes(), &addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("grk-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let path_str = path.display().to_string();
        let env = |k: &str| match k {
            "NOTIFY_SOCKET" => Some(path_str.clone()),
            "WATCHDOG_USEC" => Some("4000000".to_string()),
            _ => None,
        };
        let n = Notifier::from_env(&env);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        n.ready();
        n.watchdog();
        n.status("poll ok\nsecond line");
        n.stopping();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..4 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).to_string());
        }
        assert_eq!(
            got,
            [
                "READY=1",
                "WATCHDOG=1",
                "STATUS=poll oksecond line",
                "STOPPING=1"
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn watchdog_for_another_pid_is_ignored() {
        let env = |k: &str| match k {
            "WATCHDOG_USEC" => Some("1000000".to_string()),
            "WATCHDOG_PID" => Some("1".to_string()),
            _ => None,
        };
        assert_eq!(Notifier::from_env(&env).watchdog_interval(), None);
    }
}
