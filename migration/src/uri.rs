//! Where a migration goes or comes from: QEMU's URIs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A migration URI, as `migrate` and `-incoming` take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uri {
    /// `tcp:HOST:PORT`
    Tcp(String),
    /// `unix:PATH`
    Unix(PathBuf),
    /// `fd:NAME` or `fd:N`: a descriptor passed with `getfd` (by name), or
    /// an inherited one (a number).
    Fd(String),
    /// `file:PATH`: a saved VM.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid migration URI '{0}': expected tcp:HOST:PORT, unix:PATH, fd:N or file:PATH")]
pub struct BadUri(pub String);

impl FromStr for Uri {
    type Err = BadUri;

    fn from_str(uri: &str) -> Result<Uri, BadUri> {
        let bad = || BadUri(uri.to_string());
        let (scheme, rest) = uri.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        Ok(match scheme {
            "tcp" if rest.contains(':') => Uri::Tcp(rest.to_string()),
            "unix" => Uri::Unix(rest.into()),
            "fd" => Uri::Fd(rest.to_string()),
            "file" => Uri::File(rest.into()),
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Tcp(a) => write!(f, "tcp:{a}"),
            Uri::Unix(p) => write!(f, "unix:{}", p.display()),
            Uri::Fd(n) => write!(f, "fd:{n}"),
            Uri::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_print_back_and_bad_ones_say_what_is_expected() {
        for (text, uri) in [
            ("tcp:10.0.0.2:4444", Uri::Tcp("10.0.0.2:4444".into())),
            ("unix:/run/m.sock", Uri::Unix("/run/m.sock".into())),
            ("fd:7", Uri::Fd("7".into())),
            ("fd:mig", Uri::Fd("mig".into())),
            ("file:/tmp/vm.snap", Uri::File("/tmp/vm.snap".into())),
        ] {
            assert_eq!(text.parse::<Uri>(), Ok(uri.clone()));
            assert_eq!(uri.to_string(), text);
        }
        for bad in ["tcp:host", "fd:", "ftp:a", "unix:", "nothing"] {
            let e = bad.parse::<Uri>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("tcp:HOST:PORT"), "{e}");
        }
    }
}
