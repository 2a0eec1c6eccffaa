//! Located diagnostics and their rendering (ariadne): `file:line:col`, the
//! source line and a marker under the offending text.

use std::fmt;
use std::io::IsTerminal;

/// A byte range of the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end: end.max(start) }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// One error at (optionally) one place in the source, with optional secondary
/// labels and notes.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Where the error is; `None` for errors outside the source (e.g. `--set`).
    pub span: Option<Span>,
    /// Text under the primary marker.
    pub label: Option<String>,
    /// Other places worth showing (e.g. the first declaration of a duplicate).
    pub secondary: Vec<(Span, String)>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic { message: message.into(), span: Some(span), label: None, secondary: Vec::new(), notes: Vec::new() }
    }
    /// An error with no place in the source.
    pub fn global(message: impl Into<String>) -> Diagnostic {
        Diagnostic { message: message.into(), span: None, label: None, secondary: Vec::new(), notes: Vec::new() }
    }
    pub fn label(mut self, l: impl Into<String>) -> Self {
        self.label = Some(l.into());
        self
    }
    pub fn note(mut self, n: impl Into<String>) -> Self {
        self.notes.push(n.into());
        self
    }
    pub fn also(mut self, span: Span, l: impl Into<String>) -> Self {
        self.secondary.push((span, l.into()));
        self
    }
}

/// One or more located errors of one source file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostics {
    /// The file name used in the rendered locations.
    pub path: String,
    pub items: Vec<Diagnostic>,
}

/// 1-based line and column (in characters) of byte offset `pos` in `src`.
pub fn line_col(src: &str, pos: usize) -> (u32, u32) {
    let pos = floor_char_boundary(src, pos.min(src.len()));
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = src[line_start..pos].chars().count() + 1;
    (line as u32, col as u32)
}

/// Byte offset of 1-based `line`, `col` (characters), clamped to the source.
pub fn offset_of(src: &str, line: u32, col: u32) -> usize {
    let mut start = 0usize;
    for _ in 1..line.max(1) {
        match src[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return src.len(),
        }
    }
    let rest = &src[start..];
    let line_text = &rest[..rest.find('\n').unwrap_or(rest.len())];
    let off = line_text.char_indices().nth(col.max(1) as usize - 1).map(|(i, _)| i).unwrap_or(line_text.len());
    start + off
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn clamp(src: &str, s: Span) -> std::ops::Range<usize> {
    let a = floor_char_boundary(src, s.start.min(src.len()));
    let b = floor_char_boundary(src, s.end.min(src.len())).max(a);
    a..b
}

/// Whether rendered diagnostics may use ANSI colors: only when stderr is a
/// terminal and `NO_COLOR` is not set.
pub fn use_color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Diagnostics rendered in full; the rest are counted.
pub const MAX_RENDERED: usize = 20;
/// Rendered text after which the remaining diagnostics are only counted.
pub const MAX_RENDER_BYTES: usize = 64 << 10;
/// Source lines longer than this are shown as a window around the marker.
const MAX_LINE: usize = 240;
/// Bytes shown either side of a marker in a long line.
const WINDOW: usize = 80;

/// The text handed to ariadne for one diagnostic: the whole source when its
/// line is short; otherwise the line's window around the span (line breaks
/// kept before it, so the line numbers stay right; `...` marks the cuts).
struct Window<'s> {
    text: std::borrow::Cow<'s, str>,
    /// Source bytes `lo..hi` appear in `text` from byte `at`.
    lo: usize,
    hi: usize,
    at: usize,
}

impl<'s> Window<'s> {
    fn around(src: &'s str, r: std::ops::Range<usize>) -> Window<'s> {
        let line_start = src[..r.start].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = src[r.start..].find('\n').map(|i| r.start + i).unwrap_or(src.len());
        if line_end - line_start <= MAX_LINE {
            return Window { text: src.into(), lo: 0, hi: src.len(), at: 0 };
        }
        let lo = floor_char_boundary(src, r.start.saturating_sub(WINDOW).max(line_start));
        let end = r.end.min(r.start + WINDOW).max(r.start);
        let hi = floor_char_boundary(src, (end + WINDOW).min(line_end)).max(r.start);
        let lines = src[..line_start].matches('\n').count();
        let mut text = "\n".repeat(lines);
        if lo > line_start {
            text.push_str("...");
        }
        let at = text.len();
        text.push_str(&src[lo..hi]);
        if hi < line_end {
            text.push_str("...");
        }
        Window { text: text.into(), lo, hi, at }
    }

    fn contains(&self, r: &std::ops::Range<usize>) -> bool {
        r.start >= self.lo && r.end <= self.hi
    }

    /// `r` (source bytes) in the window's text, clamped into the window.
    fn map(&self, r: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let f = |x: usize| x.clamp(self.lo, self.hi) - self.lo + self.at;
        f(r.start)..f(r.end)
    }
}

impl Diagnostics {
    pub fn new(path: &str, items: Vec<Diagnostic>) -> Diagnostics {
        Diagnostics { path: path.to_string(), items }
    }

    pub fn single(path: &str, d: Diagnostic) -> Diagnostics {
        Diagnostics::new(path, vec![d])
    }

    /// Render every diagnostic: a first line `error: PATH:LINE:COL: MESSAGE`,
    /// then the source excerpt with markers (ariadne). Colors only when
    /// [`use_color`] says so.
    pub fn render(&self, source: &str) -> String {
        self.render_with(source, use_color())
    }

    /// [`Diagnostics::render`] with colors chosen by the caller.
    pub fn render_with(&self, source: &str, color: bool) -> String {
        self.render_kind(source, color, false)
    }

    /// Render as warnings (`warning: PATH:LINE:COL: MESSAGE`), colors when [`use_color`] says so.
    pub fn render_warnings(&self, source: &str) -> String {
        self.render_kind(source, use_color(), true)
    }

    /// At most [`MAX_RENDERED`] diagnostics and about [`MAX_RENDER_BYTES`] of
    /// text; a long source line is shown as a window around the marked column.
    fn render_kind(&self, source: &str, color: bool, warning: bool) -> String {
        use ariadne::{CharSet, Config, IndexType, Label, Report, ReportKind, Source};
        let mut out = String::new();
        let path = self.path.as_str();
        let word = if warning { "warning" } else { "error" };
        for (k, d) in self.items.iter().enumerate() {
            if k == MAX_RENDERED || out.len() > MAX_RENDER_BYTES {
                let rest = self.items.len() - k;
                out.push_str(&format!("... and {rest} more {word}{} not shown\n", if rest == 1 { "" } else { "s" }));
                break;
            }
            let Some(span) = d.span else {
                out.push_str(&format!("{word}: {path}: {}\n", d.message));
                for n in &d.notes {
                    out.push_str(&format!("  = note: {n}\n"));
                }
                continue;
            };
            let r = clamp(source, span);
            let (line, col) = line_col(source, r.start);
            out.push_str(&format!("{word}: {path}:{line}:{col}: {}\n", d.message));
            let win = Window::around(source, r.clone());
            let cfg = Config::default()
                .with_color(color)
                .with_index_type(IndexType::Byte)
                .with_char_set(CharSet::Ascii)
                .with_compact(false);
            let kind = if warning { ReportKind::Warning } else { ReportKind::Error };
            let pr = win.map(r);
            let mut rep = Report::build(kind, (path, pr.clone()))
                .with_config(cfg)
                .with_message(&d.message)
                .with_label(Label::new((path, pr)).with_message(d.label.as_deref().unwrap_or("here")).with_order(0));
            let mut notes: Vec<String> = Vec::new();
            for (i, (s, l)) in d.secondary.iter().enumerate() {
                let sr = clamp(source, *s);
                if win.contains(&sr) {
                    rep = rep.with_label(Label::new((path, win.map(sr))).with_message(l).with_order(1 + i as i32));
                } else {
                    let (sl, sc) = line_col(source, sr.start);
                    notes.push(format!("{l} at {path}:{sl}:{sc}"));
                }
            }
            for n in notes.iter().chain(&d.notes) {
                rep = rep.with_note(n);
            }
            let mut buf = Vec::new();
            if rep.finish().write((path, Source::from(win.text.as_ref())), &mut buf).is_ok() {
                // ariadne repeats the message on its own first line; we already printed it.
                let text = String::from_utf8_lossy(&buf);
                let mut lines = text.lines();
                lines.next();
                for l in lines {
                    out.push_str(l.trim_end());
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The first diagnostic's `line:col`, for tests and tools.
    pub fn first_line_col(&self, source: &str) -> Option<(u32, u32)> {
        self.items.iter().find_map(|d| d.span).map(|s| line_col(source, s.start))
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            writeln!(f, "error: {}: {}", self.path, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_and_back() {
        let s = "ab\ncdé\nx";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 4), (2, 2));
        assert_eq!(line_col(s, 8), (3, 1));
        assert_eq!(offset_of(s, 2, 2), 4);
        assert_eq!(offset_of(s, 3, 1), 8);
        assert_eq!(offset_of(s, 9, 9), s.len());
    }

    #[test]
    fn render_has_location_line_and_marker() {
        let src = "let a = 1;\nlet b = foo;\n";
        let d = Diagnostics::single("m.pgdsl", Diagnostic::error("unknown name `foo`", Span::new(19, 22)).label("not defined"));
        let r = d.render_with(src, false);
        assert!(r.starts_with("error: m.pgdsl:2:9: unknown name `foo`\n"), "{r}");
        assert!(r.contains("let b = foo;"), "{r}");
        assert!(r.contains("not defined"), "{r}");
        assert!(!r.contains('\x1b'));
    }

    #[test]
    fn long_lines_show_a_window_and_output_is_capped() {
        let mut src = "x".repeat(1 << 20);
        src.push_str(" foo ");
        src.push_str(&"y".repeat(1 << 20));
        let at = 1 << 20;
        let items = (0..50).map(|_| Diagnostic::error("unknown name `foo`", Span::new(at + 1, at + 4)).label("here")).collect();
        let r = Diagnostics::new("m.pgdsl", items).render_with(&src, false);
        assert!(r.starts_with(&format!("error: m.pgdsl:1:{}: unknown name `foo`\n", at + 2)), "{}", &r[..200]);
        assert!(r.contains("... foo ") || r.contains("x foo y"), "{}", &r[..400]);
        assert!(r.len() < 20 * 1000, "{} bytes", r.len());
        assert!(r.contains("... and 30 more errors not shown"), "{}", &r[r.len() - 200..]);
    }

    #[test]
    fn render_survives_odd_spans() {
        let src = "é";
        for (a, b) in [(0, 0), (1, 1), (0, 99), (5, 2), (2, 2)] {
            let d = Diagnostics::single("x", Diagnostic::error("m", Span { start: a, end: b }));
            let _ = d.render_with(src, false);
        }
        let _ = Diagnostics::single("x", Diagnostic::error("m", Span::new(0, 0))).render_with("", true);
    }
}
