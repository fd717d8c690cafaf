//! The `vmm` binary. The command line and the KVM board come with issue #3;
//! until then it only says so.

fn main() {
    eprintln!(
        "vmm {}: not yet able to run guests (see issue #3)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(1);
}
