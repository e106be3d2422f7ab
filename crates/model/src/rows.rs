//! The word-embedding table, read from the model file a row at a time
//! instead of being held in memory.
//!
//! A BERT model's first op looks up one row of its word-embedding table per
//! token. That table is the largest single weight: 30,522 × 384 for
//! MiniLM-L6, 11.7 MB in int8 (47 MB in fp32), about half of the int8 model,
//! and a text of 30 tokens reads 30 of its rows. So the engine cuts the
//! lookup out of the graph ([`cut_word_gather`]) and feeds the model the
//! rows themselves, read with `pread` from the bundle's model file
//! ([`FileRows`]): the table stays in the file (the kernel's page cache
//! keeps the rows in use, and can drop them under memory pressure, unlike
//! the process's heap) and the model computes exactly what it did.
//!
//! Where the table is in the file comes from a small protobuf walk of the
//! ONNX bytes ([`initializer_ranges`], pure); the rows are then checked
//! against the decoded table once, byte for byte, before the graph is cut
//! ([`FileRows::verify`]). A model whose table cannot be found or checked
//! keeps its lookup in the graph.
//!
//! For the embedded model the file is this executable (`/proc/self/exe`),
//! which Linux does not let anyone write while it runs (under qemu-user,
//! which opens the guest binary by path, that guard is not there). For a
//! bundle directory it is the handle the model file was read (and hashed)
//! through; replacing the file by a rename does not change what the handle
//! reads. Writing into the file in place would, so each read first checks
//! that the file's size and modification time are still those it had when
//! the table was checked, and fails the request with [`Error::Model`] if
//! not ([`FileRows::fill`]).

use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use tract_onnx::pb::{GraphProto, TensorProto, TypeProto, ValueInfoProto};
use tract_onnx::prelude::DatumType;

use crate::error::{Error, Result};

/// Tables smaller than this stay in the graph (not worth a read per token).
const MIN_TABLE_BYTES: usize = 64 << 10;

/// An open model file and where the model's bytes start in it.
#[derive(Debug, Clone)]
pub struct ModelFile {
    file: Arc<File>,
    path: PathBuf,
    /// Offset of the model's first byte in `file`.
    offset: u64,
}

impl ModelFile {
    /// A model whose bytes start at `offset` in `file` (`path` is for
    /// error messages).
    pub fn new(file: Arc<File>, path: impl Into<PathBuf>, offset: u64) -> ModelFile {
        ModelFile {
            file,
            path: path.into(),
            offset,
        }
    }

    /// The model bytes `bytes`, which are part of this executable's own
    /// mapped image (a `static`), as a range of the executable file. `None`
    /// where that cannot be worked out (not Linux, no `/proc`). The offset
    /// is taken from the mapping that holds `bytes` without checking that
    /// it maps this file (a packed executable's would not): the engine's
    /// byte-for-byte check ([`FileRows::verify`]) is what catches that.
    pub fn of_executable(bytes: &'static [u8]) -> Option<ModelFile> {
        #[cfg(target_os = "linux")]
        {
            let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
            let offset = file_offset(&maps, bytes.as_ptr() as usize)?;
            let file = File::open("/proc/self/exe").ok()?;
            Some(ModelFile::new(Arc::new(file), "/proc/self/exe", offset))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = bytes;
            None
        }
    }
}

/// The file offset that address `addr` of a file mapping comes from, given
/// the text of `/proc/self/maps` (`start-end perms offset dev inode path`).
pub fn file_offset(maps: &str, addr: usize) -> Option<u64> {
    let m = maps
        .lines()
        .filter_map(crate::memory::mapping_header)
        .find(|m| (m.start..m.end).contains(&addr))?;
    m.offset?.checked_add((addr - m.start) as u64)
}

/// Reads one protobuf varint at `*pos`, advancing it.
fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Calls `f(field, range)` for every length-delimited field of the message
/// in `bytes[range]` (ranges are absolute); skips varint and fixed-width
/// fields. `None` if the message is malformed or uses the deprecated group
/// wire types (ONNX files do not).
fn fields(bytes: &[u8], range: Range<usize>, mut f: impl FnMut(u64, Range<usize>)) -> Option<()> {
    let end = range.end;
    let mut pos = range.start;
    while pos < end {
        let key = varint(&bytes[..end], &mut pos)?;
        match key & 7 {
            0 => {
                varint(&bytes[..end], &mut pos)?;
            }
            1 => pos = pos.checked_add(8)?,
            5 => pos = pos.checked_add(4)?,
            2 => {
                let len = usize::try_from(varint(&bytes[..end], &mut pos)?).ok()?;
                let stop = pos.checked_add(len)?;
                if stop > end {
                    return None;
                }
                f(key >> 3, pos..stop);
                pos = stop;
            }
            _ => return None,
        }
        if pos > end {
            return None;
        }
    }
    Some(())
}

/// Where each graph initializer's `raw_data` lies in an ONNX file's bytes:
/// `(name, range)`, in file order. Initializers stored in typed fields
/// rather than `raw_data` are not listed. `None` if the bytes are not a
/// well-formed protobuf.
pub fn initializer_ranges(bytes: &[u8]) -> Option<Vec<(String, Range<usize>)>> {
    // ModelProto.graph = 7; GraphProto.initializer = 5;
    // TensorProto.name = 8, TensorProto.raw_data = 9.
    let mut graphs = Vec::new();
    fields(bytes, 0..bytes.len(), |field, r| {
        if field == 7 {
            graphs.push(r);
        }
    })?;
    let mut tensors = Vec::new();
    for g in graphs {
        fields(bytes, g, |field, r| {
            if field == 5 {
                tensors.push(r);
            }
        })?;
    }
    let mut out = Vec::new();
    for t in tensors {
        let mut name = None;
        let mut raw = None;
        fields(bytes, t, |field, r| match field {
            8 => name = Some(r),
            9 => raw = Some(r),
            _ => {}
        })?;
        if let (Some(name), Some(raw)) = (name, raw) {
            let name = std::str::from_utf8(&bytes[name]).ok()?.to_string();
            out.push((name, raw));
        }
    }
    Some(out)
}

/// A word-embedding lookup found in a graph: `Gather(table, ids)` on axis 0,
/// with `table` a rank-2 initializer used by nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordGather {
    /// Index of the Gather node in `graph.node`.
    pub node: usize,
    /// The table initializer's name.
    pub table: String,
    /// The Gather's output: the model input that replaces it.
    pub output: String,
    /// ONNX element type of the table.
    pub elem_type: i32,
    /// Rows and bytes per row.
    pub rows: usize,
    pub row_bytes: usize,
}

/// The element type of an ONNX table that may be read from the file (8-bit
/// integers, f16, f32), converted as tract converts it.
pub fn table_type(elem_type: i32) -> Option<DatumType> {
    let dt: DatumType = tract_onnx::pb::tensor_proto::DataType::try_from(elem_type)
        .ok()?
        .try_into()
        .ok()?;
    [DatumType::I8, DatumType::U8, DatumType::F16, DatumType::F32]
        .contains(&dt)
        .then_some(dt)
}

/// Finds the largest lookup by `ids` (the name of the token-ids graph input)
/// in a table big enough to be worth reading from the file (see the module
/// doc). A graph with subgraphs (`If`, `Loop`, `Scan` bodies, which could
/// use the table too) is left alone. Pure; changes nothing.
pub fn find_word_gather(graph: &GraphProto, ids: &str) -> Option<WordGather> {
    if graph
        .node
        .iter()
        .flat_map(|n| &n.attribute)
        .any(|a| a.g.is_some() || !a.graphs.is_empty())
    {
        return None;
    }
    let candidates: Vec<_> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.op_type == "Gather"
                && n.domain.is_empty()
                && n.input.len() == 2
                && n.input[1] == ids
                && n.output.len() == 1
                && n.attribute.iter().all(|a| a.name != "axis" || a.i == 0)
        })
        .filter_map(|(ix, n)| {
            let t: &TensorProto = graph.initializer.iter().find(|t| t.name == n.input[0])?;
            let row_len = usize::try_from(*t.dims.get(1)?).ok()?;
            let rows = usize::try_from(t.dims[0]).ok()?;
            let row_bytes = row_len.checked_mul(table_type(t.data_type)?.size_of())?;
            let ok = t.dims.len() == 2
                && t.data_location.unwrap_or(0) == 0
                && row_bytes > 0
                && t.raw_data.len() == rows.checked_mul(row_bytes)?
                && t.raw_data.len() >= MIN_TABLE_BYTES;
            ok.then(|| WordGather {
                node: ix,
                table: t.name.clone(),
                output: n.output[0].clone(),
                elem_type: t.data_type,
                rows,
                row_bytes,
            })
        })
        .collect();
    // The largest such table (an int8 model also looks up a per-row scale).
    let found = candidates.iter().max_by_key(|g| g.rows * g.row_bytes)?;
    // The table must feed this Gather only, and be no graph output or input.
    let uses = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter())
        .filter(|i| **i == found.table)
        .count();
    let exposed = graph.output.iter().any(|o| o.name == found.table)
        || graph.input.iter().any(|i| i.name == found.table);
    (uses == 1 && !exposed).then(|| found.clone())
}

/// Cuts `found` out of `graph`: its Gather node and table go, and its output
/// becomes a graph input of the table's element type. Returns the table's
/// bytes (its `raw_data`, taken out of the graph).
pub fn cut_word_gather(graph: &mut GraphProto, found: &WordGather) -> Vec<u8> {
    graph.node.remove(found.node);
    let mut raw = Vec::new();
    if let Some(ix) = graph.initializer.iter().position(|t| t.name == found.table) {
        raw = std::mem::take(&mut graph.initializer.remove(ix).raw_data);
    }
    graph.input.retain(|i| i.name != found.table);
    graph.input.push(ValueInfoProto {
        name: found.output.clone(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(tract_onnx::pb::type_proto::Value::TensorType(
                tract_onnx::pb::type_proto::Tensor {
                    elem_type: found.elem_type,
                    shape: None,
                },
            )),
        }),
        doc_string: String::new(),
    });
    raw
}

/// A table's rows, read from the model file.
#[derive(Debug)]
pub struct FileRows {
    file: Arc<File>,
    path: PathBuf,
    /// Offset of row 0 in the file.
    offset: u64,
    rows: usize,
    row_bytes: usize,
    /// The file's size and modification time when the rows were set up.
    stamp: Option<(u64, std::time::SystemTime)>,
}

/// A file's size and modification time, if the system gives them.
fn stamp(file: &File) -> Option<(u64, std::time::SystemTime)> {
    let meta = file.metadata().ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

impl FileRows {
    /// The rows of a `rows × row_bytes` table whose bytes are at `range` of
    /// the model in `file`.
    pub fn new(
        file: &ModelFile,
        range: Range<usize>,
        rows: usize,
        row_bytes: usize,
    ) -> Result<FileRows> {
        if row_bytes == 0 || rows.checked_mul(row_bytes) != Some(range.len()) {
            return Err(Error::Model(format!(
                "embedding table: {} bytes in the file for {rows} rows of {row_bytes}",
                range.len()
            )));
        }
        let offset = file
            .offset
            .checked_add(range.start as u64)
            .ok_or_else(|| Error::Model("embedding table offset overflows".into()))?;
        Ok(FileRows {
            file: file.file.clone(),
            path: file.path.clone(),
            offset,
            rows,
            row_bytes,
            stamp: stamp(&file.file),
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn read_at(&self, dst: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(dst, offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Checks that the file holds exactly `table` where these rows are read.
    pub fn verify(&self, table: &[u8]) -> Result<()> {
        if table.len() != self.rows * self.row_bytes {
            return Err(Error::Model(
                "embedding table size differs from the file's".into(),
            ));
        }
        const CHUNK: usize = 1 << 16;
        let mut buf = vec![0u8; CHUNK];
        for (i, chunk) in table.chunks(CHUNK).enumerate() {
            let dst = &mut buf[..chunk.len()];
            self.read_at(dst, self.offset + (i * CHUNK) as u64)?;
            if dst != chunk {
                return Err(Error::Model(format!(
                    "{}: the embedding table read from the file differs from the decoded one",
                    self.path.display()
                )));
            }
        }
        Ok(())
    }

    /// Writes the rows of `ids`, then row `pad` for the positions after
    /// them, into `dst` (a whole number of rows, at least one per id).
    /// Fails, reading nothing, if the file's size or modification time
    /// changed since these rows were set up.
    pub fn fill(&self, ids: &[u32], pad: u32, dst: &mut [u8]) -> Result<()> {
        if stamp(&self.file) != self.stamp {
            return Err(Error::Model(format!(
                "{} changed after the model was loaded; restart to load it again",
                self.path.display()
            )));
        }
        let rb = self.row_bytes;
        if !dst.len().is_multiple_of(rb) || dst.len() / rb < ids.len() {
            return Err(Error::Model(format!(
                "embedding rows: {} bytes for {} tokens of {rb} bytes",
                dst.len(),
                ids.len()
            )));
        }
        let mut rows = dst.chunks_exact_mut(rb);
        for (&id, row) in ids.iter().zip(&mut rows) {
            self.read_row(id, row)?;
        }
        let mut first_pad: Option<&[u8]> = None;
        for row in rows {
            match first_pad {
                Some(p) => row.copy_from_slice(p),
                None => {
                    self.read_row(pad, row)?;
                    first_pad = Some(row);
                }
            }
        }
        Ok(())
    }

    fn read_row(&self, id: u32, row: &mut [u8]) -> Result<()> {
        let id = id as usize;
        if id >= self.rows {
            return Err(Error::InvalidArgument(format!(
                "token id {id} is outside the embedding table ({} rows)",
                self.rows
            )));
        }
        self.read_at(row, self.offset + (id * self.row_bytes) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use tract_onnx::pb::{ModelProto, NodeProto};

    fn tensor(name: &str, dims: &[i64], dt: i32, raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: dt,
            raw_data: raw,
            ..Default::default()
        }
    }

    fn gather(table: &str, ids: &str, out: &str) -> NodeProto {
        NodeProto {
            op_type: "Gather".into(),
            input: vec![table.into(), ids.into()],
            output: vec![out.into()],
            ..Default::default()
        }
    }

    fn model(graph: GraphProto) -> ModelProto {
        ModelProto {
            ir_version: 8,
            producer_name: "test".into(),
            graph: Some(graph),
            ..Default::default()
        }
    }

    proptest! {
        /// Every raw initializer is found where its bytes are.
        #[test]
        fn initializer_ranges_point_at_the_raw_bytes(
            tensors in prop::collection::vec(("[a-z./_]{1,12}", prop::collection::vec(any::<u8>(), 0..300)), 0..6),
            nodes in 0usize..4,
        ) {
            let graph = GraphProto {
                node: (0..nodes).map(|i| gather("t", "ids", &format!("o{i}"))).collect(),
                initializer: tensors.iter().map(|(n, raw)| tensor(n, &[raw.len() as i64], 2, raw.clone())).collect(),
                name: "g".into(),
                ..Default::default()
            };
            let bytes = model(graph).encode_to_vec();
            let found = initializer_ranges(&bytes).unwrap();
            let with_data: Vec<_> = tensors.iter().filter(|(_, r)| !r.is_empty()).collect();
            prop_assert_eq!(found.len(), with_data.len());
            for ((name, range), (n, raw)) in found.iter().zip(with_data) {
                prop_assert_eq!(name, n);
                prop_assert_eq!(&bytes[range.clone()], raw.as_slice());
            }
        }

        /// Truncated or corrupted bytes never panic.
        #[test]
        fn initializer_ranges_survive_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = initializer_ranges(&bytes);
        }
    }

    #[test]
    fn every_raw_initializer_of_the_tiny_model_is_found() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny/model.onnx");
        let bytes = std::fs::read(path).unwrap();
        let proto = ModelProto::decode(bytes.as_slice()).unwrap();
        let ranges = initializer_ranges(&bytes).unwrap();
        let graph = proto.graph.unwrap();
        let raw: Vec<_> = graph
            .initializer
            .iter()
            .filter(|t| !t.raw_data.is_empty())
            .collect();
        assert_eq!(ranges.len(), raw.len());
        for t in raw {
            let (_, r) = ranges.iter().find(|(n, _)| *n == t.name).unwrap();
            assert_eq!(&bytes[r.clone()], t.raw_data.as_slice(), "{}", t.name);
        }
    }

    fn table_graph(rows: usize, row_bytes: usize) -> GraphProto {
        let raw: Vec<u8> = (0..rows * row_bytes).map(|i| (i * 7 % 251) as u8).collect();
        GraphProto {
            node: vec![
                gather("pos", "pos_ids", "p"),
                gather("words", "input_ids", "w"),
                gather("scales", "input_ids", "s"),
            ],
            initializer: vec![
                tensor("pos", &[4, 8], 3, vec![1; 32]),
                tensor("words", &[rows as i64, row_bytes as i64], 3, raw),
                // One f32 scale per row: a smaller table on the same ids.
                tensor("scales", &[rows as i64, 1], 1, vec![0; rows * 4]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn finds_and_cuts_the_word_lookup() {
        let mut g = table_graph(4096, 384);
        let found = find_word_gather(&g, "input_ids").unwrap();
        assert_eq!(
            found,
            WordGather {
                node: 1,
                table: "words".into(),
                output: "w".into(),
                elem_type: 3,
                rows: 4096,
                row_bytes: 384
            }
        );
        let expected = g.initializer[1].raw_data.clone();
        assert_eq!(cut_word_gather(&mut g, &found), expected);
        assert_eq!(g.node.len(), 2);
        assert_eq!(g.initializer.len(), 2);
        assert_eq!(g.input.last().unwrap().name, "w");
    }

    #[test]
    fn small_shared_or_missing_tables_stay_in_the_graph() {
        assert!(find_word_gather(&table_graph(16, 32), "input_ids").is_none());
        assert!(find_word_gather(&table_graph(4096, 384), "token_type_ids").is_none());
        let mut shared = table_graph(4096, 384);
        shared.node.push(gather("words", "other", "x"));
        assert!(find_word_gather(&shared, "input_ids").is_none());
        let mut typed = table_graph(4096, 384);
        typed.initializer[1].data_type = 7; // int64: not a table type
                                            // Only the scales are left, and they are too small.
        assert!(find_word_gather(&typed, "input_ids").is_none());
        // A subgraph could use the table too: leave such graphs alone.
        let mut sub = table_graph(4096, 384);
        sub.node.push(NodeProto {
            op_type: "If".into(),
            attribute: vec![tract_onnx::pb::AttributeProto {
                name: "then_branch".into(),
                g: Some(GraphProto::default()),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(find_word_gather(&sub, "input_ids").is_none());
    }

    #[test]
    fn maps_addresses_to_file_offsets() {
        let maps = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/x
00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/x
7f2c00000000-7f2c00021000 rw-p 00000000 00:00 0
";
        assert_eq!(file_offset(maps, 0x400010), Some(0x10));
        assert_eq!(file_offset(maps, 0x651234), Some(0x51234));
        assert_eq!(file_offset(maps, 0x452000), None);
        assert_eq!(file_offset("garbage\n1-2 x", 1), None);
    }

    #[test]
    fn rows_are_read_from_the_file_and_checked() {
        let rows = 40;
        let rb = 6;
        let table: Vec<u8> = (0..rows * rb).map(|i| (i % 256) as u8).collect();
        let mut bytes = b"header..".to_vec();
        bytes.extend_from_slice(&table);
        let path = std::env::temp_dir().join(format!("edge-bert-rows-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = ModelFile::new(Arc::new(File::open(&path).unwrap()), &path, 0);
        let r = FileRows::new(&file, 8..8 + rows * rb, rows, rb).unwrap();
        r.verify(&table).unwrap();
        let mut other = table.clone();
        other[100] ^= 1;
        assert!(r.verify(&other).is_err());

        let mut dst = vec![0u8; 5 * rb];
        r.fill(&[3, 39, 0], 2, &mut dst).unwrap();
        let row = |i: usize| &table[i * rb..(i + 1) * rb];
        let expected = [row(3), row(39), row(0), row(2), row(2)].concat();
        assert_eq!(dst, expected);
        assert!(matches!(
            r.fill(&[40], 0, &mut dst),
            Err(Error::InvalidArgument(_))
        ));
        assert!(r.fill(&[1, 2, 3, 4, 5, 6], 0, &mut dst).is_err());
        assert!(FileRows::new(&file, 8..8, 0, 0).is_err());

        // The file written in place (same size, new time): reads stop.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.set_modified(later).unwrap();
        match r.fill(&[3], 2, &mut dst) {
            Err(Error::Model(m)) => assert!(m.contains("changed after"), "{m}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}
