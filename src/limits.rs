//! The process's file-descriptor limit against what the configured feeds need: raise the
//! soft limit up to the hard one when needed, or refuse to start with one line.

use std::fmt;

/// Descriptors the process needs besides its feeds: stdio, the signal self-pipe and its
/// clones, the metrics listener and its connections in service, the logger.
const BASE_FDS: u64 = 64;

#[derive(Debug)]
pub struct LimitError {
    pub needed: u64,
    pub hard: u64,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the configured feeds need about {} file descriptors but RLIMIT_NOFILE allows {} \
             (raise it: LimitNOFILE= in the unit, --ulimit nofile= for docker, ulimit -n), \
             or run fewer feeds per process",
            self.needed, self.hard
        )
    }
}

impl std::error::Error for LimitError {}

/// Makes sure `feed_fds` (+ the process's own) fit under RLIMIT_NOFILE.
pub fn ensure_fds(feed_fds: u64) -> Result<(), LimitError> {
    let needed = BASE_FDS + feed_fds;
    let Some((soft, hard)) = nofile() else {
        return Ok(());
    };
    if needed <= soft {
        return Ok(());
    }
    if needed > hard {
        return Err(LimitError { needed, hard });
    }
    if set_nofile(hard, hard) {
        log::info!("raised the open-file limit from {soft} to {hard} for the configured feeds");
        Ok(())
    } else {
        Err(LimitError { needed, hard: soft })
    }
}

fn nofile() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one plain struct we own; no pointer is kept.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    // rlim_t is u32 on 32-bit glibc targets and u64 elsewhere.
    #[allow(clippy::useless_conversion)]
    let pair = (u64::from(limit.rlim_cur), u64::from(limit.rlim_max));
    (rc == 0).then_some(pair)
}

fn set_nofile(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit {
        rlim_cur: libc::rlim_t::try_from(soft).unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::rlim_t::try_from(hard).unwrap_or(libc::RLIM_INFINITY),
    };
    // SAFETY: setrlimit reads one plain struct we own.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_need_fits_and_an_impossible_one_names_the_limit() {
        assert!(ensure_fds(1).is_ok());
        let (_, hard) = nofile().unwrap();
        if hard < u64::MAX / 2 {
            let e = ensure_fds(hard).unwrap_err();
            assert_eq!(e.needed, hard + BASE_FDS);
            assert!(e.to_string().contains("RLIMIT_NOFILE allows"));
        }
    }
}
