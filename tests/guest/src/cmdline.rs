//! `key=value` options from the kernel command line.

pub struct Cmdline<'a>(pub &'a str);

impl<'a> Cmdline<'a> {
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .split_ascii_whitespace()
            .find_map(|w| match w.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if w == key => Some(""),
                _ => None,
            })
    }
    pub fn u64(&self, key: &str, default: u64) -> u64 {
        self.get(key).and_then(parse_u64).unwrap_or(default)
    }
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("") | Some("1") | Some("on") | Some("yes")
        )
    }
    /// Whether `key` is a comma-separated list that contains `item`.
    pub fn list_has(&self, key: &str, item: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.split(',').any(|x| x == item))
    }
}

/// Decimal or 0x-hex, with an optional K/M/G suffix.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = if let Some(h) = num.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else {
        num.parse::<u64>().ok()?
    };
    v.checked_mul(mult)
}
