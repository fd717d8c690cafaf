//! Feeds arbitrary bytes to the certificate-subject reader `tls-authz`
//! runs on a client's certificate (before anything else trusts it): it
//! must return `None` or a string, never panic, hang or over-allocate.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(s) = migration::tls::dn::subject(data) {
        assert!(
            s.len() <= data.len() * 4 + 64,
            "a subject longer than its certificate can say"
        );
    }
});
