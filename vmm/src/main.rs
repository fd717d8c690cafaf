//! `vmm`: boot a guest on KVM, QEMU-style command line.

use clap::Parser;
use vmm::{abi, cli, config, qmp, vm, vmstate};

fn main() {
    // Before anything is opened: what `migrate fd:N` may take.
    migration::transport::note_inherited_fds();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // A panic is a bug: say where, in one line, and end the process (the
    // release build aborts; nothing goes on half alive).
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        eprintln!(
            "vmm: thread '{}' panicked at {at}: {what}; vmm stops (a bug: please report it)",
            thread.name().unwrap_or("unnamed")
        );
    }));
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
        config::Action::DumpAbi(path, m) => abi::dump(&path, m).map(|_| 0),
        config::Action::DumpDtb(path, cfg) => vm::dump_dtb(&path, &cfg).map(|_| 0),
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: {}", one_sentence(&e));
            1
        }
    };
    qmp::remove_sockets();
    // A qtest request that ended the VM still gets its reply.
    vmm::qtest::flush(std::time::Duration::from_secs(2));
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
