//! A bounded line reader: `\n`-terminated lines into a fixed buffer
//! allocated once (generic over `Read`; no sockets here).

use std::io::Read;

/// One step of a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Full(&'a [u8]),
    /// A line longer than the limit; its bytes were discarded up to and
    /// including the next newline, never buffered.
    TooLong,
    /// The stream ended (a last unterminated line is returned as `Full` first).
    Eof,
}

/// Reads `\n`-terminated lines into a fixed buffer allocated once.
///
/// Memory never grows with input: a line longer than `max` bytes is
/// reported as [`Line::TooLong`] and skipped. A trailing `\r` is not
/// counted (the buffer holds `max + 1` bytes and a newline).
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Bytes `start..end` of `buf` are read but not yet returned.
    start: usize,
    end: usize,
    max: usize,
    eof: bool,
    /// Inside an over-long line, dropping bytes until its newline.
    discarding: bool,
}

impl<R: Read> LineReader<R> {
    /// A reader for lines of at most `max` bytes (newline excluded).
    pub fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: vec![0; max + 2].into_boxed_slice(),
            start: 0,
            end: 0,
            max,
            eof: false,
            discarding: false,
        }
    }

    /// The next line. I/O errors (including time-outs) are passed through.
    ///
    /// After an error (such as a read time-out) the reader's state is intact
    /// and the call can be repeated.
    pub fn next_line(&mut self) -> std::io::Result<Line<'_>> {
        loop {
            // A newline among the unread bytes ends a line.
            if let Some(end) = self.newline() {
                return Ok(self.take(end));
            }
            if self.discarding {
                self.start = 0;
                self.end = 0;
            } else if self.end - self.start > self.max + 1 {
                // Over the limit with no newline: drop what we hold.
                self.discarding = true;
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.eof {
                if self.discarding {
                    self.discarding = false;
                    return Ok(Line::TooLong);
                }
                if self.end > self.start {
                    let (s, e) = (self.start, self.end);
                    self.start = self.end;
                    return Ok(self.full(s, e));
                }
                return Ok(Line::Eof);
            }
            let n = self.inner.read(&mut self.buf[self.end..])?;
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }

    /// The next line if a whole one has already been read, without reading
    /// more; `None` otherwise. For a reader that must stop reading (a
    /// server past its shutdown grace) but still answer what it holds.
    pub fn buffered_line(&mut self) -> Option<Line<'_>> {
        let end = self.newline()?;
        Some(self.take(end))
    }

    /// Where the first newline among the unread bytes is.
    fn newline(&self) -> Option<usize> {
        let pos = self.buf[self.start..self.end]
            .iter()
            .position(|&b| b == b'\n')?;
        Some(self.start + pos)
    }

    /// The line that ends at the newline at `nl`.
    fn take(&mut self, nl: usize) -> Line<'_> {
        let s = self.start;
        self.start = nl + 1;
        if self.discarding {
            self.discarding = false;
            return Line::TooLong;
        }
        self.full(s, nl)
    }

    /// Bytes `s..e` of the buffer as a line: one trailing `\r` dropped,
    /// then held to the limit (the `\r` does not count towards it).
    fn full(&self, s: usize, e: usize) -> Line<'_> {
        let line = &self.buf[s..e];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max {
            Line::TooLong
        } else {
            Line::Full(line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Collects every step of a reader fed `input` in chunks of `chunk` bytes.
    /// Every other read fails with `WouldBlock` (as a socket read time-out
    /// does); the caller retries, and the result must not change.
    fn lines(input: &[u8], max: usize, chunk: usize) -> Vec<Option<Vec<u8>>> {
        struct Chunked<'a>(&'a [u8], usize, bool);
        impl Read for Chunked<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                self.2 = !self.2;
                if self.2 {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                let n = self.0.len().min(self.1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = LineReader::new(Chunked(input, chunk.max(1), false), max);
        let mut out = Vec::new();
        loop {
            let step = match r.next_line() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => other.unwrap(),
            };
            match step {
                Line::Full(l) => out.push(Some(l.to_vec())),
                Line::TooLong => out.push(None),
                Line::Eof => return out,
            }
        }
    }

    #[test]
    fn long_lines_are_skipped_and_the_next_line_works() {
        let input = b"ok\nthis line is far too long\r\nfine\r\nlast";
        let want = vec![
            Some(b"ok".to_vec()),
            None,
            Some(b"fine".to_vec()),
            Some(b"last".to_vec()),
        ];
        for chunk in 1..8 {
            assert_eq!(lines(input, 8, chunk), want, "chunk {chunk}");
        }
        assert_eq!(lines(b"0123456789", 4, 3), vec![None]);
        assert_eq!(lines(b"", 4, 3), Vec::<Option<Vec<u8>>>::new());
        assert_eq!(lines(b"1234\n", 4, 2), vec![Some(b"1234".to_vec())]);
        // A trailing \r does not count towards the limit; any other byte does.
        for chunk in 1..6 {
            assert_eq!(
                lines(b"1234\r\n1234", 4, chunk),
                [b"1234", b"1234"].map(|l| Some(l.to_vec()))
            );
            assert_eq!(
                lines(b"12345\n1234\r", 4, chunk),
                vec![None, Some(b"1234".to_vec())]
            );
            assert_eq!(
                lines(b"1234\r\r\nok", 4, chunk),
                vec![None, Some(b"ok".to_vec())]
            );
        }
    }

    #[test]
    fn buffered_lines_come_without_reading() {
        let mut r = LineReader::new(&b"one\ntwo\r\nthree"[..], 8);
        assert_eq!(r.buffered_line(), None);
        assert_eq!(r.next_line().unwrap(), Line::Full(b"one"));
        assert_eq!(r.buffered_line(), Some(Line::Full(b"two")));
        // "three" has no newline yet: not a whole line.
        assert_eq!(r.buffered_line(), None);
        assert_eq!(r.next_line().unwrap(), Line::Full(b"three"));
        assert_eq!(r.next_line().unwrap(), Line::Eof);
    }

    proptest! {
        /// Against a model: split on '\n', strip one '\r', lines over the
        /// limit become `None`; chunking must not matter.
        #[test]
        fn line_reader_matches_a_model(
            input in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..200),
            max in 1usize..20,
            chunk in 1usize..40,
        ) {
            let mut want: Vec<Option<Vec<u8>>> = Vec::new();
            let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            if input.last() == Some(&b'\n') || input.is_empty() {
                parts.pop();
            }
            for p in parts {
                let p = p.strip_suffix(b"\r").unwrap_or(p);
                want.push((p.len() <= max).then(|| p.to_vec()));
            }
            prop_assert_eq!(lines(&input, max, chunk), want);
        }
    }
}
