//! A guest's virtqueue, whatever it holds: descriptor chains (direct and
//! indirect, looped, out of memory, of any length) on one queue of one of
//! vmm's virtio devices, served as the device thread serves a doorbell.
//! The device must answer with a used buffer or a guest error, never
//! panic, hang or allocate what a descriptor's length says.
//! Input: [device][queue][flags][log2 queue size][guest memory from 0...]
//! with the descriptor table at 0, the available ring at 0x1000 and the
//! used ring at 0x2000.

#![no_main]

use devices::virtio::{Queues, F_RING_INDIRECT_DESC, F_VERSION_1};
use libfuzzer_sys::fuzz_target;
use std::os::fd::AsRawFd;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_fuzz::{memory, virtio_device, wire};

const MEM: usize = 1 << 16;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const EVENT_IDX: u64 = 1 << 29;

fuzz_target!(|data: &[u8]| {
    let [kind, q, flags, size, image @ ..] = data else {
        return;
    };
    let mem = memory(MEM);
    mem.write_slice(&image[..image.len().min(MEM)], GuestAddress(0))
        .unwrap();
    let (dev_wire, peer) = wire();
    let (mut dev, _) = virtio_device(*kind as usize, || dev_wire);
    // A frame waits on the wire for a receive queue.
    let frame = &image[..image.len().min(1514)];
    // SAFETY: `frame` is valid for its length.
    unsafe { libc::send(peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    let mut features = dev.features();
    for (bit, f) in [(1, F_RING_INDIRECT_DESC), (2, F_VERSION_1), (4, EVENT_IDX)] {
        if flags & bit == 0 {
            features &= !f;
        }
    }
    dev.activate(features);
    let mut queues: Vec<Queue> = dev
        .queue_sizes()
        .iter()
        .map(|&s| Queue::new(s).expect("a device's queue size"))
        .collect();
    let q = *q as usize % queues.len();
    let vq = &mut queues[q];
    vq.set_size(1 << (size % 9).min(vq.max_size().trailing_zeros() as u8));
    vq.set_desc_table_address(Some(0), Some(0));
    vq.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    vq.set_used_ring_address(Some(USED as u32), Some(0));
    vq.set_event_idx(features & EVENT_IDX != 0);
    vq.set_ready(true);
    let mut used = vec![];
    for _ in 0..2 {
        let mut queues = Queues {
            mem: &mem,
            queues: &mut queues,
            used: &mut used,
        };
        if dev.process(q, &mut queues).is_err() {
            return; // the device is broken until the driver resets it
        }
        if dev.backend_fd().is_some() && dev.backend_ready(&mut queues).is_err() {
            return;
        }
    }
});
