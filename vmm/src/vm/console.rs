//! The console on stdio: guest output written through at once, stdin fed
//! to the current board's console device (q35's UART, pseries' vty).

use devices::serial::Serial;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Writes every byte through at once (guest output must not sit in a
/// buffer waiting for a newline).
pub(super) struct Unbuffered<W: Write>(pub(super) W);

impl<W: Write> Write for Unbuffered<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A console device that takes the host's input: how many bytes fit now.
pub(super) trait Input: Send {
    fn input(&mut self, bytes: &[u8]) -> usize;
}

impl Input for Serial {
    fn input(&mut self, bytes: &[u8]) -> usize {
        Serial::input(self, bytes)
    }
}

impl Input for devices::spapr_vty::SpaprVty {
    fn input(&mut self, bytes: &[u8]) -> usize {
        devices::spapr_vty::SpaprVty::input(self, bytes)
    }
}

type Console = Arc<Mutex<dyn Input>>;

/// Where stdin's bytes go: the console of the current board (q35's UART,
/// pseries' vty).
pub(super) static CONSOLE_INPUT: OnceLock<Mutex<Option<Console>>> = OnceLock::new();

pub(super) fn console_input() -> &'static Mutex<Option<Console>> {
    CONSOLE_INPUT.get_or_init(|| Mutex::new(None))
}

/// Feeds stdin to the guest's UART, for the life of the process.
pub(super) fn start_stdin_thread() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(|| {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin().lock();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut off = 0;
                while off < n {
                    let console = console_input().lock().expect("console lock").clone();
                    let took = console.map_or(n - off, |c| {
                        c.lock().expect("console lock").input(&buf[off..n])
                    });
                    off += took;
                    if took == 0 {
                        std::thread::sleep(Duration::from_millis(1)); // input full: let the guest drain it
                    }
                }
            }
        })
        .expect("spawn the stdin thread");
}
