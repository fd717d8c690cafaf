//! Reads a stream with nothing but the stream itself, like QEMU's
//! `analyze-migration.py`: the trailing JSON description says how every
//! section is laid out, so the reader can decode and print all of it.

use crate::stream::{Error, RamSink, Reader, Record};
use crate::vmstate::{Description, Field, Kind, State, Subsection, Val};
use serde_json::Value;

/// A description rebuilt from a vmdesc entry. Leaked: this is for a
/// one-shot tool, and the reader wants `'static` descriptions.
fn description(v: &Value) -> Option<&'static Description> {
    let name: &'static str = Box::leak(v["vmsd_name"].as_str()?.to_string().into_boxed_str());
    let mut fields = vec![];
    for f in v["fields"].as_array()? {
        let fname: &'static str = Box::leak(f["name"].as_str()?.to_string().into_boxed_str());
        let size = f["size"].as_u64()? as usize;
        // QEMU's checked fields ("uint32 equal") are their integers; the
        // types a tool cannot know (a CPU's "fpr" or "slbe", a "bitmap",
        // an "unused_buffer") are shown as the bytes the entry sizes.
        let ty = f["type"].as_str()?;
        let base = match ty.strip_suffix(" equal").unwrap_or(ty) {
            "bool" => Kind::Bool,
            "uint8" => Kind::U8,
            "uint16" => Kind::U16,
            "uint32" => Kind::U32,
            "uint64" => Kind::U64,
            "int32" => Kind::I32,
            "int64" => Kind::I64,
            "struct" => Kind::Struct(description(&f["struct"])?),
            _ => Kind::Buffer(size),
        };
        let kind = match f["array_len"].as_u64() {
            Some(n) => Kind::Array(Box::leak(Box::new(base)), n as usize),
            None => base,
        };
        fields.push(Field {
            name: fname,
            kind,
            since: 0,
        });
    }
    let subs: Vec<Subsection> = v["subsections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some(Subsection {
                        desc: description(s)?,
                        needed: |_| true,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let version = v["version"].as_u64().unwrap_or(0) as u32;
    Some(Box::leak(Box::new(Description {
        name,
        version_id: version,
        minimum_version_id: 0,
        fields: Box::leak(fields.into_boxed_slice()),
        subsections: Box::leak(subs.into_boxed_slice()),
    })))
}

/// The trailing description: `0x06`, be32 length, JSON, at the very end.
fn find_vmdesc(bytes: &[u8]) -> Option<Value> {
    let mut end = bytes.len();
    while let Some(p) = bytes[..end].iter().rposition(|b| *b == b'{') {
        if p >= 5 && bytes[p - 5] == 0x06 {
            let len = u32::from_be_bytes(bytes[p - 4..p].try_into().ok()?) as usize;
            if p + len == bytes.len() {
                return serde_json::from_slice(&bytes[p..]).ok();
            }
        }
        end = p;
    }
    None
}

struct Count {
    pages: u64,
    zero: u64,
}

impl RamSink for Count {
    fn block_len(&self, _: &str) -> Option<u64> {
        None
    }
    fn accept_len(&self, _: &str, stream_len: u64) -> Option<u64> {
        Some(stream_len)
    }
    fn page(&mut self, _: &str, _: u64, data: &[u8]) {
        self.pages += 1;
        self.zero += data.iter().all(|b| *b == 0) as u64;
    }
}

fn render(v: &Val) -> String {
    match v {
        Val::Bool(b) => b.to_string(),
        Val::Uint(u) => format!("{u:#x}"),
        Val::Int(i) => i.to_string(),
        Val::Bytes(b) => {
            let nonzero = b.iter().filter(|x| **x != 0).count();
            let head: Vec<String> = b.iter().take(16).map(|x| format!("{x:02x}")).collect();
            format!(
                "[{} bytes, {nonzero} non-zero] {}{}",
                b.len(),
                head.join(" "),
                if b.len() > 16 { " ..." } else { "" }
            )
        }
        Val::Array(a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(", ")),
        Val::Struct(s) => format!("{{ {} }}", fields(s).join(", ")),
    }
}

fn fields(s: &State) -> Vec<String> {
    s.fields
        .iter()
        .map(|(n, v)| format!("{n}: {}", render(v)))
        .collect()
}

/// The stream, described line by line.
pub fn analyze(bytes: &[u8]) -> Result<Vec<String>, Error> {
    let mut out = vec![];
    let vmdesc = find_vmdesc(bytes);
    let descs: Vec<(String, u32, &'static Description)> = vmdesc
        .as_ref()
        .and_then(|j| j["devices"].as_array())
        .map(|devs| {
            devs.iter()
                .filter_map(|d| {
                    Some((
                        d["name"].as_str()?.to_string(),
                        d["instance_id"].as_u64()? as u32,
                        description(d)?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    // The machine type, to open the stream with.
    let machine = bytes
        .get(
            13..13
                + u32::from_be_bytes(
                    bytes
                        .get(9..13)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0; 4]),
                ) as usize,
        )
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    let mut r = Reader::new(bytes, &machine)?;
    out.push(format!(
        "savevm stream v3, machine type '{machine}', {} bytes, description: {}",
        bytes.len(),
        if vmdesc.is_some() { "yes" } else { "no" }
    ));
    let lookup = |id: &str, inst: u32| descs.iter().find(|d| d.0 == id && d.1 == inst).map(|d| d.2);
    let mut count = Count { pages: 0, zero: 0 };
    loop {
        let at = r.offset();
        match r.next_record(&lookup, &mut count)? {
            Record::Ram { pages, last } => {
                out.push(format!(
                    "@{at}: ram {} pages={pages}",
                    if last {
                        "END"
                    } else if pages == 0 {
                        "START/PART"
                    } else {
                        "PART"
                    }
                ));
            }
            Record::Htab { pass, last } => {
                let what = match pass {
                    crate::htab::Pass::Free => "no table".to_string(),
                    crate::htab::Pass::Order(o) => format!("table of 2^{o} bytes"),
                    crate::htab::Pass::Chunks(c) => format!(
                        "{} chunks, {} entries, {} cleared",
                        c.len(),
                        c.iter().map(|c| u64::from(c.n_valid())).sum::<u64>(),
                        c.iter().map(|c| u64::from(c.n_invalid)).sum::<u64>()
                    ),
                };
                out.push(format!(
                    "@{at}: {} {} {what}",
                    crate::htab::IDSTR,
                    if last { "END" } else { "START/PART" }
                ));
            }
            Record::Section {
                idstr,
                instance,
                version,
                state,
            } => {
                out.push(format!(
                    "@{at}: section '{idstr}' instance {instance} version {version}"
                ));
                out.extend(fields(&state).into_iter().map(|f| format!("    {f}")));
                for (name, sub) in &state.subsections {
                    out.push(format!("    subsection '{name}'"));
                    out.extend(fields(sub).into_iter().map(|f| format!("        {f}")));
                }
            }
            Record::Eof { .. } => {
                out.push(format!(
                    "@{at}: EOF; RAM: {} pages, {} of them zero",
                    count.pages, count.zero
                ));
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Writer;
    use vm_memory::VolatileSlice;

    static INNER: Description = Description {
        name: "inner",
        version_id: 1,
        minimum_version_id: 1,
        fields: &[Field {
            name: "x",
            kind: Kind::U32,
            since: 0,
        }],
        subsections: &[],
    };
    static SUB: Description = Description {
        name: "dev/sub",
        version_id: 1,
        minimum_version_id: 1,
        fields: &[Field {
            name: "flag",
            kind: Kind::Bool,
            since: 0,
        }],
        subsections: &[],
    };
    static U16: Kind = Kind::U16;
    static DEV: Description = Description {
        name: "dev",
        version_id: 2,
        minimum_version_id: 1,
        fields: &[
            Field {
                name: "a",
                kind: Kind::U64,
                since: 0,
            },
            Field {
                name: "b",
                kind: Kind::Array(&U16, 2),
                since: 0,
            },
            Field {
                name: "c",
                kind: Kind::Buffer(3),
                since: 0,
            },
            Field {
                name: "n",
                kind: Kind::Struct(&INNER),
                since: 0,
            },
        ],
        subsections: &[Subsection {
            desc: &SUB,
            needed: |_| true,
        }],
    };

    #[test]
    fn decodes_everything_from_the_stream_alone() {
        let mut inner = State::default();
        inner.set("x", Val::Uint(7));
        let mut sub = State::default();
        sub.set("flag", Val::Bool(true));
        let mut st = State::default();
        st.set("a", Val::Uint(0xdead_beef))
            .set("b", Val::Array(vec![Val::Uint(1), Val::Uint(2)]))
            .set("c", Val::Bytes(vec![0, 9, 0]))
            .set("n", Val::Struct(inner));
        st.subsections.push(("dev/sub", sub));
        let mut w = Writer::new(Vec::new(), "pc-q35-8.0").unwrap();
        let id = w.ram_start(&[("pc.ram", 8192)]).unwrap();
        w.ram_pages(
            id,
            true,
            [
                ("pc.ram", 0, VolatileSlice::from(&mut [0u8; 4096][..])),
                ("pc.ram", 4096, VolatileSlice::from(&mut [1u8; 4096][..])),
            ],
        )
        .unwrap();
        w.section("0000:00:02.0/dev", 3, &DEV, &st).unwrap();
        let text = analyze(&w.finish().unwrap()).unwrap().join("\n");
        for want in [
            "machine type 'pc-q35-8.0'",
            "section '0000:00:02.0/dev' instance 3 version 2",
            "a: 0xdeadbeef",
            "b: [0x1, 0x2]",
            "c: [3 bytes, 1 non-zero] 00 09 00",
            "n: { x: 0x7 }",
            "subsection 'dev/sub'",
            "flag: true",
            "RAM: 2 pages, 1 of them zero",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        // Without its description a stream cannot be decoded: a clear error.
        let mut w = Writer::new(Vec::new(), "pc-q35-8.0").unwrap();
        w.section("dev", 0, &DEV, &st).unwrap();
        let mut b = w.finish().unwrap();
        let cut = b.iter().rposition(|x| *x == 0x06).unwrap();
        b.truncate(cut);
        assert!(matches!(analyze(&b), Err(Error::UnknownSection { .. })));
    }
}
