//! QEMU's qtest line protocol (`system/qtest.c`): one request per line,
//! words separated by single spaces, numbers as C's `strtoul` with base 0
//! reads them (`0x` hex, a leading `0` octal, else decimal); one reply
//! line per request, `OK ...`, `FAIL ...` or `ERR ...`.
//!
//! Where QEMU asserts on a malformed request (and ends the VM), vmm
//! replies `FAIL` with the reason and goes on: the VM loses nothing to a
//! bad line.

use thiserror::Error;

/// The most bytes one `read`, `write` or `memset` may cover: a request
/// is answered from one buffer.
pub const MAX_TRANSFER: u64 = 64 << 20;

/// An access's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    B = 1,
    W = 2,
    L = 4,
    Q = 8,
}

impl Width {
    fn from_suffix(c: u8) -> Option<Width> {
        Some(match c {
            b'b' => Width::B,
            b'w' => Width::W,
            b'l' => Width::L,
            b'q' => Width::Q,
            _ => return None,
        })
    }

    pub fn bytes(self) -> usize {
        self as usize
    }

    /// `v` cut to this width (what the access carries of it).
    pub fn truncate(self, v: u64) -> u64 {
        match self {
            Width::Q => v,
            w => v & ((1u64 << (8 * w.bytes())) - 1),
        }
    }
}

/// One request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `outb|outw|outl PORT VALUE`.
    Out { width: Width, port: u16, value: u32 },
    /// `inb|inw|inl PORT`.
    In { width: Width, port: u16 },
    /// `writeb|writew|writel|writeq ADDR VALUE`, in the target's byte order.
    Write { width: Width, addr: u64, value: u64 },
    /// `readb|readw|readl|readq ADDR`.
    Read { width: Width, addr: u64 },
    /// `read ADDR SIZE` (hex reply) or `b64read ADDR SIZE` (base64 reply).
    ReadBuf { addr: u64, len: u64, base64: bool },
    /// `write ADDR SIZE 0xDATA` or `b64write ADDR SIZE B64DATA`: `data`
    /// is SIZE bytes (short hex data is zero-filled, as QEMU does).
    WriteBuf { addr: u64, data: Vec<u8> },
    /// `memset ADDR SIZE VALUE`.
    Memset { addr: u64, len: u64, byte: u8 },
    /// `endianness`.
    Endianness,
    /// `clock_step [NS]`: by NS, or to the next timer deadline (NS is an
    /// int64, as QEMU reads it: a negative step fails).
    ClockStep(Option<i64>),
    /// `clock_set NS`.
    ClockSet(i64),
    /// `irq_intercept_in|irq_intercept_out QOM-PATH [NAME]`.
    IrqIntercept { outbound: bool, path: String },
    /// `set_irq_in QOM-PATH NAME NUM LEVEL`.
    SetIrqIn { path: String },
    /// `rtas NAME NARGS ARGS NRET RET` (sPAPR): a call with NARGS
    /// big-endian 32-bit arguments at ARGS, its NRET results to RET.
    Rtas {
        name: String,
        nargs: u32,
        args: u64,
        nret: u32,
        ret: u64,
    },
    /// `hcall OPCODE [ARG...]` (sPAPR; vmm's own, QEMU's qtest has none):
    /// the PAPR hypercall a vCPU would make with r3 = OPCODE and up to
    /// nine arguments from r4. The reply is `OK R3 R4 ... R12` in hex.
    Hcall { opcode: u64, args: Vec<u64> },
}

/// Why a request line cannot be served; the text follows `FAIL ` (or
/// `ERR `, where QEMU says that) in the reply.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("Unknown command '{0}'")]
    Unknown(String),
    #[error("{command}: missing {what}")]
    Missing { command: String, what: &'static str },
    #[error("{command}: '{word}' is not a number")]
    Number { command: String, word: String },
    #[error("{command}: port {port:#x} is beyond 0xffff")]
    Port { command: String, port: u64 },
    #[error("{command}: {len} bytes is more than one request may cover ({max} MiB)", max = MAX_TRANSFER >> 20)]
    TooLong { command: String, len: u64 },
    #[error("hcall: {0} arguments, more than the nine registers r4 to r12")]
    HcallArgs(usize),
    #[error("read: a length of 0 reads nothing")]
    EmptyRead,
    /// QEMU's own words for data shorter than `0x` plus one digit.
    #[error("invalid argument size")]
    DataSize,
    #[error("{command}: '{data}' is not {what}")]
    Data {
        command: String,
        data: String,
        what: &'static str,
    },
}

impl Error {
    /// The reply line for this error (QEMU's `ERR` for bad data sizes,
    /// `FAIL` for everything else).
    pub fn reply(&self) -> String {
        match self {
            Error::DataSize => format!("ERR {self}"),
            _ => format!("FAIL {self}"),
        }
    }
}

/// `strtoul(s, NULL, 0)` for a whole word: hex after `0x`, octal after a
/// leading `0`, decimal otherwise; a leading `-` wraps, as in C.
pub fn number(s: &str) -> Option<u64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// `qemu_strtoi64(s, NULL, 0)`: [`number`]'s syntax, signed.
pub fn signed(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if digits.starts_with(['-', '+']) {
        return None;
    }
    let v = i64::try_from(number(digits)?).ok()?;
    Some(if neg { -v } else { v })
}

/// Parses one request line (without its newline).
pub fn parse(line: &str) -> Result<Request, Error> {
    let words: Vec<&str> = line.split(' ').collect();
    let command = words[0];
    let arg = |i: usize, what: &'static str| -> Result<&str, Error> {
        words
            .get(i)
            .copied()
            .filter(|w| !w.is_empty())
            .ok_or_else(|| Error::Missing {
                command: command.to_string(),
                what,
            })
    };
    let num = |i: usize, what: &'static str| -> Result<u64, Error> {
        let w = arg(i, what)?;
        number(w).ok_or_else(|| Error::Number {
            command: command.to_string(),
            word: w.to_string(),
        })
    };
    let int = |i: usize, what: &'static str| -> Result<i64, Error> {
        let w = arg(i, what)?;
        signed(w).ok_or_else(|| Error::Number {
            command: command.to_string(),
            word: w.to_string(),
        })
    };
    let port = |i: usize| -> Result<u16, Error> {
        let p = num(i, "port")?;
        u16::try_from(p).map_err(|_| Error::Port {
            command: command.to_string(),
            port: p,
        })
    };
    let length = |i: usize| -> Result<u64, Error> {
        let len = num(i, "size")?;
        if len > MAX_TRANSFER {
            return Err(Error::TooLong {
                command: command.to_string(),
                len,
            });
        }
        Ok(len)
    };
    let suffix = |prefix: &str| {
        command
            .strip_prefix(prefix)
            .filter(|s| s.len() == 1)
            .and_then(|s| Width::from_suffix(s.as_bytes()[0]))
    };
    Ok(match command {
        "outb" | "outw" | "outl" => Request::Out {
            width: suffix("out").expect("matched"),
            port: port(1)?,
            value: num(2, "value")? as u32,
        },
        "inb" | "inw" | "inl" => Request::In {
            width: suffix("in").expect("matched"),
            port: port(1)?,
        },
        "writeb" | "writew" | "writel" | "writeq" => Request::Write {
            width: suffix("write").expect("matched"),
            addr: num(1, "address")?,
            value: num(2, "value")?,
        },
        "readb" | "readw" | "readl" | "readq" => Request::Read {
            width: suffix("read").expect("matched"),
            addr: num(1, "address")?,
        },
        "read" | "b64read" => {
            let len = length(2)?;
            if len == 0 && command == "read" {
                return Err(Error::EmptyRead);
            }
            Request::ReadBuf {
                addr: num(1, "address")?,
                len,
                base64: command == "b64read",
            }
        }
        "write" | "b64write" => {
            let addr = num(1, "address")?;
            let len = length(2)? as usize;
            let text = arg(3, "data")?;
            if text.len() < 3 {
                return Err(Error::DataSize);
            }
            let bad = |what| Error::Data {
                command: command.to_string(),
                data: text.to_string(),
                what,
            };
            let data = if command == "write" {
                let hex = text
                    .strip_prefix("0x")
                    .ok_or_else(|| bad("hex data starting with 0x"))?;
                from_hex(hex, len).ok_or_else(|| bad("hex data"))?
            } else {
                // QEMU writes SIZE bytes whatever the data's length.
                let mut d = from_base64(text).ok_or_else(|| bad("base64 data"))?;
                d.resize(len, 0);
                d
            };
            Request::WriteBuf { addr, data }
        }
        "memset" => Request::Memset {
            addr: num(1, "address")?,
            len: length(2)?,
            byte: num(3, "value")? as u8,
        },
        "endianness" => Request::Endianness,
        "clock_step" => Request::ClockStep(match words.get(1) {
            Some(w) if !w.is_empty() => Some(int(1, "nanoseconds")?),
            _ => None,
        }),
        "clock_set" => Request::ClockSet(int(1, "nanoseconds")?),
        "irq_intercept_in" | "irq_intercept_out" => Request::IrqIntercept {
            outbound: command.ends_with("out"),
            path: arg(1, "QOM path")?.to_string(),
        },
        "set_irq_in" => Request::SetIrqIn {
            path: arg(1, "QOM path")?.to_string(),
        },
        "hcall" => {
            let opcode = num(1, "hypercall number")?;
            let n = words.len().saturating_sub(2);
            if n > 9 {
                return Err(Error::HcallArgs(n));
            }
            let args = (2..words.len())
                .map(|i| num(i, "argument"))
                .collect::<Result<_, _>>()?;
            Request::Hcall { opcode, args }
        }
        "rtas" => {
            let count = |i, what| -> Result<u32, Error> {
                let n = num(i, what)?;
                // RTAS buffers are a page; a count past it is a typo.
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= arch::ppc64::rtas::MAX_CELLS)
                    .ok_or_else(|| Error::Number {
                        command: command.to_string(),
                        word: n.to_string(),
                    })
            };
            Request::Rtas {
                name: arg(1, "RTAS call")?.to_string(),
                nargs: count(2, "argument count")?,
                args: num(3, "arguments' address")?,
                nret: count(4, "result count")?,
                ret: num(5, "results' address")?,
            }
        }
        other => return Err(Error::Unknown(other.to_string())),
    })
}

/// `len` bytes from hex digit pairs; missing pairs are zero (QEMU's rule).
fn from_hex(hex: &str, len: usize) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).expect("checked") as u8;
    Some(
        (0..len)
            .map(|i| match digits.get(2 * i..2 * i + 2) {
                Some(p) => nib(p[0]) << 4 | nib(p[1]),
                None => 0,
            })
            .collect(),
    )
}

/// Lower-case hex digits, two per byte (the `read` reply after `0x`).
pub fn to_hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * data.len());
    for b in data {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (glib's `g_base64_encode`).
pub fn to_base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional).
pub fn from_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_strtoul_base_0() {
        assert_eq!(number("0x1F"), Some(31));
        assert_eq!(number("017"), Some(15));
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("42"), Some(42));
        assert_eq!(number("-1"), Some(u64::MAX));
        assert_eq!(number("0x"), None);
        assert_eq!(number("09"), None);
        assert_eq!(number("x"), None);
        assert_eq!(signed("-5"), Some(-5));
        assert_eq!(signed("0x10"), Some(16));
        assert_eq!(signed("--5"), None);
        assert_eq!(signed("0xffffffffffffffff"), None);
        assert_eq!(to_hex(&[0, 0xab, 0x7f]), "00ab7f");
    }

    #[test]
    fn requests_parse_as_qemu_reads_them() {
        assert_eq!(
            parse("outl 0xcf8 0x80000000"),
            Ok(Request::Out {
                width: Width::L,
                port: 0xcf8,
                value: 0x8000_0000
            })
        );
        assert_eq!(
            parse("inw 0xcfc"),
            Ok(Request::In {
                width: Width::W,
                port: 0xcfc
            })
        );
        assert_eq!(
            parse("writeq 0x1000 0x1122334455667788"),
            Ok(Request::Write {
                width: Width::Q,
                addr: 0x1000,
                value: 0x1122_3344_5566_7788
            })
        );
        assert_eq!(
            parse("write 0x10 4 0xaabb"),
            Ok(Request::WriteBuf {
                addr: 0x10,
                data: vec![0xaa, 0xbb, 0, 0]
            })
        );
        assert_eq!(
            parse("b64write 0x10 3 AQID"),
            Ok(Request::WriteBuf {
                addr: 0x10,
                data: vec![1, 2, 3]
            })
        );
        assert_eq!(parse("clock_step"), Ok(Request::ClockStep(None)));
        assert_eq!(
            parse("rtas ibm,read-pci-config 4 0x100000 2 0x101000"),
            Ok(Request::Rtas {
                name: "ibm,read-pci-config".into(),
                nargs: 4,
                args: 0x10_0000,
                nret: 2,
                ret: 0x10_1000
            })
        );
        assert_eq!(
            parse("hcall 0x58 0 2 0x6869000000000000"),
            Ok(Request::Hcall {
                opcode: 0x58,
                args: vec![0, 2, 0x6869_0000_0000_0000]
            })
        );
        assert_eq!(
            parse("hcall 0x54 1 2 3 4 5 6 7 8 9 10"),
            Err(Error::HcallArgs(10))
        );
        assert_eq!(parse("clock_step 100"), Ok(Request::ClockStep(Some(100))));
        assert_eq!(parse("clock_step -1"), Ok(Request::ClockStep(Some(-1))));
        assert_eq!(
            parse("memset 0 16 0x1ff"),
            Ok(Request::Memset {
                addr: 0,
                len: 16,
                byte: 0xff
            })
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(
            parse("frob 1").unwrap_err().reply(),
            "FAIL Unknown command 'frob'"
        );
        assert_eq!(
            parse("outb 0x10000 1").unwrap_err().reply(),
            "FAIL outb: port 0x10000 is beyond 0xffff"
        );
        assert_eq!(
            parse("readl zz").unwrap_err().reply(),
            "FAIL readl: 'zz' is not a number"
        );
        assert_eq!(
            parse("writel 0x1000").unwrap_err().reply(),
            "FAIL writel: missing value"
        );
        assert_eq!(
            parse("write 0 1 0x").unwrap_err().reply(),
            "ERR invalid argument size"
        );
        assert_eq!(parse("read 0 0"), Err(Error::EmptyRead));
        assert!(matches!(
            parse("read 0 0x100000000"),
            Err(Error::TooLong { .. })
        ));
        assert!(matches!(parse("write 0 2 0xzz"), Err(Error::Data { .. })));
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..10 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 5) as u8).collect();
            assert_eq!(from_base64(&to_base64(&data)).as_deref(), Some(&data[..]));
        }
        assert_eq!(to_base64(b"vmm"), "dm1t");
        assert_eq!(to_base64(b"vm"), "dm0=");
        assert_eq!(from_base64("d*"), None);
    }

    #[test]
    fn widths_truncate_values() {
        assert_eq!(Width::B.truncate(0x1ff), 0xff);
        assert_eq!(Width::L.truncate(u64::MAX), 0xffff_ffff);
        assert_eq!(Width::Q.truncate(u64::MAX), u64::MAX);
    }
}
