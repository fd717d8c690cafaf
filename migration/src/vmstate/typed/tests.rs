use crate::stream::{NoRam, Reader, Record, Writer};
use crate::vmstate::{
    default_value, Description, Field, FieldKind, FieldValue, Kind, State, Subsection, Val,
    Vmstate, U8,
};

crate::vmstate! {
    /// One queue: every scalar kind.
    static QUEUE = "queue", version 1, minimum 1;
    struct QueueState {
        size: u16,
        ready: bool,
        addr: u64,
        small: u8,
        offset: i32,
        delta: i64,
        wide: u32,
    }
}

crate::vmstate! {
    /// The set of queues (a nested struct holding an array of structs).
    static QUEUES = "queues", version 1, minimum 1;
    struct Queues {
        q: [QueueState; 3],
    }
}

crate::vmstate! {
    /// A device: scalars, a buffer, integer arrays, a nested struct, a
    /// field added in version 3, two subsections.
    static DEV = "dev", version 3, minimum 1;
    struct DevState {
        status: u8,
        fifo: [u8; 8],
        pending: [U8; 2],
        levels: [i32; 2],
        queues: Queues,
        /// Added in version 3.
        #[since(3)]
        timer: u32,
    }
    subsections {
        broken: Option<Broken>,
        endian: Option<Endian>,
    }
}

crate::vmstate! {
    static BROKEN = "dev/broken", version 1, minimum 1;
    struct Broken {
        broken: bool,
    }
}

crate::vmstate! {
    static ENDIAN = "dev/endian", version 1, minimum 1;
    struct Endian {
        endian: u8,
    }
}

crate::vmstate! {
    /// A container whose last part another description holds.
    struct Parts<D> {
        head: u16,
        part: D,
    }
}

static PARTS_OF_BROKEN: Description = Description {
    name: "parts",
    version_id: 1,
    minimum_version_id: 1,
    fields: Parts::<Broken>::FIELDS,
    subsections: Parts::<Broken>::SUBSECTIONS,
};

static U8_KIND: Kind = Kind::U8;
static I32_KIND: Kind = Kind::I32;
static QUEUE_KIND: Kind = Kind::Struct(&HAND_QUEUE);

const fn field(name: &'static str, kind: Kind, since: u32) -> Field {
    Field { name, kind, since }
}

/// What the declarations above must produce, written out as before.
static HAND_QUEUE: Description = Description {
    name: "queue",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[
        field("size", Kind::U16, 0),
        field("ready", Kind::Bool, 0),
        field("addr", Kind::U64, 0),
        field("small", Kind::U8, 0),
        field("offset", Kind::I32, 0),
        field("delta", Kind::I64, 0),
        field("wide", Kind::U32, 0),
    ],
    subsections: &[],
};
static HAND_QUEUES: Description = Description {
    name: "queues",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[field("q", Kind::Array(&QUEUE_KIND, 3), 0)],
    subsections: &[],
};
static HAND_BROKEN: Description = Description {
    name: "dev/broken",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[field("broken", Kind::Bool, 0)],
    subsections: &[],
};
static HAND_ENDIAN: Description = Description {
    name: "dev/endian",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[field("endian", Kind::U8, 0)],
    subsections: &[],
};
static HAND_DEV: Description = Description {
    name: "dev",
    version_id: 3,
    minimum_version_id: 1,
    fields: &[
        field("status", Kind::U8, 0),
        field("fifo", Kind::Buffer(8), 0),
        field("pending", Kind::Array(&U8_KIND, 2), 0),
        field("levels", Kind::Array(&I32_KIND, 2), 0),
        field("queues", Kind::Struct(&HAND_QUEUES), 0),
        field("timer", Kind::U32, 3),
    ],
    subsections: &[
        Subsection {
            desc: &HAND_BROKEN,
            needed: |_| true,
        },
        Subsection {
            desc: &HAND_ENDIAN,
            needed: |_| true,
        },
    ],
};
static HAND_PARTS: Description = Description {
    name: "parts",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[
        field("head", Kind::U16, 0),
        field("part", Kind::Struct(&HAND_BROKEN), 0),
    ],
    subsections: &[],
};

/// A state with every field away from zero.
fn sample() -> DevState {
    let mut d = DevState {
        status: 0x81,
        fifo: *b"abcdefgh",
        pending: [U8(0xff), U8(1)],
        levels: [-1, i32::MAX],
        timer: 12345,
        ..Default::default()
    };
    d.queues.q[1] = QueueState {
        size: 256,
        ready: true,
        addr: u64::MAX,
        small: 7,
        offset: i32::MIN,
        delta: -5,
        wide: u32::MAX,
    };
    d
}

/// A stream with `st` as one section described by `desc`.
fn stream(desc: &'static Description, st: &State) -> Result<Vec<u8>, String> {
    let mut w = Writer::new(Vec::new(), "m").map_err(|e| e.to_string())?;
    w.section("dev", 0, desc, st).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())
}

/// Writes `st` as a section described by `write`, reads it back with
/// `read` (the same description, or another side's).
fn through_stream(
    write: &'static Description,
    st: &State,
    read: &'static Description,
) -> Result<(u32, State), String> {
    let bytes = stream(write, st)?;
    let mut r = Reader::new(&bytes[..], "m").map_err(|e| e.to_string())?;
    match r.next_record(&|_, _| Some(read), &mut NoRam) {
        Ok(Record::Section { version, state, .. }) => Ok((version, state)),
        Ok(_) => Err("no section".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn descriptions_are_the_hand_written_ones() {
    assert_eq!(QUEUE.to_json(), HAND_QUEUE.to_json());
    assert_eq!(QUEUES.to_json(), HAND_QUEUES.to_json());
    assert_eq!(DEV.to_json(), HAND_DEV.to_json());
    assert_eq!(PARTS_OF_BROKEN.to_json(), HAND_PARTS.to_json());
}

#[test]
fn round_trips_through_state_and_stream() {
    let d = sample();
    let st = d.to_state();
    assert_eq!(DevState::from_state(&st, "dev"), Ok(d.clone()));
    let (version, back) = through_stream(&DEV, &st, &DEV).unwrap();
    assert_eq!(version, 3);
    assert_eq!(back, st);
    assert_eq!(DevState::from_state(&back, "dev"), Ok(d));
    // The bytes are those of the hand-written description.
    assert_eq!(stream(&DEV, &st), stream(&HAND_DEV, &st));
    // The generic container, with its part as a plain state.
    let p = Parts {
        head: 9,
        part: Broken { broken: true }.to_state(),
    };
    let (_, back) = through_stream(&PARTS_OF_BROKEN, &p.to_state(), &PARTS_OF_BROKEN).unwrap();
    assert_eq!(Parts::<State>::from_state(&back, "parts"), Ok(p));
}

#[test]
fn a_missing_or_out_of_range_field_is_named() {
    let err = |st: &State| DevState::from_state(st, "dev").unwrap_err().to_string();
    let good = sample().to_state();
    let mut st = good.clone();
    st.fields.retain(|f| f.0 != "fifo");
    assert_eq!(err(&st), "dev: field 'fifo' missing or out of range");
    let mut st = good.clone();
    st.set("status", Val::Uint(256));
    assert_eq!(err(&st), "dev: field 'status' missing or out of range");
    let mut st = good.clone();
    st.set("status", Val::Bool(true));
    assert_eq!(err(&st), "dev: field 'status' missing or out of range");
    let mut st = good.clone();
    st.set("fifo", Val::Bytes(vec![0; 7]));
    assert_eq!(err(&st), "dev: field 'fifo' missing or out of range");
    let mut st = good.clone();
    st.set("levels", Val::Array(vec![Val::Int(0), Val::Int(1 << 31)]));
    assert_eq!(err(&st), "dev: field 'levels[1]' missing or out of range");
    // Deep inside: queue 1's size, in the nested array of structs.
    let mut q = sample();
    q.queues.q[1].size = 0;
    let mut st = q.to_state();
    let Some(Val::Struct(queues)) = st
        .fields
        .iter_mut()
        .find(|f| f.0 == "queues")
        .map(|f| &mut f.1)
    else {
        panic!("no queues")
    };
    let Some(Val::Array(list)) = queues.fields.first_mut().map(|f| &mut f.1) else {
        panic!("no q")
    };
    let Val::Struct(q1) = &mut list[1] else {
        panic!("no queue 1")
    };
    q1.set("size", Val::Uint(1 << 16));
    assert_eq!(
        err(&st),
        "dev: field 'queues.q[1].size' missing or out of range"
    );
    // A subsection that is there but wrong.
    let mut st = good;
    let mut b = State::default();
    b.set("broken", Val::Uint(1));
    st.subsections.push(("dev/broken", b));
    assert_eq!(
        err(&st),
        "dev: field 'dev/broken.broken' missing or out of range"
    );
}

/// A reader of version 2, before `timer`.
static DEV_V2: Description = Description {
    name: "dev",
    version_id: 2,
    minimum_version_id: 1,
    fields: &[
        field("status", Kind::U8, 0),
        field("fifo", Kind::Buffer(8), 0),
        field("pending", Kind::Array(&U8_KIND, 2), 0),
        field("levels", Kind::Array(&I32_KIND, 2), 0),
        field("queues", Kind::Struct(&HAND_QUEUES), 0),
    ],
    subsections: &[],
};

#[test]
fn a_field_newer_than_the_state_keeps_its_default() {
    let d = sample();
    let mut st = d.to_state();
    st.fields.retain(|f| f.0 != "timer");
    let back = DevState::from_state(&st, "dev").unwrap();
    assert_eq!(back.timer, 0);
    assert_eq!(back.fifo, d.fifo);
    // The default is the value the reader gives a field a stream lacks.
    assert_eq!(
        DevState::default().to_val(),
        default_value(<DevState as FieldKind>::KIND)
    );
    // The same from a version-2 stream: the reader fills it in.
    let (version, st) = through_stream(&DEV_V2, &st, &DEV).unwrap();
    assert_eq!(version, 2);
    assert_eq!(DevState::from_state(&st, "dev").unwrap().timer, 0);
    // A field of version 0 is no such field.
    let mut st = d.to_state();
    st.fields.retain(|f| f.0 != "status");
    assert!(DevState::from_state(&st, "dev").is_err());
}

#[test]
fn a_subsection_travels_only_when_present() {
    let mut d = sample();
    let st = d.to_state();
    assert!(st.subsections.is_empty());
    // Absent: an older reader, which knows no subsection, loads it.
    let (_, back) = through_stream(&DEV, &st, &DEV_WITHOUT_SUBSECTIONS).unwrap();
    assert!(back.subsections.is_empty());
    d.broken = Some(Broken { broken: true });
    let st = d.to_state();
    assert_eq!(st.subsections.len(), 1);
    let (_, back) = through_stream(&DEV, &st, &DEV).unwrap();
    let again = DevState::from_state(&back, "dev").unwrap();
    assert_eq!(again.broken, Some(Broken { broken: true }));
    assert_eq!(again.endian, None);
    assert_eq!(again, d);
    // Present: the older reader fails naming it.
    let err = through_stream(&DEV, &st, &DEV_WITHOUT_SUBSECTIONS).unwrap_err();
    assert!(err.contains("unknown subsection 'dev/broken'"), "{err}");
    // Both, in the declared order.
    d.endian = Some(Endian { endian: 2 });
    let (_, back) = through_stream(&DEV, &d.to_state(), &DEV).unwrap();
    let names: Vec<_> = back.subsections.iter().map(|s| s.0).collect();
    assert_eq!(names, ["dev/broken", "dev/endian"]);
    assert_eq!(
        stream(&DEV, &d.to_state()),
        stream(&HAND_DEV, &d.to_state())
    );
    assert_eq!(DevState::from_state(&back, "dev"), Ok(d));
}

/// A reader with this version's fields but no subsections yet.
static DEV_WITHOUT_SUBSECTIONS: Description = Description {
    name: "dev",
    version_id: 3,
    minimum_version_id: 1,
    fields: DEV.fields,
    subsections: &[],
};

crate::vmstate! {
    /// One element of a counted array (QEMU's spapr_pci/msi shape).
    pub static ENTRY = "varray/entry", version 1, minimum 1;
    pub struct Entry {
        key: u32,
        num: u32,
    }
}

crate::vmstate! {
    /// A count, then as many entries (QEMU's VMSTATE_STRUCT_VARRAY).
    pub static COUNTED = "varray", version 1, minimum 1;
    pub struct Counted {
        head: u64,
        n: i32,
        #[count(n)]
        entries: Vec<Entry>,
        tail: u16,
    }
}

/// A counted array travels as its count says: none, or several; the
/// writer refuses a count that disagrees with the elements; a reader
/// refuses a negative or absurd count by name before reading on, and a
/// stream that ends inside the elements.
#[test]
fn counted_arrays_travel_as_many_as_their_count() {
    use crate::stream::{decode_state, encode_state};
    assert!(matches!(COUNTED.fields[2].kind, Kind::VarArray(_, "n")));
    for entries in [
        vec![],
        vec![Entry { key: 1, num: 2 }, Entry { key: 3, num: 4 }],
    ] {
        let c = Counted {
            head: 7,
            n: entries.len() as i32,
            entries,
            tail: 9,
        };
        let bytes = encode_state(&COUNTED, &c.to_state()).unwrap();
        assert_eq!(bytes.len(), 8 + 4 + 8 * c.entries.len() + 2);
        let st = decode_state(&COUNTED, 1, &bytes).unwrap();
        assert_eq!(Counted::from_state(&st, "varray").unwrap(), c);
        // What analyze-migration reads it by: the count it was written with.
        let d = COUNTED.vmdesc(&st);
        assert_eq!(d["fields"][2]["array_len"], c.entries.len());
        assert_eq!(d["fields"][2]["struct"]["vmsd_name"], "varray/entry");
    }
    let wrong = Counted {
        n: 3,
        entries: vec![Entry::default()],
        ..Default::default()
    };
    let e = encode_state(&COUNTED, &wrong.to_state())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'entries'"), "{e}");
    // Nor is an array longer than any reader takes: refused when written.
    let huge = Counted {
        n: (1 << 16) + 1,
        entries: vec![Entry::default(); (1 << 16) + 1],
        ..Default::default()
    };
    let e = encode_state(&COUNTED, &huge.to_state())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'entries'"), "{e}");

    let mut bytes = encode_state(&COUNTED, &Counted::default().to_state()).unwrap();
    bytes[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    let e = decode_state(&COUNTED, 1, &bytes).unwrap_err().to_string();
    assert!(e.contains("holds -5 elements"), "{e}");
    bytes[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    let e = decode_state(&COUNTED, 1, &bytes).unwrap_err().to_string();
    assert!(e.contains("holds 2147483647 elements"), "{e}");
    bytes[8..12].copy_from_slice(&4i32.to_be_bytes());
    let e = decode_state(&COUNTED, 1, &bytes).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

crate::vmstate! {
    /// A size, then as many bytes (QEMU's VMSTATE_VBUFFER_ALLOC_UINT32,
    /// as spapr_nvram's).
    pub static SIZED = "vbuffer", version 1, minimum 1;
    pub struct Sized {
        size: u32,
        #[since(1)]
        #[count(size)]
        buf: crate::vmstate::VBuffer,
    }
}

/// A sized buffer travels as its size says, shows that size to
/// analyze-migration and 0 to -dump-vmstate (as QEMU's); the writer
/// refuses a size that disagrees with the bytes, a reader a size past its
/// bound (before reading on) and a stream that ends inside the bytes.
#[test]
fn sized_buffers_travel_as_many_bytes_as_their_size() {
    use crate::stream::{decode_state, encode_state};
    use crate::vmstate::VBuffer;
    assert!(matches!(SIZED.fields[1].kind, Kind::VBuffer("size")));
    assert_eq!(SIZED.to_json()["fields"][1]["size"], 0);
    assert_eq!(SIZED.to_json()["fields"][1]["type"], "buffer");
    for n in [0usize, 65536] {
        let s = Sized {
            size: n as u32,
            buf: VBuffer((0..n).map(|i| i as u8).collect()),
        };
        let bytes = encode_state(&SIZED, &s.to_state()).unwrap();
        assert_eq!(bytes.len(), 4 + n);
        let st = decode_state(&SIZED, 1, &bytes).unwrap();
        assert_eq!(Sized::from_state(&st, "vbuffer").unwrap(), s);
        assert_eq!(SIZED.vmdesc(&st)["fields"][1]["size"], n);
    }
    let wrong = Sized {
        size: 3,
        buf: VBuffer(vec![1]),
    };
    let e = encode_state(&SIZED, &wrong.to_state())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'buf'"), "{e}");
    let mut bytes = encode_state(&SIZED, &Sized::default().to_state()).unwrap();
    bytes[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = decode_state(&SIZED, 1, &bytes).unwrap_err().to_string();
    assert!(e.contains("is 4294967295 bytes"), "{e}");
    bytes[..4].copy_from_slice(&8u32.to_be_bytes());
    let e = decode_state(&SIZED, 1, &bytes).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}
