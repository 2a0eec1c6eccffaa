//! The parameter lists of a PTX module's `.entry` kernels, read off the text.
//!
//! The driver does not check a launch's arguments against the kernel (too few
//! arguments make it read garbage), so [`super::CudaDevice`] checks them here
//! with the same rules as the simulator: a pointer or `u64` goes to an 8-byte
//! integer parameter, `u32`/`i32` to a 4-byte integer, `f32` to `.f32`/`.b32`.
//! Kernels whose parameter list this scanner does not understand are launched
//! unchecked (`None`).

use crate::device::KernelArg;
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
        }
    }
}

/// Remove `//` and `/* */` comments (string literals do not occur in PTX).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    let mut start = 0;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'/' {
            out.push_str(&src[start..i]);
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            start = i;
        } else if b[i] == b'/' && b[i + 1] == b'*' {
            out.push_str(&src[start..i]);
            out.push(' ');
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i = (i + 2).min(b.len());
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&src[start.min(src.len())..]);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '%')
}

fn scalar(ty: &str) -> Option<ParamKind> {
    Some(match ty {
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

/// One declaration `.param [.ptr .global] [.align N] .TYPE name[[N]]`.
fn parse_param(decl: &str) -> Option<Param> {
    let mut toks = decl.split_whitespace().peekable();
    if toks.next()? != ".param" {
        return None;
    }
    let mut kind = None;
    let mut rest = vec![];
    while let Some(t) = toks.next() {
        match t {
            ".align" => {
                toks.next()?;
            }
            ".ptr" | ".global" | ".shared" | ".const" | ".local" => {}
            _ if t.starts_with('.') && kind.is_none() => kind = Some(scalar(&t[1..])?),
            _ => rest.push(t),
        }
    }
    let kind = kind?;
    let name_part: String = rest.concat();
    let (name, dims) = match name_part.find('[') {
        Some(i) => (&name_part[..i], Some(&name_part[i..])),
        None => (name_part.as_str(), None),
    };
    if name.is_empty() || !name.chars().all(is_ident) {
        return None;
    }
    let kind = match dims {
        None => kind,
        Some(d) => {
            let n: u32 = d.strip_prefix('[')?.strip_suffix(']')?.trim().parse().ok()?;
            let elem = Param { name: String::new(), kind }.size();
            ParamKind::Other(elem.checked_mul(n)?)
        }
    };
    Some(Param { name: name.to_string(), kind })
}

/// The parameters of every `.entry` in `ptx`, by kernel name; `None` for a
/// kernel whose list could not be read.
pub fn scan(ptx: &str) -> HashMap<String, Option<Vec<Param>>> {
    let text = strip_comments(ptx);
    let mut out = HashMap::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find(".entry") {
        let after = &rest[pos + ".entry".len()..];
        // `.entry` must be a whole token
        let prev_ok = pos == 0 || !is_ident(rest[..pos].chars().last().unwrap_or(' '));
        rest = after;
        if !prev_ok || !after.starts_with(|c: char| c.is_whitespace()) {
            continue;
        }
        let after = after.trim_start();
        let name_len = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
        let name = &after[..name_len];
        if name.is_empty() {
            continue;
        }
        let tail = after[name_len..].trim_start();
        let params = if let Some(body) = tail.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let list = &body[..end];
                    let decls: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                    let parsed: Option<Vec<Param>> = decls.iter().map(|d| parse_param(d)).collect();
                    parsed
                }
                None => None,
            }
        } else if tail.starts_with('{') || tail.starts_with('.') {
            Some(vec![]) // no parameter list: `.entry k {` or `.entry k .maxntid ...`
        } else {
            None
        };
        out.insert(name.to_string(), params);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevBuf;

    #[test]
    fn reads_generated_and_nvcc_style_lists() {
        let ptx = r#"
// .entry commented_out(.param .u64 x)
.version 8.0
.target sm_90a
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
.entry noparams { ret; }
.entry empty() { ret; }
"#;
        let m = scan(ptx);
        assert_eq!(m.len(), 4, "{m:?}");
        let g = m["gemm"].as_ref().unwrap();
        let kinds: Vec<ParamKind> = g.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, vec![ParamKind::Int64, ParamKind::Int32, ParamKind::F32, ParamKind::Int32]);
        assert_eq!(g[1].name, "gemm_param_m");
        let n = m["nvcc"].as_ref().unwrap();
        assert_eq!(n.iter().map(|p| p.kind).collect::<Vec<_>>(), vec![ParamKind::Int64, ParamKind::Other(16), ParamKind::Bits32]);
        assert_eq!(m["noparams"], Some(vec![]));
        assert_eq!(m["empty"], Some(vec![]));
    }

    #[test]
    fn unreadable_list_is_none() {
        let m = scan(".entry k(.param .weird x) { ret; }\n.entry j(.param .u64 a");
        assert_eq!(m["k"], None);
        assert_eq!(m["j"], None);
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
