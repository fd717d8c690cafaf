//! The command line, QEMU-style: single-dash long options (`-smp`,
//! `-kernel`, `-device`) work exactly like their `--` forms.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about = "A KVM virtual machine monitor built for live migration across versions"
)]
pub struct Args {
    /// Machine type and properties: TYPE[,prop=value] (`-M help` lists them)
    #[arg(short = 'M', long = "machine", value_name = "TYPE[,PROP=VALUE]")]
    pub machine: Option<String>,
    /// Guest RAM: a size with an optional K, M, G or T suffix (default M)
    #[arg(
        short = 'm',
        long = "memory",
        value_name = "SIZE",
        default_value = "128M"
    )]
    pub memory: String,
    /// Number of vCPUs
    #[arg(long = "smp", value_name = "N", default_value = "1")]
    pub smp: String,
    /// The CPU: host (the default) or a named model, with +FEATURE,
    /// -FEATURE, FEATURE=on|off, enforce, check, migratable (-cpu help)
    #[arg(long = "cpu", value_name = "MODEL[,OPTION...]")]
    pub cpu: Option<String>,
    /// The accelerator: kvm (the default) or qtest (no vCPUs: a client
    /// drives the board over -qtest)
    #[arg(long = "accel", value_name = "kvm|qtest")]
    pub accel: Option<String>,

    /// Where the qtest client is, with -accel qtest
    #[arg(long = "qtest", value_name = "unix:PATH[,server=on]|stdio")]
    pub qtest: Option<String>,

    /// The kernel: an ELF with a PVH entry note (e.g. Linux vmlinux, the test guest)
    #[arg(long = "kernel", value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// An initrd, handed to the kernel as a PVH module
    #[arg(long = "initrd", value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line
    #[arg(long = "append", value_name = "CMDLINE", default_value = "")]
    pub append: String,
    /// No graphics: the serial port is the console (the only mode vmm has)
    #[arg(long = "nographic")]
    pub nographic: bool,
    /// Serial port backend: stdio, file:PATH or none
    #[arg(long = "serial", value_name = "BACKEND", default_value = "stdio")]
    pub serial: String,
    /// A name for the VM (logs, and QMP's query-name later)
    #[arg(long = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// Start with the vCPUs paused
    #[arg(short = 'S')]
    pub paused: bool,
    /// Exit instead of resetting when the guest reboots
    #[arg(long = "no-reboot")]
    pub no_reboot: bool,
    /// Become USER (and its groups) before opening anything: the images,
    /// taps, sockets and /dev/kvm must then be that user's to open
    #[arg(long = "runas", value_name = "USER")]
    pub runas: Option<String>,
    /// The seccomp sandbox: on (the default) or off
    #[arg(long = "sandbox", value_name = "on|off")]
    pub sandbox: Option<String>,
    /// Add a device: TYPE[,PROP=VALUE...] (`-device help` lists them)
    #[arg(long = "device", value_name = "TYPE[,PROP=VALUE]")]
    pub device: Vec<String>,
    /// Set a property default for a device type: TYPE.PROP=VALUE
    #[arg(long = "global", value_name = "TYPE.PROP=VALUE")]
    pub global: Vec<String>,
    /// Write every state description of the machine type as JSON to FILE and exit
    #[arg(long = "dump-vmstate", value_name = "FILE")]
    pub dump_vmstate: Option<PathBuf>,
    /// Write what a guest sees of the machine type's hardware (every device
    /// type with default properties, config space, features, ACPI, memory
    /// map) as JSON to FILE and exit
    #[arg(long = "dump-abi", value_name = "FILE")]
    pub dump_abi: Option<PathBuf>,
    /// Wait for the VM's state instead of booting: file:PATH (a `migrate file:` stream)
    #[arg(long = "incoming", value_name = "URI")]
    pub incoming: Option<String>,
    /// A disk image: file=PATH,if=none,id=ID,format=raw[,readonly=on]
    #[arg(long = "drive", value_name = "OPTIONS")]
    pub drive: Vec<String>,
    /// A disk image, QAPI style: driver=file,node-name=ID,filename=PATH[,read-only=on]
    #[arg(long = "blockdev", value_name = "OPTIONS")]
    pub blockdev: Vec<String>,
    /// A network backend: tap,id=ID,ifname=NAME[,script=no,downscript=no]
    #[arg(long = "netdev", value_name = "OPTIONS")]
    pub netdev: Vec<String>,
    /// A character device: file,id=ID,path=PATH or null,id=ID
    #[arg(long = "chardev", value_name = "OPTIONS")]
    pub chardev: Vec<String>,
    /// An object: tls-creds-x509,id=ID,dir=DIR,endpoint=server|client[,verify-peer=on|off],
    /// tls-creds-psk,id=ID,dir=DIR,endpoint=server|client[,username=NAME],
    /// or authz-simple,id=ID,identity=DN (a comma in DN written ',,')
    #[arg(long = "object", value_name = "OPTIONS")]
    pub object: Vec<String>,
    /// A QMP monitor: unix:PATH,server=on,wait=off or tcp:HOST:PORT,server=on,wait=off
    #[arg(long = "qmp", value_name = "ADDRESS")]
    pub qmp: Vec<String>,
    /// Print the resolved machine and devices as JSON, with where every
    /// property value came from, and exit without starting the VM
    #[arg(long = "print-config")]
    pub print_config: bool,
}

/// Rewrites QEMU's single-dash long options to clap's double-dash form.
/// Only arguments in option position are touched, never option values.
pub fn normalize(argv: Vec<String>) -> Vec<String> {
    let cmd = <Args as clap::CommandFactory>::command();
    let longs: Vec<(String, bool)> = cmd
        .get_arguments()
        .filter_map(|a| {
            a.get_long()
                .map(|l| (l.to_string(), a.get_action().takes_values()))
        })
        .chain([("help".to_string(), false), ("version".to_string(), false)])
        .collect();
    let shorts_with_value: Vec<char> = cmd
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_short())
        .collect();
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.into_iter();
    if let Some(prog) = it.next() {
        out.push(prog);
    }
    while let Some(a) = it.next() {
        let takes_value = if let Some(name) = a
            .strip_prefix('-')
            .filter(|n| !n.starts_with('-') && n.len() > 1)
        {
            let (n, inline) = name
                .split_once('=')
                .map_or((name, false), |(n, _)| (n, true));
            match longs.iter().find(|(l, _)| l == n) {
                Some((_, tv)) => {
                    out.push(format!("-{a}"));
                    *tv && !inline
                }
                // QEMU has no short-option clusters: an unknown `-word` is
                // an unknown long option, and clap should name it so.
                None => {
                    out.push(format!("-{a}"));
                    false
                }
            }
        } else if let Some(s) = a
            .strip_prefix('-')
            .filter(|n| n.len() == 1)
            .and_then(|n| n.chars().next())
        {
            out.push(a);
            shorts_with_value.contains(&s)
        } else if let Some(n) = a.strip_prefix("--") {
            let tv = longs.iter().any(|(l, tv)| l == n && *tv);
            out.push(a);
            tv
        } else {
            out.push(a);
            false
        };
        if takes_value {
            if let Some(v) = it.next() {
                out.push(v);
            }
        }
    }
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("invalid memory size '{0}': expected a number with an optional K, M, G or T suffix")]
    Invalid(String),
}

/// Parses a QEMU-style size; a bare number means MiB (as QEMU's `-m`).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let err = || SizeError::Invalid(s.to_string());
    let t = s.trim();
    let (num, shift) = match t.chars().last().ok_or_else(err)? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        c if c.is_ascii_digit() => (t, 20),
        _ => return Err(err()),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn single_dash_long_options_become_double_dash() {
        let out = normalize(v(&[
            "vmm",
            "-smp",
            "2",
            "-kernel",
            "-weird-file",
            "-m",
            "1G",
            "-nographic",
            "-S",
        ]));
        assert_eq!(
            out,
            v(&[
                "vmm",
                "--smp",
                "2",
                "--kernel",
                "-weird-file",
                "-m",
                "1G",
                "--nographic",
                "-S"
            ])
        );
        let out = normalize(v(&[
            "vmm",
            "-device",
            "isa-debug-exit,iobase=0xf4",
            "-no-reboot",
            "--append",
            "-x",
        ]));
        assert_eq!(
            out,
            v(&[
                "vmm",
                "--device",
                "isa-debug-exit,iobase=0xf4",
                "--no-reboot",
                "--append",
                "-x"
            ])
        );
        let a =
            Args::try_parse_from(normalize(v(&["vmm", "-smp", "4", "-M", "pc-q35-5.1"]))).unwrap();
        assert_eq!(
            (a.smp.as_str(), a.machine.as_deref()),
            ("4", Some("pc-q35-5.1"))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("5G"), Ok(5 << 30));
        assert_eq!(parse_size("64"), Ok(64 << 20));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
