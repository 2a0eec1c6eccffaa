//! Tokens of .pgdsl (logos). Whitespace and `//` comments are skipped.

use crate::diag::{Diagnostic, Span};
use logos::Logos;

#[derive(Logos, Clone, Copy, Debug, PartialEq, Eq)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip r"//[^\n]*")]
pub enum Tok {
    #[token("const")]
    Const,
    #[token("fn")]
    Fn,
    #[token("let")]
    Let,
    #[token("for")]
    For,
    #[token("in")]
    In,
    #[token("if")]
    If,
    #[token("else")]
    Else,
    #[token("param")]
    Param,
    #[token("input")]
    Input,
    #[token("output")]
    Output,
    #[token("scope")]
    Scope,
    #[token("assert")]
    Assert,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("qat")]
    Qat,
    #[token("prune")]
    Prune,
    #[token("init")]
    Init,
    #[token("clip")]
    Clip,

    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
    #[regex(r"[0-9][0-9_]*")]
    Int,
    #[regex(r"[0-9][0-9_]*\.[0-9][0-9_]*([eE][+-]?[0-9]+)?")]
    #[regex(r"[0-9][0-9_]*[eE][+-]?[0-9]+")]
    Float,
    #[regex(r#""([^"\\\n]|\\[^\n])*""#)]
    Str,

    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token(".")]
    Dot,
    #[token("..")]
    DotDot,
    #[token("=")]
    Assign,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("%")]
    Percent,
    #[token("^")]
    Caret,
    #[token("!")]
    Bang,
    #[token("&&")]
    AndAnd,
    #[token("||")]
    OrOr,

    /// End of input (added by [`lex`], never produced by logos).
    Eof,
}

impl Tok {
    /// How the token is named in messages.
    pub fn describe(self) -> &'static str {
        use Tok::*;
        match self {
            Const => "`const`",
            Fn => "`fn`",
            Let => "`let`",
            For => "`for`",
            In => "`in`",
            If => "`if`",
            Else => "`else`",
            Param => "`param`",
            Input => "`input`",
            Output => "`output`",
            Scope => "`scope`",
            Assert => "`assert`",
            True => "`true`",
            False => "`false`",
            Qat => "`qat`",
            Prune => "`prune`",
            Init => "`init`",
            Clip => "`clip`",
            Ident => "a name",
            Int => "an integer",
            Float => "a number",
            Str => "a string",
            LParen => "`(`",
            RParen => "`)`",
            LBracket => "`[`",
            RBracket => "`]`",
            LBrace => "`{`",
            RBrace => "`}`",
            Comma => "`,`",
            Semi => "`;`",
            Colon => "`:`",
            Dot => "`.`",
            DotDot => "`..`",
            Assign => "`=`",
            EqEq => "`==`",
            NotEq => "`!=`",
            Lt => "`<`",
            Le => "`<=`",
            Gt => "`>`",
            Ge => "`>=`",
            Plus => "`+`",
            Minus => "`-`",
            Star => "`*`",
            Slash => "`/`",
            Percent => "`%`",
            Caret => "`^`",
            Bang => "`!`",
            AndAnd => "`&&`",
            OrOr => "`||`",
            Eof => "end of file",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

/// Split `src` into tokens, ending with [`Tok::Eof`]. Unknown characters and
/// unterminated strings become diagnostics; lexing continues after them.
pub fn lex(src: &str) -> (Vec<Token>, Vec<Diagnostic>) {
    let mut toks = Vec::new();
    let mut errs: Vec<Diagnostic> = Vec::new();
    let mut lx = Tok::lexer(src);
    while let Some(r) = lx.next() {
        let sp = lx.span();
        let span = Span::new(sp.start, sp.end);
        match r {
            Ok(tok) => toks.push(Token { tok, span }),
            Err(()) => {
                let text = &src[sp.clone()];
                let msg = if text.starts_with('"') {
                    "unterminated string literal".to_string()
                } else {
                    match text.chars().next() {
                        Some(c) if c.is_control() => format!("unexpected character U+{:04X}", c as u32),
                        Some(c) => format!("unexpected character `{c}`"),
                        None => "unexpected input".to_string(),
                    }
                };
                // Merge runs of bad characters into one diagnostic.
                if let Some(last) = errs.last_mut() {
                    if last.span.map(|s| s.end) == Some(span.start) && last.message == msg {
                        last.span = Some(Span::new(last.span.unwrap().start, span.end));
                        continue;
                    }
                }
                if errs.len() < 20 {
                    errs.push(Diagnostic::error(msg, span).label("not part of the language"));
                }
            }
        }
    }
    let end = src.len();
    toks.push(Token { tok: Tok::Eof, span: Span::new(end, end) });
    (toks, errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<Tok> {
        lex(s).0.into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn paths_ranges_and_floats() {
        use Tok::*;
        assert_eq!(kinds("blocks.3.attn"), vec![Ident, Dot, Int, Dot, Ident, Eof]);
        assert_eq!(kinds("0..layers"), vec![Int, DotDot, Ident, Eof]);
        assert_eq!(kinds("1.5e-07 30.0 1e3"), vec![Float, Float, Float, Eof]);
        assert_eq!(kinds("a // comment\n<= >= == != && ||"), vec![Ident, Le, Ge, EqEq, NotEq, AndAnd, OrOr, Eof]);
        assert_eq!(kinds("constant const"), vec![Ident, Const, Eof]);
    }

    #[test]
    fn bad_characters_are_reported() {
        let (_, errs) = lex("let x = 3 $ 4;");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].span, Some(Span::new(10, 11)));
        let (_, errs) = lex("\"abc");
        assert_eq!(errs[0].message, "unterminated string literal");
    }
}
