//! Hand-written recursive-descent parser with statement-level error recovery.
//! The grammar is in frontend/LANGUAGE.md.

use crate::ast::*;
use crate::diag::{Diagnostic, Span};
use crate::lexer::{lex, Tok, Token};

/// How deeply expressions and blocks may nest before the parser gives up.
pub const MAX_NESTING: usize = 64;
/// Parsing stops after this many errors.
const MAX_ERRORS: usize = 20;

pub fn parse(src: &str) -> Result<Program, Vec<Diagnostic>> {
    let (toks, lex_errs) = lex(src);
    let mut p = Parser { src, toks, pos: 0, errs: lex_errs, depth: 0 };
    let prog = p.program();
    if p.errs.is_empty() {
        Ok(prog)
    } else {
        Err(p.errs)
    }
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    errs: Vec<Diagnostic>,
    depth: usize,
}

type PResult<T> = Result<T, ()>;

fn is_keyword(t: Tok) -> bool {
    use Tok::*;
    matches!(t, Const | Fn | Let | For | In | If | Else | Param | Input | Output | Scope | Assert | True | False | Qat | Prune | Init | Clip)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Tok {
        self.toks[self.pos].tok
    }
    fn peek_at(&self, n: usize) -> Tok {
        self.toks.get(self.pos + n).map(|t| t.tok).unwrap_or(Tok::Eof)
    }
    fn span(&self) -> Span {
        self.toks[self.pos].span
    }
    fn prev_span(&self) -> Span {
        if self.pos == 0 {
            Span::new(0, 0)
        } else {
            self.toks[self.pos - 1].span
        }
    }
    fn text(&self, t: &Token) -> &'a str {
        &self.src[t.span.start..t.span.end]
    }
    fn bump(&mut self) -> Token {
        let t = self.toks[self.pos];
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }
    fn eat(&mut self, t: Tok) -> bool {
        if self.peek() == t {
            self.bump();
            true
        } else {
            false
        }
    }
    fn error<T>(&mut self, d: Diagnostic) -> PResult<T> {
        if self.errs.len() < MAX_ERRORS {
            self.errs.push(d);
        }
        Err(())
    }
    fn unexpected<T>(&mut self, what: &str) -> PResult<T> {
        let t = self.toks[self.pos];
        let found = match t.tok {
            Tok::Ident => format!("`{}`", self.text(&t)),
            Tok::Int | Tok::Float => format!("`{}`", self.text(&t)),
            other => other.describe().to_string(),
        };
        self.error(Diagnostic::error(format!("expected {what}, found {found}"), t.span).label(format!("expected {what}")))
    }
    fn expect(&mut self, t: Tok, what: &str) -> PResult<Token> {
        if self.peek() == t {
            Ok(self.bump())
        } else if t == Tok::Semi && self.pos > 0 {
            // Point just after the previous token, where the `;` belongs.
            let end = self.prev_span().end;
            let tk = self.toks[self.pos];
            let found = if matches!(tk.tok, Tok::Ident | Tok::Int | Tok::Float) {
                format!("`{}`", self.text(&tk))
            } else {
                tk.tok.describe().to_string()
            };
            self.error(Diagnostic::error(format!("expected `;`, found {found}"), Span::new(end, end)).label("add `;` here"))
        } else {
            self.unexpected(what)
        }
    }
    fn ident(&mut self, what: &str) -> PResult<Ident> {
        if self.peek() == Tok::Ident {
            let t = self.bump();
            Ok(Ident { name: self.text(&t).to_string(), span: t.span })
        } else if is_keyword(self.peek()) {
            let t = self.toks[self.pos];
            let kw = self.text(&t).to_string();
            self.error(Diagnostic::error(format!("expected {what}, found keyword `{kw}`"), t.span).label("a reserved word"))
        } else {
            self.unexpected(what)
        }
    }
    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            let sp = self.span();
            return self.error(Diagnostic::error(format!("nesting deeper than {MAX_NESTING} levels"), sp).label("too deep"));
        }
        Ok(())
    }
    fn leave(&mut self) {
        self.depth -= 1;
    }
    fn too_many_errors(&self) -> bool {
        self.errs.len() >= MAX_ERRORS
    }

    /// Skip to a plausible statement start after an error.
    fn recover(&mut self) {
        let mut depth = 0usize;
        let start = self.pos;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::LBrace => depth += 1,
                Tok::RBrace => {
                    if depth == 0 {
                        // Do not get stuck in front of a stray `}` at top level.
                        if self.pos == start {
                            self.bump();
                        }
                        return;
                    }
                    depth -= 1;
                }
                Tok::Semi if depth == 0 => {
                    self.bump();
                    return;
                }
                Tok::Const | Tok::Fn | Tok::Let | Tok::For | Tok::Output | Tok::Assert if depth == 0 && self.pos != start => return,
                _ => {}
            }
            self.bump();
        }
    }

    fn program(&mut self) -> Program {
        let mut items = Vec::new();
        while self.peek() != Tok::Eof && !self.too_many_errors() {
            let before = self.pos;
            match self.item() {
                Ok(it) => items.push(it),
                Err(()) => {
                    self.recover();
                    if self.pos == before {
                        self.bump();
                    }
                }
            }
        }
        Program { items }
    }

    fn item(&mut self) -> PResult<Item> {
        let start = self.span();
        match self.peek() {
            Tok::Const => {
                self.bump();
                let name = self.ident("a constant name")?;
                self.expect(Tok::Assign, "`=`")?;
                let value = self.expr()?;
                self.expect(Tok::Semi, "`;`")?;
                Ok(Item::Const { name, value, span: start.to(self.prev_span()) })
            }
            Tok::Fn => {
                self.bump();
                let name = self.ident("a function name")?;
                self.expect(Tok::LParen, "`(`")?;
                let mut params = Vec::new();
                while self.peek() != Tok::RParen {
                    let p = self.ident("a parameter name")?;
                    let default = if self.eat(Tok::Assign) { Some(self.expr()?) } else { None };
                    params.push((p, default));
                    if !self.eat(Tok::Comma) {
                        break;
                    }
                }
                self.expect(Tok::RParen, "`)` or `,`")?;
                let body = self.block()?;
                Ok(Item::Fn(FnDef { name, params, span: start.to(self.prev_span()), body }))
            }
            _ => {
                let (s, tail) = self.stmt()?;
                if let Some(e) = tail {
                    if matches!(e.kind, ExprKind::If { .. } | ExprKind::Block(_) | ExprKind::Scope { .. }) {
                        return Ok(Item::Stmt(Stmt { span: e.span, kind: StmtKind::Expr(e) }));
                    }
                    return self.error(
                        Diagnostic::error("expected `;` after this expression", e.span).label("add `;` here"),
                    );
                }
                Ok(Item::Stmt(s))
            }
        }
    }

    /// A statement, or (second) an expression without `;` that may be a block's tail.
    fn stmt(&mut self) -> PResult<(Stmt, Option<Expr>)> {
        let start = self.span();
        let kind = match self.peek() {
            Tok::Let => {
                self.bump();
                let name = self.ident("a variable name")?;
                self.expect(Tok::Assign, "`=`")?;
                let value = self.expr()?;
                self.expect(Tok::Semi, "`;`")?;
                StmtKind::Let(name, value)
            }
            Tok::Output => {
                self.bump();
                let name = self.ident("an output name")?;
                self.expect(Tok::Assign, "`=`")?;
                let value = self.expr()?;
                self.expect(Tok::Semi, "`;`")?;
                StmtKind::Output(name, value)
            }
            Tok::Assert => {
                self.bump();
                let cond = self.expr()?;
                let msg = if self.eat(Tok::Comma) {
                    let t = self.expect(Tok::Str, "a message string")?;
                    Some(unescape(self.text(&t)))
                } else {
                    None
                };
                self.expect(Tok::Semi, "`;`")?;
                StmtKind::Assert(cond, msg)
            }
            Tok::For => {
                self.bump();
                let var = self.ident("a loop variable")?;
                self.expect(Tok::In, "`in`")?;
                let lo = self.expr()?;
                let hi = if self.eat(Tok::DotDot) { Some(self.expr()?) } else { None };
                let body = self.block()?;
                StmtKind::For { var, lo, hi, body }
            }
            Tok::Ident if self.peek_at(1) == Tok::Assign => {
                let name = self.ident("a name")?;
                self.bump();
                let value = self.expr()?;
                self.expect(Tok::Semi, "`;`")?;
                StmtKind::Assign(name, value)
            }
            Tok::Const | Tok::Fn => {
                let sp = self.span();
                return self.error(
                    Diagnostic::error("`const` and `fn` may only appear at the top level", sp).label("not allowed inside a block"),
                );
            }
            _ => {
                let e = self.expr()?;
                if self.eat(Tok::Semi) {
                    StmtKind::Expr(e)
                } else if matches!(self.peek(), Tok::RBrace | Tok::Eof) {
                    let sp = e.span;
                    return Ok((Stmt { kind: StmtKind::Expr(Expr { kind: ExprKind::Bool(false), span: sp }), span: sp }, Some(e)));
                } else if matches!(e.kind, ExprKind::If { .. } | ExprKind::Block(_) | ExprKind::Scope { .. }) {
                    StmtKind::Expr(e)
                } else {
                    let sp = self.prev_span();
                    let sp = Span::new(sp.end, sp.end);
                    let t = self.toks[self.pos];
                    let found = if t.tok == Tok::Ident { format!("`{}`", self.text(&t)) } else { t.tok.describe().to_string() };
                    return self.error(
                        Diagnostic::error(format!("expected `;` after expression, found {found}"), sp).label("add `;` here"),
                    );
                }
            }
        };
        Ok((Stmt { kind, span: start.to(self.prev_span()) }, None))
    }

    fn block(&mut self) -> PResult<Block> {
        let open = self.expect(Tok::LBrace, "`{`")?;
        self.enter()?;
        let mut stmts = Vec::new();
        let mut tail = None;
        let mut failed = false;
        loop {
            match self.peek() {
                Tok::RBrace => break,
                Tok::Eof => {
                    self.leave();
                    return self.error(
                        Diagnostic::error("unclosed `{`", open.span).label("this block is never closed"),
                    );
                }
                _ => {}
            }
            if self.too_many_errors() {
                self.leave();
                return Err(());
            }
            if tail.is_some() {
                // A tail expression was followed by more statements: parse error at that point.
                let sp = self.span();
                let _ = self.error::<()>(Diagnostic::error("expected `;` or `}` after expression", sp).label("unexpected here"));
                failed = true;
                self.recover();
                tail = None;
                continue;
            }
            let before = self.pos;
            match self.stmt() {
                Ok((_, Some(e))) => tail = Some(Box::new(e)),
                Ok((s, None)) => stmts.push(s),
                Err(()) => {
                    failed = true;
                    self.recover();
                    if self.pos == before {
                        self.bump();
                    }
                }
            }
        }
        let close = self.bump();
        self.leave();
        if failed {
            return Err(());
        }
        Ok(Block { stmts, tail, span: open.span.to(close.span) })
    }

    pub fn expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let r = self.or_expr();
        self.leave();
        r
    }

    fn bin(op: BinOp, l: Expr, r: Expr) -> Expr {
        let span = l.span.to(r.span);
        Expr { kind: ExprKind::Binary(op, Box::new(l), Box::new(r)), span }
    }

    /// A left-associative level: `next (op next)*` for the operators
    /// `op_of` gives this level.
    fn left_assoc(&mut self, next: fn(&mut Self) -> PResult<Expr>, op_of: fn(Tok) -> Option<BinOp>) -> PResult<Expr> {
        let mut l = next(self)?;
        while let Some(op) = op_of(self.peek()) {
            self.bump();
            let r = next(self)?;
            l = Self::bin(op, l, r);
        }
        Ok(l)
    }
    fn or_expr(&mut self) -> PResult<Expr> {
        self.left_assoc(Self::and_expr, |t| (t == Tok::OrOr).then_some(BinOp::Or))
    }
    fn and_expr(&mut self) -> PResult<Expr> {
        self.left_assoc(Self::cmp_expr, |t| (t == Tok::AndAnd).then_some(BinOp::And))
    }
    fn cmp_expr(&mut self) -> PResult<Expr> {
        let l = self.add_expr()?;
        let op = match self.peek() {
            Tok::EqEq => BinOp::Eq,
            Tok::NotEq => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            _ => return Ok(l),
        };
        self.bump();
        let r = self.add_expr()?;
        if matches!(self.peek(), Tok::EqEq | Tok::NotEq | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge) {
            let sp = self.span();
            return self.error(
                Diagnostic::error("comparisons cannot be chained", sp).label("use `&&` to combine two comparisons"),
            );
        }
        Ok(Self::bin(op, l, r))
    }
    fn add_expr(&mut self) -> PResult<Expr> {
        self.left_assoc(Self::mul_expr, |t| match t {
            Tok::Plus => Some(BinOp::Add),
            Tok::Minus => Some(BinOp::Sub),
            _ => None,
        })
    }
    fn mul_expr(&mut self) -> PResult<Expr> {
        self.left_assoc(Self::unary, |t| match t {
            Tok::Star => Some(BinOp::Mul),
            Tok::Slash => Some(BinOp::Div),
            Tok::Percent => Some(BinOp::Rem),
            _ => None,
        })
    }
    fn unary(&mut self) -> PResult<Expr> {
        let op = match self.peek() {
            Tok::Minus => UnOp::Neg,
            Tok::Bang => UnOp::Not,
            _ => return self.pow(),
        };
        let start = self.bump().span;
        self.enter()?;
        let e = self.unary();
        self.leave();
        let e = e?;
        let span = start.to(e.span);
        Ok(Expr { kind: ExprKind::Unary(op, Box::new(e)), span })
    }
    fn pow(&mut self) -> PResult<Expr> {
        let base = self.postfix()?;
        if self.eat(Tok::Caret) {
            self.enter()?;
            let e = self.unary();
            self.leave();
            return Ok(Self::bin(BinOp::Pow, base, e?));
        }
        Ok(base)
    }

    fn args(&mut self) -> PResult<Vec<Arg>> {
        // after `(`
        let mut args = Vec::new();
        while self.peek() != Tok::RParen {
            let name = if self.peek() == Tok::Ident && self.peek_at(1) == Tok::Assign {
                let n = self.ident("an argument name")?;
                self.bump();
                Some(n)
            } else {
                None
            };
            let value = self.expr()?;
            args.push(Arg { name, value });
            if !self.eat(Tok::Comma) {
                break;
            }
        }
        self.expect(Tok::RParen, "`)` or `,`")?;
        Ok(args)
    }

    fn postfix(&mut self) -> PResult<Expr> {
        let mut e = self.primary()?;
        loop {
            match self.peek() {
                Tok::LParen => {
                    let ExprKind::Name(n) = &e.kind else {
                        let sp = self.span();
                        return self.error(
                            Diagnostic::error("only named functions can be called", e.span.to(sp)).label("not a function name"),
                        );
                    };
                    let callee = Ident { name: n.clone(), span: e.span };
                    self.bump();
                    let args = self.args()?;
                    e = Expr { kind: ExprKind::Call { callee, args }, span: e.span.to(self.prev_span()) };
                }
                Tok::LBracket => {
                    self.bump();
                    let idx = self.expr()?;
                    self.expect(Tok::RBracket, "`]`")?;
                    let span = e.span.to(self.prev_span());
                    e = Expr { kind: ExprKind::Index(Box::new(e), Box::new(idx)), span };
                }
                Tok::Dot => {
                    self.bump();
                    let name = self.ident("a method name")?;
                    self.expect(Tok::LParen, "`(` (methods are called: `x.name(...)`)")?;
                    let args = self.args()?;
                    let span = e.span.to(self.prev_span());
                    e = Expr { kind: ExprKind::Method { recv: Box::new(e), name, args }, span };
                }
                _ => return Ok(e),
            }
            // Long postfix chains nest in the AST: count them.
            self.enter()?;
            self.leave();
        }
    }

    fn list_of_exprs(&mut self, close: Tok, what: &str) -> PResult<Vec<Expr>> {
        let mut v = Vec::new();
        while self.peek() != close {
            v.push(self.expr()?);
            if !self.eat(Tok::Comma) {
                break;
            }
        }
        self.expect(close, what)?;
        Ok(v)
    }

    fn primary(&mut self) -> PResult<Expr> {
        let t = self.toks[self.pos];
        let sp = t.span;
        let kind = match t.tok {
            Tok::Int => {
                self.bump();
                let s: String = self.text(&t).chars().filter(|&c| c != '_').collect();
                match s.parse::<i64>() {
                    Ok(v) => ExprKind::Int(v),
                    Err(_) => {
                        return self.error(Diagnostic::error("integer literal too large", sp).label("does not fit in 64 bits"))
                    }
                }
            }
            Tok::Float => {
                self.bump();
                let s: String = self.text(&t).chars().filter(|&c| c != '_').collect();
                match s.parse::<f64>() {
                    Ok(v) if v.is_finite() => ExprKind::Float(v),
                    _ => return self.error(Diagnostic::error("number literal out of range", sp).label("not a finite number")),
                }
            }
            Tok::Str => {
                self.bump();
                ExprKind::Str(unescape(self.text(&t)))
            }
            Tok::True => {
                self.bump();
                ExprKind::Bool(true)
            }
            Tok::False => {
                self.bump();
                ExprKind::Bool(false)
            }
            Tok::Ident => {
                self.bump();
                ExprKind::Name(self.text(&t).to_string())
            }
            // `const(v)` is the constant initialiser; `const` is otherwise a keyword.
            Tok::Const if self.peek_at(1) == Tok::LParen => {
                self.bump();
                ExprKind::Name("const".into())
            }
            Tok::LParen => {
                self.bump();
                let e = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                return Ok(Expr { kind: e.kind, span: sp.to(self.prev_span()) });
            }
            Tok::LBracket => {
                self.bump();
                self.enter()?;
                let v = self.list_of_exprs(Tok::RBracket, "`]` or `,`");
                self.leave();
                ExprKind::List(v?)
            }
            Tok::LBrace => ExprKind::Block(self.block()?),
            Tok::If => return self.if_expr(),
            Tok::Scope => {
                self.bump();
                let path = self.path("a scope name")?;
                let body = self.block()?;
                ExprKind::Scope { path, body }
            }
            Tok::Param => return self.param_expr(),
            Tok::Input => {
                self.bump();
                let name = self.ident("an input name")?;
                self.expect(Tok::LBracket, "`[` and the input's shape")?;
                let shape = self.list_of_exprs(Tok::RBracket, "`]` or `,`")?;
                self.expect(Tok::Colon, "`:` and the element type (i32 or f32)")?;
                let dtype = self.ident("an element type (i32 or f32)")?;
                ExprKind::Input { name, shape, dtype }
            }
            _ => return self.unexpected("an expression"),
        };
        Ok(Expr { kind, span: sp.to(self.prev_span()) })
    }

    fn if_expr(&mut self) -> PResult<Expr> {
        let start = self.expect(Tok::If, "`if`")?.span;
        self.enter()?;
        let r = (|| {
            let cond = self.expr()?;
            let then = self.block()?;
            let els = if self.eat(Tok::Else) {
                if self.peek() == Tok::If {
                    Some(Box::new(self.if_expr()?))
                } else {
                    let b = self.block()?;
                    let span = b.span;
                    Some(Box::new(Expr { kind: ExprKind::Block(b), span }))
                }
            } else {
                None
            };
            Ok(Expr { kind: ExprKind::If { cond: Box::new(cond), then, els }, span: start.to(self.prev_span()) })
        })();
        self.leave();
        r
    }

    fn path(&mut self, what: &str) -> PResult<Path> {
        let start = self.span();
        let mut segs = Vec::new();
        loop {
            let t = self.toks[self.pos];
            match t.tok {
                Tok::Ident => {
                    self.bump();
                    segs.push((PathSeg::Name(self.text(&t).to_string()), t.span));
                }
                k if is_keyword(k) => {
                    self.bump();
                    segs.push((PathSeg::Name(self.text(&t).to_string()), t.span));
                }
                Tok::Int if !segs.is_empty() => {
                    self.bump();
                    let s: String = self.text(&t).chars().filter(|&c| c != '_').collect();
                    match s.parse::<u64>() {
                        Ok(v) => segs.push((PathSeg::Int(v), t.span)),
                        Err(_) => return self.error(Diagnostic::error("path index too large", t.span).label("here")),
                    }
                }
                Tok::LBrace if !segs.is_empty() => {
                    self.bump();
                    let e = self.expr()?;
                    self.expect(Tok::RBrace, "`}` closing the interpolation")?;
                    segs.push((PathSeg::Expr(e), t.span.to(self.prev_span())));
                }
                _ => return self.unexpected(what),
            }
            if self.peek() == Tok::Dot {
                self.bump();
            } else {
                break;
            }
        }
        Ok(Path { segs, span: start.to(self.prev_span()) })
    }

    fn param_expr(&mut self) -> PResult<Expr> {
        let start = self.expect(Tok::Param, "`param`")?.span;
        let path = self.path("a parameter name")?;
        self.expect(Tok::LBracket, "`[` and the parameter's shape")?;
        let shape = self.list_of_exprs(Tok::RBracket, "`]` or `,`")?;
        let mut storage = None;
        let mut attrs = Vec::new();
        if self.eat(Tok::Colon) {
            if !matches!(self.peek(), Tok::Qat | Tok::Prune | Tok::Init | Tok::Clip) {
                self.enter()?;
                let s = self.postfix();
                self.leave();
                storage = Some(Box::new(s?));
            }
            loop {
                let t = self.toks[self.pos];
                let attr = match t.tok {
                    Tok::Clip => {
                        self.bump();
                        self.expect(Tok::LParen, "`(` after `clip`")?;
                        let e = self.expr()?;
                        self.expect(Tok::RParen, "`)`")?;
                        Attr::Clip(e)
                    }
                    Tok::Qat | Tok::Prune | Tok::Init => {
                        self.bump();
                        self.enter()?;
                        let e = self.unary();
                        self.leave();
                        let e = e?;
                        match t.tok {
                            Tok::Qat => Attr::Qat(e),
                            Tok::Prune => Attr::Prune(e),
                            _ => Attr::Init(e),
                        }
                    }
                    _ => break,
                };
                attrs.push((attr, t.span.to(self.prev_span())));
            }
        }
        Ok(Expr { kind: ExprKind::Param { path, shape, storage, attrs }, span: start.to(self.prev_span()) })
    }
}

fn unescape(lit: &str) -> String {
    let inner = lit.strip_prefix('"').unwrap_or(lit);
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Program {
        match parse(src) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn precedence() {
        let p = ok("let x = 1 + 2 * -3 ^ 2;");
        let Item::Stmt(Stmt { kind: StmtKind::Let(_, e), .. }) = &p.items[0] else { panic!() };
        let ExprKind::Binary(BinOp::Add, _, r) = &e.kind else { panic!("{e:?}") };
        let ExprKind::Binary(BinOp::Mul, _, r) = &r.kind else { panic!() };
        let ExprKind::Unary(UnOp::Neg, r) = &r.kind else { panic!() };
        assert!(matches!(r.kind, ExprKind::Binary(BinOp::Pow, _, _)));
    }

    #[test]
    fn param_and_scope() {
        let p = ok("let w = scope blocks.{i} { param c_q.weight[4, 4]: int8 clip(99.9) prune 0.03 init orthogonal(1.0) };");
        let Item::Stmt(Stmt { kind: StmtKind::Let(_, e), .. }) = &p.items[0] else { panic!() };
        let ExprKind::Scope { path, body } = &e.kind else { panic!() };
        assert_eq!(path.segs.len(), 2);
        let ExprKind::Param { path, attrs, storage, .. } = &body.tail.as_ref().unwrap().kind else { panic!() };
        assert_eq!(path.segs.len(), 2);
        assert!(storage.is_some());
        assert_eq!(attrs.len(), 3);
    }

    #[test]
    fn recovers_and_reports_several_errors() {
        let errs = parse("let a = ;\nlet b = 1 +;\nlet c = 3;\nfn f( { }").unwrap_err();
        assert!(errs.len() >= 3, "{errs:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("let x = {}1{};", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse(&src).is_err());
        let src = format!("let x = {}1;", "-".repeat(10_000));
        assert!(parse(&src).is_err());
    }
}
