//! Arbitrary bytes through everything that reads the wire: the bounded
//! line reader (in chunks the input chooses), the serial frame check, the
//! request decoder (which unescapes every text once). Nothing may panic, and the
//! reader's memory is fixed whatever arrives.
#![no_main]

use std::io::Read;

use edge_bert_wire::frame as framing;
use edge_bert_wire::{decode, Line, LineReader, Req, Texts};
use libfuzzer_sys::fuzz_target;

/// Hands out the input in chunks of a size taken from its first byte, with
/// a would-block between chunks, as a socket with a read time-out does.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    block: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.block = !self.block;
        if self.block {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = self.data.len().min(self.chunk).min(out.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

const MAX: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut reader = LineReader::new(
        Chunked {
            data: rest,
            chunk: 1 + first as usize % 64,
            block: false,
        },
        MAX,
    );
    let mut texts = Texts::with_capacity(MAX);
    loop {
        let line = match reader.next_line() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("unexpected error {e}"),
            Ok(Line::Eof) => break,
            Ok(Line::TooLong) => continue,
            Ok(Line::Full(l)) => l,
        };
        assert!(line.len() <= MAX);
        let body = match framing::parse(line) {
            framing::Frame::Checked(b) | framing::Frame::Plain(b) => b,
            _ => continue,
        };
        match decode(body, &mut texts) {
            Ok(Req::Classify { .. }) => {
                // One text, unescaped, not blank, and never longer than the line.
                assert_eq!(texts.len(), 1);
                assert!(!texts.get(0).trim().is_empty());
                assert!(texts.get(0).len() <= body.len());
            }
            Ok(Req::ClassifyMany { .. }) => {
                assert!(!texts.is_empty());
                for t in texts.iter() {
                    assert!(!t.trim().is_empty());
                }
            }
            Ok(Req::Op { .. }) | Err(_) => {}
        }
    }
});
