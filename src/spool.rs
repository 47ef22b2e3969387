//! Crash-safe copies of unsent snapshots (opt-in `SPOOL_DIR`): one file per snapshot, written
//! and fsynced before it is sent, removed once Kafka acknowledged it.
//!
//! Made for SD cards: one small sequential write and one fsync per snapshot, no rewrites, no
//! index file. Each file carries a CRC32C, so a torn write after power loss is detected and
//! skipped on start, never fatal. The byte bound is the queue's: dropping a queued snapshot
//! removes its file.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::queue::{RecordSpan, Snapshot};

const MAGIC: &[u8; 4] = b"GRKS";
const VERSION: u8 = 2;
/// magic, version, 3 reserved, timestamp_ms i64, body length u32, crc32c u32 (over the
/// timestamp and the body). The body: record count u32, then per record key start, key
/// length (u32::MAX: no key), value start, value length (u32 each), then the payload.
const HEADER_LEN: usize = 4 + 1 + 3 + 8 + 4 + 4;
const NO_KEY: u32 = u32::MAX;
const SUFFIX: &str = ".snap";
const REJECTED_DIR: &str = "rejected";
/// The delivery journal's two files, written in turn (`Spool::write_journal`).
const JOURNAL_FILES: [&str; 2] = ["producer-state.0", "producer-state.1"];
const JOURNAL_MAGIC: &[u8; 4] = b"GRKJ";
/// magic, generation u64, body length u32, crc32c u32 (over the generation and the body).
const JOURNAL_HEADER_LEN: usize = 4 + 8 + 4 + 4;

#[derive(Debug)]
pub struct SpoolError {
    pub path: PathBuf,
    pub cause: std::io::Error,
    /// For "permission denied": who owns the directory and who this process is, the two
    /// numbers an operator needs to fix a volume (`chown`), e.g. in a container as 65534.
    access: Option<String>,
}

impl SpoolError {
    fn new(path: PathBuf, cause: std::io::Error) -> SpoolError {
        let access = (cause.kind() == std::io::ErrorKind::PermissionDenied)
            .then(|| access_of(&path))
            .flatten();
        SpoolError {
            path,
            cause,
            access,
        }
    }
}

/// "directory owned by uid 0 gid 0, mode 755; this process runs as uid 65534", from the
/// nearest existing directory at or above `path`. The process's uid is the owner of
/// `/proc/self` (no libc call needed).
fn access_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.ancestors().find(|p| p.is_dir())?;
    let meta = fs::metadata(dir).ok()?;
    let me = fs::metadata("/proc/self").ok()?;
    Some(format!(
        "{} is owned by uid {} gid {}, mode {:o}; this process runs as uid {} gid {}",
        dir.display(),
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777,
        me.uid(),
        me.gid()
    ))
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spool {}: {}", self.path.display(), self.cause)?;
        if let Some(access) = &self.access {
            write!(f, " ({access})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpoolError {}

pub struct Spool {
    dir: PathBuf,
    /// Generation of the last journal written (or found at start); the next goes to the
    /// other of the two journal files.
    journal_generation: std::cell::Cell<u64>,
}

/// What was found on disk at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Intact snapshots, oldest first, marked `spooled`.
    pub snapshots: Vec<Snapshot>,
    /// Files that failed their checksum or were cut short (deleted).
    pub corrupt: usize,
    /// The sequence number to use for the next new snapshot.
    pub next_seq: u64,
    /// The last intact journal (`write_journal`), if any.
    pub journal: Option<Vec<u8>>,
}

impl Spool {
    /// Opens (creating if needed) the spool directory, proves it can be written (a probe file
    /// written, synced and removed), and reads what a previous run left. Only regular files
    /// (not symlinks, FIFOs or devices) of at most `max_file_bytes` are read; others are
    /// reported and left alone, so no file can hang or exhaust the start.
    pub fn open(dir: &Path, max_file_bytes: u64) -> Result<(Spool, Recovered), SpoolError> {
        let err = |cause| SpoolError::new(dir.to_path_buf(), cause);
        fs::create_dir_all(dir).map_err(err)?;
        probe(dir)?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(err)?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let seq = name.to_str()?.strip_suffix(SUFFIX)?.parse::<u64>().ok()?;
                // file_type does not follow symlinks.
                match entry.file_type() {
                    Ok(t) if t.is_file() => Some((seq, entry.path())),
                    _ => {
                        log::warn!(
                            "spool: {} is not a regular file; left alone, not read",
                            entry.path().display()
                        );
                        None
                    }
                }
            })
            .collect();
        names.sort_unstable_by_key(|(seq, _)| *seq);
        let mut recovered = Recovered {
            next_seq: names.last().map_or(1, |(seq, _)| seq + 1),
            ..Recovered::default()
        };
        for (seq, path) in names {
            let bytes = match read_bounded(&path, max_file_bytes) {
                Ok(bytes) => bytes,
                Err(why) => {
                    log::warn!("spool: {} {why}; left alone, not read", path.display());
                    continue;
                }
            };
            match parse(seq, &bytes) {
                Some(snapshot) => recovered.snapshots.push(snapshot),
                None => {
                    log::warn!(
                        "spool: {} is torn or corrupt (checksum), skipped and removed",
                        path.display()
                    );
                    recovered.corrupt += 1;
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let (generation, journal) = read_journal(dir, max_file_bytes);
        recovered.journal = journal;
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                journal_generation: std::cell::Cell::new(generation),
            },
            recovered,
        ))
    }

    /// Saves the delivery state (what the sink sends next, under which identity) durably: one
    /// write and one fsync, alternating between two files so a torn write leaves the previous
    /// state intact. The caller writes it before the data it describes is first sent.
    pub fn write_journal(&self, body: &[u8]) -> Result<(), SpoolError> {
        let generation = self.journal_generation.get().wrapping_add(1);
        let path = self.dir.join(JOURNAL_FILES[(generation % 2) as usize]);
        let mut bytes = Vec::with_capacity(JOURNAL_HEADER_LEN + body.len());
        bytes.extend_from_slice(JOURNAL_MAGIC);
        bytes.extend_from_slice(&generation.to_be_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&generation.to_be_bytes()), body);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes.extend_from_slice(body);
        fs::File::create(&path)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_data()
            })
            .map_err(|cause| SpoolError::new(path, cause))?;
        self.journal_generation.set(generation);
        Ok(())
    }

    /// The generation of the newest journal: in a new spool, how many were written.
    #[cfg(test)]
    pub(crate) fn journal_generation(&self) -> u64 {
        self.journal_generation.get()
    }

    /// Writes the snapshot durably (one write, one fsync) before it is first sent. A write
    /// that fails (disk full) removes its partial file, so the next start doesn't mistake it
    /// for a torn snapshot.
    pub fn write(&self, snapshot: &Snapshot) -> Result<(), SpoolError> {
        let path = self.path(snapshot.seq);
        let mut file =
            fs::File::create(&path).map_err(|cause| SpoolError::new(path.clone(), cause))?;
        let written = file
            .write_all(&encode(snapshot))
            .and_then(|_| file.sync_data());
        if let Err(cause) = written {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(SpoolError::new(path, cause));
        }
        Ok(())
    }

    /// Removes an acknowledged or dropped snapshot's file. No fsync: a file that comes back
    /// after power loss is only a duplicate, never a loss.
    pub fn remove(&self, seq: u64) {
        let path = self.path(seq);
        if let Err(e) = fs::remove_file(&path) {
            log::warn!("spool: cannot remove {}: {e}", path.display());
        }
    }

    /// Moves a snapshot the broker refused into `rejected/`: kept for the operator, never
    /// resent at start. Returns where it went.
    pub fn reject(&self, seq: u64) -> Result<PathBuf, SpoolError> {
        let dir = self.dir.join(REJECTED_DIR);
        let target = dir.join(format!("{seq:020}{SUFFIX}"));
        fs::create_dir_all(&dir)
            .and_then(|_| fs::rename(self.path(seq), &target))
            .map_err(|cause| SpoolError::new(target.clone(), cause))?;
        Ok(target)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }
}

/// The newer of the two journal files that is intact, with its generation (0: none). Only
/// regular files within `max` bytes are read, like snapshots.
fn read_journal(dir: &Path, max: u64) -> (u64, Option<Vec<u8>>) {
    let mut best: (u64, Option<Vec<u8>>) = (0, None);
    for name in JOURNAL_FILES {
        let path = dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                log::warn!(
                    "spool: {} is not a regular file; left alone, not read",
                    path.display()
                );
                continue;
            }
            Err(_) => continue,
        }
        let parsed = read_bounded(&path, max).and_then(|bytes| parse_journal(&bytes));
        match parsed {
            Ok((generation, body)) if generation > best.0 => best = (generation, Some(body)),
            Ok(_) => {}
            // A torn write: the other file holds the state before it.
            Err(why) => log::debug!("spool: {}: {why}", path.display()),
        }
    }
    best
}

fn parse_journal(bytes: &[u8]) -> Result<(u64, Vec<u8>), String> {
    let header = bytes
        .get(..JOURNAL_HEADER_LEN)
        .ok_or("cut short (a torn write)")?;
    if &header[..4] != JOURNAL_MAGIC {
        return Err("not a journal".to_owned());
    }
    let generation = u64::from_be_bytes(header[4..12].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(header[12..16].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_be_bytes(header[16..20].try_into().unwrap_or_default());
    let body = &bytes[JOURNAL_HEADER_LEN..];
    let sum = crc32c::crc32c_append(crc32c::crc32c(&generation.to_be_bytes()), body);
    if body.len() != len || sum != crc {
        return Err("torn or corrupt (checksum)".to_owned());
    }
    Ok((generation, body.to_vec()))
}

/// Proves `dir` takes a durable write: a read-only or full spool is a start error, not an
/// error on every poll.
fn probe(dir: &Path) -> Result<(), SpoolError> {
    let path = dir.join(".write-probe");
    let result = fs::File::create(&path).and_then(|mut f| {
        f.write_all(b"probe")?;
        f.sync_data()
    });
    let _ = fs::remove_file(&path);
    result.map_err(|cause| SpoolError::new(dir.to_path_buf(), cause))
}

/// The file's bytes when it is a regular file of at most `max` bytes (checked on the open
/// handle, and never reading more than `max` + 1 bytes).
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(|e| format!("cannot be read ({e})"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read ({e})"))?;
    if !meta.is_file() {
        return Err("is not a regular file".to_string());
    }
    if meta.len() > max {
        return Err(format!(
            "is {} bytes, more than QUEUE_MAX_BYTES ({max})",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read ({e})"))?;
    if bytes.len() as u64 > max {
        return Err(format!("grew past QUEUE_MAX_BYTES ({max}) while read"));
    }
    Ok(bytes)
}

fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + 16 * snapshot.records.len() + snapshot.payload.len());
    put_u32(&mut body, snapshot.records.len() as u32);
    for span in &snapshot.records {
        let (key_start, key_len) = span.key.unwrap_or((0, NO_KEY));
        for v in [key_start, key_len, span.value.0, span.value.1] {
            put_u32(&mut body, v);
        }
    }
    body.extend_from_slice(&snapshot.payload);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&snapshot.timestamp_ms.to_le_bytes());
    // Bodies beyond 4 GiB can't be fetched (MAX_BODY_BYTES is far lower).
    put_u32(&mut out, body.len() as u32);
    put_u32(&mut out, checksum(snapshot.timestamp_ms, &body));
    out.extend_from_slice(&body);
    out
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn checksum(timestamp_ms: i64, body: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&timestamp_ms.to_le_bytes());
    crc32c::crc32c_append(crc, body)
}

/// A snapshot from a spool file's bytes, or None if anything is off.
fn parse(seq: u64, bytes: &[u8]) -> Option<Snapshot> {
    let header = bytes.get(..HEADER_LEN)?;
    if &header[..4] != MAGIC || header[4] != VERSION {
        return None;
    }
    let timestamp_ms = i64::from_le_bytes(header[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[20..24].try_into().ok()?);
    let mut body = &bytes[HEADER_LEN..];
    if body.len() != len || checksum(timestamp_ms, body) != crc {
        return None;
    }
    let count = take_u32(&mut body)? as usize;
    // Each span is 16 bytes: a count the body can't hold is corrupt, not an allocation.
    if count > body.len() / 16 {
        return None;
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let (ks, kl, vs, vl) = (
            take_u32(&mut body)?,
            take_u32(&mut body)?,
            take_u32(&mut body)?,
            take_u32(&mut body)?,
        );
        records.push(RecordSpan {
            key: (kl != NO_KEY).then_some((ks, kl)),
            value: (vs, vl),
        });
    }
    let mut snapshot = Snapshot::new(seq, body.to_vec(), records, timestamp_ms);
    snapshot.spooled = true;
    Some(snapshot)
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    *bytes = rest;
    Some(u32::from_le_bytes(*head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("grk-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn permission_denied_names_the_owner_and_the_process() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("access");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let line = SpoolError::new(dir.join("x.snap"), denied).to_string();
        assert!(
            line.contains("mode 750; this process runs as uid "),
            "{line}"
        );
        assert!(
            line.contains(&format!("{} is owned by uid ", dir.display())),
            "{line}"
        );
        // Other errors say only what happened.
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(!SpoolError::new(dir.clone(), full)
            .to_string()
            .contains("owned"));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn snap(seq: u64, doc: &str) -> Snapshot {
        let mut s =
            Snapshot::document(seq, doc.as_bytes().to_vec(), 1_700_000_000_000 + seq as i64);
        s.spooled = true;
        s
    }

    #[test]
    fn keyed_records_survive_the_round_trip() {
        let dir = temp_dir("keyed");
        let (spool, _) = Spool::open(&dir, 1 << 30).unwrap();
        let mut s = Snapshot::new(
            7,
            b"k1{\"a\":1}{\"b\":2}".to_vec(),
            vec![
                RecordSpan {
                    key: Some((0, 2)),
                    value: (2, 7),
                },
                RecordSpan {
                    key: None,
                    value: (9, 7),
                },
            ],
            42,
        );
        spool.write(&s).unwrap();
        s.spooled = true;
        let (_, recovered) = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(recovered.snapshots, vec![s.clone()]);
        assert_eq!(
            recovered.snapshots[0].record(0),
            (Some(&b"k1"[..]), &b"{\"a\":1}"[..])
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn round_trip_in_order_and_remove() {
        let dir = temp_dir("rt");
        let (spool, recovered) = Spool::open(&dir, 1 << 30).unwrap();
        assert!(recovered.snapshots.is_empty());
        assert_eq!(recovered.next_seq, 1);
        for seq in [3, 1, 2] {
            spool
                .write(&snap(seq, &format!("{{\"n\":{seq}}}")))
                .unwrap();
        }
        spool.remove(2);
        let (_, recovered) = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(
            recovered.snapshots,
            vec![snap(1, "{\"n\":1}"), snap(3, "{\"n\":3}")]
        );
        assert_eq!(recovered.next_seq, 4);
        assert_eq!(recovered.corrupt, 0);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_newest_intact_journal_is_read_and_a_torn_one_leaves_the_one_before() {
        let dir = temp_dir("journal");
        let (spool, recovered) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovered.journal, None);
        for state in [&b"first"[..], b"second", b"third"] {
            spool.write_journal(state).unwrap();
        }
        let (spool, recovered) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovered.journal.as_deref(), Some(&b"third"[..]));
        // Generations go on after a start: the next write replaces the older file.
        spool.write_journal(b"fourth").unwrap();
        let (_, recovered) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovered.journal.as_deref(), Some(&b"fourth"[..]));
        // Power lost while writing the fifth: it is cut short, the fourth stands.
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        spool.write_journal(b"fifth, torn").unwrap();
        let newest = JOURNAL_FILES
            .iter()
            .map(|n| dir.join(n))
            .max_by_key(|p| fs::read(p).unwrap()[4..12].to_vec())
            .unwrap();
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() - 3]).unwrap();
        let (_, recovered) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovered.journal.as_deref(), Some(&b"fourth"[..]));
        // A flipped byte is caught by the checksum too; a FIFO in its place is not opened.
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&newest, &bytes).unwrap();
        let other = JOURNAL_FILES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| *p != newest)
            .unwrap();
        fs::remove_file(&other).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&other).status();
        if made.is_ok_and(|s| s.success()) {
            let (_, recovered) = Spool::open(&dir, 1 << 20).unwrap();
            assert_eq!(recovered.journal, None);
        }
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn torn_and_corrupt_files_are_skipped_not_fatal() {
        let dir = temp_dir("torn");
        let (spool, _) = Spool::open(&dir, 1 << 30).unwrap();
        for seq in 1..=4 {
            spool.write(&snap(seq, "{\"document\":true}")).unwrap();
        }
        // 2: cut short (power loss mid-write); 3: a flipped byte; 4: empty file.
        let p2 = dir.join(format!("{:020}.snap", 2));
        let bytes = fs::read(&p2).unwrap();
        fs::write(&p2, &bytes[..bytes.len() - 5]).unwrap();
        let p3 = dir.join(format!("{:020}.snap", 3));
        let mut bytes = fs::read(&p3).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(&p3, &bytes).unwrap();
        fs::write(dir.join(format!("{:020}.snap", 4)), b"").unwrap();
        fs::write(dir.join("unrelated.txt"), b"left alone").unwrap();
        let (_, recovered) = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(recovered.snapshots.len(), 1);
        assert_eq!(recovered.snapshots[0].seq, 1);
        assert_eq!(recovered.corrupt, 3);
        assert_eq!(recovered.next_seq, 5);
        assert!(dir.join("unrelated.txt").exists());
        assert!(!p2.exists() && !p3.exists());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn only_plausible_regular_files_are_read_at_start() {
        let dir = temp_dir("hostile");
        {
            let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
            spool.write(&snap(1, "{\"ok\":1}")).unwrap();
        }
        let name = |seq: u64| dir.join(format!("{seq:020}{SUFFIX}"));
        // A FIFO (reading it would block forever), a symlink to an endless device, a sparse
        // file far larger than the bound (reading it would exhaust memory).
        let fifo = std::process::Command::new("mkfifo").arg(name(2)).status();
        assert!(fifo.unwrap().success());
        std::os::unix::fs::symlink("/dev/zero", name(3)).unwrap();
        let sparse = fs::File::create(name(4)).unwrap();
        sparse.set_len(3 << 30).unwrap();
        let (_, recovered) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovered.snapshots.len(), 1);
        assert_eq!(recovered.snapshots[0].seq, 1);
        assert_eq!(recovered.corrupt, 0);
        // Left alone for the operator, not deleted.
        assert!(name(2).exists() && name(4).exists());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_unwritable_spool_is_refused_at_open() {
        let file = temp_dir("not-a-dir").with_extension("file");
        fs::write(&file, b"x").unwrap();
        assert!(Spool::open(&file.join("spool"), 1 << 20).is_err());
        assert!(Spool::open(Path::new("/proc/self/grk-spool"), 1 << 20).is_err());
        fs::remove_file(&file).ok();
    }
}
