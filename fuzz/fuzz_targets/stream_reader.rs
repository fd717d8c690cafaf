//! Feeds arbitrary bytes to the savevm stream reader: device sections with
//! a description that has every field kind and subsections, and RAM
//! sections into a sink that panics on any page outside its blocks, and
//! `spapr/htab` sections whose chunks must stay inside the table.
//! The reader must return errors, never panic, hang or over-allocate.

#![no_main]

use libfuzzer_sys::fuzz_target;
use migration::htab::Pass;
use migration::stream::{RamSink, Reader, Record, PAGE_SIZE};
use migration::vmstate::{Description, Field, Kind, Subsection};

static U16: Kind = Kind::U16;
static SUB: Description = Description {
    name: "dev/sub",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[Field {
        name: "x",
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
        name: "y",
        kind: Kind::U32,
        since: 0,
    }],
    subsections: &[],
};
static DEV: Description = Description {
    name: "dev",
    version_id: 3,
    minimum_version_id: 1,
    fields: &[
        Field {
            name: "a",
            kind: Kind::Bool,
            since: 0,
        },
        Field {
            name: "b",
            kind: Kind::U64,
            since: 0,
        },
        Field {
            name: "c",
            kind: Kind::Buffer(16),
            since: 2,
        },
        Field {
            name: "d",
            kind: Kind::Array(&U16, 4),
            since: 0,
        },
        Field {
            name: "e",
            kind: Kind::Struct(&INNER),
            since: 0,
        },
        Field {
            name: "f",
            kind: Kind::I32,
            since: 3,
        },
    ],
    subsections: &[Subsection {
        desc: &SUB,
        needed: |_| true,
    }],
};

struct Ram(Vec<(&'static str, Vec<u8>)>);
impl RamSink for Ram {
    fn block_len(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|b| b.0 == name)
            .map(|b| b.1.len() as u64)
    }
    fn page(&mut self, block: &str, offset: u64, data: &[u8]) {
        let b = self
            .0
            .iter_mut()
            .find(|b| b.0 == block)
            .expect("page for a block the reader accepted");
        let o = offset as usize;
        b.1[o..o + PAGE_SIZE].copy_from_slice(data); // panics if the reader let a bad offset through
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = Reader::new(data, "pc-q35-8.0") else {
        return;
    };
    let mut ram = Ram(vec![
        ("pc.ram", vec![0; 16 * PAGE_SIZE]),
        ("rom", vec![0; PAGE_SIZE]),
    ]);
    // The hash page table's entries, once a section gave its order.
    let mut entries = None;
    for _ in 0..64 {
        match r.next_record(
            &|id, inst| (id == "dev" && inst == 0).then_some(&DEV),
            &mut ram,
        ) {
            Ok(Record::Eof { .. }) | Err(_) => return,
            Ok(Record::Htab { pass, .. }) => match pass {
                Pass::Order(o) => entries = Some(1u64 << (o - 4)),
                Pass::Free => entries = Some(0),
                Pass::Chunks(cs) => {
                    let n = entries.expect("chunks before the table's order");
                    for c in cs {
                        assert!(c.end() <= n, "a chunk past the table");
                    }
                }
            },
            Ok(_) => {}
        }
    }
});
