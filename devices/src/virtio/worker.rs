//! One thread per virtio device: it waits on the queues' doorbells
//! (ioeventfds KVM signals without exiting to us), the backend's fd (a
//! tap) and a stop event, and serves the device under its lock.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// What the device thread serves (the transport's shared device state).
pub trait Served: Send + Sync {
    /// Queue `q`'s doorbell rang.
    fn process(&self, q: usize);
    /// The backend has input.
    fn backend_ready(&self);
}

pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(
        name: String,
        shared: Arc<dyn Served>,
        kicks: Vec<EventFd>,
        backend: Option<RawFd>,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let epoll = Epoll::new()?;
        let n = kicks.len() as u64;
        for (i, k) in kicks.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                k.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, n),
        )?;
        if let Some(fd) = backend {
            // Edge-triggered: the device drains the backend while it has
            // buffers and is called again when the driver adds some.
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, n + 1),
            )?;
        }
        let stop_fd = stop.try_clone()?;
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            sandbox::enter_or_exit(sandbox::Class::Worker);
            let mut events = vec![EpollEvent::default(); 16];
            loop {
                let k = match epoll.wait(-1, &mut events) {
                    Ok(k) => k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("virtio worker: epoll failed: {e}");
                        return;
                    }
                };
                for ev in &events[..k] {
                    match ev.data() {
                        i if i < n => {
                            let _ = kicks[i as usize].read();
                            shared.process(i as usize);
                        }
                        i if i == n => {
                            let _ = stop_fd.read();
                            return;
                        }
                        _ => shared.backend_ready(),
                    }
                }
            }
        })?;
        Ok(Worker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
