//! Writing output files without ever leaving half of one, and without
//! replacing what is not a regular file.
//!
//! - [`write_atomic`]: a symlink is followed to its target; a character
//!   device, FIFO or socket (`/dev/null`, a pipe) is written through, never
//!   replaced; a regular (or new) file is written to an unnamed temporary
//!   (`O_TMPFILE` on Linux), linked in and renamed over the target, so a
//!   reader sees the old or the new file and a kill leaves nothing behind.
//!   Where the file system has no unnamed temporaries, a named one
//!   (`.NAME.tmp-PID`) is used, and those of dead processes are removed.
//! - [`replace_dir`]: a directory's set of files replaced at once (built
//!   beside it, then exchanged with `renameat2(RENAME_EXCHANGE)`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// `path` with symlinks followed (at most 40, as the kernel does); a dangling
/// link gives the path it points to, which is then created.
pub fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(d) if target.is_relative() => d.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether an existing `path` is something to write through rather than
/// replace: a character or block device, a FIFO or a socket.
fn is_special(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
    }
    #[cfg(not(unix))]
    {
        !meta.is_file() && !meta.is_dir()
    }
}

/// Write `bytes` to `path` (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = resolve(path)?;
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.is_dir() {
            return Err(std::io::Error::other("is a directory"));
        }
        if is_special(&meta) {
            let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
            return f.write_all(bytes).and_then(|_| f.flush());
        }
    }
    let dir = parent_of(&path);
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?.to_string_lossy().into_owned();
    remove_stale(&dir, &name);
    #[cfg(target_os = "linux")]
    if let Some(r) = linux::write_unnamed(&dir, &path, bytes) {
        return r;
    }
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Remove `.NAME.tmp-PID` (and `.NAME.tmp-PID-N`) files in `dir` left by
/// processes that no longer exist (a kill between write and rename).
fn remove_stale(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let f = e.file_name();
        let Some(rest) = f.to_str().and_then(|f| f.strip_prefix(&prefix)) else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok_and(|p| p != std::process::id() && !pid_alive(p)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true // unknown: keep the file
    }
}

/// Replace the files of directory `dir` by `files` (names and contents) at
/// once: the new set is built in a sibling directory and exchanged with
/// `dir`, then the old set is removed. When `dir` holds anything else than
/// files named in `files` or matching `owned` (it is not only this tool's
/// output folder, e.g. `-o .`), or the system cannot exchange directories,
/// each file is replaced on its own with [`write_atomic`] (every file whole,
/// the set not at once).
pub fn replace_dir(dir: &Path, files: &[(String, Vec<u8>)], owned: impl Fn(&str) -> bool) -> std::io::Result<()> {
    let dir = resolve(dir)?;
    let exists = match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => return Err(std::io::Error::other("exists and is not a directory")),
        Err(_) => false,
    };
    let parent = parent_of(&dir);
    let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let only_ours = exists
        && !base.is_empty()
        && std::fs::read_dir(&dir)?.flatten().all(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            e.file_type().is_ok_and(|t| t.is_file()) && (files.iter().any(|(f, _)| *f == n) || owned(&n))
        });
    if base.is_empty() || (exists && !only_ours) {
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in files {
            write_atomic(&dir.join(name), bytes)?;
        }
        return Ok(());
    }
    std::fs::create_dir_all(&parent)?;
    remove_stale_dirs(&parent, &base);
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let built = (|| {
        std::fs::create_dir(&tmp)?;
        for (name, bytes) in files {
            let mut f = std::fs::File::create(tmp.join(name))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if !exists {
        let r = std::fs::rename(&tmp, &dir);
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return r;
    }
    #[cfg(target_os = "linux")]
    if linux::exchange(&tmp, &dir).is_ok() {
        // `tmp` now holds the old files.
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    // No exchange: move the files in one by one (each rename atomic).
    let r = files.iter().try_for_each(|(name, _)| std::fs::rename(tmp.join(name), dir.join(name)));
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

/// Remove `.BASE.tmp-PID` directories in `parent` of processes that no longer exist.
fn remove_stale_dirs(parent: &Path, base: &str) {
    let prefix = format!(".{base}.tmp-");
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let f = e.file_name();
        let Some(pid) = f.to_str().and_then(|f| f.strip_prefix(&prefix)) else { continue };
        if pid.parse::<u32>().is_ok_and(|p| p != std::process::id() && !pid_alive(p)) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;
    use std::io::Write;
    use std::os::raw::{c_char, c_int, c_uint};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    // From the C library std already links (no extra crate).
    extern "C" {
        fn linkat(olddirfd: c_int, oldpath: *const c_char, newdirfd: c_int, newpath: *const c_char, flags: c_int) -> c_int;
        fn renameat2(olddirfd: c_int, oldpath: *const c_char, newdirfd: c_int, newpath: *const c_char, flags: c_uint) -> c_int;
    }
    const AT_FDCWD: c_int = -100;
    const AT_EMPTY_PATH: c_int = 0x1000;
    const AT_SYMLINK_FOLLOW: c_int = 0x400;
    const RENAME_EXCHANGE: c_uint = 2;
    /// `__O_TMPFILE | O_DIRECTORY` (the same on x86-64 and aarch64).
    const O_TMPFILE: c_int = 0o20_200_000;

    fn cpath(p: &Path) -> std::io::Result<CString> {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("path contains a NUL byte"))
    }

    /// Write an unnamed file in `dir`, link it under a temporary name and
    /// rename that over `path`. None when the file system offers no unnamed
    /// files (the caller uses a named temporary).
    pub fn write_unnamed(dir: &Path, path: &Path, bytes: &[u8]) -> Option<std::io::Result<()>> {
        let mut f = std::fs::OpenOptions::new().write(true).mode(0o666).custom_flags(O_TMPFILE).open(dir).ok()?;
        let r = (|| {
            f.write_all(bytes)?;
            f.sync_all()?;
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            // The name exists only between linkat and rename.
            let tmp = dir.join(format!(".{name}.tmp-{}-l", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let ctmp = cpath(&tmp)?;
            let empty = CString::default();
            // SAFETY: valid NUL-terminated strings and an open descriptor.
            let mut rc = unsafe { linkat(f.as_raw_fd(), empty.as_ptr(), AT_FDCWD, ctmp.as_ptr(), AT_EMPTY_PATH) };
            if rc != 0 {
                // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH on older kernels; /proc works unprivileged.
                let proc_path = cpath(Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd())))?;
                // SAFETY: as above.
                rc = unsafe { linkat(AT_FDCWD, proc_path.as_ptr(), AT_FDCWD, ctmp.as_ptr(), AT_SYMLINK_FOLLOW) };
            }
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = std::fs::rename(&tmp, path);
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        })();
        Some(r)
    }

    /// Swap two paths atomically.
    pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
        let (ca, cb) = (cpath(a)?, cpath(b)?);
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe { renameat2(AT_FDCWD, ca.as_ptr(), AT_FDCWD, cb.as_ptr(), RENAME_EXCHANGE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_replaced_whole_and_symlinks_followed() {
        let d = tempdir("reg");
        let f = d.join("a.bin");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        #[cfg(unix)]
        {
            let link = d.join("link.bin");
            std::os::unix::fs::symlink("a.bin", &link).unwrap();
            write_atomic(&link, b"three").unwrap();
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
            assert_eq!(std::fs::read(&f).unwrap(), b"three");
        }
        let names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        // A stale temporary of a dead process is removed at the next write.
        let stale = d.join(".a.bin.tmp-4000000000");
        std::fs::write(&stale, b"x").unwrap();
        write_atomic(&f, b"four").unwrap();
        assert!(!stale.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_written_through() {
        write_atomic(Path::new("/dev/null"), b"nothing").unwrap();
        let m = std::fs::metadata("/dev/null").unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(m.file_type().is_char_device());
        // /dev/full: the write fails, the device stays.
        if Path::new("/dev/full").exists() {
            assert!(write_atomic(Path::new("/dev/full"), b"x").is_err());
            assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device());
        }
    }

    #[test]
    fn directories_are_replaced_at_once() {
        let d = tempdir("dir");
        let out = d.join("out");
        let files = |v: &str| vec![("a.txt".to_string(), v.as_bytes().to_vec()), ("b.txt".to_string(), v.as_bytes().to_vec())];
        replace_dir(&out, &files("1"), |_| false).unwrap();
        replace_dir(&out, &files("2"), |_| false).unwrap();
        assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b"2");
        // A folder with other files keeps them (per-file replacement).
        std::fs::write(out.join("mine.txt"), b"keep").unwrap();
        replace_dir(&out, &files("3"), |_| false).unwrap();
        assert_eq!(std::fs::read(out.join("mine.txt")).unwrap(), b"keep");
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"3");
        let left: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, vec!["out".to_string()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgc-outfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
