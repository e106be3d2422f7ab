//! The serial port, thin: open a tty raw (8N1, no echo, no line discipline,
//! no flow control) at a baud rate, and read it with a timeout so the loops
//! above can watch for shutdown. Framing and checking live in
//! `edge_bert_wire::frame`; the request handling is the server's.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::termios::{self, ControlModes, OptionalActions, SpecialCodeIndex};

use edge_bert_model::{Error, Result};

/// Baud rates the serial options accept (the standard POSIX/Linux set).
pub const BAUD_RATES: &[u32] = &[
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115_200, 230_400, 460_800, 500_000, 576_000,
    921_600, 1_000_000, 1_500_000, 2_000_000, 3_000_000, 4_000_000,
];

/// Checks a `--baud` value.
pub fn check_baud(baud: u32) -> Result<()> {
    if BAUD_RATES.contains(&baud) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "unsupported --baud {baud}; use one of {BAUD_RATES:?}"
        )))
    }
}

/// An open serial port in raw mode.
pub struct Port {
    file: File,
    timeout: Duration,
}

impl Port {
    /// Opens `path` read-write, without making it the controlling terminal,
    /// and sets it raw 8N1 at `baud` with the receiver on and modem control
    /// lines ignored.
    pub fn open(path: &Path, baud: u32) -> Result<Port> {
        use std::os::unix::fs::OpenOptionsExt;
        check_baud(baud)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let io = |e: rustix::io::Errno| Error::io(path, io::Error::from(e));
        let mut t = termios::tcgetattr(&file).map_err(io)?;
        t.make_raw();
        t.control_modes -= ControlModes::CSTOPB | ControlModes::PARENB | ControlModes::CRTSCTS;
        t.control_modes |= ControlModes::CS8 | ControlModes::CREAD | ControlModes::CLOCAL;
        // Reads are driven by poll(); a read returns what has arrived.
        t.special_codes[SpecialCodeIndex::VMIN] = 0;
        t.special_codes[SpecialCodeIndex::VTIME] = 0;
        t.set_speed(baud).map_err(io)?;
        termios::tcsetattr(&file, OptionalActions::Now, &t).map_err(io)?;
        Ok(Port {
            file,
            timeout: Duration::from_millis(100),
        })
    }

    /// Drops whatever has arrived on the port and not been read yet
    /// (tcflush TCIFLUSH): replies to frames that were sent before this
    /// client, line noise.
    pub fn discard_input(&self) -> io::Result<()> {
        termios::tcflush(&self.file, termios::QueueSelector::IFlush).map_err(io::Error::from)
    }

    /// A second handle on the same port (one reads, one writes).
    pub fn try_clone(&self) -> io::Result<Port> {
        Ok(Port {
            file: self.file.try_clone()?,
            timeout: self.timeout,
        })
    }
}

impl Read for Port {
    /// Waits up to the read timeout. No data yet is `WouldBlock`; a hang-up
    /// (cable pulled, the other end of a pty closed) is `BrokenPipe`, never
    /// a silent end of file, so the caller can reopen the port.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let ts = Timespec {
            tv_sec: self.timeout.as_secs() as _,
            tv_nsec: self.timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.file, PollFlags::IN)];
        let ready = poll(&mut fds, Some(&ts)).map_err(io::Error::from)?;
        if ready == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let ev = fds[0].revents();
        if !ev.contains(PollFlags::IN) && ev.intersects(PollFlags::HUP | PollFlags::ERR) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "serial port hung up",
            ));
        }
        match rustix::io::read(self.file.as_fd(), &mut *buf) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "serial port closed",
            )),
            Ok(n) => Ok(n),
            // A pty whose other end has gone reads EIO.
            Err(rustix::io::Errno::IO) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "serial port hung up (EIO)",
            )),
            Err(rustix::io::Errno::AGAIN) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Write for Port {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.write(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "serial port hung up (EIO)",
            )),
            r => r,
        }
    }

    /// Waits until everything written has been sent.
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
