// The linker script is an input of the link: rebuild when it changes.
fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
}
