//! The README's first command: `scripts/demo.sh` boots the test guest,
//! live-migrates a second one, and exits 0 when both report PASS (it once
//! printed its last PASS line and still exited 1).

use std::process::Command;

#[test]
fn demo_passes_both_phases_and_exits_0() {
    vmm_tests::require_kvm();
    // The machine is set up (scripts/test.sh ran setup.sh before any test).
    let out = Command::new(vmm_tests::workspace().join("scripts/demo.sh"))
        .arg("--no-setup")
        .output()
        .expect("run scripts/demo.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "RESULT PASS",
        "== guest reported PASS",
        "== guest reported PASS after moving",
    ] {
        assert!(lines.contains(&want), "no {want:?} in\n{text}\n{err}");
    }
    // vmmctl's progress ends on the final figures, then the summary.
    let summary = lines
        .iter()
        .position(|l| l.starts_with("migration completed"))
        .unwrap_or_else(|| panic!("no summary\n{text}"));
    assert!(summary > 0 && lines[summary - 1].contains("100%"), "{text}");
    assert_eq!(lines.last(), Some(&"== guest reported PASS after moving"));
}
