//! How many connections a server holds at once, counted across every event loop of the server
//! and across the worker processes of a prefork server: the one count that
//! [`Config::max_connections`](crate::Config::max_connections) is checked against.
//!
//! * The loops of one process (one reactor, or several with
//!   [`Server::serve_reactors`](crate::Server::serve_reactors)) share one atomic counter, and a
//!   connection is admitted only by a compare-and-swap that keeps it at most the limit: exact.
//! * The workers of a prefork server share a table in memory mapped by every process (a
//!   `memfd` on Linux, an unlinked temporary file elsewhere) that the supervisor creates and
//!   hands to each worker like its listening socket. Each worker counts its own connections
//!   in its own slot, and admits one only while the slots sum to less than the limit. A worker
//!   that dies cannot give its connections back, so the supervisor zeroes its slot (the kernel
//!   closed them) before starting the replacement. Two workers admitting in the same instant
//!   can both pass the check: the cap may be passed by at most one connection per other
//!   worker, for as long as those connections last.
//!
//! A blocking driver counts with its own open-connections gauge, which already covers the
//! whole server (one process, one set of counters).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The admission count of one server, shared by its loops.
#[derive(Clone)]
pub(crate) struct Admission {
    /// The most connections held at once.
    max: usize,
    count: Count,
}

#[derive(Clone)]
enum Count {
    /// Connections held by this process's loops.
    Local(Arc<AtomicUsize>),
    /// A prefork worker: its own slot in a table every worker of the server shares.
    Shared {
        table: Arc<SharedTable>,
        slot: usize,
    },
}

impl Admission {
    /// A count for the loops of one process.
    pub(crate) fn local(max: usize) -> Admission {
        Admission {
            max,
            count: Count::Local(Arc::default()),
        }
    }

    /// A count kept in `slot` of a table shared with the other workers of a prefork server.
    pub(crate) fn shared(max: usize, table: SharedTable, slot: usize) -> io::Result<Admission> {
        if slot >= table.slots().len() {
            return Err(io::Error::other(format!(
                "worker slot {slot} is outside a table of {}",
                table.slots().len()
            )));
        }
        Ok(Admission {
            max,
            count: Count::Shared {
                table: Arc::new(table),
                slot,
            },
        })
    }

    /// The same count, with a new limit (for a server whose configuration changed before it
    /// started serving).
    pub(crate) fn with_max(mut self, max: usize) -> Admission {
        self.max = max;
        self
    }

    /// Takes a place for one more connection, or answers `false` when the server is full.
    pub(crate) fn try_admit(&self) -> bool {
        match &self.count {
            Count::Local(held) => held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    (held < self.max).then_some(held + 1)
                })
                .is_ok(),
            Count::Shared { table, slot } => {
                let held: u64 = table
                    .slots()
                    .iter()
                    .map(|count| count.load(Ordering::Acquire))
                    .sum();
                if held >= self.max as u64 {
                    return false;
                }
                table.slots()[*slot].fetch_add(1, Ordering::AcqRel);
                true
            }
        }
    }

    /// Gives back the place of a connection that closed.
    pub(crate) fn release(&self) {
        match &self.count {
            Count::Local(held) => {
                let _ = held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    held.checked_sub(1)
                });
            }
            Count::Shared { table, slot } => {
                let _ = table.slots()[*slot].fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |held| held.checked_sub(1),
                );
            }
        }
    }
}

/// A table of connection counts, one slot per prefork worker, in memory shared by every
/// process that maps it.
pub struct SharedTable {
    /// The mapping: `len` slots of eight bytes, page-aligned.
    base: std::ptr::NonNull<AtomicU64>,
    len: usize,
    /// The file behind the mapping, passed on to the workers.
    file: OwnedFd,
}

// SAFETY: the table is only ever touched through `AtomicU64`s, which are safe to share
// between threads (and, in shared memory, between processes).
unsafe impl Send for SharedTable {}
// SAFETY: as above: every access is atomic.
unsafe impl Sync for SharedTable {}

impl SharedTable {
    /// A new table of `slots` zeroed counts (1..=1024).
    pub fn create(slots: usize) -> io::Result<SharedTable> {
        if !(1..=1024).contains(&slots) {
            return Err(io::Error::other(format!(
                "a table of {slots} slots is outside 1..=1024"
            )));
        }
        let file = anonymous_file()?;
        let bytes = slots * std::mem::size_of::<AtomicU64>();
        let length = libc::off_t::try_from(bytes).map_err(io::Error::other)?;
        // SAFETY: ftruncate on a descriptor this function owns; the new bytes read as zero.
        if unsafe { libc::ftruncate(file.as_raw_fd(), length) } != 0 {
            return Err(io::Error::last_os_error());
        }
        SharedTable::map(file)
    }

    /// Maps the table behind `file` (a descriptor inherited from the process that created it).
    pub fn open(file: OwnedFd) -> io::Result<SharedTable> {
        SharedTable::map(file)
    }

    fn map(file: OwnedFd) -> io::Result<SharedTable> {
        // SAFETY: a zeroed stat is a valid out-parameter; fstat writes at most its size.
        let mut status: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `file` is open and `status` is a live, writable stat.
        if unsafe { libc::fstat(file.as_raw_fd(), &mut status) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = usize::try_from(status.st_size).map_err(io::Error::other)?;
        let len = bytes / std::mem::size_of::<AtomicU64>();
        if len == 0 || len > 1024 || bytes % std::mem::size_of::<AtomicU64>() != 0 {
            return Err(io::Error::other(format!(
                "a connection table of {bytes} bytes"
            )));
        }
        // SAFETY: a fresh shared mapping of the whole file; the kernel picks the address.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(address.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap gave a null address"))?;
        Ok(SharedTable { base, len, file })
    }

    /// The counts, one per worker slot.
    pub fn slots(&self) -> &[AtomicU64] {
        // SAFETY: `base` points at `len` page-aligned (so 8-byte aligned) u64s mapped for as
        // long as `self` lives, and AtomicU64 has the layout of u64.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// Zeroes the count of a worker that is gone: the kernel closed its connections.
    pub fn forget(&self, slot: usize) {
        if let Some(count) = self.slots().get(slot) {
            count.store(0, Ordering::Release);
        }
    }

    /// The descriptor of the file behind the table, for a worker to inherit.
    pub fn file(&self) -> &OwnedFd {
        &self.file
    }
}

impl Drop for SharedTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no slice of it outlives `self`.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.len * std::mem::size_of::<AtomicU64>(),
            )
        };
    }
}

/// A file with no name, closed on exec unless a child is told to keep it.
#[cfg(target_os = "linux")]
fn anonymous_file() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"socketserver-connections".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A file with no name, closed on exec unless a child is told to keep it.
#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> io::Result<OwnedFd> {
    let path = std::env::temp_dir().join(format!(
        "socketserver-connections-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_count_admits_up_to_the_limit_and_takes_places_back() {
        let admission = Admission::local(2);
        let other_loop = admission.clone();
        assert!(admission.try_admit());
        assert!(other_loop.try_admit());
        assert!(
            !admission.try_admit(),
            "the limit is the server's, not a loop's"
        );
        other_loop.release();
        assert!(admission.try_admit());
    }

    #[test]
    fn shared_slots_sum_across_workers_and_a_forgotten_worker_frees_its_places() {
        let table = SharedTable::create(2).expect("table");
        let fd = table.file().try_clone().expect("dup");
        let first = Admission::shared(3, table, 0).expect("slot 0");
        let second = Admission::shared(3, SharedTable::open(fd).expect("map"), 1).expect("slot 1");
        assert!(first.try_admit() && first.try_admit() && second.try_admit());
        assert!(!second.try_admit() && !first.try_admit());
        let Count::Shared { table, .. } = &first.count else {
            panic!("a shared count");
        };
        table.forget(0);
        assert!(
            second.try_admit(),
            "the dead worker's places are free again"
        );
        second.release();
        assert_eq!(table.slots()[1].load(Ordering::Acquire), 1);
    }
}
