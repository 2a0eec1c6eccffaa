//! Evaluation data: FineWeb token shards and the per-token byte table of a
//! SentencePiece model (spec/MODEL.md, "Evaluation").
//!
//! - Shards: a 256 x int32 little-endian header (magic 20240520, version 1,
//!   token count), then the tokens as little-endian uint16; the file size must
//!   be exactly `1024 + 2 * count`.
//! - Tokenizer: the `.model` file is a protobuf `ModelProto`; only its
//!   `pieces` (field 1: `SentencePiece { piece = 1; score = 2; type = 3 }`) are
//!   read, by a minimal hand-written protobuf reader. Bytes per token: byte
//!   pieces (`<0xNN>`) 1; control, unknown and unused pieces 0 (they are the
//!   boundary tokens); other pieces the UTF-8 length of the piece without a
//!   leading `▁`, plus one for that `▁` unless the previous token is a
//!   boundary token.

use std::path::{Path, PathBuf};

pub const SHARD_MAGIC: i32 = 20240520;
pub const SHARD_VERSION: i32 = 1;
const HEADER_BYTES: usize = 256 * 4;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot read: {err}", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{}: not a token shard: {msg}", path.display())]
    Shard { path: PathBuf, msg: String },
    #[error("{}: not a SentencePiece model: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{0}")]
    Other(String),
}

/// Parse a shard's bytes (the path is for messages).
pub fn parse_shard(path: &Path, bytes: &[u8]) -> Result<Vec<u16>, DataError> {
    let err = |msg: String| DataError::Shard { path: path.to_path_buf(), msg };
    if bytes.len() < HEADER_BYTES {
        return Err(err(format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len())));
    }
    let h = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    if h(0) != SHARD_MAGIC {
        return Err(err(format!("magic {} (expected {SHARD_MAGIC})", h(0))));
    }
    if h(1) != SHARD_VERSION {
        return Err(err(format!("version {} (expected {SHARD_VERSION})", h(1))));
    }
    let count = h(2);
    if count < 0 {
        return Err(err(format!("negative token count {count}")));
    }
    let expect = HEADER_BYTES as u64 + 2 * count as u64;
    if bytes.len() as u64 != expect {
        return Err(err(format!("the header says {count} tokens ({expect} bytes), the file has {} bytes", bytes.len())));
    }
    Ok(bytes[HEADER_BYTES..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

pub fn read_shard(path: &Path) -> Result<Vec<u16>, DataError> {
    let bytes = std::fs::read(path).map_err(|err| DataError::Read { path: path.to_path_buf(), err })?;
    parse_shard(path, &bytes)
}

/// `*` and `?` wildcard match of a whole name.
fn wild(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wild(&p[1..], s) || (!s.is_empty() && wild(p, &s[1..])),
        (Some(b'?'), Some(_)) => wild(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => wild(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Files matching GLOB (wildcards in the file name only), sorted; a plain path is itself.
pub fn glob_files(pattern: &str) -> Result<Vec<PathBuf>, DataError> {
    let path = Path::new(pattern);
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let rd = std::fs::read_dir(&dir).map_err(|err| DataError::Read { path: dir.clone(), err })?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| wild(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| e.path())
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(DataError::Other(format!("no file matches `{pattern}`")));
    }
    Ok(out)
}

/// Every shard matching GLOB, concatenated in name order.
pub fn read_shards(pattern: &str) -> Result<Vec<u16>, DataError> {
    let mut all = Vec::new();
    for f in glob_files(pattern)? {
        all.extend(read_shard(&f)?);
    }
    Ok(all)
}

/// SentencePiece piece types (sentencepiece_model.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Clone, Debug)]
pub struct Piece {
    pub piece: String,
    pub kind: PieceType,
}

struct Pb<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Pb<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = *self.b.get(self.pos).ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.b.len() as u64).ok_or_else(|| format!("field of {n} bytes runs past the end at byte {}", self.pos))?;
        let s = &self.b[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    /// Next (field, wire type), or None at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, String> {
        if self.pos >= self.b.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, (k & 7) as u8)))
    }
    fn skip(&mut self, wire: u8) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => {
                let n = self.varint()?;
                self.take(n).map(|_| ())
            }
            5 => self.take(4).map(|_| ()),
            w => Err(format!("unsupported wire type {w} at byte {}", self.pos)),
        }
    }
}

fn parse_piece(b: &[u8]) -> Result<Piece, String> {
    let mut p = Pb { b, pos: 0 };
    let mut piece = None;
    let mut kind = PieceType::Normal;
    while let Some((field, wire)) = p.key()? {
        match (field, wire) {
            (1, 2) => {
                let n = p.varint()?;
                piece = Some(String::from_utf8(p.take(n)?.to_vec()).map_err(|_| "a piece is not UTF-8".to_string())?);
            }
            (3, 0) => {
                kind = match p.varint()? {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    t => return Err(format!("unknown piece type {t}")),
                }
            }
            (_, w) => p.skip(w)?,
        }
    }
    Ok(Piece { piece: piece.ok_or("a piece without its string")?, kind })
}

/// The pieces of a SentencePiece `ModelProto`.
pub fn parse_pieces(bytes: &[u8]) -> Result<Vec<Piece>, String> {
    let mut p = Pb { b: bytes, pos: 0 };
    let mut pieces = Vec::new();
    while let Some((field, wire)) = p.key()? {
        if field == 1 && wire == 2 {
            let n = p.varint()?;
            let at = p.pos;
            pieces.push(parse_piece(p.take(n)?).map_err(|e| format!("piece {} (at byte {at}): {e}", pieces.len()))?);
        } else {
            p.skip(wire)?;
        }
    }
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    Ok(pieces)
}

/// Per-token byte counts.
#[derive(Clone, Debug)]
pub struct ByteTable {
    pub base_bytes: Vec<u32>,
    pub leading_space: Vec<bool>,
    pub boundary: Vec<bool>,
}

impl ByteTable {
    /// From the pieces, covering ids `0..max(pieces, vocab)` (ids beyond the
    /// pieces are boundary tokens of 0 bytes).
    pub fn new(pieces: &[Piece], vocab: usize) -> Self {
        let n = pieces.len().max(vocab);
        let mut t = ByteTable { base_bytes: vec![0; n], leading_space: vec![false; n], boundary: vec![true; n] };
        for (i, p) in pieces.iter().enumerate() {
            match p.kind {
                PieceType::Control | PieceType::Unknown | PieceType::Unused => continue,
                PieceType::Byte => {
                    t.boundary[i] = false;
                    t.base_bytes[i] = 1;
                }
                PieceType::Normal | PieceType::UserDefined => {
                    t.boundary[i] = false;
                    let s = match p.piece.strip_prefix('\u{2581}') {
                        Some(rest) => {
                            t.leading_space[i] = true;
                            rest
                        }
                        None => p.piece.as_str(),
                    };
                    t.base_bytes[i] = s.len() as u32;
                }
            }
        }
        t
    }
    pub fn load(path: &Path, vocab: usize) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|err| DataError::Read { path: path.to_path_buf(), err })?;
        let pieces = parse_pieces(&bytes).map_err(|msg| DataError::Tokenizer { path: path.to_path_buf(), msg })?;
        Ok(ByteTable::new(&pieces, vocab))
    }
    /// Bytes of target `tgt` following `prev`.
    pub fn bytes(&self, prev: u16, tgt: u16) -> u64 {
        let (p, t) = (prev as usize, tgt as usize);
        let b = self.base_bytes.get(t).copied().unwrap_or(0) as u64;
        let sp = self.leading_space.get(t).copied().unwrap_or(false) && !self.boundary.get(p).copied().unwrap_or(true);
        b + sp as u64
    }
}

/// A sliding window: inputs `tokens[start..start + len]`, targets one later;
/// only the targets from `score_from` (an index into the window) on count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
    pub score_from: usize,
}

/// Windows of `seq` tokens over `n_tokens` tokens (`n_tokens - 1` targets):
/// the first scores all its targets, each later one ends `stride` targets
/// further (the last possibly fewer) and scores only those; every target is
/// scored exactly once. Windows are `seq` long unless there are fewer targets.
pub fn windows(n_tokens: usize, seq: usize, stride: usize) -> Vec<Window> {
    let targets = n_tokens.saturating_sub(1);
    if targets == 0 || seq == 0 || stride == 0 {
        return vec![];
    }
    let first = seq.min(targets);
    let mut out = vec![Window { start: 0, len: first, score_from: 0 }];
    let mut next = first;
    while next < targets {
        let end = (next + stride).min(targets);
        let start = end.saturating_sub(seq);
        out.push(Window { start, len: end - start, score_from: next - start });
        next = end;
    }
    out
}
