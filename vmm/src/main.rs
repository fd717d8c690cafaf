//! `vmm`: boot a guest on KVM, QEMU-style command line.

mod backends;
mod cli;
mod config;
mod fault;
mod hypervisor;
mod kvm;
mod qmp;
mod runstate;
mod snapshot;
mod vm;
mod vmstate;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let argv = cli::normalize(std::env::args().collect());
    let args = match cli::Args::try_parse_from(argv) {
        Ok(a) => a,
        // --help and --version are not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // clap's first line, as the one sentence users get for any error.
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid command line")
                .trim_start_matches("error: ");
            eprintln!("vmm: {first}; try --help");
            std::process::exit(1);
        }
    };
    let code = match config::from_args(args).and_then(|a| match a {
        config::Action::Print(s) => {
            print!("{s}");
            Ok(0)
        }
        config::Action::Run(cfg) => vm::run(&cfg),
        config::Action::DumpVmstate(path, m) => vmstate::dump(&path, m).map(|_| 0),
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: {}", one_sentence(&e));
            1
        }
    };
    qmp::remove_sockets();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// The error and its causes as one line: "what failed: why".
fn one_sentence(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
