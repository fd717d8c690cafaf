//! virtio-net: frames out through the transmit queue and, with a host-side
//! peer that echoes them (`net_peer=echo`), back in through the receive
//! queue.

use super::{Dev, F_VERSION_1};
use crate::alloc::alloc;
use crate::cmdline::Cmdline;
use crate::io::{read64, read8};
use crate::pci::BdfFmt;
use crate::{println, report};

const F_MAC: u64 = 1 << 5;
pub const FEATURES: u64 = F_MAC;
const RX_BUFS: u16 = 16;
const BUF: u32 = 2048;
const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const MAGIC: &[u8; 8] = b"VMMTEST!";

pub fn test(dev: &Dev, cmd: &Cmdline) {
    let mut mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    if dev.features & F_MAC != 0 {
        for (i, b) in mac.iter_mut().enumerate() {
            *b = dev.t.config8(i as u64);
        }
    }
    // With VERSION_1 the header always carries num_buffers.
    let hdr = if dev.features & F_VERSION_1 != 0 {
        12
    } else {
        10
    };
    let (Some(mut rx), Some(mut tx), Some(rxmem), Some(txbuf)) = (
        dev.queue(0),
        dev.queue(1),
        alloc((RX_BUFS as u32 * BUF) as usize, 4096),
        alloc(BUF as usize, 4096),
    ) else {
        report::check("virtio.net.tx", false);
        return;
    };
    dev.driver_ok();
    for i in 0..RX_BUFS as u64 {
        rx.push(&[(rxmem + i * BUF as u64, BUF, true)]);
    }
    dev.kick(0);
    println!(
        "virtio.{}.net mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} hdr_len={}",
        BdfFmt(dev.bdf),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5],
        hdr
    );
    let echo = cmd.get("net_peer") == Some("echo");
    let frames = cmd.u64("net_frames", 4) as u32;
    let seed = cmd.u64("seed", 1);
    let (mut sent, mut echoed, mut resent) = (0u32, 0u32, 0u32);
    // An echo that does not come back within this is sent again (a frame
    // may be lost on the way, e.g. while the VM moves to another host).
    let retry_ms = cmd.u64("net_retry_ms", 500);
    let tries = (dev.timeout_ms / retry_ms.max(1)).max(1);
    for seq in 0..frames {
        // virtio-net header (all zero: no offloads), then the frame.
        let mut f = [0u8; 128];
        let frame = &mut f[hdr..];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        frame[14..22].copy_from_slice(MAGIC);
        frame[22..26].copy_from_slice(&seq.to_be_bytes());
        frame[26..34].copy_from_slice(&seed.to_be_bytes());
        let len = hdr + 64;
        // SAFETY: txbuf is a 2 KiB DMA allocation; len <= 128.
        unsafe { core::ptr::copy_nonoverlapping(f.as_ptr(), txbuf as *mut u8, len) };
        for attempt in 0..if echo { tries } else { 1 } {
            if attempt > 0 {
                resent += 1;
            }
            tx.push(&[(txbuf, len as u32, false)]);
            dev.kick(1);
            if dev.wait_used(&mut tx).is_some() && attempt == 0 {
                sent += 1;
            }
            if !echo {
                break;
            }
            // Wait for our frame to come back; skip anything else (and
            // late echoes of earlier frames) on the wire.
            let mut ours = false;
            for _ in 0..64 {
                let Some((id, rlen)) = dev.wait_used_for(&mut rx, retry_ms) else {
                    break;
                };
                let buf = read64(rx.desc + 16 * id as u64);
                let got = |o: u64| read8(buf + hdr as u64 + o);
                ours = rlen as usize >= hdr + 34
                    && (0..8).all(|i| got(14 + i) == MAGIC[i as usize])
                    && u32::from_be_bytes([got(22), got(23), got(24), got(25)]) == seq;
                rx.push(&[(buf, BUF, true)]);
                // Re-posting a receive buffer is not a request: the
                // interrupt check stays anchored at the transmit kick
                // (a late duplicate echo was signalled before it).
                dev.t.notify(0);
                if ours {
                    break;
                }
            }
            if ours {
                echoed += 1;
                break;
            }
        }
    }
    println!(
        "virtio.{}.net sent={} echoed={} resent={} peer={}",
        BdfFmt(dev.bdf),
        sent,
        echoed,
        resent,
        if echo { "echo" } else { "none" }
    );
    report::check("virtio.net.tx", sent == frames);
    if echo {
        report::check("virtio.net.echo", echoed == frames);
    }
}
