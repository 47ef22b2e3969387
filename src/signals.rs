//! Signals as flags plus a self-pipe, so the supervisor can wait for its next tick and still
//! wake at once on a signal (no busy loop, no signal thread).
//!
//! SIGTERM, SIGINT and SIGQUIT ask for a graceful stop; a second one exits the process
//! immediately with 128 + signal number. SIGHUP asks for a reload. Every other signal whose
//! default action would end the process is caught and reported, never fatal. Nothing else in
//! the crate touches signal-hook.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{
    SIGALRM, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGVTALRM,
    SIGXCPU, SIGXFSZ,
};

/// Signals that stop the process gracefully.
const STOP: [i32; 3] = [SIGTERM, SIGINT, SIGQUIT];
/// Signals that would end the process by default and mean nothing to it: each gets a line.
const IGNORED: [(i32, &str); 9] = [
    (SIGUSR1, "SIGUSR1"),
    (SIGUSR2, "SIGUSR2"),
    (SIGALRM, "SIGALRM"),
    (SIGVTALRM, "SIGVTALRM"),
    (SIGPROF, "SIGPROF"),
    (SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
    (SIGXCPU, "SIGXCPU"),
    (SIGXFSZ, "SIGXFSZ"),
];

pub struct Signals {
    stop: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    ignored: Vec<(Arc<AtomicBool>, &'static str)>,
    wake: UnixStream,
}

impl Signals {
    /// Installs the handlers. Fails only if the OS refuses a socket pair or a handler.
    pub fn install() -> std::io::Result<Signals> {
        let stop = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        let (wake, notify) = UnixStream::pair()?;
        for signal in STOP {
            // Order matters: the conditional exit must run before the flag is set, so the
            // first signal only sets the flag and the second one (flag already set) exits.
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stop.clone())?;
            signal_hook::flag::register(signal, stop.clone())?;
            signal_hook::low_level::pipe::register(signal, notify.try_clone()?)?;
        }
        signal_hook::flag::register(SIGHUP, hup.clone())?;
        signal_hook::low_level::pipe::register(SIGHUP, notify.try_clone()?)?;
        let mut ignored = Vec::new();
        for (signal, name) in IGNORED {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal, flag.clone())?;
            signal_hook::low_level::pipe::register(signal, notify.try_clone()?)?;
            ignored.push((flag, name));
        }
        Ok(Signals {
            stop,
            hup,
            ignored,
            wake,
        })
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether SIGHUP arrived since the last call.
    pub fn take_reload(&self) -> bool {
        self.hup.swap(false, Ordering::SeqCst)
    }

    /// Names of the ignored signals that arrived since the last call.
    pub fn take_ignored(&self) -> Vec<&'static str> {
        self.ignored
            .iter()
            .filter(|(flag, _)| flag.swap(false, Ordering::SeqCst))
            .map(|(_, name)| *name)
            .collect()
    }

    /// Sleeps up to `timeout`, returning early on any signal; true if a stop was requested.
    pub fn sleep(&mut self, timeout: Duration) -> bool {
        if self.stop_requested() {
            return true;
        }
        if !timeout.is_zero() {
            // A zero read timeout means "block forever" to the OS, hence the guard above.
            let _ = self.wake.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 16];
            // Either a wake byte, a timeout, or EINTR; all mean "look at the flags again".
            let _ = self.wake.read(&mut buf);
        }
        self.stop_requested()
    }
}
