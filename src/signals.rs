//! SIGTERM/SIGINT as a flag plus a self-pipe, so the single-threaded loop can sleep until the
//! next poll and still wake at once on a signal (no busy loop, no extra thread).
//!
//! The first signal asks for a graceful stop; a second one exits the process immediately
//! with 128 + signal number. Nothing else in the crate touches signal-hook.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

pub struct Signals {
    stop: Arc<AtomicBool>,
    wake: UnixStream,
}

impl Signals {
    /// Installs the handlers. Fails only if the OS refuses a socket pair or a handler.
    pub fn install() -> std::io::Result<Signals> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, notify) = UnixStream::pair()?;
        for signal in [SIGTERM, SIGINT] {
            // Order matters: the conditional exit must run before the flag is set, so the
            // first signal only sets the flag and the second one (flag already set) exits.
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stop.clone())?;
            signal_hook::flag::register(signal, stop.clone())?;
            signal_hook::low_level::pipe::register(signal, notify.try_clone()?)?;
        }
        Ok(Signals { stop, wake })
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps up to `timeout`, returning early (true) if a stop was requested.
    pub fn sleep(&mut self, timeout: Duration) -> bool {
        if self.stop_requested() {
            return true;
        }
        if !timeout.is_zero() {
            // A zero read timeout means "block forever" to the OS, hence the guard above.
            let _ = self.wake.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 16];
            // Either a wake byte, a timeout, or EINTR; all mean "look at the flag again".
            let _ = self.wake.read(&mut buf);
        }
        self.stop_requested()
    }
}
