//! `-smp`: how many vCPUs, and how they are arranged into sockets, dies,
//! cores and threads, as QEMU parses it (`hw/core/machine-smp.c`); and the
//! APIC IDs that follow from the arrangement (`include/hw/i386/topology.h`):
//! each level gets the bits its count needs, threads lowest.

use std::fmt;

/// The vCPUs and their arrangement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// vCPUs present at start.
    pub cpus: u32,
    /// vCPUs the machine has room for (the MADT lists them all).
    pub maxcpus: u32,
    pub sockets: u32,
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
    /// CPUID tells the whole arrangement: the 0xB/0x1F sub-leaves KVM's
    /// table lacks are added, and AMD's 0x80000008 ECX and 0x8000001E are
    /// filled. Off, only leaves 1, 4 and the 0xB/0x1F sub-leaves KVM gave
    /// are patched, as vmm up to 0.2.0 did; its guests keep that
    /// ([`Topology::released_0_2`]).
    pub full_cpuid: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "invalid -smp '{0}': expected N[,maxcpus=M][,sockets=S][,dies=D][,cores=C][,threads=T]"
    )]
    Syntax(String),
    #[error("invalid CPU topology: product of the hierarchy must match maxcpus: sockets ({sockets}) * dies ({dies}) * cores ({cores}) * threads ({threads}) != maxcpus ({maxcpus})")]
    Product {
        sockets: u32,
        dies: u32,
        cores: u32,
        threads: u32,
        maxcpus: u32,
    },
    #[error(
        "invalid CPU topology: maxcpus ({maxcpus}) must be at least the number of vCPUs ({cpus})"
    )]
    Maxcpus { cpus: u32, maxcpus: u32 },
    #[error("invalid -smp {smp}: {what} must be at least 1")]
    Zero { smp: String, what: &'static str },
    #[error("invalid -smp: {maxcpus} vCPUs is more than this machine's {limit}")]
    TooMany { maxcpus: u32, limit: u32 },
    #[error(
        "invalid -smp {smp}: its APIC IDs reach {highest}, past the 254 an xAPIC MADT entry holds"
    )]
    ApicIds { smp: String, highest: u32 },
}

/// The bits a level of `count` members needs in an APIC ID.
fn width(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

impl Topology {
    /// One socket of `cpus` cores: what vmm up to 0.2.0 gave every guest.
    pub fn flat(cpus: u32) -> Topology {
        Topology {
            cpus,
            maxcpus: cpus,
            sockets: 1,
            dies: 1,
            cores: cpus,
            threads: 1,
            full_cpuid: true,
        }
    }

    /// What vmm up to 0.2.0 gave a guest of `cpus` vCPUs: one socket of
    /// cores, CPUID patched only where it patched it.
    pub fn released_0_2(cpus: u32) -> Topology {
        Topology {
            full_cpuid: false,
            ..Topology::flat(cpus)
        }
    }

    /// Parses `-smp`; omitted counts are filled in as QEMU does:
    /// sockets first before QEMU 6.2's machine types (`prefer_sockets`),
    /// cores first since; at most `limit` vCPUs.
    pub fn parse(s: &str, prefer_sockets: bool, limit: u32) -> Result<Topology, Error> {
        let bad = || Error::Syntax(s.to_string());
        const NAMES: [&str; 6] = ["cpus", "maxcpus", "sockets", "dies", "cores", "threads"];
        let mut v = [0u32; 6];
        for (i, part) in s.split(',').enumerate() {
            let (k, val) = match part.split_once('=') {
                Some(kv) => kv,
                None if i == 0 => ("cpus", part),
                None => return Err(bad()),
            };
            let slot = NAMES.iter().position(|n| *n == k).ok_or_else(bad)?;
            v[slot] = val.parse().map_err(|_| bad())?;
            // As QEMU 6.2+: a count given must be at least 1.
            if v[slot] == 0 {
                return Err(Error::Zero {
                    smp: s.to_string(),
                    what: NAMES[slot],
                });
            }
        }
        let [cpus, mut maxcpus, mut sockets, dies, mut cores, mut threads] = v;
        let dies = dies.max(1);
        if cpus == 0 && maxcpus == 0 {
            sockets = sockets.max(1);
            cores = cores.max(1);
            threads = threads.max(1);
        } else {
            if maxcpus == 0 {
                maxcpus = cpus;
            }
            if prefer_sockets {
                if sockets == 0 {
                    cores = cores.max(1);
                    threads = threads.max(1);
                    sockets = maxcpus / (dies * cores * threads);
                } else if cores == 0 {
                    threads = threads.max(1);
                    cores = maxcpus / (sockets * dies * threads);
                }
            } else if cores == 0 {
                sockets = sockets.max(1);
                threads = threads.max(1);
                cores = maxcpus / (sockets * dies * threads);
            } else if sockets == 0 {
                threads = threads.max(1);
                sockets = maxcpus / (dies * cores * threads);
            }
            if threads == 0 {
                threads = maxcpus / (sockets * dies * cores).max(1);
            }
        }
        let total = sockets * dies * cores * threads;
        if maxcpus == 0 {
            maxcpus = total;
        }
        let cpus = if cpus == 0 { maxcpus } else { cpus };
        if total != maxcpus || total == 0 {
            return Err(Error::Product {
                sockets,
                dies,
                cores,
                threads,
                maxcpus,
            });
        }
        if maxcpus < cpus {
            return Err(Error::Maxcpus { cpus, maxcpus });
        }
        if maxcpus > limit {
            return Err(Error::TooMany { maxcpus, limit });
        }
        let t = Topology {
            cpus,
            maxcpus,
            sockets,
            dies,
            cores,
            threads,
            full_cpuid: true,
        };
        // APIC IDs grow with the index; the last is the highest.
        let highest = t.apic_id(maxcpus - 1);
        if highest > 254 {
            return Err(Error::ApicIds {
                smp: s.to_string(),
                highest,
            });
        }
        Ok(t)
    }

    pub fn smt_width(&self) -> u32 {
        width(self.threads)
    }

    pub fn core_offset(&self) -> u32 {
        self.smt_width()
    }

    pub fn die_offset(&self) -> u32 {
        self.core_offset() + width(self.cores)
    }

    /// Where the package (socket) number starts in an APIC ID.
    pub fn pkg_offset(&self) -> u32 {
        self.die_offset() + width(self.dies)
    }

    /// Logical processors per package.
    pub fn threads_per_pkg(&self) -> u32 {
        self.threads * self.cores * self.dies
    }

    /// vCPU `index`'s (socket, die, core, thread).
    pub fn position(&self, index: u32) -> (u32, u32, u32, u32) {
        let thread = index % self.threads;
        let core = (index / self.threads) % self.cores;
        let die = (index / (self.threads * self.cores)) % self.dies;
        let socket = index / self.threads_per_pkg();
        (socket, die, core, thread)
    }

    /// vCPU `index`'s APIC ID.
    pub fn apic_id(&self, index: u32) -> u32 {
        let (socket, die, core, thread) = self.position(index);
        socket << self.pkg_offset() | die << self.die_offset() | core << self.core_offset() | thread
    }
}

impl fmt::Display for Topology {
    /// As `-smp` takes it, every count spelled out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},maxcpus={},sockets={},dies={},cores={},threads={}",
            self.cpus, self.maxcpus, self.sockets, self.dies, self.cores, self.threads
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, prefer_sockets: bool) -> Result<Topology, Error> {
        Topology::parse(s, prefer_sockets, 255)
    }

    /// QEMU's own examples (docs/system/..., machine-smp.c).
    #[test]
    fn counts_are_filled_in_as_qemu_does() {
        let t = p("8,sockets=2,cores=2,threads=2", false).unwrap();
        assert_eq!((t.sockets, t.cores, t.threads, t.maxcpus), (2, 2, 2, 8));
        // Before 6.2 the sockets take the rest, since the cores do.
        let t = p("4", true).unwrap();
        assert_eq!((t.sockets, t.cores, t.threads), (4, 1, 1));
        let t = p("4", false).unwrap();
        assert_eq!((t.sockets, t.cores, t.threads), (1, 4, 1));
        let t = p("8,sockets=2", false).unwrap();
        assert_eq!((t.sockets, t.cores, t.threads), (2, 4, 1));
        let t = p("8,cores=2", true).unwrap();
        assert_eq!((t.sockets, t.cores, t.threads), (4, 2, 1));
        let t = p("2,maxcpus=4", false).unwrap();
        assert_eq!((t.cpus, t.maxcpus, t.cores), (2, 4, 4));
        let t = p("sockets=2,cores=3", false).unwrap();
        assert_eq!((t.cpus, t.maxcpus), (6, 6));
        let e = p("8,sockets=3,cores=2", false).unwrap_err().to_string();
        assert!(
            e.contains("sockets (3) * dies (1) * cores (2) * threads (1) != maxcpus (8)"),
            "{e}"
        );
        assert!(matches!(
            p("4,maxcpus=2", false),
            Err(Error::Maxcpus { .. })
        ));
        assert!(matches!(p("4,nodes=2", false), Err(Error::Syntax(_))));
        assert!(matches!(p("x", false), Err(Error::Syntax(_))));
        assert!(matches!(p("300", false), Err(Error::TooMany { .. })));
        // 85 cores need 7 bits: the third socket starts at APIC ID 256.
        assert!(matches!(
            p("255,sockets=3,cores=85", false),
            Err(Error::ApicIds { highest: 340, .. })
        ));
        assert!(matches!(
            p("4,cores=0", false),
            Err(Error::Zero { what: "cores", .. })
        ));
    }

    #[test]
    fn apic_ids_give_each_level_its_bits() {
        let t = p("8,sockets=2,cores=2,threads=2", false).unwrap();
        let ids: Vec<u32> = (0..8).map(|i| t.apic_id(i)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(t.pkg_offset(), 2);
        // Three cores need two bits: the fourth value is skipped.
        let t = p("6,sockets=2,cores=3", false).unwrap();
        let ids: Vec<u32> = (0..6).map(|i| t.apic_id(i)).collect();
        assert_eq!(ids, [0, 1, 2, 4, 5, 6]);
        assert_eq!(t.position(4), (1, 0, 1, 0));
        let flat = Topology::flat(3);
        assert_eq!(
            (0..3).map(|i| flat.apic_id(i)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }
}
