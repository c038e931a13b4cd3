//! Per-connection byte buffers: unconsumed input (`ReadBuf`) and pending output (`WriteBuf`).
//!
//! Both exist only while they hold bytes. The reactor reads into one shared chunk and feeds the
//! protocol straight from it; only what the protocol leaves unconsumed (half a line, half a frame)
//! is copied into the connection's `ReadBuf`. Output goes straight to the socket when the socket
//! takes it; only what it refuses is kept in the connection's `WriteBuf`. An idle connection
//! therefore holds no buffer memory at all.
//!
//! `WriteBuf` is a queue of chunks written with one vectored `write` (`writev`), so a protocol that
//! hands over an owned body (`Vec<u8>`) after a small header costs no copy and one system call.
//! A chunk may also be *shared* ([`SharedBytes`]): one encoded frame that a fan-out puts in the
//! queue of every subscriber, each holding a reference count, none a copy.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Bytes shared by many output queues (one encoded frame fanned out to its subscribers); a
/// queue holds a reference, and the bytes are freed when the last queue has written them.
pub type SharedBytes = Arc<[u8]>;

/// One chunk of pending output.
#[derive(Debug)]
enum Chunk {
    /// Bytes this queue owns; small writes coalesce into the last one.
    Owned(Vec<u8>),
    /// Bytes shared with other queues; never appended to.
    Shared(SharedBytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(bytes) => bytes,
            Chunk::Shared(bytes) => bytes,
        }
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk's storage, when it is owned and small enough to take more bytes.
    fn owned_under(&mut self, limit: usize) -> Option<&mut Vec<u8>> {
        match self {
            Chunk::Owned(bytes) if bytes.is_empty() || bytes.len() < limit => Some(bytes),
            _ => None,
        }
    }
}

/// Input a protocol has not consumed yet: the bytes `data[start..]`.
#[derive(Debug, Default)]
pub struct ReadBuf {
    /// Storage; bytes before `start` are consumed and reclaimed lazily.
    data: Vec<u8>,
    /// Index of the first unconsumed byte; always `<= data.len()`.
    start: usize,
}

impl ReadBuf {
    /// A buffer holding a copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        ReadBuf {
            data: bytes.to_vec(),
            start: 0,
        }
    }

    /// The unconsumed bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Number of unconsumed bytes.
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes` after the unconsumed ones, first sliding those to the front when the
    /// consumed prefix is at least as large as what remains (so each byte moves O(1) times).
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.len() {
            self.data.drain(..self.start);
            self.start = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// Marks the first `count` unconsumed bytes as consumed.
    ///
    /// # Panics
    /// If `count` exceeds [`ReadBuf::len`]: a protocol claimed bytes it was never given.
    pub fn consume(&mut self, count: usize) {
        assert!(
            count <= self.len(),
            "consumed {count} of {} buffered bytes",
            self.len()
        );
        self.start += count;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }
}

/// Output waiting for the socket: a queue of chunks, the first partly written.
#[derive(Debug, Default)]
pub struct WriteBuf {
    /// Chunks in send order; none is empty except possibly a lone owned spare kept for reuse.
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Unwritten bytes across all chunks.
    len: usize,
}

/// Small writes are appended to the last chunk while it stays under this size; larger ones get a
/// chunk of their own, so a chunk never grows past what one `writev` entry usefully carries.
const COALESCE_LIMIT: usize = 64 * 1024;
/// At most this many chunks go into one `writev` call (well under every platform's IOV_MAX).
const MAX_IOVECS: usize = 64;

impl WriteBuf {
    /// Unwritten bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a copy of `bytes`, appending to the last chunk when it is small.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.chunks.back_mut() {
            Some(Chunk::Owned(last))
                if last.is_empty()
                    || last.len() + bytes.len() <= COALESCE_LIMIT.max(last.capacity()) =>
            {
                last.extend_from_slice(bytes)
            }
            _ => self.chunks.push_back(Chunk::Owned(bytes.to_vec())),
        }
        self.len += bytes.len();
    }

    /// Appends what `write` adds to a `Vec` in place: to the last chunk while it is small (or
    /// the spare), else to a new chunk. `write` must only append.
    pub(crate) fn append_with<R>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let reused = self
            .chunks
            .back_mut()
            .and_then(|last| last.owned_under(COALESCE_LIMIT));
        if let Some(last) = reused {
            let before = last.len();
            let result = write(last);
            debug_assert!(last.len() >= before, "append_with must only append");
            self.len += last.len().saturating_sub(before);
            return result;
        }
        let mut chunk = Vec::new();
        let result = write(&mut chunk);
        self.len += chunk.len();
        // An empty chunk may stay only as the lone spare.
        if !chunk.is_empty() || self.chunks.is_empty() {
            self.chunks.push_back(Chunk::Owned(chunk));
        }
        result
    }

    /// Queues an owned chunk without copying it.
    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.push_chunk(Chunk::Owned(bytes));
    }

    /// Queues a reference to `bytes`, shared with every other queue that holds them: no copy.
    pub fn push_shared(&mut self, bytes: &SharedBytes) {
        if bytes.is_empty() {
            return;
        }
        self.push_chunk(Chunk::Shared(bytes.clone()));
    }

    fn push_chunk(&mut self, chunk: Chunk) {
        self.len += chunk.len();
        // Drop an empty spare first so the "no empty chunk but a lone spare" rule holds.
        if self.chunks.len() == 1 && self.chunks[0].is_empty() {
            self.chunks.clear();
        }
        self.chunks.push_back(chunk);
    }

    /// How many queued chunks share their bytes with other queues (for tests of fan-out).
    pub fn shared_chunks(&self) -> usize {
        self.chunks
            .iter()
            .filter(|chunk| matches!(chunk, Chunk::Shared(_)))
            .count()
    }

    /// Moves every chunk of `other` to the end of this buffer (no byte copies), leaving `other`
    /// empty.
    pub fn append(&mut self, other: &mut WriteBuf) {
        if other.is_empty() {
            return;
        }
        if other.head > 0 {
            if let Some(front) = other.chunks.front_mut() {
                *front = match front {
                    Chunk::Owned(bytes) => {
                        bytes.drain(..other.head);
                        Chunk::Owned(std::mem::take(bytes))
                    }
                    // A shared chunk is never changed in place: its unwritten tail is copied.
                    Chunk::Shared(bytes) => Chunk::Owned(bytes[other.head..].to_vec()),
                };
            }
            other.head = 0;
        }
        for chunk in other.chunks.drain(..) {
            if !chunk.is_empty() {
                self.push_chunk(chunk);
            }
        }
        other.len = 0;
    }

    /// Writes as much as `sink` takes in one vectored call; returns the bytes written.
    pub fn write_to(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        if self.chunks.len() == 1 {
            // The usual case (one coalesced chunk): a plain write, no vector to build.
            let written = sink.write(&self.chunks[0].bytes()[self.head..])?;
            self.advance(written);
            return Ok(written);
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let bytes = if i == 0 {
                &chunk.bytes()[self.head..]
            } else {
                chunk.bytes()
            };
            slices[count] = IoSlice::new(bytes);
            count += 1;
        }
        let written = sink.write_vectored(&slices[..count])?;
        self.advance(written);
        Ok(written)
    }

    /// Writes until the buffer is empty or `sink` would block (`WouldBlock` is not an error here:
    /// the caller sees what is left with [`WriteBuf::len`]). Retries on EINTR; a sink that takes
    /// nothing is a `WriteZero` error. Returns the bytes written.
    pub fn write_until_blocked(&mut self, sink: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        while !self.is_empty() {
            match self.write_to(sink) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(written)
    }

    /// Drops the first `count` unwritten bytes. When that empties the buffer, the last chunk is
    /// kept (cleared) so a buffer that is filled and drained over and over reuses its storage.
    pub fn advance(&mut self, mut count: usize) {
        assert!(
            count <= self.len,
            "advanced {count} of {} pending bytes",
            self.len
        );
        self.len -= count;
        while count > 0 {
            let front_left = self.chunks[0].len() - self.head;
            if count < front_left {
                self.head += count;
                return;
            }
            count -= front_left;
            self.head = 0;
            let spent = self.chunks.pop_front();
            if self.chunks.is_empty() {
                // Kept for reuse, unless a large answer made it large (or it was shared).
                if let Some(Chunk::Owned(mut spare)) = spent {
                    if spare.capacity() <= COALESCE_LIMIT {
                        spare.clear();
                        self.chunks.push_back(Chunk::Owned(spare));
                    }
                }
            }
        }
    }

    /// Frees all storage (used when a connection's buffer empties, so idle connections hold none).
    pub fn release(&mut self) {
        *self = WriteBuf::default();
    }

    /// Clears pending bytes but keeps the last chunk's storage for reuse.
    pub fn clear(&mut self) {
        let len = self.len;
        self.advance(len);
    }

    /// The unwritten bytes as one vector (for tests and the protocol `Session`).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for (i, chunk) in self.chunks.iter().enumerate() {
            let bytes = chunk.bytes();
            out.extend_from_slice(if i == 0 { &bytes[self.head..] } else { bytes });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `limit` bytes per call, like a nearly full socket.
    struct Trickle {
        taken: Vec<u8>,
        limit: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let n = bytes.len().min(self.limit);
            self.taken.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn read_buf_consumes_and_compacts() {
        let mut buf = ReadBuf::from_slice(b"hello ");
        buf.consume(3);
        assert_eq!(buf.as_slice(), b"lo ");
        buf.extend(b"world");
        assert_eq!(buf.as_slice(), b"lo world");
        buf.consume(8);
        assert!(buf.is_empty());
    }

    #[test]
    fn write_buf_keeps_order_across_partial_writes() {
        let mut buf = WriteBuf::default();
        buf.push(b"abc");
        buf.push_owned(b"defgh".to_vec());
        buf.push(b"ij");
        let mut sink = Trickle {
            taken: Vec::new(),
            limit: 2,
        };
        while !buf.is_empty() {
            buf.write_to(&mut sink).expect("sink never fails");
        }
        assert_eq!(sink.taken, b"abcdefghij");
    }

    #[test]
    fn append_moves_partly_written_chunks() {
        let mut scratch = WriteBuf::default();
        scratch.push(b"0123456789");
        scratch.advance(4);
        let mut pending = WriteBuf::default();
        pending.push(b"ab");
        pending.append(&mut scratch);
        assert!(scratch.is_empty());
        assert_eq!(pending.to_vec(), b"ab456789");
        assert_eq!(pending.len(), 8);
    }

    #[test]
    fn drained_buffer_reuses_its_storage() {
        let mut buf = WriteBuf::default();
        buf.push(&[7; 100]);
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(buf.chunks.len(), 1);
        assert!(matches!(&buf.chunks[0], Chunk::Owned(spare) if spare.capacity() >= 100));
    }

    #[test]
    fn append_with_writes_in_place_in_order_and_reuses_the_spare() {
        let mut buf = WriteBuf::default();
        buf.push(b"ab");
        buf.append_with(|out| out.extend_from_slice(b"cd"));
        assert_eq!((buf.to_vec(), buf.len()), (b"abcd".to_vec(), 4));
        buf.append_with(|_| ());
        assert_eq!(buf.chunks.len(), 1, "nothing appended: no chunk added");
        buf.clear();
        let spare = buf.chunks[0].bytes().as_ptr();
        buf.append_with(|out| out.extend_from_slice(b"ef"));
        assert_eq!(
            buf.chunks[0].bytes().as_ptr(),
            spare,
            "the spare's storage is reused"
        );
        assert_eq!(buf.to_vec(), b"ef");
        // Behind a large chunk, a new chunk takes the bytes.
        buf.push_owned(vec![b'x'; COALESCE_LIMIT]);
        buf.append_with(|out| out.extend_from_slice(b"gh"));
        assert_eq!(buf.chunks.len(), 3);
        assert!(buf.to_vec().ends_with(b"xgh"));
        // A large answer's storage is not kept as the spare.
        let mut large = WriteBuf::default();
        large.push_owned(vec![b'x'; COALESCE_LIMIT + 1]);
        large.clear();
        assert!(large.chunks.is_empty(), "a large chunk is freed, not kept");
    }

    #[test]
    fn shared_chunks_are_referenced_not_copied_and_never_coalesced_into() {
        let frame: SharedBytes = Arc::from(&b"frame"[..]);
        let mut first = WriteBuf::default();
        let mut second = WriteBuf::default();
        first.push(b"<");
        first.push_shared(&frame);
        first.push(b">");
        second.push_shared(&frame);
        assert_eq!(Arc::strong_count(&frame), 3, "each queue holds a reference");
        assert_eq!(first.shared_chunks(), 1);
        assert_eq!(
            first.to_vec(),
            b"<frame>",
            "the '>' did not go into the shared chunk"
        );
        assert_eq!(&*frame, b"frame");
        let mut sink = Trickle {
            taken: Vec::new(),
            limit: 3,
        };
        while !first.is_empty() {
            first.write_to(&mut sink).expect("sink never fails");
        }
        assert_eq!(sink.taken, b"<frame>");
        assert_eq!(
            Arc::strong_count(&frame),
            2,
            "a written chunk lets go of its bytes"
        );
        // A partly written shared chunk moved into another queue keeps its unwritten tail.
        second.advance(2);
        let mut pending = WriteBuf::default();
        pending.append(&mut second);
        assert_eq!(pending.to_vec(), b"ame");
    }
}
