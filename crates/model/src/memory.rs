//! Handing start-up memory back: the loader's code pages once a server is
//! ready, and the heap freed while loading.
//!
//! Loading runs code that serving never runs again: ONNX decoding, tract's
//! type inference and optimiser, plan building. Those pages of the
//! executable stay resident after start-up (about 8 MiB of the 19 MiB that
//! `serve` had resident from its own file, measured on x86-64), although
//! nothing needs them. [`release_startup_pages`] drops them the way a kernel
//! frees its init sections: it `madvise(MADV_DONTNEED)`s the executable's
//! clean, read-only file pages (code and read-only data). Pages that
//! serving does use come back from the page cache on their first touch,
//! byte for byte the same, since they are unmodified pages of the file.
//!
//! Which ranges are safe is decided by [`droppable_ranges`], a pure parser
//! of `/proc/self/smaps`: only mappings of the executable itself, not
//! writable, and holding no modified (anonymous or swapped) pages.
//! Relocated read-only data (RELRO) and any page a debugger has patched
//! are modified, so they are never dropped.

/// A range of addresses `[start, end)` and the bytes of it that were
/// resident when `/proc/self/smaps` was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: usize,
    pub end: usize,
    pub resident: usize,
}

/// One mapping header of `/proc/PID/maps` or `/proc/PID/smaps`:
/// `start-end perms offset dev inode [path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub start: usize,
    pub end: usize,
    /// Permissions such as `r-xp` (empty if missing).
    pub perms: &'a str,
    /// Offset in the mapped file; `None` if missing or malformed.
    pub offset: Option<u64>,
    /// The mapped file's path (fields after the inode, joined by a space),
    /// empty for an anonymous mapping.
    pub path: String,
}

/// Parses `line` as a mapping header; `None` if its first field is not a
/// `start-end` pair of hex addresses (the key lines of `smaps` are not).
pub fn mapping_header(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.split_whitespace();
    let (a, b) = fields.next()?.split_once('-')?;
    let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
        return None;
    };
    let perms = fields.next().unwrap_or("");
    let offset = fields.next().and_then(|o| u64::from_str_radix(o, 16).ok());
    let path: Vec<&str> = fields.skip(2).collect();
    Some(Mapping {
        start,
        end,
        perms,
        offset,
        path: path.join(" "),
    })
}

/// The mappings in `smaps` (the text of `/proc/PID/smaps`) that are clean
/// read-only file pages of `exe` (the path `/proc/PID/exe` links to): not
/// writable, private, and reported with no anonymous and no swapped pages
/// (a modified page of a private mapping is anonymous while resident and
/// counts as swap once swapped out). `Private_Dirty` is no guide: a file
/// just written has dirty page-cache pages that are still the file's. A
/// mapping missing either figure is kept; malformed entries are skipped,
/// never guessed at.
pub fn droppable_ranges(smaps: &str, exe: &str) -> Vec<Range> {
    struct Entry {
        range: Range,
        candidate: bool,
        /// Anonymous and Swap, in KiB, as reported.
        modified: [Option<usize>; 2],
    }
    let mut entries: Vec<Entry> = Vec::new();
    for line in smaps.lines() {
        if let Some(m) = mapping_header(line) {
            let candidate = m.end > m.start
                && m.perms.len() == 4
                && m.perms.starts_with('r')
                && !m.perms.contains('w')
                && m.perms.ends_with('p')
                && m.path == exe;
            entries.push(Entry {
                range: Range {
                    start: m.start,
                    end: m.end,
                    resident: 0,
                },
                candidate,
                modified: [None; 2],
            });
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        let Some(entry) = entries.last_mut() else {
            continue;
        };
        let kib = || fields.clone().next().and_then(|v| v.parse::<usize>().ok());
        match first {
            "Rss:" => entry.range.resident = kib().unwrap_or(0) * 1024,
            "Anonymous:" => entry.modified[0] = kib(),
            "Swap:" => entry.modified[1] = kib(),
            _ => {}
        }
    }
    entries
        .into_iter()
        .filter(|e| e.candidate && e.modified == [Some(0); 2])
        .map(|e| e.range)
        .collect()
}

/// Drops the executable's clean read-only pages from the resident set (see
/// the module docs). Returns the bytes of them that were resident. Linux
/// only; elsewhere it does nothing and returns 0.
///
/// The heap is not trimmed here: the engine trims it once its plans are
/// built, and what is freed after that (a warm-up run's activations) is
/// the same memory serving uses again for its own.
#[cfg(target_os = "linux")]
pub fn release_startup_pages() -> usize {
    let (Ok(smaps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/smaps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return 0;
    };
    let Some(exe) = exe.to_str() else { return 0 };
    let mut dropped = 0;
    for r in droppable_ranges(&smaps, exe) {
        // SAFETY: the range is a whole private, read-only mapping of the
        // executable file with no anonymous pages, so every page in it is
        // an unmodified page of the file: after MADV_DONTNEED a read
        // faults the same bytes back in from the page cache.
        let rc = unsafe {
            libc::madvise(
                r.start as *mut libc::c_void,
                r.end - r.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            dropped += r.resident;
        }
    }
    dropped
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_pages() -> usize {
    0
}

/// Hands the heap pages glibc holds free back to the system (the parsed
/// protobuf, the decluttered model, duplicate weights freed while loading).
/// glibc keeps freed memory in its arenas otherwise, where it still counts
/// as resident. Does nothing with other allocators.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the pages of `bytes`, a `static` of this executable's read-only
/// image (the embedded model), from this process's resident set. Nothing is
/// lost: a later read faults the same bytes back in from the file. Whole
/// pages inside `bytes` only; harmless if they were never touched. Does
/// nothing unless `/proc/self/maps` shows `bytes` inside one read-only file
/// mapping (a leaked heap buffer would lose its contents).
pub fn release_static_pages(bytes: &'static [u8]) {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        let (lo, hi) = (
            bytes.as_ptr() as usize,
            bytes.as_ptr() as usize + bytes.len(),
        );
        let file_backed = maps.lines().filter_map(mapping_header).any(|m| {
            m.start <= lo && hi <= m.end && !m.perms.contains('w') && m.path.starts_with('/')
        });
        if !file_backed {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let Ok(page) = usize::try_from(page) else {
            return;
        };
        if page == 0 {
            return;
        }
        let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: the range lies inside `bytes`, a `static` and so a
            // read-only mapping of the executable file: dropping its pages
            // cannot lose data, they are reloaded from the file.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/opt/edge bert/edge-bert";

    // Addresses fit 32 bits, so the same data serves armv7.

    fn smaps() -> String {
        [
            "085cf000-09848000 r-xp 01afa000 fe:00 5408864 /opt/edge bert/edge-bert",
            "Size:              18916 kB",
            "Rss:               12920 kB",
            "Private_Dirty:         0 kB",
            "Anonymous:             0 kB",
            "Swap:                  0 kB",
            "VmFlags: rd ex mr mw me dw",
            "06ad4000-085cf000 r--p 00000000 fe:00 5408864 /opt/edge bert/edge-bert",
            "Rss:                3116 kB",
            "Private_Dirty:         0 kB",
            "Anonymous:             0 kB",
            "Swap:                  0 kB",
            // RELRO: read-only now, but relocated in place, so anonymous.
            "09848000-09902000 r--p 02d72000 fe:00 5408864 /opt/edge bert/edge-bert",
            "Rss:                 744 kB",
            "Private_Dirty:       744 kB",
            "Anonymous:           744 kB",
            "Swap:                  0 kB",
            "09902000-09910000 rw-p 02e2c000 fe:00 5408864 /opt/edge bert/edge-bert",
            "Rss:                  56 kB",
            "Anonymous:            20 kB",
            "09910000-09911000 rw-p 00000000 00:00 0",
            "Rss:                   4 kB",
            "Anonymous:             4 kB",
            "7d43e000-7d594000 r-xp 00026000 fe:00 326279 /usr/lib/libc.so.6",
            "Rss:                1032 kB",
            "Private_Dirty:         0 kB",
            "Anonymous:             0 kB",
            "Swap:                  0 kB",
            // A debugger's breakpoint made one code page anonymous.
            "7d600000-7d700000 r-xp 00000000 fe:00 5408864 /opt/edge bert/edge-bert",
            "Rss:                  64 kB",
            "Private_Dirty:         4 kB",
            "Anonymous:             4 kB",
            "Swap:                  0 kB",
            // A modified page swapped out is counted under Swap only.
            "7e001000-7e002000 r--p 00001000 fe:00 5408864 /opt/edge bert/edge-bert",
            "Rss:                   0 kB",
            "Private_Dirty:         0 kB",
            "Anonymous:             0 kB",
            "Swap:                  4 kB",
        ]
        .join("\n")
    }

    #[test]
    fn mapping_headers_parse_and_key_lines_do_not() {
        let m = mapping_header("7f00-7f10 r--p 0001a000 08:02 42  /opt/my app/bin").unwrap();
        assert_eq!((m.start, m.end, m.perms), (0x7f00, 0x7f10, "r--p"));
        assert_eq!(m.offset, Some(0x1a000));
        assert_eq!(m.path, "/opt/my app/bin");
        let anon = mapping_header("1000-2000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, "");
        assert_eq!(mapping_header("1000-2000 rw-p zz").unwrap().offset, None);
        assert_eq!(mapping_header("Rss:                 4 kB"), None);
        assert_eq!(mapping_header("x-2000 r--p 0 0 0"), None);
        assert_eq!(mapping_header(""), None);
    }

    #[test]
    fn picks_only_clean_read_only_pages_of_the_executable() {
        let got = droppable_ranges(&smaps(), EXE);
        assert_eq!(
            got,
            vec![
                Range {
                    start: 0x085cf000,
                    end: 0x09848000,
                    resident: 12920 * 1024
                },
                Range {
                    start: 0x06ad4000,
                    end: 0x085cf000,
                    resident: 3116 * 1024
                },
            ]
        );
    }

    #[test]
    fn another_path_or_missing_fields_drop_nothing() {
        assert!(droppable_ranges(&smaps(), "/usr/bin/other").is_empty());
        assert!(droppable_ranges(&smaps(), "/opt/edge").is_empty());
        // A figure missing: not known to be clean, so kept.
        let s = "1000-2000 r-xp 0 fe:00 1 /x\nRss: 4 kB\nAnonymous: 0 kB\n";
        assert!(droppable_ranges(s, "/x").is_empty());
        // Dirty page-cache pages of a freshly written file are still clean
        // for this process.
        let s = "1000-2000 r-xp 0 fe:00 1 /x\nPrivate_Dirty: 8 kB\nAnonymous: 0 kB\nSwap: 0 kB\n";
        assert_eq!(droppable_ranges(s, "/x").len(), 1);
        // Garbage and a truncated header are skipped.
        let s = "zzzz-1000 r-xp\n\u{0}\n1000- r-xp 0 0 0 /x\nAnonymous: 0 kB\n";
        assert!(droppable_ranges(s, "/x").is_empty());
        assert!(droppable_ranges("", "/x").is_empty());
    }

    #[test]
    fn released_code_still_runs_and_reads_the_same() {
        // Drop this test binary's own clean pages, then read and run code
        // that lives in them: it faults back in from the file, unchanged.
        let f = droppable_ranges as *const u8;
        // SAFETY: reads 256 bytes of this function's machine code, which is
        // mapped readable for as long as the process runs.
        let code = || unsafe { std::slice::from_raw_parts(f, 256) }.to_vec();
        let before = code();
        let dropped = release_startup_pages();
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            // Native run (the ARM tests run under qemu-user, whose
            // /proc/self/smaps need not report resident pages).
            assert!(dropped > 0, "nothing dropped");
        }
        assert_eq!(code(), before);
        assert_eq!(droppable_ranges(&smaps(), EXE).len(), 2);
    }
}
