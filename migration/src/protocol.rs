//! The handshake beside the stream: one text line per message, each
//! ending in `\n`, spelled here and nowhere else.
//!
//! ```text
//! source                                  destination
//!   stream: header, sections, RAM ...  ->
//!   empty `ram` PART (or a channel's
//!   SYNC record), while the guest runs ->
//!                                      <-   SYNC      (everything before it is in)
//!   devices, EOF                       ->
//!                                      <-   LOADED    (or ERR reason)
//!   GO                                 ->             (committed: the guest is theirs)
//!                                      <-   RUNNING   (its first vCPU runs)
//! ```
//!
//! A destination that cannot take the stream answers `ERR` with the reason
//! at any point; the source then resumes the guest.
//!
//! Before all this, a source that would send RAM on multifd channels asks
//! on a connection of its own whether the destination takes them (the
//! probe, see `multifd`): `MULTIFD n` says it takes up to `n`; `SYNC` is
//! what a release up to 0.2.0 answers (it takes the probe for an empty
//! channel), and then RAM goes on the main stream.

use std::fmt;

/// One handshake line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Destination: everything sent before the sync point has been placed.
    Sync,
    /// Destination: the whole stream loaded; waiting for GO.
    Loaded,
    /// Source: the migration is committed; run the guest.
    Go,
    /// Destination: the guest's first vCPU is about to run.
    Running,
    /// Destination: the stream was refused, and why.
    Err(String),
    /// Destination, to a multifd probe: it takes up to this many channels.
    Multifd(u32),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown handshake line '{0}'")]
pub struct UnknownLine(pub String);

impl Line {
    /// Parses a line, with or without its newline.
    pub fn parse(s: &str) -> Result<Line, UnknownLine> {
        let s = s.trim_end_matches(['\n', '\r']);
        Ok(match s {
            "SYNC" => Line::Sync,
            "LOADED" => Line::Loaded,
            "GO" => Line::Go,
            "RUNNING" => Line::Running,
            // A refusal whose reason was empty (its trailing space trimmed).
            "ERR" => Line::Err(String::new()),
            _ => {
                if let Some(why) = s.strip_prefix("ERR ") {
                    Line::Err(why.to_string())
                } else if let Some(n) = s.strip_prefix("MULTIFD ").and_then(|n| n.parse().ok()) {
                    Line::Multifd(n)
                } else {
                    return Err(UnknownLine(s.to_string()));
                }
            }
        })
    }

    /// The line as sent, newline included (a reason's own newlines become
    /// spaces: one message, one line).
    pub fn encode(&self) -> Vec<u8> {
        format!("{self}\n").into_bytes()
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Sync => f.write_str("SYNC"),
            Line::Loaded => f.write_str("LOADED"),
            Line::Go => f.write_str("GO"),
            Line::Running => f.write_str("RUNNING"),
            Line::Err(why) => write!(f, "ERR {}", why.replace(['\n', '\r'], " ")),
            Line::Multifd(n) => write!(f, "MULTIFD {n}"),
        }
    }
}

/// Wall-clock microseconds, to line up both sides' debug logs.
pub fn wall_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_round_trips_and_strangers_are_named() {
        for l in [
            Line::Sync,
            Line::Loaded,
            Line::Go,
            Line::Running,
            Line::Err("machine type received is 'pc-q35-7.2'".into()),
            Line::Multifd(255),
        ] {
            let wire = String::from_utf8(l.encode()).unwrap();
            assert!(wire.ends_with('\n') && wire.matches('\n').count() == 1);
            assert_eq!(Line::parse(&wire), Ok(l));
        }
        assert_eq!(
            String::from_utf8(Line::Err("two\nlines".into()).encode()).unwrap(),
            "ERR two lines\n"
        );
        assert_eq!(
            Line::parse("HELLO").unwrap_err().to_string(),
            "unknown handshake line 'HELLO'"
        );
        assert_eq!(Line::parse("ERR"), Ok(Line::Err(String::new())));
        assert!(Line::parse("go").is_err() && Line::parse("ERRor").is_err());
        assert!(Line::parse("MULTIFD").is_err() && Line::parse("MULTIFD -1").is_err());
    }
}
