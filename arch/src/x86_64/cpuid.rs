//! CPUID for each vCPU, from the guest's table (`cpu::build`): its APIC
//! ID and the topology (`-smp`) in the leaves that describe them — 1, 4,
//! 0xB/0x1F, and AMD's 0x80000008 and 0x8000001E — as QEMU's
//! `cpu_x86_cpuid` fills them; the hypervisor bit. KVM's own leaves
//! (0x40000000..) stay as KVM reports them, so kvm-clock works.

use super::kvm_cpuid_entry2;
use super::topology::Topology;

/// Patches `entries` for the vCPU with APIC ID `apic_id` in `topo`.
pub fn patch(entries: &mut Vec<kvm_cpuid_entry2>, apic_id: u32, topo: &Topology) {
    let per_pkg = topo.threads_per_pkg();
    // Every level of 0xB (and 0x1F) the topology needs, and the empty one
    // that ends them, where KVM's table has the leaf at all.
    let added = if topo.full_cpuid {
        [(0xb, 3), (0x1f, if topo.dies > 1 { 4 } else { 3 })]
    } else {
        [(0xb, 0), (0x1f, 0)]
    };
    for (leaf, levels) in added {
        let Some(first) = entries.iter().find(|e| e.function == leaf).copied() else {
            continue;
        };
        for index in 0..levels {
            if !entries
                .iter()
                .any(|e| e.function == leaf && e.index == index)
            {
                entries.push(kvm_cpuid_entry2 { index, ..first });
            }
        }
    }
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | (per_pkg.min(255) << 16) | ((apic_id & 0xff) << 24);
                e.ecx |= 1 << 31; // running under a hypervisor
                if per_pkg > 1 {
                    e.edx |= 1 << 28; // HTT: the count in EBX[23:16] is valid
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            4 => {
                // Cores per package (as vmm up to 0.2.0 set it, for one
                // socket of `cpus` cores).
                e.eax = (e.eax & 0x3ff) | ((topo.cores * topo.dies).saturating_sub(1) << 26);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                // 0xB: SMT and core; 0x1F also the die when there are dies.
                let levels: &[(u32, u32, u32)] = if e.function == 0x1f && topo.dies > 1 {
                    &[
                        (topo.smt_width(), topo.threads, 1),
                        (topo.die_offset(), topo.threads * topo.cores, 2),
                        (topo.pkg_offset(), per_pkg, 5),
                    ]
                } else {
                    &[
                        (topo.smt_width(), topo.threads, 1),
                        (topo.pkg_offset(), per_pkg, 2),
                    ]
                };
                match levels.get(e.index as usize) {
                    Some(&(shift, count, kind)) => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = (kind << 8) | e.index;
                    }
                    None => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 if topo.full_cpuid => {
                // NC: threads per package - 1; ApicIdSize: the package shift.
                e.ecx = (e.ecx & !0xf0ff) | (per_pkg - 1).min(255) | (topo.pkg_offset() << 12);
            }
            0x8000_001e if topo.full_cpuid => {
                // QEMU's (legacy-multi-node) encoding: the core within its
                // die, threads per core; the node (die) number and nodes
                // per package.
                let core_mask = (1 << (topo.die_offset() - topo.core_offset())) - 1;
                e.eax = apic_id;
                e.ebx =
                    (topo.threads - 1) << 8 | ((apic_id >> topo.core_offset()) & core_mask & 0xff);
                e.ecx = (topo.dies - 1) << 8 | ((apic_id >> topo.die_offset()) & 0xff);
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

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology_land_in_every_leaf_that_tells_them() {
        let topo = Topology::parse("8,sockets=2,cores=2,threads=2", false, 255).unwrap();
        let mut v = vec![
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ];
        // vCPU 5: socket 1, core 0, thread 1.
        patch(&mut v, topo.apic_id(5), &topo);
        v.sort_by_key(|e| (e.function, e.index));
        let v: Vec<_> = v
            .into_iter()
            .filter(|e| e.function != 0xb || e.index < 3)
            .collect();
        assert_eq!(v[0].ebx >> 24, 5);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4, "logical processors per package");
        assert_ne!(v[0].ecx & (1 << 31), 0);
        assert_ne!(v[0].edx & (1 << 28), 0);
        assert_eq!((v[1].eax, v[1].ebx, v[1].ecx, v[1].edx), (1, 2, 0x100, 5));
        assert_eq!((v[2].eax, v[2].ebx, v[2].ecx, v[2].edx), (2, 4, 0x201, 5));
        assert_eq!((v[3].eax, v[3].ebx, v[3].ecx), (0, 0, 2));
        assert_eq!(v[4].ecx & 0xf0ff, 0x2003);
        assert_eq!(
            (v[5].eax, v[5].ebx & 0xffff, v[5].ecx & 0xff),
            (5, 0x100, 1)
        );
        // Three cores of two threads: core 2 of socket 1 is APIC ID 12.
        let topo = Topology::parse("12,sockets=2,cores=3,threads=2", false, 255).unwrap();
        let mut w = vec![leaf(0x8000_001e, 0)];
        patch(&mut w, topo.apic_id(10), &topo);
        assert_eq!(topo.apic_id(10), 1 << 3 | 2 << 1, "socket 1, core 2");
        assert_eq!((w[0].ebx, w[0].ecx), (0x100 | 2, 1));
    }

    /// A guest from vmm 0.2.0 keeps the leaves 0.2.0 left as KVM gave them:
    /// AMD's 0x80000008 ECX, and no 0xB sub-leaf KVM's table lacked.
    #[test]
    fn released_0_2_topologies_leave_the_full_cpuid_alone() {
        let mut v = vec![kvm_cpuid_entry2 {
            function: 0x8000_0008,
            ecx: 0x7001,
            ..Default::default()
        }];
        v.push(leaf(0xb, 0));
        patch(&mut v, 0, &Topology::released_0_2(1));
        assert_eq!(v[0].ecx, 0x7001);
        assert_eq!(v.len(), 2, "no 0xB sub-leaf added");
        patch(&mut v, 0, &Topology::flat(1));
        assert_eq!(v[0].ecx, 0);
    }
}
