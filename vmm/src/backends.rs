//! Device backends from the command line: `-drive`/`-blockdev` (raw image
//! files), `-netdev tap`, `-chardev file|null`. Parsed and cross-checked
//! against the `-device`s that use them before anything is created.

use anyhow::{anyhow, bail, Result};
use devices::model::Props;
use std::path::PathBuf;

/// A disk image.
#[derive(Debug, Clone)]
pub struct Drive {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
    /// The backend offers VIRTIO_F_VERSION_1 (off only to test the
    /// legacy-only backend behaviour).
    pub version_1: bool,
}

/// A tap network backend.
#[derive(Debug, Clone)]
pub struct Netdev {
    pub id: String,
    pub ifname: String,
    pub version_1: bool,
}

#[derive(Debug, Clone)]
pub enum ChardevKind {
    File(PathBuf),
    Null,
}

#[derive(Debug, Clone)]
pub struct Chardev {
    pub id: String,
    pub kind: ChardevKind,
}

#[derive(Debug, Clone, Default)]
pub struct Backends {
    pub drives: Vec<Drive>,
    pub netdevs: Vec<Netdev>,
    pub chardevs: Vec<Chardev>,
}

/// An option's leading word (`tap` in `tap,id=...`) and its pairs.
type Parsed<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>);

/// `key=value` pairs after an optional leading word (`tap,id=...`).
fn pairs<'a>(opt: &'a str, what: &str) -> Result<Parsed<'a>> {
    let mut head = None;
    let mut v = vec![];
    for (i, part) in opt.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, val)) => v.push((k, val)),
            None if i == 0 => head = Some(part),
            None => bail!("invalid -{what} option '{part}': expected KEY=VALUE"),
        }
    }
    Ok((head, v))
}

fn flag(what: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => bail!("invalid -{what} {key}={v}: expected on or off"),
    }
}

fn parse_drive(opt: &str) -> Result<Drive> {
    let (head, kv) = pairs(opt, "drive")?;
    if let Some(h) = head {
        bail!("invalid -drive option '{h}': expected KEY=VALUE");
    }
    let (mut id, mut path, mut ro, mut v1, mut iface) = (None, None, false, true, None);
    for (k, v) in kv {
        match k {
            "file" => path = Some(PathBuf::from(v)),
            "id" => id = Some(v.to_string()),
            "if" => iface = Some(v),
            "format" if v == "raw" => {}
            "format" => bail!("-drive format={v} is not supported: vmm reads raw images only"),
            "readonly" | "read-only" => ro = flag("drive", k, v)?,
            "cache" | "aio" | "discard" => log::info!("-drive {k}={v} ignored"),
            "x-virtio-version-1" => v1 = flag("drive", k, v)?,
            _ => bail!("unknown -drive option '{k}'; valid: file, id, if, format, readonly, x-virtio-version-1"),
        }
    }
    if iface != Some("none") {
        bail!("-drive needs if=none: attach the drive with -device virtio-blk-pci,drive=ID");
    }
    Ok(Drive {
        id: id.ok_or_else(|| anyhow!("-drive needs id=ID"))?,
        path: path.ok_or_else(|| anyhow!("-drive needs file=PATH"))?,
        read_only: ro,
        version_1: v1,
    })
}

fn parse_blockdev(opt: &str) -> Result<Drive> {
    let (head, kv) = pairs(opt, "blockdev")?;
    if let Some(h) = head {
        bail!("invalid -blockdev option '{h}': expected KEY=VALUE");
    }
    let (mut id, mut path, mut ro, mut v1) = (None, None, false, true);
    for (k, v) in kv {
        match k {
            "driver" if v == "file" || v == "raw" => {}
            "driver" => bail!("-blockdev driver={v} is not supported: use driver=file or driver=raw with file.driver=file"),
            "file.driver" if v == "file" => {}
            "file.driver" => bail!("-blockdev file.driver={v} is not supported: use file"),
            "filename" | "file.filename" => path = Some(PathBuf::from(v)),
            "node-name" => id = Some(v.to_string()),
            "read-only" => ro = flag("blockdev", k, v)?,
            "cache.direct" | "cache.no-flush" | "discard" | "aio" => log::info!("-blockdev {k}={v} ignored"),
            "x-virtio-version-1" => v1 = flag("blockdev", k, v)?,
            _ => bail!("unknown -blockdev option '{k}'; valid: driver, node-name, filename, file.driver, file.filename, read-only"),
        }
    }
    Ok(Drive {
        id: id.ok_or_else(|| anyhow!("-blockdev needs node-name=ID"))?,
        path: path
            .ok_or_else(|| anyhow!("-blockdev needs filename=PATH (or file.filename=PATH)"))?,
        read_only: ro,
        version_1: v1,
    })
}

fn parse_netdev(opt: &str) -> Result<Netdev> {
    let (head, kv) = pairs(opt, "netdev")?;
    match head {
        Some("tap") => {}
        Some(t) => bail!("-netdev {t} is not supported: vmm has tap backends only"),
        None => bail!("-netdev needs a type first: -netdev tap,id=ID,ifname=NAME"),
    }
    let (mut id, mut ifname, mut v1) = (None, None, true);
    for (k, v) in kv {
        match k {
            "id" => id = Some(v.to_string()),
            "ifname" => ifname = Some(v.to_string()),
            "script" | "downscript" if v == "no" => {}
            "script" | "downscript" => bail!("-netdev tap {k}={v} is not supported: vmm runs no scripts; use {k}=no and set the tap up beforehand"),
            "vhost" if v == "off" => {}
            "vhost" => bail!("-netdev tap vhost={v} is not supported: vmm's virtio-net runs in userspace"),
            "x-virtio-version-1" => v1 = flag("netdev", k, v)?,
            _ => bail!("unknown -netdev tap option '{k}'; valid: id, ifname, script, downscript, vhost"),
        }
    }
    Ok(Netdev {
        id: id.ok_or_else(|| anyhow!("-netdev needs id=ID"))?,
        ifname: ifname.ok_or_else(|| {
            anyhow!("-netdev tap needs ifname=NAME (an existing tap, or one vmm may create)")
        })?,
        version_1: v1,
    })
}

fn parse_chardev(opt: &str) -> Result<Chardev> {
    let (head, kv) = pairs(opt, "chardev")?;
    let (mut id, mut path) = (None, None);
    for (k, v) in kv {
        match k {
            "id" => id = Some(v.to_string()),
            "path" => path = Some(PathBuf::from(v)),
            _ => bail!("unknown -chardev option '{k}'; valid: id, path"),
        }
    }
    let id = id.ok_or_else(|| anyhow!("-chardev needs id=ID"))?;
    let kind = match head {
        Some("file") => {
            ChardevKind::File(path.ok_or_else(|| anyhow!("-chardev file needs path=PATH"))?)
        }
        Some("null") => ChardevKind::Null,
        Some(t) => bail!("-chardev {t} is not supported: use file or null"),
        None => bail!("-chardev needs a type first: -chardev file,id=ID,path=PATH"),
    };
    Ok(Chardev { id, kind })
}

/// Parses every backend option and checks that each device (by its
/// resolved properties) names a backend that exists, and is its only user.
pub fn parse(a: &crate::cli::Args, devices: &[&Props]) -> Result<Backends> {
    let mut b = Backends::default();
    for d in &a.drive {
        b.drives.push(parse_drive(d)?);
    }
    for d in &a.blockdev {
        b.drives.push(parse_blockdev(d)?);
    }
    for n in &a.netdev {
        b.netdevs.push(parse_netdev(n)?);
    }
    for c in &a.chardev {
        b.chardevs.push(parse_chardev(c)?);
    }
    let ids: Vec<(&str, &str)> = b
        .drives
        .iter()
        .map(|d| ("drive", d.id.as_str()))
        .chain(b.netdevs.iter().map(|n| ("netdev", n.id.as_str())))
        .chain(b.chardevs.iter().map(|c| ("chardev", c.id.as_str())))
        .collect();
    for (i, (kind, id)) in ids.iter().enumerate() {
        if ids[..i].iter().any(|(k, x)| k == kind && x == id) {
            bail!("duplicate {kind} id '{id}'");
        }
    }
    let mut used: Vec<(&str, String)> = vec![];
    let mut serial_buses = devices
        .iter()
        .filter(|d| d.type_name == "virtio-serial-pci")
        .count();
    for d in devices {
        let (kind, prop, known): (&str, &str, Vec<&str>) = match d.type_name {
            "virtio-blk-pci" => (
                "drive",
                "drive",
                b.drives.iter().map(|x| x.id.as_str()).collect(),
            ),
            "virtio-net-pci" => (
                "netdev",
                "netdev",
                b.netdevs.iter().map(|x| x.id.as_str()).collect(),
            ),
            "virtconsole" => {
                if serial_buses == 0 {
                    bail!("virtconsole needs a virtio-serial-pci to sit on (one console port each): add -device virtio-serial-pci");
                }
                serial_buses -= 1;
                (
                    "chardev",
                    "chardev",
                    b.chardevs.iter().map(|x| x.id.as_str()).collect(),
                )
            }
            _ => continue,
        };
        let id = d.str(prop).unwrap_or_default();
        if id.is_empty() {
            bail!("{} needs {prop}=ID naming a -{kind}", d.type_name);
        }
        if !known.contains(&id.as_str()) {
            bail!(
                "{}: {prop} '{id}' not found; the -{kind}s given are: {}",
                d.type_name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        if used.iter().any(|(k, x)| *k == kind && *x == id) {
            bail!("{kind} '{id}' is used by two devices");
        }
        used.push((kind, id));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_and_blockdev_spellings() {
        let d = parse_drive("file=/x.img,if=none,id=d0,format=raw,readonly=on").unwrap();
        assert_eq!(
            (d.id.as_str(), d.read_only, d.version_1),
            ("d0", true, true)
        );
        let d = parse_blockdev("driver=raw,node-name=b0,file.driver=file,file.filename=/y.img")
            .unwrap();
        assert_eq!(d.path, PathBuf::from("/y.img"));
        assert!(parse_drive("file=/x.img,id=d0")
            .unwrap_err()
            .to_string()
            .contains("if=none"));
        assert!(parse_drive("file=/x,if=none,id=d,format=qcow2")
            .unwrap_err()
            .to_string()
            .contains("qcow2"));
        let n =
            parse_netdev("tap,id=n0,ifname=tap0,script=no,downscript=no,x-virtio-version-1=off")
                .unwrap();
        assert!(!n.version_1);
        assert!(parse_netdev("user,id=n0")
            .unwrap_err()
            .to_string()
            .contains("tap"));
        assert!(parse_chardev("file,id=c0")
            .unwrap_err()
            .to_string()
            .contains("path"));
    }
}
