//! The parameter lists of a module's `.entry` kernels.
//!
//! The driver does not check a launch's arguments against the kernel (too few
//! arguments make it read garbage), so [`super::CudaDevice`] checks them here
//! with the same rules as the simulator: a pointer or `u64` goes to an 8-byte
//! integer parameter, `u32`/`i32` to a 4-byte integer, `f32` to `.f32`/`.b32`.
//! Generated programs carry their entries' signatures as data from the PTX
//! builder ([`from_entries`]); for hand-written PTX text the lists come from
//! the simulator's parser ([`from_text`]), the one PTX parser outside ptxas.
//! Kernels whose list cannot be had are launched unchecked (`None`).

use crate::device::KernelArg;
use crate::sim::parse;
use pgc_backends::ptx::builder::ParamType;
use pgc_backends::ptx::program::Entry;
use std::collections::HashMap;

/// The kind of one `.param`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `.u64`, `.s64`, `.b64`
    Int64,
    /// `.u32`, `.s32`
    Int32,
    /// `.b32`: an integer or an `f32`
    Bits32,
    /// `.f32`
    F32,
    /// anything else (`.f64`, 16/8-bit scalars, `.b8 name[N]` arrays), with its size
    Other(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
}

impl Param {
    pub fn size(&self) -> u32 {
        match self.kind {
            ParamKind::Int64 => 8,
            ParamKind::Int32 | ParamKind::Bits32 | ParamKind::F32 => 4,
            ParamKind::Other(n) => n,
        }
    }

    /// Whether `arg` may be passed for this parameter.
    pub fn accepts(&self, arg: &KernelArg) -> bool {
        match arg {
            KernelArg::Buf(..) | KernelArg::U64(_) => self.kind == ParamKind::Int64,
            KernelArg::U32(_) | KernelArg::I32(_) => matches!(self.kind, ParamKind::Int32 | ParamKind::Bits32),
            KernelArg::F32(_) => matches!(self.kind, ParamKind::F32 | ParamKind::Bits32),
            KernelArg::TensorMap(_) => self.kind == ParamKind::Other(128),
        }
    }
}

/// The parameter lists of generated entries.
pub fn from_entries(entries: &[Entry]) -> HashMap<String, Option<Vec<Param>>> {
    entries
        .iter()
        .map(|e| {
            let params = e
                .params
                .iter()
                .map(|p| Param {
                    name: p.name.clone(),
                    kind: match p.ty {
                        ParamType::U64 => ParamKind::Int64,
                        ParamType::U32 | ParamType::S32 => ParamKind::Int32,
                        ParamType::F32 => ParamKind::F32,
                        ParamType::Bytes { size, .. } => ParamKind::Other(size),
                    },
                })
                .collect();
            (e.name.clone(), Some(params))
        })
        .collect()
}

fn scalar(ty: &str) -> Option<ParamKind> {
    Some(match ty.trim_start_matches('.') {
        "u64" | "s64" | "b64" => ParamKind::Int64,
        "u32" | "s32" => ParamKind::Int32,
        "b32" => ParamKind::Bits32,
        "f32" => ParamKind::F32,
        "f64" => ParamKind::Other(8),
        "u16" | "s16" | "b16" | "f16" | "bf16" => ParamKind::Other(2),
        "u8" | "s8" | "b8" => ParamKind::Other(1),
        _ => return None,
    })
}

/// One parsed `.param` declaration (arrays as `Other(bytes)`).
fn from_decl(d: &parse::VarDecl) -> Option<Param> {
    let kind = scalar(&d.ty)?;
    let kind = match d.dims.as_slice() {
        [] => kind,
        dims => {
            let mut n = Param { name: String::new(), kind }.size();
            for dim in dims {
                n = n.checked_mul(u32::try_from((*dim)?).ok()?)?;
            }
            ParamKind::Other(n)
        }
    };
    Some(Param { name: d.name.clone(), kind })
}

/// The parameter lists of every `.entry` of PTX text, by kernel name, from
/// the simulator's parser; empty when the text does not parse (the driver's
/// JIT then says what is wrong), `None` for a list with a type it does not know.
pub fn from_text(ptx: &str) -> HashMap<String, Option<Vec<Param>>> {
    let Ok(m) = parse::parse_module(ptx) else { return HashMap::new() };
    m.entries.iter().map(|e| (e.name.clone(), e.params.iter().map(from_decl).collect::<Option<Vec<Param>>>())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevBuf;
    use pgc_backends::ptx::builder::{KernelBuilder, Module};

    #[test]
    fn reads_hand_written_and_nvcc_style_lists() {
        let ptx = r#"
// .entry commented_out(.param .u64 x)
.version 8.0
.target sm_90a
.address_size 64
/* block comment .entry nope( */
.visible .entry gemm(
	.param .u64 gemm_param_a,
	.param .u32 gemm_param_m, // trailing comment
	.param .f32 gemm_param_s,
	.param .s32 gemm_param_i
)
.maxntid 128, 1, 1
{ ret; }
.entry nvcc(
    .param .u64 .ptr .global .align 16 nvcc_param_0,
    .param .align 8 .b8 nvcc_param_1[16],
    .param .b32 nvcc_param_2
) { ret; }
.entry empty() { ret; }
"#;
        let m = from_text(ptx);
        assert_eq!(m.len(), 3, "{m:?}");
        let g = m["gemm"].as_ref().unwrap();
        let kinds: Vec<ParamKind> = g.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, vec![ParamKind::Int64, ParamKind::Int32, ParamKind::F32, ParamKind::Int32]);
        assert_eq!(g[1].name, "gemm_param_m");
        let n = m["nvcc"].as_ref().unwrap();
        assert_eq!(n.iter().map(|p| p.kind).collect::<Vec<_>>(), vec![ParamKind::Int64, ParamKind::Other(16), ParamKind::Bits32]);
        assert_eq!(m["empty"], Some(vec![]));
        assert!(from_text(".entry j(.param .u64 a").is_empty(), "text that does not parse gives no lists");
    }

    #[test]
    fn generated_entries_carry_their_lists() {
        let mut b = KernelBuilder::new("k");
        b.param("a", ParamType::U64);
        b.param("n", ParamType::U32);
        b.param("s", ParamType::F32);
        b.param("tmap", ParamType::Bytes { align: 64, size: 128 });
        b.ret();
        let mut m = Module::new();
        m.push(b.finish());
        let entries = pgc_backends::ptx::program::entries_of(&m);
        let lists = from_entries(&entries);
        let k = lists["k"].as_ref().unwrap();
        assert_eq!(k.iter().map(|p| p.kind).collect::<Vec<_>>(), vec![ParamKind::Int64, ParamKind::Int32, ParamKind::F32, ParamKind::Other(128)]);
        // The same list as the text says, read back by the simulator's parser.
        assert_eq!(from_text(&m.render())["k"].as_ref().unwrap().iter().map(|p| p.kind).collect::<Vec<_>>(), k.iter().map(|p| p.kind).collect::<Vec<_>>());
    }

    #[test]
    fn matching_rules_follow_the_simulator() {
        let p = |kind| Param { name: "p".into(), kind };
        let buf = DevBuf { id: 1, addr: 256, bytes: 4 };
        assert!(p(ParamKind::Int64).accepts(&KernelArg::Buf(buf, 0)));
        assert!(p(ParamKind::Int64).accepts(&KernelArg::U64(3)));
        assert!(!p(ParamKind::Int64).accepts(&KernelArg::U32(3)));
        assert!(p(ParamKind::Int32).accepts(&KernelArg::I32(-3)));
        assert!(!p(ParamKind::Int32).accepts(&KernelArg::F32(1.0)));
        assert!(p(ParamKind::Bits32).accepts(&KernelArg::F32(1.0)));
        assert!(p(ParamKind::Bits32).accepts(&KernelArg::U32(1)));
        assert!(p(ParamKind::F32).accepts(&KernelArg::F32(1.0)));
        assert!(!p(ParamKind::F32).accepts(&KernelArg::U32(1)));
        assert!(!p(ParamKind::Other(8)).accepts(&KernelArg::U64(1)));
    }
}
