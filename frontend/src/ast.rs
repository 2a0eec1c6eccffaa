//! The syntax tree of a .pgdsl program. Every node keeps its byte span.

use crate::diag::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `const NAME = expr;` (overridable with `--set NAME=VALUE`).
    Const { name: Ident, value: Expr, span: Span },
    /// `fn NAME(a, b = default) { ... }`.
    Fn(FnDef),
    /// A top-level statement, run in source order.
    Stmt(Stmt),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<(Ident, Option<Expr>)>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    /// The value of the block: a final expression without `;`.
    pub tail: Option<Box<Expr>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    Let(Ident, Expr),
    Assign(Ident, Expr),
    /// `for VAR in LO..HI { }` (`hi: Some`) or `for VAR in LIST { }`.
    For { var: Ident, lo: Expr, hi: Option<Expr>, body: Block },
    Output(Ident, Expr),
    Assert(Expr, Option<String>),
    Expr(Expr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "^",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

/// A segment of a dotted parameter/scope path: `blocks.{i}.attn`.
#[derive(Clone, Debug, PartialEq)]
pub enum PathSeg {
    Name(String),
    Int(u64),
    /// `{expr}`: an integer (or name) computed at compile time.
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub segs: Vec<(PathSeg, Span)>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// Attributes of a parameter declaration after its storage class.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Clip(Expr),
    Qat(Expr),
    Prune(Expr),
    Init(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Name(String),
    List(Vec<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call { callee: Ident, args: Vec<Arg> },
    /// `recv.name(args)`: `name(recv, args)`, except `push`/`pop` on a variable, which update it.
    Method { recv: Box<Expr>, name: Ident, args: Vec<Arg> },
    Index(Box<Expr>, Box<Expr>),
    If { cond: Box<Expr>, then: Block, els: Option<Box<Expr>> },
    Block(Block),
    Scope { path: Path, body: Block },
    Param { path: Path, shape: Vec<Expr>, storage: Option<Box<Expr>>, attrs: Vec<(Attr, Span)> },
    Input { name: Ident, shape: Vec<Expr>, dtype: Ident },
}
