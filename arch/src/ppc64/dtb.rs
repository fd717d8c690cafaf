//! The flattened device tree format (version 17, as dtc and Linux read
//! it): a writer and a reader. vmm writes its own rather than vm-fdt's
//! because QEMU's trees (libfdt) have property names longer than the 31
//! characters vm-fdt allows, and a guest needs them:
//! `ibm,query-interrupt-source-number` in `/rtas` is how Linux finds its
//! MSIs' sources.

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
const HEADER: usize = 40;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the node name '{0}' is not one (empty beyond the root, or with '/' or NUL)")]
    NodeName(String),
    #[error("the property name '{0}' is not one (empty, or with NUL)")]
    PropertyName(String),
    #[error("'{0}' ends a node that is not open, or the tree ends with nodes open")]
    Nesting(String),
    #[error("the tree is larger than 4 GiB")]
    TooLarge,
}

/// Builds a tree node by node: [`Writer::begin_node`], its properties,
/// its children, [`Writer::end_node`]; then [`Writer::finish`].
pub struct Writer {
    reserved: Vec<(u64, u64)>,
    structs: Vec<u8>,
    strings: Vec<u8>,
    depth: usize,
}

/// An open node, handed back to [`Writer::end_node`].
#[must_use]
pub struct Node(usize);

impl Writer {
    /// A tree whose reserve map holds `reserved` (address, size) ranges.
    pub fn new(reserved: &[(u64, u64)]) -> Writer {
        Writer {
            reserved: reserved.to_vec(),
            structs: vec![],
            strings: vec![],
            depth: 0,
        }
    }

    fn word(&mut self, w: u32) {
        self.structs.extend_from_slice(&w.to_be_bytes());
    }

    fn pad(&mut self) {
        let n = self.structs.len().next_multiple_of(4);
        self.structs.resize(n, 0);
    }

    /// A node called `name` ("" for the root) in the open one.
    pub fn begin_node(&mut self, name: &str) -> Result<Node, Error> {
        let root = self.depth == 0;
        if (name.is_empty() != root) || name.contains(['/', '\0']) {
            return Err(Error::NodeName(name.into()));
        }
        self.word(BEGIN_NODE);
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self.depth += 1;
        Ok(Node(self.depth))
    }

    pub fn end_node(&mut self, node: Node) -> Result<(), Error> {
        if node.0 != self.depth {
            return Err(Error::Nesting(format!("node at depth {}", node.0)));
        }
        self.word(END_NODE);
        self.depth -= 1;
        Ok(())
    }

    /// Where `name` is in the strings block (each name once).
    fn name_offset(&mut self, name: &str) -> Result<u32, Error> {
        if name.is_empty() || name.contains('\0') {
            return Err(Error::PropertyName(name.into()));
        }
        let mut at = 0;
        for s in self.strings.split(|&b| b == 0) {
            if s == name.as_bytes() && at < self.strings.len() {
                return Ok(at as u32);
            }
            at += s.len() + 1;
        }
        let at = self.strings.len();
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        Ok(at as u32)
    }

    pub fn property(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        if self.depth == 0 {
            return Err(Error::Nesting(name.into()));
        }
        let off = self.name_offset(name)?;
        self.word(PROP);
        self.word(u32::try_from(value.len()).map_err(|_| Error::TooLarge)?);
        self.word(off);
        self.structs.extend_from_slice(value);
        self.pad();
        Ok(())
    }

    pub fn property_null(&mut self, name: &str) -> Result<(), Error> {
        self.property(name, &[])
    }

    pub fn property_string(&mut self, name: &str, value: &str) -> Result<(), Error> {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.property(name, &v)
    }

    pub fn property_u32(&mut self, name: &str, value: u32) -> Result<(), Error> {
        self.property(name, &value.to_be_bytes())
    }

    pub fn property_array_u32(&mut self, name: &str, values: &[u32]) -> Result<(), Error> {
        let v: Vec<u8> = values.iter().flat_map(|x| x.to_be_bytes()).collect();
        self.property(name, &v)
    }

    pub fn property_array_u64(&mut self, name: &str, values: &[u64]) -> Result<(), Error> {
        let v: Vec<u8> = values.iter().flat_map(|x| x.to_be_bytes()).collect();
        self.property(name, &v)
    }

    /// The blob: header, reserve map, structure block, strings.
    pub fn finish(mut self) -> Result<Vec<u8>, Error> {
        if self.depth != 0 {
            return Err(Error::Nesting("the end".into()));
        }
        self.word(END);
        let rsv = HEADER;
        let structs = rsv + 16 * (self.reserved.len() + 1);
        let strings = structs + self.structs.len();
        let total = strings + self.strings.len();
        let field = |v: usize| u32::try_from(v).map_err(|_| Error::TooLarge);
        let mut out = Vec::with_capacity(total);
        for w in [
            MAGIC,
            field(total)?,
            field(structs)?,
            field(strings)?,
            field(rsv)?,
            17,
            16,
            0,
            field(self.strings.len())?,
            field(self.structs.len())?,
        ] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        for (a, s) in self.reserved.iter().chain(&[(0, 0)]) {
            out.extend_from_slice(&a.to_be_bytes());
            out.extend_from_slice(&s.to_be_bytes());
        }
        out.extend_from_slice(&self.structs);
        out.extend_from_slice(&self.strings);
        Ok(out)
    }
}

/// A flattened tree read back: node path -> property -> value.
pub type Nodes = std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<u8>>>;

/// Reads a flattened device tree (version 17's structure and strings
/// blocks); `None` if it is not one or is cut short.
pub fn parse(dtb: &[u8]) -> Option<Nodes> {
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(dtb.get(at..at + 4)?.try_into().ok()?))
    };
    if be32(0)? != MAGIC {
        return None;
    }
    let (structs, strings) = (be32(8)? as usize, be32(12)? as usize);
    let mut nodes = Nodes::new();
    let mut path: Vec<String> = vec![];
    let mut at = structs;
    loop {
        let token = be32(at)?;
        at += 4;
        match token {
            // FDT_BEGIN_NODE: a NUL-terminated name, padded to 4 bytes.
            BEGIN_NODE => {
                let len = dtb.get(at..)?.iter().position(|&b| b == 0)?;
                path.push(String::from_utf8_lossy(&dtb[at..at + len]).into_owned());
                at += (len + 1).next_multiple_of(4);
                let p = if path.len() == 1 {
                    "/".to_string()
                } else {
                    path.join("/")
                };
                nodes.entry(p).or_default();
            }
            // FDT_END_NODE
            END_NODE => {
                path.pop()?;
            }
            // FDT_PROP: length, name offset, the value padded to 4 bytes.
            PROP => {
                let (len, name_off) = (be32(at)? as usize, be32(at + 4)? as usize);
                let value = dtb.get(at + 8..at + 8 + len)?.to_vec();
                at += 8 + len.next_multiple_of(4);
                let names = dtb.get(strings + name_off..)?;
                let name = &names[..names.iter().position(|&b| b == 0)?];
                let p = if path.len() == 1 {
                    "/".to_string()
                } else {
                    path.join("/")
                };
                nodes
                    .entry(p)
                    .or_default()
                    .insert(String::from_utf8_lossy(name).into_owned(), value);
            }
            // FDT_NOP
            NOP => {}
            // FDT_END
            END => return path.is_empty().then_some(nodes),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_reads_back_with_its_long_names_and_reserve_map() {
        let mut w = Writer::new(&[(0x1000, 0x2000)]);
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        let rtas = w.begin_node("rtas").unwrap();
        // 33 characters: beyond vm-fdt's limit, in QEMU's trees.
        w.property_u32("ibm,query-interrupt-source-number", 0x2018)
            .unwrap();
        w.property_null("ibm,change-msix-capable").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.end_node(rtas).unwrap();
        w.end_node(root).unwrap();
        let dtb = w.finish().unwrap();
        let nodes = parse(&dtb).unwrap();
        assert_eq!(
            nodes["/rtas"]["ibm,query-interrupt-source-number"],
            0x2018u32.to_be_bytes()
        );
        assert!(nodes["/rtas"]["ibm,change-msix-capable"].is_empty());
        assert_eq!(nodes["/"]["#address-cells"], 2u32.to_be_bytes());
        // One copy of a name used twice.
        let strings = u32::from_be_bytes(dtb[12..16].try_into().unwrap()) as usize;
        let names = &dtb[strings..];
        assert_eq!(
            names
                .windows(15)
                .filter(|w| w == b"#address-cells\0")
                .count(),
            1
        );
        assert_eq!(dtb[40..48], 0x1000u64.to_be_bytes());
        assert_eq!(dtb[48..56], 0x2000u64.to_be_bytes());
        assert_eq!(dtb[56..72], [0; 16], "the reserve map's end");
    }

    #[test]
    fn malformed_trees_are_refused() {
        let mut w = Writer::new(&[]);
        assert!(
            w.property_u32("x", 1).is_err(),
            "a property outside any node"
        );
        let root = w.begin_node("").unwrap();
        assert!(w.begin_node("a/b").is_err());
        assert!(w.begin_node("").is_err(), "an empty name below the root");
        assert!(w.property("", &[]).is_err());
        let n = w.begin_node("n").unwrap();
        assert!(w.end_node(root).is_err(), "the root before its child");
        w.end_node(n).unwrap();
        assert!(Writer::new(&[]).finish().is_ok());
        let mut open = Writer::new(&[]);
        let _root = open.begin_node("").unwrap();
        assert!(open.finish().is_err(), "a node left open");
    }
}
