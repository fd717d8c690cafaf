use super::*;
use crate::vmstate::{Field, Subsection};
use vm_memory::VolatileSlice;

static U16: Kind = Kind::U16;

static INNER_SUB: Description = Description {
    name: "inner/flag",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[Field {
        name: "flag",
        kind: Kind::U8,
        since: 0,
    }],
    subsections: &[],
};
static INNER: Description = Description {
    name: "inner",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[Field {
        name: "x",
        kind: Kind::U32,
        since: 0,
    }],
    subsections: &[Subsection {
        desc: &INNER_SUB,
        needed: |s| s.uint("x") == Some(7),
    }],
};
static EXTRA: Description = Description {
    name: "dev/extra",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[Field {
        name: "broken",
        kind: Kind::Bool,
        since: 0,
    }],
    subsections: &[],
};

const FIELDS_V2: &[Field] = &[
    Field {
        name: "a",
        kind: Kind::U8,
        since: 0,
    },
    Field {
        name: "b",
        kind: Kind::U16,
        since: 0,
    },
    Field {
        name: "c",
        kind: Kind::U32,
        since: 0,
    },
    Field {
        name: "d",
        kind: Kind::U64,
        since: 0,
    },
    Field {
        name: "e",
        kind: Kind::Bool,
        since: 0,
    },
    Field {
        name: "f",
        kind: Kind::I32,
        since: 0,
    },
    Field {
        name: "g",
        kind: Kind::Buffer(4),
        since: 0,
    },
    Field {
        name: "h",
        kind: Kind::Array(&U16, 3),
        since: 0,
    },
    Field {
        name: "n",
        kind: Kind::Struct(&INNER),
        since: 0,
    },
];
const FIELDS_V3: &[Field] = &[
    Field {
        name: "a",
        kind: Kind::U8,
        since: 0,
    },
    Field {
        name: "b",
        kind: Kind::U16,
        since: 0,
    },
    Field {
        name: "c",
        kind: Kind::U32,
        since: 0,
    },
    Field {
        name: "d",
        kind: Kind::U64,
        since: 0,
    },
    Field {
        name: "e",
        kind: Kind::Bool,
        since: 0,
    },
    Field {
        name: "f",
        kind: Kind::I32,
        since: 0,
    },
    Field {
        name: "g",
        kind: Kind::Buffer(4),
        since: 0,
    },
    Field {
        name: "h",
        kind: Kind::Array(&U16, 3),
        since: 0,
    },
    Field {
        name: "n",
        kind: Kind::Struct(&INNER),
        since: 0,
    },
    Field {
        name: "later",
        kind: Kind::U32,
        since: 3,
    },
];

/// Version 3, knows the `dev/extra` subsection.
static DEV: Description = Description {
    name: "dev",
    version_id: 3,
    minimum_version_id: 1,
    fields: FIELDS_V3,
    subsections: &[Subsection {
        desc: &EXTRA,
        needed: |s| s.subsection("dev/extra").is_some(),
    }],
};
/// The same device as an older release: version 2, no subsection.
static DEV_OLD: Description = Description {
    name: "dev",
    version_id: 2,
    minimum_version_id: 1,
    fields: FIELDS_V2,
    subsections: &[],
};
/// Version 3 from before `dev/extra` existed.
static DEV_NO_EXTRA: Description = Description {
    name: "dev",
    version_id: 3,
    minimum_version_id: 1,
    fields: FIELDS_V3,
    subsections: &[],
};
/// A release that raised the minimum.
static DEV_MIN3: Description = Description {
    name: "dev",
    version_id: 3,
    minimum_version_id: 3,
    fields: FIELDS_V3,
    subsections: &[],
};

fn state(with_extra: bool) -> State {
    let mut inner = State::default();
    inner.set("x", Val::Uint(7));
    inner.subsections.push(("inner/flag", {
        let mut s = State::default();
        s.set("flag", Val::Uint(0xab));
        s
    }));
    let mut s = State::default();
    s.set("a", Val::Uint(0x12))
        .set("b", Val::Uint(0x3456))
        .set("c", Val::Uint(0x789a_bcde))
        .set("d", Val::Uint(0x0102_0304_0506_0708))
        .set("e", Val::Bool(true))
        .set("f", Val::Int(-5))
        .set("g", Val::Bytes(vec![1, 2, 3, 4]))
        .set(
            "h",
            Val::Array(vec![Val::Uint(1), Val::Uint(2), Val::Uint(0xffff)]),
        )
        .set("n", Val::Struct(inner))
        .set("later", Val::Uint(99));
    if with_extra {
        let mut x = State::default();
        x.set("broken", Val::Bool(true));
        s.subsections.push(("dev/extra", x));
    }
    s
}

fn write(desc: &Description, st: &State, machine: &str) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), machine).unwrap();
    w.section("0000:00:03.0/dev", 0, desc, st).unwrap();
    w.finish().unwrap()
}

fn read_all(bytes: &[u8], machine: &str, desc: &'static Description) -> Result<Vec<Record>> {
    let mut r = Reader::new(bytes, machine)?;
    let mut out = vec![];
    loop {
        let rec = r.next_record(
            &|id, inst| (id == "0000:00:03.0/dev" && inst == 0).then_some(desc),
            &mut NoRam,
        )?;
        let end = matches!(rec, Record::Eof { .. });
        out.push(rec);
        if end {
            return Ok(out);
        }
    }
}

fn err(bytes: &[u8], desc: &'static Description) -> String {
    read_all(bytes, "pc-q35-8.0", desc).unwrap_err().to_string()
}

#[test]
fn round_trip_every_kind_with_subsections() {
    let st = state(true);
    let bytes = write(&DEV, &st, "pc-q35-8.0");
    assert_eq!(&bytes[..8], b"QEVM\0\0\0\x03");
    let recs = read_all(&bytes, "pc-q35-8.0", &DEV).unwrap();
    match &recs[0] {
        Record::Section {
            idstr,
            instance,
            version,
            state,
        } => {
            assert_eq!(
                (idstr.as_str(), *instance, *version),
                ("0000:00:03.0/dev", 0, 3)
            );
            assert_eq!(state, &st);
        }
        r => panic!("{r:?}"),
    }
    let Record::Eof { vmdesc: Some(j) } = &recs[1] else {
        panic!("no vmdesc")
    };
    assert_eq!(j["devices"][0]["name"], "0000:00:03.0/dev");
    assert_eq!(j["devices"][0]["fields"][7]["array_len"], 3);
    assert_eq!(j["devices"][0]["subsections"][0]["vmsd_name"], "dev/extra");
    // analyze-migration.py's rule: 0x06 + be32 length right before '{', no NUL in the JSON.
    let brace = bytes.iter().rposition(|b| *b == 0).unwrap() + 1;
    let brace = brace + bytes[brace..].iter().position(|b| *b == b'{').unwrap();
    assert_eq!(bytes[brace - 5], 0x06);
}

#[test]
fn absent_subsection_and_older_stream_versions_load() {
    // needed() false: no subsection is written, and the state loads.
    let bytes = write(&DEV, &state(false), "pc-q35-8.0");
    assert!(!bytes.windows(9).any(|w| w == b"dev/extra"));
    assert!(read_all(&bytes, "pc-q35-8.0", &DEV).is_ok());
    // An old release's stream (version 2) into this one: `later` keeps its default.
    let mut old = state(false);
    old.fields.retain(|f| f.0 != "later");
    let recs = read_all(&write(&DEV_OLD, &old, "pc-q35-8.0"), "pc-q35-8.0", &DEV).unwrap();
    let Record::Section { version, state, .. } = &recs[0] else {
        panic!()
    };
    assert_eq!((*version, state.uint("later")), (2, Some(0)));
}

#[test]
fn each_reader_error_says_what_and_where() {
    let good = write(&DEV, &state(true), "pc-q35-8.0");
    let mut b = good.clone();
    b[0] = b'X';
    assert!(err(&b, &DEV).contains("magic 0x5845564d"));
    let mut b = good.clone();
    b[7] = 2;
    assert!(err(&b, &DEV).contains("version 2"));
    let mut b = good.clone();
    b[8] = 0x04;
    assert!(err(&b, &DEV).contains("configuration section missing at offset 8"));
    let e = read_all(&good, "pc-q35-7.2", &DEV).unwrap_err().to_string();
    assert_eq!(
        e,
        "machine type received is 'pc-q35-8.0' and local is 'pc-q35-7.2'"
    );
    let first = 8 + 1 + 4 + "pc-q35-8.0".len();
    let mut b = good.clone();
    b[first] = 5;
    assert_eq!(
        err(&b, &DEV),
        format!("Unknown savevm section type 5 at offset {first}")
    );
    let e = read_all(&good, "pc-q35-8.0", &DEV).and_then(|_| {
        let mut r = Reader::new(&good[..], "pc-q35-8.0")?;
        r.next_record(&|_, _| None, &mut NoRam)
    });
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("Unknown savevm section or instance '0000:00:03.0/dev' 0"));
    // A newer stream into an older release, and an old stream into a release that raised the minimum.
    assert!(err(&good, &DEV_OLD).contains("version 3, newer than the 2"));
    let mut old = state(false);
    old.fields.retain(|f| f.0 != "later");
    assert!(
        err(&write(&DEV_OLD, &old, "pc-q35-8.0"), &DEV_MIN3).contains("older than the minimum 3")
    );
    // A subsection the reader does not know, named with its device.
    let e = err(&good, &DEV_NO_EXTRA);
    assert!(e.contains("unknown subsection 'dev/extra' in 'dev'"), "{e}");
    // A bool that is neither 0 nor 1.
    let st = state(false);
    let plain = write(&DEV, &st, "pc-q35-8.0");
    let e_at = first + 1 + 4 + 1 + "0000:00:03.0/dev".len() + 4 + 4 + 1 + 2 + 4 + 8;
    let mut b = plain.clone();
    b[e_at] = 2;
    assert!(err(&b, &DEV).contains("value 2 out of range for bool field 'e' of 'dev'"));
    // Footer: missing (device read less) and mismatched id.
    let footer = plain.iter().rposition(|x| *x == 0x7e).unwrap();
    let mut b = plain.clone();
    b[footer] = 0x7f;
    assert!(err(&b, &DEV).contains("missing section footer for '0000:00:03.0/dev'"));
    let mut b = plain.clone();
    b[footer + 4] = 9;
    assert!(err(&b, &DEV).contains("mismatched section id in footer"));
}

#[test]
fn truncation_anywhere_is_an_error_never_a_panic() {
    let good = write(&DEV, &state(true), "pc-q35-8.0");
    // Up to the EOF byte: every prefix fails cleanly.
    let eof = good.iter().rposition(|b| *b == 0x06).unwrap() - 1;
    for n in 0..eof {
        let e = read_all(&good[..n], "pc-q35-8.0", &DEV).unwrap_err();
        assert!(
            matches!(e, Error::Truncated { .. } | Error::BadMagic { .. }),
            "prefix {n}: {e}"
        );
    }
}

#[test]
fn hostile_bytes_never_panic() {
    let good = write(&DEV, &state(true), "pc-q35-8.0");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..(rnd() % 4 + 1) {
            let i = (rnd() as usize) % b.len();
            b[i] = rnd() as u8;
        }
        let cut = (rnd() as usize) % (b.len() + 1);
        let _ = read_all(&b[..cut], "pc-q35-8.0", &DEV);
    }
    // RAM streams, into a real sink: the sink is only ever asked for pages
    // inside its blocks (it would panic otherwise).
    let ram = vec![1u8; 8 * PAGE_SIZE];
    let good = ram_stream(&ram, &[2u8; PAGE_SIZE], &[3u8; PAGE_SIZE]);
    for _ in 0..5_000 {
        let mut b = good.clone();
        for _ in 0..(rnd() % 4 + 1) {
            let i = (rnd() as usize) % b.len();
            b[i] = rnd() as u8;
        }
        let mut sink = Mem(vec![
            ("pc.ram", vec![0; ram.len()]),
            ("/rom@etc/acpi/tables", vec![0; PAGE_SIZE]),
        ]);
        let _ = read_ram(&b, &mut sink);
    }
}

/// Guest RAM as the VMM would hand it to the reader.
struct Mem(Vec<(&'static str, Vec<u8>)>);

impl RamSink for Mem {
    fn block_len(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|b| b.0 == name)
            .map(|b| b.1.len() as u64)
    }
    fn page(&mut self, block: &str, offset: u64, data: &[u8]) {
        let b = self.0.iter_mut().find(|b| b.0 == block).unwrap();
        b.1[offset as usize..offset as usize + PAGE_SIZE].copy_from_slice(data);
    }
}

fn pages_of<'a>(
    name: &'a str,
    mem: &'a mut [u8],
) -> impl Iterator<Item = (&'a str, u64, VolatileSlice<'a>)> {
    mem.chunks_mut(PAGE_SIZE)
        .enumerate()
        .map(move |(i, p)| (name, (i * PAGE_SIZE) as u64, VolatileSlice::from(p)))
}

fn read_ram(bytes: &[u8], sink: &mut Mem) -> Result<Vec<Record>> {
    let mut r = Reader::new(bytes, "pc-q35-8.0")?;
    let mut out = vec![];
    loop {
        let rec = r.next_record(&|id, _| (id == "0000:00:03.0/dev").then_some(&DEV), sink)?;
        let end = matches!(rec, Record::Eof { .. });
        out.push(rec);
        if end {
            return Ok(out);
        }
    }
}

fn ram_stream(ram: &[u8], rom: &[u8], dirty: &[u8]) -> Vec<u8> {
    let (mut ram, mut rom, mut dirty) = (ram.to_vec(), rom.to_vec(), dirty.to_vec());
    let mut w = Writer::new(Vec::new(), "pc-q35-8.0").unwrap();
    let id = w
        .ram_start(&[
            ("pc.ram", ram.len() as u64),
            ("/rom@etc/acpi/tables", rom.len() as u64),
        ])
        .unwrap();
    w.ram_pages(
        id,
        false,
        pages_of("pc.ram", &mut ram).chain(pages_of("/rom@etc/acpi/tables", &mut rom)),
    )
    .unwrap();
    // A second pass with one page dirtied since, then the final pass.
    let dirty = VolatileSlice::from(&mut dirty[..]);
    w.ram_pages(id, false, [("pc.ram", 10 * PAGE_SIZE as u64, dirty)])
        .unwrap();
    w.ram_pages(id, true, []).unwrap();
    w.section("0000:00:03.0/dev", 0, &DEV, &state(false))
        .unwrap();
    w.finish().unwrap()
}

#[test]
fn ram_round_trip_with_zero_pages_and_later_passes() {
    let mut ram = vec![0u8; 64 * PAGE_SIZE];
    for (i, b) in ram[3 * PAGE_SIZE..4 * PAGE_SIZE].iter_mut().enumerate() {
        *b = i as u8;
    }
    ram[10 * PAGE_SIZE] = 0x55;
    let rom = vec![0xa5u8; 2 * PAGE_SIZE];
    let dirty = vec![0x77u8; PAGE_SIZE];
    let bytes = ram_stream(&ram, &rom, &dirty);
    // Zero pages are a 9-byte record: 66 pages, only 4 carry data.
    assert!(bytes.len() < 5 * PAGE_SIZE + 2048, "{} bytes", bytes.len());
    let mut dst = Mem(vec![
        ("pc.ram", vec![0xffu8; ram.len()]),
        ("/rom@etc/acpi/tables", vec![0u8; rom.len()]),
    ]);
    let recs = read_ram(&bytes, &mut dst).unwrap();
    let counts: Vec<(u64, bool)> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Ram { pages, last } => Some((*pages, *last)),
            _ => None,
        })
        .collect();
    assert_eq!(counts, vec![(0, false), (66, false), (1, false), (0, true)]);
    ram[10 * PAGE_SIZE..11 * PAGE_SIZE].copy_from_slice(&dirty);
    assert!(dst.0[0].1 == ram, "pc.ram differs");
    assert_eq!(dst.0[1].1, rom);
    assert!(matches!(recs[4], Record::Section { .. }));
}

#[test]
fn ram_errors_name_the_block() {
    let ram = vec![1u8; 4 * PAGE_SIZE];
    let rom = vec![2u8; PAGE_SIZE];
    let bytes = ram_stream(&ram, &rom, &[3u8; PAGE_SIZE]);
    let mut missing = Mem(vec![("pc.ram", vec![0; ram.len()])]);
    let e = read_ram(&bytes, &mut missing).unwrap_err().to_string();
    assert!(
        e.starts_with("Unknown ramblock \"/rom@etc/acpi/tables\""),
        "{e}"
    );
    let mut small = Mem(vec![
        ("pc.ram", vec![0; 2 * PAGE_SIZE]),
        ("/rom@etc/acpi/tables", vec![0; PAGE_SIZE]),
    ]);
    let e = read_ram(&bytes, &mut small).unwrap_err().to_string();
    assert!(
        e.contains("'pc.ram' is 16384 bytes in the stream but 8192 here"),
        "{e}"
    );
    // A page beyond its block.
    let mut w = Writer::new(Vec::new(), "pc-q35-8.0").unwrap();
    let id = w.ram_start(&[("pc.ram", PAGE_SIZE as u64)]).unwrap();
    let mut nine = [9u8; PAGE_SIZE];
    let page = VolatileSlice::from(&mut nine[..]);
    w.ram_pages(id, true, [("pc.ram", 1 << 30, page)]).unwrap();
    let mut one = Mem(vec![("pc.ram", vec![0; PAGE_SIZE])]);
    let e = read_ram(&w.finish().unwrap(), &mut one)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0x40000000 is outside block 'pc.ram'"), "{e}");
    // PART for a section that never started.
    let mut w = Writer::new(Vec::new(), "pc-q35-8.0").unwrap();
    w.ram_pages(5, false, []).unwrap();
    let e = read_ram(&w.finish().unwrap(), &mut one)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("section id 5") && e.contains("never started"),
        "{e}"
    );
    // A record kind vmm does not speak (XBZRLE, 0x40).
    let start_end = bytes
        .windows(8)
        .position(|w| w == RAM_EOS.to_be_bytes())
        .unwrap()
        + 8
        + 5;
    let first_record = start_end + 5;
    let mut b = bytes.clone();
    b[first_record + 7] |= 0x40;
    let mut full = Mem(vec![
        ("pc.ram", vec![0; ram.len()]),
        ("/rom@etc/acpi/tables", vec![0; PAGE_SIZE]),
    ]);
    let e = read_ram(&b, &mut full).unwrap_err().to_string();
    assert!(
        e.contains("RAM record flags") && e.contains("not supported"),
        "{e}"
    );
}

/// A sink that takes data pages in place (as guest RAM does), counting
/// the pages that still came through `page()`.
struct Direct(Mem, u64);

impl RamSink for Direct {
    fn block_len(&self, name: &str) -> Option<u64> {
        self.0.block_len(name)
    }
    fn page(&mut self, block: &str, offset: u64, data: &[u8]) {
        self.1 += 1;
        self.0.page(block, offset, data)
    }
    fn page_target(&mut self, block: &str, offset: u64) -> Option<&mut [u8]> {
        let b = self.0 .0.iter_mut().find(|b| b.0 == block)?;
        b.1.get_mut(offset as usize..offset as usize + PAGE_SIZE)
    }
}

#[test]
fn pages_read_in_place_match_pages_handed_over() {
    let ram: Vec<u8> = (0..64 * PAGE_SIZE)
        .map(|i| {
            // Every third page is zero.
            if [0, 3, 6].contains(&(i / PAGE_SIZE % 9)) {
                0
            } else {
                (i * 7 + i / PAGE_SIZE) as u8
            }
        })
        .collect();
    let rom = vec![0xa5u8; 2 * PAGE_SIZE];
    let bytes = ram_stream(&ram, &rom, &[0x77u8; PAGE_SIZE]);
    let fresh = || {
        Mem(vec![
            ("pc.ram", vec![0xeeu8; ram.len()]),
            ("/rom@etc/acpi/tables", vec![0u8; rom.len()]),
        ])
    };
    let mut copied = fresh();
    read_ram(&bytes, &mut copied).unwrap();
    let mut direct = Direct(fresh(), 0);
    let mut r = Reader::new(&bytes[..], "pc-q35-8.0").unwrap();
    while !matches!(
        r.next_record(
            &|id, _| (id == "0000:00:03.0/dev").then_some(&DEV),
            &mut direct
        )
        .unwrap(),
        Record::Eof { .. }
    ) {}
    assert!(direct.0 .0 == copied.0, "in-place pages differ");
    // Only the 22 zero pages of pc.ram went through page().
    assert_eq!(direct.1, 22);
    // A truncated page is an error, in place too.
    let cut = &bytes[..bytes.len() / 2];
    let mut r = Reader::new(cut, "pc-q35-8.0").unwrap();
    let mut sink = Direct(fresh(), 0);
    let e = loop {
        match r.next_record(&|_, _| None, &mut sink) {
            Ok(Record::Eof { .. }) => panic!("a truncated stream read to its end"),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    assert!(e.contains("truncated") && e.contains("a RAM page"), "{e}");
}

/// Takes at most a few bytes per call, vectored or not.
struct Trickle(Vec<u8>, usize);

impl Write for Trickle {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1 = self.1 % 4093 + 1;
        let n = b.len().min(self.1);
        self.0.extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl GuestWrite for Trickle {
    fn write_slices(&mut self, bufs: &[VolatileSlice]) -> std::io::Result<usize> {
        // Across several buffers, stopping anywhere (even mid-buffer).
        let mut room = {
            self.1 = self.1 * 7 % 9001 + 1;
            self.1
        };
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(room);
            let mut part = vec![0; k];
            b.copy_to(&mut part);
            self.0.extend_from_slice(&part);
            n += k;
            room -= k;
            if room == 0 {
                break;
            }
        }
        Ok(n)
    }
}

#[test]
fn gathered_pages_survive_short_writes() {
    let mut ram: Vec<u8> = (0..600 * PAGE_SIZE)
        .map(|i| (i / 4096 + i % 251) as u8)
        .collect();
    let whole = {
        let mut w = Writer::new(Vec::new(), "pc-q35-8.0").unwrap();
        let id = w.ram_start(&[("pc.ram", ram.len() as u64)]).unwrap();
        w.ram_pages(id, true, pages_of("pc.ram", &mut ram)).unwrap();
        w.finish().unwrap()
    };
    let mut w = Writer::new(Trickle(vec![], 0), "pc-q35-8.0").unwrap();
    let id = w.ram_start(&[("pc.ram", ram.len() as u64)]).unwrap();
    w.ram_pages(id, true, pages_of("pc.ram", &mut ram)).unwrap();
    let trickled = w.finish().unwrap().0;
    assert!(trickled == whole, "short writes changed the stream");
    let first = ram[..PAGE_SIZE].to_vec();
    let mut g = Gather::new();
    g.head(b"ab");
    g.head(b"c");
    g.page(VolatileSlice::from(&mut ram[..PAGE_SIZE]));
    g.head(b"d");
    assert!(!g.full());
    let mut out = Trickle(vec![], 0);
    g.write_to(&mut out).unwrap();
    let mut want = b"abc".to_vec();
    want.extend_from_slice(&first);
    want.push(b'd');
    assert!(out.0 == want);
    // A writer that takes nothing is an error, not a hang.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl GuestWrite for Full {
        fn write_slices(&mut self, _: &[VolatileSlice]) -> std::io::Result<usize> {
            Ok(0)
        }
    }
    g.head(b"x");
    let e = g.write_to(&mut Full).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
}

#[test]
fn a_section_body_decodes_alone_as_in_a_stream() {
    let st = state(false);
    let body = encode_state(&DEV, &st).unwrap();
    assert_eq!(decode_state(&DEV, DEV.version_id, &body).unwrap(), st);
    // All of it, no more and no less.
    let mut longer = body.clone();
    longer.push(0);
    assert!(decode_state(&DEV, DEV.version_id, &longer).is_err());
    assert!(decode_state(&DEV, DEV.version_id, &body[..body.len() - 1]).is_err());
    assert!(decode_state(&DEV, DEV.version_id + 1, &body).is_err());
}
