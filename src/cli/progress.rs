//! Progress bars for the long commands (sim run, eval, verify, bench,
//! export): count, rate and ETA on stderr, hidden when stderr is not a
//! terminal or with `--quiet`, so piped output has nothing extra. The
//! libraries report progress through callbacks; only the binary draws.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress bars (set once, before any command runs).
pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// One bar; a no-op when hidden.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// A bar of `len` steps named `what` (e.g. "sim launches").
    pub fn new(len: u64, what: &str) -> Progress {
        if QUIET.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() || len == 0 {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
        let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        Progress(Some(bar))
    }

    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.0 {
            b.set_position(pos);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // The bar leaves no line behind: the command's own output follows.
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}
