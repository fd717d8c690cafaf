//! A certificate's subject as the string QEMU's `tls-authz` compares:
//! what GnuTLS's `gnutls_x509_crt_get_dn` gives QEMU — the relative names
//! in the certificate's order (not RFC 4514's reversed one: GnuTLS keeps
//! its pre-3.5.6 order there), `,` between them, `+` inside a
//! multi-valued one, the usual short names (`CN`, `O`, `C`, ...), special
//! characters escaped as RFC 4514 says — so an `authz-simple` identity
//! written for QEMU matches here (the QEMU TLS test checks one identity
//! on both).

/// A DER element: its tag, its contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed element's contents, each `(tag, contents)`.
fn children(mut der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut v = vec![];
    while !der.is_empty() {
        let (tag, body, rest) = element(der)?;
        v.push((tag, body));
        der = rest;
    }
    Some(v)
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject of a DER certificate; `None` if it does not
/// parse as one.
pub fn subject(cert: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let fields = children(tbs)?;
    // version [0] is optional; then serial, signature, issuer, validity,
    // subject.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let &(SEQUENCE, name) = fields.get(skip + 4)? else {
        return None;
    };
    name_string(name)
}

/// An X.501 Name's contents (its RDN sequence), as a string.
pub fn name_string(name: &[u8]) -> Option<String> {
    let mut rdns = vec![];
    for (tag, rdn) in children(name)? {
        if tag != SET {
            return None;
        }
        let mut avas = vec![];
        for (tag, ava) in children(rdn)? {
            let [(OID, oid), (vtag, value)] = children(ava)?[..] else {
                return None;
            };
            if tag != SEQUENCE {
                return None;
            }
            avas.push(attribute(oid, vtag, value)?);
        }
        rdns.push(avas.join("+"));
    }
    Some(rdns.join(","))
}

/// One `type=value`.
fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Option<String> {
    let dotted = dotted(oid)?;
    let name = match dotted.as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "EMAIL",
        _ => {
            // Unknown types: the dotted OID and the value's DER in hex.
            let mut hex = format!("{dotted}=#{tag:02X}");
            hex.push_str(&der_len(value.len()));
            for b in value {
                hex.push_str(&format!("{b:02X}"));
            }
            return Some(hex);
        }
    };
    let text = match tag {
        // UTF8String, PrintableString, IA5String, TeletexString (as
        // Latin-1, as GnuTLS reads it).
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok()?.to_string(),
        0x14 => value.iter().map(|&b| b as char).collect(),
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()?
        }
        _ => return None,
    };
    Some(format!("{name}={}", escape(&text)))
}

fn der_len(n: usize) -> String {
    if n < 0x80 {
        format!("{n:02X}")
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        let mut s = format!("{:02X}", 0x80 | bytes.len());
        for b in bytes {
            s.push_str(&format!("{b:02X}"));
        }
        s
    }
}

/// An OID's contents, dotted.
fn dotted(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut parts = vec![
        (first / 40).min(2) as u64,
        first as u64 - 40 * (first / 40).min(2) as u64,
    ];
    let mut v: u64 = 0;
    for &b in rest {
        v = v.checked_mul(128)? | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            parts.push(v);
            v = 0;
        }
    }
    Some(
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// RFC 4514 section 2.4: `,+"\<>;` anywhere, `#` or a space first, a
/// space last.
fn escape(s: &str) -> String {
    let n = s.chars().count();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element.
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
        }
        v.extend_from_slice(body);
        v
    }

    fn rdn(avas: &[(&[u8], u8, &str)]) -> Vec<u8> {
        let body: Vec<u8> = avas
            .iter()
            .flat_map(|(oid, tag, value)| {
                let mut ava = tlv(OID, oid);
                ava.extend(tlv(*tag, value.as_bytes()));
                tlv(SEQUENCE, &ava)
            })
            .collect();
        tlv(SET, &body)
    }

    const C: &[u8] = &[0x55, 4, 6];
    const O: &[u8] = &[0x55, 4, 10];
    const OU: &[u8] = &[0x55, 4, 11];
    const CN: &[u8] = &[0x55, 4, 3];

    fn name() -> Vec<u8> {
        [
            rdn(&[(C, 0x13, "GB")]),
            rdn(&[(O, 0x0c, "Example, Org")]),
            rdn(&[(OU, 0x0c, "a"), (OU, 0x0c, "b")]),
            rdn(&[(CN, 0x0c, " laptop.example.com")]),
        ]
        .concat()
    }

    #[test]
    fn a_name_reads_in_order_and_escaped() {
        assert_eq!(
            name_string(&name()).unwrap(),
            "C=GB,O=Example\\, Org,OU=a+OU=b,CN=\\ laptop.example.com"
        );
        // An attribute nobody names: its OID and value in hex.
        let odd = rdn(&[(&[0x2a, 0x03], 0x0c, "x")]);
        assert_eq!(name_string(&odd).unwrap(), "1.2.3=#0C0178");
    }

    #[test]
    fn the_subject_is_found_in_a_certificate_and_garbage_is_not_one() {
        let alg = tlv(
            SEQUENCE,
            &tlv(OID, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2]),
        );
        let issuer = tlv(SEQUENCE, &rdn(&[(CN, 0x0c, "vmm test CA")]));
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            alg.clone(),
            issuer,
            tlv(SEQUENCE, &[]),
            tlv(SEQUENCE, &name()),
        ]
        .concat();
        let cert = tlv(SEQUENCE, &[tlv(SEQUENCE, &tbs), alg].concat());
        assert_eq!(
            subject(&cert).unwrap(),
            name_string(&name()).unwrap(),
            "the subject, not the issuer"
        );
        for cut in 0..cert.len() {
            assert_eq!(subject(&cert[..cut]), None, "cut at {cut}");
        }
        assert_eq!(subject(b"not a certificate"), None);
    }
}
