//! `vmmctl`: tools beside the VMM.
//!
//! `vmmctl vmstate-check OLD.json NEW.json` compares two `-dump-vmstate`
//! dumps and lists every change that breaks migration between them; exit
//! status 1 if there is any.
//!
//! `vmmctl analyze-migration FILE` prints a saved stream's sections and
//! their field values, decoded with the description the stream carries.

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: vmmctl vmstate-check OLD.json NEW.json | vmmctl analyze-migration FILE";

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
        ["analyze-migration", file] => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
            for line in migration::analyze::analyze(&bytes).with_context(|| file.to_string())? {
                println!("{line}");
            }
            Ok(0)
        }
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
