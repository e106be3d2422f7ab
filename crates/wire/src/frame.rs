//! Integrity check for the serial line, pure: the NMEA-style `*XXXXXXXX`
//! suffix. A checked frame is the usual JSON request or response line
//! followed by `*` and the CRC-32 (IEEE 802.3, as in zlib and Ethernet) of
//! the bytes before the `*`, as 8 upper-case hex digits (upper case only, so a flipped case bit is
//! caught too):
//!
//! ```text
//! {"id":1,"text":"great film"}*2A6930EB
//! ```
//!
//! Why this and not a binary framing such as COBS + CRC: the line stays
//! JSON lines, so a person at `picocom` can still type a plain request by
//! hand (unchecked lines are accepted until the link has seen a checked
//! frame), and the newline is the frame boundary, so the link resynchronises
//! at the next `\n` after any damage. CRC-32 detects every error burst up to
//! 32 bits and any other damage (flipped bits, dropped bytes, a truncated
//! line) with probability 1 - 2^-32. A JSON object ends with `}`, so the
//! suffix can never be mistaken for part of the body.

/// Length of the suffix: `*` and 8 hex digits.
pub const SUFFIX_LEN: usize = 9;

/// What a received line is, once its suffix is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The suffix is present and the CRC matches; the body without it.
    Checked(&'a [u8]),
    /// No suffix: a plain JSON line, as typed by a person.
    Plain(&'a [u8]),
    /// A suffix is present and the CRC does not match.
    Corrupt { expected: u32, actual: u32 },
    /// Nothing but white space (ignored, never answered).
    Blank,
}

/// The CRC-32 of `body`.
pub fn crc(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

fn hex_digit(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u32),
        b'A'..=b'F' => Some((b - b'A' + 10) as u32),
        _ => None,
    }
}

/// Classifies one received line (without its `\n`; a trailing `\r` is
/// allowed, as terminals send one).
pub fn parse(line: &[u8]) -> Frame<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Frame::Blank;
    }
    if line.len() >= SUFFIX_LEN && line[line.len() - SUFFIX_LEN] == b'*' {
        let (body, suffix) = line.split_at(line.len() - SUFFIX_LEN);
        let digits = suffix[1..]
            .iter()
            .try_fold(0u32, |acc, &b| Some(acc << 4 | hex_digit(b)?));
        if let Some(expected) = digits {
            let actual = crc(body);
            return if actual == expected {
                Frame::Checked(body)
            } else {
                Frame::Corrupt { expected, actual }
            };
        }
    }
    Frame::Plain(line)
}

/// The suffix for `body`: `*` and its CRC-32 in upper-case hex.
pub fn suffix(body: &[u8]) -> [u8; SUFFIX_LEN] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let c = crc(body);
    let mut out = [b'*'; SUFFIX_LEN];
    for (i, o) in out[1..].iter_mut().enumerate() {
        *o = HEX[(c >> (28 - 4 * i) & 0xF) as usize];
    }
    out
}

/// Appends the suffix for the bytes already in `line` (a response body).
pub fn seal(line: &mut Vec<u8>) {
    let s = suffix(line);
    line.extend_from_slice(&s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(body: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        seal(&mut v);
        v
    }

    #[test]
    fn known_vectors() {
        // The CRC-32 check value.
        assert_eq!(crc(b"123456789"), 0xCBF4_3926);
        assert_eq!(&suffix(b"123456789"), b"*CBF43926");
        let line = sealed(br#"{"op":"health"}"#);
        assert_eq!(parse(&line), Frame::Checked(br#"{"op":"health"}"#));
        // A trailing CR is accepted.
        let mut cr = line.clone();
        cr.push(b'\r');
        assert_eq!(parse(&cr), Frame::Checked(br#"{"op":"health"}"#));
        // Only upper-case hex: a flipped case bit is not a suffix.
        let mut lower = line.clone();
        lower[15..].make_ascii_lowercase();
        assert!(lower != line && matches!(parse(&lower), Frame::Plain(_)));
    }

    #[test]
    fn plain_blank_and_corrupt() {
        assert_eq!(
            parse(b"{\"text\":\"hi\"}"),
            Frame::Plain(b"{\"text\":\"hi\"}")
        );
        assert_eq!(parse(b""), Frame::Blank);
        assert_eq!(parse(b"  \r"), Frame::Blank);
        assert!(matches!(
            parse(b"{\"text\":\"hi\"}*00000000"),
            Frame::Corrupt { expected: 0, .. }
        ));
        // A star without 8 hex digits is no suffix.
        assert!(matches!(parse(b"{}*0000000G"), Frame::Plain(_)));
        assert!(matches!(parse(b"*"), Frame::Plain(_)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&line);
        }

        #[test]
        fn sealed_frames_round_trip(body in "\\{[ -~]{0,80}\\}") {
            let line = sealed(body.as_bytes());
            prop_assert_eq!(parse(&line), Frame::Checked(body.as_bytes()));
        }

        /// Any flipped bits (1..=32 of them, anywhere in body or suffix) are
        /// never taken for a valid frame with the same body.
        #[test]
        fn flipped_bits_are_detected(
            body in "\\{[ -~]{1,80}\\}",
            flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..32),
        ) {
            let clean = sealed(body.as_bytes());
            let mut line = clean.clone();
            for (i, bit) in &flips {
                line[i.index(clean.len())] ^= 1 << bit;
            }
            prop_assume!(line != clean);
            prop_assert!(!matches!(parse(&line), Frame::Checked(_)), "{:?}", String::from_utf8_lossy(&line));
        }

        /// Dropped bytes and truncation are never taken for a valid frame.
        #[test]
        fn dropped_and_truncated_bytes_are_detected(
            body in "\\{[ -~]{1,80}\\}",
            drop in any::<prop::sample::Index>(),
            count in 1usize..8,
            truncate in any::<bool>(),
        ) {
            let clean = sealed(body.as_bytes());
            let at = drop.index(clean.len());
            let mut line = clean.clone();
            if truncate {
                line.truncate(at);
            } else {
                line.drain(at..(at + count).min(clean.len()));
            }
            prop_assert!(!matches!(parse(&line), Frame::Checked(_)), "{:?}", String::from_utf8_lossy(&line));
        }
    }
}
