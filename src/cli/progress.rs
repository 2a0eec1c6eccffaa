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

fn shown() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

fn make(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, ETA {eta})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// One bar; a no-op when hidden. Shareable across threads.
pub struct Progress {
    bar: std::sync::OnceLock<Option<indicatif::ProgressBar>>,
    what: String,
}

impl Progress {
    /// A bar of `len` steps named `what` (e.g. "eval windows").
    pub fn new(len: u64, what: &str) -> Progress {
        let p = Progress::lazy(what);
        let _ = p.bar.set((shown() && len > 0).then(|| make(len, what)));
        p
    }

    /// A bar whose length comes with the first [`Progress::set_total`].
    pub fn lazy(what: &str) -> Progress {
        let bar = std::sync::OnceLock::new();
        if !shown() {
            let _ = bar.set(None);
        }
        Progress { bar, what: what.to_string() }
    }

    /// `done` of `total` steps (a callback's figures).
    pub fn set_total(&self, done: usize, total: usize) {
        if let Some(b) = self.bar.get_or_init(|| Some(make(total as u64, &self.what))) {
            b.set_position(done as u64);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(Some(b)) = self.bar.get() {
            b.inc(n);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // The bar leaves no line behind: the command's own output follows.
        if let Some(Some(b)) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
