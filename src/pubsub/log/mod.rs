//! A topic's log: the messages published to it, in offset order, on disk or in memory.
//!
//! On disk (Kafka's layout, kept small): a directory per topic holding
//!
//! * `EPOCH`: the topic's epoch, 16 hex digits, made at random when the log is created and made
//!   anew when recovery finds that records which may already have been delivered are gone;
//! * segment files `<base offset, 20 digits>.log`, append-only, each a run of
//!   [records](record) starting at its base offset, rolled once it reaches the segment size;
//! * beside each rolled segment, `<base>.index`: a sparse index (an offset and its position
//!   every [`INDEX_INTERVAL_BYTES`]) and the segment's last offset and time, so a start need not
//!   read old segments and a read seeks close to the offset it wants.
//!
//! Recovery reads the newest segment from its start, checking every record's CRC and that the
//! offsets run on by one; at the first record that is not right it cuts the file there. A cut
//! that removes only a *torn* tail (a record whose bytes never all reached the file, so it was
//! never acknowledged nor shown to anyone) keeps the epoch; a cut that removes a whole record
//! (a flipped byte, a bad length) makes a new epoch, since that record may have been seen.
//!
//! Retention deletes whole segments, oldest first, once the topic holds more than its byte
//! limit or a segment's newest record is older than the age limit; the segment being written
//! is never deleted.
//!
//! In memory ([`MemoryLog`]): the newest messages up to a count and a byte limit, and an epoch
//! made when the server starts (a restart loses the history, so a resume from before it is
//! told `recovered: false`).
//!
//! Everything here runs on the hub's thread, never on an event loop.

pub mod record;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use record::Parsed;
pub use record::Record;

/// A sparse index entry is kept for the first record at or past every this many bytes.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
/// The most bytes read from a segment at once when reading history.
const READ_BLOCK_BYTES: usize = 256 * 1024;

/// How a topic's log on disk is cut into segments and how long it keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A segment is rolled once it holds this many bytes.
    pub segment_bytes: u64,
    /// Whole segments are deleted, oldest first, while the topic holds more than this.
    pub retention_bytes: u64,
    /// A segment whose newest record is older than this many milliseconds is deleted.
    pub retention_ms: u64,
    /// The largest record body believed when reading (larger is corruption).
    pub max_record_bytes: usize,
}

/// What recovery found and did, for the start-up log and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the end of the newest segment.
    pub truncated_bytes: u64,
    /// Why, if anything was cut.
    pub cut_reason: Option<&'static str>,
    /// A new epoch was made (records that may have been delivered were lost).
    pub new_epoch: bool,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    base: u64,
    /// Offset of its last record; `base - 1` while it is empty.
    last: u64,
    /// Bytes in the file.
    bytes: u64,
    /// Time of its newest record (0 while empty).
    newest_ms: u64,
    /// (offset, position) pairs, ascending.
    index: Vec<(u64, u64)>,
    /// Bytes appended since the last index entry.
    since_index: u64,
    /// Open for reading (and, for the newest, appending).
    file: File,
}

impl Segment {
    /// Takes in the record of `offset`, `length` bytes at `position`: the segment's bounds,
    /// and an index entry once the last is `INDEX_INTERVAL_BYTES` behind.
    fn note(&mut self, offset: u64, timestamp_ms: u64, position: u64, length: usize) {
        if self.index.is_empty() || self.since_index >= INDEX_INTERVAL_BYTES {
            self.index.push((offset, position));
            self.since_index = 0;
        }
        self.since_index += length as u64;
        self.last = offset;
        self.newest_ms = timestamp_ms;
    }
}

fn segment_path(dir: &Path, base: u64, extension: &str) -> PathBuf {
    dir.join(format!("{base:020}.{extension}"))
}

/// A topic's log on disk. See the [module documentation](self).
#[derive(Debug)]
pub struct DiskLog {
    dir: PathBuf,
    epoch: u64,
    limits: LogLimits,
    /// Oldest first; the last is written to. Never empty.
    segments: Vec<Segment>,
    /// Records appended but not yet written to the file.
    unwritten: Vec<u8>,
    /// Offset, framed length and time of each record in `unwritten`, in order (what the
    /// segment's bounds and index need, without reading the bytes back).
    unwritten_records: Vec<(u64, usize, u64)>,
    /// Written to the file since the last fsync.
    unsynced: bool,
    /// The offset the next record gets.
    next_offset: u64,
}

impl DiskLog {
    /// Opens the log in `dir`, creating it if need be, and recovers its tail. `recent_since_ms`
    /// asks for the records newer than that (for the publish-id window): they are handed to
    /// `recent` as recovery meets them.
    pub fn open(
        dir: &Path,
        limits: LogLimits,
        recent_since_ms: u64,
        mut recent: impl FnMut(&Record),
    ) -> io::Result<(DiskLog, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut recovery = Recovery::default();
        let epoch_path = dir.join("EPOCH");
        let mut epoch = match fs::read_to_string(&epoch_path) {
            Ok(text) => u64::from_str_radix(text.trim(), 16).ok(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        let mut bases: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        if epoch.is_none() && !bases.is_empty() {
            // Segments without an epoch: whatever was delivered from them cannot be vouched for.
            recovery.new_epoch = true;
        }
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let newest = bases.last().copied();
        for base in bases {
            let path = segment_path(dir, base, "log");
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            let bytes = file.metadata()?.len();
            let mut segment = Segment {
                base,
                last: base.saturating_sub(1),
                bytes,
                newest_ms: 0,
                index: Vec::new(),
                since_index: 0,
                file,
            };
            let index_read = Some(base) != newest
                && read_index(&segment_path(dir, base, "index"), &mut segment).is_ok();
            let scan = !index_read || segment.newest_ms >= recent_since_ms;
            if scan {
                let cut = scan_segment(
                    &mut segment,
                    limits.max_record_bytes,
                    &mut recent,
                    recent_since_ms,
                )?;
                if let Some((at, reason, whole)) = cut {
                    if Some(base) != newest {
                        // A damaged old segment: keep what precedes the damage readable, and
                        // say so; its later records are lost.
                        log::warn!(
                            "topic log {}: segment {base} damaged: {reason}",
                            dir.display()
                        );
                    }
                    recovery.truncated_bytes += segment.bytes - at;
                    recovery.cut_reason = Some(reason);
                    recovery.new_epoch |= whole;
                    segment.file.set_len(at)?;
                    segment.file.sync_all()?;
                    segment.bytes = at;
                }
            }
            if let Some(previous) = segments.last() {
                let previous: &Segment = previous;
                if segment.base != previous.last + 1 {
                    log::warn!(
                        "topic log {}: segment {} follows offset {}: a gap",
                        dir.display(),
                        segment.base,
                        previous.last
                    );
                    recovery.new_epoch = true;
                }
            }
            segments.push(segment);
        }
        if segments.is_empty() {
            segments.push(create_segment(dir, 1)?);
        }
        let next_offset = segments.last().map_or(1, |s| s.last + 1);
        if recovery.new_epoch || epoch.is_none() {
            let fresh = random_epoch();
            write_epoch(dir, fresh)?;
            epoch = Some(fresh);
        }
        let log = DiskLog {
            dir: dir.to_path_buf(),
            epoch: epoch.unwrap_or_default(),
            limits,
            segments,
            unwritten: Vec::new(),
            unwritten_records: Vec::new(),
            unsynced: false,
            next_offset,
        };
        Ok((log, recovery))
    }

    /// The topic's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The offset of the newest record (0 when there is none yet).
    pub fn last_offset(&self) -> u64 {
        self.next_offset - 1
    }

    /// The oldest offset still held (`last_offset() + 1` when none is).
    pub fn first_offset(&self) -> u64 {
        self.segments
            .iter()
            .find(|segment| segment.last >= segment.base)
            .map_or(self.next_offset, |segment| segment.base)
    }

    /// Bytes the topic's segments hold on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.bytes).sum()
    }

    /// Appends a record (in memory until [`DiskLog::write`]), giving it the next offset;
    /// returns that offset.
    pub fn append(&mut self, mut record: Record) -> u64 {
        record.offset = self.next_offset;
        self.next_offset += 1;
        let before = self.unwritten.len();
        record.write_to(&mut self.unwritten);
        self.unwritten_records.push((
            record.offset,
            self.unwritten.len() - before,
            record.timestamp_ms,
        ));
        record.offset
    }

    /// Writes the appended records to the newest segment (rolling it first if it is full):
    /// from here a crash of the process loses none of them.
    pub fn write(&mut self) -> io::Result<()> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let full = self
            .segments
            .last()
            .is_some_and(|s| s.bytes >= self.limits.segment_bytes && s.last >= s.base);
        if full {
            self.roll()?;
        }
        let unwritten = std::mem::take(&mut self.unwritten);
        let segment = self.segments.last_mut().ok_or_else(no_segment)?;
        let start = segment.bytes;
        if let Err(error) = segment.file.write_all(&unwritten) {
            // Nothing of these is counted as in the file (the tail there is torn, and
            // recovery cuts it at the next start).
            self.unwritten_records.clear();
            return Err(error);
        }
        let mut position = start;
        for (offset, length, timestamp_ms) in self.unwritten_records.drain(..) {
            segment.note(offset, timestamp_ms, position, length);
            position += length as u64;
        }
        segment.bytes += unwritten.len() as u64;
        self.unsynced = true;
        let mut unwritten = unwritten;
        unwritten.clear();
        if unwritten.capacity() <= READ_BLOCK_BYTES {
            self.unwritten = unwritten;
        }
        Ok(())
    }

    /// Forces what was written onto the disk (fsync); from here a crash of the machine loses
    /// none of it either. Returns false when there was nothing to sync.
    pub fn sync(&mut self) -> io::Result<bool> {
        if !self.unsynced {
            return Ok(false);
        }
        if let Some(segment) = self.segments.last() {
            segment.file.sync_data()?;
        }
        self.unsynced = false;
        Ok(true)
    }

    /// Closes the newest segment (writing its index) and starts a new one.
    fn roll(&mut self) -> io::Result<()> {
        if let Some(segment) = self.segments.last() {
            segment.file.sync_data()?;
            write_index(&segment_path(&self.dir, segment.base, "index"), segment)?;
        }
        let fresh = create_segment(&self.dir, self.next_offset_written())?;
        self.segments.push(fresh);
        Ok(())
    }

    /// The offset after the last record in a file.
    fn next_offset_written(&self) -> u64 {
        self.segments.last().map_or(1, |segment| segment.last + 1)
    }

    /// Deletes whole segments past the retention limits; returns how many.
    pub fn enforce_retention(&mut self, now_ms: u64) -> io::Result<usize> {
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let over_bytes = self.bytes() > self.limits.retention_bytes;
            let too_old = now_ms.saturating_sub(oldest.newest_ms) > self.limits.retention_ms;
            if !over_bytes && !too_old {
                break;
            }
            let base = oldest.base;
            fs::remove_file(segment_path(&self.dir, base, "log"))?;
            match fs::remove_file(segment_path(&self.dir, base, "index")) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            self.segments.remove(0);
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Reads records from `from` up to `to` (inclusive, and written), at most about
    /// `max_bytes` of them (always at least one if any is there), into `out`.
    pub fn read(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
        out: &mut Vec<Record>,
    ) -> io::Result<()> {
        let from = from.max(self.first_offset());
        let mut taken = 0;
        let mut next = from;
        let Some(mut index) = self
            .segments
            .iter()
            .rposition(|segment| segment.base <= next)
        else {
            return Ok(());
        };
        let mut block = Vec::new();
        while next <= to && taken < max_bytes && index < self.segments.len() {
            let segment = &self.segments[index];
            if next > segment.last {
                index += 1;
                continue;
            }
            let entry = segment.index.partition_point(|&(offset, _)| offset <= next);
            let mut position = if entry == 0 {
                0
            } else {
                segment.index[entry - 1].1
            };
            'segment: while position < segment.bytes && next <= to && taken < max_bytes {
                let want = READ_BLOCK_BYTES.min((segment.bytes - position) as usize);
                block.resize(want, 0);
                segment.file.read_exact_at(&mut block, position)?;
                let mut at = 0;
                loop {
                    match record::parse(&block[at..], self.limits.max_record_bytes) {
                        Parsed::Record(record, length) => {
                            at += length;
                            if record.offset < next {
                                continue;
                            }
                            if record.offset > to || taken >= max_bytes {
                                break 'segment;
                            }
                            taken += length;
                            next = record.offset + 1;
                            out.push(record);
                        }
                        Parsed::Incomplete if at > 0 => break,
                        Parsed::Incomplete => {
                            // One record larger than the block: read it whole.
                            let length = record_length(&block)
                                .min(self.limits.max_record_bytes + record::HEADER_BYTES);
                            if length <= block.len() || position + length as u64 > segment.bytes {
                                break 'segment;
                            }
                            block.resize(length, 0);
                            segment.file.read_exact_at(&mut block, position)?;
                            continue;
                        }
                        Parsed::Corrupt(reason) => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "segment {} at byte {}: {reason}",
                                    segment.base,
                                    position + at as u64
                                ),
                            ));
                        }
                    }
                }
                position += at as u64;
            }
            index += 1;
        }
        Ok(())
    }
}

fn record_length(bytes: &[u8]) -> usize {
    bytes.get(..4).map_or(0, |b| {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize + record::HEADER_BYTES
    })
}

fn no_segment() -> io::Error {
    io::Error::other("a topic log without a segment")
}

fn create_segment(dir: &Path, base: u64) -> io::Result<Segment> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(segment_path(dir, base, "log"))?;
    // The new name must survive a crash as well as what is written under it.
    File::open(dir)?.sync_all()?;
    Ok(Segment {
        base,
        last: base - 1,
        bytes: 0,
        newest_ms: 0,
        index: Vec::new(),
        since_index: 0,
        file,
    })
}

/// Reads a segment from its start, checking each record; fills its bounds and index. Returns
/// where and why it had to stop early, and whether the record there was whole (`true`: a
/// complete record is lost) or torn.
fn scan_segment(
    segment: &mut Segment,
    max_record_bytes: usize,
    recent: &mut impl FnMut(&Record),
    recent_since_ms: u64,
) -> io::Result<Option<(u64, &'static str, bool)>> {
    segment.index.clear();
    segment.since_index = 0;
    segment.last = segment.base - 1;
    let mut position = 0u64;
    let mut block = Vec::new();
    while position < segment.bytes {
        let want =
            ((segment.bytes - position) as usize).min(READ_BLOCK_BYTES.max(max_record_bytes + 64));
        block.resize(want, 0);
        segment.file.read_exact_at(&mut block, position)?;
        let mut at = 0;
        loop {
            match record::parse(&block[at..], max_record_bytes) {
                Parsed::Record(record, length) => {
                    if record.offset != segment.last + 1 {
                        return Ok(Some((
                            position + at as u64,
                            "an offset out of sequence",
                            true,
                        )));
                    }
                    segment.note(
                        record.offset,
                        record.timestamp_ms,
                        position + at as u64,
                        length,
                    );
                    if record.timestamp_ms >= recent_since_ms {
                        recent(&record);
                    }
                    at += length;
                }
                Parsed::Incomplete => {
                    if at == 0 {
                        // Not even one record fits in what is left of the file: a torn tail.
                        return Ok(Some((position, "a torn record at the end", false)));
                    }
                    break;
                }
                Parsed::Corrupt(reason) => return Ok(Some((position + at as u64, reason, true))),
            }
        }
        position += at as u64;
    }
    Ok(None)
}

/// The index file: `last offset, newest ms, bytes` then `(offset, position)` pairs, all u64 LE.
fn write_index(path: &Path, segment: &Segment) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(24 + 16 * segment.index.len());
    for value in [segment.last, segment.newest_ms, segment.bytes] {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    for &(offset, position) in &segment.index {
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&position.to_le_bytes());
    }
    fs::write(path, bytes)
}

/// Reads an index file into `segment`, refusing one that does not fit the segment.
fn read_index(path: &Path, segment: &mut Segment) -> io::Result<()> {
    let bytes = fs::read(path)?;
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "index does not fit its segment");
    if bytes.len() < 24 || (bytes.len() - 24) % 16 != 0 {
        return Err(invalid());
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let (last, newest_ms, length) = (word(0), word(8), word(16));
    if length != segment.bytes || last + 1 < segment.base {
        return Err(invalid());
    }
    let mut index = Vec::with_capacity((bytes.len() - 24) / 16);
    for at in (24..bytes.len()).step_by(16) {
        let (offset, position) = (word(at), word(at + 8));
        if offset < segment.base || offset > last || position >= length {
            return Err(invalid());
        }
        index.push((offset, position));
    }
    segment.last = last;
    segment.newest_ms = newest_ms;
    segment.index = index;
    Ok(())
}

fn write_epoch(dir: &Path, epoch: u64) -> io::Result<()> {
    let temporary = dir.join("EPOCH.new");
    let mut file = File::create(&temporary)?;
    file.write_all(format!("{epoch:016x}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join("EPOCH"))?;
    File::open(dir)?.sync_all()
}

/// A random 64-bit epoch, never 0.
pub(crate) fn random_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// A topic's history in memory: the newest messages, up to a count and a byte limit.
#[derive(Debug)]
pub struct MemoryLog {
    epoch: u64,
    records: VecDeque<Record>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
    next_offset: u64,
}

impl MemoryLog {
    /// An empty history with a fresh epoch.
    pub fn new(max_records: usize, max_bytes: usize) -> MemoryLog {
        MemoryLog {
            epoch: random_epoch(),
            records: VecDeque::new(),
            bytes: 0,
            max_records: max_records.max(1),
            max_bytes,
            next_offset: 1,
        }
    }

    /// The topic's epoch (made when the server started).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The offset of the newest message (0 when there is none yet).
    pub fn last_offset(&self) -> u64 {
        self.next_offset - 1
    }

    /// The oldest offset still held.
    pub fn first_offset(&self) -> u64 {
        self.records.front().map_or(self.next_offset, |r| r.offset)
    }

    /// Bytes of payload held.
    pub fn bytes(&self) -> u64 {
        self.bytes as u64
    }

    /// Appends a message, giving it the next offset and forgetting the oldest past the
    /// limits; returns its offset.
    pub fn append(&mut self, mut record: Record) -> u64 {
        record.offset = self.next_offset;
        self.next_offset += 1;
        let offset = record.offset;
        self.bytes += record.data.len();
        self.records.push_back(record);
        while self.records.len() > self.max_records
            || (self.bytes > self.max_bytes && self.records.len() > 1)
        {
            if let Some(old) = self.records.pop_front() {
                self.bytes -= old.data.len();
            }
        }
        offset
    }

    /// Copies messages from `from` up to `to`, at most about `max_bytes`, into `out`.
    pub fn read(&self, from: u64, to: u64, max_bytes: usize, out: &mut Vec<Record>) {
        let start = from.saturating_sub(self.first_offset()) as usize;
        let mut taken = 0;
        for record in self.records.iter().skip(start) {
            if record.offset > to || (taken >= max_bytes && taken > 0) {
                break;
            }
            taken += record.framed_len();
            out.push(record.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LogLimits {
        LogLimits {
            segment_bytes: 256,
            retention_bytes: u64::MAX,
            retention_ms: u64::MAX,
            max_record_bytes: 1 << 16,
        }
    }

    fn temporary_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("socketserver-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A record to append (the log gives it its offset).
    fn record(timestamp_ms: u64, id: Option<String>, data: impl Into<String>) -> Record {
        Record {
            offset: 0,
            timestamp_ms,
            id: id.map(Into::into),
            data: data.into().into_bytes().into(),
            binary: false,
        }
    }

    fn fill(log: &mut DiskLog, count: u64) {
        for n in 0..count {
            log.append(record(
                1000 + n,
                Some(format!("id-{n}")),
                format!("message {n}"),
            ));
            log.write().expect("write");
        }
    }

    #[test]
    fn reads_find_every_offset_across_segments_and_reopen_keeps_them() {
        let dir = temporary_dir("reads");
        let (mut log, recovery) = DiskLog::open(&dir, limits(), u64::MAX, |_| {}).expect("open");
        assert_eq!(recovery, Recovery::default());
        fill(&mut log, 100);
        assert!(log.segments.len() > 5, "small segments roll");
        let epoch = log.epoch();
        for from in 1..=100 {
            let mut out = Vec::new();
            log.read(from, 100, 1 << 20, &mut out).expect("read");
            let offsets: Vec<u64> = out.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (from..=100).collect::<Vec<_>>());
        }
        drop(log);
        let (log, recovery) = DiskLog::open(&dir, limits(), 0, |_| {}).expect("reopen");
        assert_eq!(recovery, Recovery::default());
        assert_eq!(
            (log.epoch(), log.last_offset(), log.first_offset()),
            (epoch, 100, 1)
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_cut_and_keeps_the_epoch_a_flipped_byte_makes_a_new_one() {
        let dir = temporary_dir("torn");
        let (mut log, _) = DiskLog::open(&dir, limits(), u64::MAX, |_| {}).expect("open");
        fill(&mut log, 3);
        let epoch = log.epoch();
        let path = segment_path(&dir, 1, "log");
        drop(log);
        let length = fs::metadata(&path).expect("segment").len();
        let file = OpenOptions::new().write(true).open(&path).expect("segment");
        file.set_len(length - 3).expect("truncate");
        let (log, recovery) = DiskLog::open(&dir, limits(), u64::MAX, |_| {}).expect("reopen");
        assert_eq!(log.last_offset(), 2);
        assert!(!recovery.new_epoch && recovery.truncated_bytes > 0);
        assert_eq!(log.epoch(), epoch);
        drop(log);
        let mut bytes = fs::read(&path).expect("segment");
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&path, bytes).expect("damage");
        let (log, recovery) = DiskLog::open(&dir, limits(), u64::MAX, |_| {}).expect("reopen");
        assert_eq!(log.last_offset(), 1);
        assert!(recovery.new_epoch);
        assert_ne!(log.epoch(), epoch);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_deletes_whole_old_segments_only() {
        let dir = temporary_dir("retention");
        let (mut log, _) = DiskLog::open(
            &dir,
            LogLimits {
                retention_bytes: 600,
                ..limits()
            },
            u64::MAX,
            |_| {},
        )
        .expect("open");
        fill(&mut log, 60);
        let deleted = log.enforce_retention(2000).expect("retention");
        assert!(deleted > 0);
        assert!(log.bytes() <= 600 + 256 + 64);
        let first = log.first_offset();
        assert!(first > 1);
        let mut out = Vec::new();
        log.read(1, 60, 1 << 20, &mut out).expect("read");
        assert_eq!(out.first().map(|r| r.offset), Some(first));
        assert_eq!(out.len() as u64, 60 - first + 1);
        // By age: every segment whose newest record is too old goes, but the one written to.
        let mut aged = LogLimits {
            retention_ms: 1000,
            ..limits()
        };
        aged.retention_bytes = u64::MAX;
        log.limits = aged;
        log.enforce_retention(1000 + 59 + 1001).expect("retention");
        assert_eq!(log.segments.len(), 1);
        assert_eq!(log.last_offset(), 60);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_larger_than_a_read_block_reads_back_whole() {
        let dir = temporary_dir("large");
        let big = LogLimits {
            segment_bytes: 1 << 20,
            max_record_bytes: 1 << 20,
            ..limits()
        };
        let (mut log, _) = DiskLog::open(&dir, big, u64::MAX, |_| {}).expect("open");
        let large = vec![7u8; READ_BLOCK_BYTES + 1000];
        log.append(record(1, None, "small"));
        log.append(Record {
            data: large.clone().into(),
            ..record(2, None, "")
        });
        log.append(record(3, None, "after"));
        log.write().expect("write");
        let mut out = Vec::new();
        log.read(1, 3, usize::MAX, &mut out).expect("read");
        let lengths: Vec<usize> = out.iter().map(|r| r.data.len()).collect();
        assert_eq!(lengths, vec![5, large.len(), 5]);
        drop(log);
        let (log, recovery) = DiskLog::open(&dir, big, 0, |_| {}).expect("reopen");
        assert_eq!((log.last_offset(), recovery), (3, Recovery::default()));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_history_keeps_the_newest_within_its_limits() {
        let mut log = MemoryLog::new(3, usize::MAX);
        for n in 0..5u8 {
            log.append(Record {
                data: vec![n].into(),
                ..record(0, None, "")
            });
        }
        assert_eq!((log.first_offset(), log.last_offset()), (3, 5));
        let mut out = Vec::new();
        log.read(4, 5, 1 << 20, &mut out);
        assert_eq!(out.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![4, 5]);
    }
}
