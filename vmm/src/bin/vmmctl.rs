//! `vmmctl`: tools beside the VMM.
//!
//! `vmmctl vmstate-check OLD.json NEW.json` compares two `-dump-vmstate`
//! dumps and lists every change that breaks migration between them; exit
//! status 1 if there is any.
//!
//! `vmmctl abi-check KEPT.json NOW.json` compares a release's record of a
//! machine type's guest ABI (`vmm -M TYPE -dump-abi`) with a build's and
//! lists every difference, naming device, property or register and both
//! values; exit status 1 if there is any.
//!
//! `vmmctl analyze-migration FILE` prints a saved stream's sections and
//! their field values, decoded with the description the stream carries.
//!
//! `vmmctl --qmp SOCKET migrate URI` starts a live migration and shows its
//! progress until it ends, then a summary; `vmmctl --qmp SOCKET status`
//! prints the VM's status (and the last migration's).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: vmmctl vmstate-check OLD.json NEW.json | vmmctl abi-check KEPT.json NOW.json | vmmctl analyze-migration FILE | vmmctl --qmp SOCKET migrate URI | vmmctl --qmp SOCKET status";

/// A QMP connection: greeting, capabilities, then commands (events are
/// skipped).
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &str) -> Result<Qmp> {
        let s = UnixStream::connect(path)
            .with_context(|| format!("cannot connect to the QMP socket {path}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Qmp {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            bail!("{path} does not speak QMP: {greeting}");
        }
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            bail!("the VMM closed the QMP connection");
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn cmd(&mut self, name: &str, args: Value) -> Result<Value> {
        let msg = json!({"execute": name, "arguments": args});
        writeln!(self.w, "{msg}")?;
        loop {
            let r = self.read()?;
            if r.get("event").is_some() {
                continue;
            }
            if let Some(e) = r.get("error") {
                bail!("{name}: {}", e["desc"].as_str().unwrap_or("failed"));
            }
            return Ok(r["return"].clone());
        }
    }
}

fn mib(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64
}

/// One progress line: how much of the work known so far is done (bytes
/// sent against bytes sent plus the dirty bytes still to send, so the bar
/// fills as a pass runs and ends full), the rate and the pass.
fn progress_line(m: &Value) -> String {
    let ram = &m["ram"];
    let sent = ram["transferred"].as_u64().unwrap_or(0);
    let left = ram["remaining"].as_u64().unwrap_or(0);
    let frac = if sent + left == 0 {
        0.0
    } else {
        sent as f64 / (sent + left) as f64
    };
    let width = 30;
    let full = (frac * width as f64).round() as usize;
    // The last pass's measured rate; during the first, the average so far.
    let rate = match ram["mbps"].as_f64() {
        Some(mbps) if mbps > 0.0 => mbps / 8.0,
        _ => match m["total-time"].as_u64() {
            Some(ms) if ms > 0 => sent as f64 / 1e3 / ms as f64,
            _ => 0.0,
        },
    };
    format!(
        "[{}{}] {:>3.0}%  {:.1} MiB sent, {:.1} MiB left  {:.1} MB/s  pass {}  dirty {} pages/s  ({:.0} MiB guest){}",
        "#".repeat(full),
        " ".repeat(width - full),
        frac * 100.0,
        mib(&ram["transferred"]),
        mib(&ram["remaining"]),
        rate,
        // Passes done, and the one under way while the migration is active.
        ram["dirty-sync-count"].as_u64().unwrap_or(0) + u64::from(m["status"] == "active"),
        ram["dirty-pages-rate"].as_u64().unwrap_or(0),
        mib(&ram["total"]),
        m["cpu-throttle-percentage"]
            .as_u64()
            .map(|t| format!("  throttle {t}%"))
            .unwrap_or_default()
    )
}

fn migrate(sock: &str, uri: &str) -> Result<i32> {
    let mut q = Qmp::connect(sock)?;
    q.cmd("migrate", json!({ "uri": uri }))?;
    let tty = std::io::stdout().is_terminal();
    let t0 = Instant::now();
    let mut last_print: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    let m = loop {
        let m = q.cmd("query-migrate", json!({}))?;
        let status = m["status"].as_str().unwrap_or("").to_string();
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            break m;
        }
        // Nothing to draw until the first pass knows its dirty pages and
        // RAM moves: before, only the stream's header has gone out.
        let ram = &m["ram"];
        let moving = status == "active"
            && ram["transferred"].as_u64().unwrap_or(0) > 0
            && (ram["remaining"].as_u64().unwrap_or(0) > 0
                || ram["dirty-sync-count"].as_u64().unwrap_or(0) > 0);
        // A terminal gets a bar redrawn in place; a pipe a line a second.
        if moving && tty {
            print!("\r{}", progress_line(&m));
            std::io::stdout().flush()?;
        } else if moving && last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            println!("{}", progress_line(&m));
            last_print = Some(Instant::now());
        }
        if let Some(why) = m["not-converging"].as_str() {
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                eprintln!("{}not converging: {why}", if tty { "\n" } else { "" });
                last_warning = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        if t0.elapsed() > Duration::from_secs(24 * 3600) {
            return Err(anyhow!("gave up waiting"));
        }
    };
    // The final figures, however short the migration was (none for one
    // that ended before any RAM moved).
    let moved = m["ram"]["transferred"].as_u64().unwrap_or(0) > 0;
    if moved || m["status"] == "completed" {
        println!("{}{}", if tty { "\r" } else { "" }, progress_line(&m));
    }
    let status = m["status"].as_str().unwrap_or("");
    println!(
        "migration {status}: total {} ms, downtime {} ms, setup {} ms, {:.1} MiB sent ({} pages, {} zero), {} passes",
        m["total-time"],
        m["downtime"].as_u64().map_or("-".into(), |d| d.to_string()),
        m["setup-time"],
        mib(&m["ram"]["transferred"]),
        m["ram"]["normal"],
        m["ram"]["duplicate"],
        m["ram"]["dirty-sync-count"]
    );
    if let Some(e) = m["error-desc"].as_str() {
        println!("error: {e}");
    }
    Ok(if status == "completed" { 0 } else { 1 })
}

fn status(sock: &str) -> Result<i32> {
    let mut q = Qmp::connect(sock)?;
    let s = q.cmd("query-status", json!({}))?;
    println!("status: {}", s["status"].as_str().unwrap_or("?"));
    let m = q.cmd("query-migrate", json!({}))?;
    if let Some(st) = m["status"].as_str() {
        println!("migration: {st}");
        if m.get("ram").is_some() {
            println!("  {}", progress_line(&m));
        }
        if let Some(e) = m["error-desc"].as_str() {
            println!("  error: {e}");
        }
    }
    Ok(0)
}

fn read(path: &str) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))
}

fn run() -> Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["vmstate-check", old, new] => {
            let report = migration::compat::check(&read(old)?, &read(new)?);
            for n in &report.notes {
                println!("note: {n}");
            }
            for e in &report.errors {
                println!("incompatible: {e}");
            }
            if report.errors.is_empty() {
                println!("compatible: {new} can receive migrations from {old} and send to it");
                Ok(0)
            } else {
                Ok(1)
            }
        }
        ["abi-check", kept, now] => {
            let diff = vmm::abi::compare(&read(kept)?, &read(now)?);
            for d in &diff {
                println!("changed: {d}");
            }
            if diff.is_empty() {
                println!("same: {now} shows a guest what {kept} recorded");
                Ok(0)
            } else {
                Ok(1)
            }
        }
        ["analyze-migration", file] => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
            for line in migration::analyze::analyze(&bytes).with_context(|| file.to_string())? {
                println!("{line}");
            }
            Ok(0)
        }
        ["--qmp", sock, "migrate", uri] => migrate(sock, uri),
        ["--qmp", sock, "status"] => status(sock),
        ["--help"] | ["-h"] | [] => {
            println!("{USAGE}");
            Ok(0)
        }
        other => bail!("unknown command {other:?}; {USAGE}"),
    }
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!(
                "vmmctl: {}",
                e.chain()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(": ")
            );
            std::process::exit(2);
        }
    }
}
