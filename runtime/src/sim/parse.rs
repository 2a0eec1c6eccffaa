//! PTX text -> AST for the subset described in SUBSET.md.
//!
//! The input is untrusted: every failure is a [`ParseError`] with a 1-based
//! line and column, never a panic. Nesting depth of `{}` blocks is bounded.
#![allow(clippy::needless_range_loop, clippy::collapsible_if, clippy::collapsible_match, clippy::too_many_arguments)]

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub span: Span,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.span, self.msg)
    }
}

pub type PResult<T> = Result<T, ParseError>;

fn err<T>(span: Span, msg: impl Into<String>) -> PResult<T> {
    Err(ParseError { span, msg: msg.into() })
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// identifiers, registers (`%r1`), labels (`$L__BB0_1`)
    Ident(String),
    /// `.name` (directive, modifier, type), without the dot
    Dot(String),
    /// integer literal (bits; negative literals are handled by the parser)
    Int(u64),
    /// `0fXXXXXXXX`
    F32Bits(u32),
    /// `0dXXXXXXXXXXXXXXXX`
    F64Bits(u64),
    /// decimal floating literal
    Float(f64),
    /// `1.0` style version numbers are Float too; raw text kept for .version
    Punct(char),
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
    pub text: String,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$' || c == '%'
}
fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

pub fn lex(src: &str) -> PResult<Vec<Token>> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    macro_rules! adv {
        () => {{
            if chars[i] == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
            i += 1;
        }};
    }
    while i < chars.len() {
        let c = chars[i];
        let span = Span { line, col };
        if c.is_whitespace() {
            adv!();
            continue;
        }
        if c == '/' && i + 1 < chars.len() && chars[i + 1] == '/' {
            while i < chars.len() && chars[i] != '\n' {
                adv!();
            }
            continue;
        }
        if c == '/' && i + 1 < chars.len() && chars[i + 1] == '*' {
            adv!();
            adv!();
            loop {
                if i >= chars.len() {
                    return err(span, "unterminated /* comment");
                }
                if chars[i] == '*' && i + 1 < chars.len() && chars[i + 1] == '/' {
                    adv!();
                    adv!();
                    break;
                }
                adv!();
            }
            continue;
        }
        let start = i;
        if is_ident_start(c) {
            adv!();
            while i < chars.len() && is_ident_char(chars[i]) {
                adv!();
            }
            let text: String = chars[start..i].iter().collect();
            toks.push(Token { tok: Tok::Ident(text.clone()), span, text });
            continue;
        }
        // `.2d` (tensor copy dimensions) is a modifier too
        let dim_mod = i + 2 < chars.len() && chars[i + 1].is_ascii_digit() && chars[i + 2] == 'd' && !chars.get(i + 3).is_some_and(|&x| is_ident_char(x));
        if c == '.' && i + 1 < chars.len() && (chars[i + 1].is_ascii_alphabetic() || chars[i + 1] == '_' || dim_mod) {
            adv!();
            loop {
                while i < chars.len() && is_ident_char(chars[i]) {
                    adv!();
                }
                // `.shared::cta`, `.L1::evict_last`
                if i + 2 < chars.len() && chars[i] == ':' && chars[i + 1] == ':' && is_ident_char(chars[i + 2]) {
                    adv!();
                    adv!();
                    continue;
                }
                break;
            }
            let text: String = chars[start + 1..i].iter().collect();
            toks.push(Token { tok: Tok::Dot(text.clone()), span, text });
            continue;
        }
        if c.is_ascii_digit() {
            // hex float / hex int / decimal int / decimal float
            let next = chars.get(i + 1).copied().unwrap_or(' ');
            if c == '0' && matches!(next, 'f' | 'F' | 'd' | 'D' | 'x' | 'X') {
                adv!();
                adv!();
                let hs = i;
                while i < chars.len() && chars[i].is_ascii_hexdigit() {
                    adv!();
                }
                let hex: String = chars[hs..i].iter().collect();
                if i < chars.len() && (chars[i] == 'U' || chars[i] == 'u') && matches!(next, 'x' | 'X') {
                    adv!();
                }
                let text: String = chars[start..i].iter().collect();
                let tok = match next {
                    'f' | 'F' => {
                        if hex.len() != 8 {
                            return err(span, format!("hex float `{text}` needs 8 hex digits"));
                        }
                        Tok::F32Bits(u32::from_str_radix(&hex, 16).map_err(|_| ParseError { span, msg: format!("bad literal `{text}`") })?)
                    }
                    'd' | 'D' => {
                        if hex.len() != 16 {
                            return err(span, format!("hex double `{text}` needs 16 hex digits"));
                        }
                        Tok::F64Bits(u64::from_str_radix(&hex, 16).map_err(|_| ParseError { span, msg: format!("bad literal `{text}`") })?)
                    }
                    _ => {
                        if hex.is_empty() {
                            return err(span, format!("bad literal `{text}`"));
                        }
                        Tok::Int(u64::from_str_radix(&hex, 16).map_err(|_| ParseError { span, msg: format!("integer literal `{text}` out of range") })?)
                    }
                };
                if i < chars.len() && is_ident_char(chars[i]) {
                    return err(span, format!("bad literal `{text}{}`", chars[i]));
                }
                toks.push(Token { tok, span, text });
                continue;
            }
            while i < chars.len() && chars[i].is_ascii_digit() {
                adv!();
            }
            let mut is_float = false;
            if i < chars.len() && chars[i] == '.' && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
                is_float = true;
                adv!();
                while i < chars.len() && chars[i].is_ascii_digit() {
                    adv!();
                }
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let save = (i, line, col);
                adv!();
                if i < chars.len() && (chars[i] == '+' || chars[i] == '-') {
                    adv!();
                }
                if i < chars.len() && chars[i].is_ascii_digit() {
                    is_float = true;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        adv!();
                    }
                } else {
                    (i, line, col) = save;
                }
            }
            let text: String = chars[start..i].iter().collect();
            let tok = if is_float {
                Tok::Float(text.parse::<f64>().map_err(|_| ParseError { span, msg: format!("bad float literal `{text}`") })?)
            } else {
                if i < chars.len() && (chars[i] == 'U' || chars[i] == 'u') {
                    adv!();
                }
                Tok::Int(text.parse::<u64>().map_err(|_| ParseError { span, msg: format!("integer literal `{text}` out of range") })?)
            };
            if i < chars.len() && is_ident_char(chars[i]) {
                return err(span, format!("bad literal starting `{text}`"));
            }
            toks.push(Token { tok, span, text });
            continue;
        }
        if ",;:{}[]()+-!@|<>=".contains(c) {
            adv!();
            toks.push(Token { tok: Tok::Punct(c), span, text: c.to_string() });
            continue;
        }
        return err(span, format!("unexpected character `{}`", c.escape_debug()));
    }
    toks.push(Token { tok: Tok::Eof, span: Span { line, col }, text: String::new() });
    Ok(toks)
}

// ---------------------------------------------------------------- AST

#[derive(Debug, Clone, PartialEq)]
pub enum Imm {
    Int(i128),
    F32Bits(u32),
    F64Bits(u64),
    Float(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AddrBase {
    None,
    /// a register or a symbol (variable / param name)
    Name(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `%r1`, `%tid.x`, `name`, a label: resolved by the decoder
    Name(String, Span),
    /// `!%p` (only where a predicate operand is allowed)
    NotName(String, Span),
    Imm(Imm, Span),
    Vector(Vec<Operand>, Span),
    Addr { base: AddrBase, offset: i64, span: Span },
    /// `[tmap, {c0, c1, ..}]`: a tensor map and coordinates (`cp.async.bulk.tensor`)
    TensorAddr { map: String, coords: Vec<Operand>, span: Span },
    /// `d|p`
    Pair(Box<Operand>, Box<Operand>, Span),
    /// `_`
    Sink(Span),
}

impl Operand {
    pub fn span(&self) -> Span {
        match self {
            Operand::Name(_, s) | Operand::NotName(_, s) | Operand::Imm(_, s) | Operand::Vector(_, s) | Operand::Pair(_, _, s) | Operand::Sink(s) => *s,
            Operand::Addr { span, .. } | Operand::TensorAddr { span, .. } => *span,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instr {
    pub guard: Option<(String, bool)>, // (pred register, negated)
    pub op: String,
    pub mods: Vec<String>,
    pub args: Vec<Operand>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateSpace {
    Reg,
    Shared,
    Global,
    Local,
    Param,
    Const,
}

/// A variable declaration (`.reg`, `.shared`, `.local`, `.global`, `.param`).
#[derive(Debug, Clone)]
pub struct VarDecl {
    pub space: StateSpace,
    pub extern_: bool,
    pub align: Option<u32>,
    pub ty: String,
    pub name: String,
    /// `%r<10>` declares `%r0..%r9`
    pub range: Option<u32>,
    /// array dimensions (`[]` = None entry for extern / unsized)
    pub dims: Vec<Option<u64>>,
    pub init: Vec<Imm>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum Stmt {
    Label(String, Span),
    Instr(Instr),
    Decl(VarDecl),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub params: Vec<VarDecl>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Debug, Clone, Default)]
pub struct Module {
    pub version: Option<String>,
    pub target: Vec<String>,
    pub address_size: Option<u32>,
    pub globals: Vec<VarDecl>,
    pub entries: Vec<Entry>,
}

// ---------------------------------------------------------------- parser

struct P {
    toks: Vec<Token>,
    pos: usize,
}

const MAX_DEPTH: usize = 64;

impl P {
    fn peek(&self) -> &Token {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }
    fn peek_at(&self, k: usize) -> &Token {
        &self.toks[(self.pos + k).min(self.toks.len() - 1)]
    }
    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn is_punct(&self, c: char) -> bool {
        self.peek().tok == Tok::Punct(c)
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.next();
            true
        } else {
            false
        }
    }
    fn expect_punct(&mut self, c: char) -> PResult<Span> {
        let t = self.next();
        if t.tok == Tok::Punct(c) {
            Ok(t.span)
        } else {
            err(t.span, format!("expected `{c}`, found {}", describe(&t)))
        }
    }
    fn expect_ident(&mut self, what: &str) -> PResult<(String, Span)> {
        let t = self.next();
        match t.tok {
            Tok::Ident(s) => Ok((s, t.span)),
            _ => err(t.span, format!("expected {what}, found {}", describe(&t))),
        }
    }
    fn expect_int(&mut self, what: &str) -> PResult<u64> {
        let t = self.next();
        match t.tok {
            Tok::Int(v) => Ok(v),
            _ => err(t.span, format!("expected {what}, found {}", describe(&t))),
        }
    }
    fn peek_dot(&self) -> Option<&str> {
        match &self.peek().tok {
            Tok::Dot(s) => Some(s.as_str()),
            _ => None,
        }
    }
    /// skip to just past the next `;` (for directives we ignore)
    fn skip_statement(&mut self) -> PResult<()> {
        loop {
            let t = self.next();
            match t.tok {
                Tok::Punct(';') => return Ok(()),
                Tok::Eof => return err(t.span, "unexpected end of input (missing `;`)"),
                _ => {}
            }
        }
    }
}

fn describe(t: &Token) -> String {
    match &t.tok {
        Tok::Eof => "end of input".into(),
        Tok::Dot(s) => format!("`.{s}`"),
        _ => format!("`{}`", t.text),
    }
}

const SPACES: &[(&str, StateSpace)] = &[
    ("reg", StateSpace::Reg),
    ("shared", StateSpace::Shared),
    ("global", StateSpace::Global),
    ("local", StateSpace::Local),
    ("param", StateSpace::Param),
    ("const", StateSpace::Const),
];

fn space_of(s: &str) -> Option<StateSpace> {
    SPACES.iter().find(|(n, _)| *n == s).map(|(_, sp)| *sp)
}

pub fn parse_module(src: &str) -> PResult<Module> {
    let toks = lex(src)?;
    let mut p = P { toks, pos: 0 };
    let mut m = Module::default();
    loop {
        let t = p.peek().clone();
        match &t.tok {
            Tok::Eof => break,
            Tok::Dot(d) => match d.as_str() {
                "version" => {
                    p.next();
                    let v = p.next();
                    match v.tok {
                        Tok::Float(_) | Tok::Int(_) => m.version = Some(v.text),
                        _ => return err(v.span, "expected a version number after .version"),
                    }
                }
                "target" => {
                    p.next();
                    loop {
                        let (n, _) = p.expect_ident("a target name")?;
                        m.target.push(n);
                        if !p.eat_punct(',') {
                            break;
                        }
                    }
                }
                "address_size" => {
                    p.next();
                    let v = p.expect_int("an address size")?;
                    if v != 64 {
                        return err(t.span, "only .address_size 64 is supported");
                    }
                    m.address_size = Some(64);
                }
                "file" | "section" | "loc" | "pragma" => {
                    p.next();
                    p.skip_statement()?;
                }
                "visible" | "weak" | "extern" | "entry" | "func" | "global" | "shared" | "const" => {
                    // linkage prefixes
                    let mut extern_ = false;
                    while let Some(d) = p.peek_dot() {
                        match d {
                            "visible" | "weak" => {
                                p.next();
                            }
                            "extern" => {
                                extern_ = true;
                                p.next();
                            }
                            _ => break,
                        }
                    }
                    let t2 = p.peek().clone();
                    match p.peek_dot() {
                        Some("entry") => {
                            p.next();
                            m.entries.push(parse_entry(&mut p, t2.span)?);
                        }
                        Some("func") => return err(t2.span, "unsupported: .func (device functions / calls) is not in the simulator's subset"),
                        Some(s) if space_of(s).is_some() => {
                            let v = parse_var_decl(&mut p, extern_)?;
                            m.globals.extend(v);
                        }
                        _ => return err(t2.span, format!("expected .entry or a variable declaration, found {}", describe(&t2))),
                    }
                }
                _ => return err(t.span, format!("unsupported module directive `.{d}`")),
            },
            _ => return err(t.span, format!("expected a directive, found {}", describe(&t))),
        }
    }
    Ok(m)
}

fn parse_entry(p: &mut P, span: Span) -> PResult<Entry> {
    let (name, _) = p.expect_ident("a kernel name")?;
    let mut params = Vec::new();
    if p.eat_punct('(') {
        if !p.eat_punct(')') {
            loop {
                let t = p.peek().clone();
                if p.peek_dot() != Some("param") {
                    return err(t.span, format!("expected .param, found {}", describe(&t)));
                }
                let mut v = parse_var_decl_inner(p, false, false)?;
                if v.len() != 1 {
                    return err(t.span, "a kernel parameter declares one name");
                }
                params.push(v.pop().unwrap_or_else(|| unreachable!()));
                if p.eat_punct(')') {
                    break;
                }
                p.expect_punct(',')?;
            }
        }
    }
    // performance directives
    while let Some(d) = p.peek_dot() {
        match d {
            "maxntid" | "reqntid" | "minnctapersm" | "maxnreg" | "maxnctapersm" | "noreturn" | "pragma" | "explicitcluster" | "reqnctapercluster" | "maxclusterrank" => {
                p.next();
                while matches!(p.peek().tok, Tok::Int(_)) || p.is_punct(',') || matches!(p.peek().tok, Tok::Ident(_)) {
                    if matches!(p.peek().tok, Tok::Ident(_)) && p.peek_at(1).tok != Tok::Punct(',') && p.peek_at(1).tok != Tok::Punct(';') {
                        break;
                    }
                    p.next();
                }
                p.eat_punct(';');
            }
            _ => {
                let t = p.peek().clone();
                return err(t.span, format!("unsupported kernel directive `.{d}`"));
            }
        }
    }
    let t = p.peek().clone();
    if !p.eat_punct('{') {
        return err(t.span, format!("expected `{{` to start the body of `{name}`, found {}", describe(&t)));
    }
    let mut body = Vec::new();
    parse_block(p, &mut body, 1)?;
    Ok(Entry { name, params, body, span })
}

/// parse statements until the matching `}` (consumed)
fn parse_block(p: &mut P, body: &mut Vec<Stmt>, depth: usize) -> PResult<()> {
    if depth > MAX_DEPTH {
        return err(p.peek().span, "blocks nested too deeply");
    }
    loop {
        let t = p.peek().clone();
        match &t.tok {
            Tok::Eof => return err(t.span, "unexpected end of input inside a kernel body (missing `}`)"),
            Tok::Punct('}') => {
                p.next();
                return Ok(());
            }
            Tok::Punct('{') => {
                p.next();
                parse_block(p, body, depth + 1)?;
            }
            Tok::Dot(d) => match d.as_str() {
                "loc" | "pragma" | "file" => {
                    p.next();
                    p.skip_statement()?;
                }
                "extern" => {
                    p.next();
                    let v = parse_var_decl(p, true)?;
                    body.extend(v.into_iter().map(Stmt::Decl));
                }
                s if space_of(s).is_some() => {
                    let v = parse_var_decl(p, false)?;
                    body.extend(v.into_iter().map(Stmt::Decl));
                }
                _ => return err(t.span, format!("unsupported directive `.{d}` in a kernel body")),
            },
            Tok::Ident(name) if p.peek_at(1).tok == Tok::Punct(':') => {
                let name = name.clone();
                p.next();
                p.next();
                body.push(Stmt::Label(name, t.span));
            }
            Tok::Ident(_) | Tok::Punct('@') => {
                body.push(Stmt::Instr(parse_instr(p)?));
            }
            _ => return err(t.span, format!("expected an instruction, label or declaration, found {}", describe(&t))),
        }
    }
}

fn parse_var_decl(p: &mut P, extern_: bool) -> PResult<Vec<VarDecl>> {
    let v = parse_var_decl_inner(p, extern_, true)?;
    p.expect_punct(';')?;
    Ok(v)
}

/// `.space [.align N] .type name[<n>|[dims]] [= init] {, name...}` (no `;`)
fn parse_var_decl_inner(p: &mut P, extern_: bool, multi: bool) -> PResult<Vec<VarDecl>> {
    let t = p.next();
    let space = match &t.tok {
        Tok::Dot(s) => space_of(s).ok_or(ParseError { span: t.span, msg: format!("expected a state space, found .{s}") })?,
        _ => return err(t.span, format!("expected a state space, found {}", describe(&t))),
    };
    let mut align = None;
    let mut ty = None;
    while let Some(d) = p.peek_dot() {
        let d = d.to_string();
        let sp = p.next().span;
        match d.as_str() {
            "align" => {
                let a = p.expect_int("an alignment")?;
                if a == 0 || !a.is_power_of_two() || a > 4096 {
                    return err(sp, format!("bad alignment {a}"));
                }
                align = Some(a as u32);
            }
            "ptr" | "global" | "shared" | "local" | "const" => {} // .param .u64 .ptr .global .align 4 p
            "v2" | "v4" => return err(sp, "vector variables are not supported"),
            _ => {
                if ty.is_some() {
                    return err(sp, format!("unexpected `.{d}` in a declaration"));
                }
                ty = Some(d);
            }
        }
    }
    let Some(ty) = ty else {
        return err(t.span, "declaration without a type");
    };
    let mut out = Vec::new();
    loop {
        let (name, nspan) = p.expect_ident("a variable name")?;
        let mut range = None;
        let mut dims = Vec::new();
        if p.is_punct('<') {
            p.next();
            let n = p.expect_int("a register count")?;
            if n > 1 << 20 {
                return err(nspan, "register range too large");
            }
            p.expect_punct('>')?;
            range = Some(n as u32);
        }
        while p.eat_punct('[') {
            if p.eat_punct(']') {
                dims.push(None);
            } else {
                let n = p.expect_int("an array size")?;
                p.expect_punct(']')?;
                dims.push(Some(n));
            }
        }
        let mut init = Vec::new();
        if p.eat_punct('=') {
            if p.eat_punct('{') {
                loop {
                    init.push(parse_imm(p)?.0);
                    if p.eat_punct('}') {
                        break;
                    }
                    p.expect_punct(',')?;
                }
            } else {
                init.push(parse_imm(p)?.0);
            }
        }
        out.push(VarDecl { space, extern_, align, ty: ty.clone(), name, range, dims, init, span: nspan });
        if !multi || !p.eat_punct(',') {
            break;
        }
    }
    Ok(out)
}

fn parse_imm(p: &mut P) -> PResult<(Imm, Span)> {
    let t = p.next();
    let neg = t.tok == Tok::Punct('-');
    let t = if neg { p.next() } else { t };
    let v = match t.tok {
        Tok::Int(v) => Imm::Int(if neg { -(v as i128) } else { v as i128 }),
        Tok::F32Bits(b) => Imm::F32Bits(if neg { b ^ 0x8000_0000 } else { b }),
        Tok::F64Bits(b) => Imm::F64Bits(if neg { b ^ (1 << 63) } else { b }),
        Tok::Float(f) => Imm::Float(if neg { -f } else { f }),
        _ => return err(t.span, format!("expected a constant, found {}", describe(&t))),
    };
    Ok((v, t.span))
}

fn parse_instr(p: &mut P) -> PResult<Instr> {
    let start = p.peek().span;
    let mut guard = None;
    if p.eat_punct('@') {
        let neg = p.eat_punct('!');
        let (n, _) = p.expect_ident("a predicate register")?;
        guard = Some((n, neg));
    }
    let (op, span) = p.expect_ident("an opcode")?;
    let mut mods = Vec::new();
    while let Some(d) = p.peek_dot() {
        mods.push(d.to_string());
        p.next();
    }
    let mut args = Vec::new();
    if !p.is_punct(';') {
        loop {
            args.push(parse_operand(p, true)?);
            if !p.eat_punct(',') {
                break;
            }
        }
    }
    let t = p.next();
    if t.tok != Tok::Punct(';') {
        return err(t.span, format!("expected `,` or `;` after an operand of `{op}`, found {}", describe(&t)));
    }
    let _ = start;
    Ok(Instr { guard, op, mods, args, span })
}

/// A name operand; `%tid.x` style special registers keep their component.
fn parse_name(p: &mut P) -> PResult<(String, Span)> {
    let (mut n, span) = p.expect_ident("a register or name")?;
    if n.starts_with('%') {
        if let Some(c @ ("x" | "y" | "z")) = p.peek_dot() {
            n.push('.');
            n.push_str(c);
            p.next();
        }
    }
    Ok((n, span))
}

fn parse_operand(p: &mut P, allow_pair: bool) -> PResult<Operand> {
    let t = p.peek().clone();
    let op = match &t.tok {
        Tok::Punct('{') => {
            p.next();
            let mut v = Vec::new();
            loop {
                v.push(parse_operand(p, false)?);
                if p.eat_punct('}') {
                    break;
                }
                p.expect_punct(',')?;
            }
            // wgmma.m64n256 has 128 accumulator registers
            if v.len() > 128 {
                return err(t.span, "vector operand too long");
            }
            Operand::Vector(v, t.span)
        }
        Tok::Punct('[') => {
            p.next();
            let mut base = AddrBase::None;
            let mut offset: i128 = 0;
            let t2 = p.peek().clone();
            match &t2.tok {
                Tok::Ident(_) => {
                    let (n, _) = parse_name(p)?;
                    if p.eat_punct(',') {
                        let coords = match parse_operand(p, false)? {
                            Operand::Vector(v, _) => v,
                            o => return err(o.span(), "tensor coordinates must be a vector `{x, y, ..}`"),
                        };
                        p.expect_punct(']')?;
                        return Ok(Operand::TensorAddr { map: n, coords, span: t.span });
                    }
                    base = AddrBase::Name(n);
                    if p.eat_punct('+') || p.is_punct('-') {
                        let (imm, sp) = parse_imm(p)?;
                        match imm {
                            Imm::Int(v) => offset = v,
                            _ => return err(sp, "address offset must be an integer"),
                        }
                    }
                }
                _ => {
                    let (imm, sp) = parse_imm(p)?;
                    match imm {
                        Imm::Int(v) => offset = v,
                        _ => return err(sp, "address must be an integer"),
                    }
                }
            }
            p.expect_punct(']')?;
            if offset < i64::MIN as i128 || offset > u64::MAX as i128 {
                return err(t.span, "address offset out of range");
            }
            Operand::Addr { base, offset: offset as i64, span: t.span }
        }
        Tok::Punct('!') => {
            p.next();
            let (n, sp) = parse_name(p)?;
            Operand::NotName(n, sp)
        }
        Tok::Ident(s) if s == "_" => {
            p.next();
            Operand::Sink(t.span)
        }
        Tok::Ident(_) => {
            let (n, sp) = parse_name(p)?;
            Operand::Name(n, sp)
        }
        Tok::Punct('-') | Tok::Int(_) | Tok::F32Bits(_) | Tok::F64Bits(_) | Tok::Float(_) => {
            let (imm, sp) = parse_imm(p)?;
            Operand::Imm(imm, sp)
        }
        _ => return err(t.span, format!("expected an operand, found {}", describe(&t))),
    };
    if allow_pair && p.is_punct('|') {
        p.next();
        let second = parse_operand(p, false)?;
        return Ok(Operand::Pair(Box::new(op), Box::new(second), t.span));
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_small_kernel() {
        let m = parse_module(
            ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry k(.param .u64 a, .param .u32 n)\n.maxntid 128, 1, 1\n{\n .reg .b32 %r<4>;\n .reg .pred %p;\n .shared .align 16 .b8 sm[256];\n mov.u32 %r1, %tid.x;\n@!%p bra $L1;\n ld.global.v4.f32 {%r0,%r1,%r2,%r3}, [%rd1+-16];\n$L1:\n mov.f32 %r2, 0f3F800000;\n shfl.sync.bfly.b32 %r1|%p, %r2, 1, 31, -1;\n ret;\n}\n",
        )
        .unwrap();
        assert_eq!(m.entries.len(), 1);
        let e = &m.entries[0];
        assert_eq!(e.params.len(), 2);
        assert!(matches!(&e.body[3], Stmt::Instr(i) if i.args[1] == Operand::Name("%tid.x".into(), Span { line: 10, col: 15 })));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse_module(".version 8.0\n.entry k()\n{\n add.u32 %r1, %r2 %r3;\n}").unwrap_err();
        assert_eq!(e.span.line, 4);
        let e = parse_module(".entry k() { mov.u32 %r1, 0fZZ; }").unwrap_err();
        assert_eq!(e.span.line, 1);
        assert!(parse_module(".entry k() { ").is_err());
        assert!(parse_module("{{{{").is_err());
    }

    #[test]
    fn never_panics_on_garbage() {
        let samples = [
            "", ".", "..", "@", ".entry", ".entry k(", ".entry k(.param", ".entry k() {@!", "[", "0x", "0f", "0d1", "1e", "\u{0}",
            ".entry k() { ld.global.f32 %f1, [%rd1+; }", ".entry k() { x: y: }", ".entry k() { .reg .b32 %r<99999999999>; }",
        ];
        for s in samples {
            let _ = parse_module(s);
        }
        // every prefix of a real kernel
        let k = ".version 8.0 .target sm_90a .address_size 64 .visible .entry k(.param .u64 a) { .reg .b32 %r<3>; .shared .align 4 .b8 s[64]; @%p bra L; L: st.shared.v2.u32 [s+8], {%r1, %r2}; ret; }";
        for i in 0..k.len() {
            let _ = parse_module(&k[..i]);
        }
    }
}
