//! permessage-deflate (RFC 7692): negotiating it in the handshake, compressing a message once,
//! and inflating one with its size bounded.
//!
//! # What a connection costs
//!
//! By default the server answers every offer with `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 lets a server add both whatever the client offered;
//! browsers accept them): each message is compressed and inflated on its own. Then no
//! connection keeps a compressor or an inflater between messages: the reactor thread has one of
//! each, reset for every message, and an idle connection with deflate negotiated holds no
//! compression state at all (a message that arrives in pieces borrows an inflater until it is
//! complete). A message compressed without context can also be shared byte for byte by every
//! subscriber that negotiated the same window.
//!
//! With [`DeflateOptions::client_context_takeover`] the client may keep its context (better
//! ratios for similar messages) and the connection keeps an inflater for its life: measured at
//! about 22 KiB per connection (zlib-rs; a smaller client window saves little, since most of it
//! is the inflater's own state). With [`DeflateOptions::server_context_takeover`] it also keeps
//! a compressor: about 313 KiB per connection (zlib's deflate state at window 15 and memory
//! level 8). For comparison, an idle WebSocket without compression state costs about 150 bytes.
//!
//! # Limits
//!
//! A message is inflated into a buffer that may not grow past the route's message limit: a
//! decompression bomb is stopped at the limit (close code 1009), not after a gigabyte. A server
//! window of 8 bits cannot be honoured (zlib's raw deflate has no 8-bit window), so an offer
//! that insists on one is declined and the connection runs uncompressed.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::close;
use super::frame::Violation;

/// How a route offers permessage-deflate; see the [module documentation](self) for what each
/// choice costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateOptions {
    /// Messages shorter than this are sent uncompressed: a few bytes gain nothing. Default 64.
    pub threshold: usize,
    /// Keep the server's compression context from message to message (a compressor per
    /// connection). Default false.
    pub server_context_takeover: bool,
    /// Let the client keep its context (an inflater per connection). Default false.
    pub client_context_takeover: bool,
    /// The largest window the server compresses with, 9..=15. Default 15.
    pub server_max_window_bits: u8,
    /// The largest window asked of a client that lets the server choose one, 8..=15
    /// (matters only with client context takeover). Default 15.
    pub client_max_window_bits: u8,
    /// zlib compression level, 0..=9. Default 1 (fast: most of the gain for chat-like text).
    pub level: u32,
}

impl Default for DeflateOptions {
    fn default() -> Self {
        DeflateOptions {
            threshold: 64,
            server_context_takeover: false,
            client_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 1,
        }
    }
}

impl DeflateOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(9..=15).contains(&self.server_max_window_bits) {
            return Err("deflate server_max_window_bits is outside 9..=15".into());
        }
        if !(8..=15).contains(&self.client_max_window_bits) {
            return Err("deflate client_max_window_bits is outside 8..=15".into());
        }
        if self.level > 9 {
            return Err("deflate level is outside 0..=9".into());
        }
        Ok(())
    }
}

/// What the handshake agreed for one connection (four bytes, kept by the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The server compresses every message on its own.
    pub server_no_context_takeover: bool,
    /// The client compresses every message on its own.
    pub client_no_context_takeover: bool,
    /// The window the server compresses with.
    pub server_window_bits: u8,
    /// The window the client compresses with (at most).
    pub client_window_bits: u8,
}

/// One parsed offer's parameters.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// Offered, with its value if it had one.
    client_max_window_bits: Option<Option<u8>>,
}

/// Picks the first permessage-deflate offer of `header_values` (the `Sec-WebSocket-Extensions`
/// values, in order) that `options` can accept, and returns what was agreed and the response
/// header's value. Offers of other extensions, and offers with unknown, repeated or invalid
/// parameters, are passed over (RFC 7692, section 5).
pub fn negotiate<'a>(
    header_values: impl IntoIterator<Item = &'a [u8]>,
    options: &DeflateOptions,
) -> Option<(Agreed, String)> {
    for value in header_values {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        for extension in text.split(',') {
            let mut parts = extension.split(';').map(str::trim);
            if !parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
            {
                continue;
            }
            let Some(offer) = parse_offer(parts) else {
                continue;
            };
            if let Some(accepted) = accept(&offer, options) {
                return Some(accepted);
            }
        }
    }
    None
}

fn parse_offer<'a>(parameters: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for parameter in parameters.filter(|parameter| !parameter.is_empty()) {
        let (name, value) = match parameter.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (parameter, None),
        };
        let bits = |value: Option<&str>| -> Option<u8> {
            let value = value?;
            if value.len() > 2 || !value.bytes().all(|byte| byte.is_ascii_digit()) {
                return None;
            }
            value.parse().ok().filter(|bits| (8..=15).contains(bits))
        };
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover"
                if value.is_none() && !offer.server_no_context_takeover =>
            {
                offer.server_no_context_takeover = true
            }
            "client_no_context_takeover"
                if value.is_none() && !offer.client_no_context_takeover =>
            {
                offer.client_no_context_takeover = true
            }
            "server_max_window_bits" if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(bits(value)?)
            }
            "client_max_window_bits" if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match value {
                    Some(_) => Some(bits(value)?),
                    None => None,
                })
            }
            // Unknown, repeated or malformed: this offer is declined.
            _ => return None,
        }
    }
    Some(offer)
}

fn accept(offer: &Offer, options: &DeflateOptions) -> Option<(Agreed, String)> {
    let server_window_bits = match offer.server_max_window_bits {
        // zlib cannot compress raw deflate within an 8-bit window.
        Some(8) => return None,
        Some(bits) => bits.min(options.server_max_window_bits),
        None => options.server_max_window_bits,
    };
    let server_no_context_takeover =
        offer.server_no_context_takeover || !options.server_context_takeover;
    let client_no_context_takeover =
        offer.client_no_context_takeover || !options.client_context_takeover;
    let client_window_bits = match offer.client_max_window_bits {
        Some(offered) => offered.unwrap_or(15).min(options.client_max_window_bits),
        None => 15,
    };
    let mut response = String::from("permessage-deflate");
    if server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if server_window_bits < 15 || offer.server_max_window_bits.is_some() {
        response.push_str(&format!("; server_max_window_bits={server_window_bits}"));
    }
    // Only a client that offered the parameter may be told a window (RFC 7692, 7.1.2.2).
    if offer.client_max_window_bits.is_some() && !client_no_context_takeover {
        response.push_str(&format!("; client_max_window_bits={client_window_bits}"));
    }
    let agreed = Agreed {
        server_no_context_takeover,
        client_no_context_takeover,
        server_window_bits,
        client_window_bits,
    };
    Some((agreed, response))
}

/// The four bytes a sync flush ends with, which a compressed message leaves off and the
/// receiver appends again (RFC 7692, section 7.2.1).
const SYNC_TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

thread_local! {
    /// Compressors for messages compressed on their own, by (level, window bits): a reactor
    /// thread keeps a few, whatever its number of connections.
    static COMPRESSORS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    /// Inflaters for messages inflated on their own, lent to a message until it is complete.
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

/// Inflaters kept per thread between messages.
const SPARE_INFLATERS: usize = 4;

/// A compressor for a connection that keeps its context (else one is borrowed per message).
pub struct Compressor(Compress);

impl Compressor {
    /// A compressor for the agreed window, at `level`.
    pub fn new(level: u32, window_bits: u8) -> Compressor {
        Compressor(Compress::new_with_window_bits(
            Compression::new(level),
            false,
            window_bits,
        ))
    }
}

/// Compresses `payload` as one permessage-deflate message, appending it to `out` (the sync
/// trailer left off). With `kept`, the connection's own compressor continues its context;
/// otherwise a thread's compressor for `level` and `window_bits` is reset and used.
pub fn compress(
    payload: &[u8],
    out: &mut Vec<u8>,
    kept: Option<&mut Compressor>,
    level: u32,
    window_bits: u8,
) {
    match kept {
        Some(Compressor(compress)) => compress_with(compress, payload, out),
        None => COMPRESSORS.with_borrow_mut(|compressors| {
            let index = compressors
                .iter()
                .position(|(l, bits, _)| *l == level && *bits == window_bits)
                .unwrap_or_else(|| {
                    let fresh =
                        Compress::new_with_window_bits(Compression::new(level), false, window_bits);
                    compressors.push((level, window_bits, fresh));
                    compressors.len() - 1
                });
            let compress = &mut compressors[index].2;
            compress.reset();
            compress_with(compress, payload, out);
        }),
    }
}

fn compress_with(compress: &mut Compress, mut payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    loop {
        // Deflate's worst case is a few bytes per 16 KiB block over the input.
        out.reserve(payload.len() / 2 + 64);
        let before = compress.total_in();
        // Compressing into a Vec never fails for valid parameters; a failure leaves what was
        // written, which the receiver then cannot inflate (and closes with 1007).
        if compress
            .compress_vec(payload, out, FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        let used = (compress.total_in() - before) as usize;
        payload = &payload[used..];
        if payload.is_empty() && out.len() - start >= 4 && out.ends_with(&SYNC_TRAILER) {
            break;
        }
    }
    if out.ends_with(&SYNC_TRAILER) {
        out.truncate(out.len() - 4);
    }
}

/// An inflater for one incoming message (or, with client context takeover, for the life of a
/// connection).
pub struct Inflater {
    decompress: Decompress,
    /// Borrowed from the thread for one message: reset and given back after it.
    borrowed: bool,
}

impl Inflater {
    /// An inflater of the connection's own, for a client that keeps its context.
    pub fn kept(window_bits: u8) -> Inflater {
        Inflater {
            decompress: Decompress::new_with_window_bits(false, window_bits.max(9)),
            borrowed: false,
        }
    }

    /// An inflater lent by the thread for one message.
    pub fn borrow() -> Inflater {
        let decompress = INFLATERS
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Decompress::new_with_window_bits(false, 15));
        Inflater {
            decompress,
            borrowed: true,
        }
    }

    /// Inflates the compressed piece `input` of a message, appending to `out`, which may not
    /// pass `limit` bytes (1009 if it would). With `last`, the message ends here: the sync
    /// trailer is fed too. Data that is not deflate is invalid data (1007).
    pub fn inflate(
        &mut self,
        input: &[u8],
        last: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Violation> {
        self.inflate_piece(input, out, limit)?;
        if last {
            self.inflate_piece(&SYNC_TRAILER, out, limit)?;
        }
        Ok(())
    }

    fn inflate_piece(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Violation> {
        loop {
            // One byte of room past the limit tells a message at the limit from one over it.
            let room = (limit + 1).saturating_sub(out.len()).min(64 * 1024);
            if room == 0 {
                return Err(too_big());
            }
            out.reserve_exact(room);
            let (before_in, before_out) = (self.decompress.total_in(), self.decompress.total_out());
            self.decompress
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| Violation {
                    code: close::INVALID_DATA,
                    reason: "a compressed message that does not inflate",
                })?;
            if out.len() > limit {
                return Err(too_big());
            }
            let used = (self.decompress.total_in() - before_in) as usize;
            let produced = (self.decompress.total_out() - before_out) as usize;
            input = &input[used..];
            let spare = out.capacity() - out.len();
            // Done when the input is used up and the inflater stopped with room to spare (it
            // holds no more output); stuck when it took and gave nothing.
            if (input.is_empty() && spare > 0) || (used == 0 && produced == 0) {
                return Ok(());
            }
        }
    }

    /// The message is complete: a borrowed inflater goes back to the thread, reset; a kept
    /// one resets only if the client compresses every message on its own.
    pub fn finish_message(mut self, client_no_context_takeover: bool) -> Option<Inflater> {
        if self.borrowed {
            self.decompress.reset(false);
            INFLATERS.with_borrow_mut(|spare| {
                if spare.len() < SPARE_INFLATERS {
                    spare.push(self.decompress);
                }
            });
            return None;
        }
        if client_no_context_takeover {
            self.decompress.reset(false);
        }
        Some(self)
    }
}

fn too_big() -> Violation {
    Violation {
        code: close::TOO_BIG,
        reason: "an inflated message over the size limit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<(Agreed, String)> {
        negotiate([value.as_bytes()], &DeflateOptions::default())
    }

    #[test]
    fn a_browsers_offer_is_accepted_without_context_kept_on_either_side() {
        let (agreed, response) =
            offer("permessage-deflate; client_max_window_bits").expect("accepted");
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
        assert_eq!(agreed.server_window_bits, 15);
    }

    #[test]
    fn bad_offers_are_passed_over_for_the_next() {
        assert!(offer("permessage-deflate; foo").is_none());
        assert!(offer(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        )
        .is_none());
        assert!(offer("permessage-deflate; server_max_window_bits=16").is_none());
        assert!(offer("permessage-deflate; server_max_window_bits").is_none());
        assert!(
            offer("permessage-deflate; server_max_window_bits=8").is_none(),
            "8 bits"
        );
        assert!(offer("x-webkit-deflate-frame").is_none());
        let (agreed, response) =
            offer("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10")
                .expect("the second offer");
        assert_eq!(agreed.server_window_bits, 10);
        assert!(
            response.ends_with("server_max_window_bits=10"),
            "{response}"
        );
    }

    #[test]
    fn the_client_window_is_named_only_to_a_client_that_offered_it() {
        let options = DeflateOptions {
            client_context_takeover: true,
            client_max_window_bits: 10,
            ..DeflateOptions::default()
        };
        let (agreed, response) = negotiate(
            [&b"permessage-deflate; client_max_window_bits"[..]],
            &options,
        )
        .expect("accepted");
        assert_eq!(agreed.client_window_bits, 10);
        assert!(
            response.ends_with("client_max_window_bits=10"),
            "{response}"
        );
        let (_, response) = negotiate([&b"permessage-deflate"[..]], &options).expect("accepted");
        assert!(!response.contains("client_max_window_bits"), "{response}");
    }

    #[test]
    fn messages_round_trip_at_every_window_and_split() {
        let text = "a message that repeats, a message that repeats, a message ".repeat(20);
        for bits in 9..=15 {
            let mut compressed = Vec::new();
            compress(text.as_bytes(), &mut compressed, None, 6, bits);
            assert!(
                compressed.len() < text.len() / 4,
                "{bits}: {}",
                compressed.len()
            );
            for split in [0, 1, compressed.len() / 2, compressed.len()] {
                let mut inflater = Inflater::borrow();
                let mut out = Vec::new();
                inflater
                    .inflate(&compressed[..split], false, &mut out, 1 << 20)
                    .expect("first piece");
                inflater
                    .inflate(&compressed[split..], true, &mut out, 1 << 20)
                    .expect("last piece");
                assert_eq!(out, text.as_bytes(), "window {bits}, split {split}");
                assert!(inflater.finish_message(true).is_none());
            }
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let mut bomb = Vec::new();
        compress(&zeros, &mut bomb, None, 9, 15);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let mut out = Vec::new();
        let result = Inflater::borrow().inflate(&bomb, true, &mut out, 1 << 20);
        assert_eq!(result.map_err(|v| v.code), Err(close::TOO_BIG));
        assert!(
            out.capacity() <= (1 << 20) + 64 * 1024 + 1,
            "{}",
            out.capacity()
        );
        // Exactly at the limit is fine.
        let mut out = Vec::new();
        let mut exact = Vec::new();
        compress(&zeros[..1 << 20], &mut exact, None, 9, 15);
        Inflater::borrow()
            .inflate(&exact, true, &mut out, 1 << 20)
            .expect("at the limit");
        assert_eq!(out.len(), 1 << 20);
        let garbage = Inflater::borrow().inflate(b"\xff\xff\xff\xff", true, &mut Vec::new(), 100);
        assert_eq!(garbage.map_err(|v| v.code), Err(close::INVALID_DATA));
    }
}
