//! The exported artifact (`.pgz`): every parameter stored as its quantization
//! annotation says (spec/MODEL.md, "The artifact"), compressed with zstd 22.
//!
//! DType per class:
//! - `int{bits}` (optionally with a clip percentile): per row r (rows = the
//!   first dimension; a tensor of rank < 2 is one row) `qmax = 2^(bits-1)-1`,
//!   `scale_r = f16(max(amax_r / qmax, 1e-12))`, at least f16's smallest normal
//!   (f64 -> f32 -> f16, exactly as the CPU backend's fake quantization rounds),
//!   `q = clamp(round_half_even(w / scale_r), -qmax-1, qmax)`; with a clip
//!   percentile each row is first clipped to `[-c, c]`, `c` that percentile of
//!   the row's |w| (linear interpolation, as numpy/torch `quantile`), and amax
//!   is taken after clipping. Dequantized: `q * scale_r`.
//! - `f16`: round to nearest f16; `f32`: round to nearest f32.
//! - pruning: before quantization the `floor(prune * n)` elements of smallest
//!   |w| (ties broken by index) are set to zero.
//!
//! Layout: `"PGZ\0"`, u32 version (1), u32 CRC-32 of everything after these
//! 16 bytes, u32 length of everything after these 16 bytes; then u32 length of
//! the zstd-compressed table and the table (IR hash, constants, per tensor its
//! name, shape, class, packing, prune, raw and compressed sizes), then one
//! zstd frame per tensor. Integer payloads are the f16 row scales then the
//! values, either bit-packed (LSB first; int4 = two per byte) or one per byte
//! (two's complement); export measures both after compression and keeps the
//! smaller. All integers little-endian. Every read is bounds-checked: bad input
//! is an error, never a panic.

use half::f16;
use pgc_ir::{ParamInfo, QuantSpec, StorageClass};
use rayon::prelude::*;
use std::collections::HashMap;

pub const MAGIC: &[u8; 4] = b"PGZ\0";
pub const VERSION: u32 = 1;
pub const ZSTD_LEVEL: i32 = 22;
/// The size budget of artifact plus code.
pub const BUDGET_BYTES: u64 = 16_000_000;
/// Largest element count accepted for one tensor when loading (guards allocations).
const MAX_ELEMS: u64 = 1 << 31;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("not a valid pgc artifact: {0}")]
    Format(String),
    #[error("tensor `{tensor}`: {msg}")]
    Tensor { tensor: String, msg: String },
    #[error("compression failed: {0}")]
    Compress(String),
}

fn fmt_err(msg: impl Into<String>) -> ArtifactError {
    ArtifactError::Format(msg.into())
}

/// How integer values are laid out before compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// `bits` per value, LSB-first bit stream.
    Bits,
    /// One value per byte (two's complement i8).
    Bytes,
    /// Not an integer class.
    None,
}

impl Packing {
    pub fn label(&self) -> &'static str {
        match self {
            Packing::Bits => "bitpacked",
            Packing::Bytes => "bytes",
            Packing::None => "-",
        }
    }
}

/// One tensor as stored (and dequantized).
#[derive(Clone, Debug)]
pub struct StoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub storage: StorageClass,
    pub prune: f64,
    pub packing: Packing,
    /// Bytes of the uncompressed payload (packed values + f16 scales).
    pub raw_bytes: u64,
    /// Bytes of its zstd frame.
    pub compressed_bytes: u64,
    /// Integer classes: the quantized values and the f16 row scales.
    pub q: Vec<i8>,
    pub scales: Vec<f16>,
    /// The values after dequantization.
    pub values: Vec<f64>,
}

/// A loaded (or just exported) artifact.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub version: u32,
    pub ir_hash: u64,
    pub constants: Vec<(String, f64)>,
    pub tensors: Vec<StoredTensor>,
    /// Size of the whole file.
    pub total_bytes: u64,
}

impl Artifact {
    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// 64-bit FNV-1a (the IR hash: of the IR's JSON text).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// CRC-32 (IEEE, reflected, as zlib).
pub fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in bytes {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------- quantization

/// `qmax = 2^(bits-1) - 1`.
pub fn qmax(bits: u32) -> i32 {
    (1i32 << (bits - 1)) - 1
}

/// The f16 row scale of a row whose largest |w| is `amax`: exactly the CPU
/// backend's fake quantization (f64 -> f32 -> f16, then at least f16's
/// smallest normal).
pub fn row_scale(amax: f64, bits: u32) -> f16 {
    let s = (amax / qmax(bits) as f64).max(1e-12);
    let h = f16::from_f32(s as f32);
    if h.to_f64() < f16::MIN_POSITIVE.to_f64() {
        f16::MIN_POSITIVE
    } else {
        h
    }
}

/// Percentile `p` (0..100) of `sorted` (ascending), linear interpolation.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Zero the `floor(prune * n)` smallest-magnitude values (ties by index).
pub fn prune_smallest(values: &mut [f64], prune: f64) {
    let n = values.len();
    let k = ((prune.clamp(0.0, 1.0) * n as f64).floor() as usize).min(n);
    if k == 0 {
        return;
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        values[a as usize].abs().total_cmp(&values[b as usize].abs()).then(a.cmp(&b))
    });
    for &i in &idx[..k] {
        values[i as usize] = 0.0;
    }
}

/// Rows of a tensor for per-row quantization.
pub fn rows_of(shape: &[usize]) -> usize {
    if shape.len() >= 2 {
        shape[0]
    } else {
        1
    }
}

/// Quantize one tensor (already pruned) to `bits` per row; returns (q, scales).
pub fn quantize_rows(values: &[f64], rows: usize, bits: u32, clip_percentile: Option<f64>) -> (Vec<i8>, Vec<f16>) {
    let cols = if rows == 0 { 0 } else { values.len() / rows };
    let qm = qmax(bits) as f64;
    let mut q = vec![0i8; values.len()];
    let mut scales = vec![f16::ZERO; rows];
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        let clipped: Vec<f64> = match clip_percentile {
            Some(p) => {
                let mut a: Vec<f64> = row.iter().map(|v| v.abs()).collect();
                a.sort_by(f64::total_cmp);
                let c = percentile_sorted(&a, p);
                row.iter().map(|&v| v.clamp(-c, c)).collect()
            }
            None => row.to_vec(),
        };
        let amax = clipped.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let s = row_scale(amax, bits);
        scales[r] = s;
        let sf = s.to_f64();
        for (d, &v) in q[r * cols..(r + 1) * cols].iter_mut().zip(&clipped) {
            *d = (v / sf).clamp(-qm - 1.0, qm).round_ties_even() as i8;
        }
    }
    (q, scales)
}

fn pack_bits(q: &[i8], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; (q.len() * bits as usize).div_ceil(8)];
    let mask = (1u32 << bits) - 1;
    let mut pos = 0usize;
    for &v in q {
        let u = (v as i32 as u32) & mask;
        for b in 0..bits as usize {
            if u >> b & 1 != 0 {
                out[(pos + b) / 8] |= 1 << ((pos + b) % 8);
            }
        }
        pos += bits as usize;
    }
    out
}

fn unpack_bits(bytes: &[u8], n: usize, bits: u32) -> Vec<i8> {
    let mut out = Vec::with_capacity(n);
    let mut pos = 0usize;
    for _ in 0..n {
        let mut u = 0u32;
        for b in 0..bits as usize {
            if bytes[(pos + b) / 8] >> ((pos + b) % 8) & 1 != 0 {
                u |= 1 << b;
            }
        }
        // sign-extend
        let v = ((u << (32 - bits)) as i32) >> (32 - bits);
        out.push(v as i8);
        pos += bits as usize;
    }
    out
}

fn compress(bytes: &[u8]) -> Result<Vec<u8>, ArtifactError> {
    zstd::bulk::compress(bytes, ZSTD_LEVEL).map_err(|e| ArtifactError::Compress(e.to_string()))
}

fn scales_bytes(scales: &[f16]) -> Vec<u8> {
    scales.iter().flat_map(|s| s.to_bits().to_le_bytes()).collect()
}

struct Encoded {
    t: StoredTensor,
    frame: Vec<u8>,
}

fn encode_tensor(p: &ParamInfo, values: &[f64]) -> Result<Encoded, ArtifactError> {
    let terr = |msg: String| ArtifactError::Tensor { tensor: p.name.clone(), msg };
    let n: usize = p.shape.iter().product();
    if values.len() != n {
        return Err(terr(format!("{} values for shape {:?}", values.len(), p.shape)));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(terr(format!("value {} at flat index {i} is not finite", values[i])));
    }
    let QuantSpec { storage, prune, .. } = &p.quant;
    let mut w = values.to_vec();
    prune_smallest(&mut w, *prune);
    let (mut q, mut scales, deq, payloads): (Vec<i8>, Vec<f16>, Vec<f64>, Vec<(Packing, Vec<u8>)>) = match storage {
        StorageClass::Int { bits, clip_percentile } => {
            if !(2..=8).contains(bits) {
                return Err(terr(format!("int{bits} is not supported (2..=8 bits)")));
            }
            let rows = rows_of(&p.shape);
            let (q, scales) = quantize_rows(&w, rows, *bits, *clip_percentile);
            let cols = if rows == 0 { 0 } else { n / rows };
            let deq: Vec<f64> = q.iter().enumerate().map(|(i, &v)| v as f64 * scales[i / cols.max(1)].to_f64()).collect();
            let sb = scales_bytes(&scales);
            let mut payloads = vec![(Packing::Bits, [sb.clone(), pack_bits(&q, *bits)].concat())];
            if *bits < 8 {
                payloads.push((Packing::Bytes, [sb, q.iter().map(|&v| v as u8).collect()].concat()));
            }
            (q, scales, deq, payloads)
        }
        StorageClass::F16 => {
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f64(v)).collect();
            if let Some(i) = h.iter().position(|v| !v.is_finite()) {
                return Err(terr(format!("value {} at flat index {i} overflows f16", w[i])));
            }
            (vec![], vec![], h.iter().map(|v| v.to_f64()).collect(), vec![(Packing::None, scales_bytes(&h))])
        }
        StorageClass::F32 => {
            let f: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            if let Some(i) = f.iter().position(|v| !v.is_finite()) {
                return Err(terr(format!("value {} at flat index {i} overflows f32", w[i])));
            }
            let b = f.iter().flat_map(|v| v.to_le_bytes()).collect();
            (vec![], vec![], f.iter().map(|&v| v as f64).collect(), vec![(Packing::None, b)])
        }
    };
    let mut best: Option<(Packing, u64, Vec<u8>)> = None;
    for (packing, raw) in payloads {
        let frame = compress(&raw)?;
        if best.as_ref().is_none_or(|b| frame.len() < b.2.len()) {
            best = Some((packing, raw.len() as u64, frame));
        }
    }
    let (packing, raw_bytes, frame) = best.expect("at least one payload");
    if !matches!(storage, StorageClass::Int { .. }) {
        q.clear();
        scales.clear();
    }
    let t = StoredTensor {
        name: p.name.clone(),
        shape: p.shape.clone(),
        storage: storage.clone(),
        prune: *prune,
        packing,
        raw_bytes,
        compressed_bytes: frame.len() as u64,
        q,
        scales,
        values: deq,
    };
    Ok(Encoded { t, frame })
}

// ---------------------------------------------------------------- writing

struct W(Vec<u8>);
impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v)
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

/// Export the parameters: returns the file's bytes and the artifact (with the
/// dequantized values, sizes and chosen packings).
pub fn export(
    params: &[ParamInfo],
    values: &HashMap<String, Vec<f64>>,
    ir_hash: u64,
    constants: &[(String, f64)],
) -> Result<(Vec<u8>, Artifact), ArtifactError> {
    export_with_progress(params, values, ir_hash, constants, &|| {})
}

/// [`export`], calling `on_tensor` after each tensor is encoded (from the
/// encoding threads; for a progress display).
pub fn export_with_progress(
    params: &[ParamInfo],
    values: &HashMap<String, Vec<f64>>,
    ir_hash: u64,
    constants: &[(String, f64)],
    on_tensor: &(dyn Fn() + Sync),
) -> Result<(Vec<u8>, Artifact), ArtifactError> {
    let encoded: Vec<Encoded> = params
        .par_iter()
        .map(|p| {
            let v = values
                .get(&p.name)
                .ok_or_else(|| ArtifactError::Tensor { tensor: p.name.clone(), msg: "no value given".into() })?;
            let e = encode_tensor(p, v);
            on_tensor();
            e
        })
        .collect::<Result<_, _>>()?;
    let mut table = W(Vec::new());
    table.u64(ir_hash);
    table.u32(constants.len() as u32);
    for (k, v) in constants {
        table.str(k);
        table.f64(*v);
    }
    table.u32(encoded.len() as u32);
    for e in &encoded {
        let t = &e.t;
        table.str(&t.name);
        table.u8(t.shape.len() as u8);
        for &d in &t.shape {
            table.u64(d as u64);
        }
        let (class, bits, clip) = match &t.storage {
            StorageClass::Int { bits, clip_percentile } => (0u8, *bits as u8, *clip_percentile),
            StorageClass::F16 => (1, 16, None),
            StorageClass::F32 => (2, 32, None),
        };
        table.u8(class);
        table.u8(bits);
        table.u8(clip.is_some() as u8);
        table.f64(clip.unwrap_or(0.0));
        table.f64(t.prune);
        table.u8(match t.packing {
            Packing::Bits => 0,
            Packing::Bytes => 1,
            Packing::None => 2,
        });
        table.u64(t.raw_bytes);
        table.u64(t.compressed_bytes);
    }
    let table_z = compress(&table.0)?;
    let mut body = W(Vec::new());
    body.u32(table_z.len() as u32);
    body.0.extend_from_slice(&table_z);
    for e in &encoded {
        body.0.extend_from_slice(&e.frame);
    }
    let mut file = W(Vec::with_capacity(body.0.len() + 16));
    file.0.extend_from_slice(MAGIC);
    file.u32(VERSION);
    file.u32(crc32(&body.0));
    file.u32(body.0.len() as u32);
    file.0.extend_from_slice(&body.0);
    let total_bytes = file.0.len() as u64;
    let art = Artifact {
        version: VERSION,
        ir_hash,
        constants: constants.to_vec(),
        tensors: encoded.into_iter().map(|e| e.t).collect(),
        total_bytes,
    };
    Ok((file.0, art))
}

// ---------------------------------------------------------------- reading

struct R<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'static str,
}
impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ArtifactError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(e) => {
                let s = &self.b[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(fmt_err(format!("{} truncated at byte {} (needs {n} more)", self.what, self.pos))),
        }
    }
    fn u8(&mut self) -> Result<u8, ArtifactError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ArtifactError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ArtifactError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64, ArtifactError> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<String, ArtifactError> {
        let n = self.u32()? as usize;
        if n > 4096 {
            return Err(fmt_err(format!("{}: a name of {n} bytes", self.what)));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| fmt_err(format!("{}: a name is not UTF-8", self.what)))
    }
}

fn decompress(frame: &[u8], expect: usize, what: &str) -> Result<Vec<u8>, ArtifactError> {
    // Check the frame's declared size before allocating for it.
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n == expect as u64 => {}
        Ok(Some(n)) => return Err(fmt_err(format!("{what}: the zstd frame holds {n} bytes, expected {expect}"))),
        _ => return Err(fmt_err(format!("{what}: not a zstd frame with a known size"))),
    }
    let out = zstd::bulk::decompress(frame, expect.max(1)).map_err(|e| fmt_err(format!("{what}: cannot decompress: {e}")))?;
    if out.len() != expect {
        return Err(fmt_err(format!("{what}: decompressed to {} bytes, expected {expect}", out.len())));
    }
    Ok(out)
}

/// Does `bytes` start like an artifact?
pub fn is_artifact(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && &bytes[..4] == MAGIC
}

/// Parse and dequantize an artifact.
pub fn load_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    if bytes.len() < 16 {
        return Err(fmt_err(format!("{} bytes, shorter than the 16-byte header", bytes.len())));
    }
    if !is_artifact(bytes) {
        return Err(fmt_err("not a pgc artifact: wrong magic (expected \"PGZ\\0\")"));
    }
    let mut h = R { b: bytes, pos: 4, what: "header" };
    let version = h.u32()?;
    if version != VERSION {
        return Err(fmt_err(format!("version {version}, this pgc reads version {VERSION}")));
    }
    let crc = h.u32()?;
    let len = h.u32()? as usize;
    let body = &bytes[16..];
    if body.len() != len {
        return Err(fmt_err(format!("the header says {len} bytes follow, the file has {} (truncated or extended)", body.len())));
    }
    let got = crc32(body);
    if got != crc {
        return Err(fmt_err(format!("checksum mismatch (stored {crc:08x}, computed {got:08x}): the file is corrupt")));
    }
    let mut b = R { b: body, pos: 0, what: "body" };
    let tlen = b.u32()? as usize;
    let table_z = b.take(tlen)?;
    let tsize = match zstd::zstd_safe::get_frame_content_size(table_z) {
        Ok(Some(n)) if n <= 1 << 24 => n as usize,
        _ => return Err(fmt_err("tensor table: not a zstd frame of a known, sane size")),
    };
    let table = decompress(table_z, tsize, "tensor table")?;
    let mut t = R { b: &table, pos: 0, what: "tensor table" };
    let ir_hash = t.u64()?;
    let nc = t.u32()? as usize;
    if nc > 10_000 {
        return Err(fmt_err(format!("{nc} constants")));
    }
    let mut constants = Vec::with_capacity(nc);
    for _ in 0..nc {
        let k = t.str()?;
        constants.push((k, t.f64()?));
    }
    let nt = t.u32()? as usize;
    if nt > 1_000_000 {
        return Err(fmt_err(format!("{nt} tensors")));
    }
    let mut tensors = Vec::new();
    for _ in 0..nt {
        let name = t.str()?;
        let terr = |msg: String| ArtifactError::Tensor { tensor: name.clone(), msg };
        let rank = t.u8()? as usize;
        if rank > 8 {
            return Err(terr(format!("rank {rank}")));
        }
        let mut shape = Vec::with_capacity(rank);
        let mut n: u64 = 1;
        for _ in 0..rank {
            let d = t.u64()?;
            n = n.checked_mul(d).filter(|&n| n <= MAX_ELEMS).ok_or_else(|| terr("shape too large".into()))?;
            shape.push(d as usize);
        }
        let n = n as usize;
        let class = t.u8()?;
        let bits = t.u8()? as u32;
        let has_clip = t.u8()?;
        let clip = t.f64()?;
        let prune = t.f64()?;
        let packing = match t.u8()? {
            0 => Packing::Bits,
            1 => Packing::Bytes,
            2 => Packing::None,
            p => return Err(terr(format!("unknown packing {p}"))),
        };
        let raw_bytes = t.u64()?;
        let compressed_bytes = t.u64()?;
        let storage = match (class, bits) {
            (0, 2..=8) => StorageClass::Int { bits, clip_percentile: (has_clip != 0).then_some(clip) },
            (1, 16) => StorageClass::F16,
            (2, 32) => StorageClass::F32,
            _ => return Err(terr(format!("unknown storage class {class} with {bits} bits"))),
        };
        let rows = rows_of(&shape);
        let expect = match (&storage, packing) {
            (StorageClass::Int { .. }, Packing::Bits) => (n * bits as usize).div_ceil(8) + 2 * rows,
            (StorageClass::Int { .. }, Packing::Bytes) => n + 2 * rows,
            (StorageClass::F16, Packing::None) => 2 * n,
            (StorageClass::F32, Packing::None) => 4 * n,
            _ => return Err(terr(format!("packing {} does not fit class {storage}", packing.label()))),
        };
        if raw_bytes != expect as u64 {
            return Err(terr(format!("raw size {raw_bytes}, expected {expect} for {storage} {shape:?}")));
        }
        let frame = b.take(usize::try_from(compressed_bytes).map_err(|_| terr("frame size".into()))?)?;
        let raw = decompress(frame, expect, &format!("tensor `{name}`"))?;
        let (q, scales, values) = match &storage {
            StorageClass::Int { .. } => {
                let scales: Vec<f16> = raw[..2 * rows].chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect();
                if let Some(s) = scales.iter().find(|s| !s.is_finite() || s.to_f64() <= 0.0) {
                    return Err(terr(format!("row scale {s} is not a positive finite number")));
                }
                let vals = &raw[2 * rows..];
                let q: Vec<i8> = match packing {
                    Packing::Bits => unpack_bits(vals, n, bits),
                    _ => vals.iter().map(|&v| v as i8).collect(),
                };
                let qm = qmax(bits);
                if let Some(i) = q.iter().position(|&v| (v as i32) < -qm - 1 || v as i32 > qm) {
                    return Err(terr(format!("value {} at {i} is outside int{bits}", q[i])));
                }
                let cols = if rows == 0 { 0 } else { n / rows };
                let values = q.iter().enumerate().map(|(i, &v)| v as f64 * scales[i / cols.max(1)].to_f64()).collect();
                (q, scales, values)
            }
            StorageClass::F16 => {
                let v = raw.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64()).collect();
                (vec![], vec![], v)
            }
            StorageClass::F32 => {
                let v = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
                (vec![], vec![], v)
            }
        };
        tensors.push(StoredTensor { name, shape, storage, prune, packing, raw_bytes, compressed_bytes, q, scales, values });
    }
    if t.pos != table.len() {
        return Err(fmt_err(format!("{} stray bytes after the tensor table", table.len() - t.pos)));
    }
    if b.pos != body.len() {
        return Err(fmt_err(format!("{} stray bytes after the last tensor", body.len() - b.pos)));
    }
    Ok(Artifact { version, ir_hash, constants, tensors, total_bytes: bytes.len() as u64 })
}

/// The size of the same weights in the seed's format: integer tensors as int8
/// containers (one byte per value) plus f16 row scales, f16 and f32 tensors
/// as they are, all serialized in one stream and compressed with zstd 22.
pub fn seed_format_bytes(art: &Artifact) -> Result<u64, ArtifactError> {
    let mut all = Vec::new();
    for t in &art.tensors {
        match &t.storage {
            StorageClass::Int { .. } => {
                all.extend(t.q.iter().map(|&v| v as u8));
                all.extend(scales_bytes(&t.scales));
            }
            StorageClass::F16 => all.extend(t.values.iter().flat_map(|&v| f16::from_f64(v).to_bits().to_le_bytes())),
            StorageClass::F32 => all.extend(t.values.iter().flat_map(|&v| (v as f32).to_le_bytes())),
        }
    }
    Ok(compress(&all)?.len() as u64)
}

/// Parameter values (dequantized) from an artifact, checked against the
/// model's parameters: every parameter present with its exact shape.
pub fn params_from(art: Artifact, params: &[ParamInfo]) -> Result<HashMap<String, Vec<f64>>, ArtifactError> {
    let mut by: HashMap<String, StoredTensor> = art.tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut out = HashMap::new();
    for p in params {
        let t = by.remove(&p.name).ok_or_else(|| ArtifactError::Tensor {
            tensor: p.name.clone(),
            msg: format!("missing (expected shape {:?}); was the artifact exported from this model?", p.shape),
        })?;
        if t.shape != p.shape {
            return Err(ArtifactError::Tensor { tensor: p.name.clone(), msg: format!("has shape {:?}, the model expects {:?}", t.shape, p.shape) });
        }
        out.insert(p.name.clone(), t.values);
    }
    Ok(out)
}
