//! CPUID for each vCPU, from KVM's supported set: APIC IDs and topology
//! (one socket, `cpus` cores, one thread each), the hypervisor bit; KVM's
//! own leaves (0x40000000..) stay as KVM reports them, so kvm-clock works.

use kvm_bindings::kvm_cpuid_entry2;

/// Patches `entries` (KVM's supported CPUID) for vCPU `apic_id` of `cpus`.
pub fn patch(entries: &mut [kvm_cpuid_entry2], apic_id: u32, cpus: u32) {
    // Bits needed to number the cores.
    let core_bits = 32 - (cpus.max(1) - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | (cpus.min(255) << 16) | (apic_id << 24);
                e.ecx |= 1 << 31; // running under a hypervisor
                if cpus > 1 {
                    e.edx |= 1 << 28; // HTT: the count in EBX[23:16] is valid
                }
            }
            4 => {
                // Cores per package sharing this cache level.
                e.eax = (e.eax & 0x3ff) | ((cpus.saturating_sub(1)) << 26);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // SMT level
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = cpus;
                        e.ecx = (2 << 8) | 1; // core level
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0xa => {
                // No virtual PMU: PVM hosts have none to give.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_id_and_count_land_in_leaf_1_and_0xb() {
        let mut v = vec![
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        patch(&mut v, 3, 4);
        assert_eq!(v[0].ebx >> 24, 3);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4);
        assert_ne!(v[0].ecx & (1 << 31), 0);
        assert_eq!((v[1].eax, v[1].ebx, v[1].edx), (2, 4, 3));
    }
}
