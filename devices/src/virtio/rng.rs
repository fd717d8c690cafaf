//! virtio-rng: fills the driver's buffers from the host's `getrandom`.

use super::io;
use super::*;
use crate::model::types::TypeInfo;
use crate::registry::{BackendKind, Build, DeviceType, VirtioType};
use migration::vmstate::Vmstate;

/// Its queues: one request queue.
pub const QUEUES: usize = 1;

/// The `virtio-rng-pci` type.
pub static DEVICE: DeviceType = DeviceType {
    info: TypeInfo {
        name: "virtio-rng-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio entropy source (the host's getrandom)",
        props: &[],
    },
    build: Build::Virtio(VirtioType {
        vmstate: &PCI_VMSTATE,
        queues: |_| QUEUES as u64,
        auto: |_, _| {},
        backend: BackendKind::None,
        create: |_, _| Ok(Box::new(Rng::new())),
    }),
};

/// Bytes served per buffer at most (the driver asks again for more).
const MAX_CHUNK: usize = 64 * 1024;

/// The entropy device; its backend (the host's getrandom) supports every
/// feature it offers.
#[derive(Default)]
pub struct Rng;

impl Rng {
    pub fn new() -> Rng {
        Rng
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        TYPE_RNG
    }

    fn features(&self) -> u64 {
        F_RING_INDIRECT_DESC | F_VERSION_1
    }

    fn queue_sizes(&self) -> Vec<u16> {
        vec![256; QUEUES]
    }

    fn config_read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process(&mut self, q: usize, queues: &mut Queues) -> Result<(), GuestError> {
        let mem = queues.mem;
        while let Some(chain) = io::pop(&mut queues.queues[q], mem) {
            let mut total = 0u32;
            for b in chain.writable() {
                let n = (b.len as usize).min(MAX_CHUNK - total as usize);
                let mut bytes = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    // SAFETY: getrandom writes at most `n - got` bytes into
                    // the live vector.
                    let r = unsafe {
                        libc::getrandom(bytes[got..].as_mut_ptr() as *mut libc::c_void, n - got, 0)
                    };
                    if r <= 0 {
                        break;
                    }
                    got += r as usize;
                }
                io::write(mem, b.addr, &bytes[..got])?;
                total += got as u32;
                if total as usize >= MAX_CHUNK || got < n {
                    break;
                }
            }
            queues.add_used(q, chain.head, total)?;
        }
        Ok(())
    }

    fn vmstate(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        RngState {}.to_state()
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        RngState::from_state(st, "virtio-rng").map(|_| ())
    }
}

migration::vmstate! {
    /// virtio-rng has no state of its own.
    pub static VMSTATE = "virtio-rng-device", version 1, minimum 1;
    pub struct RngState {}
}

crate::virtio_pci_vmstate!(PCI_VMSTATE, "virtio-rng", RngState);
