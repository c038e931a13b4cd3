//! UTF-8 validation of WebSocket text: a whole message at once ([`validate`]), or a message that
//! arrives in pieces (fragments, or parts of a frame read as they come), failing at the first
//! byte that makes the text invalid rather than at the end of the message (RFC 6455,
//! section 8.1). Both use `simdutf8`'s SIMD validation.

/// Validates text fed in pieces; a code point may straddle two pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// The start of a code point the last piece ended inside (at most three bytes).
    partial: [u8; 4],
    partial_len: u8,
}

/// The text is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// `bytes` as text, if they are UTF-8.
pub fn validate(bytes: &[u8]) -> Result<&str, InvalidUtf8> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| InvalidUtf8)
}

impl Utf8Validator {
    /// Validates `bytes`, which follow every piece fed before. Fails as soon as the text so far
    /// cannot be the start of valid UTF-8.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        while self.partial_len > 0 {
            let Some((&next, rest)) = bytes.split_first() else {
                return Ok(());
            };
            self.partial[usize::from(self.partial_len)] = next;
            self.partial_len += 1;
            bytes = rest;
            let started = &self.partial[..usize::from(self.partial_len)];
            match simdutf8::compat::from_utf8(started) {
                Ok(_) => self.partial_len = 0,
                Err(error) if error.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) if self.partial_len == 4 => return Err(InvalidUtf8),
                Err(_) => {} // still a valid start: wait for its next byte
            }
        }
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(error) if error.error_len().is_some() => Err(InvalidUtf8),
            Err(error) => {
                // The piece ends inside a code point that may yet be valid: keep its start.
                let tail = &bytes[error.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The message ended: valid only if it did not end inside a code point.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.partial_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` split at `cuts`, returning whether it was valid and after how many bytes
    /// it failed.
    fn validate(bytes: &[u8], cuts: &[usize]) -> Result<(), usize> {
        let mut validator = Utf8Validator::default();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            validator.feed(&bytes[start..cut]).map_err(|_| cut)?;
            start = cut;
        }
        validator.finish().map_err(|_| bytes.len())
    }

    #[test]
    fn valid_text_passes_however_split() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞 ✓".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(validate(text, &[a, b]), Ok(()), "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn invalid_text_fails_however_split_and_fails_fast() {
        let cases: [&[u8]; 7] = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // a surrogate
            b"\xf4\x90\x80\x80",                                               // past U+10FFFF
            b"\xc0\xaf",                                                       // overlong
            b"abc\xff",
            b"\x80",
            b"\xe2\x82",     // ends inside a code point
            b"\xf0\x9d\x84", // likewise
        ];
        for case in cases {
            let whole = validate(case, &[]);
            assert!(whole.is_err(), "{case:?}");
            for cut in 0..=case.len() {
                assert!(validate(case, &[cut]).is_err(), "{case:?} cut at {cut}");
            }
        }
        // Fail fast: the surrogate is refused when its second byte arrives, long before the end.
        let mut validator = Utf8Validator::default();
        assert!(validator.feed("κόσμε".as_bytes()).is_ok());
        assert!(validator.feed(b"\xed").is_ok(), "a valid start so far");
        assert_eq!(validator.feed(b"\xa0"), Err(InvalidUtf8));
    }
}
