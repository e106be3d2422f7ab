//! Serving a serial port: it is opened (raw, with a read timeout) and run
//! as one session; when it goes away (cable pulled, USB gadget reset, pty
//! closed) it is reopened once it is back.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::session::{self, Link};
use super::Shared;
use crate::tty::Port;

/// How long to wait before opening a serial port again.
const SERIAL_RETRY: Duration = Duration::from_millis(200);

/// Serves the serial port until shutdown. When the port goes away (cable
/// pulled, USB gadget reset, pty closed) it is reopened once it is back.
pub(super) fn serve_port(shared: &Shared, path: &Path) {
    let mut waiting = false;
    while !shared.shutdown.load(Ordering::SeqCst) {
        let port = match Port::open(path, shared.cfg.baud) {
            Ok(p) => p,
            Err(e) => {
                if !waiting {
                    log::warn!("serial: {e}; retrying until it is back");
                    waiting = true;
                }
                std::thread::sleep(SERIAL_RETRY);
                continue;
            }
        };
        waiting = false;
        log::info!(
            "serial: {} open at {} baud",
            path.display(),
            shared.cfg.baud
        );
        let mut write = match port.try_clone() {
            Ok(w) => w,
            Err(e) => {
                log::warn!("serial: {} lost ({e}); reopening", path.display());
                std::thread::sleep(SERIAL_RETRY);
                continue;
            }
        };
        match session::run(shared, port, &mut write, Link::Serial { checked: false }) {
            Ok(()) => break,
            Err(e) => log::warn!("serial: {} lost ({e}); reopening", path.display()),
        }
    }
    log::info!("serial: {} closed", path.display());
}
